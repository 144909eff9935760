import type { Extension, GroupContext, KeyPackage, LeafNode } from "ts-mls";
import { extensionTypeToNumber } from "ts-mls/extension.js";
import { encodeKeyPackageTBS } from "ts-mls/keyPackage.js";
import { encodeLeafNodeTBS } from "ts-mls/leafNode.js";
import { decodeRequiredCapabilities } from "ts-mls/requiredCapabilities.js";
import type { MlsObserverErrorCode } from "./errors";
import { refuse } from "./errors";
import type { PublicTree } from "./publicTree";
import { verifyWithLabel } from "./suite";
import { decodeExactly, identityOf } from "./wire";

/** The length of a DHKEM(X25519) public key (RFC 9180 §7.1: Npk). */
const HPKE_PUBLIC_KEY_LENGTH = 32;

/** Where a leaf node appears, which fixes its leaf_node_source and what its signature covers. */
export type LeafNodeOrigin =
  | { source: "key_package" }
  | { source: "update" | "commit"; groupId: Uint8Array; leafIndex: number };

export interface LeafNodeCheck {
  origin: LeafNodeOrigin;
  /** The GroupContext whose extensions the leaf must support (the new ones when a commit changes them). */
  groupContext: GroupContext;
  /** The tree the leaf enters, before it is in it. */
  tree: PublicTree;
  /** The leaf the node replaces (Update, commit path): its own old keys do not count as reuse. */
  replacesLeaf?: number;
  /** Seconds since the epoch, for a KeyPackage's lifetime. */
  now: bigint;
  /**
   * The leaf is already in the tree (a tree a joiner checks): the tree checked key uniqueness,
   * the caller checks credential types across all leaves at once, and the lifetime is not
   * checked, as a KeyPackage may expire after its leaf joined (RFC 9420 §7.3 makes the check on
   * receipt only RECOMMENDED).
   */
  existing?: boolean;
  /** The errcode of a refusal: a bad leaf in an Add or Update is a bad proposal, in a path a bad path. */
  errcode: MlsObserverErrorCode;
}

/** RFC 9420 §7.3 Leaf Node Validation, for a leaf node about to enter the tree. */
export function validateLeafNode(leaf: LeafNode, check: LeafNodeCheck): void {
  const { origin, groupContext, tree, errcode } = check;
  const fail: (rule: string, message: string) => never = (rule, message) =>
    refuse(errcode, `leaf_node.${rule}`, message);

  if (leaf.leafNodeSource !== origin.source) {
    fail("source", `the leaf node's source is ${leaf.leafNodeSource}, it must be ${origin.source}`);
  }
  // LM-04 §Device Credentials: members present basic credentials; their identity is what the
  // room's policy judges.
  if (identityOf(leaf.credential) === undefined) {
    fail("credential", `credentials of type ${leaf.credential.credentialType} are not accepted`);
  }
  if (leaf.hpkePublicKey.length !== HPKE_PUBLIC_KEY_LENGTH)
    fail("encryption_key", "the encryption key is not an X25519 key");

  const tbs =
    origin.source === "key_package"
      ? encodeLeafNodeTBS({ ...leaf, leafNodeSource: "key_package" } as Parameters<
          typeof encodeLeafNodeTBS
        >[0])
      : encodeLeafNodeTBS({ ...leaf, groupId: origin.groupId, leafIndex: origin.leafIndex } as Parameters<
          typeof encodeLeafNodeTBS
        >[0]);
  if (!verifyWithLabel(leaf.signaturePublicKey, "LeafNodeTBS", tbs, leaf.signature)) {
    fail("signature", "the leaf node's signature does not verify with its signature key");
  }

  const capabilities = leaf.capabilities;
  // RFC 9420 §11.1: every member supports the group's protocol version and cipher suite.
  if (
    !capabilities.versions.includes(groupContext.version) ||
    !capabilities.ciphersuites.includes(groupContext.cipherSuite)
  ) {
    fail("capabilities", "the leaf node does not support the group's protocol version and cipher suite");
  }
  const required = requiredCapabilitiesOf(groupContext.extensions);
  if (required !== undefined) {
    const supported =
      required.extensionTypes.every((t) => capabilities.extensions.includes(t)) &&
      required.proposalTypes.every((t) => capabilities.proposals.includes(t)) &&
      required.credentialTypes.every((t) => capabilities.credentials.includes(t));
    if (!supported) fail("required_capabilities", "the leaf node lacks a capability the group requires");
  }
  // RFC 9420 §13.4: every GroupContext extension must be supported by every member.
  if (!extensionsListed(groupContext.extensions, capabilities.extensions)) {
    fail("capabilities", "the leaf node does not support every extension of the group");
  }
  if (!extensionsListed(leaf.extensions, capabilities.extensions)) {
    fail("extensions", "the leaf node carries an extension its capabilities do not list");
  }

  // The credential type is supported by every member, and this leaf supports every type in use.
  const replaced = check.replacesLeaf === undefined ? undefined : tree.leaf(check.replacesLeaf);
  if (!check.existing) {
    if (!tree.allMembersSupport(leaf.credential.credentialType, replaced)) {
      fail("credential", `a member does not support the credential type ${leaf.credential.credentialType}`);
    }
    for (const type of tree.credentialTypesInUse(replaced)) {
      if (!(capabilities.credentials as readonly string[]).includes(type))
        fail("credential", `the leaf node does not support the credential type ${type}`);
    }
  }

  if (check.existing) return;

  if (leaf.leafNodeSource === "key_package") {
    const { notBefore, notAfter } = leaf.lifetime;
    if (check.now < notBefore || check.now > notAfter)
      fail("lifetime", "the current time is outside the leaf's lifetime");
  }

  // Unique among the members: encryption keys in every node, signature keys among leaves. An
  // Update or a commit must change the encryption key of the leaf it replaces (§7.3, §12.4.2).
  if (tree.encryptionKeyHolder(leaf.hpkePublicKey) !== undefined) {
    fail("unique_keys", "the encryption key is already in the tree");
  }
  const signatureHolder = tree.signatureKeyHolder(leaf.signaturePublicKey);
  if (signatureHolder !== undefined && signatureHolder !== check.replacesLeaf) {
    fail("unique_keys", `the signature key is already used by leaf ${signatureHolder}`);
  }
}

