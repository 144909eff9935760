import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RateLimiter } from "../../../src/federation/rateLimit";
import {
  GatewayKeySet,
  MEDIA_OHTTP_RESPONSE,
  OhttpGateway,
  OhttpRelay,
  ReplayCache,
  decapsulateResponse,
  decodeKeyConfigList,
  decodeResponse,
  encapsulateRequest,
  encodeRequest,
  generateX25519KeyPair,
  importGatewayKey,
  loadGatewayKeys,
  type BinaryRequest,
  type GatewayAnswer,
} from "../../../src/federation/ohttp";

const clock = (start: number) => {
  const c = { t: start, now: () => c.t };
  return c;
};

describe("the replay cache (RFC 9458 §6.5)", () => {
  it("remembers each enc for twice the window plus a second, then forgets it", () => {
    const time = clock(1_000_000);
    const cache = new ReplayCache(60_000, 10, time.now);
    const enc = new Uint8Array(32).fill(7);
    expect(cache.add(enc)).toBe("added");
    expect(cache.add(enc)).toBe("replay");
    time.t += 2 * 60_000 + 999;
    expect(cache.has(enc)).toBe(true);
    time.t += 1;
    expect(cache.has(enc)).toBe(false);
    expect(cache.add(enc)).toBe("added");
  });

  it("is bounded: when full of live entries it refuses new ones rather than forget any", () => {
    const time = clock(0);
    const cache = new ReplayCache(1000, 2, time.now);
    expect(cache.add(Uint8Array.of(1))).toBe("added");
    time.t += 100;
    expect(cache.add(Uint8Array.of(2))).toBe("added");
    expect(cache.add(Uint8Array.of(3))).toBe("full");
    expect(cache.retryAfterMs()).toBe(2900);
    time.t += 2900;
    expect(cache.add(Uint8Array.of(3))).toBe("added");
    expect(cache.has(Uint8Array.of(1))).toBe(false);
  });
});

