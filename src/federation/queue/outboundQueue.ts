import { randomBytes } from "node:crypto";
import { MimiError } from "../../errors";
import { prefixEnd, type BatchOp, type KvStore } from "../../store/kv";

export type QueueItemKind = "pdu" | "edu";

/** One unit to deliver. For a PDU, `id` is its event ID: the receiver deduplicates by it. */
export interface QueueItem {
  kind: QueueItemKind;
  id: string;
  body: unknown;
}

/** A transaction chosen for a destination: persisted before it is sent, deleted once acknowledged. */
export interface OutboundTransaction {
  readonly destination: string;
  readonly txnId: string;
  /** The queue sequence numbers it covers, ascending. */
  readonly seqs: readonly number[];
  readonly pdus: readonly QueueItem[];
  readonly edus: readonly QueueItem[];
  /** When its oldest item was enqueued (ms since the epoch). */
  readonly enqueuedTs: number;
}

/** LM-04 §`PUT /_matrix/federation/v2/send/:txnId`: at most 50 PDUs and 100 EDUs per transaction. */
export const MAX_PDUS_PER_TXN = 50;
export const MAX_EDUS_PER_TXN = 100;

export interface TransactionLimits {
  maxPdus: number;
  maxEdus: number;
}

export const DEFAULT_QUEUE_MAX_DEPTH = 100_000;
export const DEFAULT_QUEUE_MAX_AGE_MS = 7 * 24 * 60 * 60 * 1000;
export const DEFAULT_MAX_DEAD_LETTERS = 100_000;

export interface OutboundQueueOptions {
  /** Transaction IDs must never repeat for one receiver (LM-04 §Transaction Identifiers). */
  newTxnId?: () => string;
  /** Items kept per destination; `expire` dead-letters the oldest beyond it ("queue full"). Default 100,000. */
  maxDepth?: number;
  /** Items older than this (ms) are dead-lettered by `expire` ("expired"). Default 7 days. */
  maxAgeMs?: number;
  /** Dead letters kept per destination; beyond it the oldest are deleted for good. Default 100,000. */
  maxDeadLetters?: number;
  /** Milliseconds since the epoch. Default `Date.now`. */
  now?: () => number;
  /**
   * Told after items were moved to the dead letters, once per reason: e.g. to
   * fail local sends waiting for them. A throwing hook is ignored.
   */
  onDeadLetter?: (destination: string, items: readonly QueueItem[], reason: DeadLetterReason) => void;
}

/** Why items left the queue without being delivered. */
export interface DeadLetterReason {
  /** `refused`: the destination refused the transaction permanently; the others come from `expire`. */
  reason: "refused" | "expired" | "queue full";
  /** When the items were moved (ms since the epoch). */
  time: number;
  /** Attempts made at sending them. */
  attempts: number;
  txnId?: string;
  /** The destination's answer, for `refused`. */
  status?: number;
  errcode?: string;
  error?: string;
}

export interface DeadLetter {
  destination: string;
  /** Its position in the destination's queue when it was moved. */
  seq: number;
  item: QueueItem;
  /** When it was enqueued; undefined for items enqueued before this was recorded. */
  enqueuedTs: number | undefined;
  reason: DeadLetterReason;
}

export interface DeadLetterResult {
  /** Items moved to the dead letters. */
  moved: number;
  /** Older dead letters deleted to stay within `maxDeadLetters`. */
  dropped: number;
}

export class QueueError extends MimiError {
  constructor(message: string) {
    super("M_INVALID_PARAM", message);
  }
}

// Key layout. Destinations are server names: never U+0000 or U+FFFF.
//   q\0<destination>\0<16 hex seq>  -> item JSON {kind, id, body, ts} (schema 1 wrote no ts)
//   qn\0<destination>               -> next sequence number (written by enqueues only)
//   qt\0<destination>               -> in-flight transaction {txnId, seqs} (written by the worker only)
//   qd\0<destination>\0<16 hex seq> -> dead letter {kind, id, body, ts, reason}
//   qdn\0<destination>              -> number of dead letters (written with them, under a lock)
// The counter and the in-flight marker are separate keys because enqueues and
// acknowledgements commit concurrently: one shared record would let a stale copy
// from either side overwrite the other's change.
const SEP = "\u0000";
const ITEMS = `q${SEP}`;
const COUNTERS = `qn${SEP}`;
const TXNS = `qt${SEP}`;
const DEAD = `qd${SEP}`;
const DEAD_COUNTS = `qdn${SEP}`;
const SEQ_DIGITS = 16;
/** Items read or moved per write by `expire` and `retryDeadLetters`. */
const BATCH = 500;

