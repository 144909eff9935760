/**
 * The `bridge` section: what Matrix users get from two homeservers that are MIMI providers,
 * with every part real (test/support/twoHomeservers.ts): two Synapses, each with its
 * appservice+provider as a separate process on LevelDB on disk, durability `fsync` (the config's
 * default), driven through the client-server API only.
 *
 * 1. Matrix-to-Matrix latency, one message at a time, both ways.
 * 2. One appservice holding many portal rooms: set-up time, resident memory, idle CPU, and
 *    start-up time with them.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request as httpRequest, Agent, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { cpus } from "node:os";
import { join } from "node:path";
import yaml from "js-yaml";
import { freePort } from "../src/util/freePort";
import { SYNAPSE_VERSION } from "../test/support/synapse";
import {
  startTwoHomeservers,
  type Harness,
  type Homeserver,
  type MatrixClient,
  type MatrixEvent,
} from "../test/support/twoHomeservers";
import { ROOT } from "./baseline";
import { raisedLimits } from "./providerProcess";
import { fmt, percentile, removeDir, runWindow, sleep, tempDir, type WindowRun } from "./util";

const MESSAGES = Number(process.env.BENCH_BRIDGE_MESSAGES ?? 500);
const WARM_UP = Number(process.env.BENCH_BRIDGE_WARM_UP ?? 20);
const PORTALS = Number(process.env.BENCH_BRIDGE_PORTALS ?? 1000);
const MEMBERS = Math.max(2, Number(process.env.BENCH_BRIDGE_MEMBERS ?? 10));
/** Portals set up at once. */
const CREATE_WINDOW = Number(process.env.BENCH_BRIDGE_WINDOW ?? 8);
/** Which figures to measure, e.g. `2` (default: both). */
const FIGURES = (process.env.BENCH_BRIDGE_FIGURES ?? "1,2").split(",").map((f) => f.trim());
const RESTARTS = Number(process.env.BENCH_BRIDGE_RESTARTS ?? 3);
/** BENCH_BRIDGE_PROFILE=1 always profiles figure 1; =0 never; unset: when a p99 misses the target. */
const PROFILE = process.env.BENCH_BRIDGE_PROFILE;
const PROFILE_MESSAGES = Number(process.env.BENCH_BRIDGE_PROFILE_MESSAGES ?? 200);
/** BENCH_BRIDGE_DEFAULT_LIMITS=1 leaves the providers' rate limits at the harness's (federation: the defaults). */
const DEFAULT_LIMITS = process.env.BENCH_BRIDGE_DEFAULT_LIMITS === "1";
const P99_TARGET_MS = 150;
const IDLE_WINDOW_MS = 30_000;
const IDLE_WINDOWS = 2;
/** Settled: the appservice used less than this share of a core over SETTLE_WINDOW_MS. */
const SETTLE_CPU = 0.05;
const SETTLE_WINDOW_MS = 5_000;
const SETTLE_MAX_MS = 180_000;
const WAIT_MS = 120_000;
/** How often the set-up of figure 2 syncs alice and asks a's admin API about a portal. */
const PUMP_MS = 250;
const ADMIN_POLL_MS = 250;
const MESSAGE_WAIT_MS = 30_000;
/**
 * Figure 2's set-up starts no new portal after this long (the figures are then for those it made);
 * BENCH_BRIDGE_SETUP_MINUTES sets it (default 20).
 */
const SETUP_MAX_MS = Number(process.env.BENCH_BRIDGE_SETUP_MINUTES ?? 20) * 60_000;
const CLK_TCK = 100;

const TEXT = "m.room.message";
const isMembership = (stateKey: string, membership: string) => (e: MatrixEvent) =>
  e.type === "m.room.member" && e.state_key === stateKey && e.content.membership === membership;
const isBotNotice = (bot: string, pattern: RegExp) => (e: MatrixEvent) =>
  e.type === TEXT &&
  e.sender === bot &&
  e.content.msgtype === "m.notice" &&
  pattern.test(String(e.content.body));

function stats(values: number[]): { p50: number; p90: number; p99: number; max: number; min: number } {
  const sorted = [...values].sort((x, y) => x - y);
  return {
    min: sorted[0] ?? NaN,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1] ?? NaN,
  };
}

const pct = (share: number) => (Number.isFinite(share) ? `${fmt(share)}%` : "n/a (restarted)");

/** `min / median / max` of a few values. */
function range(values: number[], digits = 0, unit = ""): string {
  const s = stats(values);
  return values.length === 1
    ? `${fmt(s.p50, digits)}${unit}`
    : `${fmt(s.min, digits)} / ${fmt(s.p50, digits)} / ${fmt(s.max, digits)}${unit} (min / median / max of ${values.length})`;
}

