import { randomBytes } from "node:crypto";
import { withFastPrimitives } from "../../src/mls/fastSuite";
import { CryptoError, SUPPORTED_CIPHERSUITE, ciphersuite, type CiphersuiteImpl } from "../../src/mls/tsMls";

const bytes = (n: number) => new Uint8Array(randomBytes(n));

describe("the node:crypto primitives give what ts-mls's own give", () => {
  let stock: CiphersuiteImpl;
  let fast: CiphersuiteImpl;
  beforeAll(async () => {
    stock = await ciphersuite(SUPPORTED_CIPHERSUITE);
    fast = withFastPrimitives(stock);
  });

  it.each([0, 1, 31, 32, 33, 64, 1000])("SHA-256 and HMAC-SHA-256 of %i bytes", async (n) => {
    const data = bytes(n);
    const key = bytes(32);
    expect(await fast.hash.digest(data)).toEqual(await stock.hash.digest(data));
    const mac = await stock.hash.mac(key, data);
    expect(await fast.hash.mac(key, data)).toEqual(mac);
    expect(await fast.hash.verifyMac(key, mac, data)).toBe(true);
    mac[0] ^= 1;
    expect(await fast.hash.verifyMac(key, mac, data)).toBe(false);
    expect(await fast.hash.verifyMac(key, mac.subarray(1), data)).toBe(false);
  });

  it.each([
    [0, 1],
    [32, 16],
    [32, 32],
    [32, 33],
    [0, 64],
    [32, 100],
  ])("HKDF-Extract with a %i-byte salt, then Expand to %i bytes", async (saltLength, length) => {
    const salt = bytes(saltLength);
    const ikm = bytes(32);
    const info = bytes(9);
    const prk = await stock.kdf.extract(salt, ikm);
    expect(await fast.kdf.extract(salt, ikm)).toEqual(prk);
    expect(await fast.kdf.expand(prk, info, length)).toEqual(await stock.kdf.expand(prk, info, length));
    expect(fast.kdf.size).toBe(stock.kdf.size);
  });

  it.each([0, 1, 16, 100])("AES-128-GCM with %i bytes of AAD, both ways", async (aadLength) => {
    const key = bytes(16);
    const nonce = bytes(12);
    const aad = bytes(aadLength);
    const plaintext = bytes(77);
    const sealed = await stock.hpke.encryptAead(key, nonce, aad, plaintext);
    expect(await fast.hpke.encryptAead(key, nonce, aad, plaintext)).toEqual(sealed);
    expect(await fast.hpke.decryptAead(key, nonce, aad, sealed)).toEqual(plaintext);
    const tampered = sealed.slice();
    tampered[tampered.length - 1]! ^= 1;
    await expect(fast.hpke.decryptAead(key, nonce, aad, tampered)).rejects.toBeInstanceOf(CryptoError);
    await expect(fast.hpke.decryptAead(key, nonce, aad, sealed.subarray(0, 10))).rejects.toBeInstanceOf(
      CryptoError,
    );
  });

  it("Ed25519 signs as the library does (PKCS#8 and raw keys) and verifies", async () => {
    const { signKey, publicKey } = await stock.signature.keygen();
    const message = bytes(200);
    const signature = await stock.signature.sign(signKey, message);
    expect(await fast.signature.sign(signKey, message)).toEqual(signature);
    // The raw 32-byte seed is the PKCS#8 key's last 32 bytes.
    expect(await fast.signature.sign(signKey.subarray(signKey.length - 32), message)).toEqual(signature);
    expect(await fast.signature.verify(publicKey, message, signature)).toBe(true);
    const wrong = signature.slice();
    wrong[5]! ^= 1;
    expect(await fast.signature.verify(publicKey, message, wrong)).toBe(false);
    expect(await stock.signature.verify(publicKey, message, wrong)).toBe(false);
    expect(await fast.signature.verify(publicKey.subarray(1), message, signature)).toBe(false);
    expect(await fast.signature.verify(publicKey, message, signature.subarray(1))).toBe(false);
  });
});
