import { readFileSync } from "node:fs";
import { cpus } from "node:os";
import { AdminClient, HistoryWatcher, type AdminFlavour, type HistoryEvent } from "./adminClient";
import { addBaseline, DEFAULT_BASELINE, ROOT, type Baseline } from "./baseline";
import {
  ADMIN_TOKEN,
  providerEntry,
  startProviders,
  stopProviders,
  type BenchProvider,
} from "./providerProcess";
import { fmt, percentile, runWindow } from "./util";

const HUB = "a.example";
const FOLLOWER = "b.example";
const ALICE = `@alice:${HUB}`;
const BOB = `@bob:${FOLLOWER}`;
const MESSAGE = "org.example.message";

const SENDS = Number(process.env.BENCH_MP_SENDS ?? 4000);
const SEND_WINDOW = 16;
/** The timed part of figures 1 and 2 stops after SENDS events or this long, whichever comes first. */
const SEND_MS = 10_000;
const WARM_UP = 200;
const ECHOES = Number(process.env.BENCH_MP_ECHOES ?? 500);
const ECHO_WARM_UP = 20;
const ECHO_ROOM_SIZE = 100;
const FLOOD = Number(process.env.BENCH_MP_FLOOD ?? 2000);
const FLOOD_WINDOW = 64;
const STATE_BEFORE = Number(process.env.BENCH_MP_STATE_BEFORE ?? 10_000);
const STATE_AFTER = Number(process.env.BENCH_MP_STATE_AFTER ?? 10_000);
const FILL_WINDOW = 64;
const STATE_CALLS = 5;
/** No single figure may take longer than this (figure 5, which fills a room first: STATE_FIGURE_MS). */
const FIGURE_MS = 120_000;
const STATE_FIGURE_MS = 180_000;
const ECHO_WAIT_MS = 10_000;

/** In-process figures another section already measured in this run. */
export interface CoreCache {
  local?: number;
  follower?: number;
}

interface Figures {
  hubLocal?: number;
  follower?: number;
  echoP50?: number;
  echoP99?: number;
  floodP50?: number;
  floodP99?: number;
  stateMs?: number;
}

interface CheckoutResult {
  figures: Figures;
  api?: AdminFlavour;
  stateDetail?: string;
  /** Wall time per figure, for the timing line. */
  seconds: string[];
  notes: string[];
}

function content(tag: string, n: number): Record<string, unknown> {
  return { msgtype: "m.text", body: `message number ${n} with a little text in it`, bench: tag, n };
}

/** Times at which each tagged message was first seen in a watched history. */
class Arrivals {
  private readonly seenAt = new Map<number, number>();
  private readonly waiters = new Map<number, (at: number) => void>();

  constructor(private readonly tag: string) {}

  readonly onEvent = (event: HistoryEvent, at: number): void => {
    const n = event.content?.n;
    if (event.content?.bench !== this.tag || typeof n !== "number" || this.seenAt.has(n)) return;
    this.seenAt.set(n, at);
    this.waiters.get(n)?.(at);
    this.waiters.delete(n);
  };

  at(n: number): number | undefined {
    return this.seenAt.get(n);
  }

  get count(): number {
    return this.seenAt.size;
  }

  wait(n: number, timeoutMs: number): Promise<number> {
    const seen = this.seenAt.get(n);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(n);
        reject(
          new Error(`message ${n} did not appear in the follower's history within ${timeoutMs / 1000} s`),
        );
      }, timeoutMs);
      this.waiters.set(n, (at) => {
        clearTimeout(timer);
        resolve(at);
      });
    });
  }
}