const seqHex = (seq: number) => seq.toString(16).padStart(SEQ_DIGITS, "0");
const itemPrefix = (destination: string) => `${ITEMS}${destination}${SEP}`;
const itemKey = (destination: string, seq: number) => itemPrefix(destination) + seqHex(seq);
const deadPrefix = (destination: string) => `${DEAD}${destination}${SEP}`;
const deadKey = (destination: string, seq: number) => deadPrefix(destination) + seqHex(seq);
const counterKey = (destination: string) => `${COUNTERS}${destination}`;
const deadCountKey = (destination: string) => `${DEAD_COUNTS}${destination}`;
const txnKey = (destination: string) => `${TXNS}${destination}`;
const seqOfKey = (key: string) => parseInt(key.slice(key.length - SEQ_DIGITS), 16);
const destinationOfKey = (prefix: string, key: string) =>
  key.slice(prefix.length, key.length - SEQ_DIGITS - 1);

interface PersistedTxn {
  txnId: string;
  seqs: number[];
}

interface DestinationState {
  /** The next sequence number to hand out. */
  next: number;
  /** Lowest sequence number that may still be undelivered; `depth` is `next - low`. */
  low: number;
  txn: PersistedTxn | undefined;
  dead: number;
  /** Dead-letter changes run one at a time per destination. */
  lock: Promise<unknown>;
  /**
   * Every item of the destination in the store, by sequence number, while
   * that is known (the store reports its batches and the backlog fits the
   * cache); otherwise undefined and items are read from the store.
   */
  cache: ItemCache | undefined;
  /** Batches landing while a read of the store may make the cache whole again. */
  recording: ItemCache | undefined;
}

/** Stored item values by sequence number, with deletions seen (for a recording). */
interface ItemCache {
  values: Map<number, string>;
  /** Only a recording keeps the deletions it saw. */
  tracksDeletes: boolean;
  deleted: Set<number>;
  bytes: number;
  /** Sequence numbers went in ascending order (the map's iteration order is theirs). */
  ordered: boolean;
  last: number;
}

/** A destination's cache holds at most this many items, and all caches together at most CACHE_MAX_BYTES. */
const CACHE_MAX_ITEMS = 2_000;
const CACHE_MAX_BYTES = 64 * 1024 * 1024;

function newCache(tracksDeletes = false): ItemCache {
  return { values: new Map(), tracksDeletes, deleted: new Set(), bytes: 0, ordered: true, last: -1 };
}

/** Applies one landed operation on an item; returns the change in the cache's bytes. */
function applyToCache(cache: ItemCache, seq: number, op: BatchOp): number {
  const before = cache.bytes;
  const old = cache.values.get(seq);
  if (old !== undefined) {
    cache.values.delete(seq);
    cache.bytes -= old.length;
  }
  if (op.type === "del") {
    if (cache.tracksDeletes) cache.deleted.add(seq);
  } else {
    cache.deleted.delete(seq);
    cache.values.set(seq, op.value);
    cache.bytes += op.value.length;
    if (seq < cache.last) cache.ordered = false;
    cache.last = Math.max(cache.last, seq);
  }
  return cache.bytes - before;
}

/** The first items of `values` (in sequence order) that fit in one transaction. */
function headOf(values: Map<number, string>, limits: TransactionLimits): Entry[] {
  const entries: Entry[] = [];
  let pdus = 0;
  let edus = 0;
  for (const [seq, value] of values) {
    const entry = parseEntry(seq, value);
    if (entry.item.kind === "pdu" ? pdus === limits.maxPdus : edus === limits.maxEdus) break;
    if (entry.item.kind === "pdu") pdus++;
    else edus++;
    entries.push(entry);
  }
  return entries;
}

