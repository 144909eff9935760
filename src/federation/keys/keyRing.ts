import { decodeBase64, encodeUnpaddedBase64 } from "../../events/base64";
import type { VerifyKeyLookup } from "../../events/signatures";
import { VerifyKey, type ServerSigningKey } from "../../events/signingKey";
import { parseKeyId, parseServerName } from "../../identifiers";
import { prefixEnd, type BatchOp, type KvStore } from "../../store/kv";
import { parseJsonBytes, sendHttp, type FetchFn } from "../client/http";
import type { Resolver } from "../discovery/serverResolver";
import { OHTTP_KEYS_FIELD } from "../ohttp/constants";
import { decodeKeyConfigList, type KeyConfig } from "../ohttp/keyConfig";
import { BoundedExpiringMap } from "./boundedMap";
import { parseServerKeysResponse, type OldVerifyKey, type ServerKey } from "./serverKeys";

const SEP = "\u0000";
const KEY_PREFIX = `k${SEP}`;
/** `ko␀<server>`: the OHTTP key configurations a server's key answer carried, pinned with it. */
const OHTTP_PREFIX = `ko${SEP}`;
export const SERVER_KEYS_PATH = "/_matrix/key/v2/server";
/** Default of `KeyRingOptions.minRefetchIntervalMs`. */
export const DEFAULT_MIN_REFETCH_INTERVAL_MS = 30_000;
/** Default of `KeyRingOptions.maxTrackedServers`. */
export const DEFAULT_MAX_TRACKED_SERVERS = 1_000;

export interface KeyRingOptions {
  ourKey: ServerSigningKey;
  ourOldKeys?: readonly OldVerifyKey[];
  store: KvStore;
  resolver: Resolver;
  fetch?: FetchFn;
  now?: () => number;
  /**
   * At most one key fetch per server in this interval, so forged key IDs
   * cannot make us hammer a server. Default 30 s.
   */
  minRefetchIntervalMs?: number;
  /**
   * How many servers' last fetch attempt (and its error) are remembered, each
   * for `minRefetchIntervalMs`; beyond that the oldest is forgotten first.
   * Bounds the memory that requests naming many servers can take. Default 1,000.
   */
  maxTrackedServers?: number;
  /**
   * A cheap, synchronous check that a server can be reached at all (with
   * `.well-known` discovery off: it has a static route). Keys of a server it
   * refuses are never fetched, and requests from it are refused before any
   * work. Default: every server can be reached.
   */
  canRoute?: (serverName: string) => boolean;
  fetchTimeoutMs?: number;
  maxResponseBytes?: number;
}

interface StoredKey {
  key: string;
  validUntil: number;
  old: boolean;
}

/** A server's OHTTP key configurations (RFC 9458 §3), from its signed key answer. */
export interface OhttpKeys {
  /** `application/ohttp-keys`, as published. */
  bytes: Uint8Array;
  configs: KeyConfig[];
  /** The key answer's (capped) `valid_until_ts`: used until then, or until a gateway refuses them. */
  validUntil: number;
}

interface StoredOhttpKeys {
  keys: string;
  validUntil: number;
}

/**
 * The verify keys of every server we talk to (LM-04 §Retrieving Server Keys):
 * fetched from `/_matrix/key/v2/server`, cached in memory and in the store.
 * Keys a server stops publishing are kept as old keys, expired when we noticed,
 * so signatures made with them before then still verify after the server rotates.
 */
export class KeyRing implements VerifyKeyLookup {
  readonly serverName: string;
  /** Only servers that answered with valid keys (or that the store remembers) get an entry. */
  private readonly servers = new Map<string, Map<string, ServerKey>>();
  private readonly inflight = new Map<string, Promise<void>>();
  /** Their OHTTP key configurations, replaced by each successful fetch of their keys. */
  private readonly ohttp = new Map<string, OhttpKeys>();
  /** Servers fetched within the refetch interval, with the error if the fetch failed. */
  private readonly attempts: BoundedExpiringMap<{ error: string | undefined; ohttpError?: string }>;
  private readonly fetchFn: FetchFn;
  private readonly now: () => number;
  private readonly minRefetchIntervalMs: number;
  private readonly fetchTimeoutMs: number;
  private readonly maxResponseBytes: number;