async function waitUntil(
  what: string,
  timeoutMs: number,
  check: () => Promise<boolean>,
  everyMs = 100,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------
// Watching a user's /sync

/**
 * A long-poll `/sync` loop of one user, with `since`, limited to one room's messages: notes when
 * each `bench <tag> <n>` message from `sender` first arrives (performance.now() once the answer
 * is read).
 */
class SyncWatcher {
  private since: string | undefined;
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly seenAt = new Map<string, number>();
  private readonly waiters = new Map<string, (at: number) => void>();
  error: unknown;
  private readonly filter: string;

  constructor(
    private readonly client: MatrixClient,
    roomId: string,
    private readonly sender: string,
  ) {
    this.filter = JSON.stringify({
      room: {
        rooms: [roomId],
        timeline: { limit: 50, types: [TEXT] },
        state: { types: [] },
        ephemeral: { not_types: ["*"] },
        account_data: { not_types: ["*"] },
      },
      presence: { not_types: ["*"] },
      account_data: { not_types: ["*"] },
    });
  }

  async start(): Promise<void> {
    await this.syncOnce(0);
    this.loop = (async () => {
      while (!this.abort.signal.aborted) {
        try {
          await this.syncOnce(30_000);
        } catch (err) {
          if (this.abort.signal.aborted) return;
          this.error = err;
          for (const resolve of this.waiters.values()) resolve(NaN);
          return;
        }
      }
    })();
  }

  private async syncOnce(timeoutMs: number): Promise<void> {
    const query = new URLSearchParams({ timeout: String(timeoutMs), filter: this.filter });
    if (this.since !== undefined) query.set("since", this.since);
    const res = await fetch(`${this.client.baseUrl}/_matrix/client/v3/sync?${query.toString()}`, {
      headers: { authorization: `Bearer ${this.client.accessToken}` },
      signal: this.abort.signal,
    });
    const text = await res.text();
    const at = performance.now();
    if (!res.ok) throw new Error(`${this.client.userId}: /sync: ${res.status} ${text.slice(0, 300)}`);
    const answer = JSON.parse(text) as {
      next_batch: string;
      rooms?: { join?: Record<string, { timeline?: { events?: MatrixEvent[] } }> };
    };
    this.since = answer.next_batch;
    for (const room of Object.values(answer.rooms?.join ?? {})) {
      for (const event of room.timeline?.events ?? []) {
        if (event.type !== TEXT || event.sender !== this.sender) continue;
        const body = String(event.content.body);
        if (this.seenAt.has(body)) continue;
        this.seenAt.set(body, at);
        this.waiters.get(body)?.(at);
        this.waiters.delete(body);
      }
    }
  }

  /** When the message with this body arrived (NaN if the loop failed). */
  wait(body: string, timeoutMs = MESSAGE_WAIT_MS): Promise<number> {
    const seen = this.seenAt.get(body);
    if (seen !== undefined) return Promise.resolve(seen);
    if (this.error !== undefined) return Promise.reject(this.error as Error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(body);
        reject(new Error(`${this.client.userId} did not see "${body}" within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiters.set(body, (at) => {
        clearTimeout(timer);
        if (Number.isNaN(at)) reject(this.error as Error);
        else resolve(at);
      });
    });
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }
}

// ---------------------------------------------------------------------------------------------
// Figure 1: latency

interface Pair {
  alice: MatrixClient;
  bob: MatrixClient;
  portalA: string;
  portalB: string;
  aliceOnB: string;
  bobOnA: string;
}

/** alice (a.example) and bob (b.example) in one MIMI room, each in their portal, as the harness's test does. */
async function pairUp(h: Harness): Promise<Pair> {
  const [alice, bob] = await Promise.all([h.a.registerUser("alice"), h.b.registerUser("bob")]);
  const bobOnA = h.a.ghostOf(bob.userId);
  const aliceOnB = h.b.ghostOf(alice.userId);
  const portalA = await alice.createRoom({ name: "bench latency", invite: [h.a.botUserId] });
  await alice.waitForEvent(portalA, isBotNotice(h.a.botUserId, /MIMI room/), WAIT_MS, "the bot's notice");
  await alice.invite(portalA, bobOnA);
  const invite = await bob.waitForInvite((i) => i.inviter === h.b.botUserId, WAIT_MS);
  const portalB = await bob.join(invite.roomId);
  await alice.waitForEvent(portalA, isMembership(bobOnA, "join"), WAIT_MS, "bob's ghost joining");
  await bob.waitForEvent(portalB, isMembership(aliceOnB, "join"), WAIT_MS, "alice's ghost joining");
  return { alice, bob, portalA, portalB, aliceOnB, bobOnA };
}

interface Direction {
  label: string;
  from: MatrixClient;
  fromRoom: string;
  to: MatrixClient;
  toRoom: string;
  /** The sender's ghost on the receiver's homeserver. */
  ghost: string;
}

function directions(p: Pair): Direction[] {
  return [
    {
      label: "alice@a -> bob@b",
      from: p.alice,
      fromRoom: p.portalA,
      to: p.bob,
      toRoom: p.portalB,
      ghost: p.aliceOnB,
    },
    {
      label: "bob@b -> alice@a",
      from: p.bob,
      fromRoom: p.portalB,
      to: p.alice,
      toRoom: p.portalA,
      ghost: p.bobOnA,
    },
  ];
}

interface Timed {
  n: number;
  body: string;
  /** performance.now() just before the PUT /send, when it answered, and on arrival in /sync. */
  sentAt: number;
  answeredAt: number;
  arrivedAt: number;
}

/**
 * `warmUp + count` messages one at a time (the next once the previous arrived); answers the timed
 * ones (after the warm-up) and their wall time.
 */
async function oneAtATime(
  d: Direction,
  tag: string,
  warmUp: number,
  count: number,
): Promise<{ timed: Timed[]; seconds: number }> {
  const watcher = new SyncWatcher(d.to, d.toRoom, d.ghost);
  await watcher.start();
  const timed: Timed[] = [];
  let start = performance.now();
  try {
    for (let n = 0; n < warmUp + count; n++) {
      if (n === warmUp) start = performance.now();
      const body = `bench ${tag} ${n}`;
      const arrived = watcher.wait(body);
      arrived.catch(() => undefined);
      const sentAt = performance.now();
      await d.from.sendText(d.fromRoom, body);
      const answeredAt = performance.now();
      const arrivedAt = await arrived;
      if (n >= warmUp) timed.push({ n, body, sentAt, answeredAt, arrivedAt });
    }
  } finally {
    await watcher.stop();
  }
  return { timed, seconds: (performance.now() - start) / 1000 };
}

/** The first message to arrive both ways: both clients are in the MLS group. */
async function firstExchange(p: Pair): Promise<void> {
  for (const d of directions(p)) {
    const watcher = new SyncWatcher(d.to, d.toRoom, d.ghost);
    await watcher.start();
    try {
      const body = `bench first ${randomUUID()}`;
      const arrived = watcher.wait(body, WAIT_MS);
      arrived.catch(() => undefined);
      await d.from.sendText(d.fromRoom, body);
      await arrived;
    } finally {
      await watcher.stop();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Profiling: timing proxies on every hop of the appservices

interface Hop {
  tap: string;
  method: string;
  path: string;
  start: number;
  end: number;
  /** The `bench <tag> <n>` bodies in the request body, if any. */
  bodies: string[];
}

/** A pass-through HTTP proxy that notes when each request started and was answered. */
class Tap {
  readonly hops: Hop[] = [];
  private server: Server | undefined;
  private readonly agent = new Agent({ keepAlive: true });

  constructor(
    readonly name: string,
    private readonly target: string,
  ) {}

  async listen(port = 0): Promise<string> {
    const server = createServer((req, res) => {
      const start = performance.now();
      const chunks: Buffer[] = [];
      req.on("data", (chunk: Buffer) => chunks.push(chunk));
      req.on("end", () => {
        const body = Buffer.concat(chunks);
        const text = body.length < 256 * 1024 ? body.toString("utf8") : "";
        const bodies = [...text.matchAll(/bench [\w-]+ \d+/g)].map((m) => m[0]);
        const method = req.method ?? "GET";
        const path = req.url ?? "/";
        const upstream = httpRequest(
          `${this.target}${path}`,
          { method, headers: req.headers, agent: this.agent },
          (answer) => {
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            answer.pipe(res);
            answer.on("end", () =>
              this.hops.push({ tap: this.name, method, path, start, end: performance.now(), bodies }),
            );
          },
        );
        upstream.on("error", () => {
          if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
          res.end('{"errcode":"M_UNKNOWN","error":"the process behind the bench tap is down"}');
        });
        upstream.end(body);
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", resolve);
    });
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  close(): void {
    this.server?.closeAllConnections();
    this.server?.close();
    this.agent.destroy();
  }
}

interface SideTaps {
  /** Synapse -> appservice transactions. */
  transactions: Tap;
  /** appservice -> Synapse client-server API calls. */
  homeserver: Tap;
  /** this provider -> the other provider's federation listener. */
  federation: Tap;
}

interface AppserviceConfig {
  homeserver: { url: string };
  appservice: { port: number };
  federation: { static_routes: Record<string, string> };
}

/**
 * Puts a tap on every hop of one side's appservice: its config is rewritten (its listener on a
 * new port behind a tap on the old one, which the homeserver's registration names; the
 * homeserver URL and the static route to the other provider through taps) and it is restarted.
 */
async function tapSide(side: Homeserver, other: Homeserver): Promise<SideTaps> {
  const path = side.appservice.configPath;
  const config = yaml.load(readFileSync(path, "utf8")) as AppserviceConfig;
  const listenerPort = config.appservice.port;
  const innerPort = await freePort();
  const taps: SideTaps = {
    transactions: new Tap(`${side.domain} transactions`, `http://127.0.0.1:${innerPort}`),
    homeserver: new Tap(`${side.domain} homeserver`, config.homeserver.url),
    federation: new Tap(`${side.domain} federation`, config.federation.static_routes[other.domain]!),
  };
  await side.appservice.stop();
  await taps.transactions.listen(listenerPort);
  config.appservice.port = innerPort;
  config.homeserver.url = await taps.homeserver.listen();
  config.federation.static_routes[other.domain] = await taps.federation.listen();
  writeFileSync(path, yaml.dump(config));
  await side.appservice.start();
  return taps;
}

interface Segment {
  name: string;
  values: number[];
}

/** Where each message's time went, from the taps' notes. */
function breakdown(timed: Timed[], from: SideTaps, to: SideTaps): Segment[] {
  const seg = (name: string): Segment => ({ name, values: [] });
  const put = seg("PUT /send answered by the sender's Synapse (for reference)");
  const delivery = seg("sender's Synapse -> its appservice: transaction arrives");
  const inbox = seg("appservice stores the transaction (inbox, fsync) and answers");
  const mimi = seg("bridge maps it, MLS encrypt, hub/follower write (fsync), federation send starts");
  const federation = seg("other provider receives and answers the federation transaction");
  const show = seg("receiver's provider: apply, decrypt, portal follower wakes, ghost send starts");
  const ghost = seg("ghost's PUT /send at the receiver's Synapse");
  const sync = seg("receiver's Synapse: ghost's event -> receiver's /sync answer");
  const total = seg("total (PUT /send start -> receiver's /sync)");
  let missing = 0;
  for (const t of timed) {
    const txn = from.transactions.hops.find((h) => h.bodies.includes(t.body));
    const ghostSend = to.homeserver.hops.find((h) => h.method === "PUT" && h.bodies.includes(t.body));
    if (txn === undefined || ghostSend === undefined) {
      missing++;
      continue;
    }
    const fed = from.federation.hops.find(
      (h) => h.method === "PUT" && h.start >= txn.end && h.start <= ghostSend.start,
    );
    if (fed === undefined) {
      missing++;
      continue;
    }
    put.values.push(t.answeredAt - t.sentAt);
    delivery.values.push(txn.start - t.sentAt);
    inbox.values.push(txn.end - txn.start);
    mimi.values.push(fed.start - txn.end);
    federation.values.push(fed.end - fed.start);
    show.values.push(ghostSend.start - fed.end);
    ghost.values.push(ghostSend.end - ghostSend.start);
    sync.values.push(t.arrivedAt - ghostSend.end);
    total.values.push(t.arrivedAt - t.sentAt);
  }
  const segments = [delivery, inbox, mimi, federation, show, ghost, sync, total, put];
  if (missing > 0) segments.push({ name: `(${missing} messages not matched on every hop)`, values: [] });
  return segments;
}

// ---------------------------------------------------------------------------------------------
// Figure 2: many portals

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return NaN; // exited
  }
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** VmRSS and VmHWM of a process, in MiB. */
function memory(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rss: kb("VmRSS") / 1024, hwm: kb("VmHWM") / 1024 };
}

/** Share of one core each process used over `ms`. */
async function cpuOver(pids: number[], ms: number): Promise<number[]> {
  const before = pids.map(cpuSeconds);
  const start = performance.now();
  await sleep(ms);
  const seconds = (performance.now() - start) / 1000;
  return pids.map((pid, i) => (cpuSeconds(pid) - before[i]!) / seconds);
}

/** Waits until the process used less than SETTLE_CPU of a core over SETTLE_WINDOW_MS; answers how long. */
async function settle(pid: number): Promise<number> {
  const start = performance.now();
  while (performance.now() - start < SETTLE_MAX_MS) {
    const [share] = await cpuOver([pid], SETTLE_WINDOW_MS);
    if (share! < SETTLE_CPU) break;
  }
  return (performance.now() - start) / 1000;
}

/**
 * One user's `/sync` loop shared by every wait on their timelines, at most one `/sync` every
 * PUMP_MS: many portals set up at once do not make the client sync back to back (a user in
 * hundreds of rooms costs the homeserver for each `/sync`).
 */
class SyncPump {
  private readonly waiters = new Set<() => void>();
  private running: Promise<void> | undefined;
  private stopped = false;
  error: unknown;

  constructor(private readonly client: MatrixClient) {}

  start(): void {
    this.running = (async () => {
      while (!this.stopped) {
        const started = performance.now();
        try {
          await this.client.sync(5_000);
        } catch (err) {
          this.error = err;
        }
        for (const wake of [...this.waiters]) wake();
        await sleep(Math.max(0, PUMP_MS - (performance.now() - started)));
      }
    })();
  }

  /** Waits until `predicate` holds of the room's timeline as seen so far. */
  async until(
    roomId: string,
    predicate: (timeline: MatrixEvent[]) => boolean,
    what: string,
  ): Promise<MatrixEvent[]> {
    const deadline = performance.now() + WAIT_MS;
    for (;;) {
      const timeline = this.client.timeline(roomId);
      if (predicate(timeline)) return timeline;
      if (performance.now() > deadline)
        throw new Error(`${this.client.userId} did not see ${what} in ${roomId} within ${WAIT_MS / 1000} s`);
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.waiters.delete(wake);
          resolve();
        };
        this.waiters.add(wake);
      });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }
}

