import { join } from "node:path";
import { EventFeed } from "../../src/provider/eventFeed";
import { RoomService } from "../../src/room/roomService";
import { RoomStore } from "../../src/store/roomStore";
import { lookupOf, testKey } from "../support/keys";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const hubKey = testKey("hub.example");
const keys = lookupOf(hubKey);
const ALICE = "@alice:hub.example";

async function open(dir: string) {
  const kv = await openTestStore(join(dir, "db"), { durability: "os" });
  const rooms = await RoomService.open({ signingKey: hubKey, store: new RoomStore(kv), keys });
  return { kv, rooms };
}

describe("durable event feed", () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir("feed");
  });
  afterEach(() => removeDir(dir));

  it("delivers every event in order per room, at least once across a crash, and nothing acknowledged again", async () => {
    const first = await open(dir);
    const feed = await EventFeed.open(first.kv, first.rooms, "bridge");
    const roomA = await first.rooms.createRoom(ALICE);
    const roomB = await first.rooms.createRoom(ALICE);
    for (let i = 0; i < 5; i++) {
      await first.rooms.sendAsHub(roomA, ALICE, "org.example.message", { body: `a${i}` });
    }
    const pulled = await feed.pull(1000);
    expect(pulled.filter((i) => i.roomId === roomA).map((i) => i.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(pulled.filter((i) => i.roomId === roomB).map((i) => i.seq)).toEqual([1, 2]);
    expect(await feed.pull(1000)).toEqual([]);
    // Only room A's first four events are acknowledged before the "crash".
    await feed.ack(pulled.filter((i) => i.roomId === roomA && i.seq <= 4));
    feed.close();
    await first.kv.close();

    const second = await open(dir);
    const again = await EventFeed.open(second.kv, second.rooms, "bridge");
    const redelivered = await again.pull(1000);
    expect(redelivered.filter((i) => i.roomId === roomA).map((i) => i.seq)).toEqual([5, 6, 7]);
    expect(redelivered.filter((i) => i.roomId === roomB).map((i) => i.seq)).toEqual([1, 2]);
    expect(again.cursor(roomA)).toBe(4);
    again.close();
    await second.kv.close();
  });

  it("wakes a waiting consumer when an event lands, and respects the pull limit", async () => {
    const { kv, rooms } = await open(dir);
    const roomId = await rooms.createRoom(ALICE);
    const feed = await EventFeed.open(kv, rooms, "bridge");
    await feed.ack(await feed.pull(100));
    const waiting = feed.waitForEvents(10_000);
    const started = Date.now();
    await rooms.sendAsHub(roomId, ALICE, "org.example.message", { body: "wake up" });
    await waiting;
    expect(Date.now() - started).toBeLessThan(5_000);
    for (let i = 0; i < 4; i++) await rooms.sendAsHub(roomId, ALICE, "org.example.message", { body: `${i}` });
    expect((await feed.pull(2)).map((i) => i.seq)).toEqual([3, 4]);
    expect((await feed.pull(10)).map((i) => i.seq)).toEqual([5, 6, 7]);
    feed.close();
    await kv.close();
  });

  it("a new consumer starting now skips the existing history; a rewind redelivers unacknowledged events", async () => {
    const { kv, rooms } = await open(dir);
    const roomId = await rooms.createRoom(ALICE);
    const feed = await EventFeed.open(kv, rooms, "late", { startAt: "now" });
    expect(await feed.pull(10)).toEqual([]);
    await rooms.sendAsHub(roomId, ALICE, "org.example.message", { body: "new" });
    expect((await feed.pull(10)).map((i) => i.seq)).toEqual([3]);
    feed.rewind();
    expect((await feed.pull(10)).map((i) => i.seq)).toEqual([3]);
    await expect(EventFeed.open(kv, rooms, "Bad Name!")).rejects.toMatchObject({
      errcode: "M_INVALID_PARAM",
    });
    feed.close();
    await kv.close();
  });
});
