import { decodeMlsMessage } from "ts-mls";
import type { FullyFormedEvent } from "../events/types";
import { encodeUnpaddedBase64 } from "../events/base64";
import { serverNameOf } from "../identifiers";
import type { ExtensionContext, ExtensionDecision, FollowUpEvent, RoomExtension } from "../room/extension";
import { DEFAULT_ENCRYPTION_ALGORITHM, EventType } from "../roomVersions/mimi1/eventTypes";
import { getRoomVersion } from "../roomVersions";
import type { RoomStateView, RoomVersion, StateEntry } from "../roomVersions/types";
import { MAX_SEQ, RoomStore } from "../store/roomStore";
import { prefixEnd, type BatchOp, type KvStore } from "../store/kv";
import type { HubExternalSender } from "./hubSender";
import {
  GroupObserver,
  MlsObserverError,
  MlsWrongEpochError,
  keyOf,
  type CommitPolicy,
  type ExternalSender,
} from "./observer";
import { decodeExactly, decodePublicMessageMessage } from "./observer/wire";

export const MLS_COMMIT = "m.mls.commit";
export const MLS_ENCRYPTED = "m.room.encrypted";
export const MLS_PROPOSAL = EventType.MlsProposal;
/** The only algorithm the observer supports (LM-04 §MLS Considerations). */
export const SUPPORTED_ALGORITHM = DEFAULT_ENCRYPTION_ALGORITHM;
/** Application messages may name the commit of this many epochs back, the current one included. */
export const RECENT_EPOCHS = 64;

const SEP = "\u0000";
/** `mo\0<room>` -> the observer's encoded state (unpadded base64). */
const observerKey = (roomId: string) => `mo${SEP}${roomId}`;
/** `mc\0<room>\0<epoch, 16 hex>` -> the event ID of the m.mls.commit that began that epoch. */
const commitPrefix = (roomId: string) => `mc${SEP}${roomId}${SEP}`;
const commitKey = (roomId: string, epoch: bigint) =>
  commitPrefix(roomId) + epoch.toString(16).padStart(16, "0");
/** `mp\0<room>` -> the hub's Remove proposals of the current epoch: JSON [[reference hex, event ID]]. */
const hubProposalsKey = (roomId: string) => `mp${SEP}${roomId}`;

/** One room's MLS group as the hub (and each follower) sees it. Never changed in place. */
export interface RoomGroupState {
  /** Undefined until the room's first m.mls.commit establishes the group. */
  observer: GroupObserver | undefined;
  /** The commits of the last RECENT_EPOCHS epochs: event ID -> epoch it began. */
  recentCommits: ReadonlyMap<string, bigint>;
  /** The m.mls.commit that began the current epoch. */
  headCommit: string | undefined;
  /** Where each of `recentCommits` is in the room's history. */
  commitSeqs: ReadonlyMap<string, number>;
  /** Each joined user: the position of the event that last made them joined. */
  joinedSince: ReadonlyMap<string, number>;
  /**
   * The hub's Remove proposals of the current epoch that no commit has covered yet: proposal
   * reference (hex) -> the event that carried it. While any is pending, only a commit covering
   * them all is accepted (Robert §Queueing Service).
   */
  hubProposals: ReadonlyMap<string, string>;
}

/** What the extension reads of a room's history when it loads (the room store). */
export interface RoomHistoryReader {
  locateEvent(eventId: string): Promise<{ roomId: string; seq: number } | undefined>;
  stateAt(roomId: string, seq: number): Promise<StateEntry[]>;
}

type Decision = ExtensionDecision<RoomGroupState>;

const refuse = (errcode: MlsObserverError["errcode"], reason: string): Decision => ({
  allowed: false,
  errcode,
  reason,
});

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