interface Portal {
  matrixRoomId: string;
  mimiRoomId: string;
}

interface Members {
  alice: MatrixClient;
  aliceSync: SyncPump;
  carol: MatrixClient;
  /** The remote members' MIMI user IDs (users of b.example) and their ghosts on a.example. */
  remote: string[];
  ghosts: string[];
}

/** Each time the remote side's appservice exited during the set-up and the bench started it again: its last error line. */
const remoteRestarts: string[] = [];
let restarting: Promise<void> | undefined;

/** Starts the appservice again if it has exited (one restart at a time), noting why it exited. */
async function ensureRunning(side: Homeserver): Promise<void> {
  if (side.appservice.running) return;
  restarting ??= (async () => {
    const lines = side.appservice.logTail(40).split("\n");
    remoteRestarts.push(
      lines.filter((line) => /Error\b|error:/.test(line)).slice(-1)[0] ?? lines.slice(-1)[0]!,
    );
    await side.appservice.start();
  })().finally(() => (restarting = undefined));
  await restarting;
}

/**
 * One admin API request, tried again with the same transaction ID while the answer is 429 (as a
 * client would), or after the appservice exited and was started again.
 */
async function adminRetrying<T = Record<string, unknown>>(
  side: Homeserver,
  method: string,
  path: string,
  body?: unknown,
): Promise<T> {
  const deadline = performance.now() + WAIT_MS;
  for (;;) {
    try {
      return await side.admin<T>(method, path, body);
    } catch (err) {
      const message = (err as Error).message;
      if (performance.now() > deadline) throw err;
      if (/: 429 /.test(message)) {
        await sleep(Math.max(10, Number(/"retry_after_ms":(\d+)/.exec(message)?.[1] ?? 100)));
        continue;
      }
      // An exit is seen a moment after the failure it answered with.
      await sleep(300);
      if (side.appservice.running) throw err;
      await ensureRunning(side);
    }
  }
}

