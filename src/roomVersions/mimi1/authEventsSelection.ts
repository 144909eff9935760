import type { EventForAuth, RoomStateView } from "../types";
import { EventType } from "./eventTypes";

/**
 * LM-04 §Auth Events Selection with this version's types: the create event,
 * the current roles, the sender's participation, and for `m.room.user` the
 * target's participation plus, for a join or knock, the join rules (the
 * events the join and knock conditions read). Absent events are skipped.
 */
export function selectAuthEvents(state: RoomStateView, event: EventForAuth): string[] {
  if (event.type === EventType.Create) return [];
  const selected = [
    state.get(EventType.Create, ""),
    state.get(EventType.Roles, ""),
    state.get(EventType.User, event.sender),
  ];
  if (event.type === EventType.User && event.stateKey !== undefined) {
    if (event.stateKey !== event.sender) selected.push(state.get(EventType.User, event.stateKey));
    const participation = event.content["participation"];
    if (participation === "join" || participation === "knock") {
      selected.push(state.get(EventType.JoinRules, ""));
    }
  }
  return selected.flatMap((entry) => (entry === undefined ? [] : [entry.eventId]));
}
