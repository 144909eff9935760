import type { LeafNode, Node, ParentNode } from "ts-mls";
import { encodeLeafNode } from "ts-mls/leafNode.js";
import { encodeParentHashInput } from "ts-mls/parentHash.js";
import { encodeParentNode } from "ts-mls/parentNode.js";
import { decodeRatchetTree } from "ts-mls/ratchetTree.js";
import { refuse } from "./errors";
import { concatOpaque, hash } from "./suite";
import {
  directPath,
  isLeafNode,
  leafCount,
  leafRange,
  leftChild,
  level,
  parentOf,
  rightChild,
  rootOf,
  siblingOf,
} from "./treeMath";
import { bytesEqual, decodeExactly, keyOf } from "./wire";

/** One node of a leaf's filtered direct path, with the copath child whose resolution it encrypts to. */
export interface PathStep {
  nodeIndex: number;
  copathChild: number;
  /** The resolution of the copath child, as node indices (RFC 9420 §4.1.2). */
  resolution: number[];
}

/** The parent hashes an UpdatePath puts into the tree (RFC 9420 §7.9), from the lowest node up. */
export interface PathParentHashes {
  /** `parent_hash` of each node of the filtered direct path, in the order of the path. */
  nodes: Uint8Array[];
  /** The value the committer's new leaf must carry in its `parent_hash`. */
  leaf: Uint8Array;
}

const EMPTY = new Uint8Array(0);
// RFC 9420 §7.8 NodeType, and the presence octet of optional<T> (§2.1.1).
const LEAF = 1;
const PARENT = 2;
const ABSENT = Uint8Array.of(0);
const PRESENT = Uint8Array.of(1);

/**
 * The public ratchet tree of a group, with every node's tree hash (RFC 9420 §7.8) cached: a change
 * to a node forgets the hashes of that node and its ancestors only, so a commit at 1,000 members
 * rehashes a few paths instead of the 2,000 nodes of the whole tree. It also indexes the
 * encryption and signature keys in use, which must be unique in the tree (RFC 9420 §7.3).
 *
 * Mutations change this object in place; `clone` gives the copy a commit is staged on, so a
 * refused commit leaves the tree it started from untouched.
 */
export class PublicTree {
  private encoded: Uint8Array | undefined;

  private constructor(
    private nodes: (Node | undefined)[],
    private hashes: (Uint8Array | undefined)[],
    /** Each node's LeafNode or ParentNode encoded, reused by tree hashes and the tree's encoding. */
    private nodeBytes: (Uint8Array | undefined)[],
    /** Encryption key (hex) -> the node index holding it. */
    private readonly encryptionKeys: Map<string, number>,
    /** Signature key (hex) -> the leaf index holding it. */
    private readonly signatureKeys: Map<string, number>,
    /** Credential type -> how many leaves present one of that type. */
    private readonly credentialsInUse: Map<string, number>,
    /** Credential type -> how many leaves list it in their capabilities. */
    private readonly credentialsSupported: Map<string, number>,
    private memberCount: number,
  ) {}

  /** Decodes `optional<Node> ratchet_tree<V>` (RFC 9420 §12.4.3.3) and checks its shape and key uniqueness. */
  static decode(bytes: Uint8Array): PublicTree {
    const nodes = decodeExactly(decodeRatchetTree, bytes, "ratchet_tree");
    return PublicTree.fromNodes(nodes);
  }

