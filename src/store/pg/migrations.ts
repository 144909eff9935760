/**
 * The PostgreSQL store's numbered migrations, applied in order by PgStore.open. Each is plain SQL
 * run with `search_path` set to the store's schema, so it names its tables unqualified; it runs in
 * the same transaction as the others applied with it and as the row recording it in
 * `schema_migrations`. Never edit one that has been released: add the next.
 *
 * They live here as strings rather than as .sql files because `tsc` copies no .sql files to dist/:
 * this way ts-node, tsx, Jest and the compiled build all load the same migrations with no copy step.
 */
export interface PgMigration {
  version: number;
  name: string;
  sql: string;
}

export const PG_MIGRATIONS: readonly PgMigration[] = [
  {
    version: 1,
    name: "kv",
    sql: `
      -- bytea compares bytewise: the same order as LevelDB's over UTF-8 keys.
      CREATE TABLE kv (
        key bytea PRIMARY KEY,
        value bytea NOT NULL
      );
      CREATE TABLE schema_migrations (
        version int PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
  {
    version: 2,
    name: "leases",
    sql: `
      -- Who may write: a row per leased resource (today one, 'provider': the active process of a
      -- cluster, docs/architecture.md "Several processes"). token grows by one at each takeover;
      -- every write transaction of the holder checks owner, token and expiry in the same
      -- transaction (SELECT ... FOR SHARE), so a process whose lease passed on commits nothing.
      CREATE TABLE leases (
        resource text PRIMARY KEY,
        owner text NOT NULL,
        token bigint NOT NULL,
        expires_at timestamptz NOT NULL,
        owner_info jsonb NOT NULL
      );
    `,
  },
];

/** The newest migration this release knows. */
export const PG_SCHEMA_VERSION = PG_MIGRATIONS.length;

for (const [i, migration] of PG_MIGRATIONS.entries()) {
  if (migration.version !== i + 1) throw new Error(`PG_MIGRATIONS[${i}] has version ${migration.version}`);
}
