import type { Commit, FramedContent, GroupContext, KeyPackage, LeafNode, Proposal, UpdatePath } from "ts-mls";
import { decodeMlsMessage, encodeMlsMessage } from "ts-mls";
import { encodeGroupContext } from "ts-mls/groupContext.js";
import { encodeGroupInfoTBS } from "ts-mls/groupInfo.js";
import { refuse } from "./errors";
import type { LeafNodeCheck } from "./leafValidation";
import { validateKeyPackage, validateLeafNode } from "./leafValidation";
import {
  checkGroupContextExtensions,
  checkPreSharedKey,
  checkSameIdentity,
  pskIdKey,
  refuseUnsupportedType,
} from "./proposals";
import type { PublicTree } from "./publicTree";
import type { CommitPolicy, ObserverState } from "./state";
import { checkContentSignature, checkGroupAndEpoch, checkPolicy } from "./state";
import { concatOpaque, HASH_LENGTH, hash, KEM_OUTPUT_LENGTH, verifyWithLabel } from "./suite";
import {
  bytesEqual,
  decodeCanonical,
  decodePublicMessageMessage,
  externalSendersOf,
  identityOf,
  keyOf,
} from "./wire";

/** A leaf whose client entered, left or changed in a commit, by the identity of its credential. */
export interface MemberChange {
  leafIndex: number;
  identity: Uint8Array;
}

/** What a valid commit does to the group. */
export interface CommitChange {
  /** The epoch the commit begins. */
  epoch: bigint;
  treeHash: Uint8Array;
  /** The new GroupContext, encoded: the same bytes every member computes. */
  groupContext: Uint8Array;
  committer: MemberChange & { external: boolean };
  added: MemberChange[];
  removed: MemberChange[];
  /** Members whose leaf an Update proposal replaced. */
  updated: MemberChange[];
  extensionsChanged: boolean;
  /** The references of the proposals it covered by reference. */
  coveredProposals: Uint8Array[];
}

/** One proposal of a commit, with who sent it. */
interface CoveredProposal {
  proposal: Proposal;
  /** The member who sent it: the committer for a proposal by value; undefined for an external sender. */
  senderLeaf: number | undefined;
}

/** The state a commit leads to and what it changed; nothing of the old state is modified. */
export interface StagedCommit {
  state: ObserverState;
  change: CommitChange;
}

/**
 * Validates a PublicMessage commit and the GroupInfo its committer published, without any secret
 * of the group (RFC 9420 §12.4.2, less the steps that need epoch secrets: the membership tag, the
 * decryption of path secrets, the key schedule and the confirmation tag).
 */
export function stageCommit(
  state: ObserverState,
  commitBytes: Uint8Array,
  groupInfoBytes: Uint8Array,
  policy: CommitPolicy,
  now: bigint,
): StagedCommit {
  const message = decodePublicMessageMessage(commitBytes, "commit");
  const { content, auth } = message;
  if (content.contentType !== "commit" || auth.contentType !== "commit") {
    refuse("IO.MIMI_APPSERVICE.MLS_MALFORMED", "commit.content_type", "the message is not a commit");
  }
  if (auth.confirmationTag.length !== HASH_LENGTH) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "commit.confirmation_tag",
      "the confirmation tag is not a MAC of the suite",
    );
  }
  checkGroupAndEpoch(state, content);

  const staging =
    content.sender.senderType === "member"
      ? memberCommit(state, content, content.sender.leafIndex, policy, now)
      : content.sender.senderType === "new_member_commit"
        ? externalCommit(state, content, policy, now)
        : refuse(
            "IO.MIMI_APPSERVICE.MLS_MALFORMED",
            "commit.sender",
            `a ${content.sender.senderType} sender cannot commit`,
          );
  checkContentSignature(state, message, staging.signatureKey);
  staging.authorize();

  const { tree, committerLeaf, extensions } = staging.apply();
  const committer = tree.leaf(committerLeaf);
  if (committer === undefined)
    refuse("IO.MIMI_APPSERVICE.MLS_BAD_PATH", "commit.committer", "the committer has no leaf");

  // RFC 9420 §8.2: interim hash of the old epoch from its confirmation tag, then the confirmed hash.
  const interimTranscriptHash = hash(
    Buffer.concat([state.groupContext.confirmedTranscriptHash, concatOpaque(state.confirmationTag)]),
  );
  const confirmedTranscriptHash = hash(
    Buffer.concat([
      interimTranscriptHash,
      // ConfirmedTranscriptHashInput: wire_format, content, signature<V>.
      message.header.subarray(2),
      message.framedContent,
      concatOpaque(auth.signature),
    ]),
  );
  const groupContext: GroupContext = {
    ...state.groupContext,
    epoch: state.groupContext.epoch + 1n,
    treeHash: tree.rootHash(),
    confirmedTranscriptHash,
    extensions,
  };
  const groupContextBytes = encodeGroupContext(groupContext);
  checkGroupInfo(groupInfoBytes, groupContextBytes, committerLeaf, committer, auth.confirmationTag, tree);

  return {
    state: {
      groupContext,
      groupContextBytes,
      tree,
      confirmationTag: auth.confirmationTag,
      groupInfo: groupInfoBytes,
      proposals: new Map(),
      externalSenders: externalSendersOf(extensions),
    },
    change: {
      epoch: groupContext.epoch,
      treeHash: groupContext.treeHash,
      groupContext: groupContextBytes,
      committer: {
        leafIndex: committerLeaf,
        identity: identityOf(committer.credential) ?? new Uint8Array(),
        external: content.sender.senderType === "new_member_commit",
      },
      ...staging.changes,
      extensionsChanged: extensions !== state.groupContext.extensions,
      coveredProposals: staging.coveredReferences,
    },
  };
}

