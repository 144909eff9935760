import { MimiError, type ErrorCode } from "../../errors";
import type { BatchOp, KvStore } from "../../store/kv";
import { MlsError } from "../errors";
import {
  CodecError,
  CryptoVerificationError,
  MlsError as LibraryError,
  acceptAll,
  createApplicationMessage,
  createCommit as createLibraryCommit,
  createGroup,
  createGroupInfoWithExternalPubAndRatchetTree,
  decodeKeyPackage,
  decodeRatchetTree,
  emptyPskIndex,
  encodeMlsMessage,
  encodeRatchetTree,
  joinGroup,
  joinGroupExternal,
  makePskIndex,
  processMessage,
  unprotectPrivateMessage,
  type CiphersuiteImpl,
  type ClientState,
  type Extension,
  type KeyPackage,
  type PrivateKeyPackage,
  type Proposal,
  type RatchetTree,
} from "../tsMls";
import { clientConfigFor, credentialUserId, type CredentialPolicy } from "./authService";
import { generateClientKeyPackage, type ClientIdentity } from "./identity";
import {
  decodeState,
  decodeWholeState,
  encodeSecrets,
  encodeState,
  encodeTrees,
  sameTrees,
} from "./stateCodec";
import { epochCommitKey, groupStateKey, groupTreesKey, pendingCommitKey } from "./storeKeys";
import { suiteForAlgorithm, loadSuite } from "./suite";
import { decodeMlsMessageOf, decodeWhole, fromBase64, sameBytes, toBase64, type MlsMessageOf } from "./wire";

/**
 * A local user's MLS client in one room's group (LM-04 §MLS Considerations: the group ID is the
 * room ID's UTF-8 bytes). Never changed in place: every operation below is a function of a
 * HostedGroup and its input that returns a new HostedGroup, its output, and the store operations
 * that persist the change (secrets included). The caller writes those operations in the same
 * atomic batch as the event that caused the change, and keeps the new HostedGroup only once that
 * batch is durable; nothing here writes to the store.
 */
export interface HostedGroup {
  readonly userId: string;
  readonly roomId: string;
  readonly groupId: Uint8Array;
  /** Who may have a client in this group; asked about every credential ts-mls meets. */
  readonly policy: CredentialPolicy;
  /** The client's state at its current epoch; undefined while its external join awaits the hub. */
  readonly state: ClientState | undefined;
  /** The m.mls.commit that began the current epoch; undefined at epoch 0, before any commit. */
  readonly commitEventId: string | undefined;
  /** The client's own commit, sent to the hub and not yet sequenced (or refused). */
  readonly pending: PendingCommit | undefined;
}

export interface PendingCommit {
  /** The MLSMessage (a PublicMessage commit) as sent. */
  readonly message: Uint8Array;
  /** The client's state once the hub has sequenced the commit. */
  readonly state: ClientState;
}

export interface GroupChange {
  group: HostedGroup;
  ops: BatchOp[];
}

/** A commit ready to be sent as an m.mls.commit (LM-04 §Room Event Types). */
export interface CreatedCommit extends GroupChange {
  /** The MLSMessage carrying the commit as a PublicMessage: the event's `message`. */
  commit: Uint8Array;
  /** The MLSMessage carrying the signed GroupInfo of the new epoch, with external_pub and the ratchet tree: the event's `public_group_state`. */
  groupInfo: Uint8Array;
  /** The new epoch's ratchet tree (RFC 9420 §12.4.3.3), also inside `groupInfo` and `welcome`. */
  ratchetTree: Uint8Array;
  /** The MLSMessage carrying the Welcome for the added clients, if any. */
  welcome: Uint8Array | undefined;
  /** The epoch the commit begins. */
  epoch: bigint;
}

export interface ProcessedCommit extends GroupChange {
  epoch: bigint;
  /** The commit was the client's own pending one. */
  own: boolean;
  /** The commit removed this client: it can neither send nor read from the next epoch on. */
  removed: boolean;
}

