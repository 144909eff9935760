import { request as httpRequest, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createAdminApp, listenAdmin, type OperatorApi } from "../../src/cli/adminApi";
import { MimiError } from "../../src/errors";
import { RemoteError } from "../../src/federation/errors";
import { parseUserId } from "../../src/identifiers";
import { setLogLevel } from "../../src/logging";
import type {
  ClientGroupView,
  CreateRoomRequest,
  HistoryPage,
  InviteInfo,
  InviteRequest,
  MessageRequest,
  OtherParticipationRequest,
  OwnParticipationRequest,
  ReceivedMessage,
  RoomInfo,
  RoomsApi,
  SendRequest,
} from "../../src/provider/roomsApiTypes";
import { AuthRejection, RoomError } from "../../src/room/errors";

const TOKEN = "admin-test-token-0123456789";
const BASE = "/_mimi/admin/v1";
const ROOM = "!room1:a.example";
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const R = encodeURIComponent(ROOM);

type Call = [method: string, ...args: unknown[]];

/** A rooms API and operator API that record every call and answer canned values (or throw `failure`). */
class Fakes implements RoomsApi, OperatorApi {
  calls: Call[] = [];
  failure: unknown = undefined;
  info: RoomInfo | undefined = undefined;
  page: HistoryPage = { events: [], nextSeq: undefined };
  inviteList: InviteInfo[] = [];
  received: ReceivedMessage[] = [];
  group: ClientGroupView | undefined = undefined;

  private record<T>(call: Call, value: T): T {
    this.calls.push(call);
    if (this.failure !== undefined) throw this.failure;
    return value;
  }

  async createRoom(r: CreateRoomRequest) {
    return this.record(["createRoom", r], { roomId: ROOM });
  }
  async send(r: SendRequest) {
    return this.record(["send", r], { eventId: "$sent" });
  }
  async sendMessage(r: MessageRequest) {
    return this.record(["sendMessage", r], { eventId: "$message" });
  }
  async messages(roomId: string, userId: string, page: { fromSeq: number; limit: number }) {
    return this.record(["messages", roomId, userId, page], this.received);
  }
  async clientGroup(roomId: string, userId: string) {
    return this.record(["clientGroup", roomId, userId], this.group);
  }
  async invite(r: InviteRequest) {
    return this.record(["invite", r], { eventId: "$invite" });
  }
  async changeOwnParticipation(r: OwnParticipationRequest) {
    return this.record(["changeOwnParticipation", r], { eventId: `$${r.change}` });
  }
  async changeParticipationOf(r: OtherParticipationRequest) {
    return this.record(["changeParticipationOf", r], { eventId: `$${r.change}` });
  }
  async listInvites(userId: string) {
    return this.record(["listInvites", userId], this.inviteList);
  }
  async allInvites() {
    return this.record(["allInvites"], this.inviteList);
  }
  onInvite() {
    return this.record(["onInvite"], () => undefined);
  }
  listRooms() {
    return this.record(["listRooms"], [ROOM]);
  }
  roomInfo(roomId: string) {
    return this.record(["roomInfo", roomId], this.info);
  }
  async history(roomId: string, page: { fromSeq: number; limit: number; waitMs?: number }) {
    return this.record(["history", roomId, page], this.page);
  }
  async status() {
    return this.record(["status"], { rooms: 1, queues: { "b.example": 2 } });
  }
  async deadLetters(destination: string | undefined, limit: number) {
    return this.record(["deadLetters", destination, limit], [{ destination: "b.example", seq: 4 }]);
  }
  async retryDeadLetters(destination: string) {
    return this.record(["retryDeadLetters", destination], 3);
  }
  async keyPackageTokens(userId: string) {
    return this.record(["keyPackageTokens", userId], [{ token_id: "ab", requester: "b.example" }]);
  }
  async revokeKeyPackageTokens(userId: string, tokenId: string | undefined) {
    return this.record(["revokeKeyPackageTokens", userId, tokenId], tokenId === undefined ? 2 : 1);
  }
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Record<string, unknown>;
}

interface RawRequest {
  method: string;
  path: string;
  headers?: Record<string, string>;
  /** Written in one piece, with a Content-Length; an array is written as chunks (chunked encoding). */
  body?: string | Buffer | Buffer[];
  /** Leaves the request body unfinished: the answer must come without the end of the body. */
  unfinished?: boolean;
}

const AUTH = { authorization: `Bearer ${TOKEN}` };
const JSON_TYPE = { "content-type": "application/json" };

