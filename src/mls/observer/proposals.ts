import type { Extension, GroupContext, LeafNode, PreSharedKeyID, Proposal } from "ts-mls";
import { extensionTypeToNumber } from "ts-mls/extension.js";
import { encodePskId } from "ts-mls/presharedkey.js";
import { refuse } from "./errors";
import {
  extensionsListed,
  requiredCapabilitiesOf,
  validateKeyPackage,
  validateLeafNode,
} from "./leafValidation";
import type { PublicTree } from "./publicTree";
import { HASH_LENGTH } from "./suite";
import { bytesEqual, externalSendersOf, identityOf } from "./wire";

/** RFC 9420 §12.1.8: the proposal types an external sender may send. */
export const EXTERNAL_SENDER_PROPOSAL_TYPES: ReadonlySet<string> = new Set([
  "add",
  "remove",
  "psk",
  "reinit",
  "group_context_extensions",
]);

export type ProposalTypeName = Exclude<Proposal["proposalType"], number> | "custom";

export function proposalTypeOf(proposal: Proposal): ProposalTypeName {
  return typeof proposal.proposalType === "number" ? "custom" : proposal.proposalType;
}

/**
 * Proposal types the observer refuses outright. ReInit: a room's cipher suite and protocol are
 * fixed when it is created (LM-04 §MLS Considerations), so a group is never reinitialized. A
 * proposal of a non-default type: the hub cannot tell what it does to the group's public state.
 * ExternalInit: only valid inside an external commit (RFC 9420 §12.1.6, §12.2).
 */
export function refuseUnsupportedType(proposal: Proposal): void {
  const type = proposalTypeOf(proposal);
  if (type === "reinit")
    refuse("IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", "proposal.reinit", "ReInit proposals are not accepted");
  if (type === "custom") {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      "proposal.type",
      `proposals of type ${String(proposal.proposalType)} are not accepted`,
    );
  }
}

/** RFC 9420 §12.1.4: a PreSharedKey proposal's ID. Whether members hold the PSK is theirs to check. */
export function checkPreSharedKey(id: PreSharedKeyID): void {
  if (id.pskNonce.length !== HASH_LENGTH) {
    refuse("IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", "psk.nonce", "the psk_nonce is not KDF.Nh bytes long");
  }
  if (id.psktype === "resumption" && id.usage !== "application") {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      "psk.usage",
      `a resumption PSK with usage ${id.usage} is only for reinit or branch`,
    );
  }
}

export function pskIdKey(id: PreSharedKeyID): string {
  return Buffer.from(encodePskId(id)).toString("hex");
}

/**
 * RFC 9420 §12.1.7, §13.4: a new list of GroupContext extensions. `members` are the leaves that
 * will be in the group after the commit (for a proposal alone: the current ones).
 */
export function checkGroupContextExtensions(extensions: Extension[], members: LeafNode[]): void {
  const types = extensions.map((e) => extensionTypeToNumber(e.extensionType));
  if (new Set(types).size !== types.length) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      "group_context_extensions.duplicate",
      "an extension type appears twice",
    );
  }
  externalSendersOf(extensions);
  const required = requiredCapabilitiesOf(extensions);
  for (const member of members) {
    const capabilities = member.capabilities;
    if (!extensionsListed(extensions, capabilities.extensions)) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "group_context_extensions.support",
        "a member does not support a new extension",
      );
    }
    if (
      required !== undefined &&
      !(
        required.extensionTypes.every((t) => capabilities.extensions.includes(t)) &&
        required.proposalTypes.every((t) => capabilities.proposals.includes(t)) &&
        required.credentialTypes.every((t) => capabilities.credentials.includes(t))
      )
    ) {
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "group_context_extensions.required_capabilities",
        "a member lacks a required capability",
      );
    }
  }
}

/**
 * RFC 9420 §5.3.1: a member's new credential must be a valid successor of its old one. Here it
 * must present the same identity, so a member cannot take another user's name by an Update or
 * by the leaf of its commit.
 */
export function checkSameIdentity(
  before: LeafNode,
  after: LeafNode,
  errcode: "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL" | "IO.MIMI_APPSERVICE.MLS_BAD_PATH",
): void {
  const old = identityOf(before.credential);
  const next = identityOf(after.credential);
  if (old === undefined || next === undefined || !bytesEqual(old, next)) {
    refuse(
      errcode,
      "leaf_node.identity",
      "the new leaf node presents another identity than the leaf it replaces",
    );
  }
}

export interface ProposalCheckContext {
  groupContext: GroupContext;
  tree: PublicTree;
  now: bigint;
}

/**
 * RFC 9420 §12.1: one proposal, received alone, valid in the current epoch. `senderLeaf` is the
 * sender's leaf index for a member, undefined for an external sender or a new member.
 */
export function checkProposalAlone(
  proposal: Proposal,
  senderLeaf: number | undefined,
  context: ProposalCheckContext,
): void {
  refuseUnsupportedType(proposal);
  const { groupContext, tree, now } = context;
  switch (proposal.proposalType) {
    case "add":
      validateKeyPackage(proposal.add.keyPackage, groupContext, tree, now);
      return;
    case "update": {
      const current = senderLeaf === undefined ? undefined : tree.leaf(senderLeaf);
      if (senderLeaf === undefined || current === undefined) {
        refuse("IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", "update.sender", "only a member can send an Update");
      }
      validateLeafNode(proposal.update.leafNode, {
        origin: { source: "update", groupId: groupContext.groupId, leafIndex: senderLeaf },
        groupContext,
        tree,
        replacesLeaf: senderLeaf,
        now,
        errcode: "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      });
      checkSameIdentity(current, proposal.update.leafNode, "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL");
      return;
    }
    case "remove":
      if (tree.leaf(proposal.remove.removed) === undefined) {
        refuse(
          "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
          "remove.blank_leaf",
          `leaf ${proposal.remove.removed} is blank`,
        );
      }
      return;
    case "psk":
      checkPreSharedKey(proposal.psk.preSharedKeyId);
      return;
    case "group_context_extensions":
      checkGroupContextExtensions(
        proposal.groupContextExtensions.extensions,
        tree.members().map(([, leaf]) => leaf),
      );
      return;
    case "external_init":
      refuse(
        "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
        "external_init.alone",
        "ExternalInit is only valid inside an external commit",
      );
  }
}
