import { keysHandler, requireFederationAuth } from "../support/expressAuth";
import { createHash } from "node:crypto";
import express from "express";
import { ServerSigningKey } from "../../src/events/signingKey";
import {
  FederationClient,
  RequestAbortedError,
  ResponseTooLargeError,
  parseRetryAfter,
} from "../../src/federation/client";
import { ServerResolver } from "../../src/federation/discovery";
import { MimiError, type ErrorCode } from "../../src/errors";
import {
  errorResponse,
  FederationError,
  FederationNetworkError,
  httpStatusFor,
  RemoteError,
} from "../../src/federation/errors";
import { GapError } from "../../src/room/errors";
import { KeyRing, ServerKeysPublisher } from "../../src/federation/keys";
import { closedPort, listen, TempStores, type Listening } from "./clientHarness";

function keyOf(serverName: string, keyId: string): ServerSigningKey {
  return new ServerSigningKey(
    serverName,
    keyId,
    createHash("sha256").update(`${serverName} ${keyId}`).digest(),
  );
}

describe("FederationClient", () => {
  const hubKey = keyOf("a.example", "ed25519:a");
  const bKey = keyOf("b.example", "ed25519:b");
  let stores: TempStores;
  let hub: Listening;
  let origin: Listening;
  let hubRequests: number;
  let client: FederationClient;
  let deadPort: number;

  beforeAll(async () => {
    deadPort = await closedPort();
  });

  beforeEach(async () => {
    stores = new TempStores();
    hubRequests = 0;
    // b.example serves its keys; a.example authenticates b.example's requests with them.
    const originApp = express();
    originApp.get("/_matrix/key/v2/server", keysHandler(new ServerKeysPublisher(bKey)));
    origin = await listen(originApp);

    const ring = await KeyRing.open({
      ourKey: hubKey,
      store: await stores.openAt(stores.dir()),
      resolver: new ServerResolver({ staticMap: { "b.example": origin.base } }),
    });
    const app = express();
    app.use((_req, _res, next) => {
      hubRequests++;
      next();
    });
    const auth = requireFederationAuth(ring, "a.example");
    app.put("/_matrix/federation/v1/send/:txnId", express.json(), auth, (req, res) => {
      res.json({
        origin: res.locals.origin as unknown,
        txnId: req.params.txnId,
        query: req.query,
        body: req.body as unknown,
      });
    });
    app.get("/_matrix/federation/v1/state/:roomId", auth, (req, res) => {
      res.json({ origin: res.locals.origin as unknown, roomId: req.params.roomId });
    });
    app.get("/error/:code", (req, res) => {
      res
        .status(Number(req.params.code))
        .json({ errcode: req.query.errcode, error: "refused", retry_after_ms: 1500 });
    });
    app.get("/html-error", (_req, res) => {
      res.status(502).type("html").send("<h1>Bad gateway</h1>");
    });
    app.get("/not-json", (_req, res) => {
      res.status(200).type("text").send("hello");
    });
    app.get("/big", (_req, res) => {
      res.json({ data: "x".repeat(4096) });
    });
    app.get("/big-chunked", (_req, res) => {
      res.type("json");
      res.write('{"data":"');
      for (let i = 0; i < 8; i++) res.write("x".repeat(512));
      res.end('"}');
    });
    app.get("/hang", () => undefined);
    app.get("/hang-body", (_req, res) => {
      res.type("json");
      res.write('{"data":"');
    });
    app.get("/retry-after", (req, res) => {
      res.status(Number(req.query.status ?? 429)).set("Retry-After", String(req.query.value));
      res.json({
        errcode: "M_LIMIT_EXCEEDED",
        error: "slow down",
        ...(req.query.body === undefined ? {} : { retry_after_ms: Number(req.query.body) }),
      });
    });
    hub = await listen(app);

    client = new FederationClient({
      signingKey: bKey,
      resolver: new ServerResolver({
        staticMap: {
          "a.example": hub.base,
          "c.example": hub.base,
          "dead.example": `http://127.0.0.1:${deadPort}`,
        },
      }),
    });
  });

  afterEach(async () => {
    await hub.close();
    await origin.close();
    await stores.cleanup();
  });

  it("sends a signed JSON request the receiver authenticates, encoded segments and query included", async () => {
    const txnId = "t/1 \u00fc?#";
    const body = { pdus: [{ type: "m.room.message", content: { body: "h\u00e9llo" } }], n: -0.5 };
    const path = `/_matrix/federation/v1/send/${encodeURIComponent(txnId)}?limit=${encodeURIComponent("1 2")}`;
    await expect(client.request("a.example", "PUT", path, body)).resolves.toEqual({
      origin: "b.example",
      txnId,
      query: { limit: "1 2" },
      body,
    });
    await expect(
      client.request(
        "a.example",
        "GET",
        `/_matrix/federation/v1/state/${encodeURIComponent("!r:b.example")}`,
      ),
    ).resolves.toEqual({ origin: "b.example", roomId: "!r:b.example" });
  });

  it("sends {} for a PUT without a body", async () => {
    await expect(client.request("a.example", "PUT", "/_matrix/federation/v1/send/t2")).resolves.toMatchObject(
      {
        origin: "b.example",
        body: {},
      },
    );
  });

  it("turns a JSON error answer into a RemoteError with status and errcode", async () => {
    const err = await client
      .request("a.example", "GET", "/error/403?errcode=M_FORBIDDEN")
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect(err).toMatchObject({
      status: 403,
      errcode: "M_FORBIDDEN",
      remoteErrcode: "M_FORBIDDEN",
      error: "refused",
      destination: "a.example",
      retryable: false,
      message: "a.example answered 403 M_FORBIDDEN: refused",
    });
  });

  it("keeps an errcode it does not know as remoteErrcode", async () => {
    await expect(
      client.request("a.example", "GET", "/error/400?errcode=M_SOMETHING_NEW"),
    ).rejects.toMatchObject({
      status: 400,
      errcode: "M_UNKNOWN",
      remoteErrcode: "M_SOMETHING_NEW",
    });
  });

  it("marks rate limits and server errors retryable", async () => {
    await expect(
      client.request("a.example", "GET", "/error/429?errcode=M_LIMIT_EXCEEDED"),
    ).rejects.toMatchObject({
      status: 429,
      errcode: "M_LIMIT_EXCEEDED",
      retryable: true,
      retryAfterMs: 1500,
    });
    await expect(client.request("a.example", "GET", "/html-error")).rejects.toMatchObject({
      constructor: RemoteError,
      status: 502,
      errcode: "M_UNKNOWN",
      retryable: true,
      message: expect.stringMatching(/answer without a JSON error: "<h1>Bad gateway<\/h1>"/),
    });
  });

  it("reports the receiver's refusal of our signature as a 401 RemoteError", async () => {
    // c.example is served by a.example's listener, which answers that the request is not for it.
    await expect(client.request("c.example", "GET", "/_matrix/federation/v1/state/r")).rejects.toMatchObject({
      constructor: RemoteError,
      status: 401,
      errcode: "M_FORBIDDEN",
      error: 'request is for "c.example", but this server is "a.example"',
    });
  });

  it("refuses a 2xx answer that is not JSON", async () => {
    await expect(client.request("a.example", "GET", "/not-json")).rejects.toMatchObject({
      constructor: RemoteError,
      status: 200,
      remoteErrcode: "M_NOT_JSON",
    });
  });

  it.each(["/big", "/big-chunked"])("refuses an answer over the size limit (%s)", async (path) => {
    const small = new FederationClient({
      signingKey: bKey,
      resolver: new ServerResolver({ staticMap: { "a.example": hub.base } }),
      maxResponseBytes: 2048,
    });
    const err = await small.request("a.example", "GET", path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ResponseTooLargeError);
    expect(err).toMatchObject({ errcode: "M_TOO_LARGE", limit: 2048 });
    await expect(client.request("a.example", "GET", path)).resolves.toMatchObject({
      data: expect.any(String),
    });
  });

  it("reports an unreachable server as a retryable FederationNetworkError", async () => {
    const err = await client.request("dead.example", "GET", "/x").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FederationNetworkError);
    expect(err).toMatchObject({ retryable: true, destination: "dead.example", message: /ECONNREFUSED/ });
  });

  it("reports a timeout as a retryable FederationNetworkError", async () => {
    const err = await client
      .request("a.example", "GET", "/hang", undefined, { timeoutMs: 50 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FederationNetworkError);
    expect(err).toMatchObject({ retryable: true, message: "a.example: no answer within 50 ms" });
  });

  describe("Retry-After (RFC 9110 §10.2.3)", () => {
    const now = Date.parse("2025-01-01T00:00:00Z");
    const timed = () =>
      new FederationClient({
        signingKey: bKey,
        resolver: new ServerResolver({ staticMap: { "a.example": hub.base } }),
        now: () => now,
      });

    it.each([
      ["delay-seconds", "value=7", 7000],
      ["an HTTP date", `value=${encodeURIComponent("Wed, 01 Jan 2025 00:00:30 GMT")}`, 30_000],
      ["a date in the past", `value=${encodeURIComponent("Tue, 31 Dec 2024 23:00:00 GMT")}`, 0],
      ["a 503 with delay-seconds", "value=2&status=503", 2000],
      ["the body's retry_after_ms before the header", "value=7&body=1500", 1500],
      ["an unreadable header", "value=soon", undefined],
    ])("reads %s into retryAfterMs", async (_name, query, expected) => {
      const err = await timed()
        .request("a.example", "GET", `/retry-after?${query}`)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RemoteError);
      expect((err as RemoteError).retryAfterMs).toBe(expected);
    });

    it.each<[string | null, number | undefined]>([
      [null, undefined],
      ["0", 0],
      [" 120 ", 120_000],
      ["-5", undefined],
      ["1.5", undefined],
      ["99999999999999999999", undefined],
      ["Wed, 01 Jan 2025 00:01:00 GMT", 60_000],
      ["not a date", undefined],
    ])("parseRetryAfter(%j) is %j", (value, expected) => {
      expect(parseRetryAfter(value, now)).toBe(expected);
    });
  });

  describe("abort signal", () => {
    it.each(["/hang", "/hang-body"])(
      "rejects within 100 ms of abort() while waiting for %s, as a distinct error",
      async (path) => {
        const controller = new AbortController();
        const pending = client
          .request("a.example", "GET", path, undefined, { signal: controller.signal })
          .catch((e: unknown) => e);
        await new Promise((r) => setTimeout(r, 50));
        const abortedAt = Date.now();
        controller.abort();
        const err = await pending;
        expect(Date.now() - abortedAt).toBeLessThan(100);
        expect(err).toBeInstanceOf(RequestAbortedError);
        expect(err).not.toBeInstanceOf(FederationNetworkError);
        expect(err).toMatchObject({ aborted: true, retryable: false, destination: "a.example" });
      },
    );

    it("sends nothing when the signal is already aborted", async () => {
      const controller = new AbortController();
      controller.abort();
      await expect(
        client.request("a.example", "GET", "/hang", undefined, { signal: controller.signal }),
      ).rejects.toBeInstanceOf(RequestAbortedError);
      expect(hubRequests).toBe(0);
    });

    it("still times out as a FederationNetworkError when given a signal", async () => {
      const err = await client
        .request("a.example", "GET", "/hang", undefined, {
          timeoutMs: 50,
          signal: new AbortController().signal,
        })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(FederationNetworkError);
      expect(err).toMatchObject({ retryable: true, message: "a.example: no answer within 50 ms" });
    });
  });

  it.each([
    ["a dot segment", "/a/../b"],
    ["an encoded dot segment", "/a/%2e%2e/b"],
    ["an unencoded space", "/a b"],
    ["a fragment", "/a#b"],
    ["an empty query", "/a?"],
    ["a relative path", "a"],
    ["a scheme-relative path", "//evil.example/x"],
    ["non-ASCII", "/caf\u00e9"],
  ])("refuses a path with %s before sending anything", async (_name, path) => {
    await expect(client.request("a.example", "GET", path)).rejects.toThrow(
      /encode segments with encodeURIComponent/,
    );
    expect(hubRequests).toBe(0);
  });

  it("refuses invalid destinations and methods", async () => {
    await expect(client.request("127.0.0.1", "GET", "/x")).rejects.toMatchObject({
      errcode: "M_INVALID_PARAM",
    });
    await expect(client.request("a.example", "get", "/x")).rejects.toThrow(/upper case/);
    expect(hubRequests).toBe(0);
  });
});

