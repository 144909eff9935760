import type { StateEntry } from "../roomVersions/types";
import { prefixEnd, type BatchOp, type KvStore } from "./kv";
import { StoreError } from "./levelStore";
import { EVENT_PREFIX, LEGACY_STATE_PREFIX, parseEventEntry, RoomStore, StateMap } from "./roomStore";

const SCHEMA_KEY = "m\u0000schema";

export interface MigrationOptions {
  /** Keys a migration that walks a large part of the database reads per batch (default 1000). */
  batchSize?: number;
  /** The RoomStore's snapshot interval, for the state index (see RoomStoreOptions). */
  snapshotEvery?: number;
}

/**
 * Numbered migrations: entry N upgrades a database from version N to N + 1.
 * Each returns the operations to apply atomically with the new version number.
 * One that must write more than fits a batch commits batches of its own
 * first, and must then resume or redo them safely if it is interrupted.
 */
const MIGRATIONS: ((kv: KvStore, options: MigrationOptions) => Promise<BatchOp[]>)[] = [buildStateIndex];

export const CURRENT_SCHEMA_VERSION = 1 + MIGRATIONS.length;

/** The last event key buildStateIndex has indexed, committed with each of its batches. */
const STATE_INDEX_PROGRESS_KEY = "m\u0000migration\u0000stateIndex";

/**
 * 1 -> 2: the state log and snapshots (see the key layout in roomStore.ts),
 * built from the stored events, then schema 1's current-state keys deleted.
 * Walks the events in key order, one batch of `batchSize` events at a time,
 * holding one room's state in memory; each batch commits its index entries
 * with the last event key it covered, so an interrupted run resumes after it
 * (reading back the state it had reached from the index it wrote).
 */
export async function buildStateIndex(kv: KvStore, options: MigrationOptions = {}): Promise<BatchOp[]> {
  const batchSize = options.batchSize ?? 1000;
  const store = new RoomStore(
    kv,
    options.snapshotEvery === undefined ? {} : { snapshotEvery: options.snapshotEvery },
  );
  let after = await kv.get(STATE_INDEX_PROGRESS_KEY);
  let room: { roomId: string; state: StateMap } | undefined;
  for (;;) {
    const ops: BatchOp[] = [];
    let last: string | undefined;
    let read = 0;
    const range = { gte: after === undefined ? EVENT_PREFIX : after + "\u0000", lt: prefixEnd(EVENT_PREFIX) };
    for await (const [key, value] of kv.range({ ...range, limit: batchSize })) {
      read += 1;
      last = key;
      const stored = parseEventEntry(key, value);
      const entry = stateEntryOf(key, stored.eventId, stored.json);
      if (entry === undefined) continue;
      if (room?.roomId !== stored.roomId) {
        room = { roomId: stored.roomId, state: new StateMap() };
        for (const earlier of await store.loadState(stored.roomId)) room.state.set(earlier);
      }
      room.state.set(entry);
      ops.push(...store.stateOps(stored.roomId, stored.seq, entry, room.state));
    }
    if (last === undefined) break;
    await kv.commit([...ops, { type: "put", key: STATE_INDEX_PROGRESS_KEY, value: last }]);
    after = last;
    if (read < batchSize) break;
  }
  for (;;) {
    const dels: BatchOp[] = [];
    const range = { gte: LEGACY_STATE_PREFIX, lt: prefixEnd(LEGACY_STATE_PREFIX), limit: batchSize };
    for await (const [key] of kv.range(range)) dels.push({ type: "del", key });
    if (dels.length === 0) break;
    await kv.commit(dels);
  }
  return [{ type: "del", key: STATE_INDEX_PROGRESS_KEY }];
}

/** The state entry of a stored event, or undefined for an event that is not a state event. */
function stateEntryOf(key: string, eventId: string, json: string): StateEntry | undefined {
  let event: { type?: unknown; state_key?: unknown; sender?: unknown; content?: unknown };
  try {
    event = JSON.parse(json) as typeof event;
  } catch {
    throw new StoreError(`the event stored under ${JSON.stringify(key)} is not valid JSON`);
  }
  if (event.state_key === undefined) return undefined;
  if (
    typeof event.state_key !== "string" ||
    typeof event.type !== "string" ||
    typeof event.sender !== "string" ||
    typeof event.content !== "object" ||
    event.content === null ||
    Array.isArray(event.content)
  ) {
    throw new StoreError(
      `the state event stored under ${JSON.stringify(key)} lacks a string type, sender or state_key, or content`,
    );
  }
  return {
    eventId,
    type: event.type,
    stateKey: event.state_key,
    sender: event.sender,
    content: event.content as StateEntry["content"],
  };
}

/**
 * Stamps a new database, migrates an older one, and refuses one written by a
 * newer release. A database with data and no stamp predates the stamp: version 1.
 */
export async function ensureSchema(kv: KvStore, options: MigrationOptions = {}): Promise<number> {
  const stored = await kv.get(SCHEMA_KEY);
  if (stored === undefined && (await isEmpty(kv))) {
    await kv.commit([{ type: "put", key: SCHEMA_KEY, value: String(CURRENT_SCHEMA_VERSION) }]);
    return CURRENT_SCHEMA_VERSION;
  }
  let version = stored === undefined ? 1 : Number(stored);
  if (!Number.isSafeInteger(version) || version < 1) {
    throw new StoreError(`the database's schema version ${JSON.stringify(stored)} is not valid`);
  }
  if (version > CURRENT_SCHEMA_VERSION) {
    throw new StoreError(
      `the database has schema version ${version}, newer than this release supports (${CURRENT_SCHEMA_VERSION}); ` +
        "run a newer release or restore a backup",
    );
  }
  while (version < CURRENT_SCHEMA_VERSION) {
    const ops = await MIGRATIONS[version - 1]!(kv, options);
    version += 1;
    await kv.commit([...ops, { type: "put", key: SCHEMA_KEY, value: String(version) }]);
  }
  return version;
}

async function isEmpty(kv: KvStore): Promise<boolean> {
  for await (const _ of kv.range({ gte: "", lt: "\uffff", limit: 1 })) return false;
  return true;
}
