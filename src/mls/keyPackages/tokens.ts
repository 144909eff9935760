import { createHash, randomBytes } from "node:crypto";
import { IdentifierError, parseUserId } from "../../identifiers";
import { prefixEnd, type BatchOp, type KvStore } from "../../store/kv";
import { MlsError } from "../errors";
import { TOKEN_PREFIX, targetTokenKey, targetTokensPrefix, tokenKey } from "./storeKeys";

export interface BearerTokenOptions {
  /** How long an issued token is valid (default 30 days). */
  lifetimeMs?: number;
  /** Claims one token may make per window (default 10). */
  claimsPerWindow?: number;
  /** The window of that limit (default one hour). */
  windowMs?: number;
  clock?: () => number;
  /** At most this many tokens' recent claims are remembered (default 100,000; the oldest go first). */
  maxTrackedTokens?: number;
}

export interface IssuedToken {
  /** The token, given to the requester once and never stored. */
  token: string;
  /** The token's ID (the hex SHA-256 of it), under which operators see and revoke it. */
  id: string;
  expiresAt: number;
}

export interface TokenRecord {
  id: string;
  /** The user whose KeyPackages the token claims. */
  target: string;
  /** The server or user it was issued to at discovery. */
  requester: string;
  issuedAt: number;
  expiresAt: number;
  revoked: boolean;
}

type StoredToken = Omit<TokenRecord, "id">;

const utf8 = new TextEncoder();

/** The ID of a token: SHA-256 of its bytes, in hex. Tokens are 256 random bits, so no salt is needed. */
export function tokenId(token: Uint8Array | string): string {
  return createHash("sha256")
    .update(typeof token === "string" ? utf8.encode(token) : token)
    .digest("hex");
}

/**
 * The bearer tokens that protect KeyPackage claims (McMillion §Key Packages, §Privacy): issued at
 * discovery per requester (a server or a user) and target user, checked on every claim, with an
 * expiry, revocable one by one or all of a target's at once, and limited in how many claims each
 * may make per window. Tokens are stored only as their hash.
 */
export class BearerTokens {
  private readonly lifetimeMs: number;
  private readonly claimsPerWindow: number;
  private readonly windowMs: number;
  private readonly clock: () => number;
  private readonly maxTrackedTokens: number;
  /** Token ID -> times of its recent claims (and reservations), oldest first. In memory only. */
  private readonly recentClaims = new Map<string, number[]>();

  constructor(
    private readonly kv: KvStore,
    options: BearerTokenOptions = {},
  ) {
    this.lifetimeMs = options.lifetimeMs ?? 30 * 24 * 60 * 60 * 1000;
    this.claimsPerWindow = options.claimsPerWindow ?? 10;
    this.windowMs = options.windowMs ?? 60 * 60 * 1000;
    this.clock = options.clock ?? Date.now;
    this.maxTrackedTokens = options.maxTrackedTokens ?? 100_000;
  }

  /** A new token for `requester` to claim `target`'s KeyPackages, stored durably before it is returned. */
  async issue(target: string, requester: string): Promise<IssuedToken> {
    userIdOrThrow(target, "token.target");
    if (requester.length === 0 || requester.length > 255) {
      throw new MlsError("M_INVALID_PARAM", "token.requester", "the requester must be 1 to 255 characters");
    }
    const token = randomBytes(32).toString("base64url");
    const id = tokenId(token);
    const issuedAt = this.clock();
    const record: StoredToken = {
      target,
      requester,
      issuedAt,
      expiresAt: issuedAt + this.lifetimeMs,
      revoked: false,
    };
    await this.kv.commit([
      { type: "put", key: tokenKey(id), value: JSON.stringify(record) },
      { type: "put", key: targetTokenKey(target, id), value: "" },
    ]);
    return { token, id, expiresAt: record.expiresAt };
  }

  /**
   * The record of a token valid for claiming `target`'s KeyPackages now; else M_MISSING_TOKEN
   * (empty) or M_UNKNOWN_TOKEN with the rule `token.unknown` (never issued, or issued for another
   * user: the same answer, so a token tells nothing about other users), `token.revoked` or
   * `token.expired`.
   */
  async check(token: Uint8Array | string, target: string): Promise<TokenRecord> {
    if (token.length === 0)
      throw new MlsError("M_MISSING_TOKEN", "token.missing", "no bearer token was given");
    const id = tokenId(token);
    const stored = await this.kv.get(tokenKey(id));
    const record = stored === undefined ? undefined : { id, ...(JSON.parse(stored) as StoredToken) };
    if (record === undefined || record.target !== target) {
      throw new MlsError(
        "M_UNKNOWN_TOKEN",
        "token.unknown",
        "unknown bearer token: go through discovery again",
      );
    }
    if (record.revoked) {
      throw new MlsError(
        "M_UNKNOWN_TOKEN",
        "token.revoked",
        "the bearer token was revoked: go through discovery again",
      );
    }
    if (record.expiresAt <= this.clock()) {
      throw new MlsError(
        "M_UNKNOWN_TOKEN",
        "token.expired",
        "the bearer token expired: go through discovery again",
      );
    }
    return record;
  }

