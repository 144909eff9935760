import type { JsonObject } from "../../events/types";
import type { MembershipRules, Participation, RoomStateView } from "../types";
import { EventType, isParticipation } from "./eventTypes";

/** Policy draft §User Participation: `m.room.user`, keyed by the target, with `participation`. */
export function participationIn(content: JsonObject): Participation | undefined {
  const participation = Object.hasOwn(content, "participation") ? content["participation"] : undefined;
  return isParticipation(participation) ? participation : undefined;
}

export function participationOf(state: RoomStateView, userId: string): Participation | undefined {
  const entry = state.get(EventType.User, userId);
  return entry === undefined ? undefined : participationIn(entry.content);
}

export function participationContent(change: Participation, reason?: string): JsonObject {
  return reason === undefined ? { participation: change } : { participation: change, reason };
}

export const MEMBERSHIP: MembershipRules = {
  eventType: EventType.User,
  participationIn,
  participationOf,
  content: participationContent,
};
