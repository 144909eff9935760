/**
 * Generated room histories for the store's tests and figures: random state
 * and message events written through RoomStore.appendOps, or in schema 1's
 * layout, and the state before each event by full replay.
 */
import type { StateEntry } from "../../src/roomVersions/types";
import type { BatchOp, KvStore } from "../../src/store/kv";
import { RoomStore, StateMap, type RoomRecord } from "../../src/store/roomStore";
import { seededRandom } from "../support/random";

export interface HistoryEvent {
  seq: number;
  eventId: string;
  json: string;
  stateEntry: StateEntry | undefined;
}

export interface HistoryOptions {
  roomId: string;
  events: number;
  seed: number;
  /** Share of state events (the rest are messages). */
  stateShare: number;
  /** Distinct (type, state_key) tuples the state events draw from. */
  tuples: number;
  /** First seq (to extend a history). */
  fromSeq?: number;
}

/** Tuples that a store joining type and state key with U+0000 would confuse, and other awkward text. */
export const AWKWARD_TUPLES: [string, string][] = [
  ["a\u0000b", "c"],
  ["a", "b\u0000c"],
  ["m.room.topic", ""],
  ["x\uffff", "\u0001"],
  ["é", "\ud83d\ude00"],
  ["\ud800", "\udc00"],
];

export function tupleOf(i: number): [string, string] {
  return i < AWKWARD_TUPLES.length ? AWKWARD_TUPLES[i]! : ["m.room.user", `@user${i}:example.org`];
}

export function generateHistory(options: HistoryOptions): HistoryEvent[] {
  const random = seededRandom(options.seed);
  const events: HistoryEvent[] = [];
  const from = options.fromSeq ?? 1;
  for (let seq = from; seq < from + options.events; seq++) {
    const eventId = `$${options.roomId.slice(1, 4)}-${seq}`;
    const isState = seq === 1 || random() < options.stateShare;
    const [type, stateKey] =
      seq === 1 ? ["m.room.create", ""] : tupleOf(Math.floor(random() * options.tuples));
    const content: StateEntry["content"] = isState
      ? { n: seq, note: "x".repeat(Math.floor(random() * 40)) }
      : { body: `message ${seq}` };
    const event: Record<string, unknown> = {
      room_id: options.roomId,
      type: isState ? type : "m.room.encrypted",
      sender: "@alice:example.org",
      content,
      auth_events: seq === 1 ? [] : [`$${options.roomId.slice(1, 4)}-1`],
      prev_events: seq === 1 ? [] : [`$${options.roomId.slice(1, 4)}-${seq - 1}`],
    };
    if (isState) event.state_key = stateKey;
    events.push({
      seq,
      eventId,
      json: JSON.stringify(event),
      stateEntry: isState ? { eventId, type, stateKey, sender: "@alice:example.org", content } : undefined,
    });
  }
  return events;
}

export function recordOf(roomId: string, event: HistoryEvent): RoomRecord {
  return {
    roomId,
    roomVersion: "io.mimi-appservice.room.v1",
    hubServer: "example.org",
    role: "hub",
    headSeq: event.seq,
    headEventId: event.eventId,
    headType: (JSON.parse(event.json) as { type: string }).type,
  };
}

/**
 * Appends the events through `store.appendOps`, `perCommit` per batch, with
 * the state after each event as RoomService passes it (`state` holds the
 * room's state before the first event; it is updated).
 */
export async function appendHistory(
  store: RoomStore,
  roomId: string,
  events: HistoryEvent[],
  options: { state?: StateMap; perCommit?: number; passState?: boolean } = {},
): Promise<void> {
  const state = options.state ?? new StateMap();
  let ops: BatchOp[] = [];
  for (const event of events) {
    if (event.stateEntry !== undefined) state.set(event.stateEntry);
    state.eventCount = event.seq;
    ops.push(
      ...store.appendOps(
        recordOf(roomId, event),
        { roomId, ...event, lpduHash: undefined },
        options.passState === false ? undefined : state,
      ),
    );
    if (ops.length >= (options.perCommit ?? 100)) {
      await store.kv.commit(ops);
      ops = [];
    }
  }
  await store.kv.commit(ops);
}

