import type { JsonObject, LimitedEvent } from "../events/types";
import type { FederationClient } from "../federation/client";
import { FederationError } from "../federation/errors";
import { serverNameOf } from "../identifiers";
import type { RoomService } from "../room/roomService";
import { checkAnswer, EVENT_ID_ANSWER } from "./peerAnswers";

/** An invite whose target's server has no joined user yet: the hub asks that server first. */
export function isInviteOfOutsider(rooms: RoomService, lpdu: LimitedEvent): boolean {
  const room = rooms.room(lpdu.room_id);
  if (room === undefined || lpdu.state_key === undefined) return false;
  const membership = room.version.membership;
  if (lpdu.type !== membership.eventType || membership.participationIn(lpdu.content) !== "invite")
    return false;
  const targetServer = serverNameOf(lpdu.state_key);
  return targetServer !== rooms.serverName && !room.version.joinedServers(room.state).has(targetServer);
}

/** LM-04 §Stripped State: the version's room-wide types, for context only. */
export function strippedState(rooms: RoomService, roomId: string): JsonObject[] {
  const room = rooms.room(roomId);
  if (room === undefined) return [];
  const stripped: JsonObject[] = [];
  for (const type of room.version.strippedStateTypes) {
    const entry = room.state.get(type, "");
    if (entry !== undefined)
      stripped.push({ type, state_key: "", sender: entry.sender, content: entry.content });
  }
  return stripped;
}

/**
 * LM-04 §Invites: before the hub sequences an invite of a user whose server
 * is not in the room, it sends the invite to that server, which may refuse
 * (e.g. an unknown user); a refusal is passed on and nothing is sequenced.
 */
export async function askInvitee(
  rooms: RoomService,
  client: FederationClient,
  lpdu: LimitedEvent,
): Promise<void> {
  const room = rooms.room(lpdu.room_id)!;
  const decision = rooms.checkAllowed(lpdu.room_id, lpdu.sender, lpdu.type, lpdu.content, lpdu.state_key);
  if (!decision.allowed) {
    throw new FederationError(
      403,
      "M_FORBIDDEN",
      `invite refused by rule ${decision.rule}: ${decision.reason}`,
    );
  }
  const invitee = serverNameOf(lpdu.state_key!);
  const answer = await client.request(
    invitee,
    "POST",
    `/_matrix/federation/v3/invite/${encodeURIComponent(lpduTxnId(lpdu))}`,
    { event: lpdu, room_version: room.version.id, invite_room_state: strippedState(rooms, lpdu.room_id) },
  );
  checkAnswer(EVENT_ID_ANSWER, answer, invitee, "invite");
}

/** A transaction ID for requests that carry one LPDU: its hash, so a retry reuses it. */
export function lpduTxnId(lpdu: LimitedEvent): string {
  return lpdu.hashes.lpdu.sha256.replace(/\+/g, "-").replace(/\//g, "_");
}
