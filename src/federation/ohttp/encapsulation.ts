import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
} from "node:crypto";
import { Chacha20Poly1305 } from "@hpke/chacha20poly1305";
import { Aes128Gcm, Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from "@hpke/core";
import { malformed, OhttpError, PROBLEM_OHTTP_KEY } from "./errors";
import {
  AEAD_AES_128_GCM,
  AEAD_AES_256_GCM,
  AEAD_CHACHA20_POLY1305,
  KDF_HKDF_SHA256,
  KEM_X25519_HKDF_SHA256,
  type KeyConfig,
  type SymmetricAlgorithm,
} from "./keyConfig";

/**
 * RFC 9458 §4: Encapsulated Requests and Responses. HPKE (RFC 9180) is @hpke/core's, with the
 * ChaCha20-Poly1305 module of the same family; the response's key schedule (§4.4: HKDF, then the
 * AEAD) is small and uses node:crypto. No I/O; the only randomness is HPKE's ephemeral key and
 * the response nonce, both injectable so RFC 9458 Appendix A can be reproduced.
 */

const REQUEST_LABEL = new TextEncoder().encode("message/bhttp request");
const RESPONSE_LABEL = new TextEncoder().encode("message/bhttp response");
/** Nenc of DHKEM(X25519, HKDF-SHA256) (RFC 9180 §7.1). */
const NENC = 32;
const HEADER_BYTES = 7;
const TAG_BYTES = 16;

interface Aead {
  nk: number;
  nn: number;
  cipher: "aes-128-gcm" | "aes-256-gcm" | "chacha20-poly1305";
  make(): Aes128Gcm | Aes256Gcm | Chacha20Poly1305;
}

const AEADS = new Map<number, Aead>([
  [AEAD_AES_128_GCM, { nk: 16, nn: 12, cipher: "aes-128-gcm", make: () => new Aes128Gcm() }],
  [AEAD_AES_256_GCM, { nk: 32, nn: 12, cipher: "aes-256-gcm", make: () => new Aes256Gcm() }],
  [
    AEAD_CHACHA20_POLY1305,
    { nk: 32, nn: 12, cipher: "chacha20-poly1305", make: () => new Chacha20Poly1305() },
  ],
]);

/** What a client prefers, in order, among what a gateway offers. */
export const CLIENT_ALGORITHMS: readonly SymmetricAlgorithm[] = [
  { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_128_GCM },
  { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_CHACHA20_POLY1305 },
  { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_256_GCM },
];

/** What our gateway offers: RFC 9458 Appendix A's pair. */
export const GATEWAY_ALGORITHMS: readonly SymmetricAlgorithm[] = [
  { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_128_GCM },
  { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_CHACHA20_POLY1305 },
];

const suites = new Map<number, CipherSuite>();

function suiteFor(aeadId: number): CipherSuite {
  let suite = suites.get(aeadId);
  if (suite === undefined) {
    const aead = AEADS.get(aeadId);
    if (aead === undefined) throw new RangeError(`AEAD 0x${aeadId.toString(16)} is not supported`);
    suite = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: aead.make() });
    suites.set(aeadId, suite);
  }
  return suite;
}

type HpkeKey = Awaited<ReturnType<CipherSuite["kem"]["importKey"]>>;

/** What both ends keep to protect and open the response (RFC 9458 §4.4). */
export interface ResponseContext {
  enc: Uint8Array;
  aeadId: number;
  /** `context.Export("message/bhttp response", max(Nn, Nk))`. */
  secret: Uint8Array;
}

/** The gateway's view of one key: its configuration and HPKE private key. */
export interface GatewayKey {
  config: KeyConfig;
  privateKey: HpkeKey;
}

export interface ParsedRequest {
  keyId: number;
  kemId: number;
  kdfId: number;
  aeadId: number;
  header: Uint8Array;
  enc: Uint8Array;
  ciphertext: Uint8Array;
}

function requestHeader(keyId: number, algorithm: SymmetricAlgorithm): Uint8Array {
  const header = new Uint8Array(HEADER_BYTES);
  const view = new DataView(header.buffer);
  view.setUint8(0, keyId);
  view.setUint16(1, KEM_X25519_HKDF_SHA256);
  view.setUint16(3, algorithm.kdfId);
  view.setUint16(5, algorithm.aeadId);
  return header;
}

function infoFor(header: Uint8Array): Uint8Array {
  return new Uint8Array(Buffer.concat([REQUEST_LABEL, Uint8Array.of(0), header]));
}

/** The first of our algorithms that `config` offers; undefined if none or another KEM. */
export function chooseAlgorithm(config: KeyConfig): SymmetricAlgorithm | undefined {
  if (config.kemId !== KEM_X25519_HKDF_SHA256) return undefined;
  return CLIENT_ALGORITHMS.find((ours) =>
    config.algorithms.some((theirs) => theirs.kdfId === ours.kdfId && theirs.aeadId === ours.aeadId),
  );
}