/** A stored item with its enqueue time. */
interface Entry {
  seq: number;
  item: QueueItem;
  ts: number | undefined;
}

function defaultTxnId(): string {
  return randomBytes(16).toString("base64url");
}

function checkDestination(destination: string): void {
  if (destination.length === 0 || destination.includes(SEP) || destination.includes("\uffff")) {
    throw new QueueError(`invalid destination ${JSON.stringify(destination)}`);
  }
}

function checkItem(item: QueueItem): void {
  if (item.kind !== "pdu" && item.kind !== "edu") {
    throw new QueueError(`queue item kind must be "pdu" or "edu", got ${JSON.stringify(item.kind)}`);
  }
  if (typeof item.id !== "string" || item.id.length === 0) {
    throw new QueueError("queue item id must be a non-empty string");
  }
}

function parseEntry(seq: number, value: string): Entry {
  return entryOf(seq, JSON.parse(value) as QueueItem & { ts?: unknown });
}

function entryOf(seq: number, { kind, id, body, ts }: QueueItem & { ts?: unknown }): Entry {
  const item: QueueItem = { kind, id, body };
  checkItem(item);
  return { seq, item, ts: typeof ts === "number" ? ts : undefined };
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new QueueError(`${name} must be a positive integer, got ${value}`);
  }
  return value;
}

async function firstKey(kv: KvStore, gte: string, lt: string, reverse = false): Promise<string | undefined> {
  for await (const [key] of kv.range({ gte, lt, limit: 1, reverse })) return key;
  return undefined;
}

/**
 * Durable per-destination FIFO queues on a KvStore. Only counters and the
 * in-flight transaction of each destination live in memory; items are read
 * from the store one transaction at a time.
 *
 * Items are delivered in sequence order. Sequence numbers are allocated when
 * `enqueueOps` is called, so callers commit the returned operations in the
 * order they obtained them (a room's append path does).
 *
 * Items that cannot be delivered (refused for good, too old, or beyond the
 * queue's depth) move to the destination's dead letters, which an operator
 * lists and puts back with `retryDeadLetters`.
 */
export class OutboundQueue {
  readonly maxDepth: number;
  readonly maxAgeMs: number;
  readonly maxDeadLetters: number;
  private readonly states = new Map<string, DestinationState>();
  private readonly newTxnId: () => string;
  private readonly now: () => number;
  /** Items stored without an enqueue time are aged from here. */
  private readonly openedAt: number;
  private readonly onDeadLetter: OutboundQueueOptions["onDeadLetter"];
  /** Whether the store reports its batches, so item caches can follow it. */
  private readonly cached: boolean;
  private cacheBytes = 0;

  private constructor(
    readonly kv: KvStore,
    options: OutboundQueueOptions,
  ) {
    this.newTxnId = options.newTxnId ?? defaultTxnId;
    this.maxDepth = positiveInteger("maxDepth", options.maxDepth ?? DEFAULT_QUEUE_MAX_DEPTH);
    this.maxAgeMs = positiveInteger("maxAgeMs", options.maxAgeMs ?? DEFAULT_QUEUE_MAX_AGE_MS);
    this.maxDeadLetters = positiveInteger(
      "maxDeadLetters",
      options.maxDeadLetters ?? DEFAULT_MAX_DEAD_LETTERS,
    );
    this.now = options.now ?? Date.now;
    this.openedAt = this.now();
    this.onDeadLetter = options.onDeadLetter;
    this.cached = kv.onCommitted !== undefined;
    kv.onCommitted?.((ops) => this.follow(ops));
  }

