import type { GroupInfo, Sender } from "ts-mls";
import { decodeMlsMessage, encodeMlsMessage } from "ts-mls";
import { decodeAuthenticatedContent, encodeAuthenticatedContent } from "ts-mls/authenticatedContent.js";
import { decodeUint8, uint8Encoder } from "ts-mls/codec/number.js";
import { mapDecoders } from "ts-mls/codec/tlsDecoder.js";
import { composeBufferEncoders, encode } from "ts-mls/codec/tlsEncoder.js";
import {
  decodeVarLenData,
  decodeVarLenType,
  varLenDataEncoder,
  varLenTypeEncoder,
} from "ts-mls/codec/variableLength.js";
import { encodeGroupContext } from "ts-mls/groupContext.js";
import { encodeGroupInfoTBS } from "ts-mls/groupInfo.js";
import type { CommitChange } from "./commit";
import { stageCommit } from "./commit";
import { refuse } from "./errors";
import { validateLeafNode } from "./leafValidation";
import type { ProposalTypeName } from "./proposals";
import { checkProposalAlone, EXTERNAL_SENDER_PROPOSAL_TYPES, proposalTypeOf } from "./proposals";
import { PublicTree } from "./publicTree";
import type { CommitPolicy, ObserverState, StoredProposal } from "./state";
import { checkContentSignature, checkGroupAndEpoch } from "./state";
import { refHash, SUPPORTED_CIPHERSUITE, SUPPORTED_VERSION, verifyWithLabel } from "./suite";
import {
  bytesEqual,
  decodeCanonical,
  decodeExactly,
  decodePublicMessageMessage,
  externalSendersOf,
  identityOf,
  keyOf,
  type ExternalSender,
} from "./wire";

export interface ObserverOptions {
  /** Milliseconds since the Unix epoch, for KeyPackage lifetimes; `Date.now` by default. */
  clock?: () => number;
}

/** Who sent a proposal received alone. */
export type ProposalSender =
  | { kind: "member"; leafIndex: number }
  | { kind: "external"; senderIndex: number }
  | { kind: "new_member" };

export interface ProposalReceipt {
  reference: Uint8Array;
  type: ProposalTypeName;
  sender: ProposalSender;
  /** For a Remove: the leaf it removes. */
  removes?: number;
}

export interface Member {
  leafIndex: number;
  identity: Uint8Array;
}

const STATE_FORMAT = 1;
const PROPOSAL_REFERENCE_LABEL = "MLS 1.0 Proposal Reference";

// The stored state: a format byte, the epoch's GroupInfo, the ratchet tree and the proposals
// received in the epoch (each as its AuthenticatedContent).
const stateEncoder = composeBufferEncoders([
  uint8Encoder,
  varLenDataEncoder,
  varLenDataEncoder,
  varLenTypeEncoder(varLenDataEncoder),
]);
const decodeStoredState = mapDecoders(
  [decodeUint8, decodeVarLenData, decodeVarLenData, decodeVarLenType(decodeVarLenData)],
  (format, groupInfo, ratchetTree, proposals) => ({ format, groupInfo, ratchetTree, proposals }),
);

/**
 * The hub's view of one MLS group: its public state (ratchet tree, GroupContext, the epoch's
 * GroupInfo and proposals), kept from PublicMessage handshake messages alone, without any secret
 * of the group. Pure: no I/O. Every operation returns a new observer and leaves this one as it
 * was, so the caller moves to the new state only once it is stored.
 */
export class GroupObserver {
  private constructor(
    private readonly state: ObserverState,
    private readonly options: ObserverOptions,
  ) {}

