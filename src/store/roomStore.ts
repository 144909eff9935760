import type { StateEntry } from "../roomVersions/types";
import { prefixEnd, type BatchOp, type KvStore } from "./kv";

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

// Key layout (schema version 1). Room IDs, event IDs and types never contain U+0000.
const SEP = "\u0000";
const roomKey = (roomId: string) => `r${SEP}${roomId}`;
const seqHex = (seq: number) => seq.toString(16).padStart(12, "0");
const eventKey = (roomId: string, seq: number) => `e${SEP}${roomId}${SEP}${seqHex(seq)}`;
const eventIdKey = (eventId: string) => `i${SEP}${eventId}`;
const stateKey = (roomId: string, type: string, key: string) => `s${SEP}${roomId}${SEP}${type}${SEP}${key}`;
const lpduKey = (roomId: string, lpduHash: string) => `l${SEP}${roomId}${SEP}${lpduHash}`;

/** Rooms, their linear histories and current state, on a KvStore. */
export class RoomStore {
  constructor(readonly kv: KvStore) {}

  /** The operations that append one event: event, ID index, state, LPDU index and head, in one batch. */
  appendOps(record: RoomRecord, appended: AppendedEvent): BatchOp[] {
    const ops: BatchOp[] = [
      {
        type: "put",
        key: eventKey(appended.roomId, appended.seq),
        value: `${appended.eventId}\n${appended.json}`,
      },
      { type: "put", key: eventIdKey(appended.eventId), value: `${appended.roomId}${SEP}${appended.seq}` },
      { type: "put", key: roomKey(record.roomId), value: JSON.stringify(record) },
    ];
    const entry = appended.stateEntry;
    if (entry !== undefined) {
      ops.push({
        type: "put",
        key: stateKey(record.roomId, entry.type, entry.stateKey),
        value: JSON.stringify(entry),
      });
    }
    if (appended.lpduHash !== undefined) {
      ops.push({ type: "put", key: lpduKey(record.roomId, appended.lpduHash), value: appended.eventId });
    }
    return ops;
  }

  async loadRoomRecords(): Promise<RoomRecord[]> {
    const records: RoomRecord[] = [];
    for await (const [, value] of this.kv.range({ gte: `r${SEP}`, lt: prefixEnd(`r${SEP}`) })) {
      records.push(JSON.parse(value) as RoomRecord);
    }
    return records;
  }

  async loadState(roomId: string): Promise<StateEntry[]> {
    const prefix = `s${SEP}${roomId}${SEP}`;
    const entries: StateEntry[] = [];
    for await (const [, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      entries.push(JSON.parse(value) as StateEntry);
    }
    return entries;
  }

  async locateEvent(eventId: string): Promise<{ roomId: string; seq: number } | undefined> {
    const value = await this.kv.get(eventIdKey(eventId));
    if (value === undefined) return undefined;
    const sep = value.lastIndexOf(SEP);
    return { roomId: value.slice(0, sep), seq: Number(value.slice(sep + 1)) };
  }

  async getEvent(eventId: string): Promise<StoredEvent | undefined> {
    const where = await this.locateEvent(eventId);
    if (where === undefined) return undefined;
    return this.getEventAt(where.roomId, where.seq);
  }

  async getEventAt(roomId: string, seq: number): Promise<StoredEvent | undefined> {
    const value = await this.kv.get(eventKey(roomId, seq));
    return value === undefined ? undefined : parseStoredEvent(roomId, seq, value);
  }

  /** Events with `fromSeq <= seq`, oldest first, at most `limit`. */
  async getEvents(roomId: string, fromSeq: number, limit: number): Promise<StoredEvent[]> {
    const events: StoredEvent[] = [];
    const prefix = `e${SEP}${roomId}${SEP}`;
    for await (const [key, value] of this.kv.range({
      gte: eventKey(roomId, fromSeq),
      lt: prefixEnd(prefix),
      limit,
    })) {
      events.push(parseStoredEvent(roomId, parseInt(key.slice(prefix.length), 16), value));
    }
    return events;
  }

  /** Events with `seq <= toSeq`, newest first, at most `limit` (for backfill). */
  async getEventsBackwards(roomId: string, toSeq: number, limit: number): Promise<StoredEvent[]> {
    const events: StoredEvent[] = [];
    const prefix = `e${SEP}${roomId}${SEP}`;
    const range = { gte: prefix, lt: eventKey(roomId, toSeq + 1), limit, reverse: true };
    for await (const [key, value] of this.kv.range(range)) {
      events.push(parseStoredEvent(roomId, parseInt(key.slice(prefix.length), 16), value));
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

function parseStoredEvent(roomId: string, seq: number, value: string): StoredEvent {
  const newline = value.indexOf("\n");
  return { roomId, seq, eventId: value.slice(0, newline), json: value.slice(newline + 1) };
}