let adminTxn = 0;
const nextTxn = () => `bench-bridge-${process.pid}-${++adminTxn}`;

/**
 * One portal with MEMBERS members, through the bridge's real paths: alice creates a room with
 * a's bot invited (the bot joins and creates the MIMI room), invites carol (local) and the
 * ghosts of the remote users; carol joins in Matrix; the remote users join the MIMI room through
 * b's rooms API (its admin API); their ghosts join the portal on a.example. Done once every
 * ghost has joined on Matrix and alice's MLS client has every member in its group.
 */
async function buildPortal(h: Harness, m: Members, k: number, steps: Map<string, number[]>): Promise<Portal> {
  const { alice, carol } = m;
  let last = performance.now();
  const step = (name: string) => {
    const now = performance.now();
    const list = steps.get(name) ?? [];
    list.push((now - last) / 1000);
    steps.set(name, list);
    last = now;
  };
  const matrixRoomId = await alice.createRoom({
    name: `bench portal ${k}`,
    preset: "private_chat",
    invite: [h.a.botUserId, ...m.ghosts],
  });
  step("room created with its invites");
  const noticed = isBotNotice(h.a.botUserId, /MIMI room/);
  const notice = (await m.aliceSync.until(matrixRoomId, (t) => t.some(noticed), "the bot's notice")).find(
    noticed,
  )!;
  const mimiRoomId = /MIMI room (![^\s,]+)/.exec(String(notice.content.body))![1]!;
  step("bot's notice seen");
  // Invited once the bot is in the room: the homeserver sends the appservice that room's events from then on.
  await alice.invite(matrixRoomId, carol.userId);
  step("carol invited");
  const path = `/rooms/${encodeURIComponent(mimiRoomId)}`;
  await waitUntil(
    `the MIMI invites of ${mimiRoomId}`,
    WAIT_MS,
    async () => {
      const info = await h.a
        .admin<{ participation: Record<string, string> }>("GET", path)
        .catch(() => undefined);
      return [carol.userId, ...m.remote].every((u) => info?.participation[u] === "invite");
    },
    ADMIN_POLL_MS,
  );
  step("MIMI invites at the hub");
  // The first remote member's join brings b into the room; the others join together after it.
  const join = (user: string) => adminRetrying(h.b, "PUT", `${path}/join/${nextTxn()}`, { user });
  await join(m.remote[0]!);
  await Promise.all([carol.join(matrixRoomId), ...m.remote.slice(1).map(join)]);
  step("carol's join and the remote joins answered");
  await m.aliceSync.until(
    matrixRoomId,
    (timeline) => m.ghosts.every((g) => timeline.some(isMembership(g, "join"))),
    "every ghost joining",
  );
  step("ghosts joined on Matrix");
  await waitUntil(
    `alice's MLS group of ${mimiRoomId} having ${MEMBERS} members`,
    WAIT_MS,
    async () => {
      const view = await h.a
        .admin<{ members: string[] }>("GET", `${path}/mls?user=${encodeURIComponent("@alice:a.example")}`)
        .catch(() => undefined);
      return new Set(view?.members.filter((u) => u !== "")).size >= MEMBERS;
    },
    ADMIN_POLL_MS,
  );
  step("MLS group complete");
  return { matrixRoomId, mimiRoomId };
}

