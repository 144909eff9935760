import { join } from "node:path";
import { MimiError } from "../../src/errors";
import { RoomState } from "../../src/room/roomState";
import type { BatchOp, KvStore } from "../../src/store/kv";
import { RoomStore, StateMap, type StateAfter } from "../../src/store/roomStore";
import { removeDir, tempDir } from "../support/services";
import {
  AWKWARD_TUPLES,
  CountingKv,
  appendHistory,
  generateHistory,
  recordOf,
  replayFromStore,
  replayStates,
  sorted,
  type HistoryEvent,
} from "./history";
import { openTestStore } from "../support/store";

const ROOM_A = "!aaa:example.org";
const ROOM_B = "!bbb:example.org";

describe("state index: stateAt (LM-04 §State Events, the state before an event)", () => {
  let dir: string;
  let kv: KvStore;
  beforeEach(async () => {
    dir = tempDir("state-index");
    kv = await openTestStore(join(dir, "db"), { durability: "os" });
  });
  afterEach(async () => {
    await kv.close();
    removeDir(dir);
  });

  async function expectEveryPosition(
    store: RoomStore,
    roomId: string,
    states: ReturnType<typeof replayStates>,
  ) {
    for (let seq = 1; seq <= states.length; seq++) {
      expect(sorted(await store.stateAt(roomId, seq))).toEqual(sorted(states[seq - 1]!));
    }
  }

  it("matches a full replay at every position, in two interleaved rooms, across a close and reopen", async () => {
    const options = { stateShare: 0.3, tuples: 25 };
    const a1 = generateHistory({ roomId: ROOM_A, events: 600, seed: 1, ...options });
    const b = generateHistory({ roomId: ROOM_B, events: 300, seed: 2, ...options });
    let store = new RoomStore(kv, { snapshotEvery: 7 });
    const stateA = new StateMap();
    await appendHistory(store, ROOM_A, a1.slice(0, 300), { state: stateA, perCommit: 40 });
    await appendHistory(store, ROOM_B, b, { perCommit: 1 });
    await appendHistory(store, ROOM_A, a1.slice(300), { state: stateA, perCommit: 40 });

    await expectEveryPosition(store, ROOM_A, replayStates(a1));
    await expectEveryPosition(store, ROOM_B, replayStates(b));
    expect(sorted(await store.loadState(ROOM_A))).toEqual(sorted(replayStates(a1).at(-1)!));

    await kv.close();
    kv = await openTestStore(join(dir, "db"), { durability: "os" });
    store = new RoomStore(kv, { snapshotEvery: 7 });
    const reloaded = new StateMap();
    for (const entry of await store.loadState(ROOM_A)) reloaded.set(entry);
    reloaded.eventCount = a1.length;
    const a2 = generateHistory({ roomId: ROOM_A, events: 400, seed: 3, fromSeq: a1.length + 1, ...options });
    await appendHistory(store, ROOM_A, a2, { state: reloaded, perCommit: 25 });

    const all = [...a1, ...a2];
    await expectEveryPosition(store, ROOM_A, replayStates(all));
    for (const seq of [1, 2, 250, 601, 1000, 1001]) {
      expect(sorted(await store.stateAt(ROOM_A, seq))).toEqual(
        sorted(await replayFromStore(store, ROOM_A, seq)),
      );
    }
  });

  it("keeps tuples apart that differ only in where a U+0000 falls, and other awkward text", async () => {
    const store = new RoomStore(kv);
    const events = generateHistory({
      roomId: ROOM_A,
      events: 200,
      seed: 4,
      stateShare: 1,
      tuples: AWKWARD_TUPLES.length,
    });
    await appendHistory(store, ROOM_A, events);
    const state = await store.loadState(ROOM_A);
    expect(state.map((e) => [e.type, e.stateKey]).sort()).toEqual(
      [["m.room.create", ""], ...AWKWARD_TUPLES].sort(),
    );
    expect(sorted(state)).toEqual(sorted(replayStates(events).at(-1)!));
  });

  it("stays exact when appendOps is not given the state (log only, no snapshot)", async () => {
    const store = new RoomStore(kv, { snapshotEvery: 3 });
    const events = generateHistory({ roomId: ROOM_A, events: 150, seed: 5, stateShare: 0.5, tuples: 10 });
    await appendHistory(store, ROOM_A, events, { passState: false });
    await expectEveryPosition(store, ROOM_A, replayStates(events));
  });

  it("reads the same, bounded amount whatever the history's length, also after a restart", async () => {
    // 40 tuples, snapshots every 50 state events: a read is one snapshot of
    // at most 40 entries and fewer than 50 log entries.
    const counting = new CountingKv(kv);
    const reader = new RoomStore(counting);
    const events = generateHistory({ roomId: ROOM_A, events: 20_000, seed: 6, stateShare: 0.05, tuples: 40 });
    const state = new StateMap();
    await appendHistory(new RoomStore(kv, { snapshotEvery: 50 }), ROOM_A, events.slice(0, 10_017), {
      state,
      perCommit: 500,
    });
    // As after a restart: a store that has not read the room since.
    await appendHistory(new RoomStore(kv, { snapshotEvery: 50 }), ROOM_A, events.slice(10_017), {
      state,
      perCommit: 500,
    });
    for (const seq of [2_000, 10_000, 10_500, 11_000, 12_000, 19_000, 20_001]) {
      counting.reset();
      await reader.stateAt(ROOM_A, seq);
      expect(counting.ranges).toBe(2);
      expect(counting.gets).toBe(0);
      expect(counting.rangeEntries).toBeLessThanOrEqual(1 + 49);
    }
  });

  it("writes, in all its snapshots, no more entries than there were state events", async () => {
    // A snapshot waits for at least as many state events as the state has
    // entries: snapshots cost at most one entry per state event.
    const store = new RoomStore(kv, { snapshotEvery: 10 });
    const events = generateHistory({ roomId: ROOM_A, events: 2_000, seed: 7, stateShare: 1, tuples: 400 });
    await appendHistory(store, ROOM_A, events);
    let snapshots = 0;
    let written = 0;
    for await (const [, value] of kv.range({
      gte: `ss\u0000${ROOM_A}\u0000`,
      lt: `ss\u0000${ROOM_A}\u0000\uffff`,
    })) {
      snapshots += 1;
      written += (JSON.parse(value) as unknown[]).length;
    }
    expect(snapshots).toBeGreaterThan(5);
    expect(written).toBeLessThanOrEqual(events.length);
  });
});

