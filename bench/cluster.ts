/**
 * The store section's cluster figures (database.cluster): one provider's throughput with one, two
 * and four processes over 1,000 rooms, and the failover time after SIGKILL of the active process,
 * over 10 kills. Every process is `node dist/cli/main.js` (compiled by tsc), on one PostgreSQL
 * schema with synchronous commit, behind a TCP balancer (test/support/cluster.ts).
 */
import { join } from "node:path";
import { ClusterSet } from "../test/support/cluster";
import { providerEntry } from "./providerProcess";
import { fmt, median, percentile, sleep } from "./util";

const ALICE = "@alice:a.example";
const ROOT = join(__dirname, "..");

async function retried<T>(task: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await task();
    } catch {
      await sleep(20);
    }
  }
}

async function inParallel(
  count: number,
  width: number,
  task: (i: number) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

export async function clusterFigures(): Promise<void> {
  const entry = providerEntry(ROOT);
  const leaseMs = Number(process.env.BENCH_LEASE_MS ?? 3000);
  const rooms = Number(process.env.BENCH_CLUSTER_ROOMS ?? 1000);
  const messages = Number(process.env.BENCH_CLUSTER_MESSAGES ?? 6000);

  console.log(
    `\n== One provider as a cluster of processes on one PostgreSQL schema (fsync), behind a TCP balancer, lease ${fmt(leaseMs)} ms ==`,
  );
  const throughput = await ClusterSet.start({
    serverName: "a.example",
    others: [],
    leaseMs,
    processes: 1,
    durability: "fsync",
    ...(entry === undefined ? {} : { entry }),
  });
  try {
    const roomIds: string[] = [];
    await inParallel(rooms, 8, async () => {
      roomIds.push(await throughput.hub.createRoom(ALICE));
    });
    const sendAll = (round: string, count: number) =>
      inParallel(count, 32, (i) =>
        retried(() =>
          throughput.hub.send(
            roomIds[i % roomIds.length]!,
            ALICE,
            "org.example.message",
            { body: `${round}-${i}` },
            undefined,
            `${round}-${i}`,
          ),
        ),
      );
    // Untimed: the JIT and the pools warm up. The figures still drift up over a run, so the last
    // round is one process again, with the standbys stopped: compare it with the others.
    await sendAll("warm-up", Math.min(messages, 3000));
    for (const [round, processes] of [
      ["n1", 1],
      ["n2", 2],
      ["n4", 4],
      ["n1-again", 1],
    ] as const) {
      while (throughput.running().length < processes) await throughput.addProcess("standby");
      for (const extra of throughput
        .running()
        .filter((p) => !p.active)
        .slice(0, throughput.running().length - processes)) {
        await extra.kill("SIGTERM");
      }
      const started = performance.now();
      await sendAll(round, messages);
      const seconds = (performance.now() - started) / 1000;
      console.log(
        `${processes} process(es)${round.endsWith("again") ? ", again" : ""}, ${fmt(rooms)} rooms, ${fmt(messages)} hub-local sends (admin API, 32 in flight, through the balancer): ` +
          `${fmt(messages / seconds).padStart(6)} events/s`,
      );
    }
  } finally {
    await throughput.stop();
  }

  const kills = Number(process.env.BENCH_KILLS ?? 10);
  const failover = await ClusterSet.start({
    serverName: "a.example",
    others: [],
    leaseMs,
    processes: 2,
    durability: "fsync",
    ...(entry === undefined ? {} : { entry }),
  });
  try {
    const roomId = await failover.hub.createRoom(ALICE);
    const times: number[] = [];
    for (let k = 0; k < kills; k++) {
      await failover.hub.send(roomId, ALICE, "org.example.message", { body: `warm ${k}` });
      const active = failover.running().find((p) => p.active);
      if (active === undefined) throw new Error("no active process");
      const killedAt = Date.now();
      await active.kill("SIGKILL");
      const eventId = await retried(() =>
        failover.hub.send(
          roomId,
          ALICE,
          "org.example.message",
          { body: `after kill ${k}` },
          undefined,
          `k${k}`,
        ),
      );
      const history = await failover.hub.history(roomId);
      const event = history.find((e) => e.event_id === eventId) as { origin_server_ts?: number } | undefined;
      times.push((event?.origin_server_ts ?? Date.now()) - killedAt);
      await failover.addProcess("standby");
    }
    const sorted = [...times].sort((a, b) => a - b);
    console.log(
      `failover after SIGKILL of the active process, ${kills} kills (kill -> first event sequenced by the new owner): ` +
        `p50 ${fmt(median(times))} ms, max ${fmt(sorted[sorted.length - 1]!)} ms, p90 ${fmt(percentile(sorted, 90))} ms ` +
        `(target < 2 x lease = ${fmt(2 * leaseMs)} ms)`,
    );
  } finally {
    await failover.stop();
  }
}
