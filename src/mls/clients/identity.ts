import type { BatchOp, KvStore } from "../../store/kv";
import { MlsError } from "../errors";
import {
  SUPPORTED_CIPHERSUITE,
  generateKeyPackageWithKey,
  type Capabilities,
  type CiphersuiteImpl,
  type Credential,
  type Extension,
  type KeyPackage,
  type Lifetime,
  type PrivateKeyPackage,
} from "../tsMls";
import { clientIdentityKey } from "./storeKeys";
import { fromBase64, toBase64 } from "./wire";

/** RFC 9420 §17.3 (IANA "MLS Extension Types"): last_resort, 0x000A, a KeyPackage extension with no data. */
export const LAST_RESORT_EXTENSION = 0x000a;

/**
 * The capabilities every hosted client announces (RFC 9420 §7.2): MLS 1.0, the one ciphersuite,
 * basic credentials, and the last_resort extension its KeyPackages may carry.
 */
export const HOSTED_CAPABILITIES: Capabilities = {
  versions: ["mls10"],
  ciphersuites: [SUPPORTED_CIPHERSUITE],
  extensions: [LAST_RESORT_EXTENSION],
  proposals: [],
  credentials: ["basic"],
};

/** A local user's hosted MLS client: the provider holds its signature key pair (the bridge trust model). */
export interface ClientIdentity {
  readonly userId: string;
  readonly signaturePublicKey: Uint8Array;
  readonly signaturePrivateKey: Uint8Array;
}

const utf8 = new TextEncoder();

/** RFC 9420 §5.3.1 basic credential whose identity is the MIMI user ID in UTF-8 (LM-04 §Device Credentials). */
export function basicCredential(userId: string): Credential {
  return { credentialType: "basic", identity: utf8.encode(userId) };
}

export async function newClientIdentity(userId: string, cs: CiphersuiteImpl): Promise<ClientIdentity> {
  const { signKey, publicKey } = await cs.signature.keygen();
  return { userId, signaturePublicKey: publicKey, signaturePrivateKey: signKey };
}

export function clientIdentityOps(identity: ClientIdentity): BatchOp[] {
  const value = JSON.stringify({
    signaturePublicKey: toBase64(identity.signaturePublicKey),
    signaturePrivateKey: toBase64(identity.signaturePrivateKey),
  });
  return [{ type: "put", key: clientIdentityKey(identity.userId), value }];
}

export async function loadClientIdentity(kv: KvStore, userId: string): Promise<ClientIdentity | undefined> {
  const stored = await kv.get(clientIdentityKey(userId));
  if (stored === undefined) return undefined;
  const record = JSON.parse(stored) as { signaturePublicKey: string; signaturePrivateKey: string };
  return {
    userId,
    signaturePublicKey: fromBase64(record.signaturePublicKey),
    signaturePrivateKey: fromBase64(record.signaturePrivateKey),
  };
}

/** The user's client identity, or a new one with the operations that store it. */
export async function ensureClientIdentity(
  kv: KvStore,
  userId: string,
  cs: CiphersuiteImpl,
): Promise<{ identity: ClientIdentity; ops: BatchOp[] }> {
  const stored = await loadClientIdentity(kv, userId);
  if (stored !== undefined) return { identity: stored, ops: [] };
  const identity = await newClientIdentity(userId, cs);
  return { identity, ops: clientIdentityOps(identity) };
}

export async function requireClientIdentity(kv: KvStore, userId: string): Promise<ClientIdentity> {
  const identity = await loadClientIdentity(kv, userId);
  if (identity === undefined) {
    throw new MlsError("M_NOT_FOUND", "client.unknown", `${userId} has no hosted MLS client here`);
  }
  return identity;
}

/** Seconds since the epoch, as a KeyPackage lifetime counts them (RFC 9420 §7.2). */
export function unixSeconds(ms: number): bigint {
  return BigInt(Math.floor(ms / 1000));
}

export interface KeyPackageLifetime {
  /** Now, in milliseconds since the epoch. */
  now: number;
  lifetimeMs: number;
}

/**
 * One hour of allowance for clocks behind ours: RFC 9420 §7.2 leaves the margin to the
 * application, and a receiver refuses a KeyPackage whose `not_before` is in its future.
 */
const CLOCK_SKEW_MS = 60 * 60 * 1000;

export function lifetimeFrom({ now, lifetimeMs }: KeyPackageLifetime): Lifetime {
  return { notBefore: unixSeconds(now - CLOCK_SKEW_MS), notAfter: unixSeconds(now + lifetimeMs) };
}

/** A KeyPackage of the client, signed with its signature key; `lastResort` adds the last_resort extension. */
export async function generateClientKeyPackage(
  identity: ClientIdentity,
  cs: CiphersuiteImpl,
  lifetime: KeyPackageLifetime,
  options: { lastResort?: boolean } = {},
): Promise<{ publicPackage: KeyPackage; privatePackage: PrivateKeyPackage }> {
  const extensions: Extension[] =
    options.lastResort === true
      ? [{ extensionType: LAST_RESORT_EXTENSION, extensionData: new Uint8Array() }]
      : [];
  return generateKeyPackageWithKey(
    basicCredential(identity.userId),
    HOSTED_CAPABILITIES,
    lifetimeFrom(lifetime),
    extensions,
    { signKey: identity.signaturePrivateKey, publicKey: identity.signaturePublicKey },
    cs,
  );
}
