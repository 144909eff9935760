import { requireFederationAuth } from "../support/expressAuth";
import { createHash } from "node:crypto";
import { request as httpRequest } from "node:http";
import express from "express";
import { canonicalBytes, canonicalJson } from "../../src/events/canonicalJson";
import { decodeBase64 } from "../../src/events/base64";
import { ServerSigningKey } from "../../src/events/signingKey";
import {
  formatAuthorizationHeader,
  parseAuthorizationHeader,
  signRequest,
  verifyRequest,
  type XMatrixAuth,
} from "../../src/federation/auth";
import { ServerResolver } from "../../src/federation/discovery";
import { FederationError } from "../../src/federation/errors";
import { KeyRing, ServerKeysPublisher } from "../../src/federation/keys";
import { listen, ManualClock, TempStores, type Listening } from "./clientHarness";

function keyOf(serverName: string, keyId: string): ServerSigningKey {
  return new ServerSigningKey(
    serverName,
    keyId,
    createHash("sha256").update(`${serverName} ${keyId}`).digest(),
  );
}

const SIG = "a".repeat(86);

describe("parseAuthorizationHeader (RFC 9110 §11.4, LM-04 §Request Authentication)", () => {
  const expected: XMatrixAuth = { origin: "b.example", destination: "a.example", key: "ed25519:1", sig: SIG };

  it.each<[string, string]>([
    [
      "the formatted form",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",sig="${SIG}"`,
    ],
    [
      "token values where allowed",
      `X-Matrix origin=b.example,destination=a.example,key="ed25519:1",sig=${SIG}`,
    ],
    [
      "any parameter order",
      `X-Matrix sig="${SIG}",key="ed25519:1",destination="a.example",origin="b.example"`,
    ],
    [
      "case-insensitive scheme and names",
      `x-matrix ORIGIN="b.example",Destination="a.example",KEY="ed25519:1",Sig="${SIG}"`,
    ],
    [
      "whitespace around '=' and ',' and several spaces after the scheme",
      `X-Matrix   origin = "b.example" , destination="a.example",\tkey="ed25519:1" ,sig="${SIG}"`,
    ],
    [
      "empty list elements",
      `X-Matrix ,origin="b.example",,destination="a.example", ,key="ed25519:1",sig="${SIG}",`,
    ],
    [
      "backslash escapes",
      `X-Matrix origin="b\\.exam\\ple",destination="a.example",key="ed25519:1",sig="${SIG}"`,
    ],
    [
      "unknown parameters, with commas and escaped quotes inside quotes",
      `X-Matrix note="a,b=\\"c\\"",origin="b.example",destination="a.example",key="ed25519:1",sig="${SIG}",x=y`,
    ],
    [
      "the LM-04 name `signature`",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",signature="${SIG}"`,
    ],
    [
      "both sig and signature with the same value",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",sig="${SIG}",signature="${SIG}"`,
    ],
    [
      "signature before sig, in another case, with the same value",
      `X-Matrix Signature="${SIG}",origin="b.example",destination="a.example",key="ed25519:1",sig=${SIG}`,
    ],
    [
      "a parameter repeated with the same value, in another case",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",sig="${SIG}",Origin=b.example,key="ed25519:1"`,
    ],
  ])("accepts %s", (_name, header) => {
    expect(parseAuthorizationHeader(header)).toEqual(expected);
  });

  it.each<[string, string, RegExp]>([
    ["an empty header", "", /no authorization scheme/],
    ["another scheme", `Bearer abc`, /scheme "Bearer" is not X-Matrix/],
    ["no parameters", "X-Matrix", /origin parameter is missing/],
    [
      "no space after the scheme",
      `X-Matrix,origin="b.example"`,
      /unexpected "," at position 8 after the scheme/,
    ],
    [
      "a missing origin",
      `X-Matrix destination="a.example",key="ed25519:1",sig="${SIG}"`,
      /origin parameter is missing/,
    ],
    [
      "a missing destination",
      `X-Matrix origin="b.example",key="ed25519:1",sig="${SIG}"`,
      /destination parameter is missing/,
    ],
    [
      "a missing key",
      `X-Matrix origin="b.example",destination="a.example",sig="${SIG}"`,
      /key parameter is missing/,
    ],
    [
      "a missing sig",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1"`,
      /sig parameter is missing/,
    ],
    [
      "an origin repeated with another value",
      `X-Matrix origin="b.example",origin="c.example",destination="a.example",key="ed25519:1",sig="${SIG}"`,
      /parameter "origin" is repeated with different values/,
    ],
    [
      "a destination repeated in another case with another value",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",sig="${SIG}",Destination=c.example`,
      /parameter "destination" is repeated with different values/,
    ],
    [
      "a key repeated with another value",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",key="ed25519:2",sig="${SIG}"`,
      /parameter "key" is repeated with different values/,
    ],
    [
      "a sig repeated with another value",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",sig="${SIG}",sig="b${SIG.slice(1)}"`,
      /parameter "sig" is repeated with different values/,
    ],
    [
      "sig and signature with different values",
      `X-Matrix origin="b.example",destination="a.example",key="ed25519:1",sig="${SIG}",signature="b${SIG.slice(1)}"`,
      /parameters "sig" and "signature" hold different signatures/,
    ],
    [
      "an unterminated quote",
      `X-Matrix origin="b.example`,
      /unterminated quoted value of parameter "origin"/,
    ],
    ["a dangling escape", `X-Matrix origin="b.example\\`, /invalid escape/],
    ["a control character in quotes", `X-Matrix origin="b.\u0001example"`, /invalid "\\u0001"/],
    ["an empty value", `X-Matrix origin=,destination="a.example"`, /parameter "origin" has no value/],
    ["a name without '='", `X-Matrix origin`, /expected "=" after parameter "origin", found end of header/],
    [
      "a missing comma",
      `X-Matrix origin="b.example" destination="a.example"`,
      /expected "," after parameter "origin"/,
    ],
    [
      "a value that is not a token",
      `X-Matrix origin=b.example,key=ed25519:1`,
      /expected "," after parameter "key"/,
    ],
    [
      "a quoted name",
      `X-Matrix "origin"="b.example"`,
      /expected a parameter name, found "\\"" at position 9/,
    ],
    [
      "an IP literal origin",
      `X-Matrix origin="127.0.0.1",destination="a.example",key="ed25519:1",sig="${SIG}"`,
      /origin: Invalid server name "127.0.0.1"/,
    ],
    [
      "an invalid destination",
      `X-Matrix origin="b.example",destination="a_example",key="ed25519:1",sig="${SIG}"`,
      /destination: Invalid server name/,
    ],
    [
      "an invalid key ID",
      `X-Matrix origin="b.example",destination="a.example",key="rsa:1",sig="${SIG}"`,
      /key "rsa:1" is not a valid key ID/,
    ],
  ])("refuses %s", (_name, header, message) => {
    let thrown: unknown;
    try {
      parseAuthorizationHeader(header);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(FederationError);
    expect(thrown).toMatchObject({
      status: 401,
      errcode: "M_FORBIDDEN",
      message: expect.stringMatching(message),
    });
  });

  it("formats values so that they parse back, quotes and backslashes included", () => {
    const odd: XMatrixAuth = { origin: 'b"\\', destination: "a.example", key: "ed25519:1", sig: SIG };
    expect(formatAuthorizationHeader(odd)).toBe(
      `X-Matrix origin="b\\"\\\\",destination="a.example",key="ed25519:1",sig="${SIG}"`,
    );
  });
});

describe("signRequest", () => {
  const b = keyOf("b.example", "ed25519:1");

  it("signs the canonical JSON of {method, uri, origin, destination, content}", () => {
    const content = { pdus: [{ b: 2, a: 1 }] };
    const header = signRequest(
      {
        method: "PUT",
        uri: "/_matrix/federation/v1/send/t1?x=%20",
        origin: "b.example",
        destination: "a.example",
        content,
      },
      b,
    );
    const auth = parseAuthorizationHeader(header);
    expect(auth).toMatchObject({ origin: "b.example", destination: "a.example", key: "ed25519:1" });
    const signed = canonicalBytes({
      method: "PUT",
      uri: "/_matrix/federation/v1/send/t1?x=%20",
      origin: "b.example",
      destination: "a.example",
      content,
    });
    expect(b.verifyKey().verify(signed, auth.sig)).toBe(true);
    expect(decodeBase64(auth.sig)).toHaveLength(64);
  });

  it("signs the same bytes when handed the body's canonical JSON as when it canonicalises the body", () => {
    const content = {
      pdus: [{ z: 'caf\u00e9 \ud83d\ude00 "q" \u2028', a: [1, 1e21, 0.5], m: { y: null, b: true } }],
    };
    const request = {
      method: "PUT",
      uri: "/_matrix/federation/v2/send/t%201",
      origin: "b.example",
      destination: "a.example",
      content,
    };
    const fast = signRequest({ ...request, canonicalContent: canonicalJson(content) }, b);
    expect(fast).toBe(signRequest(request, b));
    const auth = parseAuthorizationHeader(fast);
    expect(b.verifyKey().verify(canonicalBytes(request), auth.sig)).toBe(true);
  });

  it("signs content {} for a request without a body, as LM-04 says", () => {
    const auth = parseAuthorizationHeader(
      signRequest({ method: "GET", uri: "/x", origin: "b.example", destination: "a.example" }, b),
    );
    const signed = canonicalBytes({
      method: "GET",
      uri: "/x",
      origin: "b.example",
      destination: "a.example",
      content: {},
    });
    expect(b.verifyKey().verify(signed, auth.sig)).toBe(true);
  });

  it.each<[string, Parameters<typeof signRequest>[0], RegExp]>([
    [
      "another origin",
      { method: "GET", uri: "/x", origin: "c.example", destination: "a.example" },
      /as c.example/,
    ],
    [
      "a lower-case method",
      { method: "get", uri: "/x", origin: "b.example", destination: "a.example" },
      /upper case/,
    ],
    [
      "a relative uri",
      { method: "GET", uri: "x", origin: "b.example", destination: "a.example" },
      /must start/,
    ],
    [
      "a uri with spaces",
      { method: "GET", uri: "/a b", origin: "b.example", destination: "a.example" },
      /visible ASCII/,
    ],
    [
      "an invalid destination",
      { method: "GET", uri: "/x", origin: "b.example", destination: "a_b" },
      /destination/,
    ],
  ])("refuses to sign with %s", (_name, request, message) => {
    expect(() => signRequest(request, b)).toThrow(message);
  });
});

describe("request authentication over HTTP (LM-04 §Request Authentication)", () => {
  const hubKey = keyOf("a.example", "ed25519:a");
  const bCurrent = keyOf("b.example", "ed25519:2");
  const bOld = keyOf("b.example", "ed25519:1");
  const forged = new ServerSigningKey("b.example", "ed25519:2", Buffer.alloc(32, 1));
  const SEND = "/_matrix/federation/v1/send/txn1";
  let clock: ManualClock;
  let stores: TempStores;
  let keyServer: Listening;
  let hub: Listening;
  let keyRequests: number;

  beforeEach(async () => {
    clock = new ManualClock();
    stores = new TempStores();
    keyRequests = 0;
    const publisher = new ServerKeysPublisher(
      bCurrent,
      [{ keyId: bOld.keyId, publicKeyBase64: bOld.publicKeyBase64, expiredTs: clock.t - 1 }],
      { now: clock.now },
    );
    const keyApp = express();
    keyApp.get("/_matrix/key/v2/server", (_req, res) => {
      keyRequests++;
      res.json(publisher.response());
    });
    keyServer = await listen(keyApp);

    const ring = await KeyRing.open({
      ourKey: hubKey,
      store: await stores.openAt(stores.dir()),
      resolver: new ServerResolver({ staticMap: { "b.example": keyServer.base } }),
      now: clock.now,
    });
    const app = express();
    const echo: express.RequestHandler = (req, res) => {
      res.json({ origin: res.locals.origin as unknown, body: req.body as unknown });
    };
    app.put(
      "/_matrix/federation/v1/send/:txnId",
      express.json(),
      requireFederationAuth(ring, "a.example"),
      echo,
    );
    app.get("/_matrix/federation/v1/state/:roomId", requireFederationAuth(ring, "a.example"), echo);
    const raw = express.raw({ type: () => true });
    app.put("/raw/send/:txnId", raw, requireFederationAuth(ring, "a.example"), (_req, res) => {
      res.json({ origin: res.locals.origin as unknown });
    });
    hub = await listen(app);
  });

  afterEach(async () => {
    await hub.close();
    await keyServer.close();
    await stores.cleanup();
  });

  interface Sent {
    method?: string;
    uri?: string;
    signedUri?: string;
    body?: unknown;
    signedBody?: unknown;
    key?: ServerSigningKey;
    destination?: string;
    authorization?: string | null;
    rawBody?: string;
  }

  async function send(options: Sent): Promise<{ status: number; contentType: string | null; json: unknown }> {
    const method = options.method ?? "PUT";
    const uri = options.uri ?? SEND;
    const key = options.key ?? bCurrent;
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    const signedBody = "signedBody" in options ? options.signedBody : options.body;
    const authorization =
      options.authorization === undefined
        ? signRequest(
            {
              method,
              uri: options.signedUri ?? uri,
              origin: key.serverName,
              destination: options.destination ?? "a.example",
              content: signedBody,
            },
            key,
          )
        : options.authorization;
    if (authorization !== null) headers.Authorization = authorization;
    const response = await fetch(hub.base + uri, {
      method,
      headers,
      body: options.rawBody ?? (options.body === undefined ? undefined : JSON.stringify(options.body)),
    });
    return {
      status: response.status,
      contentType: response.headers.get("content-type"),
      json: await response.json(),
    };
  }

  /** Sends several Authorization header lines (fetch would join them into one). */
  function sendWithHeaders(
    uri: string,
    authorizations: string[],
  ): Promise<{ status: number; json: unknown }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(hub.base + uri, { method: "PUT" }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode!, json: JSON.parse(Buffer.concat(chunks).toString()) }),
        );
      });
      req.on("error", reject);
      req.setHeader("Content-Type", "application/json");
      req.setHeader("Authorization", authorizations);
      req.end("{}");
    });
  }

  /** LM-04 §Request Authentication: 401 with M_FORBIDDEN. */
  function unauthorized(message: RegExp): unknown {
    return {
      status: 401,
      contentType: expect.stringMatching(/^application\/json/),
      json: { errcode: "M_FORBIDDEN", error: expect.stringMatching(message) },
    };
  }

  it("accepts a signed request and names its origin, fetching the origin's keys once", async () => {
    const body = { pdus: [{ z: 1, a: [true, null, "\u00e9"] }], n: 1.5 };
    expect(await send({ body })).toEqual({
      status: 200,
      contentType: expect.stringMatching(/^application\/json/),
      json: { origin: "b.example", body },
    });
    expect(
      await send({ method: "GET", uri: "/_matrix/federation/v1/state/%21room%3Ab.example?event_id=%24e" }),
    ).toMatchObject({
      status: 200,
      json: { origin: "b.example" },
    });
    expect(keyRequests).toBe(1);
  });

  it("accepts a request without a body signed the Matrix way (content left out)", async () => {
    const uri = "/_matrix/federation/v1/state/r";
    const signed = canonicalBytes({ method: "GET", uri, origin: "b.example", destination: "a.example" });
    const authorization = formatAuthorizationHeader({
      origin: "b.example",
      destination: "a.example",
      key: bCurrent.keyId,
      sig: bCurrent.sign(signed),
    });
    expect(await send({ method: "GET", uri, authorization })).toMatchObject({
      status: 200,
      json: { origin: "b.example" },
    });
  });

  it("refuses a request without an Authorization header", async () => {
    expect(await send({ body: {}, authorization: null })).toEqual(
      unauthorized(/^missing Authorization header$/),
    );
    expect(keyRequests).toBe(0);
  });

  it("refuses another scheme", async () => {
    expect(await send({ body: {}, authorization: "Bearer abc" })).toEqual(unauthorized(/not X-Matrix/));
  });

  it("refuses a malformed header", async () => {
    expect(await send({ body: {}, authorization: 'X-Matrix origin="b.example' })).toEqual(
      unauthorized(/malformed Authorization header: unterminated/),
    );
  });

  it("refuses a request addressed to another server", async () => {
    expect(await send({ body: {}, destination: "c.example" })).toEqual(
      unauthorized(/request is for "c.example", but this server is "a.example"/),
    );
    expect(keyRequests).toBe(0);
  });

  it("refuses a signature by another key claiming the origin's key ID", async () => {
    expect(await send({ body: { x: 1 }, key: forged })).toEqual(
      unauthorized(/signature of b.example with key ed25519:2 does not verify/),
    );
  });

  it("refuses a key ID the origin does not publish", async () => {
    const unknown = new ServerSigningKey("b.example", "ed25519:evil", Buffer.alloc(32, 2));
    expect(await send({ body: {}, key: unknown })).toEqual(
      unauthorized(/unknown key ed25519:evil of b.example/),
    );
  });

  it("refuses a request signed with an old key (only verify_keys count for requests)", async () => {
    expect(await send({ body: {}, key: bOld })).toEqual(unauthorized(/ed25519:1 of b.example is an old key/));
  });

  it("refuses a tampered body", async () => {
    expect(await send({ body: { amount: 100 }, signedBody: { amount: 1 } })).toEqual(
      unauthorized(/does not verify/),
    );
  });

  it("refuses a body sent where none was signed", async () => {
    expect(await send({ body: { a: 1 }, signedBody: undefined, method: "PUT" })).toEqual(
      unauthorized(/does not verify/),
    );
  });

  it("refuses a tampered URI", async () => {
    expect(await send({ body: {}, uri: "/_matrix/federation/v1/send/txn2", signedUri: SEND })).toEqual(
      unauthorized(/does not verify/),
    );
    expect(await send({ body: {}, uri: `${SEND}?a=1`, signedUri: SEND })).toEqual(
      unauthorized(/does not verify/),
    );
  });

  it("refuses a tampered method", async () => {
    const authorization = signRequest(
      { method: "POST", uri: SEND, origin: "b.example", destination: "a.example", content: {} },
      bCurrent,
    );
    expect(await send({ body: {}, authorization })).toEqual(unauthorized(/does not verify/));
  });

  it("checks every one of several Authorization headers", async () => {
    const request = { method: "PUT", uri: SEND, origin: "b.example", destination: "a.example", content: {} };
    const good = signRequest(request, bCurrent);
    const bad = signRequest(request, forged);
    expect(await sendWithHeaders(SEND, [good, good])).toMatchObject({ status: 200 });
    expect(await sendWithHeaders(SEND, [good, bad])).toMatchObject({
      status: 401,
      json: { errcode: "M_FORBIDDEN", error: expect.stringMatching(/does not verify/) },
    });
  });

  it("verifies against the raw body bytes when a raw parser ran", async () => {
    const rawBody = '{"b":1,"a":"\\u00e9"}';
    const authorization = signRequest(
      {
        method: "PUT",
        uri: "/raw/send/t",
        origin: "b.example",
        destination: "a.example",
        content: JSON.parse(rawBody),
      },
      bCurrent,
    );
    expect(await send({ uri: "/raw/send/t", rawBody, authorization })).toMatchObject({
      status: 200,
      json: { origin: "b.example" },
    });
    expect(await send({ uri: "/raw/send/t", rawBody: '{"b":2,"a":"\\u00e9"}', authorization })).toEqual(
      unauthorized(/does not verify/),
    );
    expect(await send({ uri: "/raw/send/t", rawBody: "{not json", authorization })).toEqual({
      status: 400,
      contentType: expect.stringMatching(/^application\/json/),
      json: { errcode: "M_NOT_JSON", error: expect.any(String) },
    });
  });
});

