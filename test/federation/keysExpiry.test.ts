import { keysHandler } from "../support/expressAuth";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import express from "express";
import { parseConfig } from "../../src/config/config";
import { SignatureError } from "../../src/events/errors";
import {
  createLimitedEvent,
  formEvent,
  verifyFullyFormedEvent,
  verifyLimitedEvent,
} from "../../src/events/pdu";
import type { VerifyKeyLookup } from "../../src/events/signatures";
import type { ServerSigningKey } from "../../src/events/signingKey";
import type { FullyFormedEvent, LimitedEvent, LimitedEventTemplate } from "../../src/events/types";
import { ServerResolver } from "../../src/federation/discovery";
import { KeyRing, ServerKeysPublisher } from "../../src/federation/keys";
import { MimiProvider } from "../../src/provider/provider";
import { RoomService, type RoomEventNotice } from "../../src/room/roomService";
import { MIMI_V1 } from "../../src/roomVersions";
import type { KvStore } from "../../src/store/kv";
import { RoomStore } from "../../src/store/roomStore";
import { rawRequest } from "../support/fakeServer";
import { lookupOf, testKey } from "../support/keys";
import { removeDir, tempDir } from "../support/services";
import { listen, ManualClock, type Listening } from "./clientHarness";
import { openTestStore, testDatabaseConfig, TEST_STORE_NAME } from "../support/store";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const NOW = 1_750_000_000_000;
/** When a1 and b1 were rotated out. */
const YESTERDAY = NOW - DAY;
const TWO_DAYS_AGO = NOW - 2 * DAY;

const a1 = testKey("a.example", "ed25519:a1");
const a2 = testKey("a.example", "ed25519:a2");
const b1 = testKey("b.example", "ed25519:b1");
const b2 = testKey("b.example", "ed25519:b2");
const c = testKey("c.example", "ed25519:c");
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const ROOM = "!room:a.example";
const PREV = "$" + "A".repeat(43);
const AUTH = ["$" + "B".repeat(42) + "A"];

/** `old` as an old key that expired yesterday. */
function rotatedOut(old: ServerSigningKey) {
  return [{ keyId: old.keyId, publicKeyBase64: old.publicKeyBase64, expiredTs: YESTERDAY }];
}

