import type {
  Commit,
  FramedContent,
  GroupInfo,
  KeyPackage,
  MLSMessage,
  Proposal,
  ProposalOrRef,
  PublicMessage,
  RatchetTree,
} from "ts-mls";
import { encodeMlsMessage, decodeMlsMessage } from "ts-mls";
import { createGroupInfo } from "ts-mls/createCommit.js";
import { encodeRatchetTree } from "ts-mls/ratchetTree.js";
import { treeHashRoot } from "ts-mls/treeHash.js";
import { signWithLabel } from "ts-mls/crypto/signature.js";
import { createContentCommitSignature } from "ts-mls/framedContent.js";
import { encodeKeyPackageTBS } from "ts-mls/keyPackage.js";
import type { CommitPolicy, MlsObserverErrorCode } from "../../src/mls/observer";
import { GroupObserver, MlsObserverError, MlsWrongEpochError } from "../../src/mls/observer";
import type { ClientKeys, PublishedCommit } from "./observerClients";
import { ClientGroup, encodeGroupInfoMessage, newClient, publicMessageOf, suite } from "./observerClients";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const flip = (b: Uint8Array, at = 0): Uint8Array => {
  const copy = Uint8Array.from(b);
  copy[at] ^= 0x01;
  return copy;
};

function decoded(bytes: Uint8Array): MLSMessage {
  return decodeMlsMessage(bytes, 0)![0];
}

/** The message with its PublicMessage changed (its signature then covers the old content). */
function withPublicMessage(bytes: Uint8Array, change: (message: PublicMessage) => PublicMessage): Uint8Array {
  const message = decoded(bytes);
  return encodeMlsMessage({ ...message, publicMessage: change(publicMessageOf(message)) } as MLSMessage);
}

function withContent(bytes: Uint8Array, change: (content: FramedContent) => FramedContent): Uint8Array {
  return withPublicMessage(bytes, (message) => ({ ...message, content: change(message.content) }));
}

function withSignatureFlipped(bytes: Uint8Array, at?: number): Uint8Array {
  return withPublicMessage(bytes, (message) => ({
    ...message,
    auth: { ...message.auth, signature: flip(message.auth.signature, at) },
  }));
}

function withGroupInfo(bytes: Uint8Array, change: (groupInfo: GroupInfo) => GroupInfo): Uint8Array {
  const message = decoded(bytes);
  if (message.wireformat !== "mls_group_info") throw new Error("not a GroupInfo");
  return encodeGroupInfoMessage(change(message.groupInfo));
}

const add = (keyPackage: KeyPackage): Proposal => ({ proposalType: "add", add: { keyPackage } });
const remove = (removed: number): Proposal => ({ proposalType: "remove", remove: { removed } });
const byValue = (proposal: Proposal): ProposalOrRef => ({ proposalOrRefType: "proposal", proposal });

