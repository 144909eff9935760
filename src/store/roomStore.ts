import type { RoomStateView, StateEntry } from "../roomVersions/types";
import { prefixEnd, type BatchOp, type KvStore } from "./kv";
import { StoreError } from "./levelStore";

/** What we keep about a room besides its events and state. */
export interface RoomRecord {
  roomId: string;
  roomVersion: string;
  hubServer: string;
  /** `hub` when this server sequences the room, `follower` when it applies the hub's events. */
  role: "hub" | "follower";
  headSeq: number;
  headEventId: string;
  headType: string;
}

/** One event of a room's linear history; `seq` starts at 1 for the create event. */
export interface StoredEvent {
  roomId: string;
  seq: number;
  eventId: string;
  /** JSON of the fully-formed event (receivers canonicalise what they hash). */
  json: string;
}

export interface AppendedEvent extends StoredEvent {
  stateEntry: StateEntry | undefined;
  /** The LPDU hash, indexed by the hub so a retried limited event is not sequenced twice. */
  lpduHash: string | undefined;
}

/** Auth events reached from a set of events, within a byte budget. */
export interface AuthChain {
  /** Breadth first from the starting events, each event once. */
  events: StoredEvent[];
  /** Sum of the events' JSON lengths in UTF-8 bytes. */
  bytes: number;
  /** False when the budget stopped the walk before the chain ended. */
  complete: boolean;
}

/** What appendOps needs of the room state after an event to write a snapshot of it (a RoomState). */
export interface StateAfter extends Pick<RoomStateView, "eventCount" | "get"> {
  readonly size: number;
  allEntries(): Iterable<StateEntry>;
}

export interface RoomStoreOptions {
  /** A snapshot is written once this many state events, and at least the state's size, followed the last one. */
  snapshotEvery?: number;
}

/*
 * Key layout (schema version 2). `␀` is U+0000; <seq> is 12 hex digits, so
 * key order is history order.
 *
 *   r␀<room>         room record (JSON)
 *   e␀<room>␀<seq>   "<event ID>\n<event JSON>"
 *   i␀<event ID>     "<room>␀<seq, decimal>"
 *   l␀<room>␀<LPDU>  event ID, by LPDU hash
 *   sl␀<room>␀<seq>  StateEntry JSON of the state event at seq (the state log)
 *   ss␀<room>␀<seq>  JSON array of the whole state after the event at seq (a snapshot)
 *
 * The state at any position is the latest snapshot before it plus the log
 * from there (stateAt). A snapshot waits for as many state events as the
 * larger of `snapshotEvery` and the state's size: a read is at most about two
 * states' worth of entries plus `snapshotEvery`, and snapshots cost at most
 * one entry per state event. (Measured against a per-tuple history read with
 * one reverse seek per tuple changed since: that was 2 to 30 times slower
 * for states of 1,000 and 10,000 entries.)
 *
 * No key holds a type or state key: they come from
 * peers and may hold any code unit, so the (type, state_key) tuple lives only
 * in values. Room IDs are identifiers without U+0000 or U+FFFF (appendOps
 * refuses one that has them).
 *
 * Schema 1 kept the current state under s␀<room>␀<type>␀<state key>, where
 * ("a␀b", "c") and ("a", "b␀c") shared a key. Migration 1 -> 2
 * (`buildStateIndex` in schema.ts) builds sl and ss from the stored events and
 * deletes the s keys, so nothing reads the old layout.
 */
const SEP = "\u0000";
export const MAX_SEQ = 16 ** 12 - 1;
const DEFAULT_SNAPSHOT_EVERY = 500;
const roomKey = (roomId: string) => `r${SEP}${roomId}`;
const seqHex = (seq: number) => seq.toString(16).padStart(12, "0");
export const EVENT_PREFIX = `e${SEP}`;
const eventPrefix = (roomId: string) => `${EVENT_PREFIX}${roomId}${SEP}`;
const eventKey = (roomId: string, seq: number) => `${eventPrefix(roomId)}${seqHex(seq)}`;
const eventIdKey = (eventId: string) => `i${SEP}${eventId}`;
const lpduKey = (roomId: string, lpduHash: string) => `l${SEP}${roomId}${SEP}${lpduHash}`;
const logPrefix = (roomId: string) => `sl${SEP}${roomId}${SEP}`;
const snapshotPrefix = (roomId: string) => `ss${SEP}${roomId}${SEP}`;
const stateLogKey = (roomId: string, seq: number) => logPrefix(roomId) + seqHex(seq);
const snapshotKey = (roomId: string, seq: number) => snapshotPrefix(roomId) + seqHex(seq);
/** Schema 1's current-state keys, deleted by the migration. */
export const LEGACY_STATE_PREFIX = `s${SEP}`;

