import { parseFullyFormedEvent } from "../../src/events/envelope";
import { createLimitedEvent, formEvent } from "../../src/events/pdu";
import type { FullyFormedEvent, LimitedEvent } from "../../src/events/types";
import { AuthRejection, GapError, RoomError } from "../../src/room/errors";
import type { RoomEventNotice } from "../../src/room/roomService";
import { MIMI_V1 } from "../../src/roomVersions";
import { lookupOf, testKey } from "../support/keys";
import { openService, removeDir, tempDir, type OpenedService } from "../support/services";
import { TEST_STORE_NAME } from "../support/store";

const hubKey = testKey("hub.example");
const followerKey = testKey("follower.example");
const strangerKey = testKey("stranger.example");
const keys = lookupOf(hubKey, followerKey, strangerKey);
const ALICE = "@alice:hub.example";
const BOB = "@bob:follower.example";

interface Pair {
  hub: OpenedService;
  follower: OpenedService;
  roomId: string;
  hubEvents: RoomEventNotice[];
  forwarded: number;
}

/** Applies at the follower every hub event it has not been given yet. */
async function sync(pair: Pair): Promise<void> {
  while (pair.forwarded < pair.hubEvents.length) {
    await pair.follower.service.applyEvent(JSON.parse(pair.hubEvents[pair.forwarded]!.json));
    pair.forwarded++;
  }
}

async function history(side: OpenedService, roomId: string): Promise<string[]> {
  return (await side.service.getEvents(roomId, 1, 10_000)).map((e) => e.eventId);
}

function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

/** Hub creates a room; the follower follows it and applies everything the hub appends. */
async function setUp(): Promise<Pair> {
  const hub = await openService(tempDir("hub"), hubKey, keys);
  const follower = await openService(tempDir("follower"), followerKey, keys);
  const hubEvents: RoomEventNotice[] = [];
  hub.service.subscribe((notice) => hubEvents.push(notice));
  const roomId = await hub.service.createRoom(ALICE);
  await hub.service.sendAsHub(roomId, ALICE, "m.room.user", { participation: "invite" }, BOB);
  await follower.service.followRoom(JSON.parse(hubEvents[0]!.json));
  const pair = { hub, follower, roomId, hubEvents, forwarded: 1 };
  await sync(pair);
  return pair;
}

/** Bob's join, built and signed at the follower. */
function bobJoin(pair: Pair): LimitedEvent {
  return pair.follower.service.buildLimitedEvent(
    pair.roomId,
    BOB,
    "m.room.user",
    { participation: "join" },
    BOB,
  );
}

/** Follower-originated: build the LPDU at the follower, sequence it at the hub, apply the result at the follower. */
async function viaHub(pair: Pair, lpdu: LimitedEvent): Promise<string> {
  await sync(pair);
  const result = await pair.hub.service.submitLimitedEvent(clone(lpdu), "follower.example");
  await sync(pair);
  return result.eventId;
}

