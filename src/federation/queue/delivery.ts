import type { BatchOp } from "../../store/kv";
import { DEFAULT_BACKOFF, backoffDelay, systemTimer, type BackoffPolicy, type Timer } from "./backoff";
import {
  MAX_EDUS_PER_TXN,
  MAX_PDUS_PER_TXN,
  QueueError,
  type DeadLetterReason,
  type OutboundQueue,
  type OutboundTransaction,
  type TransactionLimits,
} from "./outboundQueue";

export const DEFAULT_DEAD_LETTER_AFTER_REFUSALS = 3;
export const DEFAULT_REFUSAL_MIN_SPAN_MS = 5 * 60 * 1000;
export const DEFAULT_MAX_RETRY_AFTER_MS = 60 * 60 * 1000;

/** The receiver's verdict on one PDU; an empty object means accepted. */
export interface PduResult {
  error?: string;
  errcode?: string;
}

export interface SendBody {
  pdus: unknown[];
  edus: unknown[];
}

/**
 * A 2xx answer to `PUT /send/:txnId`. LM-04 names the map `failed_pdus` and
 * lists only refused events; Matrix names it `pdus` and lists every event.
 * Either or both are accepted.
 */
export interface SendResponse {
  pdus?: Record<string, PduResult>;
  failed_pdus?: Record<string, PduResult>;
}

/**
 * Sends one transaction. Throws on a transport failure or a non-2xx answer;
 * a thrown error may carry `status`, `retryable` and `retryAfterMs` (as the
 * federation client's errors do). `signal` aborts when the worker stops.
 */
export type SendFn = (
  destination: string,
  txnId: string,
  body: SendBody,
  signal: AbortSignal,
) => Promise<SendResponse>;

export interface DeliveryFailureInfo {
  txnId: string | undefined;
  /** Consecutive failures for this destination, including this one; 0 when the `onResults` hook threw. */
  attempt: number;
  /** The peer refused the request itself (e.g. 400 M_BAD_JSON, 401): retrying alone will not help. */
  permanent: boolean;
  retryInMs: number;
}

export interface OutboundDeliveryOptions {
  send: SendFn;
  /**
   * The receiver's per-PDU results, called once it answered 2xx and before the
   * items are deleted. `pduIds` are the IDs sent; those missing from `results`
   * were accepted or dropped. The operations it returns are written in the
   * batch that deletes the items, so after a crash either both happened or it
   * is called again.
   */
  onResults?: (
    destination: string,
    txnId: string,
    results: Record<string, PduResult>,
    pduIds: string[],
  ) => BatchOp[] | void | Promise<BatchOp[] | void>;
  /** Every failed attempt, so the operator sees destinations that are down or refuse us. */
  onError?: (destination: string, error: Error, info: DeliveryFailureInfo) => void;
  backoff?: Partial<BackoffPolicy>;
  limits?: Partial<TransactionLimits>;
  /**
   * Consecutive permanent refusals (4xx other than 408 and 429) of one
   * transaction after which its items move to the dead letters and delivery
   * goes on with the next ones. Default 3.
   */
  deadLetterAfterRefusals?: number;
  /**
   * The refusals must also span this long (ms) since the first of them, so
   * one that heals by itself (a peer still holding our previous key for its
   * 30 s refetch interval answers 401) does not dead-letter. Default 5 minutes.
   */
  refusalMinSpanMs?: number;
  /**
   * A peer's `retry_after_ms` (or `Retry-After`) is waited at least, even
   * beyond the backoff cap, up to this (ms). Default 1 hour.
   */
  maxRetryAfterMs?: number;
  /** Values in `[0, 1)`, for jitter. */
  random?: () => number;
  timer?: Timer;
  /** Milliseconds since the epoch, for `nextRetryAt`. */
  now?: () => number;
}

export interface InFlightInfo {
  txnId: string;
  pdus: number;
  edus: number;
  /** A request is outstanding right now (rather than waiting to be retried). */
  sending: boolean;
}

/** A peer's own request ends our backoff wait for it only this long after our last failed send (ms). */
export const PEER_WAKE_MIN_WAIT_MS = 1_000;