/** Parses an `e` key and its value. */
export function parseEventEntry(key: string, value: string): StoredEvent {
  const sep = key.lastIndexOf(SEP);
  if (!key.startsWith(EVENT_PREFIX) || sep <= EVENT_PREFIX.length) {
    throw new StoreError(`${JSON.stringify(key)} is not an event key`);
  }
  return parseStoredEvent(key.slice(EVENT_PREFIX.length, sep), parseInt(key.slice(sep + 1), 16), value);
}

/** A room state, by type and then state key (nested maps: no two tuples can collide). */
export class StateMap implements StateAfter {
  private readonly byType = new Map<string, Map<string, StateEntry>>();
  size = 0;
  /** Position of the last event applied, for appendOps' check. */
  eventCount = 0;

  get(type: string, stateKey: string): StateEntry | undefined {
    return this.byType.get(type)?.get(stateKey);
  }

  set(entry: StateEntry): void {
    let ofType = this.byType.get(entry.type);
    if (ofType === undefined) this.byType.set(entry.type, (ofType = new Map()));
    if (!ofType.has(entry.stateKey)) this.size += 1;
    ofType.set(entry.stateKey, entry);
  }

  *allEntries(): Iterable<StateEntry> {
    for (const ofType of this.byType.values()) yield* ofType.values();
  }
}

/** Rooms, their linear histories and state, on a KvStore. */
export class RoomStore {
  private readonly snapshotEvery: number;
  /**
   * Per room, as far as this process knows: state events since the last
   * snapshot, and the last position appendOps was given. Only the spacing of
   * snapshots depends on it, never what stateAt answers.
   */
  private readonly spacing = new Map<string, { since: number; lastSeq: number }>();

  constructor(
    readonly kv: KvStore,
    options: RoomStoreOptions = {},
  ) {
    this.snapshotEvery = options.snapshotEvery ?? DEFAULT_SNAPSHOT_EVERY;
    if (!Number.isSafeInteger(this.snapshotEvery) || this.snapshotEvery < 1) {
      throw new StoreError(`snapshotEvery must be a positive integer, not ${this.snapshotEvery}`);
    }
  }

  /**
   * The operations that append one event, for one batch: the event, its ID,
   * the room record, the LPDU hash, and for a state event its state log entry
   * and, when one is due, a snapshot of `stateAfter` (the room state after
   * this event). Without `stateAfter` no snapshot is written; stateAt stays
   * exact but reads more log until a later call brings one. Throws, and
   * returns nothing, on input the key layout cannot hold.
   */
  appendOps(record: RoomRecord, appended: AppendedEvent, stateAfter?: StateAfter): BatchOp[] {
    const roomId = appended.roomId;
    if (roomId.includes(SEP) || roomId.includes("\uffff") || roomId !== record.roomId) {
      throw new StoreError(`cannot store room ID ${JSON.stringify(roomId)} (record of ${record.roomId})`);
    }
    requireSeq(appended.seq);
    const entry = appended.stateEntry;
    if (
      stateAfter !== undefined &&
      (stateAfter.eventCount !== appended.seq ||
        (entry !== undefined && stateAfter.get(entry.type, entry.stateKey)?.eventId !== appended.eventId))
    ) {
      throw new StoreError(`the state given to appendOps is not the state after ${appended.eventId}`);
    }
    const ops: BatchOp[] = [
      { type: "put", key: eventKey(roomId, appended.seq), value: `${appended.eventId}\n${appended.json}` },
      { type: "put", key: eventIdKey(appended.eventId), value: `${roomId}${SEP}${appended.seq}` },
      { type: "put", key: roomKey(roomId), value: JSON.stringify(record) },
    ];
    // A position given again means the caller dropped the operations of a
    // refused batch (RoomService rolls back and reuses the position): what was
    // counted, or a snapshot, may never land. Count the room as unknown.
    const known = this.spacing.get(roomId);
    if (known !== undefined && appended.seq <= known.lastSeq) this.spacing.delete(roomId);
    if (entry !== undefined) ops.push(...this.stateOps(roomId, appended.seq, entry, stateAfter));
    const tracked = this.spacing.get(roomId);
    if (tracked !== undefined) tracked.lastSeq = appended.seq;
    if (appended.lpduHash !== undefined) {
      ops.push({ type: "put", key: lpduKey(roomId, appended.lpduHash), value: appended.eventId });
    }
    return ops;
  }