  private constructor(private readonly options: KeyRingOptions) {
    this.serverName = options.ourKey.serverName;
    this.fetchFn = options.fetch ?? fetch;
    this.now = options.now ?? Date.now;
    this.minRefetchIntervalMs = options.minRefetchIntervalMs ?? DEFAULT_MIN_REFETCH_INTERVAL_MS;
    this.fetchTimeoutMs = options.fetchTimeoutMs ?? 10_000;
    this.maxResponseBytes = options.maxResponseBytes ?? 256 * 1024;
    this.attempts = new BoundedExpiringMap(
      options.maxTrackedServers ?? DEFAULT_MAX_TRACKED_SERVERS,
      this.minRefetchIntervalMs,
      this.now,
    );

    const ours = new Map<string, ServerKey>();
    for (const old of options.ourOldKeys ?? []) {
      const key = VerifyKey.fromBase64(old.publicKeyBase64);
      if (key === undefined) throw new Error(`our old key ${old.keyId} is not a base64 ed25519 public key`);
      parseKeyId(old.keyId);
      ours.set(old.keyId, { keyId: old.keyId, key, validUntil: old.expiredTs, old: true });
    }
    const current = options.ourKey;
    ours.set(current.keyId, {
      keyId: current.keyId,
      key: current.verifyKey(),
      validUntil: Number.POSITIVE_INFINITY,
      old: false,
    });
    this.servers.set(this.serverName, ours);
  }

  /** Opens the ring with every key the store remembers, so a restart does not refetch. */
  static async open(options: KeyRingOptions): Promise<KeyRing> {
    const ring = new KeyRing(options);
    for await (const [storeKey, value] of options.store.range({
      gte: KEY_PREFIX,
      lt: prefixEnd(KEY_PREFIX),
    })) {
      ring.loadStored(storeKey, value);
    }
    for await (const [storeKey, value] of options.store.range({
      gte: OHTTP_PREFIX,
      lt: prefixEnd(OHTTP_PREFIX),
    })) {
      ring.loadStoredOhttp(storeKey.slice(OHTTP_PREFIX.length), value);
    }
    return ring;
  }

  /**
   * The OHTTP key configurations `serverName` published with its keys, while valid; undefined
   * when it published none (it has not upgraded) or they expired.
   */
  ohttpKeys(serverName: string): OhttpKeys | undefined {
    const pinned = this.ohttp.get(serverName);
    return pinned !== undefined && pinned.validUntil > this.now() ? pinned : undefined;
  }

  /** Why the server's last key answer carried no usable OHTTP key configuration, if it was malformed. */
  lastOhttpError(serverName: string): string | undefined {
    return this.attempts.get(serverName)?.ohttpError;
  }

  /**
   * Fetches the server's keys, and with them its OHTTP key configurations, when none are pinned
   * or they expired, or with `refresh` (its gateway refused the pinned ones): under the same rules
   * as `ensureKeys`, so at most once per `minRefetchIntervalMs` per server.
   */
  async ensureOhttpKeys(serverName: string, refresh = false): Promise<void> {
    parseServerName(serverName);
    if (serverName === this.serverName || !this.canRoute(serverName)) return;
    if (!refresh && this.ohttpKeys(serverName) !== undefined) return;
    const pending = this.inflight.get(serverName);
    if (pending !== undefined) return pending;
    if (this.attempts.get(serverName) !== undefined) return;
    const fetching = this.fetchAndStore(serverName).finally(() => this.inflight.delete(serverName));
    this.inflight.set(serverName, fetching);
    return fetching;
  }

  /**
   * The keys that may verify a signature made at `signedAtTs`: current keys
   * valid now, and old keys only for what was signed before their
   * `expired_ts` (LM-04 §GET /_matrix/key/v2/server).
   */
  keysOf(serverName: string, signedAtTs: number): ReadonlyMap<string, VerifyKey> | undefined {
    const known = this.servers.get(serverName);
    if (known === undefined) return undefined;
    const now = this.now();
    const usable = new Map<string, VerifyKey>();
    for (const [keyId, entry] of known) {
      if (entry.old ? signedAtTs < entry.validUntil : entry.validUntil > now) usable.set(keyId, entry.key);
    }
    return usable;
  }