export interface EncryptedMessage extends GroupChange {
  /** The MLSMessage carrying the PrivateMessage: the m.room.encrypted event's `ciphertext`. */
  ciphertext: Uint8Array;
  epoch: bigint;
  /** The event's `commit_event_id`: the commit that began the message's epoch. */
  commitEventId: string;
}

export interface DecryptedMessage extends GroupChange {
  plaintext: Uint8Array;
  epoch: bigint;
  /** The sender's MIMI user ID, from its leaf's credential in the message's epoch. */
  senderUserId: string;
  senderLeafIndex: number;
}

/** The private keys of the KeyPackage a Welcome was made for, and the operations that consume it. */
export interface WelcomeKeys {
  keyPackage: KeyPackage;
  privatePackage: PrivateKeyPackage;
  /** Deletes a one-time KeyPackage's private keys once used (RFC 9420 §16.8); none for a last-resort one. */
  consumeOps: readonly BatchOp[];
}

export interface GroupMember {
  leafIndex: number;
  /** The MIMI user ID of the leaf's credential; undefined if it names none. */
  userId: string | undefined;
}

const utf8 = new TextEncoder();
/** Lifetime of the KeyPackage a client makes for its own leaf (creating a group, joining externally). */
const OWN_LEAF_LIFETIME_MS = 90 * 24 * 60 * 60 * 1000;

export function groupIdOf(roomId: string): Uint8Array {
  return utf8.encode(roomId);
}

// ---- the operations ----

/** Creates the room's group at epoch 0 with the user's client as its only member (RFC 9420 §11). */
export async function createHostedGroup(input: {
  identity: ClientIdentity;
  roomId: string;
  /** The room's `m.room.create` `encryption_algorithm`. */
  encryptionAlgorithm: unknown;
  policy: CredentialPolicy;
  /** GroupContext extensions, e.g. the hub's `external_senders` (RFC 9420 §12.1.8.1). */
  extensions?: Extension[];
  now?: number;
}): Promise<GroupChange> {
  const cs = await loadSuite(suiteForAlgorithm(input.encryptionAlgorithm));
  const groupId = groupIdOf(input.roomId);
  const { publicPackage, privatePackage } = await generateClientKeyPackage(input.identity, cs, {
    now: input.now ?? Date.now(),
    lifetimeMs: OWN_LEAF_LIFETIME_MS,
  });
  const { config, auth } = clientConfigFor(groupId, input.policy);
  const state = await guarded(auth, "IO.MIMI_APPSERVICE.MLS_BAD_TREE", "group.create", () =>
    createGroup(groupId, publicPackage, privatePackage, input.extensions ?? [], cs, config),
  );
  const group: HostedGroup = {
    userId: input.identity.userId,
    roomId: input.roomId,
    groupId,
    policy: input.policy,
    state,
    commitEventId: undefined,
    pending: undefined,
  };
  return { group, ops: stateOps(group, state, undefined, undefined) };
}

/**
 * A commit of the client's current epoch, as a PublicMessage (LM-04 §MLS Considerations): adding
 * a client for each KeyPackage (as claimed, RFC 9420 §10), removing the given leaves, or neither
 * (an empty commit, which updates the client's path). It stays pending until the hub sequences it
 * (`commitAccepted`) or refuses it (`commitRefused`); its operations store it so that a restart
 * in between loses nothing.
 */
