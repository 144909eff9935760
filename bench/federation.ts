import { keysHandler } from "../test/support/expressAuth";
import type { Server } from "node:http";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import express from "express";
import { parseConfig } from "../src/config/config";
import { createLimitedEvent } from "../src/events/pdu";
import { ServerSigningKey } from "../src/events/signingKey";
import type { JsonObject } from "../src/events/types";
import { FederationClient } from "../src/federation/client/federationClient";
import { ServerResolver } from "../src/federation/discovery/serverResolver";
import { ServerKeysPublisher } from "../src/federation/keys";
import { MimiProvider } from "../src/provider/provider";
import { MIMI_V1 } from "../src/roomVersions";
import { ROOT } from "./baseline";
import { raisedLimits } from "./providerProcess";
import { fmt, percentile, removeDir, tempDir } from "./util";
import { freePort } from "../src/util/freePort";

/** No single wait in this section lasts longer. */
const DEADLINE_MS = 120_000;

async function startProvider(name: string, port: number, routes: Record<string, string>, dir: string) {
  mkdirSync(join(dir, name), { recursive: true });
  const lines = [
    `server_name: ${name}`,
    "federation:",
    "  bind_address: 127.0.0.1",
    `  port: ${port}`,
    "  well_known: false",
    "  retry_base_ms: 20",
    "  retry_max_ms: 1000",
    "  static_routes:",
    ...Object.entries(routes).map(([server, url]) => `    ${server}: ${url}`),
    "database: { durability: fsync }",
    "logging: { level: error }",
  ];
  const limits = raisedLimits(ROOT);
  if (limits !== undefined) lines.push("limits:", ...Object.entries(limits).map(([k, v]) => `  ${k}: ${v}`));
  return MimiProvider.start(parseConfig(lines.join("\n"), join(dir, name)));
}

export interface EndToEndResult {
  events: number;
  eventsPerSecond: number;
  p50: number;
  p99: number;
}

let txnCounter = 0;
const txnId = () => `bench-${process.pid}-${++txnCounter}`;

function send(
  provider: MimiProvider,
  roomId: string,
  sender: string,
  type: string,
  content: JsonObject,
  stateKey?: string,
) {
  return provider.rooms.send({
    roomId,
    sender,
    type,
    content,
    txnId: txnId(),
    ...(stateKey === undefined ? {} : { stateKey }),
  });
}

/**
 * Reads `roomId`'s history at `provider` as it grows (long polls) and calls
 * `onEvent` with each event's content; stops at `stop()` or the deadline.
 */
function watchHistory(
  provider: MimiProvider,
  roomId: string,
  deadline: number,
  onEvent: (content: JsonObject) => void,
): { stop(): Promise<void> } {
  let stopped = false;
  let failure: unknown;
  const loop = (async () => {
    let from = 1;
    while (!stopped && performance.now() < deadline) {
      const page = await provider.rooms.history(roomId, { fromSeq: from, limit: 1000, waitMs: 250 });
      for (const entry of page.events) {
        onEvent(entry.event.content as JsonObject);
        from = entry.seq + 1;
      }
    }
  })().catch((err: unknown) => void (failure = err));
  return {
    stop: async () => {
      stopped = true;
      await loop;
      if (failure !== undefined) throw failure;
    },
  };
}

/**
 * Three providers in this process on 127.0.0.1: b sends limited events, a
 * (the hub) sequences them, and both b and c apply the fan-out. Latency runs
 * from b's send until both followers have the event durably, or with
 * `until: "echo"` until b (the sender) has it.
 */
