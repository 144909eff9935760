import { MimiError } from "../errors";
import { createLogger, type Logger } from "../logging";
import { prefixEnd, type BatchOp, type KvStore } from "../store/kv";
import { systemTimer, type Timer } from "./queue/backoff";

/**
 * How long an answer is kept at least: as long as our own queues retry one
 * transaction before giving up on it (`OutboundQueue` max age), so a peer
 * that retries like us always gets the first answer back.
 */
export const DEFAULT_TRANSACTION_RETENTION_MS = 7 * 24 * 60 * 60 * 1000;
export const DEFAULT_MAX_TRANSACTION_ANSWERS = 1_000_000;
export const DEFAULT_TRANSACTION_PRUNE_BATCH = 500;
export const DEFAULT_TRANSACTION_PRUNE_INTERVAL_MS = 60_000;

export interface TransactionStoreOptions {
  /** Answers are kept at least this long (ms). Default 7 days. */
  retentionMs?: number;
  /** At most this many answers are kept; the oldest go first. Default 1,000,000. */
  maxAnswers?: number;
  /** Answers removed per write while pruning. Default 500. */
  pruneBatchSize?: number;
  /** How often `start()` prunes (ms). Default 60 s. */
  pruneIntervalMs?: number;
  /** Milliseconds since the epoch. Default `Date.now`. */
  now?: () => number;
  timer?: Timer;
  log?: Logger;
}

// Key layout. Origins and endpoints never contain U+0000; a transaction ID may, so it comes last.
//   t\0<origin>\0<endpoint>\0<txnId>               -> {"answer": ..., "ts": <ms>} (schema 1 wrote no ts)
//   ti\0<ts, 12 hex>\0<origin>\0<endpoint>\0<txnId> -> ""  time index, oldest first
//   tm\0legacy                                      -> "done" once every answer without ts is indexed
const SEP = "\u0000";
const ANSWERS = `t${SEP}`;
const INDEX = `ti${SEP}`;
const LEGACY_MARKER = `tm${SEP}legacy`;
const TS_DIGITS = 12;

const answerKey = (origin: string, endpoint: string, txnId: string) =>
  `${ANSWERS}${origin}${SEP}${endpoint}${SEP}${txnId}`;
const indexKey = (ts: number, answer: string) =>
  `${INDEX}${ts.toString(16).padStart(TS_DIGITS, "0")}${SEP}${answer.slice(ANSWERS.length)}`;
const tsOfIndexKey = (key: string) => parseInt(key.slice(INDEX.length, INDEX.length + TS_DIGITS), 16);
const answerOfIndexKey = (key: string) => ANSWERS + key.slice(INDEX.length + TS_DIGITS + 1);

interface StoredAnswer {
  answer: unknown;
  ts?: number;
}

interface Running {
  promise: Promise<unknown>;
  /** The caller put `answerOps` in its own batch: `once` does not write the answer again. */
  written: boolean;
  /** Settles once the answer is stored: until then a repeat joins this run. */
  landed?: Promise<void>;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new MimiError(
      "M_INVALID_PARAM",
      `TransactionStore ${name} must be a positive integer, got ${value}`,
    );
  }
  return value;
}

const nextTick = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * LM-04 §Transaction Identifiers: a request repeated with the same transaction
 * ID (per origin and endpoint) gets the first answer and is processed once.
 * Answers are kept durably for `retentionMs` at least, and at most
 * `maxAnswers` of them; a request still being processed is joined.
 */
export class TransactionStore {
  readonly retentionMs: number;
  readonly maxAnswers: number;
  private readonly batchSize: number;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly timer: Timer;
  private readonly log: Logger;
  private readonly running = new Map<string, Running>();
  /** Entries of the time index; exact once counted. */
  private count = 0;
  private counted = false;
  /** Index keys handed out while the count scan runs: counted by `noteAdded`, skipped by the scan. */
  private addedWhileCounting: Set<string> | undefined;
  private legacyDone = false;
  private pruning: Promise<number> | undefined;
  private started = false;
  private timerHandle: unknown;