describe("refusals: each with its errcode, and the observer's state unchanged", () => {
  let group: ClientGroup;
  let observer: GroupObserver;
  let stateBefore: string;
  let dave: ClientKeys;

  beforeAll(async () => {
    const [alice, bob, carol] = await Promise.all(["alice", "bob", "carol"].map((n) => newClient(n)));
    dave = await newClient("dave");
    group = await ClientGroup.create(alice);
    observer = GroupObserver.fromGroupInfo(await group.groupInfo("alice"), group.ratchetTree("alice"));
    for (const published of [
      await group.commit("alice", [add(bob.publicPackage), add(carol.publicPackage)], [bob, carol]),
      await group.commit("bob"),
    ]) {
      observer = observer.validateCommit(published.commit, published.groupInfo).observer;
    }
  });

  beforeEach(() => {
    stateBefore = hex(observer.encode());
  });

  afterEach(() => {
    expect(hex(observer.encode())).toBe(stateBefore);
  });

  function refusal(attempt: () => unknown): MlsObserverError {
    try {
      attempt();
    } catch (error) {
      if (error instanceof MlsObserverError) return error;
      throw error;
    }
    throw new Error("the observer accepted it");
  }

  function expectRefused(attempt: () => unknown, errcode: MlsObserverErrorCode, rule?: string): void {
    const error = refusal(attempt);
    expect(error.errcode).toBe(errcode);
    if (rule !== undefined) expect(error.rule).toBe(rule);
  }

  /** A policy that refuses every committer is asked once, about this identity and kind of committer. */
  function expectCommitterForbidden({ commit, groupInfo }: PublishedCommit, asked: string): void {
    const seen: string[] = [];
    const policy: CommitPolicy = {
      authorizeCommitter: (identity, how) => {
        seen.push(`${new TextDecoder().decode(identity)} ${how}`);
        return { reason: "not allowed to commit" };
      },
    };
    expectRefused(
      () => observer.validateCommit(commit, groupInfo, policy),
      "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
      "policy.committer",
    );
    expect(seen).toEqual([asked]);
  }

  /**
   * `commit` as a PublicMessage signed by `committer`: a member by name, or a client joining by
   * external commit (ts-mls would refuse to make these commits).
   */
  async function signedCommit(committer: string | ClientKeys, commit: Commit): Promise<Uint8Array> {
    const cs = await suite();
    const external = typeof committer !== "string";
    // A joiner signs for the epoch it joins, whose GroupContext every member (alice) holds.
    const state = group.state(external ? "alice" : committer);
    const { framedContent, signature } = await createContentCommitSignature(
      state.groupContext,
      "mls_public_message",
      commit,
      external
        ? { senderType: "new_member_commit" }
        : { senderType: "member", leafIndex: state.privatePath.leafIndex },
      new Uint8Array(),
      external ? committer.privatePackage.signaturePrivateKey : state.signaturePrivateKey,
      cs.signature,
    );
    const auth = { contentType: "commit" as const, signature, confirmationTag: new Uint8Array(32) };
    return encodeMlsMessage({
      version: "mls10",
      wireformat: "mls_public_message",
      publicMessage: external
        ? { content: framedContent, auth, senderType: "new_member_commit" }
        : { content: framedContent, auth, senderType: "member", membershipTag: new Uint8Array(32) },
    });
  }

  /** A commit `committer` drafts, with its Commit changed and signed again. */
  async function redrafted(
    committer: string,
    proposals: Proposal[],
    change: (commit: Commit) => Commit,
  ): Promise<PublishedCommit> {
    const draft = await group.draftCommit(committer, proposals);
    const content = publicMessageOf(draft.result.commit).content;
    if (content.contentType !== "commit") throw new Error("not a commit");
    return { commit: await signedCommit(committer, change(content.commit)), groupInfo: draft.groupInfo };
  }

  async function keyPackageResigned(
    keyPackage: KeyPackage,
    changes: Partial<KeyPackage>,
  ): Promise<KeyPackage> {
    const cs = await suite();
    const tbs = { ...keyPackage, ...changes };
    const signature = await signWithLabel(
      dave.privatePackage.signaturePrivateKey,
      "KeyPackageTBS",
      encodeKeyPackageTBS(tbs),
      cs.signature,
    );
    return { ...tbs, signature };
  }

  /** A commit by alice that nobody applies, changed before it is offered with its GroupInfo. */
  interface ChangedDraftCase {
    name: string;
    change: (draft: PublishedCommit) => PublishedCommit;
    errcode: MlsObserverErrorCode;
    rule?: string;
  }

  const contentChanged =
    (change: (content: FramedContent) => FramedContent) =>
    (draft: PublishedCommit): PublishedCommit => ({ ...draft, commit: withContent(draft.commit, change) });

  const groupInfoChanged =
    (change: (groupInfo: GroupInfo) => GroupInfo) =>
    (draft: PublishedCommit): PublishedCommit => ({
      ...draft,
      groupInfo: withGroupInfo(draft.groupInfo, change),
    });

  async function expectChangedDraftRefused({ change, errcode, rule }: ChangedDraftCase): Promise<void> {
    const { commit, groupInfo } = change(await group.draftCommit("alice"));
    expectRefused(() => observer.validateCommit(commit, groupInfo), errcode, rule);
  }

  /** A commit alice signs holding these proposals and no UpdatePath: each is a bad proposal. */
  interface ProposalListCase {
    name: string;
    proposals: () => Promise<ProposalOrRef[]>;
    rule: string;
  }

  async function expectProposalListRefused({ proposals, rule }: ProposalListCase): Promise<void> {
    const commit = await signedCommit("alice", { proposals: await proposals(), path: undefined });
    expectRefused(
      () => observer.validateCommit(commit, new Uint8Array()),
      "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      rule,
    );
  }

  describe("malformed bytes", () => {
    it("garbage", () => {
      expectRefused(
        () => observer.validateCommit(Uint8Array.of(0xde, 0xad, 0xbe, 0xef), new Uint8Array()),
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      );
      expectRefused(
        () => observer.validateCommit(new Uint8Array(), new Uint8Array()),
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      );
      expectRefused(
        () => observer.validateProposal(Uint8Array.of(0, 1, 0, 1, 0xff)),
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      );
    });

    it.each<ChangedDraftCase>([
      {
        name: "trailing bytes after a valid commit",
        change: (draft) => ({ ...draft, commit: Buffer.concat([draft.commit, Uint8Array.of(0)]) }),
        errcode: "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        rule: "MLSMessage.trailing_bytes",
      },
      {
        name: "a GroupInfo given as the commit",
        change: (draft) => ({ ...draft, commit: draft.groupInfo }),
        errcode: "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        rule: "commit.wire_format",
      },
    ])("$name", expectChangedDraftRefused);
  });

  describe("epochs", () => {
    it("a second commit for the same epoch loses to the first one accepted", async () => {
      const first = await group.draftCommit("alice");
      const second = await group.draftCommit("carol");
      const { observer: next } = observer.validateCommit(first.commit, first.groupInfo);
      const error = refusal(() => next.validateCommit(second.commit, second.groupInfo));
      expect(error).toBeInstanceOf(MlsWrongEpochError);
      expect(error.errcode).toBe("IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH");
      expect((error as MlsWrongEpochError).currentEpoch).toBe(observer.epoch + 1n);
      expect(error.toJSON()).toMatchObject({
        errcode: "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
        current_epoch: Number(observer.epoch) + 1,
      });
    });

    it("a future epoch", async () => {
      const draft = await group.draftCommit("alice");
      const future = withContent(draft.commit, (c) => ({ ...c, epoch: c.epoch + 5n }));
      const error = refusal(() => observer.validateCommit(future, draft.groupInfo));
      expect(error.errcode).toBe("IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH");
      expect((error as MlsWrongEpochError).currentEpoch).toBe(observer.epoch);
    });

    it.each<ChangedDraftCase>([
      {
        name: "another group",
        change: contentChanged((c) => ({ ...c, groupId: new TextEncoder().encode("!other:hub.example") })),
        errcode: "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
      },
    ])("$name", expectChangedDraftRefused);
  });

  describe("the committer", () => {
    it.each<ChangedDraftCase>([
      {
        name: "a committer that is not a member",
        change: contentChanged((c) => ({ ...c, sender: { senderType: "member", leafIndex: 7 } })),
        errcode: "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
      },
      {
        name: "a member's commit signed as another member",
        change: contentChanged((c) => ({ ...c, sender: { senderType: "member", leafIndex: 2 } })),
        errcode: "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE",
      },
      {
        name: "a bad signature",
        change: (draft) => ({ ...draft, commit: withSignatureFlipped(draft.commit, 10) }),
        errcode: "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE",
        rule: "content.signature",
      },
    ])("$name", expectChangedDraftRefused);

    it("the caller's policy refuses the committer", async () => {
      expectCommitterForbidden(await group.draftCommit("alice"), "@alice:alice.example member");
    });
  });

  describe("the GroupInfo published with the commit", () => {
    it.each<ChangedDraftCase>([
      {
        name: "a GroupInfo whose signature was tampered with",
        change: groupInfoChanged((info) => ({ ...info, signature: flip(info.signature, 3) })),
        errcode: "IO.MIMI_APPSERVICE.MLS_GROUPINFO_MISMATCH",
        rule: "group_info.signature",
      },
      {
        name: "a GroupInfo with another GroupContext (the current epoch's)",
        change: (draft) => ({ ...draft, groupInfo: observer.groupInfo() }),
        errcode: "IO.MIMI_APPSERVICE.MLS_GROUPINFO_MISMATCH",
        rule: "group_info.group_context",
      },
      {
        name: "a GroupInfo with another confirmation tag",
        change: groupInfoChanged((info) => ({ ...info, confirmationTag: flip(info.confirmationTag) })),
        errcode: "IO.MIMI_APPSERVICE.MLS_GROUPINFO_MISMATCH",
        rule: "group_info.confirmation_tag",
      },
      {
        name: "garbage instead of a GroupInfo",
        change: (draft) => ({ ...draft, groupInfo: Uint8Array.of(1, 2, 3) }),
        errcode: "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      },
    ])("$name", expectChangedDraftRefused);
  });

  describe("Adds", () => {
    it.each<ProposalListCase>([
      {
        name: "a KeyPackage with a bad signature",
        proposals: async () => [
          byValue(add({ ...dave.publicPackage, signature: flip(dave.publicPackage.signature, 5) })),
        ],
        rule: "keypackage.signature",
      },
      {
        name: "a KeyPackage whose leaf node signature is bad",
        proposals: async () => {
          const leafNode = {
            ...dave.publicPackage.leafNode,
            signature: flip(dave.publicPackage.leafNode.signature, 5),
          };
          return [byValue(add(await keyPackageResigned(dave.publicPackage, { leafNode })))];
        },
        rule: "leaf_node.signature",
      },
      {
        name: "a KeyPackage for another cipher suite",
        proposals: async () => {
          const other = await keyPackageResigned(dave.publicPackage, {
            cipherSuite: "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
          });
          return [byValue(add(other))];
        },
        rule: "keypackage.ciphersuite",
      },
      {
        name: "a client already in the group (its signature key in a second KeyPackage)",
        proposals: async () => {
          const cs = await suite();
          const bob = group.state("bob");
          const bobLeaf = bob.ratchetTree[bob.privatePath.leafIndex * 2];
          if (bobLeaf?.nodeType !== "leaf") throw new Error("no leaf");
          const { generateKeyPackageWithKey, defaultCapabilities, defaultLifetime } = await import("ts-mls");
          const second = await generateKeyPackageWithKey(
            bobLeaf.leaf.credential,
            defaultCapabilities(),
            defaultLifetime,
            [],
            { signKey: bob.signaturePrivateKey, publicKey: bobLeaf.leaf.signaturePublicKey },
            cs,
          );
          return [byValue(add(second.publicPackage))];
        },
        rule: "leaf_node.unique_keys",
      },
    ])("$name", expectProposalListRefused);

    it("an expired KeyPackage", async () => {
      const now = BigInt(Math.floor(Date.now() / 1000));
      const shortLived = await newClient("erin", { notBefore: now - 60n, notAfter: now + 60n });
      const draft = await group.draftCommit("alice", [add(shortLived.publicPackage)]);
      const later = GroupObserver.decode(observer.encode(), { clock: () => Date.now() + 3_600_000 });
      expectRefused(
        () => later.validateCommit(draft.commit, draft.groupInfo),
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "leaf_node.lifetime",
      );
      // The same commit is valid while the KeyPackage lives.
      expect(observer.validateCommit(draft.commit, draft.groupInfo).change.added).toHaveLength(1);
    });

    it("the caller's policy refuses the client to be added", async () => {
      const draft = await group.draftCommit("alice", [add(dave.publicPackage)]);
      const policy: CommitPolicy = {
        authorizeAdd: (identity) =>
          new TextDecoder().decode(identity) === "@dave:dave.example"
            ? { reason: "dave is banned" }
            : undefined,
      };
      expectRefused(
        () => observer.validateCommit(draft.commit, draft.groupInfo, policy),
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        "policy.add",
      );
      expect(observer.validateCommit(draft.commit, draft.groupInfo, {}).change.added).toHaveLength(1);
    });
  });

  describe("Removes and the proposal list", () => {
    it.each<ProposalListCase>([
      {
        name: "a Remove of an empty leaf",
        proposals: async () => [byValue(remove(3))],
        rule: "remove.blank_leaf",
      },
      {
        name: "a Remove of the committer",
        proposals: async () => [byValue(remove(0))],
        rule: "remove.committer",
      },
      {
        name: "two Removes of one leaf",
        proposals: async () => [byValue(remove(1)), byValue(remove(1))],
        rule: "proposal.same_leaf",
      },
      {
        name: "a proposal by reference the observer has not seen",
        proposals: async () => [{ proposalOrRefType: "reference", reference: new Uint8Array(32).fill(7) }],
        rule: "proposal.unknown_reference",
      },
    ])("$name", expectProposalListRefused);

    it("a Remove without the UpdatePath it requires", async () => {
      const published = await redrafted("alice", [remove(2)], (commit) => ({ ...commit, path: undefined }));
      expectRefused(
        () => observer.validateCommit(published.commit, published.groupInfo),
        "IO.MIMI_APPSERVICE.MLS_BAD_PATH",
        "path.required",
      );
    });
  });

  describe("the UpdatePath", () => {
    it.each<{ name: string; change: (commit: Commit) => Commit; rule: string }>([
      {
        name: "a ciphertext missing",
        change: (commit) => ({
          ...commit,
          path: {
            ...commit.path!,
            nodes: commit.path!.nodes.map((n) => ({
              ...n,
              encryptedPathSecret: n.encryptedPathSecret.slice(1),
            })),
          },
        }),
        rule: "path.ciphertexts",
      },
      {
        name: "a path node missing",
        change: (commit) => ({ ...commit, path: { ...commit.path!, nodes: commit.path!.nodes.slice(1) } }),
        rule: "path.length",
      },
      {
        name: "a path node's key replaced (the leaf's parent hash no longer matches)",
        change: (commit) => ({
          ...commit,
          path: {
            ...commit.path!,
            nodes: commit.path!.nodes.map((n) => ({ ...n, hpkePublicKey: flip(n.hpkePublicKey, 31) })),
          },
        }),
        rule: "path.parent_hash",
      },
      {
        name: "a leaf node whose signature does not verify",
        change: (commit) => ({
          ...commit,
          path: {
            ...commit.path!,
            leafNode: { ...commit.path!.leafNode, signature: flip(commit.path!.leafNode.signature, 8) },
          },
        }),
        rule: "leaf_node.signature",
      },
    ])("$name", async ({ change, rule }) => {
      const published = await redrafted("carol", [], change);
      expectRefused(
        () => observer.validateCommit(published.commit, published.groupInfo),
        "IO.MIMI_APPSERVICE.MLS_BAD_PATH",
        rule,
      );
    });
  });

  describe("proposals sent alone", () => {
    it("an external proposal from a sender the group does not list", async () => {
      const cs = await suite();
      const keys = await cs.signature.keygen();
      const { protectExternalProposalPublic } = await import("ts-mls/messageProtectionPublic.js");
      const { publicMessage } = await protectExternalProposalPublic(
        keys.signKey,
        group.state("alice").groupContext,
        new Uint8Array(),
        { proposalType: "remove", remove: { removed: 1 } },
        { senderType: "external", senderIndex: 0 },
        cs,
      );
      const bytes = encodeMlsMessage({ version: "mls10", wireformat: "mls_public_message", publicMessage });
      expectRefused(() => observer.validateProposal(bytes), "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER");
    });

    it("a member's proposal with a bad signature, and a Remove of a blank leaf", async () => {
      const cs = await suite();
      const { createProposal } = await import("ts-mls");
      const { message } = await createProposal(group.state("bob"), true, remove(2), cs);
      const forged = withSignatureFlipped(encodeMlsMessage(message));
      expectRefused(() => observer.validateProposal(forged), "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE");
      const blank = await createProposal(group.state("bob"), true, remove(3), cs);
      expectRefused(
        () => observer.validateProposal(encodeMlsMessage(blank.message)),
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "remove.blank_leaf",
      );
    });
  });

  describe("starting from a GroupInfo", () => {
    it.each<{ name: string; change: (groupInfo: GroupInfo) => GroupInfo; errcode: MlsObserverErrorCode }>([
      {
        name: "another cipher suite is refused with its own errcode",
        change: (info) => ({
          ...info,
          groupContext: { ...info.groupContext, cipherSuite: "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448" },
        }),
        errcode: "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      },
      {
        name: "a tampered GroupInfo signature",
        change: (info) => ({ ...info, signature: flip(info.signature) }),
        errcode: "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE",
      },
    ])("$name", ({ change, errcode }) => {
      const changed = withGroupInfo(observer.groupInfo(), change);
      expectRefused(() => GroupObserver.fromGroupInfo(changed, observer.ratchetTree()), errcode);
    });

    it("a tree that is not the GroupInfo's", async () => {
      expectRefused(
        () => GroupObserver.fromGroupInfo(observer.groupInfo(), group.ratchetTree("alice").slice(0, -1)),
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      );
      const earlier = await ClientGroup.create(await newClient("zed"));
      expectRefused(
        () => GroupObserver.fromGroupInfo(observer.groupInfo(), earlier.ratchetTree("zed")),
        "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
        "tree.hash",
      );
    });

    it("starts from a member's GroupInfo and tree of a later epoch and keeps validating", async () => {
      const fresh = GroupObserver.fromGroupInfo(await group.groupInfo("carol"), group.ratchetTree("carol"));
      expect(hex(fresh.groupContext())).toBe(hex(observer.groupContext()));
      const draft = await group.draftCommit("bob");
      expect(hex(fresh.validateCommit(draft.commit, draft.groupInfo).observer.groupContext())).toBe(
        hex(observer.validateCommit(draft.commit, draft.groupInfo).observer.groupContext()),
      );
    });
  });

  describe("external commits", () => {
    it("the policy is asked about the joiner as an external committer", async () => {
      const published = await group.draftExternalJoin(await newClient("mallory"), "alice");
      expectCommitterForbidden(published, "@mallory:mallory.example external");
      expect(observer.validateCommit(published.commit, published.groupInfo).change.committer.external).toBe(
        true,
      );
    });

    it("an external commit that removes another client than the joiner's old self", async () => {
      const joiner = await newClient("mallory");
      const { message } = await group.draftExternalJoin(joiner, "alice");
      const { content } = publicMessageOf(message);
      if (content.contentType !== "commit") throw new Error("not a commit");
      const bytes = await signedCommit(joiner, {
        ...content.commit,
        proposals: [...content.commit.proposals, byValue(remove(1))],
      });
      expectRefused(
        () => observer.validateCommit(bytes, new Uint8Array()),
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "leaf_node.identity",
      );
    });
  });

  describe("trees that are not valid (re-signed GroupInfo, so only the tree check can catch them)", () => {
    async function startFrom(tree: RatchetTree): Promise<GroupObserver> {
      const cs = await suite();
      const bob = group.state("bob");
      const treeHash = await treeHashRoot(tree, cs.hash);
      const groupInfo = await createGroupInfo(
        { ...bob.groupContext, treeHash },
        bob.confirmationTag,
        bob,
        [],
        cs,
      );
      return GroupObserver.fromGroupInfo(encodeGroupInfoMessage(groupInfo), encodeRatchetTree(tree));
    }

    function parentNode(tree: RatchetTree, index: number) {
      const node = tree[index];
      if (node?.nodeType !== "parent") throw new Error(`node ${index} is not a parent node`);
      return node.parent;
    }

    it("the unchanged tree is accepted", async () => {
      expect((await startFrom(group.state("bob").ratchetTree)).epoch).toBe(observer.epoch);
    });

    it.each<{ name: string; change: (tree: RatchetTree) => void; rule: string }>([
      {
        name: "a parent node whose parent hash does not chain",
        change: (tree) => {
          tree[3] = {
            nodeType: "parent",
            parent: { ...parentNode(tree, 3), parentHash: new Uint8Array(32).fill(1) },
          };
        },
        rule: "tree.parent_hash",
      },
      {
        name: "an unmerged leaf that is not below its node",
        change: (tree) => {
          tree[1] = { nodeType: "parent", parent: { ...parentNode(tree, 1), unmergedLeaves: [2] } };
        },
        rule: "tree.unmerged_leaves",
      },
    ])("$name", async ({ change, rule }) => {
      const tree = group.state("bob").ratchetTree.slice();
      change(tree);
      await expect(startFrom(tree)).rejects.toMatchObject({
        errcode: "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
        rule,
      });
    });
  });

  it("a stored state that is not one", () => {
    expectRefused(() => GroupObserver.decode(Uint8Array.of(1, 2, 3)), "IO.MIMI_APPSERVICE.MLS_MALFORMED");
    const encoded = observer.encode();
    expectRefused(
      () => GroupObserver.decode(Buffer.concat([encoded, Uint8Array.of(0)])),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
    );
  });

  it("after all of these the observer still accepts the group's next commit", async () => {
    const published = await group.commit("carol");
    const { change } = observer.validateCommit(published.commit, published.groupInfo);
    expect(change.epoch).toBe(observer.epoch + 1n);
  });
});
