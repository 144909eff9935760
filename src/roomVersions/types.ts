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
 * A room version (named by the create event's `policy_id`): the event types,
 * their redaction, auth events selection and auth rules. The envelope, hashing
 * and signing are shared by every version we speak.
 */
export interface RoomVersion {
  readonly id: string;
  redactContent: ContentRedactor;
  selectAuthEvents(state: RoomStateView, event: EventForAuth): string[];
  authorize(state: RoomStateView, event: EventForAuth): AuthDecision;
}
