import { join } from "node:path";
import { createLimitedEvent } from "../../src/events/pdu";
import type { FullyFormedEvent } from "../../src/events/types";
import { ExtensionRejection, type RoomExtension } from "../../src/room/extension";
import { RoomService, type RoomEventNotice } from "../../src/room/roomService";
import type { BatchOp, KvStore } from "../../src/store/kv";
import { RoomStore } from "../../src/store/roomStore";
import { MIMI_V1 } from "../../src/roomVersions";
import { lookupOf, testKey } from "../support/keys";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const hubKey = testKey("hub.example");
const followerKey = testKey("follower.example");
const keys = lookupOf(hubKey, followerKey);
const ALICE = "@alice:hub.example";
const MESSAGE = "org.example.message";

/**
 * A tiny extension standing in for MLS: it counts messages per room (state
 * persisted under its own key), refuses a message whose body is "refuse me",
 * and has the creator greet every joining user in a follow-up event.
 */
function counter(kv: KvStore): RoomExtension<number> & { loaded: string[] } {
  const loaded: string[] = [];
  return {
    name: "counter",
    loaded,
    async load(roomId) {
      loaded.push(roomId);
      return Number((await kv.get(`xc\u0000${roomId}`)) ?? 0);
    },
    decide({ event, state, roomId, role }) {
      if (event.type === MESSAGE && event.content.body === "refuse me") {
        return { allowed: false, errcode: "M_FORBIDDEN", reason: "this message is refused" };
      }
      if (event.type === MESSAGE) {
        const next = state + 1;
        const ops: BatchOp[] = [{ type: "put", key: `xc\u0000${roomId}`, value: String(next) }];
        return { allowed: true, state: next, ops };
      }
      if (
        role === "hub" &&
        event.type === "m.room.user" &&
        event.content.participation === "join" &&
        event.state_key !== ALICE
      ) {
        return {
          allowed: true,
          followUps: [{ sender: ALICE, type: MESSAGE, content: { body: `welcome ${event.state_key}` } }],
        };
      }
      return { allowed: true };
    },
  };
}

/** Counts commits of a real store (the engine under test), and can be made to fail. */
class CountingStore {
  commits = 0;
  failNext = false;
  constructor(readonly level: KvStore) {}
  wrap(): KvStore {
    const level = this.level;
    return {
      get: (k) => level.get(k),
      getMany: (k) => level.getMany(k),
      // LevelDB has a synchronous read, PostgreSQL none: pass on what the store has.
      getSync: level.getSync?.bind(level),
      range: (o) => level.range(o),
      commit: (ops) => {
        this.commits++;
        if (this.failNext) return Promise.reject(new Error("disk full"));
        return level.commit(ops);
      },
      close: () => level.close(),
    };
  }
}

async function open(dir: string) {
  const level = await openTestStore(join(dir, "db"), { durability: "os" });
  const counting = new CountingStore(level);
  const kv = counting.wrap();
  const ext = counter(kv);
  const service = await RoomService.open({
    signingKey: hubKey,
    store: new RoomStore(kv),
    keys,
    extensions: [ext],
  });
  const notices: RoomEventNotice[] = [];
  service.subscribe((n) => notices.push(n));
  return { level, counting, ext, service, notices };
}