interface DestinationWorker {
  loop: Promise<void> | undefined;
  /** Woken while the loop ran: look for new items before going idle. */
  dirty: boolean;
  txn: OutboundTransaction | undefined;
  sending: boolean;
  failures: number;
  lastError: Error | undefined;
  retryAt: number | undefined;
  /** When the last attempt failed. */
  failedAt: number | undefined;
  cancelWait: (() => void) | undefined;
  /** Sends of `txn` so far. */
  attempts: number;
  /** Consecutive permanent refusals of `txn`, and when the first of them came. */
  refusals: number;
  firstRefusalAt: number | undefined;
  /** Waiting out a backoff delay: the queue may be trimmed meanwhile. */
  waiting: boolean;
  trimming: Promise<void> | undefined;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function isPermanent(err: unknown): boolean {
  const { retryable, status, aborted } = err as { retryable?: unknown; status?: unknown; aborted?: unknown };
  if (aborted === true) return false;
  if (typeof retryable === "boolean") return !retryable;
  return typeof status === "number" && status >= 400 && status < 500 && status !== 408 && status !== 429;
}

function retryAfter(err: unknown): number {
  const ms = (err as { retryAfterMs?: unknown }).retryAfterMs;
  return typeof ms === "number" && Number.isFinite(ms) && ms > 0 ? ms : 0;
}

function refusal(err: unknown, worker: DestinationWorker, txnId: string, time: number): DeadLetterReason {
  const { status, errcode, remoteErrcode, error, message } = err as Record<string, unknown>;
  const code = typeof remoteErrcode === "string" ? remoteErrcode : errcode;
  return {
    reason: "refused",
    time,
    attempts: worker.attempts,
    txnId,
    ...(typeof status === "number" ? { status } : {}),
    ...(typeof code === "string" ? { errcode: code } : {}),
    ...(typeof error === "string" ? { error } : typeof message === "string" ? { error: message } : {}),
  };
}

function nonNegativeInteger(name: string, value: number, min = 0): number {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new QueueError(`${name} must be an integer of at least ${min}, got ${value}`);
  }
  return value;
}

/**
 * Drains an OutboundQueue: one logical worker per destination with at most one
 * transaction in flight (LM-04 §`PUT /send/:txnId`: the sender waits for 200
 * before using another txnId), retried with the same ID until acknowledged,
 * refused for good (`deadLetterAfterRefusals`), or too old for the queue; the
 * last two move its items to the queue's dead letters and delivery goes on.
 * Use one OutboundDelivery per queue.
 */
export class OutboundDelivery {
  private readonly workers = new Map<string, DestinationWorker>();
  private readonly policy: BackoffPolicy;
  private readonly limits: TransactionLimits;
  private readonly random: () => number;
  private readonly timer: Timer;
  private readonly now: () => number;
  private readonly refusalsBeforeDeadLetter: number;
  private readonly refusalMinSpanMs: number;
  private readonly maxRetryAfterMs: number;
  private running = false;
  private abort = new AbortController();

  constructor(
    readonly queue: OutboundQueue,
    private readonly options: OutboundDeliveryOptions,
  ) {
    this.policy = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.limits = {
      maxPdus: options.limits?.maxPdus ?? MAX_PDUS_PER_TXN,
      maxEdus: options.limits?.maxEdus ?? MAX_EDUS_PER_TXN,
    };
    const { maxPdus, maxEdus } = this.limits;
    if (!(maxPdus >= 1 && maxPdus <= MAX_PDUS_PER_TXN && maxEdus >= 1 && maxEdus <= MAX_EDUS_PER_TXN)) {
      throw new QueueError(
        `transaction limits must be 1..${MAX_PDUS_PER_TXN} PDUs and 1..${MAX_EDUS_PER_TXN} EDUs`,
      );
    }
    this.random = options.random ?? Math.random;
    this.timer = options.timer ?? systemTimer;
    this.now = options.now ?? Date.now;
    this.refusalsBeforeDeadLetter = nonNegativeInteger(
      "deadLetterAfterRefusals",
      options.deadLetterAfterRefusals ?? DEFAULT_DEAD_LETTER_AFTER_REFUSALS,
      1,
    );
    this.refusalMinSpanMs = nonNegativeInteger(
      "refusalMinSpanMs",
      options.refusalMinSpanMs ?? DEFAULT_REFUSAL_MIN_SPAN_MS,
    );
    this.maxRetryAfterMs = nonNegativeInteger(
      "maxRetryAfterMs",
      options.maxRetryAfterMs ?? DEFAULT_MAX_RETRY_AFTER_MS,
    );
  }

  /**
   * Dead-letters the oldest items of a queue over its depth while its worker waits to retry.
   * Items committed during a trim are looked at once it ends: a wake meanwhile finds a trim
   * running and starts none.
   */
  private trimWhileWaiting(destination: string, worker: DestinationWorker): void {
    if (!worker.waiting || worker.trimming !== undefined || !this.queue.overDepth(destination)) return;
    worker.trimming = this.queue
      .expire(destination, worker.attempts)
      .then(
        () => undefined,
        (err: unknown) =>
          this.notify(destination, asError(err), {
            txnId: undefined,
            attempt: 0,
            permanent: false,
            retryInMs: 0,
          }),
      )
      .finally(() => {
        worker.trimming = undefined;
        this.trimWhileWaiting(destination, worker);
      });
  }