export async function createCommit(
  group: HostedGroup,
  changes: { add?: readonly Uint8Array[]; remove?: readonly number[] } = {},
): Promise<CreatedCommit> {
  const state = activeState(group);
  if (group.pending !== undefined) {
    throw new MlsError(
      "M_INVALID_PARAM",
      "commit.pending",
      "the client's previous commit is still waiting for the hub: wait for it, or for its refusal",
    );
  }
  const proposals: Proposal[] = [
    ...(changes.add ?? []).map(
      (bytes): Proposal => ({
        proposalType: "add",
        add: { keyPackage: decodeWhole(decodeKeyPackage, bytes, "a KeyPackage") },
      }),
    ),
    ...(changes.remove ?? []).map(
      (leafIndex): Proposal => ({ proposalType: "remove", remove: { removed: leafIndex } }),
    ),
  ];
  const cs = await loadSuite(state.groupContext.cipherSuite);
  const { config, auth } = clientConfigFor(group.groupId, group.policy);
  const result = await guarded(auth, "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", "commit.create", () =>
    createLibraryCommit(
      { state: { ...state, clientConfig: config }, cipherSuite: cs },
      { extraProposals: proposals, wireAsPublicMessage: true, ratchetTreeExtension: true },
    ),
  );
  const commit = encodeMlsMessage(result.commit);
  const pending: PendingCommit = { message: commit, state: result.newState };
  const next: HostedGroup = { ...group, pending };
  return {
    group: next,
    ops: [pendingOp(next, pending)],
    commit,
    groupInfo: await publicGroupInfo(result.newState, cs),
    ratchetTree: encodeRatchetTree(result.newState.ratchetTree),
    welcome:
      result.welcome === undefined
        ? undefined
        : encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: result.welcome }),
    epoch: result.newState.groupContext.epoch,
  };
}

/**
 * The hub sequenced the client's pending commit as the event `commitEventId`: its state becomes
 * current, and the epoch it began is recorded against the event (LM-04 §Updating Group State: "a
 * device remembers the event ID ... to associate it with the MLS epoch"). Synchronous, so the hub
 * can call it while it sequences the event.
 */
export function commitAccepted(group: HostedGroup, commitEventId: string): GroupChange {
  const pending = group.pending;
  if (pending === undefined) {
    throw new MlsError(
      "M_INVALID_PARAM",
      "commit.none_pending",
      "the client has no commit waiting for the hub",
    );
  }
  const next: HostedGroup = { ...group, state: pending.state, commitEventId, pending: undefined };
  return {
    group: next,
    ops: [
      ...stateOps(next, pending.state, commitEventId, group.state),
      { type: "del", key: pendingCommitKey(group.userId, group.roomId) },
      epochOp(next, pending.state.groupContext.epoch, commitEventId),
    ],
  };
}

/** The hub refused the pending commit (e.g. another won the epoch): the client stays where it was. */
export function commitRefused(group: HostedGroup): GroupChange {
  const next: HostedGroup = { ...group, pending: undefined };
  return { group: next, ops: [{ type: "del", key: pendingCommitKey(group.userId, group.roomId) }] };
}

/**
 * An m.mls.commit of the room, sequenced as `commitEventId`. The client's own pending commit is
 * adopted as it is (a sender cannot process its own commit); any other commit is processed, and a
 * pending commit of the client for the same epoch has then lost and is dropped.
 */
export async function processCommit(
  group: HostedGroup,
  message: Uint8Array,
  commitEventId: string,
): Promise<ProcessedCommit> {
  const decoded = decodeMlsMessageOf(message, "mls_public_message");
  const content = decoded.publicMessage.content;
  if (content.contentType !== "commit") {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "commit.content_type",
      "the message is not a commit",
    );
  }
  if (group.pending !== undefined && sameBytes(group.pending.message, message)) {
    const accepted = commitAccepted(group, commitEventId);
    return { ...accepted, epoch: group.pending.state.groupContext.epoch, own: true, removed: false };
  }
  const { state, newState } = await processPublic(group, decoded, "commit");
  const removed = newState.groupActiveState.kind === "removedFromGroup";
  // A removed client stays at the epoch it last had keys for: the commit's epoch is not its own.
  const next: HostedGroup = {
    ...group,
    state: newState,
    commitEventId: removed ? group.commitEventId : commitEventId,
    pending: undefined,
  };
  const ops: BatchOp[] = stateOps(next, newState, next.commitEventId, state);
  if (!removed) ops.push(epochOp(next, newState.groupContext.epoch, commitEventId));
  if (group.pending !== undefined)
    ops.push({ type: "del", key: pendingCommitKey(group.userId, group.roomId) });
  return { group: next, ops, epoch: newState.groupContext.epoch, own: false, removed };
}