  constructor(
    private readonly kv: KvStore,
    options: TransactionStoreOptions = {},
  ) {
    this.retentionMs = positiveInteger(
      "retentionMs",
      options.retentionMs ?? DEFAULT_TRANSACTION_RETENTION_MS,
    );
    this.maxAnswers = positiveInteger("maxAnswers", options.maxAnswers ?? DEFAULT_MAX_TRANSACTION_ANSWERS);
    this.batchSize = positiveInteger(
      "pruneBatchSize",
      options.pruneBatchSize ?? DEFAULT_TRANSACTION_PRUNE_BATCH,
    );
    this.intervalMs = positiveInteger(
      "pruneIntervalMs",
      options.pruneIntervalMs ?? DEFAULT_TRANSACTION_PRUNE_INTERVAL_MS,
    );
    this.now = options.now ?? Date.now;
    this.timer = options.timer ?? systemTimer;
    this.log = options.log ?? createLogger("transactions");
  }

  /**
   * Runs `process` once per (origin, endpoint, txnId) and stores its answer.
   * A concurrent call joins the running one (and shares its failure); a failed
   * run stores nothing, so a later call runs `process` again.
   */
  once<T>(origin: string, endpoint: string, txnId: string, process: () => Promise<T>): Promise<T> {
    const key = answerKey(origin, endpoint, txnId);
    const running = this.running.get(key);
    if (running !== undefined) return running.promise as Promise<T>;
    const entry = { written: false } as Running;
    // Registered before `run` starts: any later call joins this one, until its answer is stored.
    this.running.set(key, entry);
    const promise = this.run(key, entry, process);
    entry.promise = promise;
    const clear = () => {
      if (this.running.get(key) === entry) this.running.delete(key);
    };
    promise.then(() => (entry.landed ?? Promise.resolve()).then(clear, clear), clear);
    return promise;
  }

  /**
   * The operations that store `answer`, for a caller to commit in the same
   * batch as the changes the transaction made (so a crash cannot keep the
   * changes and forget the answer). Called inside `once`'s `process`, the
   * answer is not written a second time; the caller commits these operations
   * before `process` returns.
   */
  answerOps(origin: string, endpoint: string, txnId: string, answer: unknown): BatchOp[] {
    const key = answerKey(origin, endpoint, txnId);
    const running = this.running.get(key);
    if (running !== undefined) running.written = true;
    return this.opsFor(key, answer);
  }

  /** Prunes now and then every `pruneIntervalMs`, in the background, until `stop()`. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.schedule(0);
  }

  /** Stops background pruning and waits for a batch being written. */
  async stop(): Promise<void> {
    this.started = false;
    if (this.timerHandle !== undefined) this.timer.clearTimeout(this.timerHandle);
    this.timerHandle = undefined;
    await this.pruning?.catch(() => undefined);
  }

  /**
   * Removes answers older than `retentionMs` and the oldest beyond
   * `maxAnswers`, `pruneBatchSize` per write. Answers stored before the time
   * index existed are first given the current time (they expire one retention
   * period later). Returns how many answers were removed.
   */
  prune(): Promise<number> {
    if (this.pruning !== undefined) return this.pruning;
    const clear = () => (this.pruning = undefined);
    this.pruning = this.pruneAll();
    this.pruning.then(clear, clear);
    return this.pruning;
  }

  /** Stored answers, once counted by a first `prune()`. */
  size(): number | undefined {
    return this.counted ? this.count : undefined;
  }

  private async run<T>(key: string, entry: Running, process: () => Promise<T>): Promise<T> {
    const stored = this.kv.getSync !== undefined ? this.kv.getSync(key) : await this.kv.get(key);
    if (stored !== undefined) return (JSON.parse(stored) as StoredAnswer).answer as T;
    const answer = await process();
    // Neither synced nor waited for: a repeat that comes before it lands, or after a crash that lost
    // it, is processed again, and its events are deduplicated (by LPDU hash and event ID).
    if (!entry.written) {
      entry.landed = this.kv.commit(this.opsFor(key, answer), { durable: false }).catch(() => undefined);
    }
    return answer;
  }