interface StartUp {
  stopSeconds: number;
  readySeconds: number;
  inboundSeconds: number;
  outboundSeconds: number;
}

/**
 * SIGTERM a's appservice, start it again and, right after the spawn, a remote member sends a
 * message to one portal's MIMI room (through b's rooms API) and alice sends one in another
 * portal on Matrix: from the spawn to the ready line, to the remote message in alice's /sync
 * (from its ghost), and to alice's message decrypted for the remote member at b.
 */
async function restartOnce(
  h: Harness,
  m: Members,
  inbound: Portal,
  outbound: Portal,
  round: number,
): Promise<StartUp> {
  const sender = m.remote[0]!;
  const ghost = m.ghosts[0]!;
  const watcher = new SyncWatcher(m.alice, inbound.matrixRoomId, ghost);
  await watcher.start();
  const messages = (portal: Portal) => `/rooms/${encodeURIComponent(portal.mimiRoomId)}/messages`;
  const query = (from: number, waitMs: number) =>
    `${messages(outbound)}?user=${encodeURIComponent(sender)}&from=${from}&limit=1000&wait_ms=${waitMs}`;
  let from = 1;
  for (;;) {
    const page = await h.b.admin<{ messages: { seq: number }[] }>("GET", query(from, 0));
    if (page.messages.length === 0) break;
    from = page.messages[page.messages.length - 1]!.seq + 1;
  }
  try {
    const stopStart = performance.now();
    await h.a.appservice.stop();
    const stopSeconds = (performance.now() - stopStart) / 1000;
    const inBody = `bench restart-in ${round}`;
    const outBody = `bench restart-out ${round}`;
    const spawnAt = performance.now();
    const ready = h.a.appservice.start().then(() => performance.now());
    const inArrival = watcher.wait(inBody, WAIT_MS);
    inArrival.catch(() => undefined);
    // b's send waits for a's hub in b's queue; a refusal for now is tried again, same transaction.
    const inTxn = nextTxn();
    const inSent = (async () => {
      const deadline = performance.now() + WAIT_MS;
      for (;;) {
        try {
          return await h.b.admin("PUT", `${messages(inbound)}/${inTxn}`, {
            sender,
            type: TEXT,
            content: { msgtype: "m.text", body: inBody },
          });
        } catch (err) {
          if (performance.now() > deadline) throw err;
          await sleep(50);
        }
      }
    })();
    const outArrival = (async () => {
      await m.alice.sendText(outbound.matrixRoomId, outBody);
      const deadline = performance.now() + WAIT_MS;
      while (performance.now() < deadline) {
        const page = await h.b.admin<{ messages: { seq: number; content?: { body?: unknown } }[] }>(
          "GET",
          query(from, 5_000),
        );
        const at = performance.now();
        for (const message of page.messages) {
          if (message.content?.body === outBody) return at;
          from = message.seq + 1;
        }
      }
      throw new Error(`"${outBody}" did not reach ${sender} within ${WAIT_MS / 1000} s`);
    })();
    const [readyAt, inAt, outAt] = await Promise.all([ready, inArrival, outArrival, inSent]);
    return {
      stopSeconds,
      readySeconds: (readyAt - spawnAt) / 1000,
      inboundSeconds: (inAt - spawnAt) / 1000,
      outboundSeconds: (outAt - spawnAt) / 1000,
    };
  } finally {
    await watcher.stop();
  }
}

