import type { JsonObject } from "../events/types";
import type { RoomStateView, StateEntry } from "../roomVersions/types";

/** Nested maps (type, then state key): no separator, so no two pairs can collide. */
type EntriesByType = Map<string, Map<string, StateEntry>>;

/** What `append` changed, so a refused batch can put the state back exactly. */
export interface StateMark {
  readonly eventCount: number;
  readonly headType: string | undefined;
  readonly headEventId: string | undefined;
  readonly undoLength: number;
}

interface Undo {
  type: string;
  stateKey: string;
  previous: StateEntry | undefined;
}

/**
 * The state of one room (LM-04 §State Events): the latest event for each
 * (type, state_key), and the position of the head.
 */
export class RoomState implements RoomStateView {
  private readonly byType: EntriesByType = new Map();
  private entryCount = 0;
  /** Changes since the last `mark`, newest last; empty when nobody holds a mark. */
  private undo: Undo[] = [];
  private marks = 0;
  eventCount = 0;
  headType: string | undefined;
  headEventId: string | undefined;

  get(type: string, stateKey: string): StateEntry | undefined {
    return this.byType.get(type)?.get(stateKey);
  }

  entriesOfType(type: string): Iterable<StateEntry> {
    return this.byType.get(type)?.values() ?? [];
  }

  *allEntries(): Iterable<StateEntry> {
    for (const ofType of this.byType.values()) yield* ofType.values();
  }

  get size(): number {
    return this.entryCount;
  }

  /** Puts a state entry without moving the head (used when loading from the store). */
  setEntry(entry: StateEntry): void {
    let ofType = this.byType.get(entry.type);
    if (ofType === undefined) {
      ofType = new Map();
      this.byType.set(entry.type, ofType);
    }
    const previous = ofType.get(entry.stateKey);
    if (this.marks > 0) this.undo.push({ type: entry.type, stateKey: entry.stateKey, previous });
    if (previous === undefined) this.entryCount += 1;
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

  /** Remembers the current position so that `rollback` can return to it. */
  mark(): StateMark {
    this.marks += 1;
    return {
      eventCount: this.eventCount,
      headType: this.headType,
      headEventId: this.headEventId,
      undoLength: this.undo.length,
    };
  }

  /** Undoes every change made since `mark` and releases it. */
  rollback(mark: StateMark): void {
    while (this.undo.length > mark.undoLength) {
      const change = this.undo.pop()!;
      const ofType = this.byType.get(change.type)!;
      if (change.previous === undefined) {
        ofType.delete(change.stateKey);
        this.entryCount -= 1;
        if (ofType.size === 0) this.byType.delete(change.type);
      } else {
        ofType.set(change.stateKey, change.previous);
      }
    }
    this.eventCount = mark.eventCount;
    this.headType = mark.headType;
    this.headEventId = mark.headEventId;
    this.release(mark);
  }

  /** Keeps the changes made since `mark` and releases it. */
  release(mark: StateMark): void {
    void mark;
    this.marks -= 1;
    if (this.marks === 0) this.undo = [];
  }
}