  static fromNodes(nodes: (Node | undefined)[]): PublicTree {
    const count = nodes.length;
    if (count === 0 || ((count + 1) & count) !== 0) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
        "tree.shape",
        `a ratchet tree has 2^(d+1)-1 nodes, not ${count}`,
      );
    }
    const tree = new PublicTree(
      [],
      new Array<Uint8Array | undefined>(count),
      new Array<Uint8Array | undefined>(count),
      new Map(),
      new Map(),
      new Map(),
      new Map(),
      0,
    );
    tree.nodes = new Array<Node | undefined>(count);
    for (let i = 0; i < count; i++) {
      const node = nodes[i];
      if (node === undefined) continue;
      if ((node.nodeType === "leaf") !== isLeafNode(i)) {
        refuse(
          "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
          "tree.shape",
          `node ${i} is a ${node.nodeType} node in a wrong position`,
        );
      }
      const encryptionKey = keyOf(tree.encryptionKeyOf(node));
      if (tree.encryptionKeys.has(encryptionKey)) {
        refuse(
          "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
          "tree.unique_keys",
          `node ${i} reuses the encryption key of another node`,
        );
      }
      if (node.nodeType === "leaf") {
        const signatureKey = keyOf(node.leaf.signaturePublicKey);
        if (tree.signatureKeys.has(signatureKey)) {
          refuse(
            "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
            "tree.unique_keys",
            `leaf ${i / 2} reuses the signature key of another leaf`,
          );
        }
        tree.signatureKeys.set(signatureKey, i / 2);
        tree.countLeaf(node.leaf, 1);
      }
      tree.encryptionKeys.set(encryptionKey, i);
      tree.nodes[i] = node;
    }
    return tree;
  }

  clone(): PublicTree {
    const copy = new PublicTree(
      this.nodes.slice(),
      this.hashes.slice(),
      this.nodeBytes.slice(),
      new Map(this.encryptionKeys),
      new Map(this.signatureKeys),
      new Map(this.credentialsInUse),
      new Map(this.credentialsSupported),
      this.memberCount,
    );
    copy.encoded = this.encoded;
    return copy;
  }

  get nodeCount(): number {
    return this.nodes.length;
  }

  /** The number of leaves, blank or not. */
  get width(): number {
    return leafCount(this.nodes.length);
  }

  node(nodeIndex: number): Node | undefined {
    return this.nodes[nodeIndex];
  }

  leaf(leafIndex: number): LeafNode | undefined {
    const node = this.nodes[leafIndex * 2];
    return node?.nodeType === "leaf" ? node.leaf : undefined;
  }

  /** The non-blank leaves, as [leaf index, leaf node]. */
  members(): [number, LeafNode][] {
    const members: [number, LeafNode][] = [];
    for (let i = 0; i < this.nodes.length; i += 2) {
      const node = this.nodes[i];
      if (node?.nodeType === "leaf") members.push([i / 2, node.leaf]);
    }
    return members;
  }

  /** The node index holding this encryption key, if any. */
  encryptionKeyHolder(key: Uint8Array): number | undefined {
    return this.encryptionKeys.get(keyOf(key));
  }

  /** The leaf index holding this signature key, if any. */
  signatureKeyHolder(key: Uint8Array): number | undefined {
    return this.signatureKeys.get(keyOf(key));
  }

  /**
   * RFC 9420 §7.3: whether every member but `except` lists this credential type in its
   * capabilities, and the credential types the members but `except` present.
   */
  allMembersSupport(credentialType: string, except?: LeafNode): boolean {
    const exceptSupports =
      except !== undefined && new Set<string>(except.capabilities.credentials).has(credentialType);
    const others = this.memberCount - (except === undefined ? 0 : 1);
    return (this.credentialsSupported.get(credentialType) ?? 0) - (exceptSupports ? 1 : 0) === others;
  }

  credentialTypesInUse(except?: LeafNode): string[] {
    return [...this.credentialsInUse]
      .filter(([type, count]) => count - (except?.credential.credentialType === type ? 1 : 0) > 0)
      .map(([type]) => type);
  }

  /** The tree hash of the whole tree: the GroupContext's tree_hash. */
  rootHash(): Uint8Array {
    return this.treeHash(rootOf(this.nodes.length));
  }

  /** TreeHashInput hashed (RFC 9420 §7.8), from the cache where the subtree did not change. */
  treeHash(nodeIndex: number): Uint8Array {
    const cached = this.hashes[nodeIndex];
    if (cached !== undefined) return cached;
    const content = this.contentBytes(nodeIndex);
    const optionalNode = content === undefined ? [ABSENT] : [PRESENT, content];
    const computed = isLeafNode(nodeIndex)
      ? hash(Buffer.concat([Uint8Array.of(LEAF), uint32(nodeIndex / 2), ...optionalNode]))
      : hash(
          Buffer.concat([
            Uint8Array.of(PARENT),
            ...optionalNode,
            concatOpaque(this.treeHash(leftChild(nodeIndex)), this.treeHash(rightChild(nodeIndex))),
          ]),
        );
    this.hashes[nodeIndex] = computed;
    return computed;
  }

  /** The node's LeafNode or ParentNode, encoded; undefined for a blank node. */
  private contentBytes(nodeIndex: number): Uint8Array | undefined {
    const node = this.nodes[nodeIndex];
    if (node === undefined) return undefined;
    let bytes = this.nodeBytes[nodeIndex];
    if (bytes === undefined) {
      bytes = node.nodeType === "leaf" ? encodeLeafNode(node.leaf) : encodeParentNode(node.parent);
      this.nodeBytes[nodeIndex] = bytes;
    }
    return bytes;
  }

  /** RFC 9420 §4.1.2: the non-blank nodes that cover the subtree, with a parent's unmerged leaves. */
  resolution(nodeIndex: number): number[] {
    const node = this.nodes[nodeIndex];
    if (node !== undefined) {
      if (node.nodeType === "leaf") return [nodeIndex];
      return [nodeIndex, ...node.parent.unmergedLeaves.map((leafIndex) => leafIndex * 2)];
    }
    if (isLeafNode(nodeIndex)) return [];
    return [...this.resolution(leftChild(nodeIndex)), ...this.resolution(rightChild(nodeIndex))];
  }

  /**
   * RFC 9420 §4.1.2: the leaf's direct path without the nodes whose copath child has an empty
   * resolution, lowest node first.
   */
  filteredDirectPath(leafIndex: number): PathStep[] {
    const steps: PathStep[] = [];
    let child = leafIndex * 2;
    for (const nodeIndex of directPath(child, this.nodes.length)) {
      const copathChild = siblingOf(child);
      const resolution = this.resolution(copathChild);
      if (resolution.length > 0) steps.push({ nodeIndex, copathChild, resolution });
      child = nodeIndex;
    }
    return steps;
  }

  /** The leftmost blank leaf, or `width` when the tree is full and must be extended. */
  firstBlankLeaf(): number {
    for (let i = 0; i < this.nodes.length; i += 2) {
      if (this.nodes[i] === undefined) return i / 2;
    }
    return this.width;
  }

  /**
   * RFC 9420 §12.1.1: the new leaf goes to the leftmost blank leaf (the tree is extended when there
   * is none) and is listed in the unmerged leaves of its non-blank ancestors. Returns its leaf index.
   */
  addLeaf(leafNode: LeafNode): number {
    const leafIndex = this.firstBlankLeaf();
    if (leafIndex === this.width) this.extend();
    for (const ancestor of directPath(leafIndex * 2, this.nodes.length)) {
      const node = this.nodes[ancestor];
      if (node?.nodeType === "parent") {
        const unmergedLeaves = [...node.parent.unmergedLeaves, leafIndex];
        this.setNode(ancestor, { nodeType: "parent", parent: { ...node.parent, unmergedLeaves } });
      }
    }
    this.setNode(leafIndex * 2, { nodeType: "leaf", leaf: leafNode });
    return leafIndex;
  }

  /** RFC 9420 §12.1.2: the sender's leaf is replaced and its direct path blanked. */
  updateLeaf(leafIndex: number, leafNode: LeafNode): void {
    this.blankDirectPath(leafIndex);
    this.setNode(leafIndex * 2, { nodeType: "leaf", leaf: leafNode });
  }

  /** RFC 9420 §12.1.3: the leaf and its direct path are blanked, then the tree is truncated. */
  removeLeaf(leafIndex: number): void {
    this.blankDirectPath(leafIndex);
    this.setNode(leafIndex * 2, undefined);
    this.truncate();
  }

  /**
   * RFC 9420 §7.9: the parent hashes an UpdatePath from this leaf sets, computed from the root
   * down. Every node of the direct path off the filtered one is blank after the merge and every
   * node on it has no unmerged leaves, so each original sibling tree hash is the current tree hash
   * of the copath child, and the copath subtrees are not touched by the merge.
   */
  pathParentHashes(steps: PathStep[], encryptionKeys: Uint8Array[]): PathParentHashes {
    const nodes = new Array<Uint8Array>(steps.length);
    let above: Uint8Array = EMPTY;
    for (let i = steps.length - 1; i >= 0; i--) {
      nodes[i] = above;
      above = hash(
        encodeParentHashInput({
          encryptionKey: encryptionKeys[i],
          parentHash: nodes[i],
          originalSiblingTreeHash: this.treeHash(steps[i].copathChild),
        }),
      );
    }
    return { nodes, leaf: above };
  }

  /** RFC 9420 §7.5 "merges UpdatePath into the tree", with the hashes from `pathParentHashes`. */
  mergePath(
    leafIndex: number,
    leafNode: LeafNode,
    steps: PathStep[],
    encryptionKeys: Uint8Array[],
    parentHashes: PathParentHashes,
  ): void {
    this.blankDirectPath(leafIndex);
    steps.forEach((step, i) => {
      this.setNode(step.nodeIndex, {
        nodeType: "parent",
        parent: { hpkePublicKey: encryptionKeys[i], parentHash: parentHashes.nodes[i], unmergedLeaves: [] },
      });
    });
    this.setNode(leafIndex * 2, { nodeType: "leaf", leaf: leafNode });
  }

  /** The tree as `optional<Node> ratchet_tree<V>`, without trailing blank nodes (RFC 9420 §12.4.3.3). */
  encode(): Uint8Array {
    if (this.encoded === undefined) {
      let last = this.nodes.length - 1;
      while (last >= 0 && this.nodes[last] === undefined) last--;
      const parts: Uint8Array[] = [];
      for (let i = 0; i <= last; i++) {
        const content = this.contentBytes(i);
        if (content === undefined) parts.push(ABSENT);
        else parts.push(PRESENT, Uint8Array.of(isLeafNode(i) ? LEAF : PARENT), content);
      }
      this.encoded = concatOpaque(Buffer.concat(parts));
    }
    return this.encoded;
  }

  /**
   * The tree checks a joiner makes (RFC 9420 §12.4.3.1, "Verify the integrity of the ratchet
   * tree") other than leaf node validation: every non-blank parent node is parent-hash valid
   * (§7.9.2, checked bottom up: each is covered by exactly one chain from a leaf), and every
   * unmerged leaf is a non-blank descendant listed by every non-blank node in between.
   */
  verifyIntegrity(): void {
    const count = this.nodes.length;
    for (let p = 1; p < count; p += 2) {
      const node = this.nodes[p];
      if (node?.nodeType !== "parent") continue;
      const [first, last] = leafRange(p);
      for (const leafIndex of node.parent.unmergedLeaves) {
        if (leafIndex < first || leafIndex > last || this.nodes[leafIndex * 2] === undefined) {
          refuse(
            "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
            "tree.unmerged_leaves",
            `node ${p} lists leaf ${leafIndex} as unmerged`,
          );
        }
        for (const between of directPath(leafIndex * 2, count)) {
          if (between === p) break;
          const betweenNode = this.nodes[between];
          if (betweenNode?.nodeType === "parent" && !betweenNode.parent.unmergedLeaves.includes(leafIndex)) {
            refuse(
              "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
              "tree.unmerged_leaves",
              `node ${between} does not list unmerged leaf ${leafIndex}`,
            );
          }
        }
      }
    }

    // chains[p]: how many valid chains end at parent p. Children have lower levels, so nodes are
    // visited level by level from the leaves up.
    const chains = new Array<number>(count).fill(0);
    const rootLevel = level(rootOf(count));
    for (let nodeLevel = 0; nodeLevel < rootLevel; nodeLevel++) {
      for (let d = (1 << nodeLevel) - 1; d < count; d += 1 << (nodeLevel + 1)) {
        const node = this.nodes[d];
        if (node === undefined) continue;
        const startsOrContinuesChain =
          node.nodeType === "leaf" ? node.leaf.leafNodeSource === "commit" : chains[d] === 1;
        if (!startsOrContinuesChain) continue;
        const p = this.firstNonBlankAncestor(d);
        if (p !== undefined && this.parentHashLinks(d, p)) chains[p]++;
      }
    }
    for (let p = 1; p < count; p += 2) {
      if (this.nodes[p] !== undefined && chains[p] !== 1) {
        refuse(
          "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
          "tree.parent_hash",
          `parent node ${p} is not parent-hash valid`,
        );
      }
    }
  }

  private firstNonBlankAncestor(nodeIndex: number): number | undefined {
    return directPath(nodeIndex, this.nodes.length).find((ancestor) => this.nodes[ancestor] !== undefined);
  }

  /** RFC 9420 §7.9.2: whether the parent hash in node d is valid with respect to its ancestor p. */
  private parentHashLinks(d: number, p: number): boolean {
    const node = this.nodes[d];
    const parent = parentNodeOf(this.nodes[p]);
    if (node === undefined || parent === undefined) return false;
    const parentHashOfD = node.nodeType === "parent" ? node.parent.parentHash : leafParentHash(node.leaf);
    if (parentHashOfD === undefined) return false;

    const pathChild = d < p ? leftChild(p) : rightChild(p);
    const sibling = d < p ? rightChild(p) : leftChild(p);
    const removed = new Set(parent.unmergedLeaves);
    const expected = hash(
      encodeParentHashInput({
        encryptionKey: parent.hpkePublicKey,
        parentHash: parent.parentHash,
        originalSiblingTreeHash: this.treeHashWithout(sibling, removed),
      }),
    );
    if (!bytesEqual(expected, parentHashOfD)) return false;

    // D is in the resolution of C, and P's unmerged leaves under C are exactly that resolution without D.
    const resolution = this.resolution(pathChild);
    if (!resolution.includes(d)) return false;
    const [first, last] = leafRange(pathChild);
    const unmergedUnderChild = parent.unmergedLeaves.filter((l) => l >= first && l <= last).map((l) => l * 2);
    const rest = resolution.filter((n) => n !== d);
    return unmergedUnderChild.length === rest.length && rest.every((n) => unmergedUnderChild.includes(n));
  }

  /** The tree hash of a subtree with the given leaves blanked and dropped from unmerged lists (§7.9). */
  private treeHashWithout(nodeIndex: number, removed: Set<number>): Uint8Array {
    const [first, last] = leafRange(nodeIndex);
    if (![...removed].some((l) => l >= first && l <= last)) return this.treeHash(nodeIndex);
    if (isLeafNode(nodeIndex))
      return hash(Buffer.concat([Uint8Array.of(LEAF), uint32(nodeIndex / 2), ABSENT]));
    const parent = parentNodeOf(this.nodes[nodeIndex]);
    const optionalNode =
      parent === undefined
        ? [ABSENT]
        : [
            PRESENT,
            encodeParentNode({
              ...parent,
              unmergedLeaves: parent.unmergedLeaves.filter((l) => !removed.has(l)),
            }),
          ];
    return hash(
      Buffer.concat([
        Uint8Array.of(PARENT),
        ...optionalNode,
        concatOpaque(
          this.treeHashWithout(leftChild(nodeIndex), removed),
          this.treeHashWithout(rightChild(nodeIndex), removed),
        ),
      ]),
    );
  }

  private encryptionKeyOf(node: Node): Uint8Array {
    return node.nodeType === "leaf" ? node.leaf.hpkePublicKey : node.parent.hpkePublicKey;
  }

  /** The one place nodes change: keeps the key indexes and forgets the hashes above the node. */
  private setNode(nodeIndex: number, node: Node | undefined): void {
    const old = this.nodes[nodeIndex];
    if (old !== undefined) {
      const oldEncryptionKey = keyOf(this.encryptionKeyOf(old));
      if (this.encryptionKeys.get(oldEncryptionKey) === nodeIndex)
        this.encryptionKeys.delete(oldEncryptionKey);
      if (old.nodeType === "leaf") {
        const oldSignatureKey = keyOf(old.leaf.signaturePublicKey);
        if (this.signatureKeys.get(oldSignatureKey) === nodeIndex / 2)
          this.signatureKeys.delete(oldSignatureKey);
      }
    }
    if (node !== undefined) {
      this.encryptionKeys.set(keyOf(this.encryptionKeyOf(node)), nodeIndex);
      if (node.nodeType === "leaf")
        this.signatureKeys.set(keyOf(node.leaf.signaturePublicKey), nodeIndex / 2);
    }
    this.nodes[nodeIndex] = node;
    this.nodeBytes[nodeIndex] = undefined;
    this.encoded = undefined;
    const root = rootOf(this.nodes.length);
    for (let x = nodeIndex; ; x = parentOf(x)) {
      this.hashes[x] = undefined;
      if (x === root) break;
    }
  }

  private countLeaf(leaf: LeafNode, delta: 1 | -1): void {
    this.memberCount += delta;
    const type = leaf.credential.credentialType;
    this.credentialsInUse.set(type, (this.credentialsInUse.get(type) ?? 0) + delta);
    for (const supported of new Set(leaf.capabilities.credentials)) {
      this.credentialsSupported.set(supported, (this.credentialsSupported.get(supported) ?? 0) + delta);
    }
  }

  private blankDirectPath(leafIndex: number): void {
    for (const nodeIndex of directPath(leafIndex * 2, this.nodes.length)) {
      if (this.nodes[nodeIndex] !== undefined) this.setNode(nodeIndex, undefined);
    }
  }

  /** RFC 9420 §7.7: a new blank root whose left subtree is the tree and right subtree all blank. */
  private extend(): void {
    const count = this.nodes.length;
    this.nodes.length = 2 * count + 1;
    this.hashes.length = 2 * count + 1;
    this.nodeBytes.length = 2 * count + 1;
    this.encoded = undefined;
  }

  /** RFC 9420 §7.7, §12.1.3: drop right subtrees that hold no non-blank leaf. */
  private truncate(): void {
    while (this.nodes.length > 1) {
      const root = rootOf(this.nodes.length);
      let rightHasLeaf = false;
      for (let i = root + 1; i < this.nodes.length; i += 2) {
        if (this.nodes[i] !== undefined) rightHasLeaf = true;
      }
      if (rightHasLeaf) return;
      for (let i = root; i < this.nodes.length; i++) {
        if (this.nodes[i] !== undefined) this.setNode(i, undefined);
      }
      this.nodes.length = root;
      this.hashes.length = root;
      this.nodeBytes.length = root;
    }
  }
}

function uint32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value);
  return bytes;
}

function parentNodeOf(node: Node | undefined): ParentNode | undefined {
  return node?.nodeType === "parent" ? node.parent : undefined;
}

function leafParentHash(leaf: LeafNode): Uint8Array | undefined {
  return leaf.leafNodeSource === "commit" ? leaf.parentHash : undefined;
}
