import { Client, escapeIdentifier, Pool, type PoolClient, type QueryConfig, type QueryResultRow } from "pg";
import { notifyCommitted, type BatchOp, type KvStore } from "./kv";
import { lastWriteWins, StoreError } from "./levelStore";
import type { LeaseFence } from "./pg/lease";
import { PG_MIGRATIONS, type PgMigration } from "./pg/migrations";

export interface PgStoreOptions {
  /** A libpq-style URL, `postgres://user[:password]@host[:port]/database[?options]`. */
  url: string;
  /** Most connections the store holds open at once (default 10). */
  poolSize?: number;
  /** The PostgreSQL schema holding the store's tables (default `public`), created if missing. */
  schema?: string;
  /**
   * `fsync` (the default): a commit resolves once PostgreSQL has flushed it to its WAL on disk.
   * `os`: commits use `synchronous_commit = off`: they resolve once the server has them (a killed
   * provider loses nothing; a crash of the database machine may lose the last fraction of a
   * second, never part of a batch).
   */
  durability?: "fsync" | "os";
  /**
   * For a process of a cluster (several processes of one provider on one schema): instead of the
   * schema's session lock, every write transaction checks that this lease is still held, and
   * commits nothing if it is not (see pg/lease.ts). Without it the store holds the schema alone.
   */
  fence?: LeaseFence & {
    /** Told once when a write found the lease gone; the store then accepts no more writes. */
    onFenced?: (reason: string) => void;
    /** A transaction left idle this long is ended by the server (a paused process must not hold the lease row's lock). */
    stalledTransactionTimeoutMs: number;
  };
}

interface PendingCommit {
  ops: BatchOp[];
  durable: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
/** Serialises migrations across processes: "MIMIkv" 0x0001 as a signed 64-bit integer. */
const MIGRATION_LOCK_KEY = "5569067391951175681";
/** Rows a range reads per query. */
const RANGE_PAGE_SIZE = 500;
const CONNECT_TIMEOUT_MS = 10_000;
const APPLICATION_NAME = "mimi-appservice";

/**
 * The KvStore on PostgreSQL: one table `kv (key bytea, value bytea)` in a schema of its own, keys
 * and values stored as UTF-8, so the bytewise order of bytea is LevelDB's order. Commits are
 * grouped as in LevelStore: those arriving while a transaction is in flight are merged, in arrival
 * order, into the next single transaction. Fail-stop: after a failed write the store refuses every
 * later commit.
 *
 * A range reads in pages of 500 rows, each its own query (keyset pagination): it never returns a
 * key twice nor skips one that exists throughout, but unlike a LevelDB iterator it reads no single
 * snapshot, so a write landing meanwhile may or may not show in the pages still to come.
 *
 * A key can hold at most about 2.7 kB (what PostgreSQL's primary-key index takes); a longer one
 * fails its commit.
 */
export class PgStore implements KvStore {
  private pending: PendingCommit[] = [];
  private flushing = false;
  /** The running flush loop, awaited by close(). */
  private flushed: Promise<void> = Promise.resolve();
  private closed = false;
  private closing: Promise<void> | undefined;
  private failure: StoreError | undefined;
  private readonly listeners = new Set<(ops: readonly BatchOp[]) => void>();
  /**
   * Reads (and withTransaction's connections) under way, which close() waits for before ending
   * the pool: a pg Pool that ends drops the requests still waiting for a connection without
   * settling them, so a read started just before close() would never resolve nor reject.
   */
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly sql: {
    get: string;
    getMany: string;
    rangeForward: string;
    rangeReverse: string;
    delete: string;
    upsert: string;
    fence: string;
  };

  private constructor(
    private readonly pool: Pool,
    /** The PostgreSQL schema the tables are in. */
    readonly schema: string,
    private readonly durability: "fsync" | "os",
    /** The session holding the schema's advisory lock for as long as the store is open (none when fenced). */
    private readonly lockHolder: Client | undefined,
    private readonly fence: PgStoreOptions["fence"],
  ) {
    const kv = this.qualified("kv");
    this.sql = {
      get: `SELECT value FROM ${kv} WHERE key = $1`,
      getMany: `SELECT key, value FROM ${kv} WHERE key = ANY($1::bytea[])`,
      rangeForward: `SELECT key, value FROM ${kv} WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3`,
      rangeReverse: `SELECT key, value FROM ${kv} WHERE key >= $1 AND key < $2 ORDER BY key DESC LIMIT $3`,
      delete: `DELETE FROM ${kv} WHERE key = ANY($1::bytea[])`,
      upsert:
        `INSERT INTO ${kv} (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) ` +
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
      fence:
        `SELECT 1 FROM ${this.qualified("leases")} WHERE resource = $1 AND owner = $2 ` +
        "AND token = $3::bigint AND expires_at > clock_timestamp() FOR SHARE",
    };
  }

