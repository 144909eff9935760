/**
 * `npm run bench`: throughput and latency figures. Pass section names to run
 * only some (e.g. `npm run bench -- room`): room, store, federation, multiprocess, mls, bridge, ohttp.
 * BENCH_BASELINE=<git rev> picks the multiprocess section's baseline checkout
 * (`none` skips it).
 */
import { execFileSync, spawn } from "node:child_process";
import { join } from "node:path";
import { removeAllBaselines } from "./baseline";
import { multiprocessSection, type CoreCache } from "./multiprocess";
import { killAllProviders } from "./providerProcess";
import { fmt, removeAllTempDirs } from "./util";

/** The room section's 1-room figures, reused by the multiprocess section. */
const core: CoreCache = {};

async function roomSection(): Promise<void> {
  const { cryptoFloor, hubThroughput } = await import("./roomCore.js");
  const events = Number(process.env.BENCH_EVENTS ?? 20_000);
  console.log(`\n== Hub sequencing on durable LevelDB (fsync, group commit), ${fmt(events)} events each ==`);
  cryptoFloor(2000); // warm-up
  const floor = cryptoFloor(10_000);
  console.log(`crypto floor (1 ed25519 verify + 1 sign + 3 SHA-256 per event): ${fmt(floor)} events/s`);
  const rows = [];
  for (const rooms of [1, 1000]) {
    for (const origin of ["local", "follower"] as const) {
      const result = await hubThroughput(rooms, origin, events);
      rows.push(result);
      if (rooms === 1) core[origin] = result.eventsPerSecond;
      console.log(
        `hub, ${origin === "local" ? "local-user events     " : "follower-originated   "} ${String(rooms).padStart(4)} room(s): ` +
          `${fmt(result.eventsPerSecond).padStart(7)} events/s  = ${fmt((100 * result.eventsPerSecond) / floor, 1)}% of the crypto floor`,
      );
    }
  }
}

/**
 * PostgreSQL against LevelDB for the hub's sequencing of follower events, both durable (fsync;
 * PostgreSQL's synchronous commit), in one run. The PostgreSQL server is the project's throwaway
 * cluster (scripts/postgres/ensure-postgres.sh), on this machine's disk.
 */
async function storeSection(): Promise<void> {
  const { hubThroughput } = await import("./roomCore.js");
  const script = join(__dirname, "..", "scripts", "postgres", "ensure-postgres.sh");
  const url = execFileSync("bash", [script], { encoding: "utf8" }).trim().split("\n").pop()!;
  const events = Number(process.env.BENCH_EVENTS ?? 20_000);
  console.log(
    `\n== Hub sequencing of follower events, durable, PostgreSQL against LevelDB, ${fmt(events)} events each ==`,
  );
  for (const rooms of [1, 1000]) {
    const level = await hubThroughput(rooms, "follower", events, { engine: "leveldb" });
    const postgres = await hubThroughput(rooms, "follower", events, { engine: "postgres", url });
    console.log(
      `${String(rooms).padStart(4)} room(s): LevelDB ${fmt(level.eventsPerSecond).padStart(6)} events/s, ` +
        `PostgreSQL ${fmt(postgres.eventsPerSecond).padStart(6)} events/s = ` +
        `${fmt((100 * postgres.eventsPerSecond) / level.eventsPerSecond, 1)}% of LevelDB (target >= 50%)`,
    );
  }
  await (await import("./cluster.js")).clusterFigures();
}

const SECTIONS: Record<string, () => Promise<void>> = {
  room: roomSection,
  store: storeSection,
  federation: async () => (await import("./federation.js")).federationSection(),
  multiprocess: () => multiprocessSection(core),
  mls: () => runCompiledMls(),
  bridge: async () => (await import("./bridge.js")).bridgeSection(),
  ohttp: async () => (await import("./ohttp.js")).ohttpSection(),
};

/** Compiles the MLS section with tsc and runs it in a child process on the compiled code. */
async function runCompiledMls(): Promise<void> {
  const root = join(__dirname, "..");
  execFileSync(
    process.execPath,
    [require.resolve("typescript/bin/tsc"), "-p", "bench/tsconfig.compiled.json"],
    {
      cwd: root,
      stdio: "inherit",
    },
  );
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, ".tmp/bench-dist/bench/mlsMain.js")], {
      cwd: root,
      stdio: "inherit",
    });
    child.on("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`the mls section exited with ${code}`)),
    );
  });
}

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  const unknown = wanted.filter((name) => !(name in SECTIONS));
  if (unknown.length > 0) {
    throw new Error(
      `unknown section(s) ${unknown.join(", ")}; sections: ${Object.keys(SECTIONS).join(", ")}`,
    );
  }
  // Sections load their code when they run, so one that does not load or fails leaves the others running.
  let failed = 0;
  for (const [name, run] of Object.entries(SECTIONS)) {
    if (wanted.length > 0 && !wanted.includes(name)) continue;
    try {
      await run();
    } catch (err) {
      failed++;
      console.error(`section ${name} failed:`, err);
    }
  }
  if (failed > 0) process.exitCode = 1;
}

/** Leaves no provider process, worktree or temp folder behind when the run ends early. */
function cleanUpAndExit(code: number): void {
  killAllProviders();
  removeAllBaselines();
  removeAllTempDirs();
  process.exit(code);
}
process.once("SIGINT", () => cleanUpAndExit(130));
process.once("SIGTERM", () => cleanUpAndExit(143));
for (const event of ["uncaughtException", "unhandledRejection"] as const) {
  process.once(event, (err: unknown) => {
    console.error(`${event}:`, err);
    cleanUpAndExit(1);
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