describe("federation errors (LM-04 §Errors)", () => {
  it.each<[ErrorCode, number]>([
    ["M_BAD_JSON", 400],
    ["M_NOT_JSON", 400],
    ["M_INVALID_PARAM", 400],
    ["M_MISSING_PARAM", 400],
    ["M_UNSUPPORTED_ROOM_VERSION", 400],
    ["M_INCOMPATIBLE_ROOM_VERSION", 400],
    ["M_MISSING_EVENT", 400],
    ["M_UNAUTHORIZED", 401],
    ["M_FORBIDDEN", 403],
    ["M_WRONG_HUB", 400],
    ["M_WRONG_ROOM_KEYS_VERSION", 403],
    ["M_NOT_FOUND", 404],
    ["M_UNKNOWN_ROOM", 404],
    ["M_UNRECOGNIZED", 404],
    ["M_NOT_LINEAR", 409],
    ["M_TOO_LARGE", 413],
    ["M_LIMIT_EXCEEDED", 429],
    ["M_UNKNOWN", 500],
  ])("%s is answered with %d", (errcode, status) => {
    expect(httpStatusFor(errcode)).toBe(status);
    expect(errorResponse(new MimiError(errcode, "x"))).toEqual({ status, body: { errcode, error: "x" } });
  });

  it("answers a FederationError with its own status and extra fields", () => {
    const limited = new FederationError(429, "M_LIMIT_EXCEEDED", "slow down", { retry_after_ms: 10 });
    expect(errorResponse(limited)).toEqual({
      status: 429,
      body: { errcode: "M_LIMIT_EXCEEDED", error: "slow down", retry_after_ms: 10 },
    });
    expect(errorResponse(FederationError.missingEvent("$e"))).toEqual({
      status: 400,
      body: { errcode: "M_MISSING_EVENT", error: "event $e is missing", event_id: "$e" },
    });
  });

  it("names the missing event of a room gap", () => {
    expect(errorResponse(new GapError("!r:a.example", "$missing", "$head", 3))).toMatchObject({
      status: 400,
      body: { errcode: "M_MISSING_EVENT", event_id: "$missing" },
    });
  });

  it("does not pass a peer's error off as ours, nor leak internal errors", () => {
    expect(errorResponse(new RemoteError(403, "M_FORBIDDEN", "no", "b.example"))).toEqual({
      status: 502,
      body: { errcode: "M_UNKNOWN", error: "b.example answered 403 M_FORBIDDEN: no" },
    });
    expect(
      errorResponse(new FederationNetworkError("b.example", "request failed: ECONNREFUSED")).status,
    ).toBe(502);
    expect(errorResponse(new Error("secret path /etc/x"))).toEqual({
      status: 500,
      body: { errcode: "M_UNKNOWN", error: "internal server error" },
    });
  });
});