  /** Keeps each destination's item cache (and recording) in step with the batches that landed. */
  private follow(ops: readonly BatchOp[]): void {
    for (const op of ops) {
      // Item keys are `q\0<destination>\0<seq>`; the queue's other records start `qn`, `qt`, `qd`.
      if (op.key.charCodeAt(0) !== 0x71 || op.key.charCodeAt(1) !== 0) continue;
      const state = this.states.get(destinationOfKey(ITEMS, op.key));
      if (state === undefined) continue;
      const seq = seqOfKey(op.key);
      if (state.recording !== undefined) this.cacheBytes += applyToCache(state.recording, seq, op);
      if (state.cache !== undefined) {
        this.cacheBytes += applyToCache(state.cache, seq, op);
        if (state.cache.values.size > CACHE_MAX_ITEMS || this.cacheBytes > CACHE_MAX_BYTES) {
          this.dropCache(state, "cache");
        }
      }
    }
  }

  private dropCache(state: DestinationState, which: "cache" | "recording"): void {
    const cache = state[which];
    if (cache === undefined) return;
    this.cacheBytes -= cache.bytes;
    state[which] = undefined;
  }

  /** Loads every destination's counter, in-flight transaction and dead-letter count. */
  static async open(kv: KvStore, options: OutboundQueueOptions = {}): Promise<OutboundQueue> {
    const queue = new OutboundQueue(kv, options);
    for await (const [key, value] of kv.range({ gte: COUNTERS, lt: prefixEnd(COUNTERS) })) {
      const state = queue.state(key.slice(COUNTERS.length));
      state.next = Math.max(state.next, Number(value));
    }
    for await (const [key, value] of kv.range({ gte: TXNS, lt: prefixEnd(TXNS) })) {
      const state = queue.state(key.slice(TXNS.length));
      state.txn = JSON.parse(value) as PersistedTxn;
      state.next = Math.max(state.next, ...state.txn.seqs.map((s) => s + 1));
    }
    for await (const [key, value] of kv.range({ gte: DEAD_COUNTS, lt: prefixEnd(DEAD_COUNTS) })) {
      queue.state(key.slice(DEAD_COUNTS.length)).dead = Number(value);
    }
    // Dead letters keep their queue positions: no later item may get one of them.
    for (let cursor = DEAD; ; ) {
      const key = await firstKey(kv, cursor, prefixEnd(DEAD));
      if (key === undefined) break;
      const prefix = deadPrefix(destinationOfKey(DEAD, key));
      const last = (await firstKey(kv, prefix, prefixEnd(prefix), true)) ?? key;
      const state = queue.state(destinationOfKey(DEAD, key));
      state.next = Math.max(state.next, seqOfKey(last) + 1);
      cursor = prefixEnd(prefix);
    }
    // The stored counter can lag behind the items when a caller committed two
    // batches out of order, so the last item of each destination bounds it too.
    const withItems = new Set<string>();
    let cursor = ITEMS;
    for (;;) {
      const key = await firstKey(kv, cursor, prefixEnd(ITEMS));
      if (key === undefined) break;
      const destination = destinationOfKey(ITEMS, key);
      const prefix = itemPrefix(destination);
      const last = (await firstKey(kv, prefix, prefixEnd(prefix), true)) ?? key;
      const state = queue.state(destination);
      state.next = Math.max(state.next, seqOfKey(last) + 1);
      state.low = seqOfKey(key);
      withItems.add(destination);
      cursor = prefixEnd(prefix);
    }
    for (const [destination, state] of queue.states) {
      if (!withItems.has(destination)) state.low = state.next;
      else state.cache = undefined;
    }
    return queue;
  }

  /**
   * The operations that append `items` to `destination`'s queue, for the
   * caller to commit in the same batch as the change that caused them.
   * Never refused for depth: a full queue is trimmed from its oldest end by
   * `expire`, so an event is never held back because one destination is down.
   */
  enqueueOps(destination: string, items: readonly QueueItem[]): BatchOp[] {
    checkDestination(destination);
    items.forEach(checkItem);
    if (items.length === 0) return [];
    const state = this.state(destination);
    const ts = this.now();
    const ops: BatchOp[] = items.map((item) => ({
      type: "put",
      key: itemKey(destination, state.next++),
      value: JSON.stringify({ kind: item.kind, id: item.id, body: item.body, ts }),
    }));
    ops.push({ type: "put", key: counterKey(destination), value: String(state.next) });
    return ops;
  }

  async enqueue(destination: string, items: readonly QueueItem[]): Promise<void> {
    const ops = this.enqueueOps(destination, items);
    if (ops.length > 0) await this.kv.commit(ops);
  }