/**
 * RFC 9458 §4.3, client side. `ephemeral` fixes HPKE's ephemeral key pair (raw X25519 bytes), for
 * RFC 9458 Appendix A only; without it a fresh one is drawn for every request.
 */
export async function encapsulateRequest(
  config: KeyConfig,
  request: Uint8Array,
  options: {
    algorithm?: SymmetricAlgorithm;
    ephemeral?: { privateKey: Uint8Array; publicKey: Uint8Array };
  } = {},
): Promise<{ encapsulated: Uint8Array; context: ResponseContext }> {
  const algorithm = options.algorithm ?? chooseAlgorithm(config);
  if (algorithm === undefined || chooseAlgorithm({ ...config, algorithms: [algorithm] }) === undefined) {
    throw new OhttpError(
      400,
      "IO.MIMI_APPSERVICE.OHTTP_KEY",
      "client.algorithm",
      "the key configuration offers no algorithm we use",
    );
  }
  const suite = suiteFor(algorithm.aeadId);
  const header = requestHeader(config.keyId, algorithm);
  const recipientPublicKey = await suite.kem.importKey("raw", toArrayBuffer(config.publicKey), true);
  const ekm =
    options.ephemeral === undefined
      ? undefined
      : {
          privateKey: await suite.kem.importKey("raw", toArrayBuffer(options.ephemeral.privateKey), false),
          publicKey: await suite.kem.importKey("raw", toArrayBuffer(options.ephemeral.publicKey), true),
        };
  const sender = await suite.createSenderContext({
    recipientPublicKey,
    info: toArrayBuffer(infoFor(header)),
    ...(ekm === undefined ? {} : { ekm }),
  });
  const ciphertext = new Uint8Array(await sender.seal(toArrayBuffer(request)));
  const enc = new Uint8Array(sender.enc);
  const secret = new Uint8Array(
    await sender.export(toArrayBuffer(RESPONSE_LABEL), secretLength(algorithm.aeadId)),
  );
  return {
    encapsulated: new Uint8Array(Buffer.concat([header, enc, ciphertext])),
    context: { enc, aeadId: algorithm.aeadId, secret },
  };
}