interface CommitStaging {
  signatureKey: Uint8Array;
  authorize(): void;
  apply(): { tree: PublicTree; committerLeaf: number; extensions: GroupContext["extensions"] };
  changes: { added: MemberChange[]; removed: MemberChange[]; updated: MemberChange[] };
  coveredReferences: Uint8Array[];
}

function commitOf(content: FramedContent): Commit {
  if (content.contentType !== "commit")
    refuse("IO.MIMI_APPSERVICE.MLS_MALFORMED", "commit.content_type", "the message is not a commit");
  return content.commit;
}

/** RFC 9420 §12.4.2 for a commit by a member. */
function memberCommit(
  state: ObserverState,
  content: FramedContent,
  committerLeaf: number,
  policy: CommitPolicy,
  now: bigint,
): CommitStaging {
  const commit = commitOf(content);
  const committerNode = state.tree.leaf(committerLeaf);
  if (committerNode === undefined) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
      "commit.sender",
      `leaf ${committerLeaf} is not a member of the group`,
    );
  }
  const { proposals, coveredReferences } = resolveProposals(state, commit, committerLeaf);
  const changes = {
    added: [] as MemberChange[],
    removed: [] as MemberChange[],
    updated: [] as MemberChange[],
  };

  return {
    signatureKey: committerNode.signaturePublicKey,
    authorize: () =>
      checkPolicy(policy.authorizeCommitter?.(identityOrEmpty(committerNode), "member"), "policy.committer"),
    coveredReferences,
    changes,
    apply: () => {
      checkMemberProposalList(proposals, committerLeaf);
      const tree = state.tree.clone();

      // RFC 9420 §12.3: GroupContextExtensions first; its extensions apply to everything after it.
      const extensionsProposal = proposals.find(
        (p) => p.proposal.proposalType === "group_context_extensions",
      );
      const extensions =
        extensionsProposal?.proposal.proposalType === "group_context_extensions"
          ? extensionsProposal.proposal.groupContextExtensions.extensions
          : state.groupContext.extensions;
      const newContext: GroupContext = { ...state.groupContext, extensions };

      for (const { proposal, senderLeaf } of proposals) {
        if (proposal.proposalType !== "update" || senderLeaf === undefined) continue;
        checkOwnLeafReplaced(proposal.update.leafNode, "update", senderLeaf, {
          groupContext: newContext,
          tree,
          now,
        });
        tree.updateLeaf(senderLeaf, proposal.update.leafNode);
        changes.updated.push({ leafIndex: senderLeaf, identity: identityOrEmpty(proposal.update.leafNode) });
      }
      for (const { proposal } of proposals) {
        if (proposal.proposalType !== "remove") continue;
        const removed = state.tree.leaf(proposal.remove.removed);
        if (removed === undefined) {
          refuse(
            "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
            "remove.blank_leaf",
            `leaf ${proposal.remove.removed} is blank`,
          );
        }
        tree.removeLeaf(proposal.remove.removed);
        changes.removed.push({ leafIndex: proposal.remove.removed, identity: identityOrEmpty(removed) });
      }
      const newLeafNodes = new Set<number>();
      for (const { proposal } of proposals) {
        if (proposal.proposalType !== "add") continue;
        const keyPackage: KeyPackage = proposal.add.keyPackage;
        validateKeyPackage(keyPackage, newContext, tree, now);
        const identity = identityOrEmpty(keyPackage.leafNode);
        checkPolicy(policy.authorizeAdd?.(identity, keyPackage), "policy.add");
        const leafIndex = tree.addLeaf(keyPackage.leafNode);
        newLeafNodes.add(leafIndex * 2);
        changes.added.push({ leafIndex, identity });
      }
      if (extensionsProposal !== undefined) {
        checkGroupContextExtensions(
          extensions,
          tree.members().map(([, leaf]) => leaf),
        );
      }

      // RFC 9420 §12.4: the path is required unless every proposal is of a type that needs none.
      const pathRequired =
        proposals.length === 0 ||
        proposals.some(({ proposal }) =>
          ["update", "remove", "external_init", "group_context_extensions"].includes(
            String(proposal.proposalType),
          ),
        );
      if (commit.path === undefined) {
        if (pathRequired)
          refuse(
            "IO.MIMI_APPSERVICE.MLS_BAD_PATH",
            "path.required",
            "the commit's proposals require an UpdatePath",
          );
      } else {
        checkOwnLeafReplaced(commit.path.leafNode, "commit", committerLeaf, {
          groupContext: newContext,
          tree,
          now,
        });
        mergeUpdatePath(tree, committerLeaf, commit.path, newLeafNodes);
      }
      return { tree, committerLeaf, extensions };
    },
  };
}

