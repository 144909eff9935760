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
}

/** LM-04 §`PUT /_matrix/federation/v2/send/:txnId`: at most 50 PDUs and 100 EDUs per transaction. */
export const MAX_PDUS_PER_TXN = 50;
export const MAX_EDUS_PER_TXN = 100;

export interface TransactionLimits {
  maxPdus: number;
  maxEdus: number;
}

export interface OutboundQueueOptions {
  /** Transaction IDs must never repeat for one receiver (LM-04 §Transaction Identifiers). */
  newTxnId?: () => string;
}

export class QueueError extends MimiError {
  constructor(message: string) {
    super("M_INVALID_PARAM", message);
  }
}

// Key layout (schema version 1). Destinations are server names: never U+0000 or U+FFFF.
//   q\0<destination>\0<16 hex seq> -> item JSON
//   qn\0<destination>              -> next sequence number (written by enqueues only)
//   qt\0<destination>              -> in-flight transaction {txnId, seqs} (written by the worker only)
// The counter and the in-flight marker are separate keys because enqueues and
// acknowledgements commit concurrently: one shared record would let a stale copy
// from either side overwrite the other's change.
const SEP = "\u0000";
const ITEMS = `q${SEP}`;
const COUNTERS = `qn${SEP}`;
const TXNS = `qt${SEP}`;
const SEQ_DIGITS = 16;

const itemPrefix = (destination: string) => `${ITEMS}${destination}${SEP}`;
const itemKey = (destination: string, seq: number) =>
  itemPrefix(destination) + seq.toString(16).padStart(SEQ_DIGITS, "0");
const counterKey = (destination: string) => `${COUNTERS}${destination}`;
const txnKey = (destination: string) => `${TXNS}${destination}`;
const seqOfKey = (key: string) => parseInt(key.slice(key.length - SEQ_DIGITS), 16);

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

function parseItem(value: string): QueueItem {
  const parsed = JSON.parse(value) as QueueItem;
  checkItem(parsed);
  return parsed;
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
 */
export class OutboundQueue {
  private readonly states = new Map<string, DestinationState>();
  private readonly newTxnId: () => string;

  private constructor(
    readonly kv: KvStore,
    options: OutboundQueueOptions,
  ) {
    this.newTxnId = options.newTxnId ?? defaultTxnId;
  }

  /** Loads every destination's counter and in-flight transaction. */
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
    // The stored counter can lag behind the items when a caller committed two
    // batches out of order, so the last item of each destination bounds it too.
    const withItems = new Set<string>();
    let cursor = ITEMS;
    for (;;) {
      const key = await firstKey(kv, cursor, prefixEnd(ITEMS));
      if (key === undefined) break;
      const destination = key.slice(ITEMS.length, key.length - SEQ_DIGITS - 1);
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
    }
    return queue;
  }

  /**
   * The operations that append `items` to `destination`'s queue, for the
   * caller to commit in the same batch as the change that caused them.
   */
  enqueueOps(destination: string, items: readonly QueueItem[]): BatchOp[] {
    checkDestination(destination);
    items.forEach(checkItem);
    if (items.length === 0) return [];
    const state = this.state(destination);
    const ops: BatchOp[] = items.map((item) => ({
      type: "put",
      key: itemKey(destination, state.next++),
      value: JSON.stringify({ kind: item.kind, id: item.id, body: item.body }),
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
      const { txnId, seqs } = state.txn;
      const values = await this.kv.getMany(seqs.map((seq) => itemKey(destination, seq)));
      const entries: [number, QueueItem][] = [];
      values.forEach((value, i) => {
        if (value !== undefined) entries.push([seqs[i]!, parseItem(value)]);
      });
      if (entries.length > 0) {
        state.low = Math.min(state.low, entries[0]![0]);
        return this.transaction(destination, txnId, entries);
      }
      await this.kv.commit([{ type: "del", key: txnKey(destination) }]);
      state.txn = undefined;
    }

    const readStart = state.next;
    const prefix = itemPrefix(destination);
    const entries: [number, QueueItem][] = [];
    let pdus = 0;
    let edus = 0;
    for await (const [key, value] of this.kv.range({
      gte: prefix,
      lt: prefixEnd(prefix),
      limit: limits.maxPdus + limits.maxEdus,
    })) {
      const item = parseItem(value);
      if (item.kind === "pdu" ? pdus === limits.maxPdus : edus === limits.maxEdus) break;
      if (item.kind === "pdu") pdus++;
      else edus++;
      entries.push([seqOfKey(key), item]);
    }
    if (entries.length === 0) {
      state.low = readStart;
      return undefined;
    }
    state.low = entries[0]![0];
    const txn: PersistedTxn = { txnId: this.newTxnId(), seqs: entries.map(([seq]) => seq) };
    await this.kv.commit([{ type: "put", key: txnKey(destination), value: JSON.stringify(txn) }]);
    state.txn = txn;
    return this.transaction(destination, txn.txnId, entries);
  }

  /** Deletes an acknowledged transaction's items and its in-flight marker in one batch. */
  async complete(txn: OutboundTransaction): Promise<void> {
    const state = this.states.get(txn.destination);
    if (state?.txn?.txnId !== txn.txnId) {
      throw new QueueError(`transaction ${txn.txnId} is not in flight to ${txn.destination}`);
    }
    const ops: BatchOp[] = txn.seqs.map((seq) => ({ type: "del", key: itemKey(txn.destination, seq) }));
    ops.push({ type: "del", key: txnKey(txn.destination) });
    await this.kv.commit(ops);
    state.txn = undefined;
    state.low = Math.max(state.low, txn.seqs[txn.seqs.length - 1]! + 1);
  }

  private transaction(
    destination: string,
    txnId: string,
    entries: [number, QueueItem][],
  ): OutboundTransaction {
    return {
      destination,
      txnId,
      seqs: entries.map(([seq]) => seq),
      pdus: entries.filter(([, item]) => item.kind === "pdu").map(([, item]) => item),
      edus: entries.filter(([, item]) => item.kind === "edu").map(([, item]) => item),
    };
  }

  private state(destination: string): DestinationState {
    let state = this.states.get(destination);
    if (state === undefined) {
      state = { next: 1, low: 1, txn: undefined };
      this.states.set(destination, state);
    }
    return state;
  }
}
