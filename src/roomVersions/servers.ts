import { isValidUserId, serverNameOf } from "../identifiers";
import type { EventForFanOut, MembershipRules, RoomStateView } from "./types";

/**
 * Fan-out and read access computed from a version's membership rules, so
 * that every version gets them from its own participation event type.
 */
export function joinedServers(membership: MembershipRules, state: RoomStateView): Set<string> {
  const servers = new Set<string>();
  for (const entry of state.entriesOfType(membership.eventType)) {
    if (membership.participationIn(entry.content) === "join" && isValidUserId(entry.stateKey)) {
      servers.add(serverNameOf(entry.stateKey));
    }
  }
  return servers;
}

export function fanOutServers(
  membership: MembershipRules,
  stateAfter: RoomStateView,
  event: EventForFanOut,
): Set<string> {
  const servers = joinedServers(membership, stateAfter);
  if (
    event.type === membership.eventType &&
    event.state_key !== undefined &&
    isValidUserId(event.state_key)
  ) {
    const participation = membership.participationIn(event.content);
    if (participation === "leave" || participation === "ban") servers.add(serverNameOf(event.state_key));
  }
  return servers;
}

export function mayRead(
  membership: MembershipRules,
  state: RoomStateView,
  server: string,
  hubServer: string,
): boolean {
  if (server === hubServer) return true;
  for (const entry of state.entriesOfType(membership.eventType)) {
    if (
      membership.participationIn(entry.content) === "join" &&
      isValidUserId(entry.stateKey) &&
      serverNameOf(entry.stateKey) === server
    ) {
      return true;
    }
  }
  return false;
}