  keyInfo(serverName: string, keyId: string): ServerKey | undefined {
    return this.servers.get(serverName)?.get(keyId);
  }

  /** Whether this server's keys could be fetched at all (see `KeyRingOptions.canRoute`). */
  canRoute(serverName: string): boolean {
    return serverName === this.serverName || (this.options.canRoute?.(serverName) ?? true);
  }

  /** How many other servers the ring holds keys of, and remembers a recent fetch attempt of. */
  cacheSizes(): { servers: number; attempts: number } {
    return { servers: this.servers.size - 1, attempts: this.attempts.size };
  }

  /**
   * A key that may authenticate a request now: LM-04 §GET /_matrix/key/v2/server
   * honours only `verify_keys` for requests, and §Request Authentication needs
   * it unexpired.
   */
  requestKey(serverName: string, keyId: string): VerifyKey | undefined {
    const entry = this.keyInfo(serverName, keyId);
    if (entry === undefined || entry.old || entry.validUntil <= this.now()) return undefined;
    return entry.key;
  }

  /** Why the last key fetch from this server failed, if it did. */
  lastFetchError(serverName: string): string | undefined {
    return this.attempts.get(serverName)?.error;
  }

  /**
   * Fetches the server's keys when one of `keyIds` is unknown or expired (or,
   * with no key IDs, when no current key is valid). Concurrent calls share one
   * fetch; a server is fetched at most once per `minRefetchIntervalMs`, and a
   * server `canRoute` refuses never. A failed fetch does not reject: the keys
   * simply stay unknown and lastFetchError says why. Rejects only for invalid
   * arguments or a store failure.
   */
  async ensureKeys(serverName: string, keyIds: readonly string[]): Promise<void> {
    parseServerName(serverName);
    for (const keyId of keyIds) parseKeyId(keyId);
    if (serverName === this.serverName || !this.canRoute(serverName)) return;
    if (!this.needsFetch(serverName, keyIds)) return;
    const pending = this.inflight.get(serverName);
    if (pending !== undefined) return pending;
    if (this.attempts.get(serverName) !== undefined) return;
    const fetching = this.fetchAndStore(serverName).finally(() => this.inflight.delete(serverName));
    this.inflight.set(serverName, fetching);
    return fetching;
  }

  private needsFetch(serverName: string, keyIds: readonly string[]): boolean {
    const known = this.servers.get(serverName);
    const now = this.now();
    if (keyIds.length === 0) {
      return ![...(known?.values() ?? [])].some((entry) => !entry.old && entry.validUntil > now);
    }
    return keyIds.some((keyId) => {
      const entry = known?.get(keyId);
      return entry === undefined || (!entry.old && entry.validUntil <= now);
    });
  }

  private async fetchAndStore(serverName: string): Promise<void> {
    const attempt: { error: string | undefined; ohttpError?: string } = { error: undefined };
    this.attempts.set(serverName, attempt);
    let fetched: ServerKey[];
    let ohttp: OhttpKeys | undefined;
    try {
      const answer = await this.fetchKeys(serverName);
      fetched = answer.keys;
      ohttp = this.ohttpOf(answer.body, answer.validUntilTs, attempt);
    } catch (err) {
      attempt.error = (err as Error).message;
      return;
    }

    const now = this.now();
    const merged = new Map<string, ServerKey>();
    for (const key of fetched) merged.set(key.keyId, key);
    for (const [keyId, previous] of this.servers.get(serverName) ?? []) {
      if (merged.has(keyId)) continue;
      // LM-04 §GET /_matrix/key/v2/server: keys a server stopped publishing stay usable for old signatures.
      merged.set(keyId, {
        ...previous,
        old: true,
        validUntil: previous.old ? previous.validUntil : Math.min(previous.validUntil, now),
      });
    }
    const ops: BatchOp[] = [...merged.values()].map((entry) => ({
      type: "put",
      key: storeKeyOf(serverName, entry.keyId),
      value: JSON.stringify({
        key: entry.key.base64,
        validUntil: entry.validUntil,
        old: entry.old,
      } satisfies StoredKey),
    }));
    ops.push(
      ohttp === undefined
        ? { type: "del", key: OHTTP_PREFIX + serverName }
        : {
            type: "put",
            key: OHTTP_PREFIX + serverName,
            value: JSON.stringify({
              keys: encodeUnpaddedBase64(ohttp.bytes),
              validUntil: ohttp.validUntil,
            } satisfies StoredOhttpKeys),
          },
    );
    await this.options.store.commit(ops);
    this.servers.set(serverName, merged);
    if (ohttp === undefined) this.ohttp.delete(serverName);
    else this.ohttp.set(serverName, ohttp);
  }