export async function followerEndToEnd(
  count: number,
  window: number,
  until: "both" | "echo" = "both",
): Promise<EndToEndResult> {
  const dir = tempDir("bench-fed");
  const names = ["a.example", "b.example", "c.example"];
  const ports = await Promise.all(names.map(() => freePort()));
  const routes = Object.fromEntries(names.map((n, i) => [n, `http://127.0.0.1:${ports[i]}`]));
  const [a, b, c] = await Promise.all(names.map((n, i) => startProvider(n, ports[i]!, routes, dir)));
  const watchers: { stop(): Promise<void> }[] = [];
  try {
    const alice = "@alice:a.example";
    const { roomId } = await a!.rooms.createRoom({ creator: alice, txnId: txnId() });
    await send(a!, roomId, alice, "m.room.join_rules", { rule: "public" }, "");
    await b!.rooms.changeOwnParticipation({ roomId, user: "@bob:b.example", change: "join", txnId: txnId() });
    await c!.rooms.changeOwnParticipation({
      roomId,
      user: "@carol:c.example",
      change: "join",
      txnId: txnId(),
    });
    const started = new Map<string, number>();
    const seen = new Map<string, number>();
    const latencies: number[] = [];
    let done: () => void = () => undefined;
    const finished = new Promise<void>((resolve) => (done = resolve));
    const onApplied = (content: JsonObject) => {
      const key = String(content.n);
      if (!started.has(key)) return;
      const count2 = (seen.get(key) ?? 0) + 1;
      seen.set(key, count2);
      if (count2 === (until === "both" ? 2 : 1)) {
        latencies.push(performance.now() - started.get(key)!);
        if (latencies.length === count) done();
      }
    };
    const deadline = performance.now() + DEADLINE_MS;
    watchers.push(watchHistory(b!, roomId, deadline, onApplied));
    if (until === "both") watchers.push(watchHistory(c!, roomId, deadline, onApplied));
    const begin = performance.now();
    const inFlight = new Set<Promise<unknown>>();
    let failure: unknown;
    for (let i = 0; i < count && failure === undefined; i++) {
      started.set(String(i), performance.now());
      const p: Promise<unknown> = send(b!, roomId, "@bob:b.example", "org.example.message", {
        body: `message ${i}`,
        n: i,
      })
        .catch((err: unknown) => void (failure ??= err))
        .finally(() => inFlight.delete(p));
      inFlight.add(p);
      if (inFlight.size >= window) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">(
      (resolve) => (timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - performance.now()))),
    );
    const outcome = await Promise.race([finished, timedOut]);
    clearTimeout(timer);
    if (outcome === "timeout") {
      throw new Error(`only ${latencies.length} of ${count} events arrived within ${DEADLINE_MS / 1000} s`);
    }
    const seconds = (performance.now() - begin) / 1000;
    latencies.sort((x, y) => x - y);
    return {
      events: count,
      eventsPerSecond: count / seconds,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
    };
  } finally {
    await Promise.all(watchers.map((w) => w.stop()));
    await Promise.all([a!.stop(), b!.stop(), c!.stop()]);
    removeDir(dir);
  }
}

export interface FanOutResult {
  followers: number;
  events: number;
  p50: number;
  p99: number;
  lastP50: number;
  lastP99: number;
}

/**
 * The hub fans events out to `followers` servers, each a small listener in
 * this process with a published key that joined through `send_join`. One
 * event at a time; latency per follower from the send to its receipt of the
 * transaction.
 */
