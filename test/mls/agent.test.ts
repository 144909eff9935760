import { encodeUnpaddedBase64 } from "../../src/events/base64";
import { encryptMessage, loadHostedGroup } from "../../src/mls/clients";
import { decodeMlsMessage } from "ts-mls";
import { fromBase64 } from "../../src/mls/clients/wire";
import { decodeExactly } from "../../src/mls/observer/wire";
import { MLS_PROPOSAL, SUPPORTED_ALGORITHM } from "../../src/mls/roomGroup";
import type { MimiProvider } from "../../src/provider/provider";
import type { RoomService } from "../../src/room/roomService";
import { removeDir } from "../support/services";
import { startInProcess, type InProcessSet } from "../support/inProcess";
import { eventually } from "../support/providers";

import { ALICE, BOB, CAROL, ROLES } from "./people";

let txn = 0;
const txnId = () => `t${++txn}`;

describe("hosted MLS clients in three providers (in one process)", () => {
  let set: InProcessSet;
  let a: MimiProvider, b: MimiProvider, c: MimiProvider;
  beforeAll(async () => {
    set = await startInProcess(["a.example", "b.example", "c.example"]);
    [a, b, c] = set.providers as [MimiProvider, MimiProvider, MimiProvider];
  }, 60_000);
  afterAll(async () => {
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  /** `sender`'s message `body` in `roomId`, through `p`'s rooms API. */
  const say = (p: MimiProvider, roomId: string, sender: string, body: string) =>
    p.rooms.sendMessage({ roomId, sender, type: "m.room.message", content: { body }, txnId: txnId() });

  async function join(p: MimiProvider, roomId: string, user: string): Promise<void> {
    await a.rooms.invite({ roomId, sender: ALICE, target: user, txnId: txnId() });
    await eventually(async () =>
      expect((await p.rooms.listInvites(user)).map((i) => i.roomId)).toContain(roomId),
    );
    await p.rooms.changeOwnParticipation({ roomId, user, change: "join", txnId: txnId() });
  }

  it("establishes the group, joins by external commit and exchanges messages", async () => {
    const { roomId } = await a.rooms.createRoom({ creator: ALICE, txnId: txnId() });
    await join(b, roomId, BOB);
    await join(c, roomId, CAROL);
    await eventually(async () => {
      const views = await Promise.all([
        a.mls.clientView(roomId, ALICE),
        b.mls.clientView(roomId, BOB),
        c.mls.clientView(roomId, CAROL),
      ]);
      expect(views.map((v) => v?.members.length)).toEqual([3, 3, 3]);
      expect(new Set(views.map((v) => v?.epoch)).size).toBe(1);
    });
    await say(a, roomId, ALICE, "hi all");
    await say(b, roomId, BOB, "hello from b");
    await say(c, roomId, CAROL, "and c");
    for (const [p, user] of [
      [a, ALICE],
      [b, BOB],
      [c, CAROL],
    ] as const) {
      await eventually(async () => {
        const seen = await p.rooms.messages(roomId, user, { fromSeq: 1, limit: 100 });
        const bodies = seen.filter((m) => m.status !== "undecryptable").map((m) => m.content?.body);
        expect(bodies).toEqual(["hi all", "hello from b", "and c"]);
      });
    }
    const views = await Promise.all([
      a.mls.clientView(roomId, ALICE),
      b.mls.clientView(roomId, BOB),
      c.mls.clientView(roomId, CAROL),
    ]);
    expect(new Set(views.map((v) => v?.epoch)).size).toBe(1);
  }, 60_000);

  /** A room on a with bob and carol joined, every client in the group at one epoch. */
  async function roomOfThree(): Promise<string> {
    const { roomId } = await a.rooms.createRoom({ creator: ALICE, txnId: txnId() });
    await a.rooms.send({
      roomId,
      sender: ALICE,
      type: "m.room.roles",
      content: ROLES,
      stateKey: "",
      txnId: txnId(),
    });
    // Both join at once: their external commits race for one epoch, and the loser rebases.
    await Promise.all([join(b, roomId, BOB), join(c, roomId, CAROL)]);
    await agree(roomId, [ALICE, BOB, CAROL]);
    return roomId;
  }

  const clientOf: Record<string, () => MimiProvider> = { [ALICE]: () => a, [BOB]: () => b, [CAROL]: () => c };

  /** The listed users' clients and every provider's observer: one epoch, one tree hash, these members. */
  async function agree(roomId: string, users: string[]): Promise<void> {
    await eventually(async () => {
      const views = await Promise.all(users.map((u) => clientOf[u]!().rooms.clientGroup(roomId, u)));
      // Every provider with a joined user follows the room, and checks every commit as the hub does.
      const observers = users.map((u) => clientOf[u]!().mls.observerView(roomId));
      for (const view of [...views, ...observers]) {
        expect([...view!.members].sort()).toEqual([...users].sort());
        expect(view!.epoch).toBe(views[0]!.epoch);
        expect(view!.treeHash).toBe(views[0]!.treeHash);
      }
    }, 30_000);
  }

  it("adds invited users by Welcome: the inviter's client commits the Add, the hub passes the Welcome on", async () => {
    const roomId = await roomOfThree();
    const history = (await a.rooms.history(roomId, { fromSeq: 1, limit: 1000 })).events;
    const commits = history.filter((e) => e.event.type === "m.mls.commit");
    // The creator's commit, then one Add each for bob and carol, all by alice's client.
    expect(commits.map((e) => e.event.sender)).toEqual([ALICE, ALICE, ALICE]);
    expect(commits.map((e) => e.event.content.prev_commit_event_id)).toEqual([
      undefined,
      commits[0]!.eventId,
      commits[1]!.eventId,
    ]);
  }, 60_000);

  it("joins by external commit in a public room, and converges when two providers commit in one epoch", async () => {
    const { roomId } = await a.rooms.createRoom({ creator: ALICE, txnId: txnId() });
    await a.rooms.send({
      roomId,
      sender: ALICE,
      type: "m.room.join_rules",
      content: { rule: "public" },
      stateKey: "",
      txnId: txnId(),
    });
    await eventually(async () => expect(a.mls.observerView(roomId)).toBeDefined());
    // Both join at once: their external commits race for one epoch; the loser rebases and commits again.
    await Promise.all([
      b.rooms.changeOwnParticipation({ roomId, user: BOB, change: "join", txnId: txnId() }),
      c.rooms.changeOwnParticipation({ roomId, user: CAROL, change: "join", txnId: txnId() }),
    ]);
    await agree(roomId, [ALICE, BOB, CAROL]);
    const history = (await a.rooms.history(roomId, { fromSeq: 1, limit: 1000 })).events;
    const commits = history.filter((e) => e.event.type === "m.mls.commit");
    expect(commits.map((e) => e.event.sender).sort()).toEqual([ALICE, BOB, CAROL].sort());
  }, 60_000);

  it("sends m.room.message encrypted, once per txnId, and keeps m.mls.commit and m.room.encrypted for its clients", async () => {
    const roomId = await roomOfThree();
    const request = {
      roomId,
      sender: BOB,
      type: "m.room.message",
      content: { body: "once" },
      txnId: txnId(),
    };
    const [one, two] = await Promise.all([b.rooms.send(request), b.rooms.send(request)]);
    expect(two.eventId).toBe(one.eventId);
    expect((await b.rooms.sendMessage(request)).eventId).toBe(one.eventId);
    const history = (await a.rooms.history(roomId, { fromSeq: 1, limit: 1000 })).events;
    const sent = history.filter((e) => e.eventId === one.eventId);
    expect(sent.map((e) => e.event.type)).toEqual(["m.room.encrypted"]);
    expect(JSON.stringify(sent[0]!.event)).not.toContain("once");
    expect(history.filter((e) => e.event.type === "m.room.encrypted")).toHaveLength(1);
    await eventually(async () => {
      const seen = await c.rooms.messages(roomId, CAROL, { fromSeq: 1, limit: 100 });
      expect(seen.map((m) => [m.eventId, m.status, m.content?.body])).toEqual([
        [one.eventId, "decrypted", "once"],
      ]);
    });
    // A long poll for carol's next message answers when it arrives.
    const next = c.rooms.messages(roomId, CAROL, { fromSeq: history.length + 1, limit: 10, waitMs: 10_000 });
    const later = await b.rooms.sendMessage({ ...request, content: { body: "later" }, txnId: txnId() });
    expect((await next).map((m) => [m.eventId, m.content?.body])).toEqual([[later.eventId, "later"]]);
    for (const type of ["m.mls.commit", "m.room.encrypted", "io.mimi-appservice.mls.proposal"]) {
      await expect(
        a.rooms.send({ roomId, sender: ALICE, type, content: {}, txnId: txnId() }),
      ).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    }
    // The provider's own user (mls.hub_user) acts in no room.
    await expect(
      a.rooms.send({
        roomId,
        sender: "@mimi-hub:a.example",
        type: "m.room.name",
        content: { name: "x" },
        stateKey: "",
        txnId: txnId(),
      }),
    ).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
  }, 60_000);

  it("drops a message whose MLS sender is not the event's sender, as if it did not decrypt", async () => {
    const roomId = await roomOfThree();
    // Bob's client encrypts (a copy of its state, never stored: the test alone uses this key);
    // the ciphertext goes into an event sent as alice, which the hub cannot tell apart.
    const bobsClient = (await loadHostedGroup(b.kv, BOB, roomId, () => true))!;
    const forged = await encryptMessage(
      bobsClient,
      new TextEncoder().encode(JSON.stringify({ type: "m.room.message", content: { body: "forged" } })),
    );
    const rooms = (a as unknown as { roomService: RoomService }).roomService;
    const { eventId } = await rooms.sendAsHub(roomId, ALICE, "m.room.encrypted", {
      algorithm: SUPPORTED_ALGORITHM,
      ciphertext: encodeUnpaddedBase64(forged.ciphertext),
      commit_event_id: forged.commitEventId,
    });
    await eventually(async () => {
      const seen = await c.rooms.messages(roomId, CAROL, { fromSeq: 1, limit: 100 });
      const record = seen.find((m) => m.eventId === eventId);
      expect(record).toMatchObject({ status: "dropped", sender: ALICE });
      expect(record?.content).toBeUndefined();
      expect(record?.reason).toContain(BOB);
    });
  }, 60_000);

  it("removes the clients of users who leave, are kicked or banned; they read nothing after", async () => {
    const roomId = await roomOfThree();
    await c.rooms.changeOwnParticipation({ roomId, user: CAROL, change: "leave", txnId: txnId() });
    await agree(roomId, [ALICE, BOB]);
    await say(a, roomId, ALICE, "after leave");
    await eventually(async () => {
      const seen = await b.rooms.messages(roomId, BOB, { fromSeq: 1, limit: 100 });
      expect(seen.map((m) => m.content?.body)).toContain("after leave");
    });
    expect(
      (await c.rooms.messages(roomId, CAROL, { fromSeq: 1, limit: 100 })).map((m) => m.content?.body),
    ).not.toContain("after leave");
    await a.rooms.changeParticipationOf({
      roomId,
      sender: ALICE,
      target: BOB,
      change: "ban",
      txnId: txnId(),
    });
    await agree(roomId, [ALICE]);
    await say(a, roomId, ALICE, "alone");
    await eventually(async () => {
      const mine = await a.rooms.messages(roomId, ALICE, { fromSeq: 1, limit: 100 });
      expect(mine.filter((m) => m.status === "sent").map((m) => m.content?.body)).toContain("alone");
    });
    expect(
      (await b.rooms.messages(roomId, BOB, { fromSeq: 1, limit: 100 })).map((m) => m.content?.body),
    ).not.toContain("alone");
  }, 60_000);

  it("the hub proposes the removal when it has no member left; a follower's client commits it by reference", async () => {
    const roomId = await roomOfThree();
    await a.rooms.changeOwnParticipation({ roomId, user: ALICE, change: "leave", txnId: txnId() });
    // Sent at once: held (or refused by the hub and sent again) until a commit covers the proposal.
    await say(b, roomId, BOB, "right after alice left");
    await agree(roomId, [BOB, CAROL]);
    await eventually(async () => {
      const seen = await c.rooms.messages(roomId, CAROL, { fromSeq: 1, limit: 100 });
      expect(seen.map((m) => m.content?.body)).toContain("right after alice left");
    });
    const events = (await a.rooms.history(roomId, { fromSeq: 1, limit: 1000 })).events.map((e) => e.event);
    const leaveAt = events.findIndex(
      (e) => e.type === "m.room.user" && e.state_key === ALICE && e.content.participation === "leave",
    );
    expect(events[leaveAt + 1]).toMatchObject({ type: MLS_PROPOSAL, sender: "@mimi-hub:a.example" });
    const covering = events.slice(leaveAt + 2).find((e) => e.type === "m.mls.commit")!;
    expect([BOB, CAROL]).toContain(covering.sender);
    const commit = decodeExactly(
      decodeMlsMessage,
      fromBase64(covering.content.message as string),
      "MLSMessage",
    );
    const proposals =
      commit.wireformat === "mls_public_message" && commit.publicMessage.content.contentType === "commit"
        ? commit.publicMessage.content.commit.proposals
        : [];
    expect(proposals.map((p) => p.proposalOrRefType)).toEqual(["reference"]);
    // No message went out while the proposal was pending.
    const between = events.slice(leaveAt + 1, events.indexOf(covering));
    expect(between.filter((e) => e.type === "m.room.encrypted")).toEqual([]);
    expect(
      (await a.rooms.messages(roomId, ALICE, { fromSeq: 1, limit: 100 })).map((m) => m.content?.body),
    ).not.toContain("right after alice left");
  }, 60_000);
});
