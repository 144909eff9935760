/**
 * Two Matrix homeservers that are MIMI providers, end to end: two real Synapses `a.example` and
 * `b.example` on 127.0.0.1 (Synapse federation off), and for each its appservice and MIMI
 * provider as a separate process (`node --import tsx src/cli/main.ts -c config.yaml`) with its
 * own database (the engine under test). The two providers federate over HTTP on 127.0.0.1 through
 * `federation.static_routes`, optionally through recording proxies that keep every request and
 * answer body (`captureFederation`). Every port is chosen before anything starts, so a restarted
 * appservice comes back on the same ones.
 *
 * Users are driven as a Matrix client would, through the client-server API only:
 * `side.registerUser("alice")` answers a small client (plain fetch) that keeps its own `/sync`
 * position and what it has seen.
 *
 * Free of Jest so that the benchmarks and the demo can use it too.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createWriteStream, mkdirSync, writeFileSync, type WriteStream } from "node:fs";
import { createServer, request as httpRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join, resolve } from "node:path";
import yaml from "js-yaml";
import { ghostUserId } from "../../src/bridge/ghosts";
import { writeRegistration } from "../../src/bridge/registrationFile";
import { loadConfig } from "../../src/config/config";
import { freePort } from "../../src/util/freePort";
import { testDatabaseConfig } from "./store";
import { ensureSynapse, startSynapse, type SynapseHandle } from "./synapse";

const ROOT = resolve(__dirname, "..", "..");
const MAIN = join(ROOT, "src", "cli", "main.ts");
const READY_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 10_000;
const TAIL_LINES = 40;
const KEPT_STDERR_LINES = 2_000;

export const SENDER_LOCALPART = "_mimi_bot";
export const USER_PREFIX = "_mimi_";
export const ADMIN_TOKEN = "two-homeservers-admin-token-0123456789";

export interface TwoHomeserversOptions {
  /** A folder of its own for everything (configs, databases, logs); created if missing, not removed. */
  dir: string;
  /** Route MIMI federation through recording proxies (see `Harness.federation`). Default: true. */
  captureFederation?: boolean;
  /** The appservices' log level (their stderr, also in `<dir>/<domain>/appservice.log`). Default: info. */
  logLevel?: "debug" | "info" | "warn" | "error";
  /** `mls.join_wait_ms` of both providers. Default: the provider's default (15000). */
  joinWaitMs?: number;
  /** `database.durability` of both providers. Default: os (survives SIGKILL, not power loss). */
  durability?: "os" | "fsync";
  /** The domains; default `a.example` and `b.example`. */
  domains?: [string, string];
  /**
   * What node runs instead of `--import tsx src/cli/main.ts` (e.g. `[<repo>/dist/cli/main.js]`,
   * compiled by tsc, as `npm start` runs it). Default: the sources through tsx.
   */
  entry?: readonly string[];
  /** More `limits` of both providers' configs (e.g. raised federation rate limits), over the harness's. */
  limits?: Record<string, number>;
}

/** One body that went over MIMI federation, as a recording proxy saw it. */
export interface CapturedFederation {
  /** The provider the request went to. */
  to: string;
  direction: "request" | "response";
  method: string;
  path: string;
  status?: number;
  body: string;
}

export interface Harness {
  a: Homeserver;
  b: Homeserver;
  /** What went over MIMI federation between the providers (empty unless `captureFederation`). */
  federation: CapturedFederation[];
  /** The last lines of both appservices' stderr and both Synapses' logs, for error messages. */
  diagnostics(lines?: number): string;
  /** Stops everything it started (appservices, Synapses, proxies); safe to call twice. */
  stop(): Promise<void>;
}

export interface Homeserver {
  /** The homeserver's server_name, which is also the provider's MIMI server name. */
  readonly domain: string;
  readonly synapse: SynapseHandle;
  readonly appservice: AppserviceProcess;
  /** The port the provider's MIMI federation listener binds. */
  readonly federationPort: number;
  /** The URL the other provider reaches this one at (the recording proxy when capturing). */
  readonly federationUrl: string;
  /** `@_mimi_bot:<domain>`. */
  readonly botUserId: string;
  readonly dir: string;
  /** The ghost on this homeserver of a MIMI user of another provider (e.g. `@bob:b.example`). */
  ghostOf(mimiUserId: string): string;
  /** Registers a Matrix user on this homeserver and answers a client acting as them. */
  registerUser(localpart: string): Promise<MatrixClient>;
  /** One request to the provider's admin API (for diagnostics; the bridge is driven through Matrix). */
  admin<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<T>;
}

