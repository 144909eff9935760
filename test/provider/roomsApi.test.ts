import type { MimiProvider } from "../../src/provider/provider";
import { startInProcess, type InProcessSet } from "../support/inProcess";
import { eventually } from "../support/providers";
import { removeDir } from "../support/services";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const MESSAGE = "org.example.message";

async function historyIds(provider: MimiProvider, roomId: string): Promise<string[]> {
  const ids: string[] = [];
  let from: number | undefined = 1;
  while (from !== undefined) {
    const page = await provider.rooms.history(roomId, { fromSeq: from, limit: 2 });
    ids.push(...page.events.map((e) => e.eventId));
    from = page.nextSeq;
  }
  return ids;
}

describe("the rooms API", () => {
  let set: InProcessSet;
  let roomId: string;
  const a = () => set.providers[0]!;
  const b = () => set.providers[1]!;

  beforeAll(async () => {
    // These tests count the room layer's events; the hosted MLS clients (which add commits) have tests of their own.
    set = await startInProcess(["a.example", "b.example"], {}, undefined, false);
    ({ roomId } = await a().rooms.createRoom({ creator: ALICE, txnId: "create-1" }));
    await a().rooms.send({
      roomId,
      sender: ALICE,
      type: "m.room.join_rules",
      content: { rule: "public" },
      stateKey: "",
      txnId: "rules",
    });
    await b().rooms.changeOwnParticipation({ roomId, user: BOB, change: "join", txnId: "join-1" });
  });
  afterAll(async () => {
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  it("creates a room once per txnId", async () => {
    const first = await a().rooms.createRoom({ creator: ALICE, txnId: "create-2" });
    const again = await a().rooms.createRoom({ creator: ALICE, txnId: "create-2" });
    expect(again.roomId).toBe(first.roomId);
    expect(
      a()
        .rooms.listRooms()
        .filter((r) => r === first.roomId),
    ).toHaveLength(1);
  });

  it("a hub-local send repeated with the same txnId, even concurrently, makes one event", async () => {
    const before = (await historyIds(a(), roomId)).length;
    const request = { roomId, sender: ALICE, type: MESSAGE, content: { body: "once" }, txnId: "hub-1" };
    const [one, two] = await Promise.all([a().rooms.send(request), a().rooms.send(request)]);
    const three = await a().rooms.send(request);
    expect(two.eventId).toBe(one.eventId);
    expect(three.eventId).toBe(one.eventId);
    expect((await historyIds(a(), roomId)).length).toBe(before + 1);
    // The same txnId of another user is another request (here refused: carol is not in the room).
    await expect(a().rooms.send({ ...request, sender: "@carol:a.example" })).rejects.toMatchObject({
      errcode: "M_FORBIDDEN",
    });
  });

  it("a follower's send resolves once the event is back from the hub, and a retry makes no second event", async () => {
    const request = { roomId, sender: BOB, type: MESSAGE, content: { body: "from b" }, txnId: "b-1" };
    const { eventId } = await b().rooms.send(request);
    expect(await historyIds(b(), roomId)).toContain(eventId);
    expect((await b().rooms.send(request)).eventId).toBe(eventId);
    const count = (await historyIds(a(), roomId)).length;
    await b().rooms.send(request);
    expect((await historyIds(a(), roomId)).length).toBe(count);
  });

  it("keeps its idempotency records across a restart", async () => {
    const request = {
      roomId,
      sender: BOB,
      type: MESSAGE,
      content: { body: "before restart" },
      txnId: "b-restart",
    };
    const { eventId } = await b().rooms.send(request);
    const hubRequest = {
      roomId,
      sender: ALICE,
      type: MESSAGE,
      content: { body: "hub before restart" },
      txnId: "a-restart",
    };
    const hubEvent = await a().rooms.send(hubRequest);
    await b().stop();
    await a().stop();
    await set.restart(0);
    await set.restart(1);
    expect((await b().rooms.send(request)).eventId).toBe(eventId);
    expect((await a().rooms.send(hubRequest)).eventId).toBe(hubEvent.eventId);
    const ids = await historyIds(a(), roomId);
    expect(ids.filter((id) => id === eventId)).toHaveLength(1);
    await eventually(async () => expect(await historyIds(b(), roomId)).toEqual(ids));
  });

  it("passes on the hub's refusal as a room error with the hub's errcode", async () => {
    const refused = b().rooms.send({
      roomId,
      sender: "@mallory:b.example",
      type: MESSAGE,
      content: { body: "x" },
      txnId: "m-1",
    });
    await expect(refused).rejects.toMatchObject({ errcode: "M_FORBIDDEN" });
  });

  it("refuses bad input with the room layer's errcodes", async () => {
    await expect(
      a().rooms.send({ roomId, sender: ALICE, type: MESSAGE, content: {}, txnId: "" }),
    ).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    await expect(
      a().rooms.send({ roomId, sender: BOB, type: MESSAGE, content: {}, txnId: "t" }),
    ).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    await expect(
      a().rooms.send({ roomId: "!nope:a.example", sender: ALICE, type: MESSAGE, content: {}, txnId: "t2" }),
    ).rejects.toMatchObject({ errcode: "M_NOT_FOUND" });
    await expect(a().rooms.history(roomId, { fromSeq: 0, limit: 10 })).rejects.toMatchObject({
      errcode: "M_INVALID_PARAM",
    });
  });

  it("answers room info and waits for the next event in a long poll", async () => {
    const info = a().rooms.roomInfo(roomId)!;
    expect(info).toMatchObject({ role: "hub", hubServer: "a.example" });
    expect(info.participation[BOB]).toBe("join");
    const next = info.headSeq + 1;
    const polled = a().rooms.history(roomId, { fromSeq: next, limit: 10, waitMs: 5000 });
    await a().rooms.send({ roomId, sender: ALICE, type: MESSAGE, content: { body: "poll" }, txnId: "poll" });
    const page = await polled;
    expect(page.events.map((e) => e.seq)).toEqual([next]);
  });
});