  /** The OHTTP key configurations of a verified key answer; a malformed field counts as none. */
  private ohttpOf(
    body: unknown,
    validUntil: number,
    attempt: { ohttpError?: string },
  ): OhttpKeys | undefined {
    const field = (body as Record<string, unknown>)[OHTTP_KEYS_FIELD];
    if (field === undefined) return undefined;
    const bytes = typeof field === "string" ? decodeBase64(field) : undefined;
    try {
      if (bytes === undefined) throw new Error(`${OHTTP_KEYS_FIELD} is not base64`);
      return {
        bytes: new Uint8Array(bytes),
        configs: decodeKeyConfigList(new Uint8Array(bytes)),
        validUntil,
      };
    } catch (err) {
      attempt.ohttpError = (err as Error).message;
      return undefined;
    }
  }

  private loadStoredOhttp(serverName: string, value: string): void {
    try {
      const stored = JSON.parse(value) as StoredOhttpKeys;
      const bytes = decodeBase64(stored.keys);
      if (bytes === undefined || typeof stored.validUntil !== "number") return;
      const configs = decodeKeyConfigList(new Uint8Array(bytes));
      this.ohttp.set(serverName, { bytes: new Uint8Array(bytes), configs, validUntil: stored.validUntil });
    } catch {
      // Unreadable: fetched again when needed.
    }
  }

  private async fetchKeys(
    serverName: string,
  ): Promise<{ keys: ServerKey[]; body: unknown; validUntilTs: number }> {
    const base = await this.options.resolver.resolve(serverName);
    const url = new URL(SERVER_KEYS_PATH, base);
    const result = await sendHttp(
      this.fetchFn,
      url,
      { method: "GET", headers: { Accept: "application/json" }, redirect: "manual" },
      { destination: serverName, timeoutMs: this.fetchTimeoutMs, maxBytes: this.maxResponseBytes },
    );
    if (result.status !== 200) throw new Error(`${url.href} answered HTTP ${result.status}`);
    const json = parseJsonBytes(result.bytes);
    if (json === undefined) throw new Error(`${url.href} did not answer JSON`);
    const parsed = parseServerKeysResponse(json.value, serverName, this.now());
    return { keys: parsed.keys, body: json.value, validUntilTs: parsed.validUntilTs };
  }

  private loadStored(storeKey: string, value: string): void {
    // An entry we cannot read is skipped: the key is then refetched when needed.
    const [, serverName, keyId] = storeKey.split(SEP);
    if (serverName === undefined || keyId === undefined || serverName === this.serverName) return;
    let stored: Partial<StoredKey>;
    try {
      stored = JSON.parse(value) as Partial<StoredKey>;
    } catch {
      return;
    }
    const key = typeof stored.key === "string" ? VerifyKey.fromBase64(stored.key) : undefined;
    if (key === undefined || typeof stored.validUntil !== "number" || typeof stored.old !== "boolean") return;
    let byId = this.servers.get(serverName);
    if (byId === undefined) {
      byId = new Map();
      this.servers.set(serverName, byId);
    }
    byId.set(keyId, { keyId, key, validUntil: stored.validUntil, old: stored.old });
  }
}

function storeKeyOf(serverName: string, keyId: string): string {
  return `${KEY_PREFIX}${serverName}${SEP}${keyId}`;
}