  /**
   * Connects, creates the schema if missing and applies the migrations it lacks (see
   * pg/migrations.ts), under an advisory lock so that processes opening together apply each once.
   * Refuses a schema migrated by a newer release.
   */
  static async open(options: PgStoreOptions): Promise<PgStore> {
    const schema = options.schema ?? "public";
    if (!SCHEMA_NAME.test(schema) || schema.startsWith("pg_")) {
      throw new StoreError(
        `the PostgreSQL schema name ${JSON.stringify(schema)} is not valid: use 1 to 63 lower-case letters, ` +
          "digits and underscores, not starting with a digit or pg_",
      );
    }
    const poolSize = options.poolSize ?? 10;
    if (!Number.isSafeInteger(poolSize) || poolSize < 1) {
      throw new StoreError(`the PostgreSQL pool size ${poolSize} is not a positive integer`);
    }
    const durability = options.durability ?? "fsync";
    if (durability !== "fsync" && durability !== "os") {
      throw new StoreError(`the durability ${JSON.stringify(durability)} is neither fsync nor os`);
    }

    let client: Client;
    try {
      client = new Client({
        connectionString: options.url,
        connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
        application_name: APPLICATION_NAME,
      });
    } catch (err) {
      // The URL may hold a password: never repeat it.
      throw new StoreError(`the PostgreSQL URL is not valid: ${errorText(err)}`);
    }
    client.on("error", () => undefined);
    const where = describeTarget(client);
    const redact = (text: string) => (client.password ? text.split(client.password).join("***") : text);
    try {
      await client.connect();
    } catch (err) {
      await client.end().catch(() => undefined);
      throw new StoreError(`cannot connect to PostgreSQL at ${where}: ${redact(errorText(err))}`);
    }
    try {
      await migrate(client, schema);
      // A fenced process shares the schema with its cluster, never with a provider holding it alone.
      if (options.fence !== undefined) await refuseIfLocked(client, schema, where);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(
        `cannot prepare the PostgreSQL schema ${schema} at ${where}: ${redact(errorText(err))}`,
      );
    } finally {
      await client.end().catch(() => undefined);
    }

    const holder =
      options.fence === undefined ? await holdSchemaLock(options.url, schema, where, redact) : undefined;
    const pool = new Pool({
      connectionString: options.url,
      max: poolSize,
      keepAlive: true,
      application_name: APPLICATION_NAME,
      ...(options.fence === undefined
        ? {}
        : { idle_in_transaction_session_timeout: options.fence.stalledTransactionTimeoutMs }),
    });
    // A connection that breaks (a server restart, a terminated backend) fails the query in flight
    // on it, if any, and is dropped by the pool. Its error is also emitted as an event, idle or
    // not, and an error event without a listener would crash the process.
    pool.on("error", () => undefined);
    pool.on("connect", (client) => client.on("error", () => undefined));
    const store = new PgStore(pool, schema, durability, holder, options.fence);
    holder?.on("end", () => store.lockLost());
    return store;
  }