describe("verifyRequest", () => {
  const b = keyOf("b.example", "ed25519:1");
  const keyRing = {
    ensured: [] as [string, readonly string[]][],
    canRoute: () => true,
    async ensureKeys(serverName: string, keyIds: readonly string[]) {
      this.ensured.push([serverName, keyIds]);
    },
    requestKey: (serverName: string, keyId: string) =>
      serverName === "b.example" && keyId === "ed25519:1" ? b.verifyKey() : undefined,
    keyInfo: () => undefined,
    lastFetchError: (serverName: string) => (serverName === "c.example" ? "connection refused" : undefined),
  };

  it("checks every Authorization header and ensures all their keys at once", async () => {
    const request = { method: "GET", uri: "/x", origin: "b.example", destination: "a.example" };
    const header = signRequest(request, b);
    const origin = await verifyRequest({
      method: "GET",
      uri: "/x",
      headers: { authorization: [header, header] },
      body: undefined,
      ourServerName: "a.example",
      keyRing,
    });
    expect(origin).toBe("b.example");
    expect(keyRing.ensured).toEqual([["b.example", ["ed25519:1", "ed25519:1"]]]);
  });

  it("refuses headers naming different origins", async () => {
    const c = keyOf("c.example", "ed25519:1");
    const headers = {
      authorization: [
        signRequest({ method: "GET", uri: "/x", origin: "b.example", destination: "a.example" }, b),
        signRequest({ method: "GET", uri: "/x", origin: "c.example", destination: "a.example" }, c),
      ],
    };
    await expect(
      verifyRequest({
        method: "GET",
        uri: "/x",
        headers,
        body: undefined,
        ourServerName: "a.example",
        keyRing,
      }),
    ).rejects.toMatchObject({ status: 401, message: expect.stringMatching(/different origins/) });
  });

  it("says why an origin's keys are unknown", async () => {
    const c = keyOf("c.example", "ed25519:1");
    const headers = {
      Authorization: signRequest(
        { method: "GET", uri: "/x", origin: "c.example", destination: "a.example" },
        c,
      ),
    };
    await expect(
      verifyRequest({
        method: "GET",
        uri: "/x",
        headers,
        body: undefined,
        ourServerName: "a.example",
        keyRing,
      }),
    ).rejects.toMatchObject({
      status: 401,
      errcode: "M_FORBIDDEN",
      message: "unknown key ed25519:1 of c.example (fetching its keys failed: connection refused)",
    });
  });
});
