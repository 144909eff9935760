import { prefixEnd, type BatchOp, type KvStore } from "../../store/kv";
import type { WelcomeKeys } from "../clients/hostedClient";
import { clientIdentityPrefix } from "../clients/storeKeys";
import {
  ensureClientIdentity,
  type ClientIdentity,
  generateClientKeyPackage,
  requireClientIdentity,
  unixSeconds,
} from "../clients/identity";
import { SUPPORTED_VERSION, loadSuite } from "../clients/suite";
import { decodeMlsMessageOf, decodeWhole, fromBase64, toBase64, toHex } from "../clients/wire";
import { MlsError } from "../errors";
import {
  SUPPORTED_CIPHERSUITE,
  decodeKeyPackage,
  encodeKeyPackage,
  makeKeyPackageRef,
  type CiphersuiteImpl,
  type CiphersuiteName,
  type ProtocolVersionName,
} from "../tsMls";
import { KeyedQueue } from "./keyedQueue";
import {
  availableKey,
  availablePrefix,
  lastResortKey,
  privateKey,
  privatePrefix,
  refOwnerKey,
} from "./storeKeys";

export interface KeyPackagePoolOptions {
  /** One-time KeyPackages kept ready per user (default 20). */
  oneTimeCount?: number;
  /** Lifetime of a new KeyPackage (default 28 days). */
  lifetimeMs?: number;
  /** A KeyPackage this close to its expiry is no longer served and is replaced (default 7 days). */
  renewBeforeMs?: number;
  clock?: () => number;
}

export interface ClaimedKeyPackage {
  /** The KeyPackage's encoding (RFC 9420 §10): a KeyPackageResponse's `key_package`. */
  keyPackage: Uint8Array;
  /** Its KeyPackageRef (RFC 9420 §5.2), in hex. */
  ref: string;
  lastResort: boolean;
}

export interface PoolStatus {
  oneTime: number;
  lastResort: boolean;
}

/** `mka` value: an unclaimed one-time KeyPackage. */
interface AvailableRecord {
  keyPackage: string;
  /** Seconds since the epoch, the KeyPackage's `not_after`. */
  notAfter: number;
}

/** `mkk` value: the private keys of a KeyPackage (the signature key is the client's, stored once). */
interface PrivateRecord {
  keyPackage: string;
  initPrivateKey: string;
  hpkePrivateKey: string;
  lastResort: boolean;
  notAfter: number;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * Each local user's KeyPackages (McMillion §Key Packages; RFC 9420 §10, §16.8): a pool of
 * one-time KeyPackages, each served at most once, and one last-resort KeyPackage (RFC 9420
 * §17.3 `last_resort`), served when the one-time ones are gone. The private keys of every
 * KeyPackage are kept, looked up by KeyPackageRef, until a Welcome uses them or they expire.
 */
export class KeyPackagePool {
  private readonly perUser = new KeyedQueue();
  private readonly oneTimeCount: number;
  private readonly lifetimeMs: number;
  private readonly renewBeforeMs: number;
  private readonly clock: () => number;

  constructor(
    private readonly kv: KvStore,
    options: KeyPackagePoolOptions = {},
  ) {
    this.oneTimeCount = options.oneTimeCount ?? 20;
    this.lifetimeMs = options.lifetimeMs ?? 28 * DAY_MS;
    this.renewBeforeMs = options.renewBeforeMs ?? 7 * DAY_MS;
    this.clock = options.clock ?? Date.now;
    if (this.renewBeforeMs >= this.lifetimeMs) throw new RangeError("renewBeforeMs must be below lifetimeMs");
  }