describe("room extensions (the cores' extension point)", () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir("ext");
  });
  afterEach(() => removeDir(dir));

  it("refuses with the extension's errcode and reason, and nothing is written", async () => {
    const { service, level, counting } = await open(dir);
    const roomId = await service.createRoom(ALICE);
    const before = counting.commits;
    const head = service.room(roomId)!.record.headSeq;
    const attempt = service.sendAsHub(roomId, ALICE, MESSAGE, { body: "refuse me" });
    await expect(attempt).rejects.toBeInstanceOf(ExtensionRejection);
    await expect(attempt).rejects.toMatchObject({ errcode: "M_FORBIDDEN", extension: "counter" });
    expect(counting.commits).toBe(before);
    expect(service.room(roomId)!.record.headSeq).toBe(head);
    // The next event takes the refused one's place: the working state was put back.
    const next = await service.sendAsHub(roomId, ALICE, MESSAGE, { body: "fine" });
    expect(next.seq).toBe(head + 1);
    await level.close();
  });

  it("keeps its state in the event's batch, visible only once durable, and reloads it", async () => {
    const first = await open(dir);
    const roomId = await first.service.createRoom(ALICE);
    const ext = (first.service as unknown as { extensions: RoomExtension[] }).extensions[0]!;
    await first.service.sendAsHub(roomId, ALICE, MESSAGE, { body: "one" });
    const pending = first.service.sendAsHub(roomId, ALICE, MESSAGE, { body: "two" });
    // Sequenced but not yet durable: readers still see the committed state.
    expect(first.service.extensionState(roomId, ext)).toBe(1);
    await pending;
    expect(first.service.extensionState(roomId, ext)).toBe(2);
    await first.level.close();

    const second = await open(dir);
    const ext2 = (second.service as unknown as { extensions: RoomExtension[] }).extensions[0]!;
    expect(second.ext.loaded).toContain(roomId);
    expect(second.service.extensionState(roomId, ext2)).toBe(2);
    await second.level.close();
  });

  it("sequences follow-up events right after the event, in the same batch", async () => {
    const { service, counting, notices, level } = await open(dir);
    const roomId = await service.createRoom(ALICE);
    await service.sendAsHub(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
    const commits = counting.commits;
    const lpdu = bobJoin(roomId);
    const result = await service.submitLimitedEvent(lpdu, "follower.example");
    expect(counting.commits).toBe(commits + 1);
    const last = notices.slice(-2).map((n) => n.event as FullyFormedEvent);
    expect(last[0]!.type).toBe("m.room.user");
    expect(last[1]!).toMatchObject({
      type: MESSAGE,
      sender: ALICE,
      content: { body: "welcome @bob:follower.example" },
    });
    expect(last[1]!.prev_events).toEqual([result.eventId]);
    await level.close();
  });

  it("a refused follow-up refuses the event that caused it", async () => {
    const level = await openTestStore(join(dir, "db"), { durability: "os" });
    const refusing: RoomExtension<null> = {
      name: "refusing-follow-up",
      load: async () => null,
      decide: ({ event }) =>
        event.type === MESSAGE && event.content.body === "go"
          ? { allowed: true, followUps: [{ sender: ALICE, type: MESSAGE, content: { body: "refuse me" } }] }
          : event.content.body === "refuse me"
            ? { allowed: false, errcode: "M_FORBIDDEN", reason: "no" }
            : { allowed: true },
    };
    const service = await RoomService.open({
      signingKey: hubKey,
      store: new RoomStore(level),
      keys,
      extensions: [refusing],
    });
    const roomId = await service.createRoom(ALICE);
    const head = service.room(roomId)!.record.headSeq;
    await expect(service.sendAsHub(roomId, ALICE, MESSAGE, { body: "go" })).rejects.toMatchObject({
      errcode: "M_FORBIDDEN",
    });
    expect(service.room(roomId)!.record.headSeq).toBe(head);
    expect((await service.getEvents(roomId, 1, 100)).length).toBe(head);
    await level.close();
  });

  it("a failed write stops the room with a clear error; memory never runs ahead of the store", async () => {
    const { service, counting, level, notices } = await open(dir);
    const roomId = await service.createRoom(ALICE);
    const head = service.room(roomId)!.record.headSeq;
    const noticesBefore = notices.length;
    counting.failNext = true;
    await expect(service.sendAsHub(roomId, ALICE, MESSAGE, { body: "lost" })).rejects.toThrow("disk full");
    expect(service.room(roomId)!.record.headSeq).toBe(head);
    expect(service.room(roomId)!.state.headEventId).toBe(service.room(roomId)!.record.headEventId);
    expect(notices.length).toBe(noticesBefore);
    counting.failNext = false;
    await expect(service.sendAsHub(roomId, ALICE, MESSAGE, { body: "after" })).rejects.toMatchObject({
      errcode: "M_UNKNOWN",
    });
    await level.close();
  });

  it("a throwing append hook refuses the event and changes nothing", async () => {
    const { service, counting, level } = await open(dir);
    const roomId = await service.createRoom(ALICE);
    const head = service.room(roomId)!.record.headSeq;
    let throwing = true;
    service.addAppendHook(() => {
      if (throwing) throw new Error("hook failed");
      return undefined;
    });
    const commits = counting.commits;
    await expect(service.sendAsHub(roomId, ALICE, MESSAGE, { body: "x" })).rejects.toThrow("hook failed");
    expect(counting.commits).toBe(commits);
    expect(service.room(roomId)!.record.headSeq).toBe(head);
    throwing = false;
    expect((await service.sendAsHub(roomId, ALICE, MESSAGE, { body: "y" })).seq).toBe(head + 1);
    await level.close();
  });

  it("sequences the limited events of one submission in one commit, each with its own outcome", async () => {
    const { service, counting, level } = await open(dir);
    const roomId = await service.createRoom(ALICE);
    const items = ["a", "refuse me", "b", "c"].map((body) => ({
      lpdu: service.buildLimitedEvent(roomId, ALICE, MESSAGE, { body }),
      origin: "hub.example",
    }));
    const commits = counting.commits;
    const outcomes = await service.submitLimitedEvents(items);
    expect(counting.commits).toBe(commits + 1);
    expect(outcomes.map((o) => o.ok)).toEqual([true, false, true, true]);
    const seqs = outcomes.flatMap((o) => (o.ok ? [o.value.seq] : []));
    expect(seqs).toEqual([3, 4, 5]);
    await level.close();
  });
});

/** Bob's join, built and signed as his server would. */
function bobJoin(roomId: string) {
  return createLimitedEvent(
    {
      room_id: roomId,
      type: "m.room.user",
      state_key: "@bob:follower.example",
      sender: "@bob:follower.example",
      origin_server_ts: Date.now(),
      hub_server: "hub.example",
      content: { participation: "join" },
    },
    followerKey,
    MIMI_V1,
  );
}
