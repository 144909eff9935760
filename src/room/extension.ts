import type { ErrorCode } from "../errors";
import { MimiError } from "../errors";
import type { FullyFormedEvent, JsonObject, LimitedEvent } from "../events/types";
import type { RoomStateView, RoomVersion } from "../roomVersions/types";
import type { BatchOp } from "../store/kv";

/**
 * What a room extension sees of one event the core has accepted: the event,
 * the room state before it, and the extension's own state of the room as it
 * is after every event sequenced so far (committed or still being written).
 */
export interface ExtensionContext<S> {
  roomId: string;
  role: "hub" | "follower";
  version: RoomVersion;
  seq: number;
  eventId: string;
  event: FullyFormedEvent;
  stateBefore: RoomStateView;
  state: S;
}

/** An event the hub sequences right after the one that caused it, in the same atomic batch. */
export interface FollowUpEvent {
  /** A local user of the hub, on whose behalf the hub sends it. */
  sender: string;
  type: string;
  content: JsonObject;
  stateKey?: string;
}

export type ExtensionDecision<S> =
  | {
      allowed: true;
      /** The extension's state of the room after the event; unchanged when absent. */
      state?: S;
      /** Written in the batch that appends the event. */
      ops?: BatchOp[];
      /** Hub only: events to sequence right after this one (refused at a follower). */
      followUps?: FollowUpEvent[];
    }
  | { allowed: false; errcode: ErrorCode; reason: string };

/**
 * A per-room extension of the hub and follower cores (the MLS group is one).
 * `prepare` runs before the decision and may do I/O; `decide` is synchronous
 * and pure: it sees the event after the room's own checks passed and may
 * refuse it, add operations to its batch, or add follow-up events. Its state
 * becomes visible to readers only once the batch is durable.
 */
export interface RoomExtension<S = unknown> {
  readonly name: string;
  /** This extension's state of a room, when the room is loaded or first created or followed. */
  load(roomId: string): Promise<S>;
  prepare?(roomId: string, event: LimitedEvent | FullyFormedEvent): Promise<void>;
  decide(context: ExtensionContext<S>): ExtensionDecision<S>;
}

/** A room extension refused an event; `extension` names it. */
export class ExtensionRejection extends MimiError {
  constructor(
    readonly extension: string,
    errcode: ErrorCode,
    readonly reason: string,
  ) {
    super(errcode, `event refused by ${extension}: ${reason}`);
  }
}
