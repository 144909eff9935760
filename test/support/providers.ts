import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { removeDir, tempDir } from "./services";
import { testDatabaseConfig } from "./store";
import { freePort } from "../../src/util/freePort";

const ROOT = join(__dirname, "..", "..");
const TOKEN = "test-admin-token-0123456789";
const TSX_ENTRY = ["--import", "tsx", join(ROOT, "src/cli/main.ts")];

/** One provider running as its own process with its own database (the engine under test). */
export class ProviderProcess {
  child: ChildProcess | undefined;
  stderr = "";
  /** What the running process wrote on its standard output. */
  stdout = "";

  constructor(
    readonly serverName: string,
    readonly dir: string,
    readonly federationPort: number,
    readonly adminPort: number,
    /** What node runs instead of `--import tsx src/cli/main.ts` (e.g. the compiled dist/cli/main.js). */
    readonly entry?: readonly string[],
  ) {}

  get configPath(): string {
    return join(this.dir, "config.yaml");
  }

  async start(): Promise<void> {
    await this.startUntil(/"ready":true/);
  }

  /** Starts the process and waits for `marker` on its standard output. */
  protected async startUntil(marker: RegExp): Promise<void> {
    const child = spawn(process.execPath, [...(this.entry ?? TSX_ENTRY), "-c", this.configPath], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, MIMI_LOG_LEVEL: process.env.MIMI_LOG_LEVEL ?? "warn" },
    });
    this.child = child;
    this.stdout = "";
    child.stderr!.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString();
      if (process.env.MIMI_TEST_LOGS) process.stderr.write(`[${this.serverName}] ${chunk.toString()}`);
    });
    child.stdout!.on("data", (chunk: Buffer) => {
      this.stdout += chunk.toString();
    });
    await this.waitForOutput(marker);
  }

  /** Waits until the running process has written `marker` on its standard output; rejects if it exits first. */
  async waitForOutput(marker: RegExp): Promise<void> {
    const child = this.child;
    if (child === undefined) throw new Error(`${this.serverName} is not running`);
    await new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!marker.test(this.stdout)) return;
        child.stdout!.off("data", check);
        child.off("exit", onExit);
        resolve();
      };
      const onExit = (code: number | null) =>
        reject(new Error(`${this.serverName} exited with ${code}: ${this.stderr}`));
      child.stdout!.on("data", check);
      child.once("exit", onExit);
      check();
    });
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once("exit", () => resolve());
      child.kill(signal);
    });
    this.child = undefined;
  }

  /** One admin API request; a non-2xx answer throws an error carrying `status` and `errcode`. */
  async admin<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`http://127.0.0.1:${this.adminPort}/_mimi/admin/v1${path}`, {
      method,
      headers: {
        Authorization: `Bearer ${TOKEN}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const json = (await response.json()) as T & { errcode?: string; error?: string; retry_after_ms?: number };
    if (!response.ok) {
      const err = new Error(
        `${this.serverName} ${method} ${path}: ${response.status} ${json.errcode}: ${json.error}`,
      );
      Object.assign(err, {
        status: response.status,
        errcode: json.errcode,
        retryAfterMs: json.retry_after_ms,
      });
      throw err;
    }
    return json;
  }

  async createRoom(
    creator: string,
    options: { txnId?: string; roomLocalpart?: string } = {},
  ): Promise<string> {
    const body = {
      creator,
      ...(options.roomLocalpart === undefined ? {} : { room_localpart: options.roomLocalpart }),
    };
    const { room_id: roomId } = await this.put<{ room_id: string }>(
      `/createRoom/${options.txnId ?? freshTxnId()}`,
      body,
    );
    return roomId;
  }

  /** Sends an event as `sender`; answers its event ID. */
  async send(
    roomId: string,
    sender: string,
    type: string,
    content: Record<string, unknown>,
    stateKey?: string,
    txnId: string = freshTxnId(),
  ): Promise<string> {
    const body = { sender, content, ...(stateKey === undefined ? {} : { state_key: stateKey }) };
    const path = `${roomPath(roomId)}/send/${encodeURIComponent(type)}/${txnId}`;
    return (await this.put<{ event_id: string }>(path, body)).event_id;
  }

  /** Sends a user's message, encrypted by the user's hosted MLS client; answers its event ID. */
  async sendMessage(
    roomId: string,
    sender: string,
    body: string,
    txnId: string = freshTxnId(),
  ): Promise<string> {
    const path = `${roomPath(roomId)}/messages/${txnId}`;
    return (await this.put<{ event_id: string }>(path, { sender, content: { body } })).event_id;
  }

  /** The messages of a room as the user's client received them. */
  async messages(roomId: string, user: string): Promise<MessageJson[]> {
    const query = `user=${encodeURIComponent(user)}&limit=1000`;
    return (await this.admin<{ messages: MessageJson[] }>("GET", `${roomPath(roomId)}/messages?${query}`))
      .messages;
  }

  /** The user's MLS client in the room's group, or undefined if it has none. */
  async mls(
    roomId: string,
    user: string,
  ): Promise<{ epoch: string; members: string[]; active: boolean; tree_hash: string } | undefined> {
    try {
      return await this.admin("GET", `${roomPath(roomId)}/mls?user=${encodeURIComponent(user)}`);
    } catch (err) {
      if ((err as { status?: number }).status === 404) return undefined;
      throw err;
    }
  }

  invite(roomId: string, sender: string, target: string, options: ActionOptions = {}): Promise<string> {
    return this.act(roomId, "invite", { sender, target }, options);
  }

  join(roomId: string, user: string, options: ActionOptions = {}): Promise<string> {
    return this.act(roomId, "join", { user }, options);
  }

  leave(roomId: string, user: string, options: ActionOptions = {}): Promise<string> {
    return this.act(roomId, "leave", { user }, options);
  }

  knock(roomId: string, user: string, options: ActionOptions = {}): Promise<string> {
    return this.act(roomId, "knock", { user }, options);
  }

  kick(roomId: string, sender: string, target: string, options: ActionOptions = {}): Promise<string> {
    return this.act(roomId, "kick", { sender, target }, options);
  }

  ban(roomId: string, sender: string, target: string, options: ActionOptions = {}): Promise<string> {
    return this.act(roomId, "ban", { sender, target }, options);
  }

  private async act(
    roomId: string,
    action: string,
    body: Record<string, string>,
    { reason, txnId = freshTxnId() }: ActionOptions,
  ): Promise<string> {
    const path = `${roomPath(roomId)}/${action}/${txnId}`;
    const full = reason === undefined ? body : { ...body, reason };
    return (await this.put<{ event_id: string }>(path, full)).event_id;
  }

  /**
   * A PUT, repeated with the same txnId while the provider answers 429 (its
   * per-user rate limit), after the `retry_after_ms` it gives.
   */
  private async put<T>(path: string, body: unknown): Promise<T> {
    const deadline = Date.now() + RATE_LIMIT_PATIENCE_MS;
    for (;;) {
      try {
        return await this.admin<T>("PUT", path, body);
      } catch (err) {
        const { errcode, retryAfterMs } = err as { errcode?: string; retryAfterMs?: number };
        if (errcode !== "M_LIMIT_EXCEEDED" || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, retryAfterMs ?? 100));
      }
    }
  }

  /** The room's whole linear history as this provider holds it, paged through to the head. */
  async history(roomId: string): Promise<HistoryEvent[]> {
    const events: HistoryEvent[] = [];
    let from: number | undefined = 1;
    while (from !== undefined) {
      const page: { events: HistoryEvent[]; next_seq?: number } = await this.admin(
        "GET",
        `${roomPath(roomId)}/history?from=${from}&limit=1000`,
      );
      events.push(...page.events);
      from = page.next_seq;
    }
    return events;
  }

  async historyIds(roomId: string): Promise<string[]> {
    return (await this.history(roomId)).map((e) => e.event_id);
  }

  async invites(userId: string): Promise<InviteJson[]> {
    return (
      await this.admin<{ invites: InviteJson[] }>("GET", `/users/${encodeURIComponent(userId)}/invites`)
    ).invites;
  }
}

/** One event of a room's history as the admin API gives it. */
export interface HistoryEvent {
  seq: number;
  event_id: string;
  type: string;
  sender: string;
  state_key?: string;
  content: Record<string, unknown>;
  [field: string]: unknown;
}

export interface MessageJson {
  seq: number;
  event_id: string;
  sender: string;
  epoch: string;
  status: "decrypted" | "sent" | "undecryptable" | "dropped";
  type?: string;
  content?: { body?: string; [field: string]: unknown };
  reason?: string;
}

export interface InviteJson {
  room_id: string;
  user_id: string;
  inviter: string;
  hub_server: string;
  room_version: string;
  stripped_state: Record<string, unknown>[];
  received_ts: number;
}

export interface ActionOptions {
  reason?: string;
  txnId?: string;
}

const RATE_LIMIT_PATIENCE_MS = 120_000;

const roomPath = (roomId: string) => `/rooms/${encodeURIComponent(roomId)}`;

export function freshTxnId(): string {
  return randomUUID();
}

/** Starts `names.length` providers on 127.0.0.1 that know each other through static routes. */
export async function startProviders(
  names: string[],
  extraRoutes: Record<string, string> = {},
  options: {
    /** The URL other providers reach `name` at (e.g. a recording proxy); default: its own port. */
    routeOf?: (name: string, url: string) => Promise<string> | string;
    /** Hosted MLS clients (config `mls.hosted_clients`); default on. */
    hostedClients?: boolean;
    /** Settings of a provider's `federation:` config over the defaults here, by server name. */
    federation?: Record<string, Record<string, unknown>>;
  } = {},
): Promise<ProviderProcess[]> {
  const ports = await Promise.all(names.map(async () => [await freePort(), await freePort()] as const));
  const routes: Record<string, string> = { ...extraRoutes };
  for (const [i, name] of names.entries()) {
    const url = `http://127.0.0.1:${ports[i]![0]}`;
    routes[name] = options.routeOf === undefined ? url : await options.routeOf(name, url);
  }
  const dirs = names.map((name) => tempDir(name.replace(/\W/g, "-")));
  const databases = await Promise.all(dirs.map((dir) => testDatabaseConfig(dir)));
  const providers = names.map((name, i) => {
    const dir = dirs[i]!;
    mkdirSync(join(dir, "data"), { recursive: true });
    const config = {
      server_name: name,
      federation: {
        bind_address: "127.0.0.1",
        port: ports[i]![0],
        static_routes: routes,
        well_known: false,
        retry_base_ms: 50,
        retry_max_ms: 500,
        ...options.federation?.[name],
      },
      database: databases[i],
      // Tests drive many events from one user; the rate limits have tests of their own.
      limits: { local_sends_per_second: 100_000, local_send_burst: 100_000 },
      signing_key_path: "data/signing.key",
      admin_api: { bind_address: "127.0.0.1", port: ports[i]![1], token: TOKEN },
      logging: { level: "warn" },
      mls: { hosted_clients: options.hostedClients ?? true },
    };
    writeFileSync(join(dir, "config.yaml"), yaml.dump(config));
    return new ProviderProcess(name, dir, ports[i]![0], ports[i]![1]);
  });
  await Promise.all(providers.map((p) => p.start()));
  return providers;
}

export async function stopProviders(providers: ProviderProcess[]): Promise<void> {
  await Promise.all(providers.map((p) => p.kill("SIGTERM")));
  for (const p of providers) removeDir(p.dir);
}

/** Polls until `check` stops throwing or the time is up. */
export async function eventually<T>(
  check: () => Promise<T>,
  timeoutMs = 20_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }
}

/**
 * Runs `count` calls of `task` with at most `width` in flight, telling `onAccepted` of each that
 * succeeded. A call that fails (its provider was killed, or is taking over) is retried, with the
 * same arguments and so the same transaction ID, until it succeeds. `MIMI_TEST_LOGS` prints each retry.
 */
export async function stream(
  count: number,
  width: number,
  task: (i: number) => Promise<string>,
  onAccepted: (i: number, eventId: string) => void,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      for (;;) {
        try {
          onAccepted(i, await task(i));
          break;
        } catch (err) {
          if (process.env.MIMI_TEST_LOGS) process.stderr.write(`retry ${i}: ${String(err).slice(0, 200)}\n`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
  };
  await Promise.all(Array.from({ length: width }, worker));
}

export { freePort };
