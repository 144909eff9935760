import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  sign as nodeSign,
  timingSafeEqual,
  verify as nodeVerify,
  type KeyObject,
} from "node:crypto";
import { CryptoError, type CiphersuiteImpl } from "./tsMls";

/**
 * The primitives of MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 that ts-mls runs through
 * WebCrypto, which imports a key object on every call (an Ed25519 signature there costs about a
 * millisecond, most of it importing the key): here on node:crypto, synchronously, with key
 * objects cached. SHA-256, HMAC-SHA-256, HKDF-SHA-256 (RFC 5869), AES-128-GCM (ciphertext then
 * 16-byte tag, as WebCrypto gives it) and Ed25519 (RFC 8032, deterministic) give byte for byte
 * what the library's own implementations give (test/mls/fastSuite.test.ts); HPKE and key
 * generation stay the library's.
 */
export function withFastPrimitives(suite: CiphersuiteImpl): CiphersuiteImpl {
  if (suite.name !== "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519") return suite;
  const hmac = (key: Uint8Array, data: Uint8Array) =>
    new Uint8Array(createHmac("sha256", key).update(data).digest());
  return {
    ...suite,
    hash: {
      digest: async (data) => new Uint8Array(createHash("sha256").update(data).digest()),
      mac: async (key, data) => hmac(key, data),
      verifyMac: async (key, mac, data) => {
        const expected = hmac(key, data);
        return expected.length === mac.length && timingSafeEqual(expected, mac);
      },
    },
    kdf: {
      size: 32,
      extract: async (salt, ikm) => hmac(salt, ikm),
      expand: async (prk, info, length) => hkdfExpand(prk, info, length),
    },
    signature: {
      ...suite.signature,
      sign: async (signKey, message) => new Uint8Array(nodeSign(null, message, privateKeyOf(signKey))),
      verify: async (publicKey, message, signature) => {
        const key = publicKey.length === 32 ? publicKeyOf(publicKey) : undefined;
        return key !== undefined && signature.length === 64 && nodeVerify(null, message, key, signature);
      },
    },
    hpke: {
      ...suite.hpke,
      encryptAead: async (key, nonce, aad, plaintext) => {
        const cipher = createCipheriv("aes-128-gcm", key, nonce);
        if (aad !== undefined && aad.length > 0) cipher.setAAD(aad);
        return new Uint8Array(Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]));
      },
      decryptAead: async (key, nonce, aad, ciphertext) => {
        if (ciphertext.length < 16) throw new CryptoError("AEAD ciphertext shorter than its tag");
        const decipher = createDecipheriv("aes-128-gcm", key, nonce);
        if (aad !== undefined && aad.length > 0) decipher.setAAD(aad);
        decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
        try {
          return new Uint8Array(
            Buffer.concat([
              decipher.update(ciphertext.subarray(0, ciphertext.length - 16)),
              decipher.final(),
            ]),
          );
        } catch {
          throw new CryptoError("AEAD decryption failed");
        }
      },
    },
  };
}

function hkdfExpand(prk: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  if (length > 255 * 32) throw new CryptoError("HKDF-Expand length too large");
  const out = new Uint8Array(length);
  let previous = new Uint8Array(0);
  for (let i = 1, at = 0; at < length; i++) {
    previous = new Uint8Array(
      createHmac("sha256", prk).update(previous).update(info).update(Uint8Array.of(i)).digest(),
    );
    out.set(previous.subarray(0, Math.min(32, length - at)), at);
    at += 32;
  }
  return out;
}

/** PKCS#8 prefix of a raw 32-byte Ed25519 private key (RFC 8410 §7). */
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
/** SubjectPublicKeyInfo prefix of a raw 32-byte Ed25519 public key (RFC 8410 §4). */
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const MAX_CACHED_KEYS = 10_000;
const privateKeys = new Map<string, KeyObject>();
const publicKeys = new Map<string, KeyObject>();

function cached(cache: Map<string, KeyObject>, bytes: Uint8Array, make: () => KeyObject): KeyObject {
  const id = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let key = cache.get(id);
  if (key === undefined) {
    key = make();
    if (cache.size >= MAX_CACHED_KEYS) cache.delete(cache.keys().next().value as string);
    cache.set(id, key);
  }
  return key;
}

function privateKeyOf(signKey: Uint8Array): KeyObject {
  return cached(privateKeys, signKey, () =>
    createPrivateKey({
      key: signKey.length === 32 ? Buffer.concat([PKCS8_PREFIX, signKey]) : Buffer.from(signKey),
      format: "der",
      type: "pkcs8",
    }),
  );
}

function publicKeyOf(publicKey: Uint8Array): KeyObject {
  return cached(publicKeys, publicKey, () =>
    createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: "der", type: "spki" }),
  );
}