function forbidden(check: () => unknown): void {
  let thrown: unknown;
  try {
    check();
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(SignatureError);
  expect((thrown as SignatureError).errcode).toBe("M_FORBIDDEN");
}

/**
 * LM-04 §GET /_matrix/key/v2/server: a key in `old_verify_keys` ceased to be
 * used at its `expired_ts`, so it verifies only what was signed before then.
 * a.example (the hub) and b.example (a follower) both rotated yesterday; their
 * keys are fetched over HTTP into real key rings on the store under test.
 */
describe("keys rotated out verify only what they signed before they expired", () => {
  let clock: ManualClock;
  let dirs: string[];
  let stores: KvStore[];
  let keyServers: Listening[];
  let routes: Record<string, string>;

  beforeEach(async () => {
    clock = new ManualClock(NOW);
    dirs = [];
    stores = [];
    keyServers = [];
    routes = {};
    for (const [current, old] of [
      [a2, a1],
      [b2, b1],
    ] as const) {
      const app = express();
      const publisher = new ServerKeysPublisher(current, rotatedOut(old), { now: clock.now });
      app.get("/_matrix/key/v2/server", keysHandler(publisher));
      const listening = await listen(app);
      keyServers.push(listening);
      routes[current.serverName] = listening.base;
    }
  });

  afterEach(async () => {
    for (const store of stores) await store.close();
    for (const server of keyServers) await server.close();
    for (const dir of dirs) removeDir(dir);
  });

  async function openStore(label: string): Promise<KvStore> {
    const dir = tempDir(label);
    dirs.push(dir);
    const store = await openTestStore(join(dir, "db"), { durability: "os" });
    stores.push(store);
    return store;
  }

  async function ringOf(
    ourKey: ServerSigningKey,
    store: KvStore,
    ourOld?: ServerSigningKey,
  ): Promise<KeyRing> {
    return KeyRing.open({
      ourKey,
      ...(ourOld === undefined ? {} : { ourOldKeys: rotatedOut(ourOld) }),
      store,
      resolver: new ServerResolver({ staticMap: routes }),
      now: clock.now,
    });
  }

  /** c.example's ring, holding the keys of a and b. */
  async function followerRing(): Promise<KeyRing> {
    const ring = await ringOf(c, await openStore("c"));
    await ring.ensureKeys("a.example", [a1.keyId, a2.keyId]);
    await ring.ensureKeys("b.example", [b1.keyId, b2.keyId]);
    return ring;
  }

  function message(ts: number, key: ServerSigningKey, body = "hello"): LimitedEvent {
    const template: LimitedEventTemplate = {
      room_id: ROOM,
      type: "org.example.message",
      sender: BOB,
      origin_server_ts: ts,
      hub_server: "a.example",
      content: { body },
    };
    return createLimitedEvent(template, key, MIMI_V1);
  }

  function invite(ts: number, key: ServerSigningKey): LimitedEvent {
    return createLimitedEvent(
      {
        room_id: ROOM,
        type: "m.room.user",
        state_key: "@carol:c.example",
        sender: BOB,
        origin_server_ts: ts,
        hub_server: "a.example",
        content: { participation: "invite" },
      },
      key,
      MIMI_V1,
    );
  }

  function formed(lpdu: LimitedEvent, hubKey: ServerSigningKey): FullyFormedEvent {
    return formEvent(lpdu, AUTH, [PREV], hubKey, MIMI_V1).event;
  }

  describe("limited events and invites", () => {
    it("refuses a new LPDU signed today with a key that expired yesterday", async () => {
      const ring = await followerRing();
      forbidden(() => verifyLimitedEvent(message(NOW, b1), ring, MIMI_V1));
      forbidden(() => verifyLimitedEvent(message(YESTERDAY, b1), ring, MIMI_V1));
      expect(() => verifyLimitedEvent(message(YESTERDAY - 1, b1), ring, MIMI_V1)).not.toThrow();
      expect(() => verifyLimitedEvent(message(NOW, b2), ring, MIMI_V1)).not.toThrow();
    });

    it("refuses an invite signed with an expired key, as the invitee's server checks it", async () => {
      const ring = await followerRing();
      forbidden(() => verifyLimitedEvent(invite(NOW, b1), ring, MIMI_V1));
      expect(() => verifyLimitedEvent(invite(NOW, b2), ring, MIMI_V1)).not.toThrow();
    });

    it("keeps refusing after a restart, from the keys the store remembers", async () => {
      const store = await openStore("restart");
      const first = await ringOf(c, store);
      await first.ensureKeys("b.example", [b1.keyId, b2.keyId]);
      const again = await ringOf(c, store);
      forbidden(() => verifyLimitedEvent(message(NOW, b1), again, MIMI_V1));
      expect(() => verifyLimitedEvent(message(TWO_DAYS_AGO, b1), again, MIMI_V1)).not.toThrow();
    });

    it("treats a key a server stopped publishing as expired when the ring noticed", async () => {
      const app = express();
      let publisher = new ServerKeysPublisher(testKey("d.example", "ed25519:d1"), [], { now: clock.now });
      app.get("/_matrix/key/v2/server", (_req, res) => res.json(publisher.response()));
      const listening = await listen(app);
      keyServers.push(listening);
      routes["d.example"] = listening.base;
      const ring = await ringOf(c, await openStore("d"));
      await ring.ensureKeys("d.example", ["ed25519:d1"]);
      const d1 = testKey("d.example", "ed25519:d1");
      const fromD = (ts: number, key: ServerSigningKey) =>
        createLimitedEvent(
          {
            room_id: ROOM,
            type: "org.example.message",
            sender: "@dan:d.example",
            origin_server_ts: ts,
            hub_server: "a.example",
            content: { body: "d" },
          },
          key,
          MIMI_V1,
        );

      publisher = new ServerKeysPublisher(testKey("d.example", "ed25519:d2"), [], { now: clock.now });
      clock.advance(HOUR);
      const noticed = clock.t;
      await ring.ensureKeys("d.example", ["ed25519:d2"]);
      expect(ring.keyInfo("d.example", "ed25519:d1")).toMatchObject({ old: true, validUntil: noticed });
      expect(() => verifyLimitedEvent(fromD(noticed - 1, d1), ring, MIMI_V1)).not.toThrow();
      forbidden(() => verifyLimitedEvent(fromD(noticed, d1), ring, MIMI_V1));
    });
  });

  describe("fully-formed events: the origin's and the hub's signature", () => {
    it("verifies an event of old history sequenced before both keys expired", async () => {
      const ring = await followerRing();
      const old = formed(message(TWO_DAYS_AGO, b1), a1);
      expect(verifyFullyFormedEvent(old, ring, MIMI_V1)).toMatch(/^\$/);
      expect(verifyFullyFormedEvent(formed(message(NOW, b2), a2), ring, MIMI_V1)).toMatch(/^\$/);
    });

    it("refuses an event whose origin signed today with its expired key", async () => {
      const ring = await followerRing();
      forbidden(() => verifyFullyFormedEvent(formed(message(NOW, b1), a2), ring, MIMI_V1));
    });

    it("refuses an event the hub signed with its expired key after the expiry", async () => {
      const ring = await followerRing();
      forbidden(() => verifyFullyFormedEvent(formed(message(NOW, b2), a1), ring, MIMI_V1));
    });
  });

  describe(`in the room services on ${TEST_STORE_NAME}`, () => {
    async function hubService(
      signingKey: ServerSigningKey,
      keys: VerifyKeyLookup,
      store: KvStore,
    ): Promise<{ service: RoomService; notices: RoomEventNotice[] }> {
      const service = await RoomService.open({
        signingKey,
        store: new RoomStore(store),
        keys,
        now: clock.now,
      });
      const notices: RoomEventNotice[] = [];
      service.subscribe((notice) => notices.push(notice));
      return { service, notices };
    }

    it("the hub refuses a follower's LPDU signed today with an expired key and changes nothing", async () => {
      const store = await openStore("hub");
      const ring = await ringOf(a2, store, a1);
      const { service } = await hubService(a2, ring, store);
      const roomId = await service.createRoom(ALICE);
      await service.sendAsHub(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
      const join = (key: ServerSigningKey) =>
        createLimitedEvent(
          {
            room_id: roomId,
            type: "m.room.user",
            state_key: BOB,
            sender: BOB,
            origin_server_ts: clock.t,
            hub_server: "a.example",
            content: { participation: "join" },
          },
          key,
          MIMI_V1,
        );
      await ring.ensureKeys("b.example", [b1.keyId]);
      const before = service.room(roomId)!.record.headSeq;
      await expect(service.submitLimitedEvent(join(b1), "b.example")).rejects.toMatchObject({
        constructor: SignatureError,
        errcode: "M_FORBIDDEN",
      });
      expect(service.room(roomId)!.record.headSeq).toBe(before);
      await expect(service.submitLimitedEvent(join(b2), "b.example")).resolves.toMatchObject({
        seq: before + 1,
      });
    });

    it("a follower catches up on history the hub sequenced under a key it has since rotated out", async () => {
      // Two days ago, the hub signed with a1.
      clock.t = TWO_DAYS_AGO;
      const hub = await hubService(a1, lookupOf(a1), await openStore("old-hub"));
      const roomId = await hub.service.createRoom(ALICE);
      await hub.service.sendAsHub(roomId, ALICE, "org.example.message", { body: "before" });
      await hub.service.sendAsHub(roomId, ALICE, "org.example.message", { body: "rotation" });
      clock.t = NOW;

      const store = await openStore("late-follower");
      const ring = await ringOf(c, store);
      await ring.ensureKeys("a.example", [a1.keyId]);
      const follower = await RoomService.open({ signingKey: c, store: new RoomStore(store), keys: ring });
      const [create, ...rest] = hub.notices.map((notice) => JSON.parse(notice.json) as unknown);
      await follower.followRoom(create);
      for (const event of rest) await follower.applyEvent(event);
      expect(follower.room(roomId)!.record.headSeq).toBe(hub.notices.length);

      // Today, events signed with a1 (a stolen key, say) are refused.
      const stolen = await hubService(a1, lookupOf(a1), await openStore("stolen-hub"));
      const forged = await stolen.service.createRoom(ALICE, { roomLocalpart: "forged" });
      await expect(follower.followRoom(JSON.parse(stolen.notices[0]!.json))).rejects.toMatchObject({
        constructor: SignatureError,
        errcode: "M_FORBIDDEN",
      });
      expect(follower.room(forged)).toBeUndefined();
    });
  });
});

/**
 * The same over federation: a provider (a.example) runs in this process on
 * real HTTP and a real database; d.example, played by the test, rotated its key d1
 * out yesterday and now signs its requests with d2.
 */
describe("a provider refuses what a rotated-out key signed after it expired", () => {
  const d1 = testKey("d.example", "ed25519:d1");
  const d2 = testKey("d.example", "ed25519:d2");
  const DAN = "@dan:d.example";
  let provider: MimiProvider;
  let keyServer: Listening;
  let dir: string;
  let roomId: string;
  let base: string;

  beforeAll(async () => {
    const app = express();
    const old = [{ keyId: d1.keyId, publicKeyBase64: d1.publicKeyBase64, expiredTs: Date.now() - DAY }];
    app.get("/_matrix/key/v2/server", keysHandler(new ServerKeysPublisher(d2, old)));
    keyServer = await listen(app);
    dir = tempDir("keys-expiry");
    mkdirSync(join(dir, "data"));
    const config = parseConfig(
      [
        "server_name: a.example",
        "federation:",
        "  bind_address: 127.0.0.1",
        "  port: 0",
        "  well_known: false",
        "  static_routes:",
        `    d.example: ${keyServer.base}`,
        `database: ${JSON.stringify(await testDatabaseConfig(dir))}`,
        "logging: { level: error }",
        // The tests count the room's events; the hosted MLS clients would add commits of their own.
        "mls: { hosted_clients: false }",
      ].join("\n"),
      dir,
    );
    provider = await MimiProvider.start(config);
    base = `http://127.0.0.1:${provider.federationPort}`;
    ({ roomId } = await provider.rooms.createRoom({ creator: ALICE, txnId: "create" }));
    await provider.rooms.send({
      roomId,
      sender: ALICE,
      type: "m.room.join_rules",
      content: { rule: "public" },
      stateKey: "",
      txnId: "public",
    });
    const danJoin = createLimitedEvent(
      {
        room_id: roomId,
        type: "m.room.user",
        state_key: DAN,
        sender: DAN,
        origin_server_ts: Date.now(),
        hub_server: "a.example",
        content: { participation: "join" },
      },
      d2,
      MIMI_V1,
    );
    const joined = await fromD("PUT", "/_matrix/federation/v2/send/join", { pdus: [danJoin] });
    expect(joined).toMatchObject({ status: 200, body: { failed_pdus: {} } });
  });

  afterAll(async () => {
    await provider.stop();
    await keyServer.close();
    removeDir(dir);
  });

  /** A request from d.example, authenticated with its current key d2. */
  function fromD(method: string, path: string, body: unknown) {
    return rawRequest({
      baseUrl: base,
      destination: "a.example",
      method,
      path,
      body: JSON.stringify(body),
      contentType: "application/json",
      signAs: { origin: "d.example", key: d2 },
    });
  }

  const headSeq = () => provider.rooms.roomInfo(roomId)!.headSeq;

  it("the hub refuses a new event signed today with the expired key, and sequences one signed with the new key", async () => {
    const message = (key: ServerSigningKey, body: string) =>
      createLimitedEvent(
        {
          room_id: roomId,
          type: "org.example.message",
          sender: DAN,
          origin_server_ts: Date.now(),
          hub_server: "a.example",
          content: { body },
        },
        key,
        MIMI_V1,
      );
    const before = headSeq();
    const refused = await fromD("PUT", "/_matrix/federation/v2/send/old-key", {
      pdus: [message(d1, "signed with d1")],
    });
    expect(refused.status).toBe(200);
    expect(Object.values(refused.body.failed_pdus as object)).toEqual([
      expect.objectContaining({ errcode: "M_FORBIDDEN" }),
    ]);
    expect(headSeq()).toBe(before);

    const accepted = await fromD("PUT", "/_matrix/federation/v2/send/new-key", {
      pdus: [message(d2, "signed with d2")],
    });
    expect(accepted).toMatchObject({ status: 200, body: { failed_pdus: {} } });
    expect(headSeq()).toBe(before + 1);
  });

  it("the invitee's server refuses an invite signed today with the expired key", async () => {
    const CAROL = "@carol:a.example";
    // A room hubbed elsewhere, so the invite carries d's signature (an invite from the hub's own user carries none).
    const invite = (key: ServerSigningKey) =>
      createLimitedEvent(
        {
          room_id: "!elsewhere:h.example",
          type: "m.room.user",
          state_key: CAROL,
          sender: DAN,
          origin_server_ts: Date.now(),
          hub_server: "h.example",
          content: { participation: "invite" },
        },
        key,
        MIMI_V1,
      );
    const body = (event: unknown) => ({ event, room_version: MIMI_V1.id, invite_room_state: [] });
    const refused = await fromD("POST", "/_matrix/federation/v3/invite/old-key", body(invite(d1)));
    expect(refused).toMatchObject({ status: 403, body: { errcode: "M_FORBIDDEN" } });
    expect(await provider.rooms.listInvites(CAROL)).toEqual([]);

    const accepted = await fromD("POST", "/_matrix/federation/v3/invite/new-key", body(invite(d2)));
    expect(accepted.status).toBe(200);
    expect(await provider.rooms.listInvites(CAROL)).toHaveLength(1);
  });
});