  /**
   * The state index operations of the state event at `seq`: its log entry,
   * and a snapshot of `stateAfter` when one is due. Part of appendOps; the
   * schema migration builds the index with it.
   */
  stateOps(roomId: string, seq: number, entry: StateEntry, stateAfter: StateAfter | undefined): BatchOp[] {
    const ops: BatchOp[] = [{ type: "put", key: stateLogKey(roomId, seq), value: JSON.stringify(entry) }];
    // A room this process has not read yet may be far from its last snapshot: take one now.
    let since = (this.spacing.get(roomId)?.since ?? (seq === 1 ? 0 : Infinity)) + 1;
    if (stateAfter !== undefined && since >= Math.max(this.snapshotEvery, stateAfter.size)) {
      ops.push({
        type: "put",
        key: snapshotKey(roomId, seq),
        value: JSON.stringify([...stateAfter.allEntries()]),
      });
      since = 0;
    }
    this.spacing.set(roomId, { since, lastSeq: seq });
    return ops;
  }

  async loadRoomRecords(): Promise<RoomRecord[]> {
    const records: RoomRecord[] = [];
    for await (const [, value] of this.kv.range({ gte: `r${SEP}`, lt: prefixEnd(`r${SEP}`) })) {
      records.push(JSON.parse(value) as RoomRecord);
    }
    return records;
  }

  /** The current state: the state after the room's last event. */
  async loadState(roomId: string): Promise<StateEntry[]> {
    const { entries, logRead } = await this.readState(roomId, undefined);
    this.spacing.set(roomId, { since: logRead, lastSeq: 0 });
    return entries;
  }

  /**
   * The state before the event at `seq` (LM-04 §State Events: the latest event
   * of each (type, state_key) among events 1 to seq - 1); past the head, the
   * current state. Two reads: the latest snapshot before `seq`, and the log
   * from it to `seq`. appendOps takes a snapshot once the log since the last
   * one reaches the larger of `snapshotEvery` and the state's size, so this
   * reads at most about twice the state plus `snapshotEvery` entries, however
   * long the history is.
   */
  async stateAt(roomId: string, seq: number): Promise<StateEntry[]> {
    requireSeq(seq);
    return (await this.readState(roomId, seq)).entries;
  }

  private async readState(
    roomId: string,
    beforeSeq: number | undefined,
  ): Promise<{ entries: StateEntry[]; logRead: number }> {
    const state = new StateMap();
    const snapshots = snapshotPrefix(roomId);
    const log = logPrefix(roomId);
    let logFrom = log;
    for await (const [key, value] of this.kv.range({
      gte: snapshots,
      lt: beforeSeq === undefined ? prefixEnd(snapshots) : snapshotKey(roomId, beforeSeq),
      reverse: true,
      limit: 1,
    })) {
      for (const entry of JSON.parse(value) as StateEntry[]) state.set(entry);
      logFrom = stateLogKey(roomId, parseInt(key.slice(snapshots.length), 16) + 1);
    }
    let logRead = 0;
    for await (const [, value] of this.kv.range({
      gte: logFrom,
      lt: beforeSeq === undefined ? prefixEnd(log) : stateLogKey(roomId, beforeSeq),
    })) {
      state.set(JSON.parse(value) as StateEntry);
      logRead += 1;
    }
    return { entries: [...state.allEntries()], logRead };
  }

  async locateEvent(eventId: string): Promise<{ roomId: string; seq: number } | undefined> {
    const value = await this.kv.get(eventIdKey(eventId));
    return value === undefined ? undefined : parseLocation(value);
  }

  async getEvent(eventId: string): Promise<StoredEvent | undefined> {
    const where = await this.locateEvent(eventId);
    if (where === undefined) return undefined;
    return this.getEventAt(where.roomId, where.seq);
  }

  /** The events with these IDs, in the same order, `undefined` for an unknown ID; two batched reads. */
  async getEventsByIds(eventIds: readonly string[]): Promise<(StoredEvent | undefined)[]> {
    const locations = (await this.kv.getMany(eventIds.map(eventIdKey))).map((value) =>
      value === undefined ? undefined : parseLocation(value),
    );
    const found = locations.filter((where) => where !== undefined);
    const values = await this.kv.getMany(found.map((where) => eventKey(where.roomId, where.seq)));
    let next = 0;
    return locations.map((where) => {
      if (where === undefined) return undefined;
      const value = values[next++];
      return value === undefined ? undefined : parseStoredEvent(where.roomId, where.seq, value);
    });
  }

