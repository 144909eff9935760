import { createHash } from "node:crypto";
import type { BatchOp, KvStore } from "./kv";
import { StoreError } from "./levelStore";
import { RoomStore } from "./roomStore";

/** Every key of ours sorts below this (they start with ASCII prefixes). */
const ALL = { gte: "", lt: "\u{10FFFF}" };

/** What a copy found on both sides: the same on each, or the copy is refused as failed. */
export interface StoreSummary {
  keys: number;
  /** SHA-256 over every key and value in key order (hex). */
  digest: string;
  /** Each room's head: `<seq> <event ID>`, by room ID. */
  heads: Record<string, string>;
}

export interface CopyOptions {
  /** Operations per committed batch (default 1000). */
  batchSize?: number;
  /** Told of the keys copied so far, after each batch. */
  onProgress?: (copied: number) => void;
}

/** Counts, digest and room heads of a store, read in key order. */
export async function summarize(kv: KvStore): Promise<StoreSummary> {
  const hash = createHash("sha256");
  let keys = 0;
  for await (const [key, value] of kv.range(ALL)) {
    keys += 1;
    // Lengths first, so no two different sequences of entries hash alike.
    hash.update(`${Buffer.byteLength(key)}:${key}${Buffer.byteLength(value)}:${value}`);
  }
  const heads: Record<string, string> = {};
  for (const record of await new RoomStore(kv).loadRoomRecords()) {
    heads[record.roomId] = `${record.headSeq} ${record.headEventId}`;
  }
  return { keys, digest: hash.digest("hex"), heads };
}

/**
 * Copies every entry of `from` into `to`, which must be empty, in batches, then checks that both
 * hold the same keys, values and room heads. Neither store may be in use by a provider meanwhile
 * (the caller opens both, which takes each store's lock).
 */
export async function copyStore(
  from: KvStore,
  to: KvStore,
  options: CopyOptions = {},
): Promise<StoreSummary> {
  const batchSize = options.batchSize ?? 1000;
  for await (const [key] of to.range({ ...ALL, limit: 1 })) {
    throw new StoreError(
      `the target database is not empty (it holds ${JSON.stringify(key)} among others): copy only into a new, empty one`,
    );
  }
  let batch: BatchOp[] = [];
  let copied = 0;
  const flush = async () => {
    if (batch.length === 0) return;
    await to.commit(batch);
    copied += batch.length;
    batch = [];
    options.onProgress?.(copied);
  };
  for await (const [key, value] of from.range(ALL)) {
    batch.push({ type: "put", key, value });
    if (batch.length >= batchSize) await flush();
  }
  await flush();
  const [source, target] = await Promise.all([summarize(from), summarize(to)]);
  if (source.keys !== target.keys || source.digest !== target.digest) {
    throw new StoreError(
      `the copy differs from its source: ${source.keys} keys (digest ${source.digest}) against ${target.keys} (digest ${target.digest})`,
    );
  }
  const differing = Object.keys(source.heads).filter((room) => source.heads[room] !== target.heads[room]);
  if (differing.length > 0 || Object.keys(target.heads).length !== Object.keys(source.heads).length) {
    throw new StoreError(`the copy's room heads differ from the source's: ${differing.join(", ")}`);
  }
  return source;
}