/** The appservice+provider process of one homeserver. */
export class AppserviceProcess {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private lines: string[] = [];
  private partial = "";
  private log: WriteStream | undefined;
  private readonly killOnExit = (): void => {
    this.child?.kill("SIGKILL");
  };

  constructor(
    readonly domain: string,
    readonly dir: string,
    readonly configPath: string,
    /** The port the homeserver's transactions arrive on. */
    readonly port: number,
    readonly federationPort: number,
    readonly adminPort: number,
    /** What node runs instead of `--import tsx src/cli/main.ts`. */
    private readonly entry: readonly string[] = ["--import", "tsx", MAIN],
  ) {}

  get logFile(): string {
    return join(this.dir, "appservice.log");
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  /** Starts the process; resolves once it printed its ready line (its self-check passed). */
  async start(): Promise<void> {
    if (this.running)
      throw new Error(`the appservice of ${this.domain} is already running (pid ${this.pid})`);
    this.log ??= createWriteStream(this.logFile, { flags: "a" });
    this.log.write(`--- start ${new Date().toISOString()} ---\n`);
    const child = spawn(process.execPath, [...this.entry, "-c", this.configPath], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env },
    });
    this.child = child;
    let exitInfo: string | undefined;
    this.exited = new Promise<void>((resolveExit) => {
      child.once("exit", (code, signal) => {
        exitInfo = signal !== null ? `signal ${signal}` : `code ${code}`;
        this.log?.write(`--- exited (${exitInfo}) ${new Date().toISOString()} ---\n`);
        process.removeListener("exit", this.killOnExit);
        resolveExit();
      });
    });
    child.once("error", (err) => (exitInfo ??= `spawn error: ${err.message}`));
    process.on("exit", this.killOnExit);
    child.stderr!.on("data", (chunk: Buffer) => this.keep(chunk.toString()));
    let out = "";
    const ready = new Promise<void>((resolveReady, rejectReady) => {
      const timer = setTimeout(
        () => rejectReady(new Error(`not ready within ${READY_TIMEOUT_MS / 1000} s`)),
        READY_TIMEOUT_MS,
      );
      child.stdout!.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes('"ready":true')) {
          clearTimeout(timer);
          resolveReady();
        }
      });
      child.once("exit", () => {
        clearTimeout(timer);
        rejectReady(new Error(`exited before it was ready (${exitInfo ?? "?"})`));
      });
    });
    try {
      await ready;
    } catch (err) {
      if (this.running) await this.kill();
      throw new Error(
        `the appservice of ${this.domain} did not start: ${(err as Error).message}\n${this.logTail()}`,
      );
    }
  }

  private keep(text: string): void {
    this.log?.write(text);
    if (process.env.MIMI_TEST_LOGS) process.stderr.write(`[${this.domain}] ${text}`);
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop() ?? "";
    this.lines.push(...parts);
    if (this.lines.length > KEPT_STDERR_LINES) this.lines.splice(0, this.lines.length - KEPT_STDERR_LINES);
  }

  /** Sends `signal` (default SIGKILL) and resolves once the process has exited. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    if (this.running) child.kill(signal);
    await this.exited;
  }

  /** SIGTERM (SIGKILL after 10 s); resolves once it has exited. */
  async stop(): Promise<void> {
    if (!this.running) return this.exited;
    const timer = setTimeout(() => this.child?.kill("SIGKILL"), STOP_GRACE_MS);
    try {
      await this.kill("SIGTERM");
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops it (`signal`: SIGTERM, a clean stop, by default) if it runs, and starts it again. */
  async restart(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (signal === "SIGTERM") await this.stop();
    else await this.kill(signal);
    await this.start();
  }

  /** The last lines of its stderr (all runs), for error messages. */
  logTail(lines = TAIL_LINES): string {
    const all = this.partial === "" ? this.lines : [...this.lines, this.partial];
    return `--- appservice of ${this.domain} (${this.logFile}) ---\n${all.slice(-lines).join("\n")}`;
  }

  /** Every stderr line kept so far (the last 2000). */
  stderrLines(): string[] {
    return [...this.lines];
  }

  closeLog(): void {
    this.log?.end();
    this.log = undefined;
  }
}

/** A pass-through HTTP proxy in front of one provider that keeps every request and answer body. */
async function recordingProxy(
  to: string,
  target: () => string,
  seen: CapturedFederation[],
): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const method = req.method ?? "GET";
      const path = req.url ?? "/";
      seen.push({ to, direction: "request", method, path, body: body.toString("utf8") });
      const upstream = httpRequest(`${target()}${path}`, { method, headers: req.headers }, (answer) => {
        const parts: Buffer[] = [];
        answer.on("data", (chunk: Buffer) => parts.push(chunk));
        answer.on("end", () => {
          const text = Buffer.concat(parts);
          seen.push({
            to,
            direction: "response",
            method,
            path,
            status: answer.statusCode ?? 0,
            body: text.toString("utf8"),
          });
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          res.end(text);
        });
        answer.on("error", () => res.destroy());
      });
      // The provider is down (being restarted): the sender's queue retries.
      upstream.on("error", () => {
        if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
        res.end('{"errcode":"M_UNKNOWN","error":"the provider behind the test proxy is down"}');
      });
      upstream.end(body);
    });
  });
  await new Promise<void>((resolveListen) => server.listen(0, "127.0.0.1", resolveListen));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

