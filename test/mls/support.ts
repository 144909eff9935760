/**
 * Shared set-up for the ts-mls patch tests: members and groups on real ts-mls, and a small TLS
 * presentation-language writer (RFC 9420 §2.1) for building expected bytes by hand.
 */
import {
  SUPPORTED_CIPHERSUITE,
  ciphersuite,
  createCommit,
  createGroup,
  defaultLifetime,
  generateKeyPackageWithKey,
  joinGroup,
  processMessage,
  acceptAll,
  emptyPskIndex,
  makePskIndex,
  signKeyPackage,
  signLeafNodeKeyPackage,
  type Capabilities,
  type CiphersuiteImpl,
  type ClientState,
  type Extension,
  type KeyPackage,
  type LeafNode,
  type Lifetime,
  type MLSMessage,
  type PrivateKeyPackage,
  type Proposal,
} from "../../src/mls/tsMls";

export function suite(): Promise<CiphersuiteImpl> {
  return ciphersuite(SUPPORTED_CIPHERSUITE);
}

// ---- TLS presentation language, written out by hand (RFC 9420 §2.1) ----

export function bytes(...parts: (Uint8Array | number[])[]): Uint8Array {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

export function uint8(value: number): number[] {
  return [value & 0xff];
}

export function uint16(value: number): number[] {
  return [(value >> 8) & 0xff, value & 0xff];
}

export function uint32(value: number): number[] {
  return [(value >>> 24) & 0xff, (value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff];
}

export function uint64(value: bigint): number[] {
  const out: number[] = [];
  for (let shift = 56n; shift >= 0n; shift -= 8n) out.push(Number((value >> shift) & 0xffn));
  return out;
}

/** RFC 9420 §2.1.2: the variable-length integer that prefixes every `<V>` vector. */
export function varint(length: number): number[] {
  if (length < 0x40) return [length];
  if (length < 0x4000) return [0x40 | (length >> 8), length & 0xff];
  if (length < 0x40000000)
    return [0x80 | (length >>> 24), (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff];
  throw new Error("length too large for this test writer");
}

/** `opaque data<V>` */
export function opaque(data: Uint8Array | number[]): Uint8Array {
  return bytes(varint(data.length), data);
}

/** `T items<V>`: the byte length of the encoded items, then the items. */
export function vector(items: (Uint8Array | number[])[]): Uint8Array {
  return opaque(bytes(...items));
}

/** `struct { uint16 credential_type = basic(1); opaque identity<V>; } Credential` (RFC 9420 §5.3) */
export function basicCredential(identity: Uint8Array): Uint8Array {
  return bytes(uint16(1), opaque(identity));
}

/** `struct { ExtensionType extension_type; opaque extension_data<V>; } Extension` (RFC 9420 §7.2) */
export function extension(type: number, data: Uint8Array): Uint8Array {
  return bytes(uint16(type), opaque(data));
}

// ---- members and groups ----

/** Capabilities without GREASE values, so that hand-built encodings are deterministic. */
export const CAPABILITIES: Capabilities = {
  versions: ["mls10"],
  ciphersuites: [SUPPORTED_CIPHERSUITE],
  extensions: [],
  proposals: [],
  credentials: ["basic"],
};

/** The hand encoding of `CAPABILITIES` (RFC 9420 §7.2 Capabilities). */
export const CAPABILITIES_BYTES = bytes(
  vector([uint16(1)]), // versions: mls10
  vector([uint16(1)]), // cipher_suites: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
  vector([]), // extensions
  vector([]), // proposals
  vector([uint16(1)]), // credentials: basic
);

export interface Member {
  identity: Uint8Array;
  signaturePublicKey: Uint8Array;
  signaturePrivateKey: Uint8Array;
  keyPackage: KeyPackage;
  privatePackage: PrivateKeyPackage;
}

export interface MemberOptions {
  lifetime?: Lifetime;
  /** Reuse another member's signature key pair (a second device with the same key). */
  signatureKeysOf?: Member;
}

export async function member(
  cs: CiphersuiteImpl,
  name: string,
  options: MemberOptions = {},
): Promise<Member> {
  const identity = new TextEncoder().encode(name);
  const signatureKeys =
    options.signatureKeysOf !== undefined
      ? {
          signKey: options.signatureKeysOf.signaturePrivateKey,
          publicKey: options.signatureKeysOf.signaturePublicKey,
        }
      : await cs.signature.keygen();
  const { publicPackage, privatePackage } = await generateKeyPackageWithKey(
    { credentialType: "basic", identity },
    CAPABILITIES,
    options.lifetime ?? defaultLifetime,
    [],
    signatureKeys,
    cs,
  );
  return {
    identity,
    signaturePublicKey: signatureKeys.publicKey,
    signaturePrivateKey: signatureKeys.signKey,
    keyPackage: publicPackage,
    privatePackage,
  };
}

let groupCounter = 0;

export function newGroupId(): Uint8Array {
  groupCounter += 1;
  return new TextEncoder().encode(`group-${groupCounter}-${Date.now()}`);
}

export function startGroup(
  cs: CiphersuiteImpl,
  creator: Member,
  extensions: Extension[] = [],
  groupId: Uint8Array = newGroupId(),
): Promise<ClientState> {
  return createGroup(groupId, creator.keyPackage, creator.privatePackage, extensions, cs);
}

export interface CommitResult {
  committer: ClientState;
  message: MLSMessage;
  welcome: Awaited<ReturnType<typeof createCommit>>["welcome"];
}

/** A public commit by `state` of the given proposals, with the ratchet tree in the Welcome. */
export async function commit(
  cs: CiphersuiteImpl,
  state: ClientState,
  proposals: Proposal[],
): Promise<CommitResult> {
  const result = await createCommit(
    { state, cipherSuite: cs },
    { extraProposals: proposals, wireAsPublicMessage: true, ratchetTreeExtension: true },
  );
  return { committer: result.newState, message: result.commit, welcome: result.welcome };
}

export async function receive(
  cs: CiphersuiteImpl,
  state: ClientState,
  message: MLSMessage,
): Promise<ClientState> {
  if (message.wireformat !== "mls_public_message" && message.wireformat !== "mls_private_message") {
    throw new Error(`cannot process a ${message.wireformat}`);
  }
  const result = await processMessage(message, state, makePskIndex(state, {}), acceptAll, cs);
  if (result.kind !== "newState") throw new Error(`expected a new state, got ${result.kind}`);
  return result.newState;
}

export async function join(
  cs: CiphersuiteImpl,
  joiner: Member,
  welcome: CommitResult["welcome"],
): Promise<ClientState> {
  if (welcome === undefined) throw new Error("the commit has no Welcome");
  return joinGroup(welcome, joiner.keyPackage, joiner.privatePackage, emptyPskIndex, cs);
}

/** Alice creates a group and adds Bob; both states are at epoch 1. */
export async function aliceAndBob(
  cs: CiphersuiteImpl,
  extensions: Extension[] = [],
): Promise<{ alice: Member; bob: Member; aliceState: ClientState; bobState: ClientState }> {
  const alice = await member(cs, "@alice:a.example");
  const bob = await member(cs, "@bob:b.example");
  const created = await startGroup(cs, alice, extensions);
  const added = await commit(cs, created, [{ proposalType: "add", add: { keyPackage: bob.keyPackage } }]);
  const bobState = await join(cs, bob, added.welcome);
  return { alice, bob, aliceState: added.committer, bobState };
}

export function addProposal(keyPackage: KeyPackage): Proposal {
  return { proposalType: "add", add: { keyPackage } };
}

export function removeProposal(leafIndex: number): Proposal {
  return { proposalType: "remove", remove: { removed: leafIndex } };
}

export interface KeyPackageChanges {
  hpkePublicKey?: Uint8Array;
  cipherSuite?: KeyPackage["cipherSuite"];
  version?: KeyPackage["version"];
}

/** `owner`'s KeyPackage with some fields replaced, its leaf node and itself signed again by `owner`. */
export async function alteredKeyPackage(
  cs: CiphersuiteImpl,
  owner: Member,
  changes: KeyPackageChanges,
): Promise<KeyPackage> {
  const original = owner.keyPackage;
  const { signature: _leafSignature, ...leafTbs } = original.leafNode;
  const leafNode = await signLeafNodeKeyPackage(
    { ...leafTbs, hpkePublicKey: changes.hpkePublicKey ?? leafTbs.hpkePublicKey },
    owner.signaturePrivateKey,
    cs.signature,
  );
  const { signature: _signature, ...tbs } = original;
  return signKeyPackage(
    {
      ...tbs,
      leafNode,
      cipherSuite: changes.cipherSuite ?? tbs.cipherSuite,
      version: changes.version ?? tbs.version,
    },
    owner.signaturePrivateKey,
    cs.signature,
  );
}

export function leafOf(state: ClientState, leafIndex: number): LeafNode {
  const node = state.ratchetTree[leafIndex * 2];
  if (node?.nodeType !== "leaf") throw new Error(`leaf ${leafIndex} is blank`);
  return node.leaf;
}
