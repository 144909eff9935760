import * as mimi1 from "./mimi1";
import { fanOutServers, joinedServers, mayRead } from "./servers";
import type { RoomVersion } from "./types";

/** Our default room version: the MIMI signaling and policy drafts' event types and auth rules. */
export const MIMI_V1: RoomVersion = {
  id: mimi1.ROOM_VERSION_ID,
  redactContent: mimi1.redactContent,
  selectAuthEvents: mimi1.selectAuthEvents,
  authorize: mimi1.authorize,
  createEventType: mimi1.EventType.Create,
  defaultEncryptionAlgorithm: mimi1.DEFAULT_ENCRYPTION_ALGORITHM,
  createContent: mimi1.createContent,
  membership: mimi1.MEMBERSHIP,
  joinedServers: (state) => joinedServers(mimi1.MEMBERSHIP, state),
  fanOutServers: (stateAfter, event) => fanOutServers(mimi1.MEMBERSHIP, stateAfter, event),
  mayRead: (state, server, hubServer) => mayRead(mimi1.MEMBERSHIP, state, server, hubServer),
  strippedStateTypes: mimi1.STRIPPED_STATE_TYPES,
};

export const DEFAULT_ROOM_VERSION = MIMI_V1.id;

const VERSIONS = new Map<string, RoomVersion>([[MIMI_V1.id, MIMI_V1]]);

/** The room version a create event's `policy_id` names, if we speak it. */
export function getRoomVersion(id: string): RoomVersion | undefined {
  return VERSIONS.get(id);
}

export function supportedRoomVersions(): string[] {
  return [...VERSIONS.keys()];
}
