import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createLimitedEvent } from "../../src/events/pdu";
import { parseSigningKeyFile } from "../../src/events/signingKeyFile";
import { ServerSigningKey } from "../../src/events/signingKey";
import { MIMI_V1 } from "../../src/roomVersions";
import { testKey } from "../support/keys";
import { rawRequest, startFakeServer, type FakeServer } from "../support/fakeServer";
import {
  eventually,
  freePort,
  startProviders,
  stopProviders,
  type ProviderProcess,
} from "../support/providers";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const BERT = "@bert:b.example";
const CAROL = "@carol:c.example";
const CLEO = "@cleo:c.example";
const ROLES = {
  roles: {
    admin: {
      order: 100,
      permissions: { add: true, kick: true, ban: true, redact: true, roles: ["admin", "member"] },
      assignees: [ALICE],
    },
    member: { order: 10, permissions: { add: true }, assignees: [BOB, BERT, CAROL, CLEO] },
  },
};

type Event = {
  event_id: string;
  type: string;
  sender: string;
  state_key?: string;
  content: Record<string, unknown>;
};

describe("three providers on 127.0.0.1", () => {
  let a: ProviderProcess, b: ProviderProcess, c: ProviderProcess;
  let d: FakeServer;
  beforeAll(async () => {
    const dPort = await freePort();
    d = await startFakeServer(testKey("d.example"), dPort);
    // These tests count the room layer's events; the hosted MLS clients (which add commits) have tests of their own.
    [a, b, c] = await startProviders(
      ["a.example", "b.example", "c.example"],
      { "d.example": d.baseUrl },
      { hostedClients: false },
    );
  }, 60_000);
  afterAll(async () => {
    await stopProviders([a, b, c]);
    await d.close();
  });

  async function history(p: ProviderProcess, roomId: string): Promise<Event[]> {
    return p.history(roomId);
  }

  async function sameHistories(roomId: string, length: number): Promise<Event[]> {
    return eventually(async () => {
      const [ha, hb, hc] = await Promise.all([history(a, roomId), history(b, roomId), history(c, roomId)]);
      expect(ha).toHaveLength(length);
      expect(hb.map((e) => e.event_id)).toEqual(ha.map((e) => e.event_id));
      expect(hc.map((e) => e.event_id)).toEqual(ha.map((e) => e.event_id));
      return ha;
    });
  }

  function send(p: ProviderProcess, roomId: string, sender: string, body: string) {
    return p.send(roomId, sender, "org.example.message", { body });
  }

  /** A room on a with bob and carol joined (b and c followers), roles set so members may invite. */
  async function roomWithAllThree(): Promise<string> {
    const roomId = await a.createRoom(ALICE);
    await a.send(roomId, ALICE, "m.room.roles", ROLES, "");
    for (const [p, user] of [
      [b, BOB],
      [c, CAROL],
    ] as const) {
      await a.invite(roomId, ALICE, user);
      await p.join(roomId, user);
    }
    return roomId;
  }

  it("create, invite, join, knock, leave, kick, ban and events from all three end in identical linear histories", async () => {
    const roomId = await a.createRoom(ALICE);
    await a.send(roomId, ALICE, "m.room.roles", ROLES, "");
    await a.send(roomId, ALICE, "m.room.join_rules", { rule: "knock" }, "");
    // An invite to a server not in the room goes through POST /invite; the join through make/send_join.
    await a.invite(roomId, ALICE, BOB);
    const invites = await b.invites(BOB);
    expect(invites).toEqual([expect.objectContaining({ room_id: roomId, inviter: ALICE })]);
    await b.join(roomId, BOB);
    // Carol knocks from a server not in the room (make/send_knock); bob, a follower, lets her in.
    await c.knock(roomId, CAROL);
    await b.invite(roomId, BOB, CAROL);
    await c.join(roomId, CAROL);
    // Once their servers are in the room, invites and joins go as ordinary events.
    await b.invite(roomId, BOB, BERT);
    await b.join(roomId, BERT);
    await c.invite(roomId, CAROL, CLEO);
    await c.join(roomId, CLEO);
    await send(a, roomId, ALICE, "from a");
    await send(b, roomId, BOB, "from b");
    await send(c, roomId, CAROL, "from c");
    // Someone without an invite cannot join a knock room.
    await expect(c.join(roomId, "@dave:c.example")).rejects.toMatchObject({
      status: 403,
      errcode: "M_FORBIDDEN",
    });
    await b.leave(roomId, BERT);
    await a.kick(roomId, ALICE, CLEO, { reason: "test kick" });
    await a.ban(roomId, ALICE, "@mallory:c.example");
    const events = await sameHistories(roomId, 19);
    const participation = events
      .filter((e) => e.type === "m.room.user")
      .map((e) => `${e.sender} ${e.content.participation} ${e.state_key}`);
    expect(participation).toEqual([
      `${ALICE} join ${ALICE}`,
      `${ALICE} invite ${BOB}`,
      `${BOB} join ${BOB}`,
      `${CAROL} knock ${CAROL}`,
      `${BOB} invite ${CAROL}`,
      `${CAROL} join ${CAROL}`,
      `${BOB} invite ${BERT}`,
      `${BERT} join ${BERT}`,
      `${CAROL} invite ${CLEO}`,
      `${CLEO} join ${CLEO}`,
      `${BERT} leave ${BERT}`,
      `${ALICE} leave ${CLEO}`,
      `${ALICE} ban @mallory:c.example`,
    ]);
    // A kicked user cannot send any more; the hub refuses and nothing is appended.
    await expect(send(c, roomId, CLEO, "after kick")).rejects.toMatchObject({ errcode: "M_FORBIDDEN" });
    await sameHistories(roomId, 19);
  }, 60_000);

  it("concurrent sends from both followers are linearised identically everywhere", async () => {
    const roomId = await roomWithAllThree();
    const before = (await history(a, roomId)).length;
    const PER_SENDER = 60;
    const fromB = Array.from({ length: PER_SENDER }, (_, i) => send(b, roomId, BOB, `b-${i}`));
    const fromC = Array.from({ length: PER_SENDER }, (_, i) => send(c, roomId, CAROL, `c-${i}`));
    const accepted = await Promise.all([...fromB, ...fromC]);
    const events = await sameHistories(roomId, before + 2 * PER_SENDER);
    const ids = events.map((e) => e.event_id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of accepted) expect(ids).toContain(id);
    const bodies = events.slice(before).map((e) => e.content.body);
    expect(new Set(bodies).size).toBe(2 * PER_SENDER);
  }, 60_000);

  describe("forgeries", () => {
    let roomId: string;
    let bKey: ServerSigningKey;
    beforeAll(async () => {
      roomId = await roomWithAllThree();
      bKey = parseSigningKeyFile(
        readFileSync(join(b.dir, "data/signing.key"), "utf8"),
        "key file",
        "b.example",
      );
    }, 60_000);

    function lpdu(sender: string, signer: ServerSigningKey, body: string) {
      return createLimitedEvent(
        {
          room_id: roomId,
          type: "org.example.message",
          sender,
          origin_server_ts: Date.now(),
          hub_server: "a.example",
          content: { body },
        },
        signer,
        MIMI_V1,
      );
    }

    async function put(signAs: { origin: string; key: ServerSigningKey }, pdus: unknown[], txnId: string) {
      const body = JSON.stringify({ pdus });
      return rawRequest({
        baseUrl: `http://127.0.0.1:${a.federationPort}`,
        destination: "a.example",
        method: "PUT",
        path: `/_matrix/federation/v2/send/${txnId}`,
        body,
        contentType: "application/json",
        signAs,
      });
    }

    it("refuses a request from a fourth server whose signature is forged", async () => {
      const before = (await history(a, roomId)).length;
      // d.example publishes its real key; this request is signed with another key under the same key ID.
      const impostor = testKey("d.example", "ed25519:1", "not d's seed");
      const answer = await put(
        { origin: "d.example", key: impostor },
        [lpdu("@dan:d.example", impostor, "x")],
        "f1",
      );
      expect(answer.status).toBe(401);
      expect(answer.body).toMatchObject({ errcode: "M_FORBIDDEN" });
      // A request claiming to come from b.example, signed by d's key.
      const dAsB = new ServerSigningKey("b.example", d.key.keyId, d.key.seed);
      const claimed = await put({ origin: "b.example", key: dAsB }, [lpdu(BOB, dAsB, "y")], "f2");
      expect(claimed.status).toBe(401);
      expect((await history(a, roomId)).length).toBe(before);
    });

    it("refuses an event whose origin signature is forged, even in an authentic request", async () => {
      const before = (await history(a, roomId)).length;
      const forged = lpdu(BOB, testKey("b.example", bKey.keyId, "not b's seed"), "forged");
      const answer = await put({ origin: "b.example", key: bKey }, [forged], "f3");
      expect(answer.status).toBe(200);
      const [failure] = Object.values(answer.body.failed_pdus as Record<string, { errcode: string }>);
      expect(failure).toMatchObject({ errcode: "M_FORBIDDEN" });
      // d, an authenticated server, cannot send events for b's users either.
      const relayed = await put({ origin: "d.example", key: d.key }, [lpdu(BOB, d.key, "relayed")], "f4");
      expect(Object.values(relayed.body.failed_pdus as object)).toEqual([
        expect.objectContaining({ errcode: "M_FORBIDDEN" }),
      ]);
      expect((await history(a, roomId)).length).toBe(before);
    });
  });
});
