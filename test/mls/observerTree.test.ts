import type { LeafNode, Node } from "ts-mls";
import { encodeRatchetTree } from "ts-mls/ratchetTree.js";
import { treeHashRoot } from "ts-mls/treeHash.js";
import { PublicTree } from "../../src/mls/observer/publicTree";
import { newClient, suite } from "./observerClients";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

function nodesOf(tree: PublicTree): (Node | undefined)[] {
  return Array.from({ length: tree.nodeCount }, (_, i) => tree.node(i));
}

/** A small deterministic random source, so a failure can be replayed. */
function random(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

describe("PublicTree: cached tree hashes stay equal to ts-mls's full recomputation", () => {
  let leaves: LeafNode[];

  beforeAll(async () => {
    leaves = [];
    for (let i = 0; i < 24; i++) leaves.push((await newClient(`member${i}`)).publicPackage.leafNode);
  });

  it("through 300 random Adds, Removes, Updates and merged paths, with extension and truncation", async () => {
    const cs = await suite();
    const next = random(7);
    const tree = PublicTree.fromNodes([{ nodeType: "leaf", leaf: leaves[0] }]);
    const widths = new Set<number>();
    for (let step = 0; step < 300; step++) {
      const members = tree.members();
      const choice = next();
      const leaf = leaves[Math.floor(next() * leaves.length)];
      if (choice < 0.4 || members.length < 2) {
        tree.addLeaf(leaf);
      } else if (choice < 0.65) {
        tree.removeLeaf(members[Math.floor(next() * members.length)][0]);
      } else if (choice < 0.8) {
        tree.updateLeaf(members[Math.floor(next() * members.length)][0], leaf);
      } else {
        const committer = members[Math.floor(next() * members.length)][0];
        const steps = tree.filteredDirectPath(committer);
        const keys = steps.map(() => Uint8Array.from({ length: 32 }, () => Math.floor(next() * 256)));
        tree.mergePath(committer, leaf, steps, keys, tree.pathParentHashes(steps, keys));
      }
      widths.add(tree.width);
      expect([step, hex(tree.rootHash())]).toEqual([step, hex(await treeHashRoot(nodesOf(tree), cs.hash))]);
      expect(hex(tree.encode())).toBe(hex(encodeRatchetTree(nodesOf(tree))));
    }
    // The walk went through several tree sizes (extension and truncation).
    expect(widths.size).toBeGreaterThan(2);
  });

  it("a clone is independent of the tree it was made from", async () => {
    const cs = await suite();
    const tree = PublicTree.fromNodes([{ nodeType: "leaf", leaf: leaves[0] }]);
    for (const leaf of leaves.slice(1, 6)) tree.addLeaf(leaf);
    const before = hex(tree.rootHash());
    const copy = tree.clone();
    copy.removeLeaf(3);
    copy.addLeaf(leaves[10]);
    expect(hex(tree.rootHash())).toBe(before);
    expect(hex(tree.rootHash())).toBe(hex(await treeHashRoot(nodesOf(tree), cs.hash)));
    expect(hex(copy.rootHash())).toBe(hex(await treeHashRoot(nodesOf(copy), cs.hash)));
    expect(tree.signatureKeyHolder(leaves[3].signaturePublicKey)).toBe(3);
    expect(copy.signatureKeyHolder(leaves[3].signaturePublicKey)).toBeUndefined();
  });

  it("a decoded tree refuses reused keys and nodes in the wrong places", () => {
    expect(() =>
      PublicTree.fromNodes([
        { nodeType: "leaf", leaf: leaves[0] },
        undefined,
        { nodeType: "leaf", leaf: leaves[0] },
      ]),
    ).toThrow(
      expect.objectContaining({ errcode: "IO.MIMI_APPSERVICE.MLS_BAD_TREE", rule: "tree.unique_keys" }),
    );
    expect(() =>
      PublicTree.fromNodes([
        { nodeType: "leaf", leaf: leaves[0] },
        { nodeType: "leaf", leaf: leaves[1] },
        { nodeType: "leaf", leaf: leaves[2] },
      ]),
    ).toThrow(expect.objectContaining({ errcode: "IO.MIMI_APPSERVICE.MLS_BAD_TREE", rule: "tree.shape" }));
  });
});