// ---------------------------------------------------------------------------------------------

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join(" | ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("-|-"), ...rows.map(line)];
}

let compiled: string[] | undefined;

/**
 * The appservices' node arguments: the sources compiled by tsc (`tsconfig.build.json`, as
 * `npm start` runs them) once per run into a folder of this section's own, so that a rebuild of
 * `dist/` meanwhile does not change what a restarted appservice runs; BENCH_RUNNER=tsx runs the
 * sources through tsx instead (the harness's default).
 */
function appserviceEntry(): string[] | undefined {
  // BENCH_NODE_ARGS adds Node options to both appservices, as in the multiprocess section.
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? "").split(" ").filter((arg) => arg !== "");
  if (process.env.BENCH_RUNNER === "tsx")
    return nodeArgs.length === 0
      ? undefined
      : [...nodeArgs, "--import", "tsx", join(ROOT, "src/cli/main.ts")];
  if (compiled === undefined) {
    const outDir = join(ROOT, ".tmp", "bench-bridge-dist");
    rmSync(outDir, { recursive: true, force: true });
    execFileSync(
      process.execPath,
      [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json", "--outDir", outDir],
      { cwd: ROOT, stdio: "inherit" },
    );
    compiled = [join(outDir, "cli", "main.js")];
  }
  return [...nodeArgs, ...compiled];
}

function startOptions(dir: string) {
  return {
    dir,
    captureFederation: false,
    logLevel: "warn" as const,
    durability: "fsync" as const,
    entry: appserviceEntry(),
    // As in the multiprocess section: the bench measures the bridge, not the providers' limiters.
    ...(DEFAULT_LIMITS ? {} : { limits: raisedLimits(ROOT) }),
  };
}

async function latencyFigure(notes: string[]): Promise<void> {
  const dir = tempDir("bench-bridge-latency");
  let h: Harness | undefined;
  const started = performance.now();
  try {
    h = await startTwoHomeservers(startOptions(dir));
    const pair = await pairUp(h);
    await firstExchange(pair);
    const rows: string[][] = [];
    const p99s: number[] = [];
    for (const d of directions(pair)) {
      const tag = d.label.startsWith("alice") ? "ab" : "ba";
      const { timed, seconds } = await oneAtATime(d, tag, WARM_UP, MESSAGES);
      const s = stats(timed.map((t) => t.arrivedAt - t.sentAt));
      const put = stats(timed.map((t) => t.answeredAt - t.sentAt));
      p99s.push(s.p99);
      rows.push([
        d.label,
        fmt(s.p50, 1),
        fmt(s.p90, 1),
        fmt(s.p99, 1),
        fmt(s.max, 1),
        fmt(timed.length / seconds, 1),
        fmt(put.p50, 1),
        `p99 < ${P99_TARGET_MS}`,
      ]);
    }
    console.log(
      `1. Matrix-to-Matrix latency, one message at a time, ${fmt(MESSAGES)} messages each way after ${WARM_UP} warm-up (ms):`,
    );
    for (const line of table(["direction", "p50", "p90", "p99", "max", "msgs/s", "PUT p50", "target"], rows))
      console.log(line);
    const profile = PROFILE === "1" || (PROFILE !== "0" && p99s.some((p) => p >= P99_TARGET_MS));
    if (profile) await profileFigure(h, pair);
  } catch (err) {
    notes.push(`figure 1: ${(err as Error).message}${h === undefined ? "" : `\n${h.diagnostics(20)}`}`);
  } finally {
    await h?.stop();
    removeDir(dir);
    notes.push(`figure 1 took ${fmt((performance.now() - started) / 1000)} s`);
  }
}