/**
 * Starts both homeservers and both appservices. On any failure, stops what it had started and
 * throws with the logs' last lines.
 */
export async function startTwoHomeservers(options: TwoHomeserversOptions): Promise<Harness> {
  ensureSynapse();
  const dir = resolve(options.dir);
  const domains = options.domains ?? ["a.example", "b.example"];
  const capture = options.captureFederation ?? true;
  const federation: CapturedFederation[] = [];
  const proxies: Server[] = [];
  const synapses: SynapseHandle[] = [];
  const appservices: AppserviceProcess[] = [];
  let stopped = false;

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await Promise.allSettled(appservices.map((p) => p.stop()));
    await Promise.allSettled(synapses.map((s) => s.stop()));
    for (const proxy of proxies) {
      proxy.closeAllConnections();
      proxy.close();
    }
    for (const p of appservices) p.closeLog();
  };
  const diagnostics = (lines = TAIL_LINES) =>
    [
      ...appservices.map((p) => p.logTail(lines)),
      ...synapses.map((s) => `--- Synapse ${s.serverName} ---\n${s.logTail(lines)}`),
    ].join("\n");

  try {
    // Every port up front: a restarted appservice binds the same ones.
    const ports: { synapse: number; appservice: number; federation: number; admin: number }[] = [];
    for (let i = 0; i < domains.length; i++) {
      ports.push({
        synapse: await freePort(),
        appservice: await freePort(),
        federation: await freePort(),
        admin: await freePort(),
      });
    }
    const routes: Record<string, string> = {};
    for (const [i, domain] of domains.entries()) {
      const direct = `http://127.0.0.1:${ports[i]!.federation}`;
      if (!capture) {
        routes[domain] = direct;
        continue;
      }
      const proxy = await recordingProxy(domain, () => direct, federation);
      proxies.push(proxy.server);
      routes[domain] = proxy.url;
    }

    const databases = await Promise.all(
      domains.map((domain) => testDatabaseConfig(join(dir, domain), "data/db", options.durability ?? "os")),
    );
    const sides = domains.map((domain, i) => {
      const port = ports[i]!;
      const home = join(dir, domain);
      mkdirSync(join(home, "data"), { recursive: true });
      const configPath = join(home, "config.yaml");
      const config = {
        server_name: domain,
        federation: {
          bind_address: "127.0.0.1",
          port: port.federation,
          static_routes: Object.fromEntries(Object.entries(routes).filter(([name]) => name !== domain)),
          well_known: false,
          retry_base_ms: 50,
          retry_max_ms: 1_000,
        },
        database: databases[i],
        signing_key_path: "data/signing.key",
        // Tests send bursts as one user; the rate limits have tests of their own.
        limits: { local_sends_per_second: 100_000, local_send_burst: 100_000, ...options.limits },
        admin_api: { bind_address: "127.0.0.1", port: port.admin, token: ADMIN_TOKEN },
        logging: { level: options.logLevel ?? "info" },
        ...(options.joinWaitMs === undefined ? {} : { mls: { join_wait_ms: options.joinWaitMs } }),
        homeserver: { url: `http://127.0.0.1:${port.synapse}`, domain },
        appservice: {
          id: "mimi",
          bind_address: "127.0.0.1",
          port: port.appservice,
          registration: "registration.yaml",
          sender_localpart: SENDER_LOCALPART,
          user_prefix: USER_PREFIX,
          alias_prefix: USER_PREFIX,
        },
      };
      writeFileSync(configPath, yaml.dump(config));
      // What `main.ts -c config.yaml -r -u <url> -f registration.yaml` writes.
      const registration = writeRegistration(
        loadConfig(configPath),
        `http://127.0.0.1:${port.appservice}`,
        join(home, "registration.yaml"),
      );
      const appservice = new AppserviceProcess(
        domain,
        home,
        configPath,
        port.appservice,
        port.federation,
        port.admin,
        options.entry,
      );
      appservices.push(appservice);
      return { domain, home, port, registration, appservice, route: routes[domain]! };
    });

    await Promise.all(
      sides.map(async (side) => {
        const synapse = await startSynapse({
          serverName: side.domain,
          dir: join(side.home, "synapse"),
          port: side.port.synapse,
          appserviceRegistrations: [side.registration],
        });
        synapses.push(synapse);
      }),
    );
    await Promise.all(appservices.map((p) => p.start()));

    const homeserver = (i: number): Homeserver => {
      const side = sides[i]!;
      const synapse = synapses.find((s) => s.serverName === side.domain)!;
      return {
        domain: side.domain,
        synapse,
        appservice: side.appservice,
        federationPort: side.port.federation,
        federationUrl: side.route,
        botUserId: `@${SENDER_LOCALPART}:${side.domain}`,
        dir: side.home,
        ghostOf: (mimiUserId) => ghostUserId(mimiUserId, USER_PREFIX, side.domain),
        registerUser: async (localpart) => {
          const user = await synapse.registerUser(localpart);
          return new MatrixClient(user.userId, user.accessToken, synapse.url, () => diagnostics());
        },
        admin: async <T>(method: string, path: string, body?: unknown) => {
          const response = await fetch(`http://127.0.0.1:${side.port.admin}/_mimi/admin/v1${path}`, {
            method,
            headers: {
              authorization: `Bearer ${ADMIN_TOKEN}`,
              ...(body === undefined ? {} : { "content-type": "application/json" }),
            },
            ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          });
          const text = await response.text();
          if (!response.ok)
            throw new Error(`${side.domain} admin ${method} ${path}: ${response.status} ${text}`);
          return JSON.parse(text) as T;
        },
      };
    };
    return { a: homeserver(0), b: homeserver(1), federation, diagnostics, stop };
  } catch (err) {
    const tail = diagnostics();
    await stop();
    throw new Error(`${(err as Error).message}\n${tail}`, { cause: err });
  }
}

