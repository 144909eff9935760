/**
 * The store the tests run on. The test command runs the suite twice: on LevelDB (the default), and
 * with `MIMI_TEST_STORE=postgres` on PostgreSQL, where each folder a test names for a database
 * becomes a PostgreSQL schema of its own (named after the folder's path, so reopening the same
 * folder reopens the same data, as with LevelDB).
 */
import { createHash } from "node:crypto";
import { resolve } from "node:path";
import type { KvStore } from "../../src/store/kv";
import { LevelStore } from "../../src/store/levelStore";
import { PgStore } from "../../src/store/pgStore";
import { postgresUrl } from "./postgres";

export type TestStoreEngine = "leveldb" | "postgres";

export const TEST_STORE_ENGINE: TestStoreEngine = (() => {
  const engine = process.env.MIMI_TEST_STORE ?? "leveldb";
  if (engine !== "leveldb" && engine !== "postgres")
    throw new Error(`MIMI_TEST_STORE: ${JSON.stringify(engine)} is neither leveldb nor postgres`);
  return engine;
})();

/** The PostgreSQL schema standing for a database folder. */
export function schemaForPath(path: string): string {
  return `t_${createHash("sha256").update(resolve(path)).digest("hex").slice(0, 24)}`;
}

/** Opens the test database of `path` on the engine under test. */
export async function openTestStore(
  path: string,
  options: { durability: "fsync" | "os" } = { durability: "os" },
): Promise<KvStore> {
  if (TEST_STORE_ENGINE === "leveldb") return LevelStore.open(path, options);
  return PgStore.open({
    url: await postgresUrl(),
    schema: schemaForPath(path),
    poolSize: 4,
    durability: options.durability,
  });
}

/**
 * The `database:` section of a provider's config for the test database at `path` (relative to
 * `configDir`, where the config file is), on the engine under test.
 */
export async function testDatabaseConfig(
  configDir: string,
  path = "data/db",
  durability: "fsync" | "os" = "os",
): Promise<Record<string, unknown>> {
  if (TEST_STORE_ENGINE === "leveldb") return { path, durability };
  return {
    engine: "postgres",
    url: await postgresUrl(),
    schema: schemaForPath(resolve(configDir, path)),
    pool_size: 4,
    durability,
  };
}