async function profileFigure(h: Harness, pair: Pair): Promise<void> {
  const taps = [await tapSide(h.a, h.b), await tapSide(h.b, h.a)] as const;
  try {
    await firstExchange(pair);
    console.log(
      `   Where the time goes (${PROFILE_MESSAGES} more messages each way after ${WARM_UP} warm-up, with timing proxies on ` +
        `every hop of both appservices: Synapse -> appservice, appservice -> Synapse, provider -> provider; ms):`,
    );
    for (const [i, d] of directions(pair).entries()) {
      const [from, to] = i === 0 ? taps : [taps[1], taps[0]];
      const { timed } = await oneAtATime(d, i === 0 ? "pab" : "pba", WARM_UP, PROFILE_MESSAGES);
      const rows = breakdown(timed, from, to).map((segment) => {
        if (segment.values.length === 0) return [segment.name, "", "", "", ""];
        const s = stats(segment.values);
        return [segment.name, fmt(s.p50, 1), fmt(s.p90, 1), fmt(s.p99, 1), fmt(s.max, 1)];
      });
      console.log(`   ${d.label}:`);
      for (const line of table(["segment", "p50", "p90", "p99", "max"], rows)) console.log(`   ${line}`);
    }
  } finally {
    for (const side of taps) for (const tap of Object.values(side)) tap.close();
  }
}

async function portalsFigure(notes: string[]): Promise<void> {
  const dir = tempDir("bench-bridge-portals");
  let h: Harness | undefined;
  const started = performance.now();
  try {
    h = await startTwoHomeservers(startOptions(dir));
    const remoteCount = MEMBERS - 2;
    const [alice, carol, ...remoteClients] = await Promise.all([
      h.a.registerUser("alice"),
      h.a.registerUser("carol"),
      ...Array.from({ length: remoteCount }, (_, i) => h!.b.registerUser(`bob${i + 1}`)),
    ]);
    const remote = remoteClients.map((c) => c.userId);
    const members: Members = {
      alice: alice!,
      aliceSync: new SyncPump(alice!),
      carol: carol!,
      remote,
      ghosts: remote.map((u) => h!.a.ghostOf(u)),
    };
    const portals: Portal[] = [];
    const perPortal: number[] = [];
    const steps = new Map<string, number[]>();
    const pidsNow = () => [h!.a.appservice.pid, h!.a.synapse.pid, h!.b.appservice.pid, h!.b.synapse.pid];
    const setupPids = pidsNow();
    const setupCpu = setupPids.map(cpuSeconds);
    const setupStart = performance.now();
    let done = 0;
    members.aliceSync.start();
    let run: WindowRun;
    try {
      run = await runWindow(PORTALS, CREATE_WINDOW, setupStart + SETUP_MAX_MS, async (k) => {
        const t = performance.now();
        portals[k] = await buildPortal(h!, members, k, steps);
        perPortal.push((performance.now() - t) / 1000);
        if (++done % Math.max(1, Math.round(PORTALS / 10)) === 0)
          process.stderr.write(
            `bridge: ${done} portals set up in ${fmt((performance.now() - setupStart) / 1000)} s\n`,
          );
      });
    } finally {
      await members.aliceSync.stop();
    }
    const setupSeconds = run.seconds;
    // NaN for a process that exited meanwhile.
    const setupShares = setupPids.map((p, i) => (100 * (cpuSeconds(p) - setupCpu[i]!)) / setupSeconds);
    const pids = pidsNow();
    const held = portals.filter((p) => p !== undefined);
    if (held.length === 0) throw new Error(`no portal set up within ${SETUP_MAX_MS / 60_000} min`);
    if (held.length < PORTALS)
      notes.push(
        `figure 2: only ${held.length} of ${PORTALS} portals were set up within the ${SETUP_MAX_MS / 60_000}-minute cap; ` +
          "the figures after the set-up are for those",
      );
    if (remoteRestarts.length > 0)
      notes.push(
        `figure 2: b's appservice exited ${remoteRestarts.length} time(s) during the set-up and was started again: ` +
          remoteRestarts.join(" | "),
      );
    const pid = h.a.appservice.pid;
    const settleSeconds = await settle(pid);
    const settled = memory(pid);
    const idle: number[][] = [];
    for (let i = 0; i < IDLE_WINDOWS; i++) idle.push(await cpuOver(pids, IDLE_WINDOW_MS));
    const afterIdle = memory(pid);

    const startUps: StartUp[] = [];
    for (let round = 0; round < RESTARTS; round++) {
      const inbound = held[(round * 2 + 1) % held.length]!;
      const outbound = held[(round * 2 + 2) % held.length]!;
      startUps.push(await restartOnce(h, members, inbound, outbound, round));
    }
    const restartedPid = h.a.appservice.pid;
    const restartSettle = RESTARTS > 0 ? await settle(restartedPid) : 0;
    const restarted = memory(restartedPid);
    const [restartIdle] = RESTARTS > 0 ? await cpuOver([restartedPid], IDLE_WINDOW_MS) : [NaN];

    const per = stats(perPortal);
    const share = (i: number) =>
      range(
        idle.map((w) => 100 * w[i]!),
        1,
        "%",
      );
    const startUp = (what: string, value: (s: StartUp) => number) =>
      `${what}: ${range(startUps.map(value), 2, " s")}`;
    console.log(
      `2. One appservice (a.example) holding ${fmt(held.length)} portal rooms of ${MEMBERS} members each:`,
    );
    const lines = [
      `set-up: ${fmt(held.length)} portals in ${fmt(setupSeconds)} s (${fmt(setupSeconds / 60, 1)} min), ${CREATE_WINDOW} at a time, ` +
        `${fmt(held.length / setupSeconds, 2)} portals/s; one portal p50 ${fmt(per.p50, 1)} s, p90 ${fmt(per.p90, 1)} s, max ${fmt(per.max, 1)} s`,
      `  p50 per step: ${[...steps].map(([name, values]) => `${name} ${fmt(stats(values).p50, 2)} s`).join(", ")}`,
      `  CPU meanwhile (share of one core): appservice a ${pct(setupShares[0]!)}, Synapse a ${pct(setupShares[1]!)}, ` +
        `appservice b ${pct(setupShares[2]!)}, Synapse b ${pct(setupShares[3]!)}`,
      `resident memory (VmRSS) of a's appservice process: ${fmt(settled.rss)} MiB once settled ` +
        `(${fmt(settleSeconds)} s after the set-up), ${fmt(afterIdle.rss)} MiB after ${(IDLE_WINDOWS * IDLE_WINDOW_MS) / 1000} s idle ` +
        `(peak VmHWM ${fmt(afterIdle.hwm)} MiB)` +
        (RESTARTS > 0
          ? `; after its restarts, settled (${fmt(restartSettle)} s): ${fmt(restarted.rss)} MiB`
          : ""),
      `idle CPU (utime+stime over ${IDLE_WINDOWS} windows of ${IDLE_WINDOW_MS / 1000} s, share of one core): ` +
        `appservice a ${share(0)}; Synapse a ${share(1)}; appservice b ${share(2)}; Synapse b ${share(3)}` +
        (RESTARTS > 0 ? `; appservice a after its restarts (one window) ${fmt(100 * restartIdle!, 1)}%` : ""),
      ...(RESTARTS === 0
        ? []
        : [
            startUp("SIGTERM -> exited", (s) => s.stopSeconds),
            startUp("start-up, from spawn to the ready line on stdout", (s) => s.readySeconds),
            startUp(
              "  to a remote member's message (sent through b's rooms API at the spawn) in alice's /sync from its ghost",
              (s) => s.inboundSeconds,
            ),
            startUp(
              "  to alice's message (sent on Matrix at the spawn) decrypted for a remote member at b",
              (s) => s.outboundSeconds,
            ),
          ]),
    ];
    for (const line of lines) console.log(`   ${line}`);
  } catch (err) {
    notes.push(`figure 2: ${(err as Error).message}${h === undefined ? "" : `\n${h.diagnostics(20)}`}`);
  } finally {
    await h?.stop();
    removeDir(dir);
    notes.push(`figure 2 took ${fmt((performance.now() - started) / 1000)} s`);
  }
}

