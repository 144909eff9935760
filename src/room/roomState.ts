import type { JsonObject } from "../events/types";
import type { RoomStateView, StateEntry } from "../roomVersions/types";

function stateKeyOf(type: string, stateKey: string): string {
  return `${type}\u0000${stateKey}`;
}

/**
 * The current state of one room (LM-04 §State Events): the latest event for
 * each (type, state_key), and the position of the head. Mutated only by the
 * room core after an event is accepted.
 */
export class RoomState implements RoomStateView {
  private readonly entries = new Map<string, StateEntry>();
  private readonly byType = new Map<string, Map<string, StateEntry>>();
  eventCount = 0;
  headType: string | undefined;
  headEventId: string | undefined;

  get(type: string, stateKey: string): StateEntry | undefined {
    return this.entries.get(stateKeyOf(type, stateKey));
  }

  entriesOfType(type: string): Iterable<StateEntry> {
    return this.byType.get(type)?.values() ?? [];
  }

  allEntries(): Iterable<StateEntry> {
    return this.entries.values();
  }

  get size(): number {
    return this.entries.size;
  }

  /** Puts a state entry without moving the head (used when loading from the store). */
  setEntry(entry: StateEntry): void {
    this.entries.set(stateKeyOf(entry.type, entry.stateKey), entry);
    let ofType = this.byType.get(entry.type);
    if (ofType === undefined) {
      ofType = new Map();
      this.byType.set(entry.type, ofType);
    }
    ofType.set(entry.stateKey, entry);
  }

  /** Appends an accepted event: moves the head and, for a state event, replaces its entry. */
  append(
    eventId: string,
    event: { type: string; state_key?: string; sender: string; content: JsonObject },
  ): StateEntry | undefined {
    this.eventCount += 1;
    this.headType = event.type;
    this.headEventId = eventId;
    if (event.state_key === undefined) return undefined;
    const entry: StateEntry = {
      eventId,
      type: event.type,
      stateKey: event.state_key,
      sender: event.sender,
      content: event.content,
    };
    this.setEntry(entry);
    return entry;
  }
}
