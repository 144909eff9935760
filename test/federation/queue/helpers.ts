import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { QueueItem, SendBody, SendResponse, Timer } from "../../../src/federation/queue";
import type { BatchOp, KvStore } from "../../../src/store/kv";
import { openTestStore, type TestStore } from "../../support/store";

/** A store (the engine under test) named by a fresh temp directory; `reopen` closes it and opens the same data again. */
export class TempStore {
  private constructor(
    readonly dir: string,
    public store: TestStore,
  ) {}

  static async create(): Promise<TempStore> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mimi-queue-"));
    return new TempStore(dir, await openTestStore(dir, { durability: "os" }));
  }

  async reopen(): Promise<TestStore> {
    await this.store.close();
    this.store = await openTestStore(this.dir, { durability: "os" });
    return this.store;
  }

  async dispose(): Promise<void> {
    await this.store.close().catch(() => undefined);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  async keys(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const [key] of this.store.range({ gte: prefix, lt: prefix + "\uffff" })) keys.push(key);
    return keys;
  }
}

/** Timers that fire only when the test says so; records every requested delay. */
export class ManualTimer implements Timer {
  readonly delays: number[] = [];
  private readonly pending = new Map<number, { callback: () => void; ms: number }>();
  private lastId = 0;
  private waiters: (() => void)[] = [];

  setTimeout(callback: () => void, ms: number): unknown {
    const id = ++this.lastId;
    this.pending.set(id, { callback, ms });
    this.delays.push(ms);
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** Resolves once at least `count` timers were requested in total. */
  async requested(count: number): Promise<void> {
    while (this.delays.length < count) await new Promise<void>((r) => this.waiters.push(r));
  }

  /** Fires every pending timer. */
  fireAll(): number {
    const due = [...this.pending.values()];
    this.pending.clear();
    for (const t of due) t.callback();
    return due.length;
  }
}

export interface SendCall {
  destination: string;
  txnId: string;
  pdus: unknown[];
  edus: unknown[];
}

type Behaviour = (call: SendCall, signal: AbortSignal) => SendResponse | Promise<SendResponse>;

/**
 * A receiver double standing in for the HTTP layer: records each call, tracks
 * concurrency per destination, and answers a repeated txn ID with its stored
 * answer (LM-04 §Transaction Identifiers).
 */
export class RecordingSender {
  readonly calls: SendCall[] = [];
  readonly maxConcurrent = new Map<string, number>();
  private readonly concurrent = new Map<string, number>();
  private readonly answers = new Map<string, SendResponse>();
  behaviour: Behaviour = () => ({ pdus: {} });

  readonly send = async (
    destination: string,
    txnId: string,
    body: SendBody,
    signal: AbortSignal,
  ): Promise<SendResponse> => {
    const call: SendCall = { destination, txnId, pdus: body.pdus, edus: body.edus };
    this.calls.push(call);
    const now = (this.concurrent.get(destination) ?? 0) + 1;
    this.concurrent.set(destination, now);
    this.maxConcurrent.set(destination, Math.max(now, this.maxConcurrent.get(destination) ?? 0));
    try {
      // Yield to the event loop so an overlapping second send would be observed.
      await new Promise((r) => setImmediate(r));
      const key = `${destination} ${txnId}`;
      const stored = this.answers.get(key);
      if (stored !== undefined) return stored;
      const answer = await this.behaviour(call, signal);
      this.answers.set(key, answer);
      return answer;
    } finally {
      this.concurrent.set(destination, this.concurrent.get(destination)! - 1);
    }
  };

  callsTo(destination: string): SendCall[] {
    return this.calls.filter((c) => c.destination === destination);
  }
}

/** An error as the federation client throws it for an HTTP answer. */
export function httpError(status: number, errcode: string, extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(`answered ${status} ${errcode}`), { status, errcode, ...extra });
}

export function pdu(n: number): QueueItem {
  return { kind: "pdu", id: `$e${n}`, body: { event_id: `$e${n}`, n } };
}

export function edu(n: number): QueueItem {
  return { kind: "edu", id: `edu${n}`, body: { edu_type: "m.typing", n } };
}

/** The `n` field of each body, in the order given. */
export function numbers(bodies: unknown[]): number[] {
  return bodies.map((b) => (b as { n: number }).n);
}

/** Polls `condition` on the real event loop until true (fails after `ms`). */
export async function eventually(condition: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Passes everything to a real store; `holdNextRange` lets a test act between a
 * range read's snapshot and the moment its reader sees the result, and
 * `ranges` counts the range reads. With `followCommits` it also reports the
 * inner store's landed batches (so a queue on it keeps its item cache).
 */
export class HoldingStore implements KvStore {
  ranges = 0;
  private hold: { reached: () => void; gate: Promise<void> } | undefined;
  readonly onCommitted?: (listener: (ops: readonly BatchOp[]) => void) => () => void;

  constructor(
    readonly inner: KvStore,
    options: { followCommits?: boolean } = {},
  ) {
    const follow = inner.onCommitted?.bind(inner);
    if (options.followCommits === true && follow !== undefined) this.onCommitted = follow;
  }

  holdNextRange(): { reached: Promise<void>; release: () => void } {
    let reached!: () => void;
    let release!: () => void;
    const reachedPromise = new Promise<void>((r) => (reached = r));
    const gate = new Promise<void>((r) => (release = r));
    this.hold = { reached, gate };
    return { reached: reachedPromise, release };
  }

  get(key: string): Promise<string | undefined> {
    return this.inner.get(key);
  }

  getMany(keys: string[]): Promise<(string | undefined)[]> {
    return this.inner.getMany(keys);
  }

  async *range(options: Parameters<KvStore["range"]>[0]): AsyncIterable<[string, string]> {
    this.ranges++;
    const hold = this.hold;
    this.hold = undefined;
    const entries: [string, string][] = [];
    for await (const entry of this.inner.range(options)) entries.push(entry);
    if (hold !== undefined) {
      hold.reached();
      await hold.gate;
    }
    yield* entries;
  }

  commit(ops: BatchOp[], options?: { durable?: boolean }): Promise<void> {
    return this.inner.commit(ops, options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Passes everything to a real store until `crashAfter` more commits succeeded; from then on commits fail and change nothing. */
export class CrashingStore implements KvStore {
  private remaining = Infinity;

  constructor(readonly inner: KvStore) {}

  crashAfter(commits: number): void {
    this.remaining = commits;
  }

  get(key: string): Promise<string | undefined> {
    return this.inner.get(key);
  }

  getMany(keys: string[]): Promise<(string | undefined)[]> {
    return this.inner.getMany(keys);
  }

  range(options: Parameters<KvStore["range"]>[0]): AsyncIterable<[string, string]> {
    return this.inner.range(options);
  }

  commit(ops: BatchOp[]): Promise<void> {
    if (this.remaining <= 0) return Promise.reject(new Error("crashed"));
    this.remaining--;
    return this.inner.commit(ops);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A clock the test moves by hand. */
export class Clock {
  constructor(public t = 1_700_000_000_000) {}
  readonly now = (): number => this.t;
}
