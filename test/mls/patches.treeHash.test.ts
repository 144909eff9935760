/**
 * RFC 9420 §7.8, tree hashes, cached by node object between calls: whatever changed in a tree,
 * its cached hash is the hash computed from scratch over a deep copy (new objects, no cache hit).
 */
import {
  removeLeaves,
  treeHash,
  treeHashRoot,
  type CiphersuiteImpl,
  type ClientState,
  type RatchetTree,
} from "../../src/mls/tsMls";
import { addProposal, aliceAndBob, commit, member, suite } from "./support";

let cs: CiphersuiteImpl;
let tree: RatchetTree;

type NodeIndex = Parameters<typeof treeHash>[1];
type LeafIndex = Parameters<typeof removeLeaves>[1][number];

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const fromScratch = async (t: RatchetTree) => hex(await treeHashRoot(structuredClone(t), cs.hash));
const cached = async (t: RatchetTree) => hex(await treeHashRoot(t, cs.hash));

beforeAll(async () => {
  cs = await suite();
  // A group of five after a few commits: leaves, filled parents and blank ones.
  let { aliceState: state } = await aliceAndBob(cs);
  for (const name of ["@carol:c.example", "@dave:d.example", "@erin:e.example"]) {
    state = (await commit(cs, state, [addProposal((await member(cs, name)).keyPackage)])).committer;
  }
  state = (await commit(cs, state, [])).committer;
  tree = (state as ClientState).ratchetTree;
});

function parentIndex(t: RatchetTree): number {
  const index = t.findIndex((node) => node?.nodeType === "parent");
  expect(index).toBeGreaterThan(0);
  return index;
}

describe("tree hashes cached by node (RFC 9420 §7.8)", () => {
  it("gives the hash computed from scratch, for the tree and for every subtree", async () => {
    expect(await cached(tree)).toBe(await fromScratch(tree));
    const copy = structuredClone(tree);
    for (let index = 0; index < tree.length; index++) {
      expect(hex(await treeHash(tree, index as NodeIndex, cs.hash))).toBe(
        hex(await treeHash(copy, index as NodeIndex, cs.hash)),
      );
    }
  });

  it("hashes again what a change touched: a leaf replaced, blanked or moved, a parent replaced", async () => {
    const before = await cached(tree);
    const leafReplaced = tree.slice();
    leafReplaced[2] = structuredClone(tree[4]);
    const leafBlanked = tree.slice();
    leafBlanked[4] = undefined;
    // The same leaf object at another index: its hash input holds the index.
    const leafMoved = tree.slice();
    leafMoved[tree.length - 1] = undefined;
    leafMoved[8] = tree[4];
    leafMoved[4] = undefined;
    const at = parentIndex(tree);
    const node = tree[at]!;
    const parentReplaced = tree.slice();
    if (node.nodeType !== "parent") throw new Error("not a parent");
    parentReplaced[at] = { ...node, parent: { ...node.parent, parentHash: new Uint8Array(32) } };
    for (const changed of [leafReplaced, leafBlanked, leafMoved, parentReplaced]) {
      const hash = await cached(changed);
      expect(hash).toBe(await fromScratch(changed));
      expect(hash).not.toBe(before);
    }
    // And the unchanged tree still hashes as before.
    expect(await cached(tree)).toBe(before);
  });

  it("removeLeaves keeps the nodes that lose no unmerged leaf, so their hashes stay cached", async () => {
    const at = parentIndex(tree);
    const node = tree[at]!;
    if (node.nodeType !== "parent") throw new Error("not a parent");
    const withUnmerged = tree.slice();
    withUnmerged[at] = { ...node, parent: { ...node.parent, unmergedLeaves: [1 as LeafIndex] } };
    const removed = removeLeaves(withUnmerged, [1 as LeafIndex]);
    const kept = removed.filter((n, i) => n !== undefined && n === withUnmerged[i]).length;
    expect(removed[at]).not.toBe(withUnmerged[at]);
    expect(removed[at]?.nodeType === "parent" && removed[at].parent.unmergedLeaves).toEqual([]);
    expect(removed[2]).toBeUndefined();
    // Every other node is the same object.
    expect(kept).toBe(withUnmerged.filter((n, i) => n !== undefined && i !== at && i !== 2).length);
    expect(await cached(removed)).toBe(await fromScratch(removed));
  });
});
