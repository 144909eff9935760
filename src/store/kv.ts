/**
 * The storage boundary: an ordered key-value store with atomic batches.
 * LevelDB implements it; a shared database can replace it when one process
 * is not enough. Keys and values are strings.
 */
export type BatchOp = { type: "put"; key: string; value: string } | { type: "del"; key: string };

export interface KvStore {
  get(key: string): Promise<string | undefined>;
  getMany(keys: string[]): Promise<(string | undefined)[]>;
  /** A synchronous read, where the backend has one (an embedded database); callers fall back to `get`. */
  getSync?(key: string): string | undefined;
  /** Entries with `gte <= key < lt`, in key order. */
  range(options: {
    gte: string;
    lt: string;
    limit?: number;
    reverse?: boolean;
  }): AsyncIterable<[string, string]>;
  /**
   * Applies the operations atomically: after a crash either all of them are
   * stored or none. Resolves once they are durable, unless `options.durable`
   * is false: for records whose loss in a machine crash is harmless (a
   * delivery's bookkeeping, which is then redone), written in order with the
   * others but not waited for on disk.
   */
  commit(ops: BatchOp[], options?: { durable?: boolean }): Promise<void>;
  /**
   * Where the backend offers it: `listener` is called with the operations of
   * every batch that landed, in commit order, before that batch's commits
   * resolve, so a cache of some keys can follow the store. Returns the
   * unsubscribe function.
   */
  onCommitted?(listener: (ops: readonly BatchOp[]) => void): () => void;
  /** Where the backend tracks it: why it accepts no more writes (closed, or a write failed); else undefined. */
  unavailableReason?(): string | undefined;
  close(): Promise<void>;
}

/**
 * Upper bound for a prefix scan: every key starting with `prefix` is below it,
 * in UTF-8 byte order (LevelDB's) as in UTF-16 order. Our prefixes end with
 * the separator U+0000, which is then raised to U+0001; appending U+FFFF
 * would not do, as UTF-8 puts characters beyond it (emoji) above it.
 */
export function prefixEnd(prefix: string): string {
  if (prefix.endsWith("\u0000")) return prefix.slice(0, -1) + "\u0001";
  return prefix + "\u{10FFFF}";
}

/** Tells each `onCommitted` listener of a landed batch; one that throws is ignored (the batch has landed). */
export function notifyCommitted(
  listeners: Iterable<(ops: readonly BatchOp[]) => void>,
  ops: readonly BatchOp[],
): void {
  for (const listener of listeners) {
    try {
      listener(ops);
    } catch {
      // A cache that failed to follow is the listener's own problem.
    }
  }
}
