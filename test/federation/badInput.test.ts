import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../../src/config/config";
import { createLimitedEvent } from "../../src/events/pdu";
import { canonicalJson } from "../../src/events/canonicalJson";
import { MimiProvider } from "../../src/provider/provider";
import { MIMI_V1 } from "../../src/roomVersions";
import { rawRequest, startFakeServer, type FakeServer } from "../support/fakeServer";
import { testKey } from "../support/keys";
import { freePort } from "../support/providers";
import { removeDir, tempDir } from "../support/services";
import { testDatabaseConfig } from "../support/store";

const ALICE = "@alice:a.example";
const DAN = "@dan:d.example";

/**
 * One provider (a.example) in this process, on real HTTP and a real database
 * (the engine under test); the test plays d.example, a server with a published key.
 */
describe("bad input never changes state and always gets a precise JSON error", () => {
  let provider: MimiProvider;
  let d: FakeServer;
  let dir: string;
  let roomId: string;
  let base: string;
  const dKey = testKey("d.example");

  beforeAll(async () => {
    dir = tempDir("bad-input");
    mkdirSync(join(dir, "data"));
    d = await startFakeServer(dKey, await freePort());
    const config = parseConfig(
      [
        "server_name: a.example",
        "federation:",
        "  bind_address: 127.0.0.1",
        "  port: 0",
        "  well_known: false",
        "  static_routes:",
        `    d.example: ${d.baseUrl}`,
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
        origin_server_ts: 1,
        hub_server: "a.example",
        content: { participation: "join" },
      },
      dKey,
      MIMI_V1,
    );
    const joined = await send("dan-join", canonicalJson({ pdus: [danJoin] }));
    expect(joined.status).toBe(200);
    expect(headSeq()).toBe(4);
  });
  afterAll(async () => {
    await provider.stop();
    await d.close();
    removeDir(dir);
  });

  const headSeq = () => provider.rooms.roomInfo(roomId)!.headSeq;

  function message(body: string, ts = Date.now()) {
    return createLimitedEvent(
      {
        room_id: roomId,
        type: "org.example.message",
        sender: DAN,
        origin_server_ts: ts,
        hub_server: "a.example",
        content: { body },
      },
      dKey,
      MIMI_V1,
    );
  }

  function send(
    txnId: string,
    body: string | Buffer,
    extra: { contentType?: string; signed?: boolean } = {},
  ) {
    return rawRequest({
      baseUrl: base,
      destination: "a.example",
      method: "PUT",
      path: `/_matrix/federation/v2/send/${txnId}`,
      body,
      contentType: extra.contentType ?? "application/json",
      ...(extra.signed === false ? {} : { signAs: { origin: "d.example", key: dKey } }),
    });
  }

  it.each([
    ["malformed JSON", () => send("t-bad-json", '{"pdus": ['), 400, "M_NOT_JSON"],
    [
      "a body that is not UTF-8",
      () =>
        send(
          "t-latin1",
          Buffer.concat([Buffer.from('{"pdus": [], "x": "'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]),
        ),
      400,
      "M_NOT_JSON",
    ],
    [
      "the wrong content type",
      () => send("t-ctype", '{"pdus": []}', { contentType: "text/plain" }),
      400,
      "M_NOT_JSON",
    ],
    ["a body that is not an object", () => send("t-array", "[]"), 400, "M_BAD_JSON"],
    ["pdus that is not an array", () => send("t-pdus", '{"pdus": {}}'), 400, "M_BAD_JSON"],
    [
      "more than 50 PDUs",
      () => send("t-many", JSON.stringify({ pdus: Array.from({ length: 51 }, (_, i) => message(`m${i}`)) })),
      400,
      "M_BAD_JSON",
    ],
    [
      "an oversized body",
      () => send("t-huge", JSON.stringify({ pdus: [], pad: "x".repeat(5 * 1024 * 1024) })),
      413,
      "M_TOO_LARGE",
    ],
    [
      "a missing Authorization header",
      () => send("t-noauth", '{"pdus": []}', { signed: false }),
      401,
      "M_FORBIDDEN",
    ],
  ])("refuses %s", async (_what, request, status, errcode) => {
    const before = headSeq();
    const answer = await request();
    expect(answer.status).toBe(status);
    expect(answer.body).toMatchObject({ errcode });
    expect(typeof answer.body.error).toBe("string");
    expect(headSeq()).toBe(before);
  });

  it.each([
    [
      "an invalid room ID",
      `/_matrix/federation/v1/make_join/${encodeURIComponent("!nocolon")}/${encodeURIComponent(DAN)}?ver=x`,
      400,
      "M_INVALID_PARAM",
    ],
    [
      "an invalid user ID",
      `/_matrix/federation/v1/make_join/${encodeURIComponent("!r:a.example")}/${encodeURIComponent("@Dan:d.example")}?ver=x`,
      400,
      "M_INVALID_PARAM",
    ],
    [
      "an invalid event ID",
      `/_matrix/federation/v2/event/${encodeURIComponent("$short")}`,
      400,
      "M_INVALID_PARAM",
    ],
    [
      "an unknown room",
      `/_matrix/federation/v1/make_join/${encodeURIComponent("!nowhere:a.example")}/${encodeURIComponent(DAN)}?ver=x`,
      404,
      "M_NOT_FOUND",
    ],
    [
      "an unknown event",
      `/_matrix/federation/v2/event/${encodeURIComponent("$" + "A".repeat(43))}`,
      404,
      "M_NOT_FOUND",
    ],
    ["an unknown endpoint", "/_matrix/federation/v1/nothing", 404, "M_UNRECOGNIZED"],
    ["a trailing slash", "/_matrix/federation/v2/event/x/", 404, "M_UNRECOGNIZED"],
  ])("answers %s precisely", async (_what, path, status, errcode) => {
    const answer = await rawRequest({
      baseUrl: base,
      destination: "a.example",
      method: "GET",
      path,
      signAs: { origin: "d.example", key: dKey },
    });
    expect(answer.status).toBe(status);
    expect(answer.body).toMatchObject({ errcode });
  });

  it("answers a known path with the wrong method with 405", async () => {
    const answer = await rawRequest({
      baseUrl: base,
      destination: "a.example",
      method: "DELETE",
      path: "/_matrix/federation/v2/send/x",
      signAs: { origin: "d.example", key: dKey },
    });
    expect(answer.status).toBe(405);
    expect(answer.body).toMatchObject({ errcode: "M_UNRECOGNIZED" });
  });

  it("answers 404 for a POST to an unknown path, whatever its body", async () => {
    const answer = await rawRequest({
      baseUrl: base,
      destination: "a.example",
      method: "POST",
      path: "/_matrix/federation/v9/nothing",
      body: "not json",
      contentType: "text/plain",
    });
    expect(answer.status).toBe(404);
    expect(answer.body).toMatchObject({ errcode: "M_UNRECOGNIZED" });
  });

  it("keys the results of malformed PDUs by position, so none hides another", async () => {
    const answer = await send(
      "t-malformed",
      JSON.stringify({ pdus: [{ room_id: roomId }, { room_id: roomId }] }),
    );
    expect(Object.keys(answer.body.failed_pdus as object).sort()).toEqual(["invalid:0", "invalid:1"]);
  });

  it("refuses a request addressed to another server", async () => {
    const answer = await rawRequest({
      baseUrl: base,
      destination: "b.example",
      method: "PUT",
      path: "/_matrix/federation/v2/send/t-dest",
      body: '{"pdus": []}',
      contentType: "application/json",
      signAs: { origin: "d.example", key: dKey },
    });
    expect(answer.status).toBe(401);
    expect(answer.body).toMatchObject({ errcode: "M_FORBIDDEN" });
  });

  it("gives each PDU its own result: bad ones fail, good ones are sequenced", async () => {
    const before = headSeq();
    const good = message("good");
    const tampered = { ...message("tampered"), content: { body: "changed after signing" } };
    const unknownRoom = { ...message("elsewhere"), room_id: "!elsewhere:a.example" };
    const notAnEvent = { room_id: roomId, hello: "world" };
    const answer = await send("t-mixed", JSON.stringify({ pdus: [tampered, good, unknownRoom, notAnEvent] }));
    expect(answer.status).toBe(200);
    const failed = answer.body.failed_pdus as Record<string, { errcode: string; error: string }>;
    expect(
      Object.values(failed)
        .map((f) => f.errcode)
        .sort(),
    ).toEqual(["M_BAD_JSON", "M_BAD_JSON", "M_NOT_FOUND"]);
    expect(Object.values(failed).find((f) => f.error.includes("hashes.lpdu.sha256"))).toBeDefined();
    expect(headSeq()).toBe(before + 1);
  });

  it("answers a replayed transaction ID with the original result and processes it once", async () => {
    const body = JSON.stringify({ pdus: [message("once", 42)] });
    const first = await send("t-replay", body);
    const seqAfterFirst = headSeq();
    const again = await send("t-replay", body);
    expect(again).toEqual(first);
    // Even a different body under the same transaction ID is not processed (LM-04 §Transaction Identifiers).
    const different = await send("t-replay", JSON.stringify({ pdus: [message("other")] }));
    expect(different).toEqual(first);
    const malformed = await send("t-replay", JSON.stringify({ pdus: "not an array" }));
    expect(malformed).toEqual(first);
    expect(headSeq()).toBe(seqAfterFirst);
  });

  it("refuses fully-formed events from a server that is not the hub, and limited events for rooms we do not host", async () => {
    // d sends a.example an LPDU that names d.example as hub: a is not that hub.
    const misdirected = createLimitedEvent(
      {
        room_id: roomId,
        type: "org.example.message",
        sender: DAN,
        origin_server_ts: 7,
        hub_server: "d.example",
        content: { body: "to the wrong hub" },
      },
      dKey,
      MIMI_V1,
    );
    const before = headSeq();
    const answer = await send("t-wronghub", JSON.stringify({ pdus: [misdirected] }));
    expect(Object.values(answer.body.failed_pdus as object)).toEqual([
      expect.objectContaining({ errcode: "M_WRONG_HUB" }),
    ]);
    expect(headSeq()).toBe(before);
  });
});
