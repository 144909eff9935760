/**
 * RFC 9420 §9, the secret tree, derived on demand: a leaf's ratchets come from the encryption
 * secret down the leaf's direct path, and the tree secrets used on the way are deleted. The
 * expected values are computed here with node:crypto's HKDF and the KDFLabel of §8, not by ts-mls.
 */
import { createHmac, randomBytes } from "node:crypto";
import {
  InternalError,
  consumeRatchet,
  createSecretTree,
  decodeSecretTree,
  defaultKeyRetentionConfig,
  encode,
  ratchetToGeneration,
  secretTreeEncoder,
  type CiphersuiteImpl,
  type SecretTree,
} from "../../src/mls/tsMls";
import { bytes, opaque, suite, uint16, uint32, vector } from "./support";

type SenderData = Parameters<typeof ratchetToGeneration>[1];
const noReuseGuard = new Uint8Array(4) as unknown as SenderData["reuseGuard"];

let cs: CiphersuiteImpl;
beforeAll(async () => {
  cs = await suite();
});

const utf8 = (s: string) => new TextEncoder().encode(s);
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** ExpandWithLabel (RFC 9420 §8): HKDF-Expand (RFC 5869 §2.3) of the KDFLabel, SHA-256. */
function expandWithLabel(secret: Uint8Array, label: string, context: Uint8Array, length: number): Uint8Array {
  const info = bytes(uint16(length), opaque(utf8(`MLS 1.0 ${label}`)), opaque(context));
  const out: number[] = [];
  let previous = new Uint8Array(0);
  for (let i = 1; out.length < length; i++) {
    previous = new Uint8Array(
      createHmac("sha256", secret).update(previous).update(info).update(Uint8Array.of(i)).digest(),
    );
    out.push(...previous);
  }
  return Uint8Array.from(out.slice(0, length));
}

/** The ratchet secrets of leaf `leaf` in a tree of `width` leaves (RFC 9420 §9, §9.1). */
function expectedLeaf(encryptionSecret: Uint8Array, width: number, leaf: number) {
  let node = width - 1; // the root of a full tree of `width` leaves (node indices, RFC 9420 Appendix C)
  let level = Math.log2(width);
  let secret = encryptionSecret;
  const target = leaf * 2;
  while (node !== target) {
    const goLeft = target < node;
    secret = expandWithLabel(secret, "tree", utf8(goLeft ? "left" : "right"), 32);
    level -= 1;
    node = goLeft ? node - (1 << level) : node + (1 << level);
  }
  return {
    handshake: expandWithLabel(secret, "handshake", new Uint8Array(), 32),
    application: expandWithLabel(secret, "application", new Uint8Array(), 32),
  };
}

/** DeriveTreeSecret(secret, label, generation, length) (RFC 9420 §9.1). */
const deriveTreeSecret = (secret: Uint8Array, label: string, generation: number, length: number) =>
  expandWithLabel(secret, label, Uint8Array.from(uint32(generation)), length);

