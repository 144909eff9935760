import { createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from "node:crypto";
import { decodeBase64, encodeUnpaddedBase64 } from "./base64";

// DER prefixes wrapping a raw 32-byte ed25519 seed (PKCS#8) and public key (SPKI), RFC 8410.
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** A server's ed25519 signing key (LM-04 §Signing): key ID `ed25519:<version>`. */
export class ServerSigningKey {
  readonly publicKey: Buffer;
  readonly publicKeyBase64: string;
  private readonly privateKey: KeyObject;

  constructor(
    readonly serverName: string,
    readonly keyId: string,
    readonly seed: Buffer,
  ) {
    if (seed.length !== 32) throw new Error(`ed25519 seed must be 32 bytes, got ${seed.length}`);
    this.privateKey = createPrivateKey({
      key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]),
      format: "der",
      type: "pkcs8",
    });
    const spki = createPublicKey(this.privateKey).export({ format: "der", type: "spki" });
    this.publicKey = spki.subarray(spki.length - 32);
    this.publicKeyBase64 = encodeUnpaddedBase64(this.publicKey);
  }

  static generate(serverName: string, keyId: string): ServerSigningKey {
    return new ServerSigningKey(serverName, keyId, randomBytes(32));
  }

  get seedBase64(): string {
    return encodeUnpaddedBase64(this.seed);
  }

  /** Unpadded base64 ed25519 signature over the bytes. */
  sign(bytes: Uint8Array): string {
    return encodeUnpaddedBase64(sign(null, bytes, this.privateKey));
  }

  verifyKey(): VerifyKey {
    return VerifyKey.fromRaw(this.publicKey);
  }
}

/** A public ed25519 key, kept as a parsed KeyObject so each check skips key parsing. */
export class VerifyKey {
  private constructor(
    readonly raw: Buffer,
    private readonly keyObject: KeyObject,
  ) {}

  static fromRaw(raw: Uint8Array): VerifyKey {
    if (raw.length !== 32) throw new Error(`ed25519 public key must be 32 bytes, got ${raw.length}`);
    const buf = Buffer.from(raw);
    const keyObject = createPublicKey({
      key: Buffer.concat([SPKI_ED25519_PREFIX, buf]),
      format: "der",
      type: "spki",
    });
    return new VerifyKey(buf, keyObject);
  }

  static fromBase64(text: string): VerifyKey | undefined {
    const raw = decodeBase64(text);
    if (raw === undefined || raw.length !== 32) return undefined;
    return VerifyKey.fromRaw(raw);
  }

  get base64(): string {
    return encodeUnpaddedBase64(this.raw);
  }

  verify(bytes: Uint8Array, signatureBase64: string): boolean {
    const signature = decodeBase64(signatureBase64);
    if (signature === undefined || signature.length !== 64) return false;
    return verify(null, bytes, this.keyObject, signature);
  }
}