export async function fanOut(followers: number, events: number): Promise<FanOutResult> {
  const dir = tempDir("bench-fanout");
  const hubPort = await freePort();
  const names = Array.from({ length: followers }, (_, i) => `f${i}.example`);
  const keys = names.map((n) => ServerSigningKey.generate(n, "ed25519:1"));
  const arrivals = new Map<number, number[]>();
  const sentAt = new Map<number, number>();
  const servers: Server[] = [];
  const hubUrl = `http://127.0.0.1:${hubPort}`;
  const routes: Record<string, string> = { "hub.example": hubUrl };
  for (let i = 0; i < followers; i++) {
    const app = express();
    app.get("/_matrix/key/v2/server", keysHandler(new ServerKeysPublisher(keys[i]!)));
    app.put("/_matrix/federation/v2/send/:txnId", express.json({ limit: "8mb" }), (req, res) => {
      const now = performance.now();
      const pdus = (req.body as { pdus: { content: { n?: number } }[] }).pdus;
      for (const pdu of pdus) {
        const n = pdu.content.n;
        if (typeof n === "number" && sentAt.has(n)) arrivals.get(n)!.push(now - sentAt.get(n)!);
      }
      res.json({ pdus: {}, failed_pdus: {} });
    });
    const port = await freePort();
    routes[names[i]!] = `http://127.0.0.1:${port}`;
    servers.push(
      await new Promise<Server>((resolve) => {
        const s = app.listen(port, "127.0.0.1", () => resolve(s));
      }),
    );
  }
  const hub = await startProvider("hub.example", hubPort, routes, dir);
  try {
    const alice = "@alice:hub.example";
    const { roomId } = await hub.rooms.createRoom({ creator: alice, txnId: txnId() });
    await send(hub, roomId, alice, "m.room.join_rules", { rule: "public" }, "");
    const resolver = new ServerResolver({ staticMap: { "hub.example": hubUrl } });
    for (let i = 0; i < followers; i++) {
      const user = `@u:${names[i]}`;
      const join = createLimitedEvent(
        {
          room_id: roomId,
          type: "m.room.user",
          state_key: user,
          sender: user,
          origin_server_ts: Date.now(),
          hub_server: "hub.example",
          content: { participation: "join" },
        },
        keys[i]!,
        MIMI_V1,
      );
      const client = new FederationClient({ signingKey: keys[i]!, resolver });
      await client.request("hub.example", "POST", `/_matrix/federation/v3/send_join/join-${i}`, join);
    }
    await new Promise((r) => setTimeout(r, 500));
    const last: number[] = [];
    for (let n = 0; n < events; n++) {
      arrivals.set(n, []);
      sentAt.set(n, performance.now());
      await send(hub, roomId, alice, "org.example.message", { body: `fan-out ${n}`, n });
      const deadline = performance.now() + DEADLINE_MS;
      while (arrivals.get(n)!.length < followers) {
        if (performance.now() > deadline)
          throw new Error(`fan-out of event ${n} did not reach every follower`);
        await new Promise((r) => setImmediate(r));
      }
      last.push(Math.max(...arrivals.get(n)!));
    }
    const all = [...arrivals.values()].flat().sort((x, y) => x - y);
    last.sort((x, y) => x - y);
    return {
      followers,
      events,
      p50: percentile(all, 50),
      p99: percentile(all, 99),
      lastP50: percentile(last, 50),
      lastP99: percentile(last, 99),
    };
  } finally {
    await hub.stop();
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
    removeDir(dir);
  }
}

export async function federationSection(): Promise<void> {
  const events = Number(process.env.BENCH_FED_EVENTS ?? 3000);
  console.log(`\n== Federation over HTTP on 127.0.0.1 (three providers in one process, durable LevelDB) ==`);
  const e2e = await followerEndToEnd(events, 64);
  console.log(
    `follower-originated, sent -> sequenced -> applied at 2 followers: ${fmt(e2e.eventsPerSecond)} events/s over ${fmt(e2e.events)} events; ` +
      `latency p50 ${fmt(e2e.p50, 1)} ms, p99 ${fmt(e2e.p99, 1)} ms (64 in flight)`,
  );
  const single = await followerEndToEnd(300, 1);
  console.log(
    `same, one event at a time: ${fmt(single.eventsPerSecond)} events/s; latency p50 ${fmt(single.p50, 1)} ms, p99 ${fmt(single.p99, 1)} ms`,
  );
  const fan = await fanOut(50, Number(process.env.BENCH_FANOUT_EVENTS ?? 200));
  console.log(
    `fan-out of one event to ${fan.followers} followers (${fan.events} events, one at a time): per-follower delivery p50 ${fmt(fan.p50, 1)} ms, p99 ${fmt(fan.p99, 1)} ms; ` +
      `last follower p50 ${fmt(fan.lastP50, 1)} ms, p99 ${fmt(fan.lastP99, 1)} ms`,
  );
}
