import {
  formEvent,
  verifyFullyFormedEvent,
  verifyLimitedEvent,
  type FormedEvent,
  type FullyFormedVerifyOptions,
} from "../events/pdu";
import { serverNameOf } from "../identifiers";
import { MAX_EVENT_BYTES } from "../events/envelope";
import { EventFormatError } from "../events/errors";
import type { VerifyKeyLookup } from "../events/signatures";
import type { ServerSigningKey } from "../events/signingKey";
import type { FullyFormedEvent, LimitedEvent } from "../events/types";
import type { EventForAuth, RoomVersion, StateEntry } from "../roomVersions/types";
import { AuthRejection, GapError, RoomError } from "./errors";
import { RoomState } from "./roomState";

/** An event appended to a room's history by the hub or follower core. */
export interface SequencedEvent {
  roomId: string;
  seq: number;
  eventId: string;
  event: FullyFormedEvent;
  json: string;
  stateEntry: StateEntry | undefined;
  lpduHash: string;
}

function forAuth(event: LimitedEvent | FullyFormedEvent): EventForAuth {
  const auth: EventForAuth = {
    type: event.type,
    sender: event.sender,
    content: event.content,
    roomId: event.room_id,
  };
  if (event.state_key !== undefined) auth.stateKey = event.state_key;
  return auth;
}

function stateEntryOf(eventId: string, event: FullyFormedEvent): StateEntry | undefined {
  if (event.state_key === undefined) return undefined;
  return {
    eventId,
    type: event.type,
    stateKey: event.state_key,
    sender: event.sender,
    content: event.content,
  };
}

function authorizeOrThrow(version: RoomVersion, state: RoomState, event: EventForAuth): void {
  const decision = version.authorize(state, event);
  if (!decision.allowed) throw new AuthRejection(decision.rule, decision.reason);
}

/**
 * The hub's room core (pure: no I/O). It takes limited events that passed the
 * shape check, verifies them, enforces policy against the state it is given,
 * and forms and signs the fully-formed event. It never changes the state: the
 * caller appends the event once it decided to keep it.
 */
export class HubRoom {
  constructor(
    readonly roomId: string,
    readonly version: RoomVersion,
    readonly state: RoomState,
    private readonly hubKey: ServerSigningKey,
  ) {}

  get hubServer(): string {
    return this.hubKey.serverName;
  }

  /**
   * @param origin the server the limited event came from (authenticated by
   *   the transport), or our own name for our users' events.
   */
  sequence(
    lpdu: LimitedEvent,
    origin: string,
    lookup: VerifyKeyLookup,
    lpduHashChecked = false,
  ): SequencedEvent {
    if (lpdu.room_id !== this.roomId) {
      throw new RoomError("M_INVALID_PARAM", `limited event is for room ${lpdu.room_id}, not ${this.roomId}`);
    }
    if (lpdu.hub_server !== this.hubServer) {
      throw new RoomError(
        "M_WRONG_HUB",
        `limited event names hub ${lpdu.hub_server}, but ${this.hubServer} is the hub`,
      );
    }
    const senderServer = serverNameOf(lpdu.sender);
    if (senderServer !== origin) {
      throw new RoomError("M_FORBIDDEN", `server ${origin} cannot send events for ${lpdu.sender}`);
    }
    verifyLimitedEvent(lpdu, lookup, this.version, { lpduHashChecked });
    const auth = forAuth(lpdu);
    authorizeOrThrow(this.version, this.state, auth);
    const authEvents =
      lpdu.type === this.version.createEventType ? [] : this.version.selectAuthEvents(this.state, auth);
    const prevEvents = this.state.headEventId === undefined ? [] : [this.state.headEventId];
    const formed: FormedEvent = formEvent(lpdu, authEvents, prevEvents, this.hubKey, this.version);
    return {
      roomId: this.roomId,
      seq: this.state.eventCount + 1,
      eventId: formed.eventId,
      event: formed.event,
      json: formed.json,
      stateEntry: stateEntryOf(formed.eventId, formed.event),
      lpduHash: lpdu.hashes.lpdu.sha256,
    };
  }
}

export type FollowerPlacement = "next" | "elsewhere";

/**
 * A follower's room core (pure: no I/O). It checks the hub's fully-formed
 * events in order (hashes, both signatures, linearity, the auth events and
 * policy); like the hub's core it leaves the state to the caller.
 */
export class FollowerRoom {
  constructor(
    readonly roomId: string,
    readonly version: RoomVersion,
    readonly state: RoomState,
    readonly hubServer: string,
  ) {}

  /** `next` when the event's parent is our head (or it is the create event of an empty room). */
  placement(event: FullyFormedEvent): FollowerPlacement {
    if (this.state.eventCount === 0)
      return event.type === this.version.createEventType ? "next" : "elsewhere";
    return event.prev_events[0] === this.state.headEventId ? "next" : "elsewhere";
  }

  gapFor(event: FullyFormedEvent): GapError {
    const missing = event.prev_events[0] ?? "(the create event)";
    return new GapError(this.roomId, missing, this.state.headEventId, this.state.eventCount);
  }

  apply(
    event: FullyFormedEvent,
    lookup: VerifyKeyLookup,
    options: FullyFormedVerifyOptions = {},
  ): SequencedEvent {
    if (event.room_id !== this.roomId) {
      throw new RoomError("M_INVALID_PARAM", `event is for room ${event.room_id}, not ${this.roomId}`);
    }
    if (event.hub_server !== this.hubServer) {
      throw new RoomError(
        "M_WRONG_HUB",
        `event names hub ${event.hub_server}, but ${this.hubServer} is the hub`,
      );
    }
    if (this.placement(event) !== "next") throw this.gapFor(event);
    const eventId = verifyFullyFormedEvent(event, lookup, this.version, options);
    const auth = forAuth(event);
    const expected =
      event.type === this.version.createEventType ? [] : this.version.selectAuthEvents(this.state, auth);
    if (
      expected.length !== event.auth_events.length ||
      expected.some((id, i) => event.auth_events[i] !== id)
    ) {
      throw new AuthRejection(
        "auth_events.selection",
        `auth_events ${JSON.stringify(event.auth_events)} differ from the selection ${JSON.stringify(expected)}`,
      );
    }
    authorizeOrThrow(this.version, this.state, auth);
    const json = JSON.stringify(event);
    if (Buffer.byteLength(json, "utf8") > MAX_EVENT_BYTES) {
      throw new EventFormatError(
        `event is larger than ${MAX_EVENT_BYTES} bytes of canonical JSON`,
        "M_TOO_LARGE",
      );
    }
    return {
      roomId: this.roomId,
      seq: this.state.eventCount + 1,
      eventId,
      event,
      json,
      stateEntry: stateEntryOf(eventId, event),
      lpduHash: event.hashes.lpdu.sha256,
    };
  }
}
