import type { JsonObject } from "../../src/events/types";
import {
  DEFAULT_ENCRYPTION_ALGORITHM,
  EventType,
  type JoinRule,
  type Participation,
  ROOM_VERSION_ID,
  authorize,
} from "../../src/roomVersions/mimi1";
import type { AuthDecision, EventForAuth, RoomStateView, StateEntry } from "../../src/roomVersions/types";

export const ROOM_ID = "!room:hub.example";
export const ALICE = "@alice:hub.example";
export const BOB = "@bob:b.example";
export const CAROL = "@carol:c.example";
export const DAVE = "@dave:hub.example";

export const CREATE_CONTENT: JsonObject = {
  policy_id: ROOM_VERSION_ID,
  encryption_algorithm: DEFAULT_ENCRYPTION_ALGORITHM,
};

/** A role as written in `m.room.roles` content, typed for test setup. */
export interface RoleInput {
  order: number;
  permissions: {
    add?: boolean;
    kick?: boolean;
    ban?: boolean;
    redact?: boolean;
    roles?: string[];
    sendMessages?: boolean;
  };
  assignees: string[];
}

export function rolesContent(roles: Record<string, RoleInput>): JsonObject {
  return { roles: roles as unknown as JsonObject };
}

/** A well-formed event ID: `$` + 43 URL-safe base64 characters, canonically ending in "A". */
export function fakeEventId(n: number): string {
  return "$" + `e${n}`.padEnd(43, "A");
}

/**
 * An in-memory room state for the auth rules. `put`/`append` record events
 * without authorising them (fast setup); `send` authorises first.
 */
export class StateBuilder implements RoomStateView {
  eventCount = 0;
  headType: string | undefined = undefined;
  private readonly state = new Map<string, StateEntry>();

  get(type: string, stateKey: string): StateEntry | undefined {
    return this.state.get(`${type}\u0000${stateKey}`);
  }

  *entriesOfType(type: string): Iterable<StateEntry> {
    for (const entry of this.state.values()) if (entry.type === type) yield entry;
  }

  /** Records a state event as the next event of the room. */
  put(type: string, stateKey: string, content: JsonObject, sender: string = ALICE): this {
    this.eventCount += 1;
    this.headType = type;
    const eventId = fakeEventId(this.eventCount);
    this.state.set(`${type}\u0000${stateKey}`, { eventId, type, stateKey, sender, content });
    return this;
  }

  /** Records a non-state event as the next event of the room. */
  append(type: string): this {
    this.eventCount += 1;
    this.headType = type;
    return this;
  }

  /** Sets `userId`'s participation (sent by `sender`, the user by default). */
  user(userId: string, participation: Participation, sender: string = userId): this {
    return this.put(EventType.User, userId, { participation }, sender);
  }

  joined(...userIds: string[]): this {
    for (const userId of userIds) this.user(userId, "join");
    return this;
  }

  joinRules(rule: JoinRule): this {
    return this.put(EventType.JoinRules, "", { rule });
  }

  roles(roles: Record<string, RoleInput>, sender: string = ALICE): this {
    return this.put(EventType.Roles, "", rolesContent(roles), sender);
  }

  /** Authorises `event` against the current state and applies it; throws with the rule on refusal. */
  send(event: EventForAuth): this {
    const decision = authorize(this, event);
    if (!decision.allowed) throw new Error(`${decision.rule}: ${decision.reason}`);
    if (event.stateKey === undefined) return this.append(event.type);
    return this.put(event.type, event.stateKey, event.content, event.sender);
  }
}

/** A room with no events yet. */
export function emptyRoom(): StateBuilder {
  return new StateBuilder();
}

/** A room holding only the create event by `creator`. */
export function createdRoom(creator: string = ALICE): StateBuilder {
  return emptyRoom().put(EventType.Create, "", CREATE_CONTENT, creator);
}

/** A room holding the create event and the creator's join. */
export function newRoom(creator: string = ALICE): StateBuilder {
  return createdRoom(creator).user(creator, "join");
}

export function event(
  type: string,
  sender: string,
  content: JsonObject = {},
  stateKey?: string,
  roomId: string = ROOM_ID,
): EventForAuth {
  return stateKey === undefined
    ? { type, sender, content, roomId }
    : { type, sender, content, stateKey, roomId };
}

export function userEvent(
  sender: string,
  target: string,
  participation: Participation,
  extra: JsonObject = {},
): EventForAuth {
  return event(EventType.User, sender, { participation, ...extra }, target);
}

export function rejectedRule(decision: AuthDecision): string | undefined {
  return decision.allowed ? undefined : decision.rule;
}

export function rejectionReason(decision: AuthDecision): string {
  if (decision.allowed) throw new Error("expected a rejection, the event was allowed");
  return decision.reason;
}