  /**
   * The auth events of `start`, theirs, and so on (LM-04 §`GET /state`: "the
   * `auth_events` of those events, recursively"), each once, without the
   * events in `exclude`, and only events of this room. Stops before the event
   * that would take the total over `maxBytes`. `start` gives event IDs, and
   * the events' JSON where the caller has read it already.
   */
  async authChain(
    roomId: string,
    start: readonly { eventId: string; json?: string }[],
    options: { maxBytes: number; exclude?: ReadonlySet<string> },
  ): Promise<AuthChain> {
    const seen = new Set<string>(options.exclude);
    const chain: AuthChain = { events: [], bytes: 0, complete: true };
    const unread = start.filter((s) => s.json === undefined).map((s) => s.eventId);
    const read = await this.getEventsByIds(unread);
    let frontier = [
      ...start.flatMap((s) => (s.json === undefined ? [] : authEventsOf(s.json))),
      ...read.flatMap((stored) =>
        stored === undefined || stored.roomId !== roomId ? [] : authEventsOf(stored.json),
      ),
    ];
    while (frontier.length > 0) {
      const ids = [...new Set(frontier)].filter((id) => !seen.has(id));
      for (const id of ids) seen.add(id);
      frontier = [];
      for (const stored of await this.getEventsByIds(ids)) {
        if (stored === undefined || stored.roomId !== roomId) continue;
        const bytes = Buffer.byteLength(stored.json);
        if (chain.bytes + bytes > options.maxBytes) {
          chain.complete = false;
          return chain;
        }
        chain.events.push(stored);
        chain.bytes += bytes;
        frontier.push(...authEventsOf(stored.json));
      }
    }
    return chain;
  }

  async getEventAt(roomId: string, seq: number): Promise<StoredEvent | undefined> {
    const value = await this.kv.get(eventKey(roomId, seq));
    return value === undefined ? undefined : parseStoredEvent(roomId, seq, value);
  }

  /**
   * Events with `fromSeq <= seq`, oldest first, at most `limit`, and no more
   * than `maxBytes` of JSON in all, except that the first event is always
   * returned, so that a page is never empty while events remain.
   */
  async getEvents(
    roomId: string,
    fromSeq: number,
    limit: number,
    maxBytes = Infinity,
  ): Promise<StoredEvent[]> {
    return this.page(
      roomId,
      { gte: eventKey(roomId, fromSeq), lt: prefixEnd(eventPrefix(roomId)), limit },
      maxBytes,
    );
  }

  /** Events with `seq <= toSeq`, newest first, at most `limit` and `maxBytes` as getEvents (for backfill). */
  async getEventsBackwards(
    roomId: string,
    toSeq: number,
    limit: number,
    maxBytes = Infinity,
  ): Promise<StoredEvent[]> {
    const range = { gte: eventPrefix(roomId), lt: eventKey(roomId, toSeq + 1), limit, reverse: true };
    return this.page(roomId, range, maxBytes);
  }

  private async page(
    roomId: string,
    range: { gte: string; lt: string; limit: number; reverse?: boolean },
    maxBytes: number,
  ): Promise<StoredEvent[]> {
    const events: StoredEvent[] = [];
    const prefix = eventPrefix(roomId);
    let bytes = 0;
    for await (const [key, value] of this.kv.range(range)) {
      const event = parseStoredEvent(roomId, parseInt(key.slice(prefix.length), 16), value);
      bytes += Buffer.byteLength(event.json);
      if (bytes > maxBytes && events.length > 0) break;
      events.push(event);
    }
    return events;
  }

  async findByLpduHash(roomId: string, lpduHash: string): Promise<string | undefined> {
    return this.kv.get(lpduKey(roomId, lpduHash));
  }

  /** The synchronous form, or `unavailable` when the backend only reads asynchronously. */
  findByLpduHashSync(roomId: string, lpduHash: string): string | undefined | "unavailable" {
    if (this.kv.getSync === undefined) return "unavailable";
    return this.kv.getSync(lpduKey(roomId, lpduHash));
  }
}

function requireSeq(seq: number): void {
  if (!Number.isSafeInteger(seq) || seq < 1 || seq > MAX_SEQ) {
    throw new StoreError(`position ${seq} is not an integer from 1 to ${MAX_SEQ}`);
  }
}

function parseStoredEvent(roomId: string, seq: number, value: string): StoredEvent {
  const newline = value.indexOf("\n");
  return { roomId, seq, eventId: value.slice(0, newline), json: value.slice(newline + 1) };
}

function parseLocation(value: string): { roomId: string; seq: number } {
  const sep = value.lastIndexOf(SEP);
  return { roomId: value.slice(0, sep), seq: Number(value.slice(sep + 1)) };
}

function authEventsOf(json: string): string[] {
  const authEvents = (JSON.parse(json) as { auth_events?: unknown }).auth_events;
  return Array.isArray(authEvents) ? authEvents.filter((id): id is string => typeof id === "string") : [];
}
