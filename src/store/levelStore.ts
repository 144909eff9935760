import { Level } from "level";
import { MimiError } from "../errors";
import { notifyCommitted, type BatchOp, type KvStore } from "./kv";

export interface LevelStoreOptions {
  /**
   * `fsync`: each flush is synced to disk before commits resolve (survives
   * power loss). `os`: written to the OS before resolving (survives a killed
   * process, not a machine crash).
   */
  durability: "fsync" | "os";
}

interface PendingCommit {
  ops: BatchOp[];
  durable: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class StoreError extends MimiError {
  constructor(message: string) {
    super("M_UNKNOWN", message);
  }
}

/**
 * LevelDB with group commit: commits that arrive while a write is in flight
 * are merged into the next single atomic batch, in arrival order. One sync per
 * flush instead of one per event is what makes durable appends fast.
 */
export class LevelStore implements KvStore {
  private pending: PendingCommit[] = [];
  private flushing = false;
  private closed = false;
  /** Set after a failed write: the store refuses every later commit (fail-stop), so no later event lands after a lost one. */
  private failure: StoreError | undefined;
  private readonly listeners = new Set<(ops: readonly BatchOp[]) => void>();

  private constructor(
    private readonly db: Level<string, string>,
    private readonly options: LevelStoreOptions,
  ) {}

  static async open(path: string, options: LevelStoreOptions = { durability: "fsync" }): Promise<LevelStore> {
    const db = new Level<string, string>(path, { keyEncoding: "utf8", valueEncoding: "utf8" });
    try {
      await db.open();
    } catch (err) {
      const cause = (err as { cause?: Error }).cause;
      throw new StoreError(
        `cannot open the database at ${path}: ${cause?.message ?? (err as Error).message}` +
          " (is another process using it?)",
      );
    }
    return new LevelStore(db, options);
  }

  async get(key: string): Promise<string | undefined> {
    const value = await this.db.get(key);
    return value ?? undefined;
  }

  getSync(key: string): string | undefined {
    return this.db.getSync(key) ?? undefined;
  }

  async getMany(keys: string[]): Promise<(string | undefined)[]> {
    if (keys.length === 0) return [];
    const values = await this.db.getMany(keys);
    return values.map((v) => v ?? undefined);
  }

  async *range(options: {
    gte: string;
    lt: string;
    limit?: number;
    reverse?: boolean;
  }): AsyncIterable<[string, string]> {
    for await (const entry of this.db.iterator({
      gte: options.gte,
      lt: options.lt,
      limit: options.limit ?? -1,
      reverse: options.reverse ?? false,
    })) {
      yield entry;
    }
  }

  commit(ops: BatchOp[], options: { durable?: boolean } = {}): Promise<void> {
    if (this.closed) return Promise.reject(new StoreError("the store is closed"));
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ ops, durable: options.durable ?? true, resolve, reject });
      if (!this.flushing) void this.flush();
    });
  }

  onCommitted(listener: (ops: readonly BatchOp[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Our operations are already plain `{type, key, value}` strings, which is
   * what classic-level's own `_batch` (the abstract-level implementation
   * method) takes; calling it skips the per-operation copying and encoding
   * lookups of the public `batch`, a large share of each write's CPU.
   */
  private write(ops: BatchOp[], sync: boolean): Promise<void> {
    const direct = (this.db as unknown as { _batch?: (ops: BatchOp[], options: object) => Promise<void> })
      ._batch;
    if (this.db.status !== "open" || typeof direct !== "function") return this.db.batch(ops, { sync });
    return direct.call(this.db, ops, { sync });
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    while (this.pending.length > 0) {
      const group = this.pending;
      this.pending = [];
      const ops = group.length === 1 ? group[0]!.ops : lastWriteWins(group.flatMap((c) => c.ops));
      try {
        // One sync covers the whole group; a group of only non-durable commits needs none.
        const sync = this.options.durability === "fsync" && group.some((c) => c.durable);
        await this.write(ops, sync);
        notifyCommitted(this.listeners, ops);
        for (const c of group) c.resolve();
      } catch (err) {
        this.failure = new StoreError(
          `database write failed, the store stopped accepting writes: ${(err as Error).message}`,
        );
        for (const c of [...group, ...this.pending]) c.reject(this.failure);
        this.pending = [];
      }
    }
    this.flushing = false;
  }

  unavailableReason(): string | undefined {
    if (this.closed) return "the store is closed";
    return this.failure?.message;
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.flushing) await new Promise((r) => setTimeout(r, 1));
    await this.db.close();
  }
}

/**
 * Within one batch only the last operation on a key matters (e.g. a room's
 * head record rewritten by every event of the group): drop the earlier ones.
 */
export function lastWriteWins(ops: BatchOp[]): BatchOp[] {
  const last = new Map<string, number>();
  for (let i = 0; i < ops.length; i++) last.set(ops[i]!.key, i);
  if (last.size === ops.length) return ops;
  return ops.filter((op, i) => last.get(op.key) === i);
}