  /**
   * Connects, creates the schema if missing and applies the migrations it lacks, then
   * disconnects: what a cluster's process does before it takes part in leases.
   */
  static async prepare(options: Pick<PgStoreOptions, "url" | "schema">): Promise<void> {
    const schema = options.schema ?? "public";
    const client = new Client({
      connectionString: options.url,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      application_name: APPLICATION_NAME,
    });
    client.on("error", () => undefined);
    const where = describeTarget(client);
    try {
      await client.connect();
      await migrate(client, schema);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot prepare the PostgreSQL schema ${schema} at ${where}: ${errorText(err)}`);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /** The session holding the schema's lock ended while open: another process may take it now. */
  private lockLost(): void {
    if (this.closed) return;
    this.failure ??= new StoreError(
      `lost the PostgreSQL session holding the lock on schema ${this.schema}; the store stopped accepting writes: restart the provider`,
    );
  }

  /** `"schema"."table"`, for SQL of other code that keeps tables in the store's schema. */
  qualified(table: string): string {
    return `${escapeIdentifier(this.schema)}.${escapeIdentifier(table)}`;
  }

  async get(key: string): Promise<string | undefined> {
    const result = await this.query<{ value: Buffer }>({
      name: "mimi_kv_get",
      text: this.sql.get,
      values: [encode(key)],
    });
    const row = result.rows[0];
    return row === undefined ? undefined : row.value.toString("utf8");
  }

  async getMany(keys: string[]): Promise<(string | undefined)[]> {
    if (keys.length === 0) return [];
    const encoded = keys.map(encode);
    const result = await this.query<{ key: Buffer; value: Buffer }>({
      name: "mimi_kv_get_many",
      text: this.sql.getMany,
      values: [encoded],
    });
    // By the keys' bytes: two strings with the same UTF-8 (lone surrogates) are one key.
    const found = new Map<string, string>();
    for (const row of result.rows) found.set(row.key.toString("latin1"), row.value.toString("utf8"));
    return encoded.map((key) => found.get(key.toString("latin1")));
  }

  async *range(options: {
    gte: string;
    lt: string;
    limit?: number;
    reverse?: boolean;
  }): AsyncIterable<[string, string]> {
    this.checkOpen();
    const reverse = options.reverse ?? false;
    let remaining = options.limit === undefined || options.limit < 0 ? Infinity : options.limit;
    let low = encode(options.gte);
    let high = encode(options.lt);
    while (remaining > 0 && Buffer.compare(low, high) < 0) {
      const size = Math.min(RANGE_PAGE_SIZE, remaining);
      const result = await this.query<{ key: Buffer; value: Buffer }>({
        name: reverse ? "mimi_kv_range_reverse" : "mimi_kv_range_forward",
        text: reverse ? this.sql.rangeReverse : this.sql.rangeForward,
        values: [low, high, size],
      });
      for (const row of result.rows) yield [row.key.toString("utf8"), row.value.toString("utf8")];
      remaining -= result.rows.length;
      if (result.rows.length < size) return;
      const last = result.rows[result.rows.length - 1]!.key;
      // The next page starts after the last key: below it going down, at its least successor
      // (the key followed by a zero byte) going up.
      if (reverse) high = last;
      else low = Buffer.concat([last, Buffer.alloc(1)]);
    }
  }

  commit(ops: BatchOp[], options: { durable?: boolean } = {}): Promise<void> {
    if (this.closed) return Promise.reject(new StoreError("the store is closed"));
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ ops, durable: options.durable ?? true, resolve, reject });
      if (!this.flushing) {
        this.flushing = true;
        this.flushed = this.flush();
      }
    });
  }

  onCommitted(listener: (ops: readonly BatchOp[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  unavailableReason(): string | undefined {
    if (this.closed) return "the store is closed";
    return this.failure?.message;
  }

  /**
   * Runs `fn` in a transaction on a connection of the store's pool: committed if `fn` resolves,
   * rolled back if it throws (and the error rethrown). For other code keeping tables of its own in
   * the store's schema (see `qualified`); it is not ordered with the store's own commits.
   */
  async withTransaction<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    this.checkOpen();
    const client = await this.track(this.pool.connect());
    let broken: Error | undefined;
    try {
      await client.query("BEGIN");
      const result = await fn(client);
      await client.query("COMMIT");
      return result;
    } catch (err) {
      try {
        await client.query("ROLLBACK");
      } catch (rollbackError) {
        broken = rollbackError as Error;
      }
      throw err;
    } finally {
      client.release(broken);
    }
  }

  /** Waits for the commits already accepted to land (or fail), then closes every connection. */
  close(): Promise<void> {
    if (this.closing === undefined) {
      this.closed = true;
      this.closing = (async () => {
        await this.flushed;
        // No read starts once closed; those under way finish first (see inFlight).
        while (this.inFlight.size > 0) await Promise.all(this.inFlight);
        await this.pool.end();
        await this.lockHolder?.end().catch(() => undefined);
      })();
    }
    return this.closing;
  }

  private checkOpen(): void {
    if (this.closed) throw new StoreError("the store is closed");
  }

  /** A query of the store's reads on the pool, refused once closed, waited for by close(). */
  private query<R extends QueryResultRow>(config: QueryConfig) {
    this.checkOpen();
    return this.track(this.pool.query<R>(config));
  }

  private track<T>(work: Promise<T>): Promise<T> {
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    this.inFlight.add(settled);
    void settled.then(() => this.inFlight.delete(settled));
    return work;
  }

  private async flush(): Promise<void> {
    while (this.pending.length > 0) {
      const group = this.pending;
      this.pending = [];
      // Always deduplicated: one INSERT ... ON CONFLICT cannot touch a row twice.
      const ops = lastWriteWins(group.length === 1 ? group[0]!.ops : group.flatMap((c) => c.ops));
      try {
        // A group of only non-durable commits need not wait for the WAL flush.
        const sync = this.durability === "fsync" && group.some((c) => c.durable);
        await this.write(ops, sync);
        notifyCommitted(this.listeners, ops);
        for (const c of group) c.resolve();
      } catch (err) {
        this.failure =
          err instanceof LeaseFencedError
            ? err
            : new StoreError(`database write failed, the store stopped accepting writes: ${errorText(err)}`);
        if (err instanceof LeaseFencedError) this.fence?.onFenced?.(err.message);
        for (const c of [...group, ...this.pending]) c.reject(this.failure);
        this.pending = [];
      }
    }
    this.flushing = false;
  }

  /** One transaction: the deletes, then the puts as one upsert. */
  private async write(ops: readonly BatchOp[], sync: boolean): Promise<void> {
    if (ops.length === 0) return;
    // Keyed by bytes, as the table is: strings that differ only in lone surrogates are one key.
    const last = new Map<string, { key: Buffer; op: BatchOp }>();
    for (const op of ops) {
      const key = encode(op.key);
      const id = key.toString("latin1");
      last.delete(id);
      last.set(id, { key, op });
    }
    const dels: Buffer[] = [];
    const puts: { key: Buffer; value: Buffer }[] = [];
    for (const { key, op } of last.values()) {
      if (op.type === "del") dels.push(key);
      else puts.push({ key, value: encode(op.value) });
    }
    // Rows are locked in key order, so writers of overlapping keys cannot deadlock each other.
    dels.sort(Buffer.compare);
    puts.sort((a, b) => Buffer.compare(a.key, b.key));

    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query(sync ? "BEGIN" : "BEGIN; SET LOCAL synchronous_commit = off");
      if (this.fence !== undefined) {
        const held = await client.query({
          name: "mimi_kv_fence",
          text: this.sql.fence,
          values: [this.fence.resource, this.fence.owner, this.fence.token],
        });
        if (held.rowCount !== 1) throw new LeaseFencedError(this.fence.resource);
      }
      if (dels.length > 0) {
        await client.query({ name: "mimi_kv_delete", text: this.sql.delete, values: [dels] });
      }
      if (puts.length > 0) {
        await client.query({
          name: "mimi_kv_upsert",
          text: this.sql.upsert,
          values: [puts.map((p) => p.key), puts.map((p) => p.value)],
        });
      }
      await client.query("COMMIT");
    } catch (err) {
      // The connection's state is unknown: roll back if it still answers, and never reuse it.
      broken = err as Error;
      await client.query("ROLLBACK").catch(() => undefined);
      throw err;
    } finally {
      client.release(broken);
    }
  }
}

/**
 * Under the advisory lock (held to the end of the transaction): the schema if missing, then every
 * migration newer than the schema's, each recorded in schema_migrations, all in one transaction.
 */
export async function migrate(
  client: Client,
  schema: string,
  migrations: readonly PgMigration[] = PG_MIGRATIONS,
): Promise<void> {
  const quoted = escapeIdentifier(schema);
  await client.query("BEGIN");
  try {
    await client.query("SELECT pg_advisory_xact_lock($1::bigint)", [MIGRATION_LOCK_KEY]);
    // Checked first, as CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when it exists.
    const existing = await client.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema]);
    if (existing.rowCount === 0) await client.query(`CREATE SCHEMA ${quoted}`);
    await client.query(`SET LOCAL search_path TO ${quoted}`);
    const table = await client.query<{ found: string | null }>("SELECT to_regclass($1)::text AS found", [
      `${quoted}.schema_migrations`,
    ]);
    let version = 0;
    if (table.rows[0]?.found != null) {
      const applied = await client.query<{ version: number | null }>(
        `SELECT max(version) AS version FROM ${quoted}.schema_migrations`,
      );
      version = applied.rows[0]?.version ?? 0;
    }
    if (version > migrations.length) {
      throw new StoreError(
        `the PostgreSQL schema ${schema} has migration version ${version}, newer than this release ` +
          `supports (${migrations.length}); run a newer release or restore a backup`,
      );
    }
    for (const migration of migrations.slice(version)) {
      try {
        await client.query(migration.sql);
      } catch (err) {
        throw new Error(`migration ${migration.version} (${migration.name}) failed: ${errorText(err)}`);
      }
      await client.query(`INSERT INTO ${quoted}.schema_migrations (version, applied_at) VALUES ($1, now())`, [
        migration.version,
      ]);
    }
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  }
}

/** A write refused because this process no longer holds the lease it writes under. */
export class LeaseFencedError extends StoreError {
  constructor(resource: string) {
    super(
      `this process no longer holds the ${resource} lease (it expired, and another process may hold it): ` +
        "it committed nothing and accepts no more writes",
    );
  }
}

/** Refuses when a process holding the schema alone (no cluster) has its lock. */
async function refuseIfLocked(client: Client, schema: string, where: string): Promise<void> {
  const key = `mimi-appservice schema ${schema}`;
  const result = await client.query<{ locked: boolean }>(
    "SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS locked",
    [key],
  );
  if (result.rows[0]?.locked !== true) {
    throw new StoreError(
      `the PostgreSQL schema ${schema} at ${where} is in use by a process without database.cluster ` +
        "(a provider or migrate-store holding it alone): stop it, or give every process the cluster section",
    );
  }
  await client.query("SELECT pg_advisory_unlock(hashtextextended($1, 0))", [key]);
}

/** Refuses when a cluster's process holds a live lease on the schema. */
async function refuseIfLeased(client: Client, schema: string, where: string): Promise<void> {
  const result = await client.query<{ name: string | null }>(
    `SELECT owner_info->>'name' AS name FROM ${escapeIdentifier(schema)}.leases WHERE expires_at > clock_timestamp()`,
  );
  const row = result.rows[0];
  if (row !== undefined) {
    throw new StoreError(
      `the PostgreSQL schema ${schema} at ${where} is in use by the cluster process ${row.name ?? "(unnamed)"} ` +
        "(database.cluster): stop the cluster's processes first",
    );
  }
}

/**
 * One process per schema, as LevelDB allows one per folder: a session-level advisory lock on the
 * schema's name, held by a connection of its own until the store closes (or that session ends).
 */
async function holdSchemaLock(
  url: string,
  schema: string,
  where: string,
  redact: (text: string) => string,
): Promise<Client> {
  const holder = new Client({
    connectionString: url,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    application_name: `${APPLICATION_NAME} (lock)`,
  });
  holder.on("error", () => undefined);
  try {
    await holder.connect();
    const result = await holder.query<{ locked: boolean }>(
      "SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS locked",
      [`mimi-appservice schema ${schema}`],
    );
    if (result.rows[0]?.locked !== true) {
      throw new StoreError(
        `the PostgreSQL schema ${schema} at ${where} is in use by another process ` +
          "(is another provider or migrate-store using it?)",
      );
    }
    await refuseIfLeased(holder, schema, where);
    return holder;
  } catch (err) {
    await holder.end().catch(() => undefined);
    if (err instanceof StoreError) throw err;
    throw new StoreError(
      `cannot lock the PostgreSQL schema ${schema} at ${where}: ${redact(errorText(err))}`,
    );
  }
}

function encode(text: string): Buffer {
  return Buffer.from(text, "utf8");
}

/** Host, port, database and user of a connection, never its password. */
function describeTarget(client: Client): string {
  const user = client.user === undefined ? "" : ` as user ${client.user}`;
  return `${client.host}:${client.port}, database ${client.database ?? "(default)"}${user}`;
}

/** An error's message; a failed connection to several addresses is an AggregateError with none. */
function errorText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  if (err.message !== "") return err.message;
  if (err instanceof AggregateError && err.errors.length > 0) return err.errors.map(errorText).join("; ");
  return String((err as { code?: unknown }).code ?? err.name);
}
