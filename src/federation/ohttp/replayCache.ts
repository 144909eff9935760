/**
 * The gateway's memory of the Encapsulated Requests it opened (RFC 9458 §6.5), keyed by their
 * `enc` (the client's ephemeral public key, fresh for every request). A request is served only if
 * its Date is within `windowMs` of the gateway's clock (§6.5.1), so a replay can pass the date
 * check only within `2 × windowMs` of the first arrival: entries are kept that long (plus the
 * Date's one-second granularity) and no longer. Bounded: when `maxEntries` unexpired entries are
 * held, new requests are refused rather than old entries forgotten, which would reopen replays.
 * In memory; the gateway refuses requests dated before it started, so a restart reopens nothing.
 */
export class ReplayCache {
  /** enc (hex) -> expiry; insertion order is expiry order, as every entry lives the same time. */
  private readonly entries = new Map<string, number>();
  private readonly ttlMs: number;
  private readonly now: () => number;

  constructor(
    readonly windowMs: number,
    readonly maxEntries: number,
    now: () => number = Date.now,
  ) {
    if (!Number.isSafeInteger(windowMs) || windowMs <= 0)
      throw new RangeError("windowMs must be a positive integer");
    if (!Number.isSafeInteger(maxEntries) || maxEntries <= 0)
      throw new RangeError("maxEntries must be a positive integer");
    this.ttlMs = 2 * windowMs + 1000;
    this.now = now;
  }

  get size(): number {
    this.prune();
    return this.entries.size;
  }

  has(enc: Uint8Array): boolean {
    this.prune();
    return this.entries.has(keyOf(enc));
  }

  /** Records `enc` unless it is known (`replay`) or the cache is full of live entries (`full`). */
  add(enc: Uint8Array): "added" | "replay" | "full" {
    this.prune();
    const key = keyOf(enc);
    if (this.entries.has(key)) return "replay";
    if (this.entries.size >= this.maxEntries) return "full";
    this.entries.set(key, this.now() + this.ttlMs);
    return "added";
  }

  /** How long until the oldest entry expires (for a `full` refusal's retry time). */
  retryAfterMs(): number {
    const oldest = this.entries.values().next();
    return oldest.done === true ? 0 : Math.max(1, oldest.value - this.now());
  }

  private prune(): void {
    const now = this.now();
    for (const [key, expiresAt] of this.entries) {
      if (expiresAt > now) break;
      this.entries.delete(key);
    }
  }
}

function keyOf(enc: Uint8Array): string {
  return Buffer.from(enc.buffer, enc.byteOffset, enc.byteLength).toString("hex");
}