describe(`hub and follower cores on ${TEST_STORE_NAME}`, () => {
  let pair: Pair;
  beforeEach(async () => {
    pair = await setUp();
  });
  afterEach(async () => {
    await pair.hub.close();
    await pair.follower.close();
    removeDir(pair.hub.dir);
    removeDir(pair.follower.dir);
  });

  it("sequences local and follower-originated events into identical linear histories", async () => {
    const { hub, follower, roomId } = pair;
    await viaHub(pair, bobJoin(pair));
    await hub.service.sendAsHub(roomId, ALICE, "m.room.name", { name: "Planning" }, "");
    await viaHub(pair, follower.service.buildLimitedEvent(roomId, BOB, "org.example.note", { text: "hi" }));
    const hubHistory = await history(hub, roomId);
    expect(hubHistory).toHaveLength(6);
    expect(await history(follower, roomId)).toEqual(hubHistory);
    const events = (await hub.service.getEvents(roomId, 1, 100)).map((e) => JSON.parse(e.json));
    events
      .slice(1)
      .forEach((event: FullyFormedEvent, i) => expect(event.prev_events).toEqual([hubHistory[i]]));
    expect(follower.service.room(roomId)?.state.get("m.room.user", BOB)?.content).toEqual({
      participation: "join",
    });
    expect(follower.service.room(roomId)?.state.get("m.room.name", "")?.content).toEqual({
      name: "Planning",
    });
  });

  it("refuses a limited event with a forged origin signature and changes nothing", async () => {
    const { hub, roomId } = pair;
    const before = await history(hub, roomId);
    // Signed with a key follower.example does not own, under follower.example's key ID.
    const impostor = testKey("follower.example", "ed25519:1", "not follower.example's seed");
    const forged = createLimitedEvent(
      {
        room_id: roomId,
        type: "m.room.user",
        state_key: BOB,
        sender: BOB,
        origin_server_ts: 1,
        hub_server: "hub.example",
        content: { participation: "join" },
      },
      impostor,
      MIMI_V1,
    );
    await expect(hub.service.submitLimitedEvent(forged, "follower.example")).rejects.toThrow(
      /does not verify/,
    );
    expect(await history(hub, roomId)).toEqual(before);
  });

  it("refuses events a server sends for another server's users", async () => {
    const lpdu = bobJoin(pair);
    await expect(pair.hub.service.submitLimitedEvent(lpdu, "stranger.example")).rejects.toThrow(
      /stranger.example cannot send events for @bob:follower.example/,
    );
  });

  it("enforces policy at the hub: a user who has not joined cannot send", async () => {
    const { hub, follower, roomId } = pair;
    const before = await history(hub, roomId);
    const lpdu = follower.service.buildLimitedEvent(roomId, BOB, "org.example.note", { text: "too early" });
    const refusal = hub.service.submitLimitedEvent(lpdu, "follower.example");
    await expect(refusal).rejects.toBeInstanceOf(AuthRejection);
    await expect(refusal).rejects.toMatchObject({ errcode: "M_FORBIDDEN" });
    expect(await history(hub, roomId)).toEqual(before);
  });

  it("sequences a retried limited event only once", async () => {
    const { hub, roomId } = pair;
    const lpdu = bobJoin(pair);
    const first = await hub.service.submitLimitedEvent(clone(lpdu), "follower.example");
    const again = await hub.service.submitLimitedEvent(clone(lpdu), "follower.example");
    expect(again).toEqual({ eventId: first.eventId, seq: first.seq, duplicate: true });
    expect(await history(hub, roomId)).toHaveLength(4);
  });

  it("does not let a forged copy of an accepted limited event pass as its retry", async () => {
    const { hub } = pair;
    const lpdu = bobJoin(pair);
    await hub.service.submitLimitedEvent(clone(lpdu), "follower.example");
    const forged = { ...clone(lpdu), content: { participation: "ban" } };
    await expect(hub.service.submitLimitedEvent(forged, "follower.example")).rejects.toThrow(
      /hashes.lpdu.sha256/,
    );
    await expect(hub.service.submitLimitedEvent(clone(lpdu), "stranger.example")).rejects.toMatchObject({
      errcode: "M_FORBIDDEN",
    });
  });

  it("refuses a limited event meant for another hub, and limited events at a follower", async () => {
    const { hub, follower } = pair;
    const lpdu = bobJoin(pair);
    await expect(follower.service.submitLimitedEvent(lpdu, "follower.example")).rejects.toMatchObject({
      errcode: "M_WRONG_HUB",
    });
    const misdirected = createLimitedEvent(
      { ...lpdu, hub_server: "stranger.example", origin_server_ts: 5 },
      followerKey,
      MIMI_V1,
    );
    await expect(hub.service.submitLimitedEvent(misdirected, "follower.example")).rejects.toMatchObject({
      errcode: "M_WRONG_HUB",
    });
  });

  it("answers M_NOT_FOUND for an unknown room", async () => {
    const lpdu = bobJoin(pair);
    await expect(
      pair.hub.service.submitLimitedEvent({ ...lpdu, room_id: "!nowhere:hub.example" }, "follower.example"),
    ).rejects.toMatchObject({ errcode: "M_NOT_FOUND" });
  });

  describe("follower checks", () => {
    /** A limited event formed by the hub itself (topic events are state events with an empty key). */
    function hubLpdu(type: string, content: Record<string, string>, sender: string) {
      return createLimitedEvent(
        {
          room_id: pair.roomId,
          type,
          ...(type === "m.room.topic" ? { state_key: "" } : {}),
          sender,
          origin_server_ts: 9,
          hub_server: "hub.example",
          content,
        },
        hubKey,
        MIMI_V1,
      );
    }

    async function nextHubEvents(count: number): Promise<FullyFormedEvent[]> {
      const before = pair.hubEvents.length;
      for (let i = 0; i < count; i++) {
        await pair.hub.service.sendAsHub(pair.roomId, ALICE, "m.room.topic", { topic: `t${i}` }, "");
      }
      pair.forwarded = pair.hubEvents.length;
      return pair.hubEvents.slice(before).map((n) => JSON.parse(n.json) as FullyFormedEvent);
    }

    it("treats a duplicate as a no-op", async () => {
      const [event] = await nextHubEvents(1);
      expect((await pair.follower.service.applyEvent(clone(event))).status).toBe("applied");
      expect((await pair.follower.service.applyEvent(clone(event))).status).toBe("duplicate");
      expect(await history(pair.follower, pair.roomId)).toEqual(await history(pair.hub, pair.roomId));
    });

    it("reports a gap naming the missing event, then applies once it is filled", async () => {
      const [first, second] = await nextHubEvents(2);
      const gap = pair.follower.service.applyEvent(clone(second));
      await expect(gap).rejects.toBeInstanceOf(GapError);
      await expect(gap).rejects.toMatchObject({
        errcode: "M_MISSING_EVENT",
        missingEventId: second!.prev_events[0],
      });
      await pair.follower.service.applyEvent(clone(first));
      await pair.follower.service.applyEvent(clone(second));
      expect(await history(pair.follower, pair.roomId)).toEqual(await history(pair.hub, pair.roomId));
    });

    it("refuses a fork: a second child of an event it already has", async () => {
      const [event] = await nextHubEvents(1);
      await pair.follower.service.applyEvent(clone(event));
      const lpdu = hubLpdu("m.room.topic", { topic: "fork" }, ALICE);
      const fork = formEvent(lpdu, event!.auth_events, event!.prev_events, hubKey, MIMI_V1).event;
      await expect(pair.follower.service.applyEvent(fork)).rejects.toMatchObject({ errcode: "M_NOT_LINEAR" });
    });

    it("refuses an event whose auth_events are not the selection for its state", async () => {
      const [event] = await nextHubEvents(1);
      const lpdu = hubLpdu("m.room.topic", { topic: "x" }, ALICE);
      const wrong = formEvent(
        lpdu,
        event!.auth_events.slice(0, 1),
        event!.prev_events,
        hubKey,
        MIMI_V1,
      ).event;
      await expect(pair.follower.service.applyEvent(wrong)).rejects.toMatchObject({
        rule: "auth_events.selection",
      });
    });

    it("refuses an event the hub accepted against policy", async () => {
      const [event] = await nextHubEvents(1);
      const lpdu = hubLpdu("org.example.note", { text: "not a member" }, "@mallory:hub.example");
      const illegal = formEvent(
        lpdu,
        event!.auth_events.slice(0, 2),
        event!.prev_events,
        hubKey,
        MIMI_V1,
      ).event;
      await expect(pair.follower.service.applyEvent(illegal)).rejects.toBeInstanceOf(AuthRejection);
    });

    it("refuses an event signed by a server that is not the room's hub", async () => {
      const [event] = await nextHubEvents(1);
      const rogue = formEvent(
        createLimitedEvent({ ...event!, hub_server: "stranger.example" } as never, strangerKey, MIMI_V1),
        event!.auth_events,
        event!.prev_events,
        strangerKey,
        MIMI_V1,
      ).event;
      await expect(pair.follower.service.applyEvent(rogue)).rejects.toMatchObject({ errcode: "M_WRONG_HUB" });
    });

    it("refuses limited events sent to it as if it were the hub, and fully-formed events at the hub", async () => {
      const [event] = await nextHubEvents(1);
      await expect(pair.hub.service.applyEvent(clone(event))).rejects.toBeInstanceOf(RoomError);
    });
  });

  it("stops a room at the follower when a write fails: that event and the later ones are refused, nothing left unhandled", async () => {
    const { hub, follower, roomId } = pair;
    await hub.service.sendAsHub(roomId, ALICE, "org.example.note", { n: 1 });
    await hub.service.sendAsHub(roomId, ALICE, "org.example.note", { n: 2 });
    const [first, second] = pair.hubEvents.slice(pair.forwarded).map((n) => JSON.parse(n.json) as unknown);
    // From now on the follower's store refuses every write (as when a provider stops mid-apply).
    await follower.close();
    await expect(follower.service.applyEvent(first)).rejects.toThrow(/closed/);
    // A turn of the event loop, in which a rejection nobody handles would be reported.
    await new Promise((resolve) => setImmediate(resolve));
    await expect(follower.service.applyEvent(second)).rejects.toMatchObject({
      errcode: "M_UNKNOWN",
      message: expect.stringContaining("stopped after a storage failure"),
    });
  });

  it("after a restart every room is exactly as before: state, head and history", async () => {
    const { hub, follower, roomId } = pair;
    await viaHub(pair, bobJoin(pair));
    await hub.service.sendAsHub(roomId, ALICE, "m.room.topic", { topic: "before restart" }, "");
    await viaHub(pair, follower.service.buildLimitedEvent(roomId, BOB, "org.example.note", { n: 1 }));
    const snapshot = async (side: OpenedService) => {
      const room = side.service.room(roomId)!;
      return {
        record: room.record,
        state: [...room.state.allEntries()].sort((a, b) => a.eventId.localeCompare(b.eventId)),
        count: room.state.eventCount,
        head: room.state.headEventId,
        history: await side.service.getEvents(roomId, 1, 1000),
      };
    };
    const hubBefore = await snapshot(hub);
    const followerBefore = await snapshot(follower);
    await hub.close();
    await follower.close();
    pair.hub = await openService(hub.dir, hubKey, keys);
    pair.follower = await openService(follower.dir, followerKey, keys);
    expect(await snapshot(pair.hub)).toEqual(hubBefore);
    expect(await snapshot(pair.follower)).toEqual(followerBefore);
    // And the room carries on from where it was.
    pair.hub.service.subscribe((n) => pair.hubEvents.push(n));
    const next = await viaHub(
      pair,
      pair.follower.service.buildLimitedEvent(roomId, BOB, "org.example.note", { n: 2 }),
    );
    expect(
      parseFullyFormedEvent(JSON.parse((await pair.hub.service.getEvent(next))!.json)).prev_events,
    ).toEqual([hubBefore.head]);
    expect(await history(pair.follower, roomId)).toEqual(await history(pair.hub, roomId));
  });
});
