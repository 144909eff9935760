import { join } from "node:path";
import type { StateEntry } from "../../src/roomVersions/types";
import type { KvStore } from "../../src/store/kv";
import { RoomStore, StateMap } from "../../src/store/roomStore";
import { removeDir, tempDir } from "../support/services";
import { appendHistory, type HistoryEvent } from "./history";
import { openTestStore } from "../support/store";

const ROOM = "!aaa:example.org";
const OTHER = "!bbb:example.org";

/** An event with the given auth events; a state event when `stateKey` is given. */
function event(seq: number, id: string, authEvents: string[], type: string, stateKey?: string): HistoryEvent {
  const content = { seq, padding: "p".repeat(20 * seq) };
  const json: Record<string, unknown> = {
    type,
    sender: "@alice:example.org",
    content,
    auth_events: authEvents,
  };
  if (stateKey !== undefined) json.state_key = stateKey;
  const stateEntry: StateEntry | undefined =
    stateKey === undefined
      ? undefined
      : { eventId: id, type, stateKey, sender: "@alice:example.org", content };
  return { seq, eventId: id, json: JSON.stringify(json), stateEntry };
}

describe("RoomStore bounded reads", () => {
  let dir: string;
  let kv: KvStore;
  let store: RoomStore;
  const history = [
    event(1, "$create", [], "m.room.create", ""),
    event(2, "$pl", ["$create"], "m.room.power_levels", ""),
    event(3, "$alice", ["$create", "$pl"], "m.room.user", "@alice:example.org"),
    event(4, "$msg", ["$create", "$pl", "$alice"], "m.room.encrypted"),
    event(5, "$bob1", ["$create", "$pl", "$alice"], "m.room.user", "@bob:example.org"),
    event(6, "$bob2", ["$create", "$pl", "$bob1", "$elsewhere"], "m.room.user", "@bob:example.org"),
    event(7, "$topic", ["$create", "$pl", "$alice", "$nowhere"], "m.room.topic", ""),
  ];
  const bytes = (id: string) => Buffer.byteLength(history.find((e) => e.eventId === id)!.json);

  beforeEach(async () => {
    dir = tempDir("room-store");
    kv = await openTestStore(join(dir, "db"), { durability: "os" });
    store = new RoomStore(kv);
    await appendHistory(store, ROOM, history);
    await appendHistory(store, OTHER, [event(1, "$elsewhere", [], "m.room.create", "")], {
      state: new StateMap(),
    });
  });
  afterEach(async () => {
    await kv.close();
    removeDir(dir);
  });

  it("getEventsByIds answers in the order asked, undefined for unknown IDs", async () => {
    const found = await store.getEventsByIds(["$topic", "$unknown", "$create", "$elsewhere", "$topic"]);
    expect(found.map((e) => e && [e.roomId, e.seq, e.eventId])).toEqual([
      [ROOM, 7, "$topic"],
      undefined,
      [ROOM, 1, "$create"],
      [OTHER, 1, "$elsewhere"],
      [ROOM, 7, "$topic"],
    ]);
    expect(found[0]!.json).toBe(history[6]!.json);
    expect(await store.getEventsByIds([])).toEqual([]);
  });

  describe("authChain (LM-04 §GET /state: auth_events, recursively)", () => {
    it("follows auth_events from the state, each event once, only events of the room", async () => {
      const state = await store.stateAt(ROOM, 8);
      const chain = await store.authChain(ROOM, state, { maxBytes: 1 << 20 });
      expect(chain.complete).toBe(true);
      expect(chain.events.map((e) => e.eventId)).toEqual(["$create", "$pl", "$bob1", "$alice"]);
      expect(chain.bytes).toBe(["$create", "$pl", "$bob1", "$alice"].reduce((n, id) => n + bytes(id), 0));
    });

    it("leaves out the excluded events and what is reached only through them", async () => {
      const state = await store.stateAt(ROOM, 8);
      const chain = await store.authChain(ROOM, state, {
        maxBytes: 1 << 20,
        exclude: new Set(state.map((e) => e.eventId)),
      });
      expect(chain.events.map((e) => e.eventId)).toEqual(["$bob1"]);
    });

    it("uses the JSON the caller already read", async () => {
      const [bob2] = await store.getEventsByIds(["$bob2"]);
      const given = { ...bob2!, json: JSON.stringify({ auth_events: ["$pl"] }) };
      const chain = await store.authChain(ROOM, [given], { maxBytes: 1 << 20 });
      expect(chain.events.map((e) => e.eventId)).toEqual(["$pl", "$create"]);
    });

    it("stops before the event that would pass the byte budget, and says so", async () => {
      const state = await store.stateAt(ROOM, 8);
      const budget = bytes("$create") + bytes("$pl") + bytes("$bob1") - 1;
      const chain = await store.authChain(ROOM, state, { maxBytes: budget });
      expect(chain.complete).toBe(false);
      expect(chain.events.map((e) => e.eventId)).toEqual(["$create", "$pl"]);
      expect(chain.bytes).toBeLessThanOrEqual(budget);
      const none = await store.authChain(ROOM, state, { maxBytes: 0 });
      expect(none).toEqual({ events: [], bytes: 0, complete: false });
    });
  });

  describe("pages of events within a byte budget", () => {
    it("getEvents stops before the event that would pass maxBytes", async () => {
      const page = await store.getEvents(ROOM, 2, 100, bytes("$pl") + bytes("$alice"));
      expect(page.map((e) => e.seq)).toEqual([2, 3]);
      expect((await store.getEvents(ROOM, 2, 2)).map((e) => e.seq)).toEqual([2, 3]);
    });

    it("getEventsBackwards likewise, newest first", async () => {
      const page = await store.getEventsBackwards(ROOM, 7, 100, bytes("$topic") + bytes("$bob2"));
      expect(page.map((e) => e.seq)).toEqual([7, 6]);
    });

    it("always returns the first event, so paging goes on past a large one", async () => {
      expect((await store.getEvents(ROOM, 7, 100, 1)).map((e) => e.seq)).toEqual([7]);
      expect((await store.getEventsBackwards(ROOM, 7, 100, 1)).map((e) => e.seq)).toEqual([7]);
    });
  });
});