describe("state index with the room layer's RoomState", () => {
  let dir: string;
  let kv: KvStore;
  beforeEach(async () => {
    dir = tempDir("state-index-room");
    kv = await openTestStore(join(dir, "db"), { durability: "os" });
  });
  afterEach(async () => {
    await kv.close();
    removeDir(dir);
  });

  it("takes the snapshot again when a refused batch dropped the one it was due in", async () => {
    const store = new RoomStore(kv, { snapshotEvery: 5 });
    const state: StateAfter = new RoomState();
    const room = state as RoomState;
    const events = generateHistory({ roomId: ROOM_A, events: 12, seed: 9, stateShare: 1, tuples: 40 });
    const opsOf = (event: HistoryEvent) => {
      room.append(event.eventId, JSON.parse(event.json) as Parameters<RoomState["append"]>[1]);
      return store.appendOps(
        recordOf(ROOM_A, event),
        { roomId: ROOM_A, ...event, lpduHash: undefined },
        room,
      );
    };
    const snapshotIn = (ops: BatchOp[]) => ops.some((op) => op.key.startsWith("ss\u0000"));
    await kv.commit(events.slice(0, 4).flatMap(opsOf));

    // RoomService rolls the state back and drops the ops of a refused event.
    const mark = room.mark();
    expect(snapshotIn(opsOf(events[4]!))).toBe(true);
    room.rollback(mark);
    const retried = { ...events[5]!, seq: 5 };
    const ops = opsOf(retried);
    expect(snapshotIn(ops)).toBe(true);
    await kv.commit(ops);
    expect(sorted(await store.loadState(ROOM_A))).toEqual(sorted([...room.allEntries()]));
  });
});

describe("appendOps refuses what the key layout cannot hold, and writes nothing", () => {
  const store = new RoomStore({} as never);
  const [create] = generateHistory({ roomId: ROOM_A, events: 1, seed: 8, stateShare: 1, tuples: 1 });
  const appended = { roomId: ROOM_A, ...create!, lpduHash: undefined };

  function refusal(run: () => unknown): MimiError {
    try {
      run();
    } catch (err) {
      return err as MimiError;
    }
    throw new Error("expected a refusal");
  }

  it.each([
    ["a room ID with U+0000", { ...appended, roomId: "!a\u0000b:example.org" }],
    ["a room ID other than the record's", { ...appended, roomId: ROOM_B }],
    ["position 0", { ...appended, seq: 0 }],
    ["a fractional position", { ...appended, seq: 1.5 }],
  ])("%s", (_name, bad) => {
    const error = refusal(() => store.appendOps(recordOf(ROOM_A, create!), bad));
    expect(error).toBeInstanceOf(MimiError);
    expect(error.errcode).toBe("M_UNKNOWN");
  });

  it("a state that is not the state after the event", () => {
    const wrong = new StateMap();
    wrong.eventCount = 1;
    const error = refusal(() => store.appendOps(recordOf(ROOM_A, create!), appended, wrong));
    expect(error.errcode).toBe("M_UNKNOWN");
  });

  it("a snapshot interval that is not a positive integer", () => {
    expect(refusal(() => new RoomStore({} as never, { snapshotEvery: 0 })).errcode).toBe("M_UNKNOWN");
  });
});
