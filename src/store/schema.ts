import type { BatchOp, KvStore } from "./kv";
import { StoreError } from "./levelStore";

const SCHEMA_KEY = "m\u0000schema";

/**
 * Numbered migrations: entry N upgrades a database from version N to N + 1.
 * Each returns the operations to apply atomically with the new version number.
 */
const MIGRATIONS: ((kv: KvStore) => Promise<BatchOp[]>)[] = [];

export const CURRENT_SCHEMA_VERSION = 1 + MIGRATIONS.length;

/** Stamps a new database, migrates an older one, and refuses one written by a newer release. */
export async function ensureSchema(kv: KvStore): Promise<number> {
  const stored = await kv.get(SCHEMA_KEY);
  if (stored === undefined) {
    await kv.commit([{ type: "put", key: SCHEMA_KEY, value: String(CURRENT_SCHEMA_VERSION) }]);
    return CURRENT_SCHEMA_VERSION;
  }
  let version = Number(stored);
  if (!Number.isSafeInteger(version) || version < 1) {
    throw new StoreError(`the database's schema version ${JSON.stringify(stored)} is not valid`);
  }
  if (version > CURRENT_SCHEMA_VERSION) {
    throw new StoreError(
      `the database has schema version ${version}, newer than this release supports (${CURRENT_SCHEMA_VERSION}); ` +
        "run a newer release or restore a backup",
    );
  }
  while (version < CURRENT_SCHEMA_VERSION) {
    const ops = await MIGRATIONS[version - 1]!(kv);
    version += 1;
    await kv.commit([...ops, { type: "put", key: SCHEMA_KEY, value: String(version) }]);
  }
  return version;
}
