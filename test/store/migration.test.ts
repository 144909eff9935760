import { join } from "node:path";
import { prefixEnd, type KvStore } from "../../src/store/kv";
import { RoomStore } from "../../src/store/roomStore";
import { CURRENT_SCHEMA_VERSION, buildStateIndex, ensureSchema } from "../../src/store/schema";
import { removeDir, tempDir } from "../support/services";
import {
  AWKWARD_TUPLES,
  DyingKv,
  generateHistory,
  replayStates,
  sorted,
  writeSchema1,
  type HistoryEvent,
} from "./history";
import { openTestStore } from "../support/store";

const SCHEMA_KEY = "m\u0000schema";
const PROGRESS_KEY = "m\u0000migration\u0000stateIndex";
const ROOMS = ["!aaa:example.org", "!aab:example.org", "!bbb:example.org"];

describe("migration 1 -> 2: the state index from a schema 1 database", () => {
  let dir: string;
  let kv: KvStore;
  let histories: Map<string, HistoryEvent[]>;
  const open = async () => (kv = await openTestStore(join(dir, "db"), { durability: "os" }));

  beforeEach(async () => {
    dir = tempDir("migration");
    await open();
    histories = new Map();
    for (const [i, roomId] of ROOMS.entries()) {
      const events = generateHistory({
        roomId,
        events: 120 + 40 * i,
        seed: 10 + i,
        stateShare: 0.4,
        tuples: 12,
      });
      histories.set(roomId, events);
      await writeSchema1(kv, roomId, events);
    }
  });
  afterEach(async () => {
    await kv.close();
    removeDir(dir);
  });

  async function keys(prefix: string): Promise<string[]> {
    const found: string[] = [];
    for await (const [key] of kv.range({ gte: prefix, lt: prefixEnd(prefix) })) found.push(key);
    return found;
  }

  async function expectIndexMatchesReplay(): Promise<void> {
    const store = new RoomStore(kv);
    for (const [roomId, events] of histories) {
      const states = replayStates(events);
      for (let seq = 1; seq <= states.length; seq++) {
        expect(sorted(await store.stateAt(roomId, seq))).toEqual(sorted(states[seq - 1]!));
      }
      expect(sorted(await store.loadState(roomId))).toEqual(sorted(states.at(-1)!));
    }
    expect(await keys("s\u0000")).toEqual([]);
    expect(await kv.get(PROGRESS_KEY)).toBeUndefined();
    expect(await kv.get(SCHEMA_KEY)).toBe(String(CURRENT_SCHEMA_VERSION));
  }

  it("answers stateAt as a full replay would, at every position, and drops the old state keys", async () => {
    await kv.commit([{ type: "put", key: SCHEMA_KEY, value: "1" }]);
    expect(await ensureSchema(kv, { batchSize: 50, snapshotEvery: 5 })).toBe(CURRENT_SCHEMA_VERSION);
    await expectIndexMatchesReplay();
  });

  it("treats a database with data and no stamp as schema 1", async () => {
    expect(await kv.get(SCHEMA_KEY)).toBeUndefined();
    await ensureSchema(kv, { batchSize: 64 });
    await expectIndexMatchesReplay();
  });

  it("recovers the tuples schema 1 confused, from the events", async () => {
    const roomId = "!ccc:example.org";
    const events = generateHistory({ roomId, events: 40, seed: 20, stateShare: 1, tuples: 2 });
    histories.set(roomId, events);
    await writeSchema1(kv, roomId, events);
    // Schema 1 kept ("a\0b", "c") and ("a", "b\0c") under one key.
    expect(await keys(`s\u0000${roomId}\u0000`)).toHaveLength(2);
    await kv.commit([{ type: "put", key: SCHEMA_KEY, value: "1" }]);
    await ensureSchema(kv);
    const state = await new RoomStore(kv).loadState(roomId);
    expect(state.map((e) => [e.type, e.stateKey]).sort()).toEqual(
      [["m.room.create", ""], ...AWKWARD_TUPLES.slice(0, 2)].sort(),
    );
    await expectIndexMatchesReplay();
  });

  it("resumes after an interruption: one batch done, close, reopen", async () => {
    await kv.commit([{ type: "put", key: SCHEMA_KEY, value: "1" }]);
    const dying = new DyingKv(kv, 1);
    await expect(ensureSchema(dying, { batchSize: 70, snapshotEvery: 4 })).rejects.toThrow();
    // One batch landed: its index entries and the key of the last event it covered.
    const eventKeys = await keys("e\u0000");
    expect(await kv.get(PROGRESS_KEY)).toBe(eventKeys[69]);
    expect(await kv.get(SCHEMA_KEY)).toBe("1");
    expect((await keys("s\u0000")).length).toBeGreaterThan(0);
    await kv.close();

    await open();
    const resumed = new DyingKv(kv, Infinity);
    expect(await ensureSchema(resumed, { batchSize: 70, snapshotEvery: 4 })).toBe(CURRENT_SCHEMA_VERSION);
    // It went on from the 71st event rather than reading the first batch again.
    expect(resumed.rangeEntriesOf.get("e")).toBe(eventKeys.length - 70);
    await expectIndexMatchesReplay();
  });

  it("resumes in the middle of a room's history and still takes snapshots from the right state", async () => {
    await kv.commit([{ type: "put", key: SCHEMA_KEY, value: "1" }]);
    for (let allowed = 1; allowed <= 3; allowed++) {
      await expect(
        buildStateIndex(new DyingKv(kv, allowed), { batchSize: 33, snapshotEvery: 3 }),
      ).rejects.toThrow();
      await kv.close();
      await open();
    }
    await ensureSchema(kv, { batchSize: 33, snapshotEvery: 3 });
    await expectIndexMatchesReplay();
  });

  it("refuses an event that is not JSON, naming its key, and stamps nothing", async () => {
    await kv.commit([
      { type: "put", key: SCHEMA_KEY, value: "1" },
      { type: "put", key: `e\u0000${ROOMS[0]}\u0000000000000fff`, value: "$bad\n{not json" },
    ]);
    await expect(ensureSchema(kv)).rejects.toMatchObject({ errcode: "M_UNKNOWN" });
    expect(await kv.get(SCHEMA_KEY)).toBe("1");
  });
});
