import { join } from "node:path";
import type { FullyFormedEvent } from "../../src/events/types";
import { FederationClient } from "../../src/federation/client";
import { createLogger } from "../../src/logging";
import { CatchUp } from "../../src/provider/catchUp";
import { PeerAnswerError } from "../../src/provider/peerAnswers";
import { RoomService, type RoomEventNotice } from "../../src/room/roomService";
import { RoomStore } from "../../src/store/roomStore";
import { lookupOf, testKey } from "../support/keys";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const hubKey = testKey("hub.example");
const followerKey = testKey("follower.example");
const keys = lookupOf(hubKey, followerKey);
const ALICE = "@alice:hub.example";

type Tamper = (pdus: FullyFormedEvent[], limit: number) => unknown;

/** A hub history in a real RoomService, served as backfill pages through an injected fetch, with a tamper hook. */
async function setUp(dir: string, messages: number) {
  const hubKv = await openTestStore(join(dir, "hub"), { durability: "os" });
  const hub = await RoomService.open({ signingKey: hubKey, store: new RoomStore(hubKv), keys });
  const notices: RoomEventNotice[] = [];
  hub.subscribe((n) => notices.push(n));
  const roomId = await hub.createRoom(ALICE);
  for (let i = 0; i < messages; i++)
    await hub.sendAsHub(roomId, ALICE, "org.example.message", { body: `${i}` });
  const otherRoom = await hub.createRoom(ALICE);
  const followerKv = await openTestStore(join(dir, "follower"), { durability: "os" });
  const follower = await RoomService.open({
    signingKey: followerKey,
    store: new RoomStore(followerKv),
    keys,
  });
  let tamper: Tamper = (pdus) => ({ pdus });
  let requests = 0;
  let hanging = false;
  const fetchFn = async (input: string | URL, init?: RequestInit) => {
    requests++;
    // A hub that never answers: the request ends only when its signal aborts.
    if (hanging) {
      return new Promise<Response>((_resolve, reject) =>
        init?.signal?.addEventListener("abort", () => reject(new Error("aborted"))),
      );
    }
    const url = new URL(input.toString());
    const from = url.searchParams.get("v")!;
    const limit = Number(url.searchParams.get("limit"));
    const stored = await hub.getEvent(from);
    const events = (await hub.getEventsBackwards(stored!.roomId, stored!.seq, limit)).reverse();
    const body = tamper(
      events.map((e) => JSON.parse(e.json) as FullyFormedEvent),
      limit,
    );
    return new Response(JSON.stringify(body), {
      status: 200,
      headers: { "Content-Type": "application/json" },
    });
  };
  const client = new FederationClient({
    signingKey: followerKey,
    resolver: { resolve: async () => new URL("http://127.0.0.1:9") },
    fetch: fetchFn,
  });
  const catchUp = (options: { pageSize?: number; maxEventsInMemory?: number } = {}) =>
    new CatchUp({
      rooms: follower,
      client,
      ensureEventKeys: async () => undefined,
      log: createLogger("test"),
      ...options,
    });
  return {
    hub,
    follower,
    roomId,
    otherRoom,
    notices,
    catchUp,
    head: () => notices.filter((n) => n.roomId === roomId).at(-1)!.eventId,
    otherEvents: async () =>
      (await hub.getEvents(otherRoom, 1, 10)).map((e) => JSON.parse(e.json) as FullyFormedEvent),
    setTamper: (t: Tamper) => (tamper = t),
    hang: () => (hanging = true),
    requests: () => requests,
    close: async () => {
      await hubKv.close();
      await followerKv.close();
    },
  };
}

describe("catch-up checks every page the hub answers", () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir("catch-up");
  });
  afterEach(() => removeDir(dir));

  it("joins from the create event in pages and ends with the hub's history", async () => {
    const t = await setUp(dir, 30);
    await t.catchUp({ pageSize: 7 }).request(t.roomId, "hub.example", t.head());
    const ours = (await t.follower.getEvents(t.roomId, 1, 100)).map((e) => e.eventId);
    const theirs = (await t.hub.getEvents(t.roomId, 1, 100)).map((e) => e.eventId);
    expect(ours).toEqual(theirs);
    await t.close();
  });

  it("a stop ends a backfill request under way at once, not at the request's timeout", async () => {
    const t = await setUp(dir, 3);
    t.hang();
    const catchUp = t.catchUp();
    const caughtUp = catchUp.request(t.roomId, "hub.example", t.head());
    caughtUp.catch(() => undefined);
    for (let i = 0; i < 200 && t.requests() === 0; i++) await new Promise((r) => setTimeout(r, 5));
    const stopped = performance.now();
    catchUp.stop();
    await expect(caughtUp).rejects.toThrow(/aborted/);
    await catchUp.settle();
    expect(performance.now() - stopped).toBeLessThan(1_000);
    expect(t.follower.room(t.roomId)).toBeUndefined();
    await t.close();
  });

  it("keeps at most maxEventsInMemory bodies while walking back, and fetches the rest again", async () => {
    const t = await setUp(dir, 40);
    await t.catchUp({ pageSize: 5, maxEventsInMemory: 3 }).request(t.roomId, "hub.example", t.head());
    expect(t.follower.room(t.roomId)!.record.headEventId).toBe(t.head());
    expect(t.requests()).toBeGreaterThan(9);
    await t.close();
  });

  const refusals: [string, (t: Awaited<ReturnType<typeof setUp>>) => Promise<Tamper>][] = [
    [
      "an event of another room",
      async (t) => {
        const foreign = (await t.otherEvents())[1]!;
        return (pdus) => ({ pdus: [foreign, ...pdus.slice(1)] });
      },
    ],
    [
      "a page that does not chain",
      async () => (pdus) => ({ pdus: pdus.length > 2 ? [pdus[0], ...pdus.slice(2)] : pdus }),
    ],
    [
      "a page that does not end with the event asked for",
      async () => (pdus) => ({ pdus: pdus.slice(0, -1) }),
    ],
    ["more events than the limit", async () => (pdus) => ({ pdus: [...pdus, ...pdus] })],
    ["an empty page", async () => () => ({ pdus: [] })],
    ["an answer without pdus", async () => () => ({ events: [] })],
    ["a PDU that is not an object", async () => (pdus) => ({ pdus: [42, ...pdus] })],
  ];
  it.each(refusals)("refuses %s and applies nothing", async (_name, make) => {
    const t = await setUp(dir, 12);
    t.setTamper(await make(t));
    const attempt = t.catchUp({ pageSize: 5 }).request(t.roomId, "hub.example", t.head());
    await expect(attempt).rejects.toBeDefined();
    await attempt.catch((err: unknown) => {
      if (!(err instanceof PeerAnswerError)) expect((err as { errcode?: string }).errcode).toBe("M_BAD_JSON");
    });
    expect(t.follower.room(t.roomId)).toBeUndefined();
    await t.close();
  });

  it("merges targets asked while it runs instead of replacing them", async () => {
    const t = await setUp(dir, 10);
    const catchUp = t.catchUp({ pageSize: 4 });
    const at = async (seq: number) => (await t.hub.getEvents(t.roomId, seq, 1))[0]!.eventId;
    // Running towards an early event, it is asked for the newest, then for one in between.
    const [early, middle] = [await at(3), await at(7)];
    const runs = [
      catchUp.request(t.roomId, "hub.example", early),
      catchUp.request(t.roomId, "hub.example", t.head()),
      catchUp.request(t.roomId, "hub.example", middle),
    ];
    await Promise.all(runs);
    expect(t.follower.room(t.roomId)!.record.headEventId).toBe(t.head());
    await t.close();
  });
});
