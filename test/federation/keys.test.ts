import { createHash } from "node:crypto";
import express from "express";
import { canonicalBytes } from "../../src/events/canonicalJson";
import { SignatureError } from "../../src/events/errors";
import { checkServerSignature } from "../../src/events/signatures";
import { ServerSigningKey } from "../../src/events/signingKey";
import { ServerResolver } from "../../src/federation/discovery";
import {
  buildServerKeysResponse,
  KeyRing,
  MAX_KEY_VALIDITY_MS,
  parseServerKeysResponse,
  ServerKeysError,
  ServerKeysPublisher,
  type ServerKeysBody,
} from "../../src/federation/keys";
import type { KvStore } from "../../src/store/kv";
import { listen, ManualClock, TempStores, type Listening } from "./clientHarness";

const NOW = 1_700_000_000_000;
const HOUR = 3_600_000;

/** A key whose seed depends on the server and the key ID, so rotated keys really differ. */
function testKey(serverName: string, keyId = "ed25519:1"): ServerSigningKey {
  return new ServerSigningKey(
    serverName,
    keyId,
    createHash("sha256").update(`${serverName} ${keyId}`).digest(),
  );
}

function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

describe("GET /_matrix/key/v2/server bodies (LM-04 §GET /_matrix/key/v2/server)", () => {
  const current = testKey("b.example", "ed25519:2");
  const previous = testKey("b.example", "ed25519:1");
  const old = [{ keyId: previous.keyId, publicKeyBase64: previous.publicKeyBase64, expiredTs: NOW - HOUR }];

  it("is self-signed over its canonical JSON without signatures, and parses back", () => {
    const body = buildServerKeysResponse(current, old, NOW + 12 * HOUR);
    expect(body).toMatchObject({
      server_name: "b.example",
      valid_until_ts: NOW + 12 * HOUR,
      "m.linearized": true,
      verify_keys: { "ed25519:2": { key: current.publicKeyBase64 } },
      old_verify_keys: { "ed25519:1": { key: previous.publicKeyBase64, expired_ts: NOW - HOUR } },
    });
    const { signatures, ...unsigned } = body;
    expect(Object.keys(signatures)).toEqual(["b.example"]);
    expect(current.verifyKey().verify(canonicalBytes(unsigned), signatures["b.example"]!["ed25519:2"]!)).toBe(
      true,
    );

    const parsed = parseServerKeysResponse(clone(body), "b.example", NOW);
    expect(parsed.validUntilTs).toBe(NOW + 12 * HOUR);
    expect(parsed.keys.map((k) => [k.keyId, k.key.base64, k.validUntil, k.old])).toEqual([
      ["ed25519:2", current.publicKeyBase64, NOW + 12 * HOUR, false],
      ["ed25519:1", previous.publicKeyBase64, NOW - HOUR, true],
    ]);
  });

  it("caps valid_until_ts at now + 7 days (LM-04 §Validity)", () => {
    const body = buildServerKeysResponse(current, [], NOW + 30 * 24 * HOUR);
    const parsed = parseServerKeysResponse(body, "b.example", NOW);
    expect(parsed.validUntilTs).toBe(NOW + MAX_KEY_VALIDITY_MS);
    expect(parsed.keys[0]!.validUntil).toBe(NOW + MAX_KEY_VALIDITY_MS);
  });

  it("refuses a response for another server", () => {
    const body = buildServerKeysResponse(testKey("c.example"), [], NOW + HOUR);
    expect(() => parseServerKeysResponse(body, "b.example", NOW)).toThrow(
      expect.objectContaining({
        errcode: "M_FORBIDDEN",
        message: expect.stringMatching(/server_name "c.example"/),
      }),
    );
  });

  const stranger = new ServerSigningKey("b.example", "ed25519:9", Buffer.alloc(32, 9));
  it.each<[string, (b: ServerKeysBody) => void, RegExp]>([
    ["a later valid_until_ts", (b) => (b.valid_until_ts += 1), /does not verify/],
    [
      "a swapped verify key",
      (b) => (b.verify_keys["ed25519:2"]!.key = stranger.publicKeyBase64),
      /does not verify/,
    ],
    [
      "an added old key",
      (b) => (b.old_verify_keys["ed25519:9"] = { key: stranger.publicKeyBase64, expired_ts: 1 }),
      /does not verify/,
    ],
    [
      "an added verify key the response is not signed with",
      (b) => {
        b.verify_keys["ed25519:9"] = { key: stranger.publicKeyBase64 };
        const { signatures: _s, ...unsigned } = b;
        b.signatures = { "b.example": { "ed25519:2": current.sign(canonicalBytes(unsigned)) } };
      },
      /not signed with its key ed25519:9/,
    ],
    ["no signatures", (b) => (b.signatures = {}), /not signed by b.example/],
    [
      "a signature by another key under the same ID",
      (b) => {
        const { signatures: _s, ...unsigned } = b;
        b.signatures = { "b.example": { "ed25519:2": stranger.sign(canonicalBytes(unsigned)) } };
      },
      /does not verify/,
    ],
  ])("refuses a response with %s", (_name, tamper, message) => {
    const body = clone(buildServerKeysResponse(current, old, NOW + HOUR));
    tamper(body);
    expect(() => parseServerKeysResponse(body, "b.example", NOW)).toThrow(
      expect.objectContaining({ errcode: "M_FORBIDDEN", message: expect.stringMatching(message) }),
    );
  });

  it.each<[string, (b: Record<string, unknown>) => void, RegExp]>([
    ["a non-integer valid_until_ts", (b) => (b.valid_until_ts = "1"), /valid_until_ts/],
    ["a negative valid_until_ts", (b) => (b.valid_until_ts = -1), /valid_until_ts/],
    ["no verify_keys", (b) => delete b.verify_keys, /verify_keys must be an object/],
    ["empty verify_keys", (b) => (b.verify_keys = {}), /verify_keys is empty/],
    [
      "an invalid key ID",
      (b) => (b.verify_keys = { "rsa:1": { key: "x" } }),
      /"rsa:1" is not a valid key ID/,
    ],
    [
      "a key that is not base64",
      (b) => (b.verify_keys = { "ed25519:2": { key: "!!" } }),
      /not a base64 ed25519/,
    ],
    [
      "a key of the wrong length",
      (b) => (b.verify_keys = { "ed25519:2": { key: "AAAA" } }),
      /not a base64 ed25519/,
    ],
    [
      "an old key without expired_ts",
      (b) => (b.old_verify_keys = { "ed25519:1": { key: current.publicKeyBase64 } }),
      /expired_ts/,
    ],
    [
      "a key both current and old",
      (b) => (b.old_verify_keys = { "ed25519:2": { key: current.publicKeyBase64, expired_ts: 1 } }),
      /both verify_keys and old_verify_keys/,
    ],
    ["a non-boolean m.linearized", (b) => (b["m.linearized"] = "yes"), /m.linearized/],
  ])("refuses a response with %s", (_name, tamper, message) => {
    const body = clone(buildServerKeysResponse(current, [], NOW + HOUR)) as unknown as Record<
      string,
      unknown
    >;
    tamper(body);
    expect(() => parseServerKeysResponse(body, "b.example", NOW)).toThrow(ServerKeysError);
    expect(() => parseServerKeysResponse(body, "b.example", NOW)).toThrow(message);
  });

  it.each([null, [], "keys", 3])("refuses %p as a response", (body) => {
    expect(() => parseServerKeysResponse(body, "b.example", NOW)).toThrow(/is not a JSON object/);
  });

  it("will not publish an old key under the current key's ID", () => {
    const clash = [{ keyId: "ed25519:2", publicKeyBase64: previous.publicKeyBase64, expiredTs: 1 }];
    expect(() => buildServerKeysResponse(current, clash, NOW + HOUR)).toThrow(/ID of the current key/);
  });

  it("re-signs the published response once half of its validity has passed", () => {
    const clock = new ManualClock(NOW);
    const publisher = new ServerKeysPublisher(current, [], { now: clock.now, validityMs: 12 * HOUR });
    const first = publisher.response();
    expect(first.valid_until_ts).toBe(NOW + 12 * HOUR);
    clock.advance(6 * HOUR - 1);
    expect(publisher.response()).toBe(first);
    clock.advance(2);
    expect(publisher.response().valid_until_ts).toBe(clock.t + 12 * HOUR);
  });
});

