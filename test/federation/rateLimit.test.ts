import { MimiError } from "../../src/errors";
import { errorResponse } from "../../src/federation/errors";
import { RateLimitError, RateLimiter, type RateLimitDecision } from "../../src/federation/rateLimit";

const T0 = 1_700_000_000_000;

type Step = [atMs: number, key: string, cost: number, expected: RateLimitDecision];
const ok: RateLimitDecision = { allowed: true };
const wait = (retryAfterMs: number): RateLimitDecision => ({ allowed: false, retryAfterMs });

describe("RateLimiter (token bucket)", () => {
  it.each<[string, { ratePerSecond: number; burst: number }, Step[]]>([
    [
      "a full bucket allows a burst, then refuses until a token is back",
      { ratePerSecond: 2, burst: 3 },
      [
        [0, "a", 1, ok],
        [0, "a", 1, ok],
        [0, "a", 1, ok],
        [0, "a", 1, wait(500)],
        [499, "a", 1, wait(1)],
        [500, "a", 1, ok],
        [500, "a", 1, wait(500)],
      ],
    ],
    [
      "refills at the rate, never above the burst",
      { ratePerSecond: 10, burst: 5 },
      [
        [0, "a", 5, ok],
        [0, "a", 1, wait(100)],
        [60_000, "a", 5, ok],
        [60_000, "a", 1, wait(100)],
      ],
    ],
    [
      "keys are independent",
      { ratePerSecond: 1, burst: 1 },
      [
        [0, "a", 1, ok],
        [0, "b", 1, ok],
        [0, "a", 1, wait(1000)],
        [0, "b", 1, wait(1000)],
      ],
    ],
    [
      "a cost takes several tokens, and the wait covers all of them",
      { ratePerSecond: 4, burst: 8 },
      [
        [0, "a", 6, ok],
        [0, "a", 4, wait(500)],
        [250, "a", 4, wait(250)],
        [500, "a", 4, ok],
      ],
    ],
    [
      "a refused take costs nothing",
      { ratePerSecond: 1, burst: 2 },
      [
        [0, "a", 2, ok],
        [0, "a", 1, wait(1000)],
        [0, "a", 1, wait(1000)],
        [1000, "a", 1, ok],
      ],
    ],
    [
      "a fractional rate rounds the wait up",
      { ratePerSecond: 0.3, burst: 1 },
      [
        [0, "a", 1, ok],
        [0, "a", 1, wait(3334)],
        [3334, "a", 1, ok],
      ],
    ],
    [
      "a clock that goes backwards adds no tokens",
      { ratePerSecond: 1, burst: 1 },
      [
        [10_000, "a", 1, ok],
        [0, "a", 1, wait(1000)],
        [10_999, "a", 1, wait(1)],
        [11_000, "a", 1, ok],
      ],
    ],
  ])("%s", (_name, options, steps) => {
    const limiter = new RateLimiter(options);
    for (const [at, key, cost, expected] of steps) {
      expect([at, key, limiter.take(key, cost, T0 + at)]).toEqual([at, key, expected]);
    }
  });

  it("uses the injected clock when take is given no time", () => {
    let now = T0;
    const limiter = new RateLimiter({ ratePerSecond: 1, burst: 1, now: () => now });
    expect(limiter.take("a")).toEqual(ok);
    expect(limiter.take("a")).toEqual(wait(1000));
    now += 1000;
    expect(limiter.take("a")).toEqual(ok);
  });

  describe("bounded memory", () => {
    it("never tracks more than maxKeys", () => {
      const limiter = new RateLimiter({ ratePerSecond: 1, burst: 5, maxKeys: 100 });
      for (let i = 0; i < 10_000; i++) limiter.take(`k${i}`, 1, T0);
      expect(limiter.size).toBe(100);
    });

    it("evicts a full bucket before a busy one, even a more recently used busy one", () => {
      const limiter = new RateLimiter({ ratePerSecond: 1, burst: 2, maxKeys: 2 });
      limiter.take("busy", 2, T0);
      limiter.take("idle", 1, T0);
      // 1 s later "idle" is full again and "busy" has only 1 token; "busy" is the least recently used.
      expect(limiter.take("new", 1, T0 + 1000)).toEqual(ok);
      expect(limiter.size).toBe(2);
      // "busy" kept its debt: it was not evicted.
      expect(limiter.take("busy", 2, T0 + 1000)).toEqual(wait(1000));
    });

    it("evicts the least recently used bucket when none is full", () => {
      const limiter = new RateLimiter({ ratePerSecond: 1, burst: 2, maxKeys: 2 });
      limiter.take("a", 2, T0);
      limiter.take("b", 2, T0);
      limiter.take("a", 1, T0); // refused, but "a" is now the most recently used
      limiter.take("c", 1, T0);
      // "b" was evicted and starts again with a full bucket; "a" kept its debt.
      expect(limiter.take("a", 1, T0)).toEqual(wait(1000));
      expect(limiter.size).toBe(2);
      expect(limiter.take("b", 2, T0)).toEqual(ok);
    });
  });

  it.each([
    ["ratePerSecond 0", { ratePerSecond: 0, burst: 1 }],
    ["a negative rate", { ratePerSecond: -1, burst: 1 }],
    ["a fractional burst", { ratePerSecond: 1, burst: 1.5 }],
    ["burst 0", { ratePerSecond: 1, burst: 0 }],
    ["maxKeys 0", { ratePerSecond: 1, burst: 1, maxKeys: 0 }],
    ["a NaN rate", { ratePerSecond: NaN, burst: 1 }],
  ])("refuses %s", (_name, options) => {
    expect(() => new RateLimiter(options)).toThrow(MimiError);
    expect(() => new RateLimiter(options)).toThrow(expect.objectContaining({ errcode: "M_INVALID_PARAM" }));
  });

  it.each([0, -1, 3, NaN])("refuses a cost of %d (burst 2), tracking nothing", (cost) => {
    const limiter = new RateLimiter({ ratePerSecond: 1, burst: 2 });
    expect(() => limiter.take("a", cost, T0)).toThrow(
      expect.objectContaining({ errcode: "M_INVALID_PARAM" }),
    );
    expect(limiter.size).toBe(0);
  });
});

describe("RateLimitError", () => {
  it("check() throws it with the wait", () => {
    const limiter = new RateLimiter({ ratePerSecond: 2, burst: 1 });
    limiter.check("a", 1, T0);
    const err = (() => {
      try {
        limiter.check("a", 1, T0);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(RateLimitError);
    expect(err).toMatchObject({ errcode: "M_LIMIT_EXCEEDED", retryAfterMs: 500 });
  });

  it("is answered 429 M_LIMIT_EXCEEDED with retry_after_ms (LM-04 §Rate Limiting)", () => {
    expect(errorResponse(new RateLimitError(10_254, "slow down"))).toEqual({
      status: 429,
      body: { errcode: "M_LIMIT_EXCEEDED", error: "slow down", retry_after_ms: 10_254 },
    });
  });
});