/** ts-mls processes a PublicMessage of the client's group and epoch, a commit or a proposal. */
async function processPublic(
  group: HostedGroup,
  decoded: MlsMessageOf<"mls_public_message">,
  kind: "commit" | "proposal",
): Promise<{ state: ClientState; newState: ClientState }> {
  const content = decoded.publicMessage.content;
  const state = activeState(group);
  checkGroupAndEpoch(group, state, content.groupId, content.epoch);
  const cs = await loadSuite(state.groupContext.cipherSuite);
  const { config, auth } = clientConfigFor(group.groupId, group.policy);
  const withConfig: ClientState = { ...state, clientConfig: config };
  const result = await guarded(auth, "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", `${kind}.process`, () =>
    processMessage(decoded, withConfig, makePskIndex(withConfig, {}), acceptAll, cs),
  );
  if (result.kind !== "newState") {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      `${kind}.content_type`,
      `the message is not a ${kind}`,
    );
  }
  return { state, newState: result.newState };
}

/**
 * A proposal of the current epoch sent alone as a PublicMessage: the hub's Remove as external
 * sender (RFC 9420 §12.1.8). The client keeps it until its epoch ends, and its next commit covers
 * it by reference (§12.4); a commit of another member may cover it too.
 */
export async function processProposal(group: HostedGroup, message: Uint8Array): Promise<GroupChange> {
  const decoded = decodeMlsMessageOf(message, "mls_public_message");
  const content = decoded.publicMessage.content;
  if (content.contentType !== "proposal") {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "proposal.content_type",
      "the message is not a proposal",
    );
  }
  const { state, newState } = await processPublic(group, decoded, "proposal");
  const next: HostedGroup = { ...group, state: newState };
  return { group: next, ops: stateOps(next, newState, group.commitEventId, state) };
}

/** The leaves that proposals the client holds for the current epoch remove. */
export function proposedRemovals(group: HostedGroup): number[] {
  if (group.state === undefined) return [];
  return Object.values(group.state.unappliedProposals)
    .map(({ proposal }) => (proposal.proposalType === "remove" ? proposal.remove.removed : undefined))
    .filter((leaf): leaf is number => leaf !== undefined);
}

/**
 * Joins from a Welcome (RFC 9420 §12.4.3.1) made for one of the user's KeyPackages, the one whose
 * private keys `keys` holds. `commitEventId` is the m.mls.commit that added the client.
 */
export async function joinFromWelcome(input: {
  userId: string;
  roomId: string;
  welcome: Uint8Array;
  /** Needed only when the Welcome's GroupInfo carries no ratchet_tree extension. */
  ratchetTree?: Uint8Array;
  commitEventId: string;
  keys: WelcomeKeys;
  policy: CredentialPolicy;
}): Promise<GroupChange & { epoch: bigint }> {
  const { welcome } = decodeMlsMessageOf(input.welcome, "mls_welcome");
  if (credentialUserId(input.keys.keyPackage.leafNode.credential) !== input.userId) {
    throw new MlsError(
      "M_INVALID_PARAM",
      "welcome.keypackage",
      `the KeyPackage is not one of ${input.userId}`,
    );
  }
  const cs = await loadSuite(welcome.cipherSuite);
  const tree = input.ratchetTree === undefined ? undefined : decodeTree(input.ratchetTree);
  const groupId = groupIdOf(input.roomId);
  const { config, auth } = clientConfigFor(groupId, input.policy);
  const state = await guarded(auth, "IO.MIMI_APPSERVICE.MLS_BAD_TREE", "welcome.join", () =>
    joinGroup(
      welcome,
      input.keys.keyPackage,
      input.keys.privatePackage,
      emptyPskIndex,
      cs,
      tree,
      undefined,
      config,
    ),
  );
  if (!sameBytes(state.groupContext.groupId, groupId)) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
      "welcome.group_id",
      `the Welcome is not for ${input.roomId}`,
    );
  }
  const group: HostedGroup = {
    userId: input.userId,
    roomId: input.roomId,
    groupId,
    policy: input.policy,
    state,
    commitEventId: input.commitEventId,
    pending: undefined,
  };
  return {
    group,
    ops: [
      ...stateOps(group, state, input.commitEventId, undefined),
      epochOp(group, state.groupContext.epoch, input.commitEventId),
      ...input.keys.consumeOps,
    ],
    epoch: state.groupContext.epoch,
  };
}

