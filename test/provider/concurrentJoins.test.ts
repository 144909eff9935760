import { startInProcess, type InProcessSet } from "../support/inProcess";
import { removeDir } from "../support/services";

const ALICE = "@alice:a.example";

describe("several users of one server join a room it does not follow yet, at once", () => {
  let set: InProcessSet;
  afterEach(async () => {
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  it.each([2, 5])("%i joins: each succeeds once, and the follower's history is the hub's", async (count) => {
    set = await startInProcess(["a.example", "b.example"]);
    const [a, b] = set.providers;
    const { roomId } = await a!.rooms.createRoom({ creator: ALICE, txnId: "create" });
    await a!.rooms.send({
      roomId,
      sender: ALICE,
      type: "m.room.join_rules",
      content: { rule: "public" },
      stateKey: "",
      txnId: "rules",
    });
    for (let i = 0; i < 20; i++)
      await a!.rooms.send({
        roomId,
        sender: ALICE,
        type: "org.example.message",
        content: { body: `m${i}` },
        txnId: `m${i}`,
      });
    const users = Array.from({ length: count }, (_, i) => `@user${i}:b.example`);
    const joins = await Promise.allSettled(
      users.map((user) =>
        b!.rooms.changeOwnParticipation({ roomId, user, change: "join", txnId: `join-${user}` }),
      ),
    );
    expect(joins.filter((j) => j.status === "rejected")).toEqual([]);
    const ids = async (p: typeof a) =>
      (await p!.rooms.history(roomId, { fromSeq: 1, limit: 1000 })).events.map((e) => e.eventId);
    // The hosted MLS clients go on committing after the joins: compare once both are idle.
    const quiet = async () => {
      await a!.mls.settled(roomId);
      await b!.mls.settled(roomId);
      return JSON.stringify(await ids(a)) === JSON.stringify(await ids(b));
    };
    for (let i = 0; i < 300 && !((await quiet()) && (await quiet())); i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(await ids(b)).toEqual(await ids(a));
    expect(b!.rooms.roomInfo(roomId)?.participation).toMatchObject(
      Object.fromEntries(users.map((u) => [u, "join"])),
    );
  });
});
