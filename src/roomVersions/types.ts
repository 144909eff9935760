import type { JsonObject } from "../events/types";

/** One state event as the auth rules see it. */
export interface StateEntry {
  eventId: string;
  type: string;
  stateKey: string;
  sender: string;
  content: JsonObject;
}

/**
 * The room state *before* the event being authorised (LM-04 §State Events):
 * the latest event for each (type, state_key), plus what the auth rules need
 * to know about the history's position.
 */
export interface RoomStateView {
  /** Number of events already in the room (0 before the create event). */
  readonly eventCount: number;
  /** Type of the current head event, if any. */
  readonly headType: string | undefined;
  get(type: string, stateKey: string): StateEntry | undefined;
  /** All state entries of one type (e.g. every m.room.user). */
  entriesOfType(type: string): Iterable<StateEntry>;
}

/** The fields of an event the auth rules look at. */
export interface EventForAuth {
  type: string;
  stateKey?: string;
  sender: string;
  content: JsonObject;
  roomId: string;
}

export type AuthDecision = { allowed: true } | { allowed: false; rule: string; reason: string };

/** Redaction of `content` for one event type; the envelope's top level is handled by the events layer. */
export type ContentRedactor = (type: string, content: JsonObject) => JsonObject;

/**
 * A user's standing in a room. The policy draft's participation (§User
 * Participation) and LM-04's membership (§m.room.member) have the same five values.
 */
export type Participation = "invite" | "join" | "leave" | "knock" | "ban";

/** The fields of an event that fan-out looks at, as they are on the wire. */
export interface EventForFanOut {
  type: string;
  state_key?: string;
  content: JsonObject;
}

/**
 * How a room version records who is in the room: one state event per user,
 * keyed by the user ID (policy draft §User Participation; LM-04 §m.room.member).
 */
export interface MembershipRules {
  /** The type of participation events, whose state key is the target's user ID. */
  readonly eventType: string;
  /** The participation an event's content states, if it is a valid one. */
  participationIn(content: JsonObject): Participation | undefined;
  /** The user's current participation; undefined when the state has no valid event for them. */
  participationOf(state: RoomStateView, userId: string): Participation | undefined;
  /** The content of a participation event for `change`, with an optional human-readable reason. */
  content(change: Participation, reason?: string): JsonObject;
}

/**
 * A room version (named by the create event's `policy_id`): the event types,
 * their redaction, auth events selection and auth rules, who is in the room
 * and who receives and may read its events. The envelope, hashing and
 * signing are shared by every version we speak.
 */
export interface RoomVersion {
  readonly id: string;
  redactContent: ContentRedactor;
  selectAuthEvents(state: RoomStateView, event: EventForAuth): string[];
  authorize(state: RoomStateView, event: EventForAuth): AuthDecision;
  /** The type of the room's first event (LM-04 §m.room.create); its sender's server is the hub. */
  readonly createEventType: string;
  /** The MLS ciphersuite of rooms created without one (LM-04 §MLS Considerations). */
  readonly defaultEncryptionAlgorithm: string;
  /** The content of a create event for this version, with the default algorithm when none is given. */
  createContent(encryptionAlgorithm?: string): JsonObject;
  readonly membership: MembershipRules;
  /** Servers with at least one joined user (LM-04 §Sending Events). */
  joinedServers(state: RoomStateView): Set<string>;
  /**
   * The servers the hub sends `event` to, given the state after it (LM-04
   * §Sending Events): every joined server, plus the target's server of a leave
   * or ban. The hub's own server may be among them; the caller skips itself.
   */
  fanOutServers(stateAfter: RoomStateView, event: EventForFanOut): Set<string>;
  /**
   * Whether `server` may read the room's events and state: a server with a
   * joined user, or the hub. Invited and knocking servers may not (LM-04
   * §Invites: being invited is not participating).
   */
  mayRead(state: RoomStateView, server: string, hubServer: string): boolean;
  /** Room-wide state types (empty state key) sent as stripped state with invites and knocks (LM-04 §Stripped State). */
  readonly strippedStateTypes: readonly string[];
}