/**
 * Joins by external commit (RFC 9420 §12.4.3.2) from the room's published GroupInfo (an
 * m.mls.commit's `public_group_state`). The commit stays pending like any other: the client is a
 * member once the hub sequences it (`commitAccepted`).
 */
export async function joinByExternalCommit(input: {
  identity: ClientIdentity;
  roomId: string;
  /** An MLSMessage carrying the GroupInfo, with external_pub. */
  groupInfo: Uint8Array;
  /** Needed only when the GroupInfo carries no ratchet_tree extension. */
  ratchetTree?: Uint8Array;
  policy: CredentialPolicy;
  now?: number;
  /** Replace the user's client already in the tree (RFC 9420 §12.4.3.2 resync: a Remove of its leaf). */
  resync?: boolean;
}): Promise<Omit<CreatedCommit, "welcome">> {
  const { groupInfo } = decodeMlsMessageOf(input.groupInfo, "mls_group_info");
  const groupId = groupIdOf(input.roomId);
  if (!sameBytes(groupInfo.groupContext.groupId, groupId)) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
      "external.group_id",
      `the GroupInfo is not for ${input.roomId}`,
    );
  }
  const cs = await loadSuite(groupInfo.groupContext.cipherSuite);
  const tree = input.ratchetTree === undefined ? undefined : decodeTree(input.ratchetTree);
  const { publicPackage, privatePackage } = await generateClientKeyPackage(input.identity, cs, {
    now: input.now ?? Date.now(),
    lifetimeMs: OWN_LEAF_LIFETIME_MS,
  });
  const { config, auth } = clientConfigFor(groupId, input.policy);
  const joined = await guarded(auth, "IO.MIMI_APPSERVICE.MLS_BAD_TREE", "external.join", () =>
    joinGroupExternal(groupInfo, publicPackage, privatePackage, input.resync === true, cs, tree, config),
  );
  const commit = encodeMlsMessage({
    version: "mls10",
    wireformat: "mls_public_message",
    publicMessage: joined.publicMessage,
  });
  const pending: PendingCommit = { message: commit, state: joined.newState };
  const group: HostedGroup = {
    userId: input.identity.userId,
    roomId: input.roomId,
    groupId,
    policy: input.policy,
    state: undefined,
    commitEventId: undefined,
    pending,
  };
  return {
    group,
    ops: [pendingOp(group, pending)],
    commit,
    groupInfo: await publicGroupInfo(joined.newState, cs),
    ratchetTree: encodeRatchetTree(joined.newState.ratchetTree),
    epoch: joined.newState.groupContext.epoch,
  };
}

/**
 * Encrypts an application message of the current epoch as a PrivateMessage (RFC 9420 §6.3). The
 * operations store the advanced secret tree: they must be durable before the ciphertext leaves,
 * or a restart would reuse the same key and nonce.
 */