/** Writes the events as schema 1 did (events, ID index, unescaped current state, record). */
export async function writeSchema1(kv: KvStore, roomId: string, events: HistoryEvent[]): Promise<void> {
  const ops: BatchOp[] = [];
  for (const event of events) {
    ops.push(
      {
        type: "put",
        key: `e\u0000${roomId}\u0000${event.seq.toString(16).padStart(12, "0")}`,
        value: `${event.eventId}\n${event.json}`,
      },
      { type: "put", key: `i\u0000${event.eventId}`, value: `${roomId}\u0000${event.seq}` },
      { type: "put", key: `r\u0000${roomId}`, value: JSON.stringify(recordOf(roomId, event)) },
    );
    const entry = event.stateEntry;
    if (entry !== undefined) {
      ops.push({
        type: "put",
        key: `s\u0000${roomId}\u0000${entry.type}\u0000${entry.stateKey}`,
        value: JSON.stringify(entry),
      });
    }
  }
  await kv.commit(ops);
}

/** The state before each event by replaying the history from the first event: `states[i]` is the state before seq i + 1. */
export function replayStates(events: HistoryEvent[], upTo = events.length + 1): StateEntry[][] {
  const states: StateEntry[][] = [];
  const state = new StateMap();
  for (let i = 0; i < upTo; i++) {
    states.push([...state.allEntries()]);
    const entry = events[i]?.stateEntry;
    if (entry !== undefined) state.set(entry);
  }
  return states;
}

/**
 * The state before `seq` the way RoomService computed it before the state
 * index: by reading and replaying every event from the first.
 */
export async function replayFromStore(store: RoomStore, roomId: string, seq: number): Promise<StateEntry[]> {
  const state = new StateMap();
  const BATCH = 1000;
  for (let from = 1; from < seq; from += BATCH) {
    for (const stored of await store.getEvents(roomId, from, Math.min(BATCH, seq - from))) {
      const event = JSON.parse(stored.json) as Record<string, unknown>;
      if (typeof event.state_key !== "string") continue;
      state.set({
        eventId: stored.eventId,
        type: event.type as string,
        stateKey: event.state_key,
        sender: event.sender as string,
        content: event.content as StateEntry["content"],
      });
    }
  }
  return [...state.allEntries()];
}

/** Entries in a fixed order, to compare states regardless of the order they were read in. */
export function sorted(entries: StateEntry[]): StateEntry[] {
  const key = (e: StateEntry) => JSON.stringify([e.type, e.stateKey]);
  return [...entries].sort((x, y) => (key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0));
}

/** A KvStore that counts its reads (calls, and entries a range yielded). */
export class CountingKv implements KvStore {
  gets = 0;
  ranges = 0;
  rangeEntries = 0;
  /** Entries ranges yielded, by the key's first part (`e`, `sl`, ...). */
  readonly rangeEntriesOf = new Map<string, number>();

  constructor(private readonly inner: KvStore) {}

  reset(): void {
    this.gets = this.ranges = this.rangeEntries = 0;
    this.rangeEntriesOf.clear();
  }

  get(key: string): Promise<string | undefined> {
    this.gets += 1;
    return this.inner.get(key);
  }

  getMany(keys: string[]): Promise<(string | undefined)[]> {
    this.gets += keys.length;
    return this.inner.getMany(keys);
  }

  async *range(options: Parameters<KvStore["range"]>[0]): AsyncIterable<[string, string]> {
    this.ranges += 1;
    for await (const entry of this.inner.range(options)) {
      this.rangeEntries += 1;
      const part = entry[0].split("\u0000")[0]!;
      this.rangeEntriesOf.set(part, (this.rangeEntriesOf.get(part) ?? 0) + 1);
      yield entry;
    }
  }

  commit(...args: Parameters<KvStore["commit"]>): Promise<void> {
    return this.inner.commit(...args);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A KvStore whose commits fail after the first `allowed`, as if the process died there. */
export class DyingKv extends CountingKv {
  commits = 0;

  constructor(
    inner: KvStore,
    private readonly allowed: number,
  ) {
    super(inner);
  }

  override commit(...args: Parameters<KvStore["commit"]>): Promise<void> {
    this.commits += 1;
    if (this.commits > this.allowed) return Promise.reject(new Error("simulated crash"));
    return super.commit(...args);
  }
}