/** A remote server publishing its keys over real HTTP; `publisher` can be swapped to rotate. */
class KeyServer {
  requests = 0;
  status = 200;
  listening!: Listening;

  constructor(public publisher: { response(): unknown }) {}

  async start(): Promise<this> {
    const app = express();
    app.get("/_matrix/key/v2/server", (_req, res) => {
      this.requests++;
      if (this.status !== 200) res.status(this.status).json({ errcode: "M_UNKNOWN", error: "down" });
      else res.json(this.publisher.response());
    });
    this.listening = await listen(app);
    return this;
  }
}

describe("KeyRing", () => {
  const ours = testKey("a.example", "ed25519:a2");
  const oursOld = testKey("a.example", "ed25519:a1");
  const b1 = testKey("b.example", "ed25519:1");
  const b2 = testKey("b.example", "ed25519:2");
  const b3 = testKey("b.example", "ed25519:3");
  let clock: ManualClock;
  let stores: TempStores;
  let server: KeyServer;
  let dir: string;
  let store: KvStore;

  beforeEach(async () => {
    clock = new ManualClock(NOW);
    stores = new TempStores();
    dir = stores.dir();
    store = await stores.openAt(dir);
    server = await new KeyServer(
      new ServerKeysPublisher(b1, [], { now: clock.now, validityMs: 12 * HOUR }),
    ).start();
  });

  afterEach(async () => {
    await server.listening.close();
    await stores.cleanup();
  });

  function open(overrides: { store?: KvStore } = {}): Promise<KeyRing> {
    return KeyRing.open({
      ourKey: ours,
      ourOldKeys: [{ keyId: oursOld.keyId, publicKeyBase64: oursOld.publicKeyBase64, expiredTs: NOW - HOUR }],
      store: overrides.store ?? store,
      resolver: new ServerResolver({ staticMap: { "b.example": server.listening.base } }),
      now: clock.now,
    });
  }

  function signedBy(key: ServerSigningKey): {
    bytes: Buffer;
    signatures: Record<string, Record<string, string>>;
  } {
    const bytes = canonicalBytes({ hello: key.keyId });
    return { bytes, signatures: { [key.serverName]: { [key.keyId]: key.sign(bytes) } } };
  }

  /** Checks a signature by `key` made at `signedAtTs` (default: now). */
  function expectVerifies(ring: KeyRing, key: ServerSigningKey, signedAtTs = clock.t): void {
    const { bytes, signatures } = signedBy(key);
    expect(() =>
      checkServerSignature(bytes, signatures, key.serverName, ring, "object", signedAtTs),
    ).not.toThrow();
  }

  function expectRefused(ring: KeyRing, key: ServerSigningKey, signedAtTs = clock.t): void {
    const { bytes, signatures } = signedBy(key);
    expect(() => checkServerSignature(bytes, signatures, key.serverName, ring, "object", signedAtTs)).toThrow(
      expect.objectContaining({ constructor: SignatureError, errcode: "M_FORBIDDEN" }),
    );
  }

  it("knows our own current and old keys without fetching; the old one only before it expired", async () => {
    const ring = await open();
    await ring.ensureKeys("a.example", ["ed25519:a2", "ed25519:a1", "ed25519:unknown"]);
    expect([...ring.keysOf("a.example", NOW - 2 * HOUR)!.keys()].sort()).toEqual([
      "ed25519:a1",
      "ed25519:a2",
    ]);
    expect([...ring.keysOf("a.example", NOW)!.keys()]).toEqual(["ed25519:a2"]);
    expect(ring.requestKey("a.example", "ed25519:a2")).toBeDefined();
    expect(ring.requestKey("a.example", "ed25519:a1")).toBeUndefined();
    expectVerifies(ring, ours);
    expectVerifies(ring, oursOld, NOW - HOUR - 1);
    expectRefused(ring, oursOld, NOW - HOUR);
    expect(server.requests).toBe(0);
  });

  it("fetches a server's keys once and then answers from its cache", async () => {
    const ring = await open();
    expect(ring.keysOf("b.example", clock.t)).toBeUndefined();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    expect(server.requests).toBe(1);
    expect(ring.keysOf("b.example", clock.t)!.get("ed25519:1")!.base64).toBe(b1.publicKeyBase64);
    expect(ring.keyInfo("b.example", "ed25519:1")).toMatchObject({ validUntil: NOW + 12 * HOUR, old: false });
    expectVerifies(ring, b1);
    clock.advance(HOUR);
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    await ring.ensureKeys("b.example", []);
    expect(server.requests).toBe(1);
  });

  it("remembers fetched keys across a restart without fetching again", async () => {
    const first = await open();
    await first.ensureKeys("b.example", ["ed25519:1"]);
    expect(server.requests).toBe(1);
    await stores.close(store);

    const reopened = await stores.openAt(dir);
    const second = await open({ store: reopened });
    expect(second.keysOf("b.example", clock.t)!.get("ed25519:1")!.base64).toBe(b1.publicKeyBase64);
    await second.ensureKeys("b.example", ["ed25519:1"]);
    expectVerifies(second, b1);
    expect(server.requests).toBe(1);
  });

  it("makes one request for concurrent lookups of one server, and every caller waits for it", async () => {
    const ring = await open();
    const seen = await Promise.all(
      [["ed25519:1"], ["ed25519:1"], ["ed25519:forged"], []].map((keyIds) =>
        ring.ensureKeys("b.example", keyIds).then(() => ring.keysOf("b.example", clock.t)?.has("ed25519:1")),
      ),
    );
    expect(seen).toEqual([true, true, true, true]);
    expect(server.requests).toBe(1);
  });

  it("refetches for unknown key IDs at most once per interval", async () => {
    const ring = await open();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    for (let i = 0; i < 5; i++) await ring.ensureKeys("b.example", [`ed25519:forged${i}`]);
    expect(server.requests).toBe(1);
    clock.advance(29_999);
    await ring.ensureKeys("b.example", ["ed25519:forged"]);
    expect(server.requests).toBe(1);
    clock.advance(1);
    await ring.ensureKeys("b.example", ["ed25519:forged"]);
    await ring.ensureKeys("b.example", ["ed25519:forged"]);
    expect(server.requests).toBe(2);
    expect(ring.keyInfo("b.example", "ed25519:forged")).toBeUndefined();
  });

  it("refetches a key once it has expired", async () => {
    const ring = await open();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    clock.advance(12 * HOUR);
    expect(ring.keysOf("b.example", clock.t)!.has("ed25519:1")).toBe(false);
    expect(ring.requestKey("b.example", "ed25519:1")).toBeUndefined();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    expect(server.requests).toBe(2);
    expect(ring.keyInfo("b.example", "ed25519:1")!.validUntil).toBe(clock.t + 12 * HOUR);
    expect(ring.requestKey("b.example", "ed25519:1")).toBeDefined();
  });

  it("treats valid_until_ts as at most 7 days away", async () => {
    server.publisher = new ServerKeysPublisher(b1, [], { now: clock.now, validityMs: 30 * 24 * HOUR });
    const ring = await open();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    expect(ring.keyInfo("b.example", "ed25519:1")!.validUntil).toBe(NOW + MAX_KEY_VALIDITY_MS);
  });

  it("keeps accepting a server's old keys after it rotates, for what they signed before they expired", async () => {
    const ring = await open();
    await ring.ensureKeys("b.example", ["ed25519:1"]);

    // Rotation that lists the previous key under old_verify_keys.
    const b1Expired = NOW + 60_000;
    const b1Old = { keyId: b1.keyId, publicKeyBase64: b1.publicKeyBase64, expiredTs: b1Expired };
    server.publisher = new ServerKeysPublisher(b2, [b1Old], { now: clock.now });
    clock.advance(60_000);
    await ring.ensureKeys("b.example", ["ed25519:2"]);
    expect(server.requests).toBe(2);
    expectVerifies(ring, b1, b1Expired - 1);
    expectRefused(ring, b1, b1Expired);
    expectRefused(ring, b1, clock.t);
    expectVerifies(ring, b2);
    expect(ring.keyInfo("b.example", "ed25519:1")).toMatchObject({ old: true, validUntil: b1Expired });
    expect(ring.requestKey("b.example", "ed25519:1")).toBeUndefined();
    expect(ring.requestKey("b.example", "ed25519:2")).toBeDefined();

    // Rotation that drops every previous key: they are kept as old keys, expired when we noticed.
    server.publisher = new ServerKeysPublisher(b3, [], { now: clock.now });
    clock.advance(60_000);
    const b2Expired = clock.t;
    await ring.ensureKeys("b.example", ["ed25519:3"]);
    expect(ring.keyInfo("b.example", "ed25519:2")).toMatchObject({ old: true, validUntil: b2Expired });
    const before = b1Expired - 1;
    for (const key of [b1, b2, b3]) expectVerifies(ring, key, before);
    expectRefused(ring, b2, b2Expired);
    expectVerifies(ring, b3, b2Expired);

    await stores.close(store);
    const restarted = await open({ store: await stores.openAt(dir) });
    for (const key of [b1, b2, b3]) expectVerifies(restarted, key, before);
    expectRefused(restarted, b1, b1Expired);
    expectRefused(restarted, b2, b2Expired);
    expect(restarted.requestKey("b.example", "ed25519:2")).toBeUndefined();
    expect(server.requests).toBe(3);
  });

  it("a server that signs with a replaced key under a known ID fails the check", async () => {
    const ring = await open();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    const impostor = new ServerSigningKey("b.example", "ed25519:1", Buffer.alloc(32, 7));
    const { bytes, signatures } = signedBy(impostor);
    expect(() => checkServerSignature(bytes, signatures, "b.example", ring, "object", clock.t)).toThrow(
      expect.objectContaining({ constructor: SignatureError, errcode: "M_FORBIDDEN" }),
    );
  });

  it("refuses a signature under a key ID the server does not publish with M_FORBIDDEN (LM-04 §Checking Signatures)", async () => {
    const ring = await open();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    expectRefused(ring, testKey("b.example", "ed25519:unpublished"));
    expectRefused(ring, testKey("e.example", "ed25519:1"));
  });

  it("records why a fetch failed and leaves the keys unknown", async () => {
    server.status = 500;
    const ring = await open();
    await expect(ring.ensureKeys("b.example", ["ed25519:1"])).resolves.toBeUndefined();
    expect(ring.keysOf("b.example", clock.t)).toBeUndefined();
    expect(ring.lastFetchError("b.example")).toMatch(/answered HTTP 500/);

    server.status = 200;
    clock.advance(30_000);
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    expect(ring.lastFetchError("b.example")).toBeUndefined();
    expect(ring.keysOf("b.example", clock.t)!.has("ed25519:1")).toBe(true);
  });

  it("refuses keys a server serves for another server name", async () => {
    server.publisher = new ServerKeysPublisher(testKey("c.example"), [], { now: clock.now });
    const ring = await open();
    await ring.ensureKeys("b.example", ["ed25519:1"]);
    expect(ring.keysOf("b.example", clock.t)).toBeUndefined();
    expect(ring.lastFetchError("b.example")).toMatch(/server_name "c.example"/);
  });

  it("refuses invalid server names and key IDs", async () => {
    const ring = await open();
    await expect(ring.ensureKeys("1.2.3.4", [])).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    await expect(ring.ensureKeys("b.example", ["rsa:1"])).rejects.toMatchObject({
      errcode: "M_INVALID_PARAM",
    });
    expect(server.requests).toBe(0);
  });
});