  /** Starts delivering, resuming every destination with a backlog or a persisted transaction. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.abort = new AbortController();
    for (const destination of this.queue.destinations()) {
      if (this.queue.depth(destination) > 0 || this.queue.inFlightTxnId(destination) !== undefined) {
        this.wake(destination);
      }
    }
  }

  /**
   * Call after items for `destination` were committed. A destination waiting
   * to retry keeps waiting; if its queue is over its depth meanwhile, the
   * oldest items are dead-lettered now.
   */
  wake(destination: string): void {
    if (!this.running) return;
    const worker = this.worker(destination);
    if (worker.loop !== undefined) {
      worker.dirty = true;
      this.trimWhileWaiting(destination, worker);
      return;
    }
    worker.loop = this.run(destination, worker).finally(() => {
      worker.loop = undefined;
      if (worker.dirty) this.wake(destination);
    });
  }

  /** Puts `destination`'s dead letters back at the tail of its queue and delivers them. */
  async retryDeadLetters(destination: string): Promise<number> {
    const moved = await this.queue.retryDeadLetters(destination);
    if (moved > 0) this.wake(destination);
    return moved;
  }

  /** Ends a destination's backoff wait now, e.g. when the peer is known to be back. */
  retryNow(destination: string): void {
    this.workers.get(destination)?.cancelWait?.();
  }

  /**
   * The destination reached us (an authenticated request), so it is up: a backoff wait for it
   * ends now, as a homeserver resets its retry timings for a server it hears from, instead of
   * lasting up to the backoff cap after a peer's restart. Only a wait begun at least
   * `PEER_WAKE_MIN_WAIT_MS` after the last failure is cut, so a peer that calls us often while
   * our sends to it keep failing is not retried at its rate.
   */
  peerReachedUs(destination: string): void {
    const worker = this.workers.get(destination);
    if (worker?.waiting !== true || worker.failedAt === undefined) return;
    if (this.now() - worker.failedAt < PEER_WAKE_MIN_WAIT_MS) return;
    worker.cancelWait?.();
  }

  /**
   * Stops every worker: aborts in-flight sends and backoff waits and resolves
   * once they settled. A send that still succeeds is acknowledged first; any
   * other in-flight transaction stays persisted and is resent by the next start.
   */
  async stop(): Promise<void> {
    this.running = false;
    this.abort.abort();
    const loops: Promise<void>[] = [];
    for (const worker of this.workers.values()) {
      worker.cancelWait?.();
      if (worker.loop !== undefined) loops.push(worker.loop);
      if (worker.trimming !== undefined) loops.push(worker.trimming);
    }
    await Promise.all(loops);
  }

  destinations(): string[] {
    return this.queue.destinations();
  }

  depth(destination: string): number {
    return this.queue.depth(destination);
  }

  inFlight(destination: string): InFlightInfo | undefined {
    const worker = this.workers.get(destination);
    const txn = worker?.txn;
    if (txn === undefined) return undefined;
    return { txnId: txn.txnId, pdus: txn.pdus.length, edus: txn.edus.length, sending: worker!.sending };
  }

  /** The error of the latest attempt; cleared by a success. */
  lastError(destination: string): Error | undefined {
    return this.workers.get(destination)?.lastError;
  }

  /** When a destination that is down will be tried again. */
  nextRetryAt(destination: string): number | undefined {
    return this.workers.get(destination)?.retryAt;
  }

  private async run(destination: string, worker: DestinationWorker): Promise<void> {
    while (this.running) {
      worker.dirty = false;
      let txn: OutboundTransaction | undefined;
      try {
        txn = await this.queue.nextTransaction(destination, this.limits);
      } catch (err) {
        await this.failed(destination, worker, err, undefined);
        continue;
      }
      if (txn === undefined) return;
      if (worker.txn?.txnId !== txn.txnId) {
        worker.attempts = 0;
        worker.refusals = 0;
        worker.firstRefusalAt = undefined;
      }
      worker.txn = txn;
      if (!(await this.deliver(destination, worker, txn))) return;
      worker.txn = undefined;
    }
  }