  /**
   * Starts from a GroupInfo (an MLSMessage, as a member publishes it) and the ratchet tree (the
   * GroupInfo's ratchet_tree extension or `ratchetTree`, or both when they are equal), with the
   * checks a joiner makes (RFC 9420 §12.4.3.1): the tree hash, the signer's signature, the tree's
   * integrity and every leaf node.
   */
  static fromGroupInfo(
    groupInfoBytes: Uint8Array,
    ratchetTree?: Uint8Array,
    options: ObserverOptions = {},
  ): GroupObserver {
    const groupInfo = decodeGroupInfoMessage(groupInfoBytes);
    const groupContext = groupInfo.groupContext;
    if (groupContext.cipherSuite !== SUPPORTED_CIPHERSUITE || groupContext.version !== SUPPORTED_VERSION) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
        "group.ciphersuite",
        `the group uses ${groupContext.cipherSuite} (${groupContext.version}); only ${SUPPORTED_CIPHERSUITE} is supported`,
      );
    }
    const treeExtension = groupInfo.extensions.find((e) => e.extensionType === "ratchet_tree")?.extensionData;
    const treeBytes = ratchetTree === undefined ? treeExtension : owned(ratchetTree);
    if (treeBytes === undefined)
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
        "tree.missing",
        "neither the GroupInfo nor the caller gives the ratchet tree",
      );
    if (ratchetTree !== undefined && treeExtension !== undefined && !bytesEqual(ratchetTree, treeExtension)) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
        "tree.mismatch",
        "the ratchet tree given differs from the GroupInfo's",
      );
    }
    const tree = PublicTree.decode(treeBytes);
    if (!bytesEqual(tree.rootHash(), groupContext.treeHash)) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
        "tree.hash",
        "the ratchet tree's hash is not the GroupContext's tree_hash",
      );
    }
    const signer = tree.leaf(groupInfo.signer);
    if (signer === undefined)
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
        "group_info.signer",
        "the GroupInfo's signer is a blank leaf",
      );
    if (
      !verifyWithLabel(
        signer.signaturePublicKey,
        "GroupInfoTBS",
        encodeGroupInfoTBS(groupInfo),
        groupInfo.signature,
      )
    ) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE",
        "group_info.signature",
        "the GroupInfo's signature does not verify",
      );
    }
    tree.verifyIntegrity();
    const credentialTypes = tree.credentialTypesInUse();
    for (const [leafIndex, leaf] of tree.members()) {
      // RFC 9420 §7.3: every member supports every credential type in use.
      if (
        !credentialTypes.every((type) => (leaf.capabilities.credentials as readonly string[]).includes(type))
      ) {
        refuse(
          "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
          "leaf_node.credential",
          `leaf ${leafIndex} does not support every credential type in use`,
        );
      }
      validateLeafNode(leaf, {
        origin:
          leaf.leafNodeSource === "key_package"
            ? { source: "key_package" }
            : { source: leaf.leafNodeSource, groupId: groupContext.groupId, leafIndex },
        groupContext,
        tree,
        replacesLeaf: leafIndex,
        now: 0n,
        existing: true,
        errcode: "IO.MIMI_APPSERVICE.MLS_BAD_TREE",
      });
    }
    return new GroupObserver(
      {
        groupContext,
        groupContextBytes: encodeGroupContext(groupContext),
        tree,
        confirmationTag: groupInfo.confirmationTag,
        groupInfo: groupInfoBytes,
        proposals: new Map(),
        externalSenders: externalSendersOf(groupContext.extensions),
      },
      options,
    );
  }

  /** Restores an observer from `encode()`. The tree's hashes are recomputed and checked. */
  static decode(bytes: Uint8Array, options: ObserverOptions = {}): GroupObserver {
    const stored = decodeExactly(decodeStoredState, owned(bytes), "observer state");
    if (stored.format !== STATE_FORMAT) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        "state.format",
        `unknown observer state format ${stored.format}`,
      );
    }
    const groupInfo = decodeGroupInfoMessage(stored.groupInfo);
    const groupContext = groupInfo.groupContext;
    const tree = PublicTree.decode(stored.ratchetTree);
    if (!bytesEqual(tree.rootHash(), groupContext.treeHash)) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        "state.tree_hash",
        "the stored tree does not match the stored GroupContext",
      );
    }
    const proposals = new Map<string, StoredProposal>();
    for (const authenticatedContent of stored.proposals) {
      const decoded = decodeExactly(decodeAuthenticatedContent, authenticatedContent, "AuthenticatedContent");
      if (decoded.content.contentType !== "proposal") {
        refuse("IO.MIMI_APPSERVICE.MLS_MALFORMED", "state.proposal", "a stored proposal is not a proposal");
      }
      const reference = refHash(PROPOSAL_REFERENCE_LABEL, authenticatedContent);
      proposals.set(keyOf(reference), {
        reference,
        proposal: decoded.content.proposal,
        sender: decoded.content.sender,
        authenticatedContent,
      });
    }
    return new GroupObserver(
      {
        groupContext,
        groupContextBytes: encodeGroupContext(groupContext),
        tree,
        confirmationTag: groupInfo.confirmationTag,
        groupInfo: stored.groupInfo,
        proposals,
        externalSenders: externalSendersOf(groupContext.extensions),
      },
      options,
    );
  }

  encode(): Uint8Array {
    return encode(stateEncoder)([
      STATE_FORMAT,
      this.state.groupInfo,
      this.state.tree.encode(),
      [...this.state.proposals.values()].map((p) => p.authenticatedContent),
    ]);
  }

  get epoch(): bigint {
    return this.state.groupContext.epoch;
  }

  get groupId(): Uint8Array {
    return this.state.groupContext.groupId;
  }

  get treeHash(): Uint8Array {
    return this.state.groupContext.treeHash;
  }

  /** The encoded GroupContext of the current epoch. */
  groupContext(): Uint8Array {
    return this.state.groupContextBytes;
  }

  /** The current epoch's GroupInfo (an MLSMessage) as its committer signed it, for external joiners. */
  groupInfo(): Uint8Array {
    return this.state.groupInfo;
  }

  /** The current ratchet tree, encoded as the ratchet_tree extension carries it. */
  ratchetTree(): Uint8Array {
    return this.state.tree.encode();
  }

  members(): Member[] {
    return this.state.tree.members().map(([leafIndex, leaf]) => ({
      leafIndex,
      identity: identityOf(leaf.credential) ?? new Uint8Array(),
    }));
  }

  /** The group's external senders (RFC 9420 §12.1.8.1), in the order `sender_index` counts them. */
  externalSenders(): readonly ExternalSender[] {
    return this.state.externalSenders;
  }

  /** The proposals received in this epoch that a commit may still cover by reference. */
  pendingProposals(): ProposalReceipt[] {
    return [...this.state.proposals.values()].map(receiptOf);
  }

  /**
   * Validates a PublicMessage commit for the current epoch (a member's, or a new member's
   * external commit) and the GroupInfo its committer published for the new epoch. Returns what it
   * changes and the observer of the new epoch; throws an `MlsObserverError` otherwise. The first
   * commit accepted for an epoch wins: any other commit for that epoch is then refused as being
   * for a past epoch.
   */
  validateCommit(
    commit: Uint8Array,
    groupInfo: Uint8Array,
    policy: CommitPolicy = {},
  ): { change: CommitChange; observer: GroupObserver } {
    const staged = stageCommit(this.state, owned(commit), owned(groupInfo), policy, this.nowSeconds());
    return { change: staged.change, observer: new GroupObserver(staged.state, this.options) };
  }

  /**
   * Validates a proposal sent alone as PublicMessage (RFC 9420 §12.1) by a member, by an external
   * sender listed in the group's external_senders extension (§12.1.8: the hub's Removes), or by a
   * new member (an Add of itself), and remembers it until the epoch ends.
   */
  validateProposal(messageBytes: Uint8Array): { proposal: ProposalReceipt; observer: GroupObserver } {
    const state = this.state;
    const message = decodePublicMessageMessage(owned(messageBytes), "proposal");
    const { content, auth } = message;
    if (content.contentType !== "proposal")
      refuse("IO.MIMI_APPSERVICE.MLS_MALFORMED", "proposal.content_type", "the message is not a proposal");
    checkGroupAndEpoch(state, content);

    const proposal = content.proposal;
    const sender = content.sender;
    let signatureKey: Uint8Array;
    let senderLeaf: number | undefined;
    switch (sender.senderType) {
      case "member": {
        const leaf = state.tree.leaf(sender.leafIndex);
        if (leaf === undefined)
          refuse(
            "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
            "proposal.sender",
            `leaf ${sender.leafIndex} is not a member`,
          );
        signatureKey = leaf.signaturePublicKey;
        senderLeaf = sender.leafIndex;
        break;
      }
      case "external": {
        const externalSender = state.externalSenders[sender.senderIndex];
        if (externalSender === undefined) {
          refuse(
            "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
            "proposal.sender",
            `the group has no external sender ${sender.senderIndex}`,
          );
        }
        if (!EXTERNAL_SENDER_PROPOSAL_TYPES.has(proposalTypeOf(proposal))) {
          // RFC 9420 §12.1.8: other types from an external sender MUST be rejected as malformed.
          refuse(
            "IO.MIMI_APPSERVICE.MLS_MALFORMED",
            "proposal.external_type",
            "an external sender cannot send this proposal type",
          );
        }
        signatureKey = externalSender.signaturePublicKey;
        break;
      }
      case "new_member_proposal":
        if (proposal.proposalType !== "add") {
          refuse(
            "IO.MIMI_APPSERVICE.MLS_MALFORMED",
            "proposal.new_member_type",
            "a new member can only propose to add itself",
          );
        }
        signatureKey = proposal.add.keyPackage.leafNode.signaturePublicKey;
        break;
      case "new_member_commit":
        refuse(
          "IO.MIMI_APPSERVICE.MLS_MALFORMED",
          "proposal.sender",
          "a new_member_commit sender cannot send a proposal",
        );
    }
    checkContentSignature(state, message, signatureKey);
    checkProposalAlone(proposal, senderLeaf, {
      groupContext: state.groupContext,
      tree: state.tree,
      now: this.nowSeconds(),
    });

    const authenticatedContent = encodeAuthenticatedContent({
      wireformat: "mls_public_message",
      content,
      auth,
    });
    const reference = refHash(PROPOSAL_REFERENCE_LABEL, authenticatedContent);
    const stored: StoredProposal = { reference, proposal, sender, authenticatedContent };
    const proposals = new Map(state.proposals);
    proposals.set(keyOf(reference), stored);
    return {
      proposal: receiptOf(stored),
      observer: new GroupObserver({ ...state, proposals }, this.options),
    };
  }

  private nowSeconds(): bigint {
    return BigInt(Math.floor((this.options.clock ?? Date.now)() / 1000));
  }
}