describe("admin API", () => {
  let server: Server;
  let port: number;
  const fakes = new Fakes();
  const logLines: string[] = [];
  let stderrSpy: jest.SpyInstance;

  beforeAll(async () => {
    setLogLevel("info");
    const write = process.stderr.write.bind(process.stderr);
    // Our log lines are kept for the assertions; anything else (Jest's own output) passes through.
    stderrSpy = jest.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      const text = String(chunk);
      if (!text.startsWith('{"ts":')) return write(chunk);
      logLines.push(...text.split("\n").filter(Boolean));
      return true;
    });
    server = await listenAdmin(
      createAdminApp({ rooms: fakes, operator: fakes, token: TOKEN }),
      "127.0.0.1",
      0,
    );
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    stderrSpy.mockRestore();
  });
  beforeEach(() => {
    fakes.calls = [];
    fakes.failure = undefined;
    fakes.info = undefined;
    fakes.page = { events: [], nextSeq: undefined };
    fakes.inviteList = [];
    fakes.received = [];
    fakes.group = undefined;
    logLines.length = 0;
  });

  function send(r: RawRequest): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = { ...(r.headers ?? {}) };
      if (typeof r.body === "string" || Buffer.isBuffer(r.body)) {
        headers["content-length"] = Buffer.byteLength(r.body);
      }
      const req = httpRequest({ host: "127.0.0.1", port, method: r.method, path: r.path, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          try {
            resolve({ status: res.statusCode!, headers: res.headers, body: JSON.parse(text) });
          } catch {
            reject(new Error(`not JSON (${res.statusCode} ${res.headers["content-type"]}): ${text}`));
          }
          if (r.unfinished) req.destroy();
        });
      });
      req.on("error", (err) => {
        if (!r.unfinished) reject(err);
      });
      if (Array.isArray(r.body)) for (const chunk of r.body) req.write(chunk);
      else if (r.body !== undefined) req.write(r.body);
      if (!r.unfinished) req.end();
      else req.flushHeaders();
    });
  }

  /** An authorised JSON request. */
  const call = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
    send({
      method,
      path: BASE + path,
      headers: { ...AUTH, ...(body === undefined ? {} : JSON_TYPE), ...headers },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });

  function expectJsonError(answer: Answer, status: number, errcode: string) {
    expect(answer.headers["content-type"]).toMatch(/^application\/json/);
    expect({ status: answer.status, errcode: answer.body.errcode }).toEqual({ status, errcode });
    expect(typeof answer.body.error).toBe("string");
  }

  describe("bad requests are answered with a JSON error and call nothing", () => {
    const big = Buffer.alloc(1024 * 1024 + 1, "a");
    const chunk = Buffer.alloc(64 * 1024, " ");
    const createRoom = `${BASE}/createRoom/t1`;
    const goodCreate = JSON.stringify({ creator: ALICE });
    type Row = [
      name: string,
      request: RawRequest,
      status: number,
      errcode: string,
      named?: { field?: string; rule?: string },
    ];
    const rows: Row[] = [
      // The token is checked before the body is read.
      ["no token", { method: "GET", path: `${BASE}/rooms` }, 401, "M_MISSING_TOKEN"],
      [
        "no token, malformed body",
        { method: "PUT", path: createRoom, headers: JSON_TYPE, body: "{" },
        401,
        "M_MISSING_TOKEN",
      ],
      [
        "not a Bearer token",
        { method: "GET", path: `${BASE}/rooms`, headers: { authorization: `Basic ${TOKEN}` } },
        401,
        "M_MISSING_TOKEN",
      ],
      [
        "wrong token",
        { method: "GET", path: `${BASE}/rooms`, headers: { authorization: "Bearer nope" } },
        401,
        "M_UNKNOWN_TOKEN",
      ],
      [
        "the token with a suffix",
        { method: "GET", path: `${BASE}/rooms`, headers: { authorization: `Bearer ${TOKEN}x` } },
        401,
        "M_UNKNOWN_TOKEN",
      ],
      [
        "wrong token, malformed body",
        {
          method: "PUT",
          path: createRoom,
          headers: { authorization: "Bearer nope", ...JSON_TYPE },
          body: "{",
        },
        401,
        "M_UNKNOWN_TOKEN",
      ],
      [
        "wrong token, body over 1 MiB",
        {
          method: "PUT",
          path: createRoom,
          headers: { authorization: "Bearer nope", ...JSON_TYPE },
          body: big,
        },
        401,
        "M_UNKNOWN_TOKEN",
      ],
      [
        "wrong token, chunked body over 1 MiB",
        {
          method: "PUT",
          path: createRoom,
          headers: { authorization: "Bearer nope", ...JSON_TYPE },
          body: Array.from({ length: 20 }, () => chunk),
        },
        401,
        "M_UNKNOWN_TOKEN",
      ],
      [
        "wrong token, a body that never ends",
        {
          method: "PUT",
          path: createRoom,
          headers: { authorization: "Bearer nope", ...JSON_TYPE },
          body: [Buffer.from('{"creator":')],
          unfinished: true,
        },
        401,
        "M_UNKNOWN_TOKEN",
      ],
      ["no token, unknown route", { method: "GET", path: "/nowhere" }, 401, "M_MISSING_TOKEN"],
      // The body.
      [
        "malformed JSON",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: '{"creator":' },
        400,
        "M_NOT_JSON",
      ],
      [
        "null",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: "null" },
        400,
        "M_BAD_JSON",
      ],
      [
        "an array",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: "[]" },
        400,
        "M_BAD_JSON",
      ],
      [
        "a string",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: '"x"' },
        400,
        "M_BAD_JSON",
      ],
      [
        "a number",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: "42" },
        400,
        "M_BAD_JSON",
      ],
      [
        "text/plain",
        {
          method: "PUT",
          path: createRoom,
          headers: { ...AUTH, "content-type": "text/plain" },
          body: goodCreate,
        },
        400,
        "M_NOT_JSON",
      ],
      [
        "no Content-Type",
        { method: "PUT", path: createRoom, headers: AUTH, body: goodCreate },
        400,
        "M_NOT_JSON",
      ],
      [
        "a charset other than UTF-8",
        {
          method: "PUT",
          path: createRoom,
          headers: { ...AUTH, "content-type": "application/json; charset=iso-8859-1" },
          body: goodCreate,
        },
        400,
        "M_NOT_JSON",
      ],
      [
        "a Content-Encoding",
        {
          method: "PUT",
          path: createRoom,
          headers: { ...AUTH, ...JSON_TYPE, "content-encoding": "gzip" },
          body: goodCreate,
        },
        400,
        "M_NOT_JSON",
      ],
      [
        "an empty body",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: "" },
        400,
        "M_NOT_JSON",
      ],
      [
        "no body at all",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE } },
        400,
        "M_NOT_JSON",
      ],
      [
        "a body over 1 MiB",
        { method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: big },
        413,
        "M_TOO_LARGE",
      ],
      [
        "a chunked body over 1 MiB",
        {
          method: "PUT",
          path: createRoom,
          headers: { ...AUTH, ...JSON_TYPE },
          body: [Buffer.from('{"creator": "'), ...Array.from({ length: 20 }, () => chunk)],
        },
        413,
        "M_TOO_LARGE",
      ],
      [
        "not UTF-8",
        {
          method: "PUT",
          path: createRoom,
          headers: { ...AUTH, ...JSON_TYPE },
          body: Buffer.from([...Buffer.from('{"creator": "@al'), 0xff, ...Buffer.from('ce:a.example"}')]),
        },
        400,
        "M_NOT_JSON",
      ],
    ];

    const put = (path: string, body: unknown): RawRequest => ({
      method: "PUT",
      path: BASE + path,
      headers: { ...AUTH, ...JSON_TYPE },
      body: JSON.stringify(body),
    });
    const get = (path: string): RawRequest => ({ method: "GET", path: BASE + path, headers: AUTH });
    const message = { sender: ALICE, content: { body: "hi" } };
    rows.push(
      // Fields of the body.
      [
        "an unknown field",
        put("/createRoom/t1", { creator: ALICE, extra: 1 }),
        400,
        "M_BAD_JSON",
        { field: "extra" },
      ],
      ["creator missing", put("/createRoom/t1", {}), 400, "M_BAD_JSON", { field: "creator" }],
      [
        "creator not a string",
        put("/createRoom/t1", { creator: 5 }),
        400,
        "M_BAD_JSON",
        { field: "creator" },
      ],
      [
        "creator not a user ID",
        put("/createRoom/t1", { creator: "alice" }),
        400,
        "M_INVALID_PARAM",
        { field: "creator", rule: "user_id.sigil" },
      ],
      [
        "room_localpart not a string",
        put("/createRoom/t1", { creator: ALICE, room_localpart: 7 }),
        400,
        "M_BAD_JSON",
        { field: "room_localpart" },
      ],
      [
        "sender not a user ID",
        put(`/rooms/${R}/send/m.text/t1`, { ...message, sender: "@Alice:a.example" }),
        400,
        "M_INVALID_PARAM",
        { field: "sender", rule: "user_id.localpart_chars" },
      ],
      [
        "content missing",
        put(`/rooms/${R}/send/m.text/t1`, { sender: ALICE }),
        400,
        "M_BAD_JSON",
        { field: "content" },
      ],
      [
        "content an array",
        put(`/rooms/${R}/send/m.text/t1`, { ...message, content: [] }),
        400,
        "M_BAD_JSON",
        { field: "content" },
      ],
      [
        "content null",
        put(`/rooms/${R}/send/m.text/t1`, { ...message, content: null }),
        400,
        "M_BAD_JSON",
        { field: "content" },
      ],
      [
        "state_key not a string",
        put(`/rooms/${R}/send/m.text/t1`, { ...message, state_key: 1 }),
        400,
        "M_BAD_JSON",
        { field: "state_key" },
      ],
      [
        "invite target not a user ID",
        put(`/rooms/${R}/invite/t1`, { sender: ALICE, target: "bob" }),
        400,
        "M_INVALID_PARAM",
        { field: "target", rule: "user_id.sigil" },
      ],
      [
        "invite reason not a string",
        put(`/rooms/${R}/invite/t1`, { sender: ALICE, target: BOB, reason: false }),
        400,
        "M_BAD_JSON",
        { field: "reason" },
      ],
      ["join without user", put(`/rooms/${R}/join/t1`, {}), 400, "M_BAD_JSON", { field: "user" }],
      [
        "leave with a sender field",
        put(`/rooms/${R}/leave/t1`, { user: ALICE, sender: ALICE }),
        400,
        "M_BAD_JSON",
        { field: "sender" },
      ],
      [
        "knock by an invalid user",
        put(`/rooms/${R}/knock/t1`, { user: "@bob" }),
        400,
        "M_INVALID_PARAM",
        { field: "user", rule: "user_id.missing_colon" },
      ],
      [
        "kick without target",
        put(`/rooms/${R}/kick/t1`, { sender: ALICE }),
        400,
        "M_BAD_JSON",
        { field: "target" },
      ],
      [
        "ban of an invalid user",
        put(`/rooms/${R}/ban/t1`, { sender: ALICE, target: "@:b.example" }),
        400,
        "M_INVALID_PARAM",
        { field: "target", rule: "user_id.localpart_empty" },
      ],
      // Path parameters.
      [
        "an invalid room ID",
        put(`/rooms/not-a-room/send/m.text/t1`, message),
        400,
        "M_INVALID_PARAM",
        { field: "roomId", rule: "room_id.sigil" },
      ],
      [
        "a room ID that is not percent-encoded UTF-8",
        put(`/rooms/%E0%A4%A/join/t1`, { user: ALICE }),
        400,
        "M_INVALID_PARAM",
        { field: "roomId" },
      ],
      [
        "an event type over 255 characters",
        put(`/rooms/${R}/send/${"t".repeat(256)}/t1`, message),
        400,
        "M_INVALID_PARAM",
        { field: "eventType", rule: "event_type.too_long" },
      ],
      [
        "an event type with a control character",
        put(`/rooms/${R}/send/m.te%00xt/t1`, message),
        400,
        "M_INVALID_PARAM",
        { field: "eventType", rule: "event_type.chars" },
      ],
      [
        "a txnId with a space",
        put(`/rooms/${R}/send/m.text/t%201`, message),
        400,
        "M_INVALID_PARAM",
        { field: "txnId", rule: "txn_id.format" },
      ],
      [
        "a txnId over 255 characters",
        put(`/createRoom/${"x".repeat(256)}`, { creator: ALICE }),
        400,
        "M_INVALID_PARAM",
        { field: "txnId", rule: "txn_id.format" },
      ],
      ["room info of an invalid room", get("/rooms/room1"), 400, "M_INVALID_PARAM", { field: "roomId" }],
      [
        "history of an invalid room",
        get("/rooms/!room1/history"),
        400,
        "M_INVALID_PARAM",
        { field: "roomId" },
      ],
      [
        "invites of an invalid user",
        get("/users/not-a-user/invites"),
        400,
        "M_INVALID_PARAM",
        { field: "userId", rule: "user_id.sigil" },
      ],
      [
        "retry for an invalid server name",
        { method: "POST", path: `${BASE}/dead_letters/bad_server/retry`, headers: AUTH },
        400,
        "M_INVALID_PARAM",
        { field: "destination", rule: "server_name.hostname_chars" },
      ],
      // Query parameters.
      ["from=0", get(`/rooms/${R}/history?from=0`), 400, "M_INVALID_PARAM", { field: "from" }],
      ["from=-1", get(`/rooms/${R}/history?from=-1`), 400, "M_INVALID_PARAM", { field: "from" }],
      ["from=1.5", get(`/rooms/${R}/history?from=1.5`), 400, "M_INVALID_PARAM", { field: "from" }],
      ["from=abc", get(`/rooms/${R}/history?from=abc`), 400, "M_INVALID_PARAM", { field: "from" }],
      ["limit=0", get(`/rooms/${R}/history?limit=0`), 400, "M_INVALID_PARAM", { field: "limit" }],
      ["limit=1001", get(`/rooms/${R}/history?limit=1001`), 400, "M_INVALID_PARAM", { field: "limit" }],
      ["limit twice", get(`/rooms/${R}/history?limit=1&limit=2`), 400, "M_INVALID_PARAM", { field: "limit" }],
      [
        "wait_ms=30001",
        get(`/rooms/${R}/history?wait_ms=30001`),
        400,
        "M_INVALID_PARAM",
        { field: "wait_ms" },
      ],
      [
        "dead letters for an invalid server name",
        get("/dead_letters?destination=a..b"),
        400,
        "M_INVALID_PARAM",
        { field: "destination", rule: "server_name.label_empty" },
      ],
      ["dead letters limit=0", get("/dead_letters?limit=0"), 400, "M_INVALID_PARAM", { field: "limit" }],
      // Routes.
      ["an unknown route", get("/nowhere"), 404, "M_UNRECOGNIZED"],
      [
        "outside the base path",
        { method: "GET", path: "/_mimi/admin/v2/rooms", headers: AUTH },
        404,
        "M_UNRECOGNIZED",
      ],
      ["a trailing slash", get("/rooms/"), 404, "M_UNRECOGNIZED"],
      [
        "the old POST /rooms",
        { ...put("/rooms", { creator: ALICE }), method: "POST" },
        405,
        "M_UNRECOGNIZED",
      ],
      [
        "the old POST /rooms/:roomId/send",
        { ...put(`/rooms/${R}/send`, { sender: ALICE, type: "m.text", content: {} }), method: "POST" },
        404,
        "M_UNRECOGNIZED",
      ],
      ["DELETE /rooms", { method: "DELETE", path: `${BASE}/rooms`, headers: AUTH }, 405, "M_UNRECOGNIZED"],
      ["GET /createRoom/:txnId", get("/createRoom/t1"), 405, "M_UNRECOGNIZED"],
      ["PUT /status", put("/status", {}), 405, "M_UNRECOGNIZED"],
      ["GET on a retry", get("/dead_letters/b.example/retry"), 405, "M_UNRECOGNIZED"],
    );

    const table = rows.map(([name, request, status, errcode, named = {}]) => ({
      name,
      request,
      status,
      errcode,
      named,
    }));
    it.each(table)("$name", async ({ request, status, errcode, named }) => {
      const answer = await send(request);
      expectJsonError(answer, status, errcode);
      if (named.field !== undefined) expect(answer.body.field).toBe(named.field);
      if (named.rule !== undefined) expect(answer.body.rule).toBe(named.rule);
      expect(fakes.calls).toEqual([]);
    });

    it("answers a token or path error before the end of the body", async () => {
      const answer = await send({
        method: "PUT",
        path: `${BASE}/rooms/not-a-room/join/t1`,
        headers: { ...AUTH, ...JSON_TYPE },
        body: [Buffer.from('{"user":')],
        unfinished: true,
      });
      expectJsonError(answer, 400, "M_INVALID_PARAM");
      expect(fakes.calls).toEqual([]);
    });

    it("names the methods a known path allows", async () => {
      const answer = await call("DELETE", "/rooms");
      expect(answer.headers.allow).toBe("GET");
    });

    it("keeps the connection usable after refusing a large body", async () => {
      await send({ method: "PUT", path: createRoom, headers: { ...AUTH, ...JSON_TYPE }, body: big });
      const answer = await call("GET", "/rooms");
      expect(answer.status).toBe(200);
    });
  });

  describe("errors from the rooms API", () => {
    const sendMessage = () =>
      call("PUT", `/rooms/${R}/send/m.text/t1`, { sender: ALICE, content: { body: "x" } });

    it("gets the status of its errcode", async () => {
      fakes.failure = new RoomError("M_NOT_FOUND", "room !room1:a.example is not known here");
      expectJsonError(await sendMessage(), 404, "M_NOT_FOUND");
      fakes.failure = new RoomError("M_WRONG_HUB", "wrong hub");
      expectJsonError(await sendMessage(), 400, "M_WRONG_HUB");
    });

    it("names the auth rule that refused", async () => {
      fakes.failure = new AuthRejection("participation.sender_joined", "the sender is not joined");
      const answer = await sendMessage();
      expectJsonError(answer, 403, "M_FORBIDDEN");
      expect(answer.body.rule).toBe("participation.sender_joined");
    });

    it("passes identifier errors on as 400", async () => {
      try {
        parseUserId("@x");
      } catch (err) {
        fakes.failure = err;
      }
      const answer = await sendMessage();
      expectJsonError(answer, 400, "M_INVALID_PARAM");
      expect(answer.body.rule).toBe("user_id.missing_colon");
    });

    it("gives retry_after_ms and Retry-After for a rate limit", async () => {
      fakes.failure = Object.assign(new MimiError("M_LIMIT_EXCEEDED", "too many requests"), {
        retryAfterMs: 1500,
      });
      const answer = await sendMessage();
      expectJsonError(answer, 429, "M_LIMIT_EXCEEDED");
      expect(answer.body.retry_after_ms).toBe(1500);
      expect(answer.headers["retry-after"]).toBe("2");
    });

    it("answers a hub's refusal with the hub's errcode", async () => {
      fakes.failure = new RemoteError(403, "M_FORBIDDEN", "not invited", "a.example");
      expectJsonError(await sendMessage(), 403, "M_FORBIDDEN");
    });

    it("hides an internal error from the answer and logs it as one JSON line", async () => {
      fakes.failure = new TypeError("secret detail");
      const answer = await sendMessage();
      expect(answer.status).toBe(500);
      expect(answer.body).toEqual({ errcode: "M_UNKNOWN", error: "internal error" });
      const lines = logLines.map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(lines).toEqual([
        expect.objectContaining({
          level: "error",
          module: "admin",
          status: 500,
          errcode: "M_UNKNOWN",
          error: { name: "TypeError", message: "secret detail" },
          stack: expect.any(String),
        }),
      ]);
      fakes.failure = "a thrown string";
      expect((await sendMessage()).body).toEqual({ errcode: "M_UNKNOWN", error: "internal error" });
    });
  });

  it("logs every refused request as one JSON line", async () => {
    await send({
      method: "PUT",
      path: `${BASE}/createRoom/t1`,
      headers: { ...AUTH, ...JSON_TYPE },
      body: "{",
    });
    await send({ method: "GET", path: `${BASE}/rooms`, headers: { authorization: "Bearer nope" } });
    const lines = logLines.map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines).toEqual([
      expect.objectContaining({ level: "info", module: "admin", status: 400, errcode: "M_NOT_JSON" }),
      expect.objectContaining({ level: "warn", module: "admin", status: 401, errcode: "M_UNKNOWN_TOKEN" }),
    ]);
  });

  describe("happy paths pass the right arguments", () => {
    it("PUT /createRoom/:txnId", async () => {
      expect((await call("PUT", "/createRoom/c-1", { creator: ALICE })).body).toEqual({ room_id: ROOM });
      await call("PUT", "/createRoom/c-2", { creator: ALICE, room_localpart: "demo" });
      expect(fakes.calls).toEqual([
        ["createRoom", { creator: ALICE, txnId: "c-1" }],
        ["createRoom", { creator: ALICE, txnId: "c-2", roomLocalpart: "demo" }],
      ]);
    });

    it("PUT /rooms/:roomId/send/:eventType/:txnId", async () => {
      const answer = await call("PUT", `/rooms/${R}/send/org.example.message/m.1~_-`, {
        sender: ALICE,
        content: { body: "hi" },
      });
      expect(answer).toMatchObject({ status: 200, body: { event_id: "$sent" } });
      await call("PUT", `/rooms/${R}/send/m.room.name/m2`, {
        sender: ALICE,
        content: { name: "n" },
        state_key: "",
      });
      expect(fakes.calls).toEqual([
        [
          "send",
          {
            roomId: ROOM,
            sender: ALICE,
            type: "org.example.message",
            content: { body: "hi" },
            txnId: "m.1~_-",
          },
        ],
        [
          "send",
          {
            roomId: ROOM,
            sender: ALICE,
            type: "m.room.name",
            content: { name: "n" },
            stateKey: "",
            txnId: "m2",
          },
        ],
      ]);
    });

    it("invite, join, leave, knock, kick and ban", async () => {
      const answers = [
        await call("PUT", `/rooms/${R}/invite/i1`, { sender: ALICE, target: BOB }),
        await call("PUT", `/rooms/${R}/join/j1`, { user: BOB }),
        await call("PUT", `/rooms/${R}/leave/l1`, { user: BOB, reason: "bye" }),
        await call("PUT", `/rooms/${R}/knock/k1`, { user: BOB }),
        await call("PUT", `/rooms/${R}/kick/k2`, { sender: ALICE, target: BOB, reason: "spam" }),
        await call("PUT", `/rooms/${R}/ban/b1`, { sender: ALICE, target: BOB }),
      ];
      expect(answers.map((a) => a.body.event_id)).toEqual([
        "$invite",
        "$join",
        "$leave",
        "$knock",
        "$leave",
        "$ban",
      ]);
      expect(fakes.calls).toEqual([
        ["invite", { roomId: ROOM, sender: ALICE, target: BOB, txnId: "i1" }],
        ["changeOwnParticipation", { roomId: ROOM, user: BOB, change: "join", txnId: "j1" }],
        ["changeOwnParticipation", { roomId: ROOM, user: BOB, change: "leave", txnId: "l1", reason: "bye" }],
        ["changeOwnParticipation", { roomId: ROOM, user: BOB, change: "knock", txnId: "k1" }],
        [
          "changeParticipationOf",
          { roomId: ROOM, sender: ALICE, target: BOB, change: "leave", txnId: "k2", reason: "spam" },
        ],
        ["changeParticipationOf", { roomId: ROOM, sender: ALICE, target: BOB, change: "ban", txnId: "b1" }],
      ]);
    });

    it("GET /rooms and GET /rooms/:roomId", async () => {
      expect((await call("GET", "/rooms")).body).toEqual({ rooms: [ROOM] });
      expectJsonError(await call("GET", `/rooms/${R}`), 404, "M_NOT_FOUND");
      fakes.info = {
        roomId: ROOM,
        roomVersion: "v",
        hubServer: "a.example",
        role: "hub",
        headSeq: 3,
        headEventId: "$head",
        participation: { [ALICE]: "join" },
        state: [{ type: "m.room.name", stateKey: "", sender: ALICE, content: { name: "n" } }],
      };
      expect((await call("GET", `/rooms/${R}`)).body).toEqual({
        room_id: ROOM,
        room_version: "v",
        hub_server: "a.example",
        role: "hub",
        head_seq: 3,
        head_event_id: "$head",
        participation: { [ALICE]: "join" },
        state: [{ type: "m.room.name", state_key: "", sender: ALICE, content: { name: "n" } }],
      });
      expect(fakes.calls).toEqual([["listRooms"], ["roomInfo", ROOM], ["roomInfo", ROOM]]);
    });

    it("GET /rooms/:roomId/history", async () => {
      const event = {
        room_id: ROOM,
        type: "m.room.create",
        sender: ALICE,
        origin_server_ts: 1,
        hub_server: "a.example",
        content: {},
        hashes: { sha256: "h", lpdu: { sha256: "l" } },
        signatures: {},
        auth_events: [],
        prev_events: [],
      };
      fakes.page = { events: [{ seq: 1, eventId: "$create", event }], nextSeq: 2 };
      expect((await call("GET", `/rooms/${R}/history`)).body).toEqual({
        events: [{ seq: 1, event_id: "$create", ...event }],
        next_seq: 2,
      });
      fakes.page = { events: [], nextSeq: undefined };
      expect((await call("GET", `/rooms/${R}/history?from=7&limit=1000&wait_ms=30000`)).body).toEqual({
        events: [],
      });
      expect(fakes.calls).toEqual([
        ["history", ROOM, { fromSeq: 1, limit: 100, waitMs: 0 }],
        ["history", ROOM, { fromSeq: 7, limit: 1000, waitMs: 30000 }],
      ]);
    });

    it("PUT /rooms/:roomId/messages/:txnId, GET /rooms/:roomId/messages and GET /rooms/:roomId/mls", async () => {
      expect(
        (await call("PUT", `/rooms/${R}/messages/m1`, { sender: ALICE, content: { body: "hi" } })).body,
      ).toEqual({ event_id: "$message" });
      await call("PUT", `/rooms/${R}/messages/m2`, { sender: ALICE, type: "org.example.note", content: {} });
      fakes.received = [
        {
          seq: 9,
          eventId: "$e",
          sender: BOB,
          epoch: "3",
          status: "decrypted",
          type: "m.room.message",
          content: { body: "yo" },
        },
        { seq: 10, eventId: "$f", sender: BOB, epoch: "3", status: "undecryptable", reason: "no keys" },
      ];
      expect(
        (await call("GET", `/rooms/${R}/messages?user=${encodeURIComponent(ALICE)}&from=9&limit=5`)).body,
      ).toEqual({
        messages: [
          {
            seq: 9,
            event_id: "$e",
            sender: BOB,
            epoch: "3",
            status: "decrypted",
            type: "m.room.message",
            content: { body: "yo" },
          },
          { seq: 10, event_id: "$f", sender: BOB, epoch: "3", status: "undecryptable", reason: "no keys" },
        ],
      });
      expectJsonError(
        await call("GET", `/rooms/${R}/mls?user=${encodeURIComponent(ALICE)}`),
        404,
        "M_NOT_FOUND",
      );
      fakes.group = { epoch: "4", members: [ALICE, BOB], active: true, treeHash: "aGFzaA" };
      expect((await call("GET", `/rooms/${R}/mls?user=${encodeURIComponent(ALICE)}`)).body).toEqual({
        epoch: "4",
        members: [ALICE, BOB],
        active: true,
        tree_hash: "aGFzaA",
      });
      expectJsonError(await call("GET", `/rooms/${R}/messages`), 400, "M_INVALID_PARAM");
      expectJsonError(await call("GET", `/rooms/${R}/messages?user=alice`), 400, "M_INVALID_PARAM");
      expectJsonError(await call("PUT", `/rooms/${R}/messages/m3`, { sender: ALICE }), 400, "M_BAD_JSON");
      expect(fakes.calls).toEqual([
        [
          "sendMessage",
          { roomId: ROOM, sender: ALICE, type: "m.room.message", content: { body: "hi" }, txnId: "m1" },
        ],
        ["sendMessage", { roomId: ROOM, sender: ALICE, type: "org.example.note", content: {}, txnId: "m2" }],
        ["messages", ROOM, ALICE, { fromSeq: 9, limit: 5, waitMs: 0 }],
        ["clientGroup", ROOM, ALICE],
        ["clientGroup", ROOM, ALICE],
      ]);
    });

    it("GET /users/:userId/key_package_tokens and POST …/revoke", async () => {
      const u = encodeURIComponent(ALICE);
      expect((await call("GET", `/users/${u}/key_package_tokens`)).body).toEqual({
        tokens: [{ token_id: "ab", requester: "b.example" }],
      });
      expect((await call("POST", `/users/${u}/key_package_tokens/revoke`, {})).body).toEqual({ revoked: 2 });
      expect((await call("POST", `/users/${u}/key_package_tokens/revoke`, { token_id: "ab" })).body).toEqual({
        revoked: 1,
      });
      expectJsonError(await call("GET", "/users/alice/key_package_tokens"), 400, "M_INVALID_PARAM");
      expect(fakes.calls).toEqual([
        ["keyPackageTokens", ALICE],
        ["revokeKeyPackageTokens", ALICE, undefined],
        ["revokeKeyPackageTokens", ALICE, "ab"],
      ]);
    });

    it("GET /users/:userId/invites", async () => {
      fakes.inviteList = [
        {
          roomId: ROOM,
          userId: BOB,
          inviter: ALICE,
          hubServer: "a.example",
          roomVersion: "v",
          strippedState: [{ type: "m.room.name" }],
          receivedTs: 5,
        },
      ];
      expect((await call("GET", `/users/${encodeURIComponent(BOB)}/invites`)).body).toEqual({
        invites: [
          {
            room_id: ROOM,
            user_id: BOB,
            inviter: ALICE,
            hub_server: "a.example",
            room_version: "v",
            stripped_state: [{ type: "m.room.name" }],
            received_ts: 5,
          },
        ],
      });
      expect(fakes.calls).toEqual([["listInvites", BOB]]);
    });

    it("GET /status, GET /dead_letters and POST /dead_letters/:destination/retry", async () => {
      expect((await call("GET", "/status")).body).toEqual({ rooms: 1, queues: { "b.example": 2 } });
      expect((await call("GET", "/dead_letters")).body).toEqual({
        dead_letters: [{ destination: "b.example", seq: 4 }],
      });
      await call("GET", "/dead_letters?destination=b.example:8448&limit=5");
      expect((await call("POST", "/dead_letters/b.example/retry")).body).toEqual({ requeued: 3 });
      expect(fakes.calls).toEqual([
        ["status"],
        ["deadLetters", undefined, 100],
        ["deadLetters", "b.example:8448", 5],
        ["retryDeadLetters", "b.example"],
      ]);
    });

    it("accepts application/json with a UTF-8 charset", async () => {
      const answer = await call(
        "PUT",
        "/createRoom/c-3",
        { creator: ALICE },
        {
          "content-type": "application/json; charset=UTF-8",
        },
      );
      expect(answer.status).toBe(200);
    });
  });
});

describe("listenAdmin", () => {
  it("rejects when the port is taken", async () => {
    const app = createAdminApp({ rooms: new Fakes(), operator: new Fakes(), token: TOKEN });
    const first = await listenAdmin(app, "127.0.0.1", 0);
    const { port } = first.address() as AddressInfo;
    let second: Server | undefined;
    try {
      second = await listenAdmin(app, "127.0.0.1", port);
    } catch (err) {
      expect(err).toMatchObject({ code: "EADDRINUSE" });
    } finally {
      second?.close();
      await new Promise((resolve) => first.close(resolve));
    }
    expect(second).toBeUndefined();
  });
});
