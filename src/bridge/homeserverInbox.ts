import type { BatchOp, KvStore } from "../store/kv";
import { prefixEnd } from "../store/kv";

/**
 * The homeserver's transactions (application service API, `PUT /transactions/{txnId}`), kept
 * durably before they are acknowledged: a transaction's events are written in one batch with
 * its ID, so a redelivered transaction (the homeserver retries until it gets a 200) adds nothing,
 * across restarts too. Consumers take the events in arrival order (the homeserver's order within
 * each room) and remove them in the batch that records what they made of them: exactly once.
 *
 * | Key                            | Value                                          |
 * | ------------------------------ | ---------------------------------------------- |
 * | `bt␀<txnId>`                   | arrival time of the transaction (ms)           |
 * | `bti␀<ts, 12 hex>␀<txnId>`     | empty: the transactions' time index, for pruning |
 * | `bq␀<seq, 16 hex>`             | one event of a transaction, JSON               |
 */
const SEP = "\u0000";
const txnKey = (txnId: string) => `bt${SEP}${txnId}`;
const txnIndexPrefix = `bti${SEP}`;
const txnIndexKey = (ts: number, txnId: string) =>
  `${txnIndexPrefix}${ts.toString(16).padStart(12, "0")}${SEP}${txnId}`;
const eventPrefix = `bq${SEP}`;
const eventKey = (seq: number) => `${eventPrefix}${seq.toString(16).padStart(16, "0")}`;

export interface InboxEntry {
  seq: number;
  event: Record<string, unknown>;
}

/** Transaction IDs are remembered this long (the homeserver retries a transaction for far less). */
export const TRANSACTION_RETENTION_MS = 7 * 24 * 60 * 60 * 1000;

export class HomeserverInbox {
  private nextSeq = 0;
  private serial: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<() => void>();

  private constructor(
    private readonly kv: KvStore,
    private readonly now: () => number,
  ) {}

  static async open(kv: KvStore, now: () => number = Date.now): Promise<HomeserverInbox> {
    const inbox = new HomeserverInbox(kv, now);
    for await (const [key] of kv.range({
      gte: eventPrefix,
      lt: prefixEnd(eventPrefix),
      reverse: true,
      limit: 1,
    })) {
      inbox.nextSeq = parseInt(key.slice(eventPrefix.length), 16) + 1;
    }
    return inbox;
  }

  /**
   * Stores a transaction's events unless its ID was seen; resolves once durable. Returns whether
   * it was new. Transactions are stored one at a time, in the order they arrive.
   */
  accept(txnId: string, events: readonly Record<string, unknown>[]): Promise<boolean> {
    const run = this.serial.then(async () => {
      if ((await this.kv.get(txnKey(txnId))) !== undefined) return false;
      const ts = this.now();
      const ops: BatchOp[] = [
        { type: "put", key: txnKey(txnId), value: String(ts) },
        { type: "put", key: txnIndexKey(ts, txnId), value: "" },
      ];
      const first = this.nextSeq;
      events.forEach((event, i) =>
        ops.push({ type: "put", key: eventKey(first + i), value: JSON.stringify(event) }),
      );
      await this.kv.commit(ops);
      this.nextSeq = first + events.length;
      if (events.length > 0) this.listeners.forEach((listener) => listener());
      return true;
    });
    this.serial = run.catch(() => undefined);
    return run;
  }

  /** Calls `listener` after each transaction that stored events; returns the unsubscribe function. */
  onEvents(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The oldest events not yet completed, in arrival order; with `after`, those after that position. */
  async pending(limit = 100, after?: number): Promise<InboxEntry[]> {
    const entries: InboxEntry[] = [];
    const gte = after === undefined ? eventPrefix : eventKey(after + 1);
    for await (const [key, value] of this.kv.range({ gte, lt: prefixEnd(eventPrefix), limit })) {
      entries.push({
        seq: parseInt(key.slice(eventPrefix.length), 16),
        event: JSON.parse(value) as Record<string, unknown>,
      });
    }
    return entries;
  }

  /** The operations that remove `entries` from the inbox, for the consumer's own batch. */
  completeOps(entries: readonly InboxEntry[]): BatchOp[] {
    return entries.map((entry) => ({ type: "del", key: eventKey(entry.seq) }));
  }

  /** Forgets transaction IDs older than the retention; returns how many. */
  async prune(): Promise<number> {
    const cutoff = this.now() - TRANSACTION_RETENTION_MS;
    const ops: BatchOp[] = [];
    for await (const [key] of this.kv.range({ gte: txnIndexPrefix, lt: txnIndexKey(cutoff, "") })) {
      const txnId = key.slice(txnIndexPrefix.length + 13);
      ops.push({ type: "del", key }, { type: "del", key: txnKey(txnId) });
    }
    if (ops.length > 0) await this.kv.commit(ops);
    return ops.length / 2;
  }
}