describe("the secret tree, derived on demand (RFC 9420 §9)", () => {
  it("gives a leaf the key and nonce of the RFC's derivation, whatever the caller does to the encryption secret", async () => {
    const encryptionSecret = new Uint8Array(randomBytes(32));
    const kept = encryptionSecret.slice();
    const tree = await createSecretTree(8, encryptionSecret, cs.kdf);
    // ts-mls zeroes the encryption secret right after making the tree.
    encryptionSecret.fill(0);
    const leaf = expectedLeaf(kept, 8, 5);
    const sent = await consumeRatchet(tree, 10, "application", cs);
    expect(sent.generation).toBe(0);
    expect(hex(sent.key)).toBe(hex(deriveTreeSecret(leaf.application, "key", 0, 16)));
    const nonce = deriveTreeSecret(leaf.application, "nonce", 0, 12);
    for (let i = 0; i < 4; i++) nonce[i]! ^= sent.reuseGuard[i]!;
    expect(hex(sent.nonce)).toBe(hex(nonce));
    // The handshake ratchet of another leaf, at generation 2, as a receiver reaches it.
    const other = expectedLeaf(kept, 8, 2);
    const received = await ratchetToGeneration(
      sent.newTree,
      { leafIndex: 2, generation: 2, reuseGuard: noReuseGuard },
      "commit",
      defaultKeyRetentionConfig,
      cs,
    );
    let handshake = other.handshake;
    for (let generation = 0; generation < 2; generation++)
      handshake = deriveTreeSecret(handshake, "secret", generation, 32);
    expect(hex(received.key)).toBe(hex(deriveTreeSecret(handshake, "key", 2, 16)));
  });

  it("deletes the tree secrets it used and keeps only the siblings of the path (RFC 9420 §9.2)", async () => {
    const encryptionSecret = new Uint8Array(randomBytes(32));
    const tree = await createSecretTree(8, encryptionSecret, cs.kdf);
    expect(Object.keys(tree.secrets)).toEqual(["7"]);
    const { newTree } = await consumeRatchet(tree, 10, "application", cs);
    // Path 7 → 11 → 9 → 10: the secrets of 3, 13 and 8 wait; 7, 11, 9 and 10 are gone.
    expect(
      Object.keys(newTree.secrets)
        .map(Number)
        .sort((a, b) => a - b),
    ).toEqual([3, 8, 13]);
    expect(Object.keys(newTree.leaves)).toEqual(["10"]);
    const secrets = Object.values(newTree.secrets).map(hex);
    expect(secrets).not.toContain(hex(encryptionSecret));
    // The old tree is untouched: a state that was not kept still derives what it derived.
    expect(Object.keys(tree.secrets)).toEqual(["7"]);
    // The sibling's leaf derives from the waiting secret alone.
    const sibling = await consumeRatchet(newTree, 8, "application", cs);
    expect(
      Object.keys(sibling.newTree.secrets)
        .map(Number)
        .sort((a, b) => a - b),
    ).toEqual([3, 13]);
    expect(hex(sibling.key)).toBe(
      hex(deriveTreeSecret(expectedLeaf(encryptionSecret, 8, 4).application, "key", 0, 16)),
    );
  });

  it("refuses a leaf outside the tree or a parent node", async () => {
    const tree = await createSecretTree(4, new Uint8Array(32), cs.kdf);
    await expect(consumeRatchet(tree, 8, "application", cs)).rejects.toThrow(InternalError);
    await expect(consumeRatchet(tree, 3, "application", cs)).rejects.toThrow(InternalError);
    await expect(
      ratchetToGeneration(
        tree,
        { leafIndex: 4, generation: 0, reuseGuard: noReuseGuard },
        "application",
        defaultKeyRetentionConfig,
        cs,
      ),
    ).rejects.toThrow(InternalError);
    await expect(consumeRatchet(tree, 6, "application", cs)).resolves.toBeDefined();
  });

  it("encodes in a few bytes however large the group, and decodes what it encoded", async () => {
    const tree = await createSecretTree(1024, new Uint8Array(randomBytes(32)), cs.kdf);
    const { newTree } = await consumeRatchet(tree, 10, "commit", cs);
    const encoded = encode(secretTreeEncoder)(newTree);
    expect(encoded[0]).toBe(0xff);
    expect(encoded.length).toBeLessThan(600);
    const [decoded, length] = decodeSecretTree(encoded, 0)!;
    expect(length).toBe(encoded.length);
    expect(decoded).toEqual(newTree);
  });

  it("still decodes the eager encoding of earlier releases: every node's ratchets in a vector", async () => {
    const generationSecret = (secret: Uint8Array, generation: number) =>
      bytes(opaque(secret), uint32(generation), vector([]));
    const ratchets = [0, 1, 2].map(() => ({
      handshake: new Uint8Array(randomBytes(32)),
      application: new Uint8Array(randomBytes(32)),
    }));
    // struct { GenerationSecret handshake; GenerationSecret application; } SecretTreeNode; <V>
    const legacy = vector(
      ratchets.map((r) => bytes(generationSecret(r.handshake, 0), generationSecret(r.application, 3))),
    );
    const [decoded, length] = decodeSecretTree(legacy, 0)!;
    expect(length).toBe(legacy.length);
    expect(decoded.leafWidth).toBe(2);
    expect(Object.keys(decoded.secrets)).toEqual([]);
    expect(Object.keys(decoded.leaves)).toEqual(["0", "2"]);
    const tree: SecretTree = decoded;
    const sent = await consumeRatchet(tree, 2, "application", cs);
    expect(sent.generation).toBe(3);
    expect(hex(sent.key)).toBe(hex(deriveTreeSecret(ratchets[2]!.application, "key", 3, 16)));
  });
});