export async function encryptMessage(group: HostedGroup, plaintext: Uint8Array): Promise<EncryptedMessage> {
  const state = activeState(group);
  if (group.commitEventId === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
      "encrypt.no_commit",
      "the group has no m.mls.commit yet, so a message could name no commit_event_id",
    );
  }
  const cs = await loadSuite(state.groupContext.cipherSuite);
  const { config, auth } = clientConfigFor(group.groupId, group.policy);
  const result = await guarded(auth, "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", "encrypt", () =>
    createApplicationMessage({ ...state, clientConfig: config }, plaintext, cs),
  );
  const next: HostedGroup = { ...group, state: result.newState };
  return {
    group: next,
    ops: stateOps(next, result.newState, group.commitEventId, state),
    ciphertext: encodeMlsMessage({
      version: "mls10",
      wireformat: "mls_private_message",
      privateMessage: result.privateMessage,
    }),
    epoch: state.groupContext.epoch,
    commitEventId: group.commitEventId,
  };
}

/**
 * Decrypts an application message of the current epoch or of one of the last epochs whose keys
 * the client keeps (ts-mls keeps 4), and names its sender. Each message decrypts once: its key is
 * deleted (RFC 9420 §9.2), and the operations store that.
 */
export async function decryptMessage(group: HostedGroup, ciphertext: Uint8Array): Promise<DecryptedMessage> {
  const state = group.state;
  if (state === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
      "decrypt.not_joined",
      "the client is not in the group yet",
    );
  }
  const message = decodeMlsMessageOf(ciphertext, "mls_private_message").privateMessage;
  if (message.contentType !== "application") {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decrypt.content_type",
      "the PrivateMessage does not carry an application message",
    );
  }
  if (!sameBytes(message.groupId, group.groupId)) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
      "decrypt.group_id",
      `the message is not for ${group.roomId}`,
    );
  }
  const current = state.groupContext.epoch;
  const removed = state.groupActiveState.kind === "removedFromGroup";
  if (message.epoch > current) {
    throw removed
      ? new MlsError(
          "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
          "decrypt.removed",
          `the client was removed from the group after epoch ${current}`,
        )
      : new MlsError(
          "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
          "decrypt.future_epoch",
          `the message is for epoch ${message.epoch}, the client is at epoch ${current}: process the commits before it first`,
        );
  }
  const epochData =
    message.epoch === current
      ? {
          senderDataSecret: state.keySchedule.senderDataSecret,
          secretTree: state.secretTree,
          ratchetTree: state.ratchetTree,
          groupContext: state.groupContext,
        }
      : state.historicalReceiverData.get(message.epoch);
  if (epochData === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
      "decrypt.old_epoch",
      `the client no longer keeps the keys of epoch ${message.epoch} (it is at epoch ${current})`,
    );
  }
  const cs = await loadSuite(state.groupContext.cipherSuite);
  const { auth } = clientConfigFor(group.groupId, group.policy);
  const result = await guarded(auth, "IO.MIMI_APPSERVICE.MLS_MALFORMED", "decrypt", () =>
    unprotectPrivateMessage(
      epochData.senderDataSecret,
      message,
      epochData.secretTree,
      epochData.ratchetTree,
      epochData.groupContext,
      state.clientConfig.keyRetentionConfig,
      cs,
    ),
  );
  const framed = result.content.content;
  if (framed.contentType !== "application" || framed.sender.senderType !== "member") {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decrypt.content_type",
      "not an application message from a member",
    );
  }
  const senderLeafIndex = framed.sender.leafIndex;
  const senderNode = epochData.ratchetTree[senderLeafIndex * 2];
  const senderUserId =
    senderNode?.nodeType === "leaf" ? credentialUserId(senderNode.leaf.credential) : undefined;
  if (senderUserId === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
      "decrypt.sender",
      `leaf ${senderLeafIndex} holds no client with a MIMI user ID`,
    );
  }
  const newState: ClientState =
    message.epoch === current
      ? { ...state, secretTree: result.tree }
      : {
          ...state,
          historicalReceiverData: new Map(state.historicalReceiverData).set(message.epoch, {
            ...state.historicalReceiverData.get(message.epoch)!,
            secretTree: result.tree,
          }),
        };
  const next: HostedGroup = { ...group, state: newState };
  return {
    group: next,
    ops: stateOps(next, newState, group.commitEventId, state),
    plaintext: framed.applicationData,
    epoch: message.epoch,
    senderUserId,
    senderLeafIndex,
  };
}