  /**
   * The operations that top the user's pool up: the client's identity if it has none, one-time
   * KeyPackages up to the pool's size, a new last-resort KeyPackage when there is none or it
   * nears its expiry; unserved KeyPackages nearing their expiry and expired private keys go.
   * The caller commits them; run it for one user at a time (`replenish` does both).
   */
  async replenishOps(userId: string): Promise<BatchOp[]> {
    const cs = await loadSuite(SUPPORTED_CIPHERSUITE);
    const { identity, ops } = await ensureClientIdentity(this.kv, userId, cs);
    const now = this.clock();
    const nowSeconds = Number(unixSeconds(now));
    const renewBy = Number(unixSeconds(now + this.renewBeforeMs));

    const dropped = new Set<string>();
    const drop = (ref: string) => {
      dropped.add(ref);
      ops.push(
        { type: "del", key: availableKey(userId, ref) },
        { type: "del", key: privateKey(userId, ref) },
        { type: "del", key: refOwnerKey(ref) },
      );
    };
    for await (const [key, value] of this.kv.range({
      gte: privatePrefix(userId),
      lt: prefixEnd(privatePrefix(userId)),
    })) {
      if ((JSON.parse(value) as PrivateRecord).notAfter < nowSeconds)
        drop(key.slice(privatePrefix(userId).length));
    }
    let fresh = 0;
    for await (const [key, value] of this.kv.range({
      gte: availablePrefix(userId),
      lt: prefixEnd(availablePrefix(userId)),
    })) {
      const ref = key.slice(availablePrefix(userId).length);
      if (dropped.has(ref)) continue;
      if ((JSON.parse(value) as AvailableRecord).notAfter < renewBy) drop(ref);
      else fresh += 1;
    }
    for (let i = fresh; i < this.oneTimeCount; i++) {
      ops.push(...(await this.newKeyPackageOps(identity, cs, now, false)).ops);
    }

    const lastResortRef = await this.kv.get(lastResortKey(userId));
    const lastResort =
      lastResortRef === undefined || dropped.has(lastResortRef)
        ? undefined
        : await this.kv.get(privateKey(userId, lastResortRef));
    if (lastResort === undefined || (JSON.parse(lastResort) as PrivateRecord).notAfter < renewBy) {
      // The replaced one keeps its private keys until it expires: a Welcome may be on its way.
      const created = await this.newKeyPackageOps(identity, cs, now, true);
      ops.push(...created.ops, { type: "put", key: lastResortKey(userId), value: created.ref });
    }
    return ops;
  }

  /** Tops the user's pool up and commits it, one replenishment or claim of the user at a time. */
  replenish(userId: string): Promise<void> {
    return this.perUser.run(userId, async () => {
      const ops = await this.replenishOps(userId);
      if (ops.length > 0) await this.kv.commit(ops);
    });
  }

  /**
   * Takes one of the user's one-time KeyPackages, or the last-resort one when none is left. A
   * one-time KeyPackage is served at most once: claims of one user run one at a time, and the
   * claim's deletion is durable before the KeyPackage is returned.
   */
  claim(
    userId: string,
    version: ProtocolVersionName,
    cipherSuite: CiphersuiteName,
  ): Promise<ClaimedKeyPackage> {
    if (version !== SUPPORTED_VERSION) {
      return Promise.reject(
        new MlsError(
          "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
          "keypackage.version",
          `MLS version ${version} is not supported`,
        ),
      );
    }
    if (cipherSuite !== SUPPORTED_CIPHERSUITE) {
      return Promise.reject(
        new MlsError(
          "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
          "keypackage.cipher_suite",
          `cipher suite ${cipherSuite} is not supported; only ${SUPPORTED_CIPHERSUITE} is`,
        ),
      );
    }
    return this.perUser.run(userId, () => this.claimNow(userId));
  }

