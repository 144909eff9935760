import { MimiError } from "../errors";

/**
 * A request refused by a rate limit (LM-04 §Rate Limiting): answered
 * `429 M_LIMIT_EXCEEDED` with `retry_after_ms`.
 */
export class RateLimitError extends MimiError {
  constructor(
    readonly retryAfterMs: number,
    message = `too many requests; retry in ${retryAfterMs} ms`,
  ) {
    super("M_LIMIT_EXCEEDED", message);
  }

  override toJSON(): { errcode: "M_LIMIT_EXCEEDED"; error: string; retry_after_ms: number } {
    return { errcode: "M_LIMIT_EXCEEDED", error: this.message, retry_after_ms: this.retryAfterMs };
  }
}

export interface RateLimiterOptions {
  /** Tokens added per second to each key's bucket. */
  ratePerSecond: number;
  /** Bucket size: how many requests a key may make at once after being idle. */
  burst: number;
  /** Most keys tracked at once. Default 10,000. */
  maxKeys?: number;
  /** Milliseconds; used when `take` is not given a time. Default `Date.now`. */
  now?: () => number;
}

export type RateLimitDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

export const DEFAULT_RATE_LIMIT_MAX_KEYS = 10_000;

/** How many of the least recently used buckets are checked for a full one before the oldest is evicted. */
const EVICTION_SCAN = 32;

interface Bucket {
  tokens: number;
  updatedMs: number;
}

function checkPositive(name: string, value: number, integer: boolean): void {
  if (!(Number.isFinite(value) && value > 0 && (!integer || Number.isSafeInteger(value)))) {
    throw new MimiError(
      "M_INVALID_PARAM",
      `rate limiter ${name} must be a positive ${integer ? "integer" : "number"}, got ${String(value)}`,
    );
  }
}

/**
 * Token buckets keyed by string (an authenticated origin, a local user ID).
 * A key starts with a full bucket of `burst` tokens, refilled at
 * `ratePerSecond`. Memory is bounded by `maxKeys`: a new key evicts a full
 * bucket among the least recently used ones (forgetting it loses nothing, a
 * new bucket starts full), or else the least recently used bucket.
 */
export class RateLimiter {
  readonly ratePerSecond: number;
  readonly burst: number;
  readonly maxKeys: number;
  private readonly now: () => number;
  /** In least-recently-used-first order: a key is moved to the end on every take. */
  private readonly buckets = new Map<string, Bucket>();

  constructor(options: RateLimiterOptions) {
    checkPositive("ratePerSecond", options.ratePerSecond, false);
    checkPositive("burst", options.burst, true);
    const maxKeys = options.maxKeys ?? DEFAULT_RATE_LIMIT_MAX_KEYS;
    checkPositive("maxKeys", maxKeys, true);
    this.ratePerSecond = options.ratePerSecond;
    this.burst = options.burst;
    this.maxKeys = maxKeys;
    this.now = options.now ?? Date.now;
  }

  /** Takes `cost` tokens from `key`'s bucket if it has them; otherwise says how long until it will. */
  take(key: string, cost = 1, now = this.now()): RateLimitDecision {
    if (!(Number.isFinite(cost) && cost > 0 && cost <= this.burst)) {
      throw new MimiError("M_INVALID_PARAM", `rate limit cost must be in (0, ${this.burst}], got ${cost}`);
    }
    let bucket = this.buckets.get(key);
    if (bucket === undefined) {
      if (this.buckets.size >= this.maxKeys) this.evict(now);
      bucket = { tokens: this.burst, updatedMs: now };
    } else {
      this.buckets.delete(key);
      this.refill(bucket, now);
    }
    this.buckets.set(key, bucket);
    if (bucket.tokens >= cost) {
      bucket.tokens -= cost;
      return { allowed: true };
    }
    // The epsilon keeps float noise (0.999 tokens read as 0.99899…) from adding a millisecond.
    const waitMs = ((cost - bucket.tokens) * 1000) / this.ratePerSecond;
    return { allowed: false, retryAfterMs: Math.max(1, Math.ceil(waitMs - 1e-6)) };
  }

  /** Like `take`, but throws a RateLimitError when refused. */
  check(key: string, cost = 1, now = this.now()): void {
    const decision = this.take(key, cost, now);
    if (!decision.allowed) throw new RateLimitError(decision.retryAfterMs);
  }

  /** Keys currently tracked. */
  get size(): number {
    return this.buckets.size;
  }

  private refill(bucket: Bucket, now: number): void {
    // A clock that goes backwards adds nothing.
    const elapsed = Math.max(0, now - bucket.updatedMs);
    bucket.tokens = Math.min(this.burst, bucket.tokens + (elapsed * this.ratePerSecond) / 1000);
    bucket.updatedMs = Math.max(bucket.updatedMs, now);
  }

  private evict(now: number): void {
    let scanned = 0;
    for (const [key, bucket] of this.buckets) {
      if (scanned++ === EVICTION_SCAN) break;
      this.refill(bucket, now);
      if (bucket.tokens >= this.burst) {
        this.buckets.delete(key);
        return;
      }
    }
    const oldest = this.buckets.keys().next();
    if (oldest.done !== true) this.buckets.delete(oldest.value);
  }
}