/** How a refusal of a member's new leaf node is reported, by where the node comes from. */
const LEAF_REPLACEMENT_REFUSAL = {
  update: { errcode: "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", blankLeafRule: "update.sender" },
  commit: { errcode: "IO.MIMI_APPSERVICE.MLS_BAD_PATH", blankLeafRule: "path.leaf" },
} as const;

/**
 * A member's new leaf node in place of its own, from an Update or from the UpdatePath of its
 * commit: the leaf it replaces is not blank, and the new node is valid (RFC 9420 §7.3) and
 * presents the same identity.
 */
function checkOwnLeafReplaced(
  leafNode: LeafNode,
  source: "update" | "commit",
  leafIndex: number,
  { groupContext, tree, now }: Pick<LeafNodeCheck, "groupContext" | "tree" | "now">,
): void {
  const { errcode, blankLeafRule } = LEAF_REPLACEMENT_REFUSAL[source];
  const current = tree.leaf(leafIndex);
  if (current === undefined) refuse(errcode, blankLeafRule, `leaf ${leafIndex} is blank`);
  validateLeafNode(leafNode, {
    origin: { source, groupId: groupContext.groupId, leafIndex },
    groupContext,
    tree,
    replacesLeaf: leafIndex,
    now,
    errcode,
  });
  checkSameIdentity(current, leafNode, errcode);
}

/** RFC 9420 §12.4.3.2 for an external commit: a new member adds itself. */
function externalCommit(
  state: ObserverState,
  content: FramedContent,
  policy: CommitPolicy,
  now: bigint,
): CommitStaging {
  const commit = commitOf(content);
  const path = commit.path;
  if (path === undefined)
    refuse("IO.MIMI_APPSERVICE.MLS_BAD_PATH", "path.required", "an external commit must carry an UpdatePath");
  const proposals: Proposal[] = commit.proposals.map((p) => {
    if (p.proposalOrRefType !== "proposal") {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "external_commit.by_reference",
        "an external commit cannot cover proposals by reference",
      );
    }
    return p.proposal;
  });
  // RFC 9420 §12.2: exactly one ExternalInit, at most one Remove, PreSharedKeys, nothing else.
  const count = (type: string) => proposals.filter((p) => p.proposalType === type).length;
  if (
    count("external_init") !== 1 ||
    count("remove") > 1 ||
    count("psk") + 1 + count("remove") !== proposals.length
  ) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      "external_commit.proposals",
      "an external commit holds one ExternalInit, at most one Remove and PSKs",
    );
  }
  const changes = {
    added: [] as MemberChange[],
    removed: [] as MemberChange[],
    updated: [] as MemberChange[],
  };
  const identity = identityOrEmpty(path.leafNode);

  return {
    signatureKey: path.leafNode.signaturePublicKey,
    authorize: () => checkPolicy(policy.authorizeCommitter?.(identity, "external"), "policy.committer"),
    coveredReferences: [],
    changes,
    apply: () => {
      checkPskList(proposals.flatMap((p) => (p.proposalType === "psk" ? [p] : [])));
      const tree = state.tree.clone();
      for (const proposal of proposals) {
        if (
          proposal.proposalType === "external_init" &&
          proposal.externalInit.kemOutput.length !== KEM_OUTPUT_LENGTH
        ) {
          refuse(
            "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
            "external_init.kem_output",
            "the kem_output is not a DHKEM(X25519) output",
          );
        }
        if (proposal.proposalType !== "remove") continue;
        // The joiner may only remove an old appearance of itself: its new leaf must be a valid
        // Update of the removed one, presenting the same identity.
        const removed = tree.leaf(proposal.remove.removed);
        if (removed === undefined) {
          refuse(
            "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
            "remove.blank_leaf",
            `leaf ${proposal.remove.removed} is blank`,
          );
        }
        checkSameIdentity(removed, path.leafNode, "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL");
        tree.removeLeaf(proposal.remove.removed);
        changes.removed.push({ leafIndex: proposal.remove.removed, identity: identityOrEmpty(removed) });
      }
      const committerLeaf = tree.firstBlankLeaf();
      validateLeafNode(path.leafNode, {
        origin: { source: "commit", groupId: state.groupContext.groupId, leafIndex: committerLeaf },
        groupContext: state.groupContext,
        tree,
        now,
        errcode: "IO.MIMI_APPSERVICE.MLS_BAD_PATH",
      });
      tree.addLeaf(path.leafNode);
      mergeUpdatePath(tree, committerLeaf, path, new Set());
      changes.added.push({ leafIndex: committerLeaf, identity });
      return { tree, committerLeaf, extensions: state.groupContext.extensions };
    },
  };
}

