import type { FramedContent, GroupContext, KeyPackage, Proposal, Sender } from "ts-mls";
import { MlsWrongEpochError, refuse } from "./errors";
import type { PublicTree } from "./publicTree";
import { verifyWithLabel } from "./suite";
import type { ExternalSender, ReceivedPublicMessage } from "./wire";
import { bytesEqual } from "./wire";

/** A proposal received alone, as PublicMessage, in the current epoch (RFC 9420 §12.1). */
export interface StoredProposal {
  /** ProposalRef: RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent) (RFC 9420 §5.2). */
  reference: Uint8Array;
  proposal: Proposal;
  sender: Sender;
  /** The AuthenticatedContent it came in, from which it is restored when the state is decoded. */
  authenticatedContent: Uint8Array;
}

/** Everything the observer knows of the group in one epoch. Never changed once built. */
export interface ObserverState {
  groupContext: GroupContext;
  groupContextBytes: Uint8Array;
  tree: PublicTree;
  /** The confirmation_tag of the commit that began the epoch (or of the GroupInfo we started from). */
  confirmationTag: Uint8Array;
  /** The GroupInfo of the epoch as its committer published it (an MLSMessage). */
  groupInfo: Uint8Array;
  /** Proposals of this epoch by hex reference, in the order received. */
  proposals: ReadonlyMap<string, StoredProposal>;
  externalSenders: ExternalSender[];
}

/** The caller's policy on who may commit and who may be added; each returns a refusal or nothing. */
export interface CommitPolicy {
  /**
   * A commit's sender: a member committing (`member`), or a client joining by external commit
   * (`external`), by the identity of its basic credential.
   */
  authorizeCommitter?(identity: Uint8Array, how: "member" | "external"): PolicyRefusal | undefined;
  /** A client about to be added by an Add proposal, by identity and the KeyPackage it comes with. */
  authorizeAdd?(identity: Uint8Array, keyPackage: KeyPackage): PolicyRefusal | undefined;
}

export interface PolicyRefusal {
  reason: string;
}

export function checkPolicy(refusal: PolicyRefusal | undefined, rule: string): void {
  if (refusal !== undefined) refuse("IO.MIMI_APPSERVICE.MLS_FORBIDDEN", rule, refusal.reason);
}

/** The checks every handshake message starts with: the group and the epoch (RFC 9420 §12.1, §12.4.2). */
export function checkGroupAndEpoch(state: ObserverState, content: FramedContent): void {
  if (!bytesEqual(content.groupId, state.groupContext.groupId)) {
    refuse("IO.MIMI_APPSERVICE.MLS_WRONG_GROUP", "group_id", "the message is for another group");
  }
  if (content.epoch !== state.groupContext.epoch) {
    throw new MlsWrongEpochError(state.groupContext.epoch, content.epoch);
  }
}

/**
 * The FramedContent signature (RFC 9420 §6.1), over FramedContentTBS with the current
 * GroupContext for member and new-member-commit senders.
 *
 * A PublicMessage from a member also carries a membership_tag, a MAC under the epoch's
 * membership_key (RFC 9420 §6.2). The hub is not a member and has no epoch secrets, so it cannot
 * check it; the signature and the sender's place in the tree are what it relies on.
 */
export function checkContentSignature(
  state: ObserverState,
  message: ReceivedPublicMessage,
  signaturePublicKey: Uint8Array,
): void {
  // FramedContentTBS: version, wire_format, content, and the GroupContext unless the sender is
  // an external sender or a new member proposing itself.
  const sender = message.content.sender.senderType;
  const context =
    sender === "member" || sender === "new_member_commit" ? state.groupContextBytes : new Uint8Array();
  const tbs = Buffer.concat([message.header, message.framedContent, context]);
  if (!verifyWithLabel(signaturePublicKey, "FramedContentTBS", tbs, message.auth.signature)) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE",
      "content.signature",
      "the message's signature does not verify",
    );
  }
}
