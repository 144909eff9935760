import { decodeMlsMessage } from "ts-mls";
import type { FullyFormedEvent } from "../events/types";
import type { ExtensionContext, ExtensionDecision, RoomExtension } from "../room/extension";
import { DEFAULT_ENCRYPTION_ALGORITHM } from "../roomVersions/mimi1/eventTypes";
import type { RoomStateView, RoomVersion } from "../roomVersions/types";
import { prefixEnd, type BatchOp, type KvStore } from "../store/kv";
import { GroupObserver, MlsObserverError, MlsWrongEpochError, type CommitPolicy } from "./observer";
import { decodeExactly, decodePublicMessageMessage } from "./observer/wire";

export const MLS_COMMIT = "m.mls.commit";
export const MLS_ENCRYPTED = "m.room.encrypted";
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

/** One room's MLS group as the hub (and each follower) sees it. Never changed in place. */
export interface RoomGroupState {
  /** Undefined until the room's first m.mls.commit establishes the group. */
  observer: GroupObserver | undefined;
  /** The commits of the last RECENT_EPOCHS epochs: event ID -> epoch it began. */
  recentCommits: ReadonlyMap<string, bigint>;
  /** The m.mls.commit that began the current epoch. */
  headCommit: string | undefined;
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

  constructor(
    private readonly kv: KvStore,
    private readonly options: { clock?: () => number } = {},
  ) {}

  async load(roomId: string): Promise<RoomGroupState> {
    const stored = await this.kv.get(observerKey(roomId));
    if (stored === undefined) return { observer: undefined, recentCommits: new Map(), headCommit: undefined };
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
    return { observer, recentCommits: new Map(recent.reverse()), headCommit };
  }

  decide(context: ExtensionContext<RoomGroupState>): Decision {
    const { event } = context;
    if (event.type === MLS_COMMIT) return this.guarded(() => this.decideCommit(context));
    if (event.type === MLS_ENCRYPTED) return this.guarded(() => this.decideEncrypted(context));
    return { allowed: true };
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
      observer = this.establish(roomId, event, message, groupInfo, joined);
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
      observer = validated.observer;
    }

    const recentCommits = new Map(state.recentCommits);
    recentCommits.set(context.eventId, observer.epoch);
    for (const [eventId, epoch] of recentCommits) {
      if (epoch <= observer.epoch - BigInt(RECENT_EPOCHS)) recentCommits.delete(eventId);
    }
    const ops: BatchOp[] = [
      { type: "put", key: observerKey(roomId), value: Buffer.from(observer.encode()).toString("base64") },
      { type: "put", key: commitKey(roomId, observer.epoch), value: context.eventId },
    ];
    return { allowed: true, state: { observer, recentCommits, headCommit: context.eventId }, ops };
  }

  /**
   * The room's first m.mls.commit. The hub never saw the epoch its commit starts from, so it
   * starts from the GroupInfo the commit leads to, checked as a joiner checks it (RFC 9420
   * §12.4.3.1), and requires: the room's group ID, every member's user joined, the sender among
   * them, and a commit for the epoch before, of the same group.
   */
  private establish(
    roomId: string,
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