/** The group's members by leaf, as the client sees them now. */
export function membersOf(group: HostedGroup): GroupMember[] {
  const members: GroupMember[] = [];
  const tree = group.state?.ratchetTree ?? [];
  for (let nodeIndex = 0; nodeIndex < tree.length; nodeIndex += 2) {
    const node = tree[nodeIndex];
    if (node?.nodeType === "leaf") {
      members.push({ leafIndex: nodeIndex / 2, userId: credentialUserId(node.leaf.credential) });
    }
  }
  return members;
}

/** The leaves of a user's clients, e.g. to remove them when the user leaves the room. */
export function leavesOf(group: HostedGroup, userId: string): number[] {
  return membersOf(group)
    .filter((member) => member.userId === userId)
    .map((member) => member.leafIndex);
}

// ---- loading ----

/** `mhg`: the client's secrets; the trees are under `mht` (format 2), or inline in `state` (before). */
interface StoredState {
  format?: 2;
  secrets?: string;
  state?: string;
  commitEventId: string | null;
}

/** `mhp`: the client's own commit waiting for the hub, and the state it leads to, whole. */
interface StoredPending {
  format?: 2;
  message: string;
  secrets?: string;
  trees?: string;
  state?: string;
}

/** States read from a record written whole: their trees are not under `mht` yet. */
const treesNotStored = new WeakSet<ClientState>();

/**
 * The user's client in the room's group, as stored, or undefined. ts-mls does not store the
 * client configuration: it is put back here, with the authentication service for `policy`.
 */
export async function loadHostedGroup(
  kv: KvStore,
  userId: string,
  roomId: string,
  policy: CredentialPolicy,
): Promise<HostedGroup | undefined> {
  const [storedState, storedPending, storedTrees] = await kv.getMany([
    groupStateKey(userId, roomId),
    pendingCommitKey(userId, roomId),
    groupTreesKey(userId, roomId),
  ]);
  if (storedState === undefined && storedPending === undefined) return undefined;
  const groupId = groupIdOf(roomId);
  const { config } = clientConfigFor(groupId, policy);
  const record = storedState === undefined ? undefined : (JSON.parse(storedState) as StoredState);
  const pending = storedPending === undefined ? undefined : (JSON.parse(storedPending) as StoredPending);
  return {
    userId,
    roomId,
    groupId,
    policy,
    state: record === undefined ? undefined : storedGroupState(record, storedTrees, config),
    commitEventId: record?.commitEventId ?? undefined,
    pending:
      pending === undefined
        ? undefined
        : { message: fromBase64(pending.message), state: storedPendingState(pending, config) },
  };
}

function storedGroupState(
  record: StoredState,
  trees: string | undefined,
  config: ClientState["clientConfig"],
): ClientState {
  if (record.format === 2 && record.secrets !== undefined && trees !== undefined) {
    return decodeState({ secrets: record.secrets, trees }, config);
  }
  if (record.state === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decode",
      "a stored group state without its trees",
    );
  }
  const state = decodeWholeState(record.state, config);
  treesNotStored.add(state);
  return state;
}

function storedPendingState(pending: StoredPending, config: ClientState["clientConfig"]): ClientState {
  if (pending.format === 2 && pending.secrets !== undefined && pending.trees !== undefined) {
    return decodeState({ secrets: pending.secrets, trees: pending.trees }, config);
  }
  if (pending.state === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decode",
      "a stored pending commit without its state",
    );
  }
  return decodeWholeState(pending.state, config);
}

