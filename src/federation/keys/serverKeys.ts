import { MimiError, type ErrorCode } from "../../errors";
import { canonicalBytes } from "../../events/canonicalJson";
import { VerifyKey, type ServerSigningKey } from "../../events/signingKey";
import type { Signatures } from "../../events/types";
import { isValidKeyId } from "../../identifiers";

/** LM-04 §Validity: `valid_until_ts` counts as at most 7 days from now. */
export const MAX_KEY_VALIDITY_MS = 7 * 24 * 3_600_000;
/** LM-04 §Validity: servers SHOULD publish keys valid for about 12 hours. */
export const DEFAULT_PUBLISHED_VALIDITY_MS = 12 * 3_600_000;
/** More keys than any honest server publishes; bounds the work a response can cause. */
export const MAX_KEYS_PER_RESPONSE = 64;

/** A key this server used before, kept in `old_verify_keys`. */
export interface OldVerifyKey {
  keyId: string;
  publicKeyBase64: string;
  expiredTs: number;
}

/** The body of `GET /_matrix/key/v2/server` (LM-04 §GET /_matrix/key/v2/server). */
export interface ServerKeysBody {
  server_name: string;
  valid_until_ts: number;
  "m.linearized": true;
  verify_keys: Record<string, { key: string }>;
  old_verify_keys: Record<string, { key: string; expired_ts: number }>;
  signatures: Signatures;
}

/** One key of a server with the time it may be used until. */
export interface ServerKey {
  readonly keyId: string;
  readonly key: VerifyKey;
  /** For a current key the (capped) `valid_until_ts`; for an old key its `expired_ts`. */
  readonly validUntil: number;
  /** Listed under `old_verify_keys`, or no longer published: good for old signatures, never for requests. */
  readonly old: boolean;
}

export interface ParsedServerKeys {
  serverName: string;
  /** `valid_until_ts` capped at now + 7 days. */
  validUntilTs: number;
  keys: ServerKey[];
}

/** A server keys response that is malformed, for another server, or not signed by its keys. */
export class ServerKeysError extends MimiError {
  constructor(message: string, errcode: ErrorCode = "M_BAD_JSON") {
    super(errcode, message);
  }
}

/**
 * Builds our `GET /_matrix/key/v2/server` answer, self-signed per LM-04 §Signing Arbitrary Objects.
 * `fields` are extension fields signed with the rest (the OHTTP key configurations).
 */
export function buildServerKeysResponse(
  current: ServerSigningKey,
  oldKeys: readonly OldVerifyKey[],
  validUntilTs: number,
  fields: Readonly<Record<string, string>> = {},
): ServerKeysBody {
  if (!Number.isSafeInteger(validUntilTs) || validUntilTs < 0) {
    throw new Error(`valid_until_ts must be a non-negative integer, got ${validUntilTs}`);
  }
  const oldVerifyKeys: ServerKeysBody["old_verify_keys"] = {};
  for (const old of oldKeys) {
    if (!isValidKeyId(old.keyId))
      throw new Error(`old key ID ${JSON.stringify(old.keyId)} is not a valid key ID`);
    if (old.keyId === current.keyId) throw new Error(`old key ${old.keyId} has the ID of the current key`);
    if (VerifyKey.fromBase64(old.publicKeyBase64) === undefined) {
      throw new Error(`old key ${old.keyId} is not an unpadded base64 ed25519 public key`);
    }
    if (!Number.isSafeInteger(old.expiredTs) || old.expiredTs < 0) {
      throw new Error(`old key ${old.keyId} has an invalid expired_ts ${old.expiredTs}`);
    }
    oldVerifyKeys[old.keyId] = { key: old.publicKeyBase64, expired_ts: old.expiredTs };
  }
  const unsigned = {
    ...fields,
    server_name: current.serverName,
    valid_until_ts: validUntilTs,
    "m.linearized": true as const,
    verify_keys: { [current.keyId]: { key: current.publicKeyBase64 } },
    old_verify_keys: oldVerifyKeys,
  };
  const signature = current.sign(canonicalBytes(unsigned));
  return { ...unsigned, signatures: { [current.serverName]: { [current.keyId]: signature } } };
}

/**
 * Checks a `GET /_matrix/key/v2/server` answer: its shape, that it is for the
 * server we asked, and that every key in `verify_keys` signed it.
 */