describe("gateway keys: rotation from config with an overlap", () => {
  it("publishes current keys only; a retired key opens requests until retired_ts + overlap", async () => {
    const time = clock(10_000_000);
    const current = await importGatewayKey(2, generateX25519KeyPair().privateKey);
    const old = await importGatewayKey(1, generateX25519KeyPair().privateKey);
    const keys = new GatewayKeySet(
      [{ key: current }, { key: old, retiredTs: 9_000_000 }],
      3_600_000,
      time.now,
    );
    expect(keys.published.map((c) => c.keyId)).toEqual([2]);
    expect(decodeKeyConfigList(keys.publishedBytes).map((c) => c.keyId)).toEqual([2]);
    expect(keys.lookup(2)).toBe(current);
    expect(keys.lookup(1)).toBe(old);
    time.t = 9_000_000 + 3_600_000;
    expect(keys.lookup(1)).toBeUndefined();
    expect(keys.lookup(3)).toBeUndefined();
    expect(() => new GatewayKeySet([{ key: old, retiredTs: 1 }], 0)).toThrow(/current/);
    expect(() => new GatewayKeySet([{ key: old }, { key: old }], 0)).toThrow(/twice/);
  });

  it("creates a current key's file on first start (0600), reads it back, and refuses a missing retired one", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mimi-ohttp-keys-"));
    try {
      const path = join(dir, "keys", "ohttp-1.key");
      const first = await loadGatewayKeys([{ keyId: 1, privateKeyPath: path }], 0);
      expect(readFileSync(path, "utf8")).toMatch(/^x25519 1 [A-Za-z0-9+/]{43}\n$/);
      expect(statSync(path).mode & 0o777).toBe(0o600);
      const again = await loadGatewayKeys([{ keyId: 1, privateKeyPath: path }], 0);
      expect(again.publishedBytes).toEqual(first.publishedBytes);
      await expect(loadGatewayKeys([{ keyId: 7, privateKeyPath: path }], 0)).rejects.toThrow(/holds key 1/);
      await expect(
        loadGatewayKeys(
          [
            { keyId: 1, privateKeyPath: path },
            { keyId: 2, privateKeyPath: join(dir, "gone.key"), retiredTs: 1 },
          ],
          0,
        ),
      ).rejects.toThrow(/retired key is missing/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the gateway's clock rules", () => {
  const request = (date: string): BinaryRequest => ({
    method: "POST",
    scheme: "https",
    authority: "c.example",
    path: "/x",
    headers: [["date", date]],
    content: new Uint8Array(0),
    trailers: [],
  });

  it("refuses requests dated before it started (its replay cache is in memory), and serves the others", async () => {
    const time = clock(Date.parse("2026-01-01T12:00:00.500Z"));
    const key = await importGatewayKey(1, generateX25519KeyPair().privateKey);
    const served: BinaryRequest[] = [];
    const gateway = new OhttpGateway({
      serverName: "c.example",
      keys: { lookup: (id) => (id === 1 ? key : undefined) },
      inner: async (r) => {
        served.push(r);
        return { informational: [], status: 204, headers: [], content: new Uint8Array(0), trailers: [] };
      },
      replay: new ReplayCache(60_000, 100, time.now),
      startedAt: time.t,
      now: time.now,
    });
    const statusOf = async (date: string) => {
      const { encapsulated, context } = await encapsulateRequest(key.config, encodeRequest(request(date)));
      return decodeResponse(decapsulateResponse(context, await gateway.handle(encapsulated))).status;
    };
    // A request captured before a restart, replayed after it.
    expect(await statusOf("Thu, 01 Jan 2026 11:59:59 GMT")).toBe(400);
    // The second the gateway started counts (Dates have one-second granularity).
    expect(await statusOf("Thu, 01 Jan 2026 12:00:00 GMT")).toBe(204);
    time.t += 30_000;
    expect(await statusOf("Thu, 01 Jan 2026 12:00:20 GMT")).toBe(204);
    expect(await statusOf("Thu, 01 Jan 2026 12:02:00 GMT")).toBe(400);
    expect(served).toHaveLength(2);
  });
});

describe("the relay", () => {
  const forwarded: { target: string; body: Uint8Array }[] = [];
  let answer: GatewayAnswer | Error = {
    status: 200,
    contentType: MEDIA_OHTTP_RESPONSE,
    body: Uint8Array.of(1),
  };
  const relay = new OhttpRelay({
    serverName: "b.example",
    clientToken: "secret",
    limiter: new RateLimiter({ ratePerSecond: 1, burst: 2, now: () => 0 }),
    canRoute: (name) => name !== "unrouted.example",
    forward: async (target, body) => {
      forwarded.push({ target, body });
      if (answer instanceof Error) throw answer;
      return answer;
    },
  });

  it("forwards the body alone and passes back status, Content-Type and body", async () => {
    const result = await relay.handle("c.example", "Bearer secret", Uint8Array.of(9, 9));
    expect(result).toEqual({ status: 200, contentType: MEDIA_OHTTP_RESPONSE, body: Uint8Array.of(1) });
    expect(forwarded).toEqual([{ target: "c.example", body: Uint8Array.of(9, 9) }]);
  });

  it("has its own rate limit per target, refuses what it cannot route, and a gateway that answers nonsense is 502", async () => {
    await expect(relay.handle("unrouted.example", "Bearer secret", Uint8Array.of(1))).rejects.toMatchObject({
      status: 404,
      errcode: "M_NOT_FOUND",
    });
    answer = { status: 200, contentType: "text/html", body: Uint8Array.of(1) };
    await expect(relay.handle("c.example", "Bearer secret", Uint8Array.of(1))).rejects.toMatchObject({
      status: 502,
    });
    await expect(relay.handle("c.example", "Bearer secret", Uint8Array.of(1))).rejects.toMatchObject({
      errcode: "M_LIMIT_EXCEEDED",
    });
    // Another target has its own bucket; a gateway that cannot be reached is 502.
    answer = new Error("connect ECONNREFUSED");
    await expect(relay.handle("d.example", "Bearer secret", Uint8Array.of(1))).rejects.toMatchObject({
      status: 502,
    });
    // A gateway's refusal (an OHTTP problem) passes through as it came.
    answer = { status: 400, contentType: "application/problem+json", body: Uint8Array.of(123, 125) };
    expect(await relay.handle("d.example", "Bearer secret", Uint8Array.of(1))).toMatchObject({ status: 400 });
  });
});
