/**
 * `npm run bench`: throughput and latency figures. Pass section names to run
 * only some (e.g. `npm run bench -- room`).
 */
import { federationSection } from "./federation";
import { cryptoFloor, hubThroughput } from "./roomCore";
import { fmt } from "./util";

async function roomSection(): Promise<void> {
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
      console.log(
        `hub, ${origin === "local" ? "local-user events     " : "follower-originated   "} ${String(rooms).padStart(4)} room(s): ` +
          `${fmt(result.eventsPerSecond).padStart(7)} events/s  = ${fmt((100 * result.eventsPerSecond) / floor, 1)}% of the crypto floor`,
      );
    }
  }
}

const SECTIONS: Record<string, () => Promise<void>> = { room: roomSection, federation: federationSection };

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  for (const [name, run] of Object.entries(SECTIONS)) {
    if (wanted.length === 0 || wanted.includes(name)) await run();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
