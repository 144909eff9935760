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
   * stored or none. Resolves once they are durable.
   */
  commit(ops: BatchOp[]): Promise<void>;
  close(): Promise<void>;
}

/** Upper bound for a prefix scan: every key starting with `prefix` is below it. */
export function prefixEnd(prefix: string): string {
  return prefix + "\uffff";
}