export function parseServerKeysResponse(
  body: unknown,
  expectedServerName: string,
  nowTs: number,
): ParsedServerKeys {
  const what = `keys response of ${expectedServerName}`;
  if (!isPlainObject(body)) throw new ServerKeysError(`${what} is not a JSON object`);
  if (body.server_name !== expectedServerName) {
    throw new ServerKeysError(
      `${what} is for server_name ${JSON.stringify(body.server_name)}`,
      "M_FORBIDDEN",
    );
  }
  const validUntil = body.valid_until_ts;
  if (!isTimestamp(validUntil))
    throw new ServerKeysError(`${what}: valid_until_ts must be a non-negative integer`);
  if (body["m.linearized"] !== undefined && typeof body["m.linearized"] !== "boolean") {
    throw new ServerKeysError(`${what}: m.linearized must be a boolean`);
  }
  const validUntilTs = Math.min(validUntil, nowTs + MAX_KEY_VALIDITY_MS);

  const verifyKeys = body.verify_keys;
  if (!isPlainObject(verifyKeys)) throw new ServerKeysError(`${what}: verify_keys must be an object`);
  const oldVerifyKeys = body.old_verify_keys ?? {};
  if (!isPlainObject(oldVerifyKeys)) throw new ServerKeysError(`${what}: old_verify_keys must be an object`);
  const currentIds = Object.keys(verifyKeys);
  if (currentIds.length === 0) throw new ServerKeysError(`${what}: verify_keys is empty`);
  if (currentIds.length + Object.keys(oldVerifyKeys).length > MAX_KEYS_PER_RESPONSE) {
    throw new ServerKeysError(`${what} lists more than ${MAX_KEYS_PER_RESPONSE} keys`);
  }

  const keys: ServerKey[] = [];
  for (const [keyId, entry] of Object.entries(verifyKeys)) {
    keys.push({
      keyId,
      key: parseKeyEntry(entry, keyId, `${what}: verify_keys`),
      validUntil: validUntilTs,
      old: false,
    });
  }
  for (const [keyId, entry] of Object.entries(oldVerifyKeys)) {
    if (Object.hasOwn(verifyKeys, keyId)) {
      throw new ServerKeysError(`${what}: key ${keyId} is in both verify_keys and old_verify_keys`);
    }
    const key = parseKeyEntry(entry, keyId, `${what}: old_verify_keys`);
    const expiredTs = (entry as Record<string, unknown>).expired_ts;
    if (!isTimestamp(expiredTs)) {
      throw new ServerKeysError(
        `${what}: old_verify_keys.${keyId}.expired_ts must be a non-negative integer`,
      );
    }
    keys.push({ keyId, key, validUntil: expiredTs, old: true });
  }

  const signatures = body.signatures;
  const ours = isPlainObject(signatures) ? signatures[expectedServerName] : undefined;
  if (!isPlainObject(ours)) {
    throw new ServerKeysError(`${what} is not signed by ${expectedServerName}`, "M_FORBIDDEN");
  }
  const { signatures: _signatures, ...unsigned } = body;
  const signed = canonicalBytes(unsigned);
  for (const key of keys) {
    if (key.old) continue;
    const signature = ours[key.keyId];
    if (typeof signature !== "string") {
      throw new ServerKeysError(`${what} is not signed with its key ${key.keyId}`, "M_FORBIDDEN");
    }
    if (!key.key.verify(signed, signature)) {
      throw new ServerKeysError(
        `${what}: the signature with key ${key.keyId} does not verify`,
        "M_FORBIDDEN",
      );
    }
  }
  return { serverName: expectedServerName, validUntilTs, keys };
}

function parseKeyEntry(entry: unknown, keyId: string, where: string): VerifyKey {
  if (!isValidKeyId(keyId))
    throw new ServerKeysError(`${where}: ${JSON.stringify(keyId)} is not a valid key ID`);
  if (!isPlainObject(entry) || typeof entry.key !== "string") {
    throw new ServerKeysError(`${where}.${keyId} must be an object with a string key`);
  }
  const key = VerifyKey.fromBase64(entry.key);
  if (key === undefined)
    throw new ServerKeysError(`${where}.${keyId}.key is not a base64 ed25519 public key`);
  return key;
}

/**
 * Our keys response, re-signed once less than half of its validity is left
 * so peers never get an answer about to expire.
 */
export class ServerKeysPublisher {
  private cached: ServerKeysBody | undefined;
  private readonly now: () => number;
  private readonly validityMs: number;

  private readonly fields: Readonly<Record<string, string>>;

  constructor(
    readonly key: ServerSigningKey,
    readonly oldKeys: readonly OldVerifyKey[] = [],
    options: { now?: () => number; validityMs?: number; fields?: Readonly<Record<string, string>> } = {},
  ) {
    this.now = options.now ?? Date.now;
    this.validityMs = options.validityMs ?? DEFAULT_PUBLISHED_VALIDITY_MS;
    this.fields = options.fields ?? {};
    buildServerKeysResponse(key, oldKeys, 0, this.fields);
  }

  response(): ServerKeysBody {
    const now = this.now();
    if (this.cached === undefined || this.cached.valid_until_ts - now < this.validityMs / 2) {
      this.cached = buildServerKeysResponse(this.key, this.oldKeys, now + this.validityMs, this.fields);
    }
    return this.cached;
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isTimestamp(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}
