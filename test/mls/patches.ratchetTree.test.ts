/**
 * RFC 9420 §12.4.3.1, ratchet tree integrity: for each non-empty parent node and each entry in its
 * unmerged_leaves, the entry is a non-blank leaf below the node, and every non-blank node between
 * them lists the leaf too. Nothing is required of the nodes above.
 */
import {
  ValidationError,
  defaultLifetimeConfig,
  defaultAuthenticationService,
  treeHashRoot,
  validateRatchetTree,
  type CiphersuiteImpl,
  type ClientState,
  type RatchetTree,
} from "../../src/mls/tsMls";
import { addProposal, commit, join, member, removeProposal, startGroup, suite, type Member } from "./support";

let cs: CiphersuiteImpl;

beforeAll(async () => {
  cs = await suite();
});

function unmergedLeaves(tree: RatchetTree, nodeIndex: number): number[] | undefined {
  const node = tree[nodeIndex];
  return node?.nodeType === "parent" ? node.parent.unmergedLeaves : undefined;
}

/**
 * Eight leaves. Alice adds seven members, commits with a path (nodes 1, 3 and 7 are set), removes
 * the members at leaves 3 and 7 (her path sets nodes 1, 3 and 7 again), then adds Erin and Frank
 * into leaves 3 and 7 without a path: node 3 lists [3] and the root, node 7, lists [3, 7].
 */
async function treeWithUnmergedLeaves(): Promise<{
  afterRemoves: ClientState;
  afterAdds: ClientState;
  erin: Member;
  frank: Member;
  welcome: Awaited<ReturnType<typeof commit>>["welcome"];
}> {
  const names = [
    "@alice:a",
    "@m1:b",
    "@m2:b",
    "@m3:b",
    "@m4:b",
    "@m5:b",
    "@m6:b",
    "@m7:b",
    "@erin:e",
    "@frank:f",
  ];
  const [alice, ...others] = await Promise.all(names.map((name) => member(cs, name)));
  const [erin, frank] = others.splice(7, 2);
  const created = await startGroup(cs, alice!);
  const added = await commit(
    cs,
    created,
    others.map((m) => addProposal(m.keyPackage)),
  );
  const refreshed = await commit(cs, added.committer, []);
  const removed = await commit(cs, refreshed.committer, [removeProposal(3), removeProposal(7)]);
  const readded = await commit(
    cs,
    removed.committer,
    [erin!, frank!].map((m) => addProposal(m.keyPackage)),
  );
  return {
    afterRemoves: removed.committer,
    afterAdds: readded.committer,
    erin: erin!,
    frank: frank!,
    welcome: readded.welcome,
  };
}

describe("ratchet tree validation (RFC 9420 §12.4.3.1)", () => {
  it("lets new members join a valid tree whose nodes list different unmerged leaves", async () => {
    const { afterAdds, erin, frank, welcome } = await treeWithUnmergedLeaves();
    expect(unmergedLeaves(afterAdds.ratchetTree, 3)).toEqual([3]);
    expect(unmergedLeaves(afterAdds.ratchetTree, 7)).toEqual([3, 7]);

    const erinState = await join(cs, erin, welcome);
    const frankState = await join(cs, frank, welcome);
    expect(erinState.groupContext).toEqual(afterAdds.groupContext);
    expect(frankState.groupContext).toEqual(afterAdds.groupContext);
  });

  it("refuses an unmerged leaf that is blank, even in the root", async () => {
    const { afterRemoves } = await treeWithUnmergedLeaves();
    const validate = async (tree: RatchetTree, treeHash: Uint8Array) =>
      validateRatchetTree(
        tree,
        afterRemoves.groupContext,
        defaultLifetimeConfig,
        defaultAuthenticationService,
        treeHash,
        cs,
      );
    // The tree as it is is valid.
    expect(await validate(afterRemoves.ratchetTree, afterRemoves.groupContext.treeHash)).toBeUndefined();
    const tree = afterRemoves.ratchetTree.slice();
    const root = tree[7];
    if (root?.nodeType !== "parent") throw new Error("expected a parent node at the root");
    // Leaf 7 and the nodes between it and the root are blank.
    expect([tree[14], tree[13], tree[11]]).toEqual([undefined, undefined, undefined]);
    tree[7] = { nodeType: "parent", parent: { ...root.parent, unmergedLeaves: [7] } };
    // The tree hash is that of the altered tree; its parent hashes still verify (leaf 7 is blank).
    expect(await validate(tree, await treeHashRoot(tree, cs.hash))).toBeInstanceOf(ValidationError);
  });
});