  /**
   * Reserves one claim for a checked token, or refuses it with M_LIMIT_EXCEEDED and the time
   * until the oldest claim of the window ages out. Synchronous, so that concurrent claims with one
   * token cannot overshoot. Returns the function that gives the reservation back (when the claim
   * served nothing). The counts live in memory: a restart forgets them.
   */
  reserveClaim(record: TokenRecord): () => void {
    const now = this.clock();
    const times = (this.recentClaims.get(record.id) ?? []).filter((time) => time > now - this.windowMs);
    if (times.length >= this.claimsPerWindow) {
      this.recentClaims.set(record.id, times);
      const retryAfterMs = Math.max(1, times[0]! + this.windowMs - now);
      throw new MlsError(
        "M_LIMIT_EXCEEDED",
        "token.rate",
        `the bearer token made ${times.length} claims in the last ${this.windowMs / 1000} s`,
        retryAfterMs,
      );
    }
    times.push(now);
    this.recentClaims.delete(record.id);
    this.recentClaims.set(record.id, times);
    if (this.recentClaims.size > this.maxTrackedTokens) {
      this.recentClaims.delete(this.recentClaims.keys().next().value!);
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const current = this.recentClaims.get(record.id);
      const index = current?.lastIndexOf(now) ?? -1;
      if (index >= 0) current!.splice(index, 1);
    };
  }

  /** Revokes a token given in clear; false if it is unknown. */
  revoke(token: string): Promise<boolean> {
    return this.revokeById(tokenId(token));
  }

  /** Revokes a token by its ID (as `list` shows it); false if it is unknown. */
  async revokeById(id: string): Promise<boolean> {
    const stored = await this.kv.get(tokenKey(id));
    if (stored === undefined) return false;
    const record = JSON.parse(stored) as StoredToken;
    if (!record.revoked) {
      await this.kv.commit([
        { type: "put", key: tokenKey(id), value: JSON.stringify({ ...record, revoked: true }) },
      ]);
    }
    this.recentClaims.delete(id);
    return true;
  }

  /** Revokes every token of a target user, in one batch; returns how many were still valid. */
  async revokeAll(target: string): Promise<number> {
    const ops: BatchOp[] = [];
    for (const record of await this.list(target)) {
      if (record.revoked) continue;
      const { id: _id, ...stored } = record;
      ops.push({
        type: "put",
        key: tokenKey(record.id),
        value: JSON.stringify({ ...stored, revoked: true }),
      });
      this.recentClaims.delete(record.id);
    }
    if (ops.length > 0) await this.kv.commit(ops);
    return ops.length;
  }

  /** The tokens issued for a target user, expired and revoked ones included until pruned. */
  async list(target: string): Promise<TokenRecord[]> {
    const prefix = targetTokensPrefix(target);
    const ids: string[] = [];
    for await (const [key] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) }))
      ids.push(key.slice(prefix.length));
    const stored = await this.kv.getMany(ids.map(tokenKey));
    return ids.flatMap((id, i) =>
      stored[i] === undefined ? [] : [{ id, ...(JSON.parse(stored[i]!) as StoredToken) }],
    );
  }

  /** Deletes the records of expired tokens (a revoked one is kept until it expires); returns how many. */
  async prune(): Promise<number> {
    const now = this.clock();
    const ops: BatchOp[] = [];
    for await (const [key, value] of this.kv.range({ gte: TOKEN_PREFIX, lt: prefixEnd(TOKEN_PREFIX) })) {
      const record = JSON.parse(value) as StoredToken;
      if (record.expiresAt > now) continue;
      const id = key.slice(TOKEN_PREFIX.length);
      ops.push({ type: "del", key }, { type: "del", key: targetTokenKey(record.target, id) });
      this.recentClaims.delete(id);
    }
    if (ops.length > 0) await this.kv.commit(ops);
    return ops.length / 2;
  }
}

function userIdOrThrow(value: string, rule: string): void {
  try {
    parseUserId(value);
  } catch (err) {
    if (err instanceof IdentifierError) throw new MlsError("M_INVALID_PARAM", rule, err.message);
    throw err;
  }
}
