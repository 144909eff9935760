import type { Server } from "node:http";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import express from "express";
import { parseConfig } from "../src/config/config";
import { createLimitedEvent } from "../src/events/pdu";
import { ServerSigningKey } from "../src/events/signingKey";
import { ServerKeysPublisher } from "../src/federation/keys";
import { MimiProvider } from "../src/federation/provider";
import { MIMI_V1 } from "../src/roomVersions";
import { fmt, percentile, removeDir, tempDir } from "./util";
import { freePort } from "../src/util/freePort";

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
  return MimiProvider.start(parseConfig(lines.join("\n"), join(dir, name)));
}

export interface EndToEndResult {
  events: number;
  eventsPerSecond: number;
  p50: number;
  p99: number;
}

/**
 * Three providers in this process on 127.0.0.1: b sends limited events, a
 * (the hub) sequences them, and both b and c apply the fan-out. Latency runs
 * from b's send until both followers have the event durably.
 */
export async function followerEndToEnd(count: number, window: number): Promise<EndToEndResult> {
  const dir = tempDir("bench-fed");
  const names = ["a.example", "b.example", "c.example"];
  const ports = await Promise.all(names.map(() => freePort()));
  const routes = Object.fromEntries(names.map((n, i) => [n, `http://127.0.0.1:${ports[i]}`]));
  const [a, b, c] = await Promise.all(names.map((n, i) => startProvider(n, ports[i]!, routes, dir)));
  try {
    const roomId = await a!.createRoom("@alice:a.example");
    await a!.sendEvent(roomId, "@alice:a.example", "m.room.join_rules", { rule: "public" }, "");
    await b!.membership(roomId, "@bob:b.example", "join");
    await c!.membership(roomId, "@carol:c.example", "join");
    const started = new Map<string, number>();
    const seen = new Map<string, number>();
    const latencies: number[] = [];
    let done: () => void = () => undefined;
    const finished = new Promise<void>((resolve) => (done = resolve));
    const onApplied = (notice: { event: { content: { n?: unknown } } }) => {
      const key = String(notice.event.content.n);
      if (!started.has(key)) return;
      const count2 = (seen.get(key) ?? 0) + 1;
      seen.set(key, count2);
      if (count2 === 2) {
        latencies.push(performance.now() - started.get(key)!);
        if (latencies.length === count) done();
      }
    };
    b!.rooms.subscribe(onApplied);
    c!.rooms.subscribe(onApplied);
    const begin = performance.now();
    const inFlight = new Set<Promise<unknown>>();
    for (let i = 0; i < count; i++) {
      started.set(String(i), performance.now());
      const p: Promise<unknown> = b!
        .sendEvent(roomId, "@bob:b.example", "org.example.message", { body: `message ${i}`, n: i })
        .finally(() => inFlight.delete(p));
      inFlight.add(p);
      if (inFlight.size >= window) await Promise.race(inFlight);
    }
    await finished;
    const seconds = (performance.now() - begin) / 1000;
    latencies.sort((x, y) => x - y);
    return {
      events: count,
      eventsPerSecond: count / seconds,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
    };
  } finally {
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
 * this process with a published key. One event at a time; latency per
 * follower from the send to its receipt of the transaction.
 */
export async function fanOut(followers: number, events: number): Promise<FanOutResult> {
  const dir = tempDir("bench-fanout");
  const hubPort = await freePort();
  const names = Array.from({ length: followers }, (_, i) => `f${i}.example`);
  const keys = names.map((n) => ServerSigningKey.generate(n, "ed25519:1"));
  const arrivals = new Map<number, number[]>();
  const sentAt = new Map<number, number>();
  const servers: Server[] = [];
  const routes: Record<string, string> = { "hub.example": `http://127.0.0.1:${hubPort}` };
  for (let i = 0; i < followers; i++) {
    const app = express();
    app.get("/_matrix/key/v2/server", new ServerKeysPublisher(keys[i]!).handler());
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
    const roomId = await hub.createRoom("@alice:hub.example");
    await hub.sendEvent(roomId, "@alice:hub.example", "m.room.join_rules", { rule: "public" }, "");
    for (let i = 0; i < followers; i++) {
      const user = `@u:${names[i]}`;
      await hub.keyRing.ensureKeys(names[i]!, ["ed25519:1"]);
      await hub.rooms.submitLimitedEvent(
        createLimitedEvent(
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
        ),
        names[i]!,
      );
    }
    await new Promise((r) => setTimeout(r, 500));
    const last: number[] = [];
    for (let n = 0; n < events; n++) {
      arrivals.set(n, []);
      sentAt.set(n, performance.now());
      await hub.sendEvent(roomId, "@alice:hub.example", "org.example.message", { body: `fan-out ${n}`, n });
      while (arrivals.get(n)!.length < followers) await new Promise((r) => setImmediate(r));
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