export async function bridgeSection(): Promise<void> {
  const runner =
    process.env.BENCH_RUNNER === "tsx"
      ? "`node --import tsx src/cli/main.ts`"
      : "`node .tmp/bench-bridge-dist/cli/main.js` (the sources compiled by tsc at the start of the section)";
  console.log(
    `\n== Matrix bridge: two Synapse ${SYNAPSE_VERSION} homeservers, each with its appservice+provider as a separate process ` +
      `(durable LevelDB, fsync) ==`,
  );
  console.log(
    [
      `a.example and b.example on 127.0.0.1 (test/support/twoHomeservers.ts): Synapse on SQLite, client API only ` +
        `(MIMI federation between the providers, Synapse federation off), its rc_* rate limits raised to 10,000/s ` +
        `(burst 100,000), bcrypt_rounds 4, URL previews and metrics off, nothing else tuned (appservice transactions ` +
        `and /sync wake-ups as Synapse does them). Appservices run ${runner}, log level warn, ` +
        (DEFAULT_LIMITS
          ? "federation rate limits at their defaults (local sends raised, the harness's); "
          : "rate limits raised to the config schema's maxima (as in the multiprocess section); ") +
        `Matrix users act through the client-server API; the bench reads the providers' admin APIs only to see when a ` +
        `set-up step is done; the bench client shares the machine's ${cpus().length} cores with all of it.`,
      `1: alice (a.example) made a room with a's bot invited and invited bob's ghost; bob accepted the invite b's bot delivered. ` +
        `Each message is timed from just before the sender's PUT /send to its arrival, from the sender's ghost, in the ` +
        `receiver's long-poll /sync (with since, running throughout); the next is sent once it arrived.`,
      `2: ${fmt(PORTALS)} portals on a.example, ${CREATE_WINDOW} set up at a time, each a MIMI room of ${MEMBERS} members: ` +
        `alice and carol, Matrix users of a.example, and ${MEMBERS - 2} users of b.example (bob1..bob${MEMBERS - 2}). alice creates ` +
        `a room with a's bot and the b users' ghosts invited (the bot joins, makes the MIMI room and invites the b users there); ` +
        `once the bot's notice is in, she invites carol; the first b user joins the MIMI room through b's rooms API (admin API), ` +
        `then carol (on Matrix) and the other b users; the ghosts join the portal. A portal is done once every ghost's join is ` +
        `in alice's /sync and alice's MLS client has all ${MEMBERS} members in its group. b's bot opens one portal per MIMI room ` +
        `on b.example for the first invite (the b users never join it: they act through b's rooms API). Memory: VmRSS of ` +
        `a's appservice process from /proc, once it used < ${SETTLE_CPU * 100}% of a core over ${SETTLE_WINDOW_MS / 1000} s, and ` +
        `after the idle windows. Start-up: SIGTERM, then start again, ${RESTARTS} times.`,
    ].join("\n"),
  );
  const notes: string[] = [];
  if (FIGURES.includes("1")) await latencyFigure(notes);
  if (FIGURES.includes("2")) await portalsFigure(notes);
  for (const note of notes) console.log(note);
}
