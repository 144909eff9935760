import type { KeyObject } from "node:crypto";
import { createHash, createPublicKey, verify } from "node:crypto";

/**
 * The one ciphersuite the observer speaks (the room version's default, LM-04 §MLS Considerations):
 * SHA-256, Ed25519, DHKEM(X25519). Everything the observer checks is public, so it needs only the
 * hash and signature verification, done synchronously with node:crypto so that a commit is judged
 * in one synchronous step of the hub's sequencing.
 */
export const SUPPORTED_CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519";
export const SUPPORTED_VERSION = "mls10";

/** KDF.Nh and the hash output length of the suite (RFC 9420 §5.1). */
export const HASH_LENGTH = 32;
/** The length of a DHKEM(X25519) encapsulated key (RFC 9180 §7.1: Nenc). */
export const KEM_OUTPUT_LENGTH = 32;

export function hash(data: Uint8Array): Uint8Array {
  return createHash("sha256").update(data).digest();
}

// DER prefix of an SPKI structure around a raw 32-byte Ed25519 public key (RFC 8410).
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const textEncoder = new TextEncoder();

/** The QUIC-style variable-length prefix of RFC 9420 §2.1.2, minimal form. */
function lengthPrefix(length: number): Uint8Array {
  if (length < 0x40) return Uint8Array.of(length);
  if (length < 0x4000) return Uint8Array.of(0x40 | (length >> 8), length & 0xff);
  return Uint8Array.of(0x80 | (length >>> 24), (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff);
}

/** `opaque value<V>` fields one after the other. */
export function concatOpaque(...values: Uint8Array[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const value of values) parts.push(lengthPrefix(value.length), value);
  return Buffer.concat(parts);
}

/** VerifyWithLabel (RFC 9420 §5.1.2): the signed content is SignContent {"MLS 1.0 " + label, content}. */
export function verifyWithLabel(
  publicKey: Uint8Array,
  label: string,
  content: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  const signContent = concatOpaque(textEncoder.encode(`MLS 1.0 ${label}`), content);
  try {
    return verify(null, signContent, publicKeyObject(publicKey), signature);
  } catch {
    return false;
  }
}

// Parsed keys of recent signers: parsing costs more than a verification. Bounded, oldest first out.
const KEY_CACHE_SIZE = 4096;
const keyObjects = new Map<string, KeyObject>();

function publicKeyObject(publicKey: Uint8Array): KeyObject {
  const id = Buffer.from(publicKey).toString("hex");
  let key = keyObjects.get(id);
  if (key === undefined) {
    key = createPublicKey({
      key: Buffer.concat([ED25519_SPKI_PREFIX, publicKey]),
      format: "der",
      type: "spki",
    });
    if (keyObjects.size >= KEY_CACHE_SIZE) keyObjects.delete(keyObjects.keys().next().value as string);
    keyObjects.set(id, key);
  }
  return key;
}

/** RefHash (RFC 9420 §5.2): the hash of RefHashInput {label, value}. */
export function refHash(label: string, value: Uint8Array): Uint8Array {
  return hash(concatOpaque(textEncoder.encode(label), value));
}