  private opsFor(key: string, answer: unknown): BatchOp[] {
    const ts = this.now();
    const index = indexKey(ts, key);
    this.noteAdded(index);
    return [
      { type: "put", key, value: JSON.stringify({ answer, ts }) },
      { type: "put", key: index, value: "" },
    ];
  }

  private noteAdded(index: string): void {
    if (this.addedWhileCounting !== undefined) {
      if (this.addedWhileCounting.has(index)) return;
      this.addedWhileCounting.add(index);
    } else if (!this.counted) {
      return;
    }
    this.count++;
  }

  private schedule(delayMs: number): void {
    if (!this.started) return;
    this.timerHandle = this.timer.setTimeout(() => {
      this.timerHandle = undefined;
      this.prune()
        .catch((err: unknown) => this.log.warn("pruning transaction answers failed", { error: err }))
        .finally(() => this.schedule(this.intervalMs));
    }, delayMs);
  }

  private async pruneAll(): Promise<number> {
    await this.indexLegacy();
    if (!this.counted) await this.countIndex();
    let removed = 0;
    for (;;) {
      const n = await this.pruneBatch();
      removed += n;
      if (n === 0) return removed;
      await nextTick();
    }
  }

  private async indexLegacy(): Promise<void> {
    if (this.legacyDone) return;
    if ((await this.kv.get(LEGACY_MARKER)) === "done") {
      this.legacyDone = true;
      return;
    }
    let cursor = ANSWERS;
    for (;;) {
      const entries: [string, string][] = [];
      for await (const entry of this.kv.range({
        gte: cursor,
        lt: prefixEnd(ANSWERS),
        limit: this.batchSize,
      })) {
        entries.push(entry);
      }
      const ops: BatchOp[] = [];
      for (const [key, value] of entries) {
        const stored = JSON.parse(value) as StoredAnswer;
        if (typeof stored.ts !== "number") ops.push(...this.opsFor(key, stored.answer));
      }
      const last = entries.length < this.batchSize;
      if (last) ops.push({ type: "put", key: LEGACY_MARKER, value: "done" });
      if (ops.length > 0) await this.kv.commit(ops);
      if (last) break;
      // The smallest key after the last one read.
      cursor = entries[entries.length - 1]![0] + SEP;
      await nextTick();
    }
    this.legacyDone = true;
  }

  private async countIndex(): Promise<void> {
    const added = new Set<string>();
    this.addedWhileCounting = added;
    let scanned = 0;
    try {
      for await (const [key] of this.kv.range({ gte: INDEX, lt: prefixEnd(INDEX) })) {
        if (!added.has(key)) scanned++;
      }
    } finally {
      this.addedWhileCounting = undefined;
    }
    this.count = scanned + added.size;
    this.counted = true;
  }

  private async pruneBatch(): Promise<number> {
    const cutoff = this.now() - this.retentionMs;
    const over = Math.max(0, this.count - this.maxAnswers);
    const doomed: string[] = [];
    for await (const [key] of this.kv.range({ gte: INDEX, lt: prefixEnd(INDEX), limit: this.batchSize })) {
      if (tsOfIndexKey(key) > cutoff && doomed.length >= over) break;
      doomed.push(key);
    }
    if (doomed.length === 0) return 0;
    const answers = doomed.map(answerOfIndexKey);
    const values = await this.kv.getMany(answers);
    const ops: BatchOp[] = [];
    doomed.forEach((key, i) => {
      ops.push({ type: "del", key });
      const value = values[i];
      // An index entry left by an answer written twice does not remove the newer answer.
      if (value !== undefined && (JSON.parse(value) as StoredAnswer).ts === tsOfIndexKey(key)) {
        ops.push({ type: "del", key: answers[i]! });
      }
    });
    await this.kv.commit(ops);
    this.count = Math.max(0, this.count - doomed.length);
    return doomed.length;
  }
}
