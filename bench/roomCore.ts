import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { canonicalBytes } from "../src/events/canonicalJson";
import { createLimitedEvent } from "../src/events/pdu";
import { StaticKeyLookup } from "../src/events/signatures";
import { ServerSigningKey } from "../src/events/signingKey";
import type { LimitedEvent } from "../src/events/types";
import { RoomService } from "../src/room/roomService";
import { MIMI_V1 } from "../src/roomVersions";
import { Client } from "pg";
import type { KvStore } from "../src/store/kv";
import { LevelStore } from "../src/store/levelStore";
import { PgStore } from "../src/store/pgStore";
import { RoomStore } from "../src/store/roomStore";
import { removeDir, tempDir } from "./util";

const HUB = "hub.example";
const FOLLOWER = "follower.example";
const WINDOW = 256;

function key(server: string): ServerSigningKey {
  return new ServerSigningKey(server, "ed25519:1", createHash("sha256").update(server).digest());
}

function messageContent(i: number) {
  return { msgtype: "m.text", body: `message number ${i} with a little text in it`, n: i };
}

/**
 * The crypto floor of one follower-originated event: verifying the origin's
 * signature, the hub's signature, and the three SHA-256 hashes (LPDU, content,
 * reference), on canonical bytes prepared beforehand. Nothing else.
 */
export function cryptoFloor(iterations: number): number {
  const origin = key(FOLLOWER);
  const hub = key(HUB);
  const verifier = origin.verifyKey();
  const sample = createLimitedEvent(
    {
      room_id: "!bench:hub.example",
      type: "org.example.message",
      sender: "@bob:follower.example",
      origin_server_ts: 1_700_000_000_000,
      hub_server: HUB,
      content: messageContent(1),
    },
    origin,
    MIMI_V1,
  );
  const bytes = canonicalBytes(sample);
  const signature = origin.sign(bytes);
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    if (!verifier.verify(bytes, signature)) throw new Error("floor: verify failed");
    hub.sign(bytes);
    for (let h = 0; h < 3; h++) createHash("sha256").update(bytes).digest();
  }
  return iterations / (Number(process.hrtime.bigint() - start) / 1e9);
}

/** Where the hub keeps its rooms: LevelDB in `dir`, or a fresh schema of a PostgreSQL database. */
export type BenchStore = { engine: "leveldb" } | { engine: "postgres"; url: string };

/** The store, and what closes it and removes its data (the folder is removed by the caller). */
async function openBenchStore(
  dir: string,
  engine: BenchStore,
): Promise<{ store: KvStore; dispose: () => Promise<void> }> {
  if (engine.engine === "leveldb") {
    const store = await LevelStore.open(join(dir, "db"), { durability: "fsync" });
    return { store, dispose: () => store.close() };
  }
  const schema = `bench_${randomBytes(6).toString("hex")}`;
  const store = await PgStore.open({ url: engine.url, schema, durability: "fsync" });
  return {
    store,
    dispose: async () => {
      await store.close();
      await dropSchema(engine.url, schema);
    },
  };
}

async function dropSchema(url: string, schema: string): Promise<void> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

async function openHub(dir: string, engine: BenchStore) {
  const hubKey = key(HUB);
  const keys = new StaticKeyLookup()
    .add(HUB, hubKey.keyId, hubKey.verifyKey())
    .add(FOLLOWER, "ed25519:1", key(FOLLOWER).verifyKey());
  const { store, dispose } = await openBenchStore(dir, engine);
  const service = await RoomService.open({ signingKey: hubKey, store: new RoomStore(store), keys });
  return { service, dispose };
}

/** Submits with up to WINDOW events in flight, as a federation listener would. */
async function drive(count: number, submit: (i: number) => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  const inFlight = new Set<Promise<unknown>>();
  for (let i = 0; i < count; i++) {
    const p: Promise<unknown> = submit(i).finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= WINDOW) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  return count / (Number(process.hrtime.bigint() - start) / 1e9);
}