/** The commit's proposals, by value or by reference to one received in this epoch (RFC 9420 §12.4). */
function resolveProposals(
  state: ObserverState,
  commit: Commit,
  committerLeaf: number,
): { proposals: CoveredProposal[]; coveredReferences: Uint8Array[] } {
  const seen = new Set<string>();
  const coveredReferences: Uint8Array[] = [];
  const proposals = commit.proposals.map((entry): CoveredProposal => {
    if (entry.proposalOrRefType === "proposal")
      return { proposal: entry.proposal, senderLeaf: committerLeaf };
    const key = keyOf(entry.reference);
    const stored = state.proposals.get(key);
    if (stored === undefined) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "proposal.unknown_reference",
        "the commit covers a proposal this epoch has not seen",
      );
    }
    if (seen.has(key))
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "proposal.duplicate",
        "the commit covers a proposal twice",
      );
    seen.add(key);
    coveredReferences.push(stored.reference);
    return {
      proposal: stored.proposal,
      senderLeaf: stored.sender.senderType === "member" ? stored.sender.leafIndex : undefined,
    };
  });
  return { proposals, coveredReferences };
}

/** RFC 9420 §12.2, the rules on the list as a whole for a regular commit. */
function checkMemberProposalList(proposals: CoveredProposal[], committerLeaf: number): void {
  const fail: (rule: string, message: string) => never = (rule, message) =>
    refuse("IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", rule, message);
  const touchedLeaves = new Set<number>();
  let extensionsProposals = 0;
  for (const { proposal, senderLeaf } of proposals) {
    refuseUnsupportedType(proposal);
    switch (proposal.proposalType) {
      case "external_init":
        fail("external_init.member_commit", "a member's commit cannot hold an ExternalInit");
        break;
      case "update":
        if (senderLeaf === committerLeaf)
          fail("update.by_committer", "the commit covers an Update by the committer");
        if (senderLeaf === undefined) fail("update.sender", "an Update must come from a member");
        if (touchedLeaves.has(senderLeaf))
          fail("proposal.same_leaf", `two Updates or Removes for leaf ${senderLeaf}`);
        touchedLeaves.add(senderLeaf);
        break;
      case "remove":
        if (proposal.remove.removed === committerLeaf)
          fail("remove.committer", "the commit removes the committer");
        if (touchedLeaves.has(proposal.remove.removed)) {
          fail("proposal.same_leaf", `two Updates or Removes for leaf ${proposal.remove.removed}`);
        }
        touchedLeaves.add(proposal.remove.removed);
        break;
      case "group_context_extensions":
        extensionsProposals++;
        break;
    }
  }
  if (extensionsProposals > 1)
    fail("group_context_extensions.multiple", "the commit holds two GroupContextExtensions");
  checkPskList(proposals.flatMap(({ proposal }) => (proposal.proposalType === "psk" ? [proposal] : [])));
  // Two Adds of the same client, or of a client already in the group and not removed, are caught
  // as reused signature keys when the Adds are applied (RFC 9420 §7.3).
}

function checkPskList(proposals: Extract<Proposal, { proposalType: "psk" }>[]): void {
  const ids = new Set<string>();
  for (const proposal of proposals) {
    checkPreSharedKey(proposal.psk.preSharedKeyId);
    const key = pskIdKey(proposal.psk.preSharedKeyId);
    if (ids.has(key))
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "psk.duplicate",
        "two PreSharedKey proposals name the same PSK",
      );
    ids.add(key);
  }
}