/** The m.mls.commit event that began `epoch` for the user's client, if the client saw it. */
export function commitEventIdForEpoch(
  kv: KvStore,
  userId: string,
  roomId: string,
  epoch: bigint,
): Promise<string | undefined> {
  return kv.get(epochCommitKey(userId, roomId, epoch));
}

// ---- helpers ----

function activeState(group: HostedGroup): ClientState {
  const state = group.state;
  if (state === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
      "client.not_joined",
      "the client is not in the group yet",
    );
  }
  if (state.groupActiveState.kind !== "active") {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
      "client.removed",
      `the client is no longer active in the group (${state.groupActiveState.kind})`,
    );
  }
  return state;
}

function checkGroupAndEpoch(
  group: HostedGroup,
  state: ClientState,
  groupId: Uint8Array,
  epoch: bigint,
): void {
  if (!sameBytes(groupId, group.groupId)) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
      "commit.group_id",
      `the commit is not for ${group.roomId}`,
    );
  }
  if (epoch !== state.groupContext.epoch) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
      "commit.epoch",
      `the commit is for epoch ${epoch}, the client is at epoch ${state.groupContext.epoch}`,
    );
  }
}

function decodeTree(bytes: Uint8Array): RatchetTree {
  return decodeWhole(decodeRatchetTree, bytes, "a ratchet tree");
}

async function publicGroupInfo(state: ClientState, cs: CiphersuiteImpl): Promise<Uint8Array> {
  const groupInfo = await createGroupInfoWithExternalPubAndRatchetTree(state, [], cs);
  return encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo });
}

/**
 * Writes the client's state: its secrets always, its trees when they are not the ones stored
 * with `previous` (the state this one follows, as stored; none for a new group).
 */
function stateOps(
  group: HostedGroup,
  state: ClientState,
  commitEventId: string | undefined,
  previous: ClientState | undefined,
): BatchOp[] {
  const record: StoredState = {
    format: 2,
    secrets: encodeSecrets(state),
    commitEventId: commitEventId ?? null,
  };
  const ops: BatchOp[] = [
    { type: "put", key: groupStateKey(group.userId, group.roomId), value: JSON.stringify(record) },
  ];
  if (previous === undefined || treesNotStored.has(previous) || !sameTrees(previous, state)) {
    ops.push({ type: "put", key: groupTreesKey(group.userId, group.roomId), value: encodeTrees(state) });
  }
  return ops;
}

function pendingOp(group: HostedGroup, pending: PendingCommit): BatchOp {
  const { secrets, trees } = encodeState(pending.state);
  const record: StoredPending = { format: 2, message: toBase64(pending.message), secrets, trees };
  return { type: "put", key: pendingCommitKey(group.userId, group.roomId), value: JSON.stringify(record) };
}

function epochOp(group: HostedGroup, epoch: bigint, commitEventId: string): BatchOp {
  return { type: "put", key: epochCommitKey(group.userId, group.roomId, epoch), value: commitEventId };
}

/**
 * Runs a ts-mls step and turns its failures into MlsErrors: a credential our authentication
 * service refused is MLS_FORBIDDEN (whatever ts-mls made of the refusal), undecodable bytes are
 * MLS_MALFORMED, a failed signature or tag MLS_BAD_SIGNATURE, any other refusal `fallback`.
 */
async function guarded<T>(
  auth: { refusals: readonly string[] },
  fallback: ErrorCode,
  rule: string,
  step: () => Promise<T>,
): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if (err instanceof MimiError) throw err;
    if (auth.refusals.length > 0) {
      throw new MlsError(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        `${rule}.credential`,
        `credential refused: ${auth.refusals.join("; ")}`,
      );
    }
    if (err instanceof CodecError) throw new MlsError("IO.MIMI_APPSERVICE.MLS_MALFORMED", rule, err.message);
    if (err instanceof CryptoVerificationError) {
      throw new MlsError("IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE", rule, err.message);
    }
    if (err instanceof LibraryError) throw new MlsError(fallback, rule, err.message);
    throw err;
  }
}