/** RFC 9420 §10.1 KeyPackage Validation, for the KeyPackage of an Add. */
export function validateKeyPackage(
  keyPackage: KeyPackage,
  groupContext: GroupContext,
  tree: PublicTree,
  now: bigint,
): void {
  const fail: (rule: string, message: string) => never = (rule, message) =>
    refuse("IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", `keypackage.${rule}`, message);
  if (keyPackage.cipherSuite !== groupContext.cipherSuite) {
    fail(
      "ciphersuite",
      `the KeyPackage is for ${keyPackage.cipherSuite}, the group uses ${groupContext.cipherSuite}`,
    );
  }
  if (keyPackage.version !== groupContext.version) {
    fail("version", `the KeyPackage is for protocol version ${keyPackage.version}`);
  }
  validateLeafNode(keyPackage.leafNode, {
    origin: { source: "key_package" },
    groupContext,
    tree,
    now,
    errcode: "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
  });
  if (
    !verifyWithLabel(
      keyPackage.leafNode.signaturePublicKey,
      "KeyPackageTBS",
      encodeKeyPackageTBS(keyPackage),
      keyPackage.signature,
    )
  ) {
    fail("signature", "the KeyPackage's signature does not verify");
  }
  if (keyPackage.initKey.length !== HPKE_PUBLIC_KEY_LENGTH)
    fail("init_key", "the init key is not an X25519 key");
  if (Buffer.compare(keyPackage.initKey, keyPackage.leafNode.hpkePublicKey) === 0) {
    fail("init_key", "the init key equals the leaf's encryption key");
  }
  // RFC 9420 §10: extensions of the KeyPackage must be listed in the leaf's capabilities.
  if (!extensionsListed(keyPackage.extensions, keyPackage.leafNode.capabilities.extensions)) {
    fail("extensions", "the KeyPackage carries an extension its leaf's capabilities do not list");
  }
}

/** Whether each extension of a non-default type is listed (default types need not be, RFC 9420 §7.2). */
export function extensionsListed(extensions: Extension[], listed: number[]): boolean {
  return extensions.every(
    (e) => typeof e.extensionType !== "number" || listed.includes(extensionTypeToNumber(e.extensionType)),
  );
}

export function requiredCapabilitiesOf(extensions: Extension[]) {
  const extension = extensions.find((e) => e.extensionType === "required_capabilities");
  if (extension === undefined) return undefined;
  return decodeExactly(decodeRequiredCapabilities, extension.extensionData, "required_capabilities");
}