/**
 * A copy of the caller's bytes: decoded values point into the buffer they were decoded from, and
 * the state must not change if the caller reuses its buffer.
 */
function owned(bytes: Uint8Array): Uint8Array {
  return Uint8Array.from(bytes);
}

function decodeGroupInfoMessage(bytes: Uint8Array): GroupInfo {
  const message = decodeCanonical(decodeMlsMessage, encodeMlsMessage, bytes, "MLSMessage");
  if (message.wireformat !== "mls_group_info")
    refuse("IO.MIMI_APPSERVICE.MLS_MALFORMED", "group_info.wire_format", "the message is not a GroupInfo");
  return message.groupInfo;
}

function senderOf(sender: Sender): ProposalSender {
  switch (sender.senderType) {
    case "member":
      return { kind: "member", leafIndex: sender.leafIndex };
    case "external":
      return { kind: "external", senderIndex: sender.senderIndex };
    default:
      return { kind: "new_member" };
  }
}

function receiptOf(stored: StoredProposal): ProposalReceipt {
  const receipt: ProposalReceipt = {
    reference: stored.reference,
    type: proposalTypeOf(stored.proposal),
    sender: senderOf(stored.sender),
  };
  if (stored.proposal.proposalType === "remove") receipt.removes = stored.proposal.remove.removed;
  return receipt;
}