  private async claimNow(userId: string): Promise<ClaimedKeyPackage> {
    // One that nears its expiry is left for the next replenishment to delete, so that a
    // replenishment running meanwhile never deletes the private keys of one just served.
    const servableUntil = Number(unixSeconds(this.clock() + this.renewBeforeMs));
    const prefix = availablePrefix(userId);
    let found: { key: string; record: AvailableRecord } | undefined;
    for await (const [key, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      const record = JSON.parse(value) as AvailableRecord;
      if (record.notAfter >= servableUntil) {
        found = { key, record };
        break;
      }
    }
    if (found !== undefined) {
      await this.kv.commit([{ type: "del", key: found.key }]);
      return {
        keyPackage: fromBase64(found.record.keyPackage),
        ref: found.key.slice(prefix.length),
        lastResort: false,
      };
    }
    const ref = await this.kv.get(lastResortKey(userId));
    const stored = ref === undefined ? undefined : await this.kv.get(privateKey(userId, ref));
    if (ref === undefined || stored === undefined) {
      throw new MlsError("M_NOT_FOUND", "keypackage.none", `no KeyPackage of ${userId} is available`);
    }
    return {
      keyPackage: fromBase64((JSON.parse(stored) as PrivateRecord).keyPackage),
      ref,
      lastResort: true,
    };
  }

  /**
   * The private keys of the local KeyPackage a Welcome names (RFC 9420 §12.4.3.1: the joiner finds
   * its entry by KeyPackageRef), with the user it belongs to.
   */
  async keysForWelcome(
    welcome: Uint8Array,
  ): Promise<WelcomeKeys & { userId: string; ref: string; lastResort: boolean }> {
    const decoded = decodeMlsMessageOf(welcome, "mls_welcome").welcome;
    for (const secret of decoded.secrets) {
      const ref = toHex(secret.newMember);
      const userId = await this.kv.get(refOwnerKey(ref));
      if (userId === undefined) continue;
      const stored = await this.kv.get(privateKey(userId, ref));
      if (stored === undefined) continue;
      const record = JSON.parse(stored) as PrivateRecord;
      const identity = await requireClientIdentity(this.kv, userId);
      return {
        userId,
        ref,
        lastResort: record.lastResort,
        keyPackage: decodeWhole(decodeKeyPackage, fromBase64(record.keyPackage), "a stored KeyPackage"),
        privatePackage: {
          initPrivateKey: fromBase64(record.initPrivateKey),
          hpkePrivateKey: fromBase64(record.hpkePrivateKey),
          signaturePrivateKey: identity.signaturePrivateKey,
        },
        consumeOps: record.lastResort
          ? []
          : [
              { type: "del", key: privateKey(userId, ref) },
              { type: "del", key: refOwnerKey(ref) },
              { type: "del", key: availableKey(userId, ref) },
            ],
      };
    }
    throw new MlsError("M_NOT_FOUND", "welcome.keypackage", "the Welcome names none of our KeyPackages");
  }

  /**
   * Tops up the pool of every local user who has a hosted client, one user at a time: refills
   * the one-time KeyPackages claims took and renews those (and the last-resort one) nearing their
   * expiry. Answers how many users' pools changed. Run in the background by the provider.
   */
  async replenishAll(): Promise<number> {
    const prefix = clientIdentityPrefix();
    const users: string[] = [];
    for await (const [key] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) }))
      users.push(key.slice(prefix.length));
    let changed = 0;
    for (const userId of users) {
      const wrote = await this.perUser.run(userId, async () => {
        const ops = await this.replenishOps(userId);
        if (ops.length > 0) await this.kv.commit(ops);
        return ops.length > 0;
      });
      if (wrote) changed += 1;
    }
    return changed;
  }

  async status(userId: string): Promise<PoolStatus> {
    let oneTime = 0;
    const prefix = availablePrefix(userId);
    for await (const _entry of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) oneTime += 1;
    return { oneTime, lastResort: (await this.kv.get(lastResortKey(userId))) !== undefined };
  }

  private async newKeyPackageOps(
    identity: ClientIdentity,
    cs: CiphersuiteImpl,
    now: number,
    lastResort: boolean,
  ): Promise<{ ref: string; ops: BatchOp[] }> {
    const { publicPackage, privatePackage } = await generateClientKeyPackage(
      identity,
      cs,
      { now, lifetimeMs: this.lifetimeMs },
      { lastResort },
    );
    const ref = toHex(await makeKeyPackageRef(publicPackage, cs.hash));
    const keyPackage = toBase64(encodeKeyPackage(publicPackage));
    const notAfter = Number(unixSeconds(now + this.lifetimeMs));
    const record: PrivateRecord = {
      keyPackage,
      initPrivateKey: toBase64(privatePackage.initPrivateKey),
      hpkePrivateKey: toBase64(privatePackage.hpkePrivateKey),
      lastResort,
      notAfter,
    };
    const ops: BatchOp[] = [
      { type: "put", key: privateKey(identity.userId, ref), value: JSON.stringify(record) },
      { type: "put", key: refOwnerKey(ref), value: identity.userId },
    ];
    if (!lastResort) {
      const available: AvailableRecord = { keyPackage, notAfter };
      ops.push({ type: "put", key: availableKey(identity.userId, ref), value: JSON.stringify(available) });
    }
    return { ref, ops };
  }
}