/** RFC 9458 §4.3, gateway side, first half: the header and `enc`, before any key is used. */
export function parseEncapsulatedRequest(bytes: Uint8Array): ParsedRequest {
  if (bytes.length < HEADER_BYTES + NENC + TAG_BYTES) {
    throw malformed(
      "ohttp.truncated",
      `an Encapsulated Request is at least ${HEADER_BYTES + NENC + TAG_BYTES} bytes`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const kemId = view.getUint16(1);
  if (kemId !== KEM_X25519_HKDF_SHA256) {
    throw keyProblem("ohttp.kem", `KEM 0x${kemId.toString(16).padStart(4, "0")} is not offered`);
  }
  return {
    keyId: view.getUint8(0),
    kemId,
    kdfId: view.getUint16(3),
    aeadId: view.getUint16(5),
    header: bytes.subarray(0, HEADER_BYTES),
    enc: bytes.subarray(HEADER_BYTES, HEADER_BYTES + NENC),
    ciphertext: bytes.subarray(HEADER_BYTES + NENC),
  };
}

/**
 * RFC 9458 §4.3, gateway side, second half: opens the request with the key its ID named. A
 * combination of KDF and AEAD the key does not offer is refused as a key problem (§5.3); a
 * ciphertext that does not open (truncated, tampered, for another key) is OHTTP_MALFORMED.
 */
export async function openRequest(
  key: GatewayKey,
  parsed: ParsedRequest,
): Promise<{ request: Uint8Array; context: ResponseContext }> {
  const offered = key.config.algorithms.some((a) => a.kdfId === parsed.kdfId && a.aeadId === parsed.aeadId);
  if (!offered || parsed.kdfId !== KDF_HKDF_SHA256 || !AEADS.has(parsed.aeadId)) {
    throw keyProblem(
      "ohttp.algorithm",
      `key ${parsed.keyId} does not offer KDF 0x${parsed.kdfId.toString(16)} with AEAD 0x${parsed.aeadId.toString(16)}`,
    );
  }
  const suite = suiteFor(parsed.aeadId);
  let request: Uint8Array;
  let secret: Uint8Array;
  try {
    const recipient = await suite.createRecipientContext({
      recipientKey: key.privateKey,
      enc: toArrayBuffer(parsed.enc),
      info: toArrayBuffer(infoFor(parsed.header)),
    });
    request = new Uint8Array(await recipient.open(toArrayBuffer(parsed.ciphertext)));
    secret = new Uint8Array(
      await recipient.export(toArrayBuffer(RESPONSE_LABEL), secretLength(parsed.aeadId)),
    );
  } catch {
    throw malformed("ohttp.decrypt", "the Encapsulated Request does not decrypt");
  }
  return { request, context: { enc: new Uint8Array(parsed.enc), aeadId: parsed.aeadId, secret } };
}

/** RFC 9458 §4.4. `nonce` is drawn at random unless given (RFC 9458 Appendix A fixes it). */
export function encapsulateResponse(
  context: ResponseContext,
  response: Uint8Array,
  nonce?: Uint8Array,
): Uint8Array {
  const aead = AEADS.get(context.aeadId)!;
  const responseNonce = nonce ?? new Uint8Array(randomBytes(Math.max(aead.nn, aead.nk)));
  const { key, iv } = responseKeys(context, responseNonce);
  const cipher =
    aead.cipher === "chacha20-poly1305"
      ? createCipheriv(aead.cipher, key, iv, { authTagLength: TAG_BYTES })
      : createCipheriv(aead.cipher, key, iv, { authTagLength: TAG_BYTES });
  return new Uint8Array(
    Buffer.concat([responseNonce, cipher.update(response), cipher.final(), cipher.getAuthTag()]),
  );
}

/** RFC 9458 §4.4, client side; an answer that does not open is OHTTP_MALFORMED. */
export function decapsulateResponse(context: ResponseContext, bytes: Uint8Array): Uint8Array {
  const aead = AEADS.get(context.aeadId)!;
  const nonceBytes = Math.max(aead.nn, aead.nk);
  if (bytes.length < nonceBytes + TAG_BYTES) {
    throw malformed("ohttp.response_truncated", "the Encapsulated Response is truncated");
  }
  const { key, iv } = responseKeys(context, bytes.subarray(0, nonceBytes));
  try {
    const decipher =
      aead.cipher === "chacha20-poly1305"
        ? createDecipheriv(aead.cipher, key, iv, { authTagLength: TAG_BYTES })
        : createDecipheriv(aead.cipher, key, iv, { authTagLength: TAG_BYTES });
    decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
    return new Uint8Array(
      Buffer.concat([
        decipher.update(bytes.subarray(nonceBytes, bytes.length - TAG_BYTES)),
        decipher.final(),
      ]),
    );
  } catch {
    throw malformed("ohttp.response_decrypt", "the Encapsulated Response does not decrypt");
  }
}

/** `prk = Extract(enc || response_nonce, secret)`, then `Expand(prk, "key", Nk)` and `Expand(prk, "nonce", Nn)`. */
function responseKeys(context: ResponseContext, responseNonce: Uint8Array): { key: Buffer; iv: Buffer } {
  const aead = AEADS.get(context.aeadId)!;
  const salt = Buffer.concat([context.enc, responseNonce]);
  return {
    key: Buffer.from(hkdfSync("sha256", context.secret, salt, "key", aead.nk)),
    iv: Buffer.from(hkdfSync("sha256", context.secret, salt, "nonce", aead.nn)),
  };
}

function secretLength(aeadId: number): number {
  const aead = AEADS.get(aeadId)!;
  return Math.max(aead.nn, aead.nk);
}

/** RFC 9458 §5.3: answered unencrypted, with the `ohttp-key` problem type. */
export function keyProblem(rule: string, message: string): OhttpError {
  return new OhttpError(400, "IO.MIMI_APPSERVICE.OHTTP_KEY", rule, message, {
    type: PROBLEM_OHTTP_KEY,
    title: "key configuration not acceptable",
  });
}

// ---- gateway keys ----

/** A fresh X25519 key pair, raw 32-byte keys. */
export function generateX25519KeyPair(): { privateKey: Uint8Array; publicKey: Uint8Array } {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  return {
    privateKey: new Uint8Array(Buffer.from(privateKey.export({ format: "jwk" }).d!, "base64url")),
    publicKey: new Uint8Array(Buffer.from(publicKey.export({ format: "jwk" }).x!, "base64url")),
  };
}

/** The PKCS #8 prefix of a raw X25519 private key (RFC 8410 §7). */
const PKCS8_X25519 = Buffer.from("302e020100300506032b656e04220420", "hex");

/** The public key of a raw X25519 private key (RFC 7748). */
export function x25519PublicKeyOf(privateKey: Uint8Array): Uint8Array {
  if (privateKey.length !== 32) throw new RangeError("an X25519 private key is 32 bytes");
  const key = createPrivateKey({
    key: Buffer.concat([PKCS8_X25519, privateKey]),
    format: "der",
    type: "pkcs8",
  });
  return new Uint8Array(Buffer.from(createPublicKey(key).export({ format: "jwk" }).x!, "base64url"));
}

/** A gateway key from a raw X25519 private key, offering `algorithms`. */
export async function importGatewayKey(
  keyId: number,
  privateKey: Uint8Array,
  algorithms: readonly SymmetricAlgorithm[] = GATEWAY_ALGORITHMS,
): Promise<GatewayKey> {
  const suite = suiteFor(AEAD_AES_128_GCM);
  return {
    config: {
      keyId,
      kemId: KEM_X25519_HKDF_SHA256,
      publicKey: x25519PublicKeyOf(privateKey),
      algorithms: [...algorithms],
    },
    privateKey: await suite.kem.importKey("raw", toArrayBuffer(privateKey), false),
  };
}

function toArrayBuffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}