function identityText(identity: Uint8Array): string | undefined {
  try {
    return fromUtf8.decode(identity);
  } catch {
    return undefined;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function base64Field(event: FullyFormedEvent, field: string): Uint8Array {
  // The room version's schema has already checked it is unpadded standard base64.
  return new Uint8Array(Buffer.from(event.content[field] as string, "base64"));
}

/**
 * The room's MLS group as a room extension (LM-04 §MLS Considerations, McMillion §Policy
 * Enforcement): every `m.mls.commit` is checked by the room's `GroupObserver` and the room's
 * membership, one commit per epoch; every `m.room.encrypted` must name a recent commit of the room
 * and carry a PrivateMessage of that commit's epoch. The observer's state and each epoch's commit
 * are written in the event's batch.
 */
export class RoomGroupExtension implements RoomExtension<RoomGroupState> {
  readonly name = "mls";

  private readonly history: RoomHistoryReader;

  constructor(
    private readonly kv: KvStore,
    private readonly options: {
      clock?: () => number;
      history?: RoomHistoryReader;
      /** This provider as the external sender of the groups of the rooms it is hub of. */
      hubSender?: HubExternalSender;
    } = {},
  ) {
    this.history = options.history ?? new RoomStore(kv);
  }

  async load(roomId: string): Promise<RoomGroupState> {
    const joinedSince = await this.loadJoinedSince(roomId);
    const stored = await this.kv.get(observerKey(roomId));
    if (stored === undefined) {
      return {
        observer: undefined,
        recentCommits: new Map(),
        headCommit: undefined,
        commitSeqs: new Map(),
        joinedSince,
        hubProposals: new Map(),
      };
    }
    const observer = GroupObserver.decode(
      new Uint8Array(Buffer.from(stored, "base64")),
      this.observerOptions(),
    );
    const recent: [string, bigint][] = [];
    const prefix = commitPrefix(roomId);
    for await (const [key, eventId] of this.kv.range({
      gte: prefix,
      lt: prefixEnd(prefix),
      reverse: true,
      limit: RECENT_EPOCHS,
    })) {
      recent.push([eventId, BigInt(`0x${key.slice(prefix.length)}`)]);
    }
    // Read newest first: the first is the current epoch's commit.
    const headCommit = recent[0]?.[0];
    const commitSeqs = new Map<string, number>();
    for (const [eventId] of recent) {
      const where = await this.history.locateEvent(eventId);
      if (where !== undefined) commitSeqs.set(eventId, where.seq);
    }
    const pending = await this.kv.get(hubProposalsKey(roomId));
    const hubProposals = new Map<string, string>(
      pending === undefined ? [] : (JSON.parse(pending) as [string, string][]),
    );
    return {
      observer,
      recentCommits: new Map(recent.reverse()),
      headCommit,
      commitSeqs,
      joinedSince,
      hubProposals,
    };
  }

  /** Joined users of the room now, with the position of the event that made each joined. */
  private async loadJoinedSince(roomId: string): Promise<Map<string, number>> {
    const joinedSince = new Map<string, number>();
    // Past the head, the current state.
    const state = await this.history.stateAt(roomId, MAX_SEQ);
    const create = state.find((entry) => entry.type === "m.room.create" && entry.stateKey === "");
    const version = getRoomVersion(String(create?.content.policy_id ?? ""));
    if (version === undefined) return joinedSince;
    for (const entry of state) {
      if (entry.type !== version.membership.eventType) continue;
      if (version.membership.participationIn(entry.content) !== "join") continue;
      const where = await this.history.locateEvent(entry.eventId);
      if (where !== undefined) joinedSince.set(entry.stateKey, where.seq);
    }
    return joinedSince;
  }

  decide(context: ExtensionContext<RoomGroupState>): Decision {
    const { event } = context;
    if (event.type === MLS_COMMIT) return this.guarded(() => this.decideCommit(context));
    if (event.type === MLS_ENCRYPTED) return this.guarded(() => this.decideEncrypted(context));
    if (event.type === MLS_PROPOSAL) return this.guarded(() => this.decideProposal(context));
    if (event.type === context.version.membership.eventType && event.state_key !== undefined) {
      const state = this.afterMembership(context, event.state_key);
      const departed =
        context.state.joinedSince.has(event.state_key) && !state.joinedSince.has(event.state_key);
      return {
        allowed: true,
        state,
        ...(departed ? { followUps: this.removalProposals(context, state) } : {}),
      };
    }
    return { allowed: true };
  }

  /**
   * Hub: a Remove proposal, as external sender, for each leaf of a user who is no longer joined
   * and that no pending proposal of ours removes yet (Robert §Queueing Service; RFC 9420
   * §12.1.8). Sent as room events right after the one that made them due, in its batch. Nothing
   * when the group does not list this hub as an external sender.
   */
  private removalProposals(
    context: ExtensionContext<RoomGroupState>,
    state: RoomGroupState,
  ): FollowUpEvent[] {
    const hubSender = this.options.hubSender;
    const observer = state.observer;
    if (context.role !== "hub" || hubSender === undefined || observer === undefined) return [];
    const senderIndex = observer
      .externalSenders()
      .findIndex((sender) => sameBytes(sender.signaturePublicKey, hubSender.signaturePublicKey));
    if (senderIndex < 0) return [];
    const sender = senderUser(observer.externalSenders()[senderIndex]!);
    if (sender === undefined) return [];
    const proposed = new Set(
      observer
        .pendingProposals()
        .filter((p) => state.hubProposals.has(keyOf(p.reference)))
        .map((p) => p.removes),
    );
    const followUps: FollowUpEvent[] = [];
    for (const member of observer.members()) {
      const user = identityText(member.identity);
      if (user !== undefined && state.joinedSince.has(user)) continue;
      if (proposed.has(member.leafIndex)) continue;
      const message = hubSender.proposeRemove({
        groupId: observer.groupId,
        epoch: observer.epoch,
        senderIndex,
        removed: member.leafIndex,
      });
      followUps.push({ sender, type: MLS_PROPOSAL, content: { message: encodeUnpaddedBase64(message) } });
    }
    return followUps;
  }

  /**
   * The hub's proposal as external sender (our extension, docs/protocol.md §12): a valid Remove,
   * signed by an external sender of the group whose credential names the event's sender, of a
   * client whose user is not joined. Any other proposal has no place in the room: LM-04 sends none.
   */
  private decideProposal(context: ExtensionContext<RoomGroupState>): Decision {
    const { event, state, stateBefore, version, roomId } = context;
    if (state.observer === undefined) {
      return refuse("IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH", `room ${roomId} has no MLS group yet`);
    }
    const { proposal, observer } = state.observer.validateProposal(base64Field(event, "message"));
    if (proposal.sender.kind !== "external") {
      return refuse(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        "only the hub's proposals as external sender travel as room events; members commit their own",
      );
    }
    const external = state.observer.externalSenders()[proposal.sender.senderIndex]!;
    if (senderUser(external) !== event.sender) {
      return refuse(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        `the proposal's external sender is not ${event.sender}`,
      );
    }
    if (proposal.removes === undefined) {
      return refuse("IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL", "the hub only proposes to remove clients");
    }
    const target = state.observer.members().find((m) => m.leafIndex === proposal.removes);
    const user = target === undefined ? undefined : identityText(target.identity);
    if (user !== undefined && version.membership.participationOf(stateBefore, user) === "join") {
      return refuse(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        `the hub does not remove a client of ${user}, who is joined`,
      );
    }
    const hubProposals = new Map(state.hubProposals);
    hubProposals.set(keyOf(proposal.reference), context.eventId);
    return {
      allowed: true,
      state: { ...state, observer, hubProposals },
      ops: [
        { type: "put", key: observerKey(roomId), value: toBase64(observer.encode()) },
        { type: "put", key: hubProposalsKey(roomId), value: JSON.stringify([...hubProposals]) },
      ],
    };
  }

  /** Refuses what may not pass while the hub's proposals wait for a commit (Robert §Queueing Service). */
  private pendingRefusal(state: RoomGroupState, what: string): Decision {
    return refuse(
      "IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING",
      `${what} is refused until a commit covers the hub's Remove proposals ` +
        `${[...state.hubProposals.values()].join(", ")} (epoch ${state.observer?.epoch ?? "?"})`,
    );
  }

  /** Keeps `joinedSince` in step with the room's participation. */
  private afterMembership(context: ExtensionContext<RoomGroupState>, target: string): RoomGroupState {
    const participation = context.version.membership.participationIn(context.event.content);
    const wasJoined = context.state.joinedSince.has(target);
    if ((participation === "join") === wasJoined) return context.state;
    const joinedSince = new Map(context.state.joinedSince);
    if (participation === "join") joinedSince.set(target, context.seq);
    else joinedSince.delete(target);
    return { ...context.state, joinedSince };
  }

  private guarded(decide: () => Decision): Decision {
    try {
      return decide();
    } catch (err) {
      if (err instanceof MlsObserverError) return refuse(err.errcode, err.message);
      throw err;
    }
  }

  private observerOptions(): { clock?: () => number } {
    return this.options.clock === undefined ? {} : { clock: this.options.clock };
  }

  private decideCommit(context: ExtensionContext<RoomGroupState>): Decision {
    const { event, state, roomId, stateBefore, version } = context;
    const algorithm = roomAlgorithm(stateBefore, version);
    if (algorithm !== SUPPORTED_ALGORITHM) {
      return refuse(
        "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
        `the room's encryption algorithm ${JSON.stringify(algorithm)} is not supported`,
      );
    }
    const message = base64Field(event, "message");
    const groupInfo = base64Field(event, "public_group_state");
    const joined = (identity: string) => version.membership.participationOf(stateBefore, identity) === "join";

    let observer: GroupObserver;
    if (state.observer === undefined) {
      observer = this.establish(roomId, context.role, event, message, groupInfo, joined);
    } else {
      const policy: CommitPolicy = {
        // The MLS committer must be the event's sender: one user cannot commit as another.
        authorizeCommitter: (identity) =>
          identityText(identity) === event.sender
            ? undefined
            : { reason: `the commit is signed by a client of another user than ${event.sender}` },
        // LM-04 §Updating Group State: only clients of users joined to the room are added.
        authorizeAdd: (identity) => {
          const user = identityText(identity);
          return user !== undefined && joined(user)
            ? undefined
            : { reason: `${user ?? "a client"} is not joined to the room` };
        },
      };
      let validated: ReturnType<GroupObserver["validateCommit"]>;
      try {
        validated = state.observer.validateCommit(message, groupInfo, policy);
      } catch (err) {
        if (err instanceof MlsWrongEpochError) {
          return refuse(
            err.errcode,
            `${err.message}; its commit is ${state.headCommit ?? "(none)"}: rebase onto it and commit again`,
          );
        }
        throw err;
      }
      // LM-04 §Updating Group State: a client is removed by its own user, or by anyone once its
      // user is no longer joined.
      for (const removed of validated.change.removed) {
        const user = identityText(removed.identity);
        if (user !== event.sender && (user === undefined || joined(user))) {
          return refuse(
            "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
            `${event.sender} cannot remove a client of ${user ?? "another user"}, who is still joined`,
          );
        }
      }
      const refusal = this.checkCovers(state, validated.change, joined, state.observer);
      if (refusal !== undefined) return refusal;
      if (!sameSenders(state.observer.externalSenders(), validated.observer.externalSenders())) {
        return refuse(
          "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
          "a commit cannot change the group's external senders: they are the room's hub's",
        );
      }
      observer = validated.observer;
    }

    const recentCommits = new Map(state.recentCommits);
    const commitSeqs = new Map(state.commitSeqs);
    recentCommits.set(context.eventId, observer.epoch);
    commitSeqs.set(context.eventId, context.seq);
    for (const [eventId, epoch] of recentCommits) {
      if (epoch <= observer.epoch - BigInt(RECENT_EPOCHS)) {
        recentCommits.delete(eventId);
        commitSeqs.delete(eventId);
      }
    }
    const ops: BatchOp[] = [
      { type: "put", key: observerKey(roomId), value: toBase64(observer.encode()) },
      { type: "put", key: commitKey(roomId, observer.epoch), value: context.eventId },
    ];
    if (state.hubProposals.size > 0) ops.push({ type: "del", key: hubProposalsKey(roomId) });
    const next: RoomGroupState = {
      ...state,
      observer,
      recentCommits,
      headCommit: context.eventId,
      commitSeqs,
      hubProposals: new Map(),
    };
    // Clients of departed users the commit left in place (an external commit may not cover the
    // proposals) are proposed for removal again in the new epoch.
    return { allowed: true, state: next, ops, followUps: this.removalProposals(context, next) };
  }

  /**
   * While the hub's proposals are pending, a commit must remove every leaf they remove (by
   * reference, or by value as a resync does). An external commit cannot cover proposals by
   * reference (RFC 9420 §12.4.3.2); it is let through only when no member is left who could.
   */
  private checkCovers(
    state: RoomGroupState,
    change: ReturnType<GroupObserver["validateCommit"]>["change"],
    joined: (user: string) => boolean,
    observer: GroupObserver,
  ): Decision | undefined {
    if (state.hubProposals.size === 0) return undefined;
    const removed = new Set(change.removed.map((m) => m.leafIndex));
    const proposedLeaves = new Set<number>();
    let uncovered = false;
    for (const pending of observer.pendingProposals()) {
      if (!state.hubProposals.has(keyOf(pending.reference)) || pending.removes === undefined) continue;
      proposedLeaves.add(pending.removes);
      if (!removed.has(pending.removes)) uncovered = true;
    }
    if (!uncovered) return undefined;
    if (change.committer.external) {
      const someoneCould = observer.members().some((member) => {
        const user = identityText(member.identity);
        return !proposedLeaves.has(member.leafIndex) && user !== undefined && joined(user);
      });
      if (!someoneCould) return undefined;
    }
    return this.pendingRefusal(state, "a commit that does not cover them");
  }

  /**
   * The room's first m.mls.commit. The hub never saw the epoch its commit starts from, so it
   * starts from the GroupInfo the commit leads to, checked as a joiner checks it (RFC 9420
   * §12.4.3.1), and requires: the room's group ID, every member's user joined, the sender among
   * them, and a commit for the epoch before, of the same group.
   */
  private establish(
    roomId: string,
    role: "hub" | "follower",
    event: FullyFormedEvent,
    message: Uint8Array,
    groupInfo: Uint8Array,
    joined: (user: string) => boolean,
  ): GroupObserver {
    const observer = GroupObserver.fromGroupInfo(groupInfo, undefined, this.observerOptions());
    if (!sameBytes(observer.groupId, utf8.encode(roomId))) {
      throw new MlsObserverError(
        "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
        "group.id",
        `the group ID must be the room ID ${roomId}`,
      );
    }
    const users = observer.members().map((member) => identityText(member.identity));
    const outsider = users.find((user) => user === undefined || !joined(user));
    if (outsider !== undefined || users.length === 0) {
      throw new MlsObserverError(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        "group.members",
        `${outsider ?? "a member"} is not joined to the room`,
      );
    }
    const hubServer = serverNameOf(event.sender);
    for (const sender of observer.externalSenders()) {
      const user = senderUser(sender);
      if (user === undefined || !isUserOf(user, hubServer)) {
        throw new MlsObserverError(
          "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
          "group.external_senders",
          `an external sender of the group must name a user of the room's hub ${hubServer}`,
        );
      }
    }
    const hubSender = this.options.hubSender;
    if (
      role === "hub" &&
      hubSender !== undefined &&
      !observer
        .externalSenders()
        .some(
          (sender) =>
            sameBytes(sender.signaturePublicKey, hubSender.signaturePublicKey) &&
            senderUser(sender) === hubSender.userId,
        )
    ) {
      throw new MlsObserverError(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        "group.external_senders",
        `the group must list the hub as an external sender (${hubSender.userId}, key ${toBase64(hubSender.signaturePublicKey)})`,
      );
    }
    if (!users.includes(event.sender)) {
      throw new MlsObserverError(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        "group.creator",
        `${event.sender} has no client in the group it establishes`,
      );
    }
    const commit = decodePublicMessageMessage(message, "commit").content;
    if (
      commit.contentType !== "commit" ||
      !sameBytes(commit.groupId, observer.groupId) ||
      commit.epoch + 1n !== observer.epoch
    ) {
      throw new MlsObserverError(
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        "group.first_commit",
        "message must be the commit that leads to the epoch of public_group_state",
      );
    }
    return observer;
  }

  private decideEncrypted(context: ExtensionContext<RoomGroupState>): Decision {
    const { event, state, roomId, stateBefore, version } = context;
    if (state.observer === undefined) {
      return refuse("IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH", `room ${roomId} has no MLS group yet`);
    }
    if (state.hubProposals.size > 0) return this.pendingRefusal(state, "an application message");
    const algorithm = event.content.algorithm;
    if (algorithm !== roomAlgorithm(stateBefore, version)) {
      return refuse(
        "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
        `algorithm ${JSON.stringify(algorithm)} is not the room's ${JSON.stringify(roomAlgorithm(stateBefore, version))}`,
      );
    }
    const commitEventId = event.content.commit_event_id as string;
    const epoch = state.recentCommits.get(commitEventId);
    if (epoch === undefined) {
      return refuse(
        "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
        `commit_event_id ${commitEventId} is not one of the room's last ${RECENT_EPOCHS} commits; ` +
          `the current one is ${state.headCommit}`,
      );
    }
    // McMillion §Policy Enforcement: judged by the fork the message names. In the epoch of that
    // commit, only users joined before the commit was sequenced were members.
    const since = state.joinedSince.get(event.sender);
    const commitSeq = state.commitSeqs.get(commitEventId);
    if (since === undefined || (commitSeq !== undefined && since > commitSeq)) {
      return refuse(
        "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
        since === undefined
          ? `${event.sender} is not joined to the room`
          : `${event.sender} joined the room (event ${since}) after ${commitEventId} (event ${commitSeq}): ` +
              "in the fork the message names, the sender was not a member",
      );
    }
    const message = decodeExactly(decodeMlsMessage, base64Field(event, "ciphertext"), "MLSMessage");
    if (message.wireformat !== "mls_private_message") {
      return refuse("IO.MIMI_APPSERVICE.MLS_MALFORMED", "ciphertext must be an MLS PrivateMessage");
    }
    const header = message.privateMessage;
    if (!sameBytes(header.groupId, utf8.encode(roomId))) {
      return refuse("IO.MIMI_APPSERVICE.MLS_WRONG_GROUP", "the PrivateMessage is for another group");
    }
    if (header.contentType !== "application" || header.epoch !== epoch) {
      return refuse(
        header.epoch !== epoch ? "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH" : "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        header.epoch !== epoch
          ? `the PrivateMessage is for epoch ${header.epoch}, but ${commitEventId} began epoch ${epoch}`
          : "an m.room.encrypted event carries an application message",
      );
    }
    return { allowed: true };
  }
}

/** The create event's `encryption_algorithm`, the room's for good. */
function roomAlgorithm(state: RoomStateView, version: RoomVersion): unknown {
  return state.get(version.createEventType, "")?.content.encryption_algorithm;
}

function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

function isUserOf(userId: string, serverName: string): boolean {
  try {
    return serverNameOf(userId) === serverName;
  } catch {
    return false;
  }
}

function sameSenders(a: readonly ExternalSender[], b: readonly ExternalSender[]): boolean {
  return (
    a.length === b.length &&
    a.every(
      (sender, i) =>
        sameBytes(sender.signaturePublicKey, b[i]!.signaturePublicKey) &&
        sender.credential.credentialType === b[i]!.credential.credentialType &&
        sameBytes(identityOf(sender), identityOf(b[i]!)),
    )
  );
}

function identityOf(sender: ExternalSender): Uint8Array {
  return sender.credential.credentialType === "basic" ? sender.credential.identity : new Uint8Array();
}

/** The user an external sender's basic credential names. */
function senderUser(sender: ExternalSender): string | undefined {
  return sender.credential.credentialType === "basic" ? identityText(sender.credential.identity) : undefined;
}
