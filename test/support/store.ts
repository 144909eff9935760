/**
 * The store the tests run on. The test command runs the suite twice: on LevelDB (the default), and
 * with `MIMI_TEST_STORE=postgres` on PostgreSQL, where each folder a test names for a database
 * becomes a PostgreSQL schema of its own (named after the folder's path, so reopening the same
 * folder reopens the same data, as with LevelDB). Each such schema is marked with the folder
 * that stands for it; `sweepTestSchemas` drops those whose folder the tests have since removed.
 */
import { createHash } from "node:crypto";
import { existsSync, rmSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { Client, escapeIdentifier, escapeLiteral } from "pg";
import type { KvStore } from "../../src/store/kv";
import { LevelStore } from "../../src/store/levelStore";
import { PgStore } from "../../src/store/pgStore";
import { postgresUrl } from "./postgres";

export type TestStoreEngine = "leveldb" | "postgres";

/** A store of either engine: both have the optional parts of KvStore but `getSync` (LevelDB's alone). */
export type TestStore = KvStore & Required<Pick<KvStore, "onCommitted" | "unavailableReason">>;

export const TEST_STORE_ENGINE: TestStoreEngine = (() => {
  const engine = process.env.MIMI_TEST_STORE ?? "leveldb";
  if (engine !== "leveldb" && engine !== "postgres")
    throw new Error(`MIMI_TEST_STORE: ${JSON.stringify(engine)} is neither leveldb nor postgres`);
  return engine;
})();

/** The engine under test's name, for test titles. */
export const TEST_STORE_NAME = TEST_STORE_ENGINE === "leveldb" ? "LevelDB" : "PostgreSQL";

/** The PostgreSQL schema standing for a database folder. */
export function schemaForPath(path: string): string {
  return `t_${createHash("sha256").update(resolve(path)).digest("hex").slice(0, 24)}`;
}

/** Opens the test database of `path` on the engine under test. */
export async function openTestStore(
  path: string,
  options: { durability: "fsync" | "os" } = { durability: "os" },
): Promise<TestStore> {
  if (TEST_STORE_ENGINE === "leveldb") return LevelStore.open(path, options);
  const store = await PgStore.open({
    url: await postgresUrl(),
    schema: schemaForPath(path),
    poolSize: 4,
    durability: options.durability,
  });
  await markSchema(path);
  return store;
}

/**
 * The `database:` section of a provider's config for the test database at `path` (relative to
 * `configDir`, where the config file is), on the engine under test (or on `engine`, for the tests
 * of one engine's own behaviour).
 */
export async function testDatabaseConfig(
  configDir: string,
  path = "data/db",
  durability: "fsync" | "os" = "os",
  engine: TestStoreEngine = TEST_STORE_ENGINE,
): Promise<Record<string, unknown>> {
  if (engine === "leveldb") return { path, durability };
  return {
    engine: "postgres",
    url: await postgresUrl(),
    schema: await markSchema(resolve(configDir, path)),
    pool_size: 4,
    durability,
  };
}

/**
 * Deletes the test database of `path` as if it were lost: its folder on LevelDB, its schema (with
 * every table in it) on PostgreSQL. The store must be closed. Opening `path` again starts empty.
 */
export async function dropTestStore(path: string): Promise<void> {
  rmSync(path, { recursive: true, force: true });
  if (TEST_STORE_ENGINE === "leveldb") return;
  await admin((client) =>
    client.query(`DROP SCHEMA IF EXISTS ${escapeIdentifier(schemaForPath(path))} CASCADE`),
  );
}

/** Runs `fn` on a connection of its own to the test server. */
async function admin<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: await postgresUrl() });
  client.on("error", () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const SCHEMA_MARK = "mimi test database of ";

/**
 * Creates the schema of `path` if missing (the provider that opens it finds it empty, as a new
 * LevelDB folder) and marks it with the folder whose removal ends it: `path`, or where it does not
 * exist (nothing is written there on PostgreSQL), its nearest existing parent, the test's own
 * temporary folder. Returns the schema's name.
 */
async function markSchema(path: string): Promise<string> {
  const schema = schemaForPath(path);
  let folder = resolve(path);
  while (!existsSync(folder) && dirname(folder) !== folder) folder = dirname(folder);
  await admin(async (client) => {
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${escapeIdentifier(schema)}`);
    await client.query(
      `COMMENT ON SCHEMA ${escapeIdentifier(schema)} IS ${escapeLiteral(SCHEMA_MARK + folder)}`,
    );
  });
  return schema;
}

/**
 * Drops the schemas of test databases whose folder is gone (the test that made them removed its
 * temporary folder), so that runs do not pile schemas up on the test server; a schema whose folder
 * still exists may be in use by a test running now, and stays. Returns how many were dropped.
 */
export async function sweepTestSchemas(): Promise<number> {
  return admin(async (client) => {
    const marked = await client.query<{ schema: string; mark: string }>(
      "SELECT nspname AS schema, obj_description(oid, 'pg_namespace') AS mark FROM pg_namespace " +
        "WHERE nspname LIKE 't\\_%' AND starts_with(obj_description(oid, 'pg_namespace'), $1)",
      [SCHEMA_MARK],
    );
    let dropped = 0;
    for (const { schema, mark } of marked.rows) {
      if (existsSync(mark.slice(SCHEMA_MARK.length))) continue;
      await client.query(`DROP SCHEMA IF EXISTS ${escapeIdentifier(schema)} CASCADE`);
      dropped++;
    }
    return dropped;
  });
}