/** An event as the client-server API gives it. */
export interface MatrixEvent {
  event_id: string;
  type: string;
  sender: string;
  state_key?: string;
  content: Record<string, unknown>;
  origin_server_ts?: number;
  redacts?: string;
  unsigned?: Record<string, unknown>;
}

export interface MatrixInvite {
  roomId: string;
  /** The sender of the invite event, when the stripped state has it. */
  inviter: string | undefined;
  /** The stripped state of the invite. */
  state: { type: string; state_key?: string; sender?: string; content: Record<string, unknown> }[];
}

export class MatrixRequestError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly errcode: string | undefined,
  ) {
    super(message);
    this.name = "MatrixRequestError";
  }
}

interface SyncRoom {
  timeline?: { events?: MatrixEvent[]; limited?: boolean; prev_batch?: string };
}

interface SyncAnswer {
  next_batch: string;
  rooms?: {
    join?: Record<string, SyncRoom>;
    leave?: Record<string, SyncRoom>;
    invite?: Record<string, { invite_state?: { events?: MatrixInvite["state"] } }>;
  };
}

const SYNC_TIMELINE_LIMIT = 200;

/**
 * A small Matrix client (plain fetch) of one user. It keeps its `/sync` position and every
 * timeline event it has seen per room (the gap of a limited timeline is filled from `/messages`),
 * and the rooms it is invited to.
 */
