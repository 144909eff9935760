import * as mimi1 from "./mimi1";
import type { RoomVersion } from "./types";

/** Our default room version: the MIMI signaling and policy drafts' event types and auth rules. */
export const MIMI_V1: RoomVersion = {
  id: mimi1.ROOM_VERSION_ID,
  redactContent: mimi1.redactContent,
  selectAuthEvents: mimi1.selectAuthEvents,
  authorize: mimi1.authorize,
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