  /**
   * Sends `txn` until it is acknowledged or moved to the dead letters (true),
   * or the worker stops (false).
   */
  private async deliver(
    destination: string,
    worker: DestinationWorker,
    txn: OutboundTransaction,
  ): Promise<boolean> {
    const body: SendBody = { pdus: txn.pdus.map((i) => i.body), edus: txn.edus.map((i) => i.body) };
    while (this.running) {
      await worker.trimming;
      if (this.queue.inFlightTxnId(destination) !== txn.txnId) return true;
      if (this.queue.overDepth(destination) || this.queue.isExpired(txn)) {
        try {
          await this.queue.expire(destination, worker.attempts);
        } catch (err) {
          await this.failed(destination, worker, err, txn.txnId);
          continue;
        }
        if (this.queue.inFlightTxnId(destination) !== txn.txnId) return true;
      }
      let response: SendResponse;
      worker.sending = true;
      try {
        worker.attempts++;
        response = await this.options.send(destination, txn.txnId, body, this.abort.signal);
        worker.sending = false;
      } catch (err) {
        worker.sending = false;
        if (!this.running) return false;
        if (this.refusedForGood(worker, err)) {
          if (await this.deadLetter(destination, worker, txn, err)) return true;
        } else {
          await this.failed(destination, worker, err, txn.txnId);
        }
        continue;
      }
      const bookkeeping = await this.report(destination, txn, response);
      try {
        await this.queue.complete(txn, bookkeeping);
      } catch (err) {
        if (!this.running) return false;
        await this.failed(destination, worker, err, txn.txnId);
        continue;
      }
      worker.failures = 0;
      worker.lastError = undefined;
      worker.retryAt = undefined;
      return true;
    }
    return false;
  }

  /** Counts a failed send: true once `txn` was refused often enough, and for long enough, to give up on it. */
  private refusedForGood(worker: DestinationWorker, err: unknown): boolean {
    if (!isPermanent(err)) {
      worker.refusals = 0;
      worker.firstRefusalAt = undefined;
      return false;
    }
    worker.refusals++;
    worker.firstRefusalAt ??= this.now();
    return (
      worker.refusals >= this.refusalsBeforeDeadLetter &&
      this.now() - worker.firstRefusalAt >= this.refusalMinSpanMs
    );
  }

  /** Moves `txn` to the dead letters (true); if that fails, waits as after any failure (false). */
  private async deadLetter(
    destination: string,
    worker: DestinationWorker,
    txn: OutboundTransaction,
    err: unknown,
  ): Promise<boolean> {
    worker.failures++;
    worker.lastError = asError(err);
    this.notify(destination, worker.lastError, {
      txnId: txn.txnId,
      attempt: worker.failures,
      permanent: true,
      retryInMs: 0,
    });
    try {
      await this.queue.deadLetter(txn, refusal(err, worker, txn.txnId, this.now()));
      return true;
    } catch (moveErr) {
      await this.failed(destination, worker, moveErr, txn.txnId);
      return false;
    }
  }

  private async report(
    destination: string,
    txn: OutboundTransaction,
    response: SendResponse,
  ): Promise<BatchOp[]> {
    if (this.options.onResults === undefined) return [];
    const results: Record<string, PduResult> = {};
    for (const map of [response?.pdus, response?.failed_pdus]) {
      if (typeof map === "object" && map !== null) Object.assign(results, map);
    }
    try {
      const ops = await this.options.onResults(
        destination,
        txn.txnId,
        results,
        txn.pdus.map((i) => i.id),
      );
      return ops ?? [];
    } catch (err) {
      this.notify(destination, asError(err), {
        txnId: txn.txnId,
        attempt: 0,
        permanent: false,
        retryInMs: 0,
      });
      return [];
    }
  }

  private async failed(
    destination: string,
    worker: DestinationWorker,
    err: unknown,
    txnId: string | undefined,
  ): Promise<void> {
    worker.failures++;
    worker.lastError = asError(err);
    const delay = Math.max(
      backoffDelay(worker.failures, this.policy, this.random),
      Math.min(retryAfter(err), this.maxRetryAfterMs),
    );
    worker.failedAt = this.now();
    worker.retryAt = worker.failedAt + delay;
    this.notify(destination, worker.lastError, {
      txnId,
      attempt: worker.failures,
      permanent: isPermanent(err),
      retryInMs: delay,
    });
    if (!this.running) return;
    worker.waiting = true;
    await new Promise<void>((resolve) => {
      const done = () => {
        worker.cancelWait = undefined;
        worker.waiting = false;
        resolve();
      };
      const handle = this.timer.setTimeout(done, delay);
      worker.cancelWait = () => {
        this.timer.clearTimeout(handle);
        done();
      };
    });
  }

  private notify(destination: string, error: Error, info: DeliveryFailureInfo): void {
    try {
      this.options.onError?.(destination, error, info);
    } catch {
      // A failing hook must not stop delivery.
    }
  }

  private worker(destination: string): DestinationWorker {
    let worker = this.workers.get(destination);
    if (worker === undefined) {
      worker = {
        loop: undefined,
        dirty: false,
        txn: undefined,
        sending: false,
        failures: 0,
        lastError: undefined,
        retryAt: undefined,
        failedAt: undefined,
        cancelWait: undefined,
        attempts: 0,
        refusals: 0,
        firstRefusalAt: undefined,
        waiting: false,
        trimming: undefined,
      };
      this.workers.set(destination, worker);
    }
    return worker;
  }
}
