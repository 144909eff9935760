import { malformed, OhttpError } from "./errors";

/**
 * OHTTP key configurations (RFC 9458 §3): pure encoding and decoding.
 *
 *     HPKE Symmetric Algorithms { HPKE KDF ID (16), HPKE AEAD ID (16) }
 *     Key Config {
 *       Key Identifier (8), HPKE KEM ID (16), HPKE Public Key (Npk * 8),
 *       HPKE Symmetric Algorithms Length (16), HPKE Symmetric Algorithms (32..524256),
 *     }
 *
 * `application/ohttp-keys` (§3.2) is a list of them, each prefixed by its length as a 16-bit integer.
 */

/** HPKE identifiers (RFC 9180 §7) this implementation speaks. */
export const KEM_X25519_HKDF_SHA256 = 0x0020;
export const KDF_HKDF_SHA256 = 0x0001;
export const AEAD_AES_128_GCM = 0x0001;
export const AEAD_AES_256_GCM = 0x0002;
export const AEAD_CHACHA20_POLY1305 = 0x0003;

/** The media types of RFC 9458 §3.2 and §4. */
export const MEDIA_OHTTP_KEYS = "application/ohttp-keys";
export const MEDIA_OHTTP_REQUEST = "message/ohttp-req";
export const MEDIA_OHTTP_RESPONSE = "message/ohttp-res";

export interface SymmetricAlgorithm {
  kdfId: number;
  aeadId: number;
}

export interface KeyConfig {
  keyId: number;
  kemId: number;
  publicKey: Uint8Array;
  algorithms: SymmetricAlgorithm[];
}

/** Npk of the KEMs of RFC 9180 §7.1, so a list can be read past KEMs we do not use. */
const PUBLIC_KEY_SIZE = new Map<number, number>([
  [0x0010, 65],
  [0x0011, 97],
  [0x0012, 133],
  [KEM_X25519_HKDF_SHA256, 32],
  [0x0021, 56],
]);

export function encodeKeyConfig(config: KeyConfig): Uint8Array {
  const npk = PUBLIC_KEY_SIZE.get(config.kemId);
  if (!Number.isInteger(config.keyId) || config.keyId < 0 || config.keyId > 255)
    throw new RangeError(`key ID ${config.keyId} is not 0-255`);
  if (npk === undefined || config.publicKey.length !== npk)
    throw new RangeError(`a public key of ${npk ?? "?"} bytes is needed for KEM 0x${hex16(config.kemId)}`);
  if (config.algorithms.length === 0)
    throw new RangeError("a key configuration needs at least one algorithm");
  const out = new Uint8Array(1 + 2 + npk + 2 + 4 * config.algorithms.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, config.keyId);
  view.setUint16(1, config.kemId);
  out.set(config.publicKey, 3);
  view.setUint16(3 + npk, 4 * config.algorithms.length);
  config.algorithms.forEach((algorithm, i) => {
    view.setUint16(5 + npk + 4 * i, algorithm.kdfId);
    view.setUint16(7 + npk + 4 * i, algorithm.aeadId);
  });
  return out;
}

/** One key configuration, exactly (RFC 9458 §3.1). */
export function decodeKeyConfig(bytes: Uint8Array): KeyConfig {
  if (bytes.length < 3) throw malformed("key_config.truncated", "a key configuration is at least 3 bytes");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const keyId = view.getUint8(0);
  const kemId = view.getUint16(1);
  const npk = PUBLIC_KEY_SIZE.get(kemId);
  if (npk === undefined) {
    throw new OhttpError(
      400,
      "IO.MIMI_APPSERVICE.OHTTP_KEY",
      "key_config.kem",
      `unknown KEM 0x${hex16(kemId)}`,
    );
  }
  if (bytes.length < 3 + npk + 2)
    throw malformed("key_config.truncated", "the key configuration is truncated");
  const length = view.getUint16(3 + npk);
  if (length < 4 || length % 4 !== 0) {
    throw malformed(
      "key_config.algorithms",
      "the symmetric algorithms must be a non-empty list of 4-byte entries",
    );
  }
  if (bytes.length !== 5 + npk + length) {
    throw malformed(
      "key_config.length",
      `the key configuration is ${bytes.length} bytes, ${5 + npk + length} expected`,
    );
  }
  const algorithms: SymmetricAlgorithm[] = [];
  for (let at = 5 + npk; at < bytes.length; at += 4) {
    algorithms.push({ kdfId: view.getUint16(at), aeadId: view.getUint16(at + 2) });
  }
  return { keyId, kemId, publicKey: new Uint8Array(bytes.subarray(3, 3 + npk)), algorithms };
}

/** `application/ohttp-keys` (RFC 9458 §3.2). */
export function encodeKeyConfigList(configs: readonly KeyConfig[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const config of configs) {
    const encoded = encodeKeyConfig(config);
    parts.push(Uint8Array.of(encoded.length >> 8, encoded.length & 0xff), encoded);
  }
  return new Uint8Array(Buffer.concat(parts));
}

/**
 * `application/ohttp-keys`: every entry must be well framed; entries whose KEM is unknown are
 * skipped (a client uses the configurations it supports), other malformed entries are refused.
 */
export function decodeKeyConfigList(bytes: Uint8Array): KeyConfig[] {
  const configs: KeyConfig[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < 2) throw malformed("key_config.list", "a key configuration length is truncated");
    const length = (bytes[at]! << 8) | bytes[at + 1]!;
    if (bytes.length - at - 2 < length)
      throw malformed("key_config.list", "a key configuration is truncated");
    const entry = bytes.subarray(at + 2, at + 2 + length);
    at += 2 + length;
    try {
      configs.push(decodeKeyConfig(entry));
    } catch (err) {
      if (err instanceof OhttpError && err.rule === "key_config.kem") continue;
      throw err;
    }
  }
  if (configs.length === 0)
    throw malformed("key_config.empty", "the list holds no key configuration we can use");
  return configs;
}

function hex16(value: number): string {
  return value.toString(16).padStart(4, "0");
}
