import type { Signatures } from "./types";
import { SignatureError } from "./errors";
import type { VerifyKey } from "./signingKey";

/** The verify keys the caller has already fetched; the core never does I/O. */
export interface VerifyKeyLookup {
  /**
   * The keys of `serverName` that may verify a signature made at `signedAtTs`
   * (ms since the epoch): an old key only verifies what was signed before its
   * `expired_ts` (LM-04 §GET /_matrix/key/v2/server).
   */
  keysOf(serverName: string, signedAtTs: number): ReadonlyMap<string, VerifyKey> | undefined;
  /** When a key stopped being valid, if the lookup knows the key at all; used to explain refusals. */
  keyInfo?(serverName: string, keyId: string): { validUntil: number; old: boolean } | undefined;
}

/** A lookup over a fixed map, handy for tests and for a server's own key. */
export class StaticKeyLookup implements VerifyKeyLookup {
  private readonly keys = new Map<string, Map<string, { key: VerifyKey; expiredTs: number | undefined }>>();

  /** Adds a key; with `expiredTs` it is an old key, verifying only what was signed before then. */
  add(serverName: string, keyId: string, key: VerifyKey, options: { expiredTs?: number } = {}): this {
    let byId = this.keys.get(serverName);
    if (byId === undefined) {
      byId = new Map();
      this.keys.set(serverName, byId);
    }
    byId.set(keyId, { key, expiredTs: options.expiredTs });
    return this;
  }

  keysOf(serverName: string, signedAtTs: number): ReadonlyMap<string, VerifyKey> | undefined {
    const byId = this.keys.get(serverName);
    if (byId === undefined) return undefined;
    const usable = new Map<string, VerifyKey>();
    for (const [keyId, { key, expiredTs }] of byId) {
      if (expiredTs === undefined || signedAtTs < expiredTs) usable.set(keyId, key);
    }
    return usable;
  }

  keyInfo(serverName: string, keyId: string): { validUntil: number; old: boolean } | undefined {
    const entry = this.keys.get(serverName)?.get(keyId);
    if (entry === undefined) return undefined;
    return entry.expiredTs === undefined
      ? { validUntil: Number.POSITIVE_INFINITY, old: false }
      : { validUntil: entry.expiredTs, old: true };
  }
}

/**
 * LM-04 §Checking Signatures: the server must have signed with a key we know
 * that was valid when it signed (`signedAtTs`). Signatures under other key IDs
 * are ignored; a signature under a usable key that does not verify fails the
 * check. Every failure is M_FORBIDDEN, the code LM-04 gives refusals.
 */
export function checkServerSignature(
  signed: Uint8Array,
  signatures: Signatures,
  serverName: string,
  lookup: VerifyKeyLookup,
  what: string,
  signedAtTs: number,
): void {
  const byKey = signatures[serverName];
  if (byKey === undefined || Object.keys(byKey).length === 0) {
    throw new SignatureError(`${what} is not signed by ${serverName}`);
  }
  const usable = lookup.keysOf(serverName, signedAtTs);
  let verified = false;
  for (const [keyId, signature] of Object.entries(byKey)) {
    const key = usable?.get(keyId);
    if (key === undefined) continue;
    if (!key.verify(signed, signature)) {
      throw new SignatureError(`${what}: signature of ${serverName} with key ${keyId} does not verify`);
    }
    verified = true;
  }
  if (verified) return;
  const signedAt = isoTime(signedAtTs);
  for (const keyId of Object.keys(byKey)) {
    const info = lookup.keyInfo?.(serverName, keyId);
    if (info === undefined) continue;
    throw new SignatureError(
      info.old
        ? `${what}: key ${keyId} of ${serverName} expired at ${isoTime(info.validUntil)}, before the time of the signature ${signedAt}`
        : `${what}: key ${keyId} of ${serverName} was valid until ${isoTime(info.validUntil)} and could not be fetched afresh`,
    );
  }
  throw new SignatureError(
    `${what}: none of the key IDs ${serverName} signed with (${Object.keys(byKey).join(", ")}) is known`,
  );
}

function isoTime(ts: number): string {
  const date = new Date(ts);
  return Number.isNaN(date.getTime()) ? String(ts) : date.toISOString();
}