export interface HubThroughput {
  rooms: number;
  origin: "local" | "follower";
  eventsPerSecond: number;
}

export async function hubThroughput(
  rooms: number,
  origin: "local" | "follower",
  count: number,
  engine: BenchStore = { engine: "leveldb" },
): Promise<HubThroughput> {
  const dir = tempDir("bench-hub");
  const { service, dispose } = await openHub(dir, engine);
  try {
    const alice = "@alice:hub.example";
    const roomIds: string[] = [];
    for (let r = 0; r < rooms; r++) roomIds.push(await service.createRoom(alice));
    let lpdus: LimitedEvent[] = [];
    if (origin === "follower") {
      // The follower's users join first; their LPDUs are built and signed before timing starts.
      const followerKey = key(FOLLOWER);
      const bob = "@bob:follower.example";
      await Promise.all(
        roomIds.map((id) => service.sendAsHub(id, alice, "m.room.join_rules", { rule: "public" }, "")),
      );
      const joins = roomIds.map((id) =>
        createLimitedEvent(
          {
            room_id: id,
            type: "m.room.user",
            state_key: bob,
            sender: bob,
            origin_server_ts: Date.now(),
            hub_server: HUB,
            content: { participation: "join" },
          },
          followerKey,
          MIMI_V1,
        ),
      );
      await Promise.all(joins.map((j) => service.submitLimitedEvent(j, FOLLOWER)));
      lpdus = Array.from({ length: count }, (_, i) =>
        createLimitedEvent(
          {
            room_id: roomIds[i % rooms]!,
            type: "org.example.message",
            sender: bob,
            origin_server_ts: 1_700_000_000_000 + i,
            hub_server: HUB,
            content: messageContent(i),
          },
          followerKey,
          MIMI_V1,
        ),
      );
    }
    const eventsPerSecond =
      origin === "local"
        ? await drive(count, (i) =>
            service.sendAsHub(roomIds[i % rooms]!, alice, "org.example.message", messageContent(i)),
          )
        : await drive(count, (i) => service.submitLimitedEvent(lpdus[i]!, FOLLOWER));
    return { rooms, origin, eventsPerSecond };
  } finally {
    await dispose();
    removeDir(dir);
  }
}

export interface StateBeforeTiming {
  eventsBefore: number;
  eventsAfter: number;
  stateEntries: number;
  ms: number;
}

/**
 * `RoomService.stateBefore` in this process for an event with `before`
 * events ahead of it and `after` behind it: the median of 5 calls after one
 * warm-up call.
 */
export async function stateBeforeTiming(before: number, after: number): Promise<StateBeforeTiming> {
  const dir = tempDir("bench-state");
  const { service, dispose } = await openHub(dir, { engine: "leveldb" });
  try {
    const alice = "@alice:hub.example";
    const roomId = await service.createRoom(alice);
    const fill = (count: number, offset: number) =>
      drive(count, (i) =>
        service.sendAsHub(roomId, alice, "org.example.message", messageContent(offset + i)),
      );
    await fill(before, 0);
    const marker = await service.sendAsHub(roomId, alice, "org.example.message", messageContent(before));
    await fill(after, before + 1);
    const times: number[] = [];
    let stateEntries = 0;
    for (let i = 0; i < 6; i++) {
      const start = performance.now();
      const found = await service.stateBefore(roomId, marker.eventId);
      if (i > 0) times.push(performance.now() - start);
      if (found === undefined) throw new Error("stateBefore: the marker event is not in the room");
      // An array of entries, or a RoomState in checkouts that rebuild the state by replaying.
      const state = found.state as unknown;
      stateEntries = Array.isArray(state)
        ? state.length
        : [...(state as { allEntries(): Iterable<unknown> }).allEntries()].length;
    }
    times.sort((x, y) => x - y);
    return { eventsBefore: marker.seq - 1, eventsAfter: after, stateEntries, ms: times[2]! };
  } finally {
    await dispose();
    removeDir(dir);
  }
}