export class MatrixClient {
  private since: string | undefined;
  private syncing: Promise<void> | undefined;
  private readonly timelines = new Map<string, MatrixEvent[]>();
  private readonly seen = new Set<string>();
  private readonly pendingInvites = new Map<string, MatrixInvite>();
  /** A filter of its own: Synapse caches an initial /sync per (user, filter) for a while. */
  private readonly filter = JSON.stringify({
    room: { timeline: { limit: SYNC_TIMELINE_LIMIT, not_types: [`x.unused.${randomUUID()}`] } },
    presence: { not_types: ["*"] },
    account_data: { not_types: ["*"] },
  });

  constructor(
    readonly userId: string,
    readonly accessToken: string,
    readonly baseUrl: string,
    private readonly diagnostics: () => string = () => "",
  ) {}

  /** One client-server API call (`path` after `/_matrix/client/v3`); a non-2xx answer throws. */
  async request<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`${this.baseUrl}/_matrix/client/v3${path}`, {
      method,
      headers: {
        authorization: `Bearer ${this.accessToken}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    let parsed: Record<string, unknown> = {};
    try {
      parsed = text === "" ? {} : (JSON.parse(text) as Record<string, unknown>);
    } catch {
      // not JSON: reported below if it is an error
    }
    if (!response.ok) {
      const errcode = typeof parsed.errcode === "string" ? parsed.errcode : undefined;
      throw new MatrixRequestError(
        `${this.userId}: ${method} ${path}: ${response.status} ${errcode ?? ""} ${String(parsed.error ?? text.slice(0, 300))}`,
        response.status,
        errcode,
      );
    }
    return parsed as T;
  }

  async createRoom(options: Record<string, unknown> = {}): Promise<string> {
    return (await this.request<{ room_id: string }>("POST", "/createRoom", options)).room_id;
  }

  async invite(roomId: string, userId: string): Promise<void> {
    await this.request("POST", `/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: userId });
  }

  /** Joins a room by ID or alias; answers its room ID. */
  async join(roomIdOrAlias: string): Promise<string> {
    const answer = await this.request<{ room_id: string }>(
      "POST",
      `/join/${encodeURIComponent(roomIdOrAlias)}`,
      {},
    );
    this.pendingInvites.delete(answer.room_id);
    return answer.room_id;
  }

  async leave(roomId: string): Promise<void> {
    await this.request("POST", `/rooms/${encodeURIComponent(roomId)}/leave`, {});
    this.pendingInvites.delete(roomId);
  }

  async kick(roomId: string, userId: string, reason?: string): Promise<void> {
    await this.request("POST", `/rooms/${encodeURIComponent(roomId)}/kick`, {
      user_id: userId,
      ...(reason === undefined ? {} : { reason }),
    });
  }

  async ban(roomId: string, userId: string, reason?: string): Promise<void> {
    await this.request("POST", `/rooms/${encodeURIComponent(roomId)}/ban`, {
      user_id: userId,
      ...(reason === undefined ? {} : { reason }),
    });
  }

  async unban(roomId: string, userId: string): Promise<void> {
    await this.request("POST", `/rooms/${encodeURIComponent(roomId)}/unban`, { user_id: userId });
  }

  /** Sends an event; answers its event ID. The same `txnId` twice makes one event. */
  async sendEvent(
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    txnId: string = randomUUID(),
  ): Promise<string> {
    const path = `/rooms/${encodeURIComponent(roomId)}/send/${encodeURIComponent(type)}/${encodeURIComponent(txnId)}`;
    return (await this.request<{ event_id: string }>("PUT", path, content)).event_id;
  }

  sendText(roomId: string, body: string, txnId?: string): Promise<string> {
    return this.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body }, txnId);
  }

  sendHtml(roomId: string, body: string, html: string, txnId?: string): Promise<string> {
    return this.sendEvent(
      roomId,
      "m.room.message",
      { msgtype: "m.text", body, format: "org.matrix.custom.html", formatted_body: html },
      txnId,
    );
  }

  async redact(
    roomId: string,
    eventId: string,
    reason?: string,
    txnId: string = randomUUID(),
  ): Promise<string> {
    const path = `/rooms/${encodeURIComponent(roomId)}/redact/${encodeURIComponent(eventId)}/${encodeURIComponent(txnId)}`;
    return (await this.request<{ event_id: string }>("PUT", path, reason === undefined ? {} : { reason }))
      .event_id;
  }

  async setState(
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    stateKey = "",
  ): Promise<string> {
    const path = `/rooms/${encodeURIComponent(roomId)}/state/${encodeURIComponent(type)}/${encodeURIComponent(stateKey)}`;
    return (await this.request<{ event_id: string }>("PUT", path, content)).event_id;
  }

  /**
   * One `/sync` from the kept position (long-polling up to `timeoutMs`), its timeline events and
   * invites kept. Calls made while one is running share it.
   */
  sync(timeoutMs = 0): Promise<void> {
    this.syncing ??= this.syncOnce(timeoutMs).finally(() => (this.syncing = undefined));
    return this.syncing;
  }

  private async syncOnce(timeoutMs: number): Promise<void> {
    const query = new URLSearchParams({ timeout: String(timeoutMs), filter: this.filter });
    if (this.since !== undefined) query.set("since", this.since);
    const answer = await this.request<SyncAnswer>("GET", `/sync?${query.toString()}`);
    for (const section of [answer.rooms?.join ?? {}, answer.rooms?.leave ?? {}]) {
      for (const [roomId, room] of Object.entries(section)) {
        const events = room.timeline?.events ?? [];
        if (room.timeline?.limited === true && this.timelines.has(roomId) && room.timeline.prev_batch) {
          await this.fillGap(roomId, room.timeline.prev_batch);
        }
        this.keepEvents(roomId, events);
      }
    }
    for (const [roomId, invite] of Object.entries(answer.rooms?.invite ?? {})) {
      const state = invite.invite_state?.events ?? [];
      const own = state.find((e) => e.type === "m.room.member" && e.state_key === this.userId);
      this.pendingInvites.set(roomId, { roomId, inviter: own?.sender, state });
    }
    for (const roomId of Object.keys(answer.rooms?.join ?? {})) this.pendingInvites.delete(roomId);
    for (const roomId of Object.keys(answer.rooms?.leave ?? {})) this.pendingInvites.delete(roomId);
    this.since = answer.next_batch;
  }

  /** A limited timeline skipped events since the last sync: take them from `/messages`, oldest first. */
  private async fillGap(roomId: string, prevBatch: string): Promise<void> {
    const missing: MatrixEvent[] = [];
    let from: string | undefined = prevBatch;
    while (from !== undefined) {
      const query: URLSearchParams = new URLSearchParams({ dir: "b", from, limit: "100" });
      const page: { chunk?: MatrixEvent[]; end?: string } = await this.request<{
        chunk?: MatrixEvent[];
        end?: string;
      }>("GET", `/rooms/${encodeURIComponent(roomId)}/messages?${query.toString()}`);
      const chunk = page.chunk ?? [];
      const knownAt = chunk.findIndex((e) => this.seen.has(e.event_id));
      missing.push(...(knownAt === -1 ? chunk : chunk.slice(0, knownAt)));
      if (knownAt !== -1 || chunk.length === 0) break;
      from = page.end;
    }
    this.keepEvents(roomId, missing.reverse());
  }

  private keepEvents(roomId: string, events: MatrixEvent[]): void {
    let timeline = this.timelines.get(roomId);
    if (timeline === undefined) this.timelines.set(roomId, (timeline = []));
    for (const event of events) {
      if (this.seen.has(event.event_id)) continue;
      this.seen.add(event.event_id);
      timeline.push(event);
    }
  }

  /**
   * The first event of the room's timeline, from those seen so far and then from `/sync`
   * long-polls, that `predicate` accepts. Throws on timeout with what was seen and the logs.
   */
  async waitForEvent(
    roomId: string,
    predicate: (event: MatrixEvent) => boolean,
    timeoutMs = 30_000,
    what = "an event",
  ): Promise<MatrixEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.timelines.get(roomId)?.find(predicate);
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `${this.userId} did not see ${what} in ${roomId} within ${timeoutMs / 1000} s. ` +
            `Its timeline there:\n${describeTimeline(this.timeline(roomId))}\n${this.diagnostics()}`,
        );
      }
      await this.sync(Math.min(left, 5_000));
    }
  }

  /** Waits until `predicate` holds of the room's timeline as seen so far (e.g. "20 messages arrived"). */
  async waitForTimeline(
    roomId: string,
    predicate: (timeline: MatrixEvent[]) => boolean,
    timeoutMs = 30_000,
    what = "the expected timeline",
  ): Promise<MatrixEvent[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const timeline = this.timeline(roomId);
      if (predicate(timeline)) return timeline;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `${this.userId} did not see ${what} in ${roomId} within ${timeoutMs / 1000} s. ` +
            `Its timeline there:\n${describeTimeline(timeline)}\n${this.diagnostics()}`,
        );
      }
      await this.sync(Math.min(left, 5_000));
    }
  }

  /** An invite to a room that `predicate` accepts (any, by default), from `/sync`. */
  async waitForInvite(
    predicate: (invite: MatrixInvite) => boolean = () => true,
    timeoutMs = 30_000,
  ): Promise<MatrixInvite> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = [...this.pendingInvites.values()].find(predicate);
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `${this.userId} got no invite within ${timeoutMs / 1000} s (pending: ${JSON.stringify([
            ...this.pendingInvites.keys(),
          ])}).\n${this.diagnostics()}`,
        );
      }
      await this.sync(Math.min(left, 5_000));
    }
  }

  /** Every timeline event of the room seen so far through `/sync`, in order (state events too). */
  timeline(roomId: string): MatrixEvent[] {
    return [...(this.timelines.get(roomId) ?? [])];
  }

  /** The rooms this user is invited to and has not joined or refused, after one `/sync`. */
  async invites(): Promise<MatrixInvite[]> {
    await this.sync(0);
    return [...this.pendingInvites.values()];
  }

  /** The room's whole history as the homeserver has it now (`/messages` from the start), oldest first. */
  async history(roomId: string): Promise<MatrixEvent[]> {
    const events: MatrixEvent[] = [];
    let from: string | undefined;
    for (;;) {
      const query = new URLSearchParams({ dir: "f", limit: "500" });
      if (from !== undefined) query.set("from", from);
      const page = await this.request<{ chunk?: MatrixEvent[]; end?: string }>(
        "GET",
        `/rooms/${encodeURIComponent(roomId)}/messages?${query.toString()}`,
      );
      events.push(...(page.chunk ?? []));
      if (page.end === undefined || (page.chunk ?? []).length === 0) return events;
      from = page.end;
    }
  }
}