/**
 * RFC 9420 §7.5, §7.6, §12.4.2: the UpdatePath has one node per node of the committer's filtered
 * direct path, one ciphertext per node of each copath resolution (new leaves of this commit
 * excluded), fresh keys, and a leaf whose parent_hash matches the chain the path sets; then it is
 * merged into the tree. The committer's leaf must already be in `tree`.
 */
function mergeUpdatePath(
  tree: PublicTree,
  committerLeaf: number,
  path: UpdatePath,
  newLeafNodes: Set<number>,
): void {
  const fail: (rule: string, message: string) => never = (rule, message) =>
    refuse("IO.MIMI_APPSERVICE.MLS_BAD_PATH", rule, message);
  const steps = tree.filteredDirectPath(committerLeaf);
  if (path.nodes.length !== steps.length) {
    fail("path.length", `the path has ${path.nodes.length} nodes, the filtered direct path ${steps.length}`);
  }
  const keys = path.nodes.map((node) => node.hpkePublicKey);
  const fresh = new Set<string>([keyOf(path.leafNode.hpkePublicKey)]);
  steps.forEach((step, i) => {
    const expected = step.resolution.filter((n) => !newLeafNodes.has(n)).length;
    if (path.nodes[i].encryptedPathSecret.length !== expected) {
      fail(
        "path.ciphertexts",
        `path node ${i} has ${path.nodes[i].encryptedPathSecret.length} ciphertexts, not ${expected}`,
      );
    }
    const key = keyOf(keys[i]);
    if (keys[i].length !== 32 || fresh.has(key) || tree.encryptionKeyHolder(keys[i]) !== undefined) {
      fail("path.unique_keys", `the key of path node ${i} is not a fresh X25519 key`);
    }
    fresh.add(key);
  });
  const parentHashes = tree.pathParentHashes(steps, keys);
  if (path.leafNode.leafNodeSource !== "commit" || !bytesEqual(parentHashes.leaf, path.leafNode.parentHash)) {
    fail("path.parent_hash", "the leaf's parent_hash does not match the path");
  }
  tree.mergePath(committerLeaf, path.leafNode, steps, keys, parentHashes);
}

/**
 * RFC 9420 §12.4.1 "Construct a GroupInfo reflecting the new state": the GroupInfo the committer
 * publishes carries the new GroupContext and the commit's confirmation tag, is signed by the
 * committer, and, if it carries the ratchet tree, carries ours.
 */
function checkGroupInfo(
  groupInfoBytes: Uint8Array,
  groupContextBytes: Uint8Array,
  committerLeaf: number,
  committer: LeafNode,
  confirmationTag: Uint8Array,
  tree: PublicTree,
): void {
  const fail: (rule: string, message: string) => never = (rule, message) =>
    refuse("IO.MIMI_APPSERVICE.MLS_GROUPINFO_MISMATCH", rule, message);
  const message = decodeCanonical(decodeMlsMessage, encodeMlsMessage, groupInfoBytes, "MLSMessage");
  if (message.wireformat !== "mls_group_info")
    fail("group_info.wire_format", "the message is not a GroupInfo");
  const groupInfo = message.groupInfo;
  if (!bytesEqual(encodeGroupContext(groupInfo.groupContext), groupContextBytes)) {
    fail("group_info.group_context", "the GroupInfo's GroupContext is not the one the commit leads to");
  }
  if (groupInfo.signer !== committerLeaf)
    fail("group_info.signer", "the GroupInfo is not signed by the committer");
  if (!bytesEqual(groupInfo.confirmationTag, confirmationTag)) {
    fail("group_info.confirmation_tag", "the GroupInfo's confirmation tag is not the commit's");
  }
  if (
    !verifyWithLabel(
      committer.signaturePublicKey,
      "GroupInfoTBS",
      encodeGroupInfoTBS(groupInfo),
      groupInfo.signature,
    )
  ) {
    fail("group_info.signature", "the GroupInfo's signature does not verify with the committer's key");
  }
  const treeExtension = groupInfo.extensions.find((e) => e.extensionType === "ratchet_tree");
  if (treeExtension !== undefined && !bytesEqual(treeExtension.extensionData, tree.encode())) {
    fail("group_info.ratchet_tree", "the GroupInfo's ratchet tree is not the tree the commit leads to");
  }
}

function identityOrEmpty(leaf: LeafNode): Uint8Array {
  return identityOf(leaf.credential) ?? new Uint8Array();
}