async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A room on the hub with public join rules that the follower's user has joined. */
async function sharedRoom(hub: AdminClient, follower: AdminClient): Promise<string> {
  const roomId = await hub.createRoom(ALICE);
  await hub.send(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
  await follower.join(roomId, BOB);
  const head = await hub.headSeq(roomId);
  await waitUntil("the follower's copy reaching the join", 10_000, async () => {
    try {
      return (await follower.headSeq(roomId)) >= head;
    } catch {
      return false;
    }
  });
  return roomId;
}

async function settle(clients: AdminClient[]): Promise<void> {
  for (const client of clients) await client.waitForEmptyQueues(60_000);
}

async function sendRate(client: AdminClient, roomId: string, sender: string, tag: string): Promise<number> {
  const deadline = performance.now() + FIGURE_MS;
  await runWindow(WARM_UP, SEND_WINDOW, deadline, (i) =>
    client.send(roomId, sender, MESSAGE, content(tag, i)),
  );
  const run = await runWindow(SENDS, SEND_WINDOW, Math.min(deadline, performance.now() + SEND_MS), (i) =>
    client.send(roomId, sender, MESSAGE, content(tag, WARM_UP + i)),
  );
  return run.completed / run.seconds;
}

/** Sends one message at a time from the follower's user; each waits for its echo. */
async function echoLatencies(hub: AdminClient, follower: AdminClient, tag: string): Promise<number[]> {
  const deadline = performance.now() + FIGURE_MS;
  const latencies: number[] = [];
  let n = 0;
  while (latencies.length < ECHOES) {
    if (performance.now() > deadline)
      throw new Error(`only ${latencies.length} echoes within the time limit`);
    const roomId = await sharedRoom(hub, follower);
    const arrivals = new Arrivals(tag);
    const from = (await follower.headSeq(roomId)) + 1;
    const watcher = new HistoryWatcher(follower, roomId, from, deadline, arrivals.onEvent);
    try {
      for (let k = 0; k < ECHO_ROOM_SIZE && latencies.length < ECHOES; k++) {
        const id = n++;
        const start = performance.now();
        const echoed = arrivals.wait(id, ECHO_WAIT_MS);
        // Should the send fail, its error is the one reported; the echo's timeout is then moot.
        echoed.catch(() => undefined);
        await follower.send(roomId, BOB, MESSAGE, content(tag, id));
        const at = await echoed;
        if (id >= ECHO_WARM_UP) latencies.push(at - start);
      }
    } finally {
      await watcher.stop();
    }
    if (watcher.error !== undefined) throw watcher.error;
  }
  return latencies;
}

/** FLOOD messages from the follower's user, FLOOD_WINDOW in flight; latency from send to echo. */
async function floodLatencies(hub: AdminClient, follower: AdminClient, tag: string): Promise<number[]> {
  const deadline = performance.now() + FIGURE_MS;
  const roomId = await sharedRoom(hub, follower);
  const arrivals = new Arrivals(tag);
  const from = (await follower.headSeq(roomId)) + 1;
  const watcher = new HistoryWatcher(follower, roomId, from, deadline, arrivals.onEvent);
  const sentAt: number[] = [];
  try {
    await runWindow(FLOOD, FLOOD_WINDOW, deadline, (i) => {
      sentAt[i] = performance.now();
      return follower.send(roomId, BOB, MESSAGE, content(tag, i));
    });
    await waitUntil("every flood message's echo", Math.max(0, deadline - performance.now()), async () => {
      if (watcher.error !== undefined) throw watcher.error;
      return arrivals.count >= sentAt.length;
    });
  } finally {
    await watcher.stop();
  }
  if (sentAt.length < FLOOD) throw new Error(`only ${sentAt.length} of ${FLOOD} sent within the time limit`);
  return sentAt.map((start, i) => arrivals.at(i)! - start);
}

/**
 * `GET /state` at the hub for an event with STATE_BEFORE events ahead of it
 * and STATE_AFTER behind it, signed as the follower (a server with a joined
 * user) with the follower's own key file.
 */
async function stateRequest(
  hub: AdminClient,
  follower: AdminClient,
  hubProcess: BenchProvider,
  followerProcess: BenchProvider,
  tag: string,
): Promise<{ ms: number; detail: string }> {
  const deadline = performance.now() + STATE_FIGURE_MS;
  const roomId = await sharedRoom(hub, follower);
  const fill = (count: number, offset: number) =>
    runWindow(count, FILL_WINDOW, deadline, (i) =>
      hub.send(roomId, ALICE, MESSAGE, content(tag, offset + i)),
    );
  const first = await fill(STATE_BEFORE, 0);
  const marker = await hub.send(roomId, ALICE, MESSAGE, content(tag, STATE_BEFORE));
  const second = await fill(STATE_AFTER, STATE_BEFORE + 1);
  if (first.completed < STATE_BEFORE || second.completed < STATE_AFTER) {
    throw new Error("the room could not be filled within the time limit");
  }
  await settle([hub, follower]);
  // Loaded here so that a checkout whose federation code does not load fails this figure only.
  const { parseSigningKeyFile } = await import("../src/events/signingKeyFile.js");
  const { FederationClient } = await import("../src/federation/client/federationClient.js");
  const { ServerResolver } = await import("../src/federation/discovery/serverResolver.js");
  const key = parseSigningKeyFile(
    readFileSync(followerProcess.signingKeyPath, "utf8"),
    followerProcess.signingKeyPath,
    FOLLOWER,
  );
  const client = new FederationClient({
    signingKey: key,
    resolver: new ServerResolver({ staticMap: { [HUB]: hubProcess.federationUrl } }),
  });
  const path = `/_matrix/federation/v1/state/${encodeURIComponent(roomId)}?event_id=${encodeURIComponent(marker)}`;
  const times: number[] = [];
  let pdus = 0;
  let chain = 0;
  for (let i = 0; i <= STATE_CALLS; i++) {
    const start = performance.now();
    const answer = await client.request<{ pdus?: unknown; auth_chain?: unknown }>(HUB, "GET", path);
    if (i > 0) times.push(performance.now() - start);
    if (!Array.isArray(answer.pdus) || answer.pdus.length === 0)
      throw new Error("GET /state answered no pdus");
    pdus = answer.pdus.length;
    chain = Array.isArray(answer.auth_chain) ? answer.auth_chain.length : 0;
  }
  times.sort((x, y) => x - y);
  return { ms: percentile(times, 50), detail: `${pdus} state events, ${chain} in the auth chain` };
}

/** One checkout's hub and follower processes, and what was measured on them. */
class Checkout {
  readonly result: CheckoutResult = { figures: {}, seconds: [], notes: [] };
  private readonly tag: string;
  private providers: BenchProvider[] = [];
  private clients: { hub: AdminClient; follower: AdminClient } | undefined;

  constructor(
    readonly label: string,
    readonly root: string,
  ) {
    this.tag = `${label}-${process.pid}`;
  }

  /** Starts the two providers and detects their admin API; a failure is noted and skips every figure. */
  async open(): Promise<void> {
    try {
      this.providers = await startProviders(this.root, [HUB, FOLLOWER], providerEntry(this.root));
      const [hubProcess, followerProcess] = this.providers as [BenchProvider, BenchProvider];
      const hub = new AdminClient(`${this.label} ${HUB}`, hubProcess.adminPort, ADMIN_TOKEN);
      const follower = new AdminClient(`${this.label} ${FOLLOWER}`, followerProcess.adminPort, ADMIN_TOKEN);
      this.clients = { hub, follower };
      const hubApi = await hub.detect(ALICE);
      if ((await follower.detect(BOB)) !== hubApi)
        throw new Error("the two providers speak different admin APIs");
      this.result.api = hubApi;
    } catch (err) {
      this.result.notes.push(`${this.label}: ${(err as Error).message}`);
      await this.close();
    }
  }

  async figure(figure: string): Promise<void> {
    if (this.clients === undefined) return;
    const { hub, follower } = this.clients;
    const [hubProcess, followerProcess] = this.providers as [BenchProvider, BenchProvider];
    const { figures } = this.result;
    const tag = this.tag;
    const start = performance.now();
    try {
      await settle([hub, follower]);
      if (figure === "1") {
        figures.hubLocal = await sendRate(hub, await hub.createRoom(ALICE), ALICE, tag);
      } else if (figure === "2") {
        figures.follower = await sendRate(follower, await sharedRoom(hub, follower), BOB, tag);
      } else if (figure === "3") {
        const latencies = (await echoLatencies(hub, follower, tag)).sort((x, y) => x - y);
        figures.echoP50 = percentile(latencies, 50);
        figures.echoP99 = percentile(latencies, 99);
      } else if (figure === "4") {
        const latencies = (await floodLatencies(hub, follower, tag)).sort((x, y) => x - y);
        figures.floodP50 = percentile(latencies, 50);
        figures.floodP99 = percentile(latencies, 99);
      } else {
        const state = await stateRequest(hub, follower, hubProcess, followerProcess, tag);
        figures.stateMs = state.ms;
        this.result.stateDetail = state.detail;
      }
    } catch (err) {
      const tails = this.providers
        .map((p) =>
          p.stderr.trim() === "" ? "" : `\n  ${p.serverName} stderr (tail):\n${p.stderr.slice(-2000)}`,
        )
        .join("");
      this.result.notes.push(`${this.label}, figure ${figure}: ${(err as Error).message}${tails}`);
      const gone = this.providers.filter((p) => p.exited).map((p) => p.serverName);
      if (gone.length > 0) {
        this.result.notes.push(`${this.label}: ${gone.join(" and ")} exited; later figures not measured`);
        await this.close();
      }
    } finally {
      this.result.seconds.push(`${figure}: ${fmt((performance.now() - start) / 1000)} s`);
    }
  }

  async close(): Promise<void> {
    this.clients?.hub.close();
    this.clients?.follower.close();
    this.clients = undefined;
    await stopProviders(this.providers);
    this.providers = [];
  }
}

/**
 * Both checkouts' providers run side by side (idle when not measured), and
 * each figure is measured on one, then the other, so that a change in the
 * machine's load falls on both.
 */
async function measureCheckouts(checkouts: Checkout[]): Promise<void> {
  try {
    for (const checkout of checkouts) await checkout.open();
    for (const figure of ["1", "2", "3", "4", "5"]) {
      for (const checkout of checkouts) await checkout.figure(figure);
    }
  } finally {
    for (const checkout of checkouts) await checkout.close();
  }
}

async function inProcessFigures(
  cache: CoreCache,
): Promise<{ figures: Figures; seconds: string[]; notes: string[] }> {
  const figures: Figures = {};
  const notes: string[] = [];
  const seconds: string[] = [];
  const events = Number(process.env.BENCH_EVENTS ?? 10_000);
  // Loaded in each attempt, so that code that does not load fails only the figures that need it.
  const roomCore = () => import("./roomCore.js");
  const federation = () => import("./federation.js");
  const attempt = async (what: string, run: () => Promise<void>) => {
    const start = performance.now();
    try {
      await run();
    } catch (err) {
      notes.push(`in-process, figure ${what}: ${(err as Error).message}`);
    } finally {
      seconds.push(`${what}: ${fmt((performance.now() - start) / 1000)} s`);
    }
  };
  await attempt("1", async () => {
    figures.hubLocal =
      cache.local ?? (await (await roomCore()).hubThroughput(1, "local", events)).eventsPerSecond;
  });
  await attempt("2", async () => {
    figures.follower =
      cache.follower ?? (await (await roomCore()).hubThroughput(1, "follower", events)).eventsPerSecond;
  });
  await attempt("3", async () => {
    const echo = await (await federation()).followerEndToEnd(ECHOES, 1, "echo");
    figures.echoP50 = echo.p50;
    figures.echoP99 = echo.p99;
  });
  await attempt("4", async () => {
    const flood = await (await federation()).followerEndToEnd(FLOOD, FLOOD_WINDOW, "echo");
    figures.floodP50 = flood.p50;
    figures.floodP99 = flood.p99;
  });
  await attempt("5", async () => {
    figures.stateMs = (await (await roomCore()).stateBeforeTiming(STATE_BEFORE, STATE_AFTER)).ms;
  });
  return { figures, seconds, notes };
}

interface Row {
  figure: string;
  value: (f: Figures) => number | undefined;
  digits: number;
  target: string;
}

const ROWS: Row[] = [
  {
    figure: `1. hub-local sends, ${SEND_WINDOW} in flight (events/s)`,
    value: (f) => f.hubLocal,
    digits: 0,
    target: ">= 3,000",
  },
  {
    figure: `2. follower-originated sends, ${SEND_WINDOW} in flight (events/s)`,
    value: (f) => f.follower,
    digits: 0,
    target: ">= 1,500",
  },
  { figure: "3. echo, one at a time: p50 (ms)", value: (f) => f.echoP50, digits: 1, target: "<= 5" },
  { figure: "   echo, one at a time: p99 (ms)", value: (f) => f.echoP99, digits: 1, target: "<= 15" },
  {
    figure: `4. flood, ${fmt(FLOOD)} x ${FLOOD_WINDOW} in flight: p50 (ms)`,
    value: (f) => f.floodP50,
    digits: 1,
    target: "",
  },
  { figure: "   flood: p99 (ms)", value: (f) => f.floodP99, digits: 1, target: "" },
  {
    figure: "   flood: p99 / p50",
    value: (f) =>
      f.floodP50 !== undefined && f.floodP99 !== undefined ? f.floodP99 / f.floodP50 : undefined,
    digits: 1,
    target: "<= 5",
  },
  {
    figure: `5. state before an event ${fmt(STATE_BEFORE)} back (ms)`,
    value: (f) => f.stateMs,
    digits: 1,
    target: "",
  },
];

function printTable(columns: { title: string; figures: Figures | undefined }[]): void {
  const header = ["figure", ...columns.map((c) => c.title), "target"];
  const body = ROWS.map((row) => [
    row.figure,
    ...columns.map((c) => {
      if (c.figures === undefined) return "skipped";
      const v = row.value(c.figures);
      return v === undefined || Number.isNaN(v) ? "failed" : fmt(v, row.digits);
    }),
    row.target,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join(" | ");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  for (const r of body) console.log(line(r));
}

function apiNote(label: string, api: AdminFlavour | undefined): string {
  if (api === undefined) return `${label}: not measured (see below)`;
  return api === "txn"
    ? `${label}: transaction-ID admin API; echoes seen by long-polling history?from=&wait_ms=`
    : `${label}: legacy admin API; echoes seen by polling the whole history of fresh rooms ` +
        `(figure 3: rooms of ${ECHO_ROOM_SIZE} messages; figure 4: one room) back to back`;
}

/**
 * Providers as separate processes, started as an operator starts them, for
 * this checkout and a baseline checkout built in a temp worktree.
 */
export async function multiprocessSection(cache: CoreCache = {}): Promise<void> {
  const rev = process.env.BENCH_BASELINE ?? DEFAULT_BASELINE;
  console.log(
    `\n== Providers as separate processes over HTTP on 127.0.0.1 (durable LevelDB, fsync), ` +
      `this checkout and baseline ${rev} ==`,
  );
  let baseline: Baseline | undefined;
  const core = await inProcessFigures(cache);
  const notes: string[] = [...core.notes];
  const checkouts: Checkout[] = [];
  if (rev !== "none") {
    try {
      baseline = addBaseline(rev);
      checkouts.push(new Checkout("baseline", baseline.dir));
    } catch (err) {
      notes.push(`baseline: ${(err as Error).message}`);
    }
  }
  const currentCheckout = new Checkout("current", ROOT);
  checkouts.push(currentCheckout);
  try {
    await measureCheckouts(checkouts);
  } finally {
    baseline?.remove();
  }
  const base = checkouts.find((c) => c.label === "baseline")?.result;
  const current = currentCheckout.result;
  printTable([
    { title: "in-process core", figures: core.figures },
    { title: `baseline ${rev}`, figures: rev === "none" ? undefined : (base?.figures ?? {}) },
    { title: "current", figures: current.figures },
  ]);
  console.log(
    [
      `Hub a.example and follower b.example, each ${process.env.BENCH_RUNNER === "tsx" ? "`node --import tsx src/cli/main.ts -c config.yaml`" : "`node dist/cli/main.js -c config.yaml` (compiled by tsc)"} from its checkout; ` +
        `the bench client runs in this process; client and providers share the machine's ${cpus().length} cores. ` +
        `Both checkouts' providers are up at once and each figure is measured on the baseline, then on the current code. ` +
        `Rate limits are raised to the config schema's maxima in checkouts that have them.`,
      `1: sends through the hub's admin API in a room with no other server. 2: sends through the follower's admin API, ` +
        `counted when each resolves (the hub has sequenced the event). Up to ${fmt(SENDS)} each (at most ${SEND_MS / 1000} s) after ${WARM_UP} warm-up.`,
      `3: ${fmt(ECHOES)} messages after ${ECHO_WARM_UP} warm-up; 3 and 4: from the follower's send until the event is in the follower's own history.`,
      `5: GET /_matrix/federation/v1/state/:roomId?event_id= at the hub, signed as b.example (a joined server) with its key file; ` +
        `the event has the room's first events and ${fmt(STATE_BEFORE)} messages before it, ${fmt(STATE_AFTER)} after; median of ${STATE_CALLS} after one warm-up` +
        (current.stateDetail === undefined ? "." : ` (current: ${current.stateDetail}).`),
      `In-process core (this checkout): 1-2 RoomService on fsync LevelDB in this process, 1 room, 256 in flight (the room section's figures); ` +
        `3-4 three providers in this process (the federation section's set-up), until the sender's provider applied the event; ` +
        `5 RoomService.stateBefore in this process.`,
      ...(base === undefined ? [] : [apiNote("baseline", base.api)]),
      apiNote("current", current.api),
      `Wall time per figure: in-process ${core.seconds.join(", ")}` +
        (base === undefined ? "" : `; baseline ${base.seconds.join(", ") || "not run"}`) +
        `; current ${current.seconds.join(", ") || "not run"}.`,
      ...notes,
      ...(base?.notes ?? []),
      ...current.notes,
    ].join("\n"),
  );
}