  /** Every destination this queue has seen, with or without a backlog. */
  destinations(): string[] {
    return [...this.states.keys()];
  }

  /**
   * Items enqueued and not yet acknowledged. An estimate from sequence
   * numbers: it counts items whose enqueue batch is still being committed.
   */
  depth(destination: string): number {
    const state = this.states.get(destination);
    return state === undefined ? 0 : Math.max(0, state.next - state.low);
  }

  /**
   * When the oldest item still queued for `destination` was enqueued (ms since the epoch; items
   * stored without a time count from when the queue opened); undefined when none is queued.
   */
  async oldestEnqueuedTs(destination: string): Promise<number | undefined> {
    const state = this.states.get(destination);
    if (state === undefined || this.depth(destination) === 0) return undefined;
    let oldest: Entry | undefined;
    if (state.cache !== undefined) {
      let first: number | undefined;
      for (const seq of state.cache.values.keys()) if (first === undefined || seq < first) first = seq;
      if (first !== undefined) oldest = parseEntry(first, state.cache.values.get(first)!);
    } else {
      const prefix = itemPrefix(destination);
      for await (const [key, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix), limit: 1 })) {
        oldest = parseEntry(seqOfKey(key), value);
      }
    }
    return oldest === undefined ? undefined : (oldest.ts ?? this.openedAt);
  }

  /** Whether `destination` holds more than `maxDepth` items: `expire` will trim it. */
  overDepth(destination: string): boolean {
    return this.depth(destination) > this.maxDepth;
  }

  /** Whether `txn`'s oldest item is older than `maxAgeMs`: `expire` will dead-letter it. */
  isExpired(txn: OutboundTransaction): boolean {
    return txn.enqueuedTs <= this.now() - this.maxAgeMs;
  }

  /** The ID of the transaction persisted for `destination` and not yet acknowledged. */
  inFlightTxnId(destination: string): string | undefined {
    return this.states.get(destination)?.txn?.txnId;
  }

  /**
   * The transaction to send next: the persisted in-flight one if any (same ID,
   * same items), else the oldest items up to the limits under a new ID, which
   * is persisted before this resolves. Undefined when nothing is queued.
   */
  async nextTransaction(
    destination: string,
    limits: TransactionLimits = { maxPdus: MAX_PDUS_PER_TXN, maxEdus: MAX_EDUS_PER_TXN },
  ): Promise<OutboundTransaction | undefined> {
    const state = this.states.get(destination);
    if (state === undefined) return undefined;
    if (state.txn !== undefined) {
      const entries = await this.inFlightEntries(destination, state.txn);
      if (entries.length > 0) {
        state.low = Math.min(state.low, entries[0]!.seq);
        return this.transaction(destination, state.txn.txnId, entries);
      }
      await this.kv.commit([{ type: "del", key: txnKey(destination) }]);
      state.txn = undefined;
    }

    const readStart = state.next;
    const entries =
      state.cache !== undefined
        ? this.cachedHead(state.cache, limits)
        : await this.storedHead(destination, state, limits);
    if (entries.length === 0) {
      state.low = readStart;
      return undefined;
    }
    state.low = entries[0]!.seq;
    const txn: PersistedTxn = { txnId: this.newTxnId(), seqs: entries.map((e) => e.seq) };
    // Neither synced nor waited for: written in order before the acknowledgement's deletes; after a
    // crash that loses it the items go again under a new ID, and receivers deduplicate by event ID.
    this.kv
      .commit([{ type: "put", key: txnKey(destination), value: JSON.stringify(txn) }], { durable: false })
      .catch(() => undefined);
    state.txn = txn;
    return this.transaction(destination, txn.txnId, entries);
  }

  /** The oldest cached items, up to the limits. */
  private cachedHead(cache: ItemCache, limits: TransactionLimits): Entry[] {
    if (!cache.ordered) {
      cache.values = new Map([...cache.values].sort((a, b) => a[0] - b[0]));
      cache.ordered = true;
    }
    return headOf(cache.values, limits);
  }

  /**
   * The oldest stored items, up to the limits. When the read saw every item
   * of the destination, the cache is rebuilt from it and the batches that
   * landed meanwhile (recorded from before the read began).
   */
  private async storedHead(
    destination: string,
    state: DestinationState,
    limits: TransactionLimits,
  ): Promise<Entry[]> {
    const limit = limits.maxPdus + limits.maxEdus;
    if (this.cached) {
      this.dropCache(state, "recording");
      state.recording = newCache(true);
    }
    const recording = state.recording;
    const prefix = itemPrefix(destination);
    const read = new Map<number, string>();
    for await (const [key, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix), limit })) {
      read.set(seqOfKey(key), value);
    }
    if (recording !== undefined && state.recording === recording) {
      this.dropCache(state, "recording");
      if (read.size < limit && state.cache === undefined) {
        const whole = newCache();
        for (const [seq, value] of read) if (!recording.deleted.has(seq)) whole.values.set(seq, value);
        for (const [seq, value] of recording.values) whole.values.set(seq, value);
        whole.values = new Map([...whole.values].sort((a, b) => a[0] - b[0]));
        for (const value of whole.values.values()) whole.bytes += value.length;
        whole.last = Math.max(-1, ...whole.values.keys());
        if (whole.values.size <= CACHE_MAX_ITEMS && this.cacheBytes + whole.bytes <= CACHE_MAX_BYTES) {
          state.cache = whole;
          this.cacheBytes += whole.bytes;
        }
      }
    }
    return headOf(read, limits);
  }

  /**
   * Deletes an acknowledged transaction's items and its in-flight marker in
   * one batch, with the caller's `bookkeeping` operations.
   */
  async complete(txn: OutboundTransaction, bookkeeping: readonly BatchOp[] = []): Promise<void> {
    const state = this.inFlightState(txn);
    const ops: BatchOp[] = [...bookkeeping];
    for (const seq of txn.seqs) ops.push({ type: "del", key: itemKey(txn.destination, seq) });
    ops.push({ type: "del", key: txnKey(txn.destination) });
    // Not synced: items resurrected by a machine crash are delivered again and deduplicated by the receiver.
    await this.kv.commit(ops, { durable: false });
    state.txn = undefined;
    state.low = Math.max(state.low, txn.seqs[txn.seqs.length - 1]! + 1);
  }

  /**
   * Moves the in-flight transaction's items to the dead letters with `reason`,
   * deleting them from the queue and the in-flight marker in the same batch.
   * The next `nextTransaction` goes on with the items after them.
   */
  async deadLetter(txn: OutboundTransaction, reason: DeadLetterReason): Promise<DeadLetterResult> {
    const state = this.inFlightState(txn);
    return this.locked(state, async () => {
      this.inFlightState(txn);
      const entries = await this.inFlightEntries(txn.destination, state.txn!);
      return this.moveToDeadLetters(txn.destination, state, entries, () => reason, true);
    });
  }

  /**
   * Dead-letters items older than `maxAgeMs` ("expired") and the oldest items
   * beyond `maxDepth` ("queue full"). The in-flight transaction goes as a whole
   * when its oldest item is due; `attempts` is how often it was sent. Call it
   * where the destination's transactions are chosen (the delivery worker),
   * never while one of them is being sent.
   */
  expire(destination: string, attempts = 0): Promise<DeadLetterResult> {
    const state = this.states.get(destination);
    const result: DeadLetterResult = { moved: 0, dropped: 0 };
    if (state === undefined) return Promise.resolve(result);
    return this.locked(state, async () => {
      const add = (r: DeadLetterResult) => {
        result.moved += r.moved;
        result.dropped += r.dropped;
      };
      const cutoff = this.now() - this.maxAgeMs;
      const time = this.now();
      const due = (entry: Entry, excess: number): DeadLetterReason["reason"] | undefined =>
        (entry.ts ?? this.openedAt) <= cutoff ? "expired" : excess > 0 ? "queue full" : undefined;

      if (state.txn !== undefined) {
        const entries = await this.inFlightEntries(destination, state.txn);
        const oldest = entries.reduce<Entry | undefined>(
          (a, e) => (a === undefined || (e.ts ?? this.openedAt) < (a.ts ?? this.openedAt) ? e : a),
          undefined,
        );
        const why = oldest === undefined ? undefined : due(oldest, this.depth(destination) - this.maxDepth);
        if (why === undefined) return result;
        const txnId = state.txn.txnId;
        add(
          await this.moveToDeadLetters(
            destination,
            state,
            entries,
            () => ({ reason: why, time, attempts, txnId }),
            true,
          ),
        );
      }

      const prefix = itemPrefix(destination);
      for (let limit = 1; ; limit = BATCH) {
        let excess = this.depth(destination) - this.maxDepth;
        const doomed: { entry: Entry; reason: DeadLetterReason["reason"] }[] = [];
        for await (const [key, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix), limit })) {
          const entry = parseEntry(seqOfKey(key), value);
          const why = due(entry, excess);
          if (why === undefined) break;
          doomed.push({ entry, reason: why });
          excess--;
        }
        if (doomed.length === 0) return result;
        // The first read only looks at the oldest item; then whole batches.
        if (limit === 1) continue;
        const reasons = new Map(doomed.map((d) => [d.entry.seq, d.reason]));
        add(
          await this.moveToDeadLetters(
            destination,
            state,
            doomed.map((d) => d.entry),
            (entry) => ({ reason: reasons.get(entry.seq)!, time, attempts: 0 }),
            false,
          ),
        );
      }
    });
  }

  /** Dead letters in queue order, of one destination or of all; at most `limit`. */
  async deadLetters(destination?: string, limit = 100): Promise<DeadLetter[]> {
    if (destination !== undefined) checkDestination(destination);
    positiveInteger("limit", limit);
    const prefix = destination === undefined ? DEAD : deadPrefix(destination);
    const letters: DeadLetter[] = [];
    for await (const [key, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix), limit })) {
      const stored = JSON.parse(value) as QueueItem & { ts?: unknown; reason: DeadLetterReason };
      const entry = entryOf(seqOfKey(key), stored);
      letters.push({
        destination: destinationOfKey(DEAD, key),
        seq: entry.seq,
        item: entry.item,
        enqueuedTs: entry.ts,
        reason: stored.reason,
      });
    }
    return letters;
  }

  deadLetterCount(destination: string): number {
    return this.states.get(destination)?.dead ?? 0;
  }

  /**
   * Puts `destination`'s dead letters back at the tail of its queue, in their
   * order, `BATCH` per write: each write deletes dead letters and enqueues
   * them together, so a crash midway loses and duplicates nothing. Returns
   * how many were put back; wake the delivery worker afterwards.
   */
  async retryDeadLetters(destination: string): Promise<number> {
    checkDestination(destination);
    const state = this.states.get(destination);
    if (state === undefined) return 0;
    return this.locked(state, async () => {
      const end = deadKey(destination, state.next);
      let cursor = deadPrefix(destination);
      let moved = 0;
      for (;;) {
        const letters: [string, string][] = [];
        for await (const entry of this.kv.range({ gte: cursor, lt: end, limit: BATCH })) letters.push(entry);
        if (letters.length === 0) return moved;
        const items = letters.map(([key, value]) => parseEntry(seqOfKey(key), value).item);
        const ops: BatchOp[] = letters.map(([key]) => ({ type: "del", key }));
        ops.push(...this.enqueueOps(destination, items));
        ops.push({ type: "put", key: deadCountKey(destination), value: String(state.dead - letters.length) });
        await this.kv.commit(ops);
        state.dead -= letters.length;
        moved += letters.length;
        cursor = letters[letters.length - 1]![0] + SEP;
      }
    });
  }

  private async inFlightEntries(destination: string, txn: PersistedTxn): Promise<Entry[]> {
    const cache = this.states.get(destination)?.cache;
    if (cache !== undefined) {
      return txn.seqs.flatMap((seq) => {
        const value = cache.values.get(seq);
        return value === undefined ? [] : [parseEntry(seq, value)];
      });
    }
    const values = await this.kv.getMany(txn.seqs.map((seq) => itemKey(destination, seq)));
    const entries: Entry[] = [];
    values.forEach((value, i) => {
      if (value !== undefined) entries.push(parseEntry(txn.seqs[i]!, value));
    });
    return entries;
  }

  private inFlightState(txn: OutboundTransaction): DestinationState {
    const state = this.states.get(txn.destination);
    if (state?.txn?.txnId !== txn.txnId) {
      throw new QueueError(`transaction ${txn.txnId} is not in flight to ${txn.destination}`);
    }
    return state;
  }

  /**
   * One batch: deletes `entries` from the queue (and the in-flight marker when
   * `inFlight`), writes them as dead letters, and deletes the oldest dead
   * letters beyond `maxDeadLetters`.
   */
  private async moveToDeadLetters(
    destination: string,
    state: DestinationState,
    entries: Entry[],
    reasonOf: (entry: Entry) => DeadLetterReason,
    inFlight: boolean,
  ): Promise<DeadLetterResult> {
    const ops: BatchOp[] = [];
    const reasons = entries.map(reasonOf);
    const over = Math.max(0, state.dead + entries.length - this.maxDeadLetters);
    const droppedOld: string[] = [];
    if (over > 0 && state.dead > 0) {
      const prefix = deadPrefix(destination);
      for await (const [key] of this.kv.range({
        gte: prefix,
        lt: prefixEnd(prefix),
        limit: Math.min(over, state.dead),
      })) {
        droppedOld.push(key);
      }
    }
    const droppedNew = over - droppedOld.length;
    for (const key of droppedOld) ops.push({ type: "del", key });
    entries.forEach((entry, i) => {
      ops.push({ type: "del", key: itemKey(destination, entry.seq) });
      if (i < droppedNew) return;
      ops.push({
        type: "put",
        key: deadKey(destination, entry.seq),
        value: JSON.stringify({
          kind: entry.item.kind,
          id: entry.item.id,
          body: entry.item.body,
          ...(entry.ts === undefined ? {} : { ts: entry.ts }),
          reason: reasons[i],
        }),
      });
    });
    if (inFlight) ops.push({ type: "del", key: txnKey(destination) });
    const dead = state.dead + entries.length - over;
    ops.push({ type: "put", key: deadCountKey(destination), value: String(dead) });
    await this.kv.commit(ops);
    if (inFlight) state.txn = undefined;
    state.dead = dead;
    const last = entries[entries.length - 1];
    if (last !== undefined) state.low = Math.max(state.low, last.seq + 1);
    const groups = new Map<string, { reason: DeadLetterReason; items: QueueItem[] }>();
    entries.forEach((entry, i) => {
      const reason = reasons[i]!;
      const group = groups.get(reason.reason) ?? { reason, items: [] };
      group.items.push(entry.item);
      groups.set(reason.reason, group);
    });
    for (const { reason, items } of groups.values()) {
      try {
        this.onDeadLetter?.(destination, items, reason);
      } catch {
        // The items are already moved; a failing hook changes nothing.
      }
    }
    return { moved: entries.length, dropped: over };
  }

  private locked<T>(state: DestinationState, task: () => Promise<T>): Promise<T> {
    const run = state.lock.then(task);
    state.lock = run.catch(() => undefined);
    return run;
  }

  private transaction(destination: string, txnId: string, entries: Entry[]): OutboundTransaction {
    return {
      destination,
      txnId,
      seqs: entries.map((e) => e.seq),
      pdus: entries.filter((e) => e.item.kind === "pdu").map((e) => e.item),
      edus: entries.filter((e) => e.item.kind === "edu").map((e) => e.item),
      enqueuedTs: Math.min(...entries.map((e) => e.ts ?? this.openedAt)),
    };
  }

  private state(destination: string): DestinationState {
    let state = this.states.get(destination);
    if (state === undefined) {
      state = {
        next: 1,
        low: 1,
        txn: undefined,
        dead: 0,
        lock: Promise.resolve(),
        // A destination first seen now has nothing stored; open() clears this for those with items.
        cache: this.cached ? newCache() : undefined,
        recording: undefined,
      };
      this.states.set(destination, state);
    }
    return state;
  }
}