/** One line per event, for error messages. */
export function describeTimeline(events: MatrixEvent[]): string {
  return events
    .map((e) => {
      const c = e.content;
      const what =
        e.type === "m.room.member"
          ? `${String(c.membership)} ${e.state_key ?? ""}`
          : e.type === "m.room.message"
            ? `${String(c.msgtype)} ${JSON.stringify(c.body)}`
            : e.type === "m.room.redaction"
              ? `redacts ${String(e.redacts ?? c.redacts)}`
              : "";
      return `  ${e.event_id} ${e.sender} ${e.type} ${what}`;
    })
    .join("\n");
}

/** Timeline predicates for `waitForEvent`: a message with this body, a membership, a bot's notice. */
export const isMessage = (sender: string, body: string) => (e: MatrixEvent) =>
  e.type === "m.room.message" && e.sender === sender && e.content.body === body;
export const isMembership = (stateKey: string, membership: string) => (e: MatrixEvent) =>
  e.type === "m.room.member" && e.state_key === stateKey && e.content.membership === membership;
export const isBotNotice = (bot: string, pattern: RegExp) => (e: MatrixEvent) =>
  e.type === "m.room.message" &&
  e.sender === bot &&
  e.content.msgtype === "m.notice" &&
  pattern.test(String(e.content.body));
