/**
 * One conformance suite for every KvStore: LevelDB in a temporary folder, and PostgreSQL in a
 * fresh schema per test (dropped afterwards). Both must give the same answers, in particular the
 * same key order (UTF-8 byte order), which prefixEnd relies on. Then what only PostgreSQL has:
 * its migrations, its connection errors, and a connection lost in the middle of a batch.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { Client } from "pg";
import { freePort } from "../../src/util/freePort";
import { prefixEnd, type BatchOp, type KvStore } from "../../src/store/kv";
import { LevelStore, StoreError } from "../../src/store/levelStore";
import { PG_MIGRATIONS, PG_SCHEMA_VERSION } from "../../src/store/pg/migrations";
import { migrate, PgStore } from "../../src/store/pgStore";
import { postgresUrl, withPostgresClient as admin } from "../support/postgres";
import { removeDir, tempDir } from "../support/services";

/** The store with the optional parts both backends have. */
type Store = KvStore & Required<Pick<KvStore, "onCommitted" | "unavailableReason">>;
type Durability = "fsync" | "os";

/** Where one test's database lives: opened (again) with `open`, deleted by `remove`. */
interface Place {
  open(durability?: Durability): Promise<Store>;
  /** Commits `ops` together with what makes this backend's write of the batch fail. */
  failingCommit(store: Store, ops: BatchOp[]): Promise<void>;
  remove(): Promise<void>;
}

interface Backend {
  name: string;
  /** Makes the backend available (starts PostgreSQL); may take long the first time. */
  prepare(): Promise<void>;
  place(): Promise<Place>;
}

const levelBackend: Backend = {
  name: "LevelStore",
  prepare: async () => undefined,
  place: async () => {
    const dir = tempDir("kvstore");
    return {
      open: (durability = "os") => LevelStore.open(join(dir, "db"), { durability }),
      failingCommit: (store, ops) => {
        // LevelDB offers no batch that fails by its content: the disk fails instead.
        (store as unknown as { write: () => Promise<void> }).write = () =>
          Promise.reject(new Error("injected disk failure"));
        return store.commit(ops);
      },
      remove: async () => removeDir(dir),
    };
  },
};

const pgBackend: Backend = {
  name: "PgStore",
  prepare: async () => {
    await postgresUrl();
  },
  place: async () => {
    const url = await postgresUrl();
    const schema = randomSchema();
    return {
      open: (durability = "os") => PgStore.open({ url, schema, poolSize: 4, durability }),
      failingCommit: (store, ops) =>
        // A key longer than a primary-key index entry can hold (random, so it does not compress).
        store.commit([
          ...ops,
          { type: "put", key: `huge\u0000${randomBytes(8000).toString("base64")}`, value: "" },
        ]),
      remove: () => dropSchema(schema),
    };
  },
};

function randomSchema(): string {
  return `kvtest_${randomBytes(8).toString("hex")}`;
}

async function dropSchema(schema: string): Promise<void> {
  await admin((c) => c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
}

async function entries(
  store: KvStore,
  options: Parameters<KvStore["range"]>[0],
): Promise<[string, string][]> {
  const found: [string, string][] = [];
  for await (const entry of store.range(options)) found.push(entry);
  return found;
}

async function keysOf(store: KvStore, options: Parameters<KvStore["range"]>[0]): Promise<string[]> {
  return (await entries(store, options)).map(([key]) => key);
}

const puts = (keys: string[]): BatchOp[] => keys.map((key) => ({ type: "put", key, value: `v:${key}` }));
const describeOp = (op: BatchOp) => (op.type === "put" ? `put ${op.key}=${op.value}` : `del ${op.key}`);

/** Everything below the highest code point: all our keys. */
const ALL = { gte: "", lt: "\u{10FFFF}" };

describe.each([levelBackend, pgBackend])("KvStore conformance: $name", (backend) => {
  let place: Place;
  let opened: Store[];

  const open = async (durability?: Durability) => {
    const store = await place.open(durability);
    opened.push(store);
    return store;
  };

  beforeAll(() => backend.prepare(), 10 * 60_000);

  beforeEach(async () => {
    place = await backend.place();
    opened = [];
  });

  afterEach(async () => {
    await Promise.all(opened.map((s) => s.close()));
    await place.remove();
  });

  it("gets missing keys as undefined and present ones as stored, one by one and many at once", async () => {
    const store = await open();
    await store.commit([
      { type: "put", key: "a", value: "1" },
      { type: "put", key: "empty", value: "" },
      { type: "put", key: "u\u0000\u{1F600}", value: "\u00e9\u0000\u{1F600}\uffff" },
    ]);
    expect(await store.get("a")).toBe("1");
    expect(await store.get("empty")).toBe("");
    expect(await store.get("u\u0000\u{1F600}")).toBe("\u00e9\u0000\u{1F600}\uffff");
    expect(await store.get("missing")).toBeUndefined();
    expect(await store.get("u\u0000")).toBeUndefined();
    expect(await store.getMany([])).toEqual([]);
    expect(await store.getMany(["missing", "a", "empty", "a", "u\u0000\u{1F600}", "b"])).toEqual([
      undefined,
      "1",
      "",
      "1",
      "\u00e9\u0000\u{1F600}\uffff",
      undefined,
    ]);
  });

  it("ranges in UTF-8 byte order: U+0000 first, U+FFFF below emoji, the same on every store", async () => {
    const store = await open();
    // In UTF-8 byte order; UTF-16 (JavaScript's) order would put the emoji before U+E000.
    const ordered = [
      "",
      "\u0000",
      "a",
      "a\u0000",
      "a\u0000\u0000",
      "a\u0000b",
      "a\u0001",
      "a\u007f",
      "a\u0080",
      "a\u00e9",
      "a\u07ff",
      "a\u0800",
      "a\ud7ff",
      "a\ue000",
      "a\ufffd",
      "a\uffff",
      "a\u{10000}",
      "a\u{1F600}",
      "a\u{1F600}\u0000",
      "a\u{1F601}",
      "a\u{10FFFF}",
      "b",
      "\uffff",
      "\u{1F600}",
    ];
    const utf8Sorted = [...ordered].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect(utf8Sorted).toEqual(ordered);
    const shuffled = [...ordered].sort(() => Math.random() - 0.5);
    await store.commit(puts(shuffled));
    const all = { gte: "", lt: "\u{10FFFF}\u{10FFFF}" };
    expect(await entries(store, all)).toEqual(ordered.map((key) => [key, `v:${key}`]));
    expect(await keysOf(store, { ...all, reverse: true })).toEqual([...ordered].reverse());
    expect(await keysOf(store, { gte: "a\uffff", lt: "a\u{10FFFF}" })).toEqual([
      "a\uffff",
      "a\u{10000}",
      "a\u{1F600}",
      "a\u{1F600}\u0000",
      "a\u{1F601}",
    ]);
  });

  it("includes gte, excludes lt, and honours limit and reverse", async () => {
    const store = await open();
    const keys = Array.from({ length: 10 }, (_, i) => `k${i}`);
    await store.commit(puts(keys));
    expect(await keysOf(store, { gte: "k2", lt: "k5" })).toEqual(["k2", "k3", "k4"]);
    expect(await keysOf(store, { gte: "k2", lt: "k5", reverse: true })).toEqual(["k4", "k3", "k2"]);
    expect(await keysOf(store, { gte: "k2", lt: "k5", limit: 2 })).toEqual(["k2", "k3"]);
    expect(await keysOf(store, { gte: "k2", lt: "k5", limit: 2, reverse: true })).toEqual(["k4", "k3"]);
    expect(await keysOf(store, { gte: "k2", lt: "k5", limit: 10 })).toEqual(["k2", "k3", "k4"]);
    expect(await keysOf(store, { gte: "k2", lt: "k5", limit: 0 })).toEqual([]);
    expect(await keysOf(store, { gte: "k1a", lt: "k3a" })).toEqual(["k2", "k3"]);
    expect(await keysOf(store, { gte: "k5", lt: "k5" })).toEqual([]);
    expect(await keysOf(store, { gte: "k6", lt: "k5" })).toEqual([]);
    expect(await keysOf(store, { gte: "l", lt: "m" })).toEqual([]);
    expect(await keysOf(store, { gte: "", lt: "k1" })).toEqual(["k0"]);
  });

  it("ranges over more entries than a page holds, either way, with and without a limit", async () => {
    const store = await open();
    const keys = Array.from({ length: 1234 }, (_, i) => `p\u0000${String(i).padStart(5, "0")}`);
    await store.commit(puts(keys));
    const range = { gte: "p\u0000", lt: prefixEnd("p\u0000") };
    expect(await keysOf(store, range)).toEqual(keys);
    expect(await keysOf(store, { ...range, reverse: true })).toEqual([...keys].reverse());
    expect(await keysOf(store, { ...range, limit: 1000 })).toEqual(keys.slice(0, 1000));
    expect(await keysOf(store, { ...range, limit: 777, reverse: true })).toEqual(
      [...keys].reverse().slice(0, 777),
    );
    expect(await keysOf(store, { gte: keys[499]!, lt: keys[1001]! })).toEqual(keys.slice(499, 1001));
    expect(await keysOf(store, { gte: keys[500]!, lt: keys[1000]!, reverse: true })).toEqual(
      keys.slice(500, 1000).reverse(),
    );
    // A consumer that stops early leaves the store usable.
    let seen = 0;
    for await (const _ of store.range(range)) if (++seen === 3) break;
    expect(seen).toBe(3);
    await store.commit([{ type: "put", key: "after", value: "x" }]);
    expect(await store.get("after")).toBe("x");
  });

  it.each([
    ["an ASCII suffix", "abc"],
    ["a BMP character", "\u00e9t\u00e9"],
    ["U+FFFD", "\ufffd"],
    ["U+FFFF", "\uffff"],
    ["an emoji (beyond U+FFFF)", "\u{1F600}x"],
    ["the highest code point", "\u{10FFFF}"],
    ["a U+0000 separator", "\u0000\u0000x"],
  ])(
    "a prefix scan finds a key with %s after the prefix, and nothing of the next prefix",
    async (_name, suffix) => {
      const store = await open();
      const prefix = "s\u0000room\u0000";
      await store.commit([
        { type: "put", key: "s\u0000room", value: "the prefix without its separator" },
        { type: "put", key: prefix + suffix, value: "in" },
        { type: "put", key: "s\u0000room\u0001", value: "just after" },
        { type: "put", key: "s\u0000room2\u0000x", value: "next room" },
        { type: "put", key: "s\u0000roon\u0000x", value: "after" },
      ]);
      const found = await entries(store, { gte: prefix, lt: prefixEnd(prefix) });
      expect(found.map(([, value]) => value)).toEqual(["in"]);
      const unseparated = await entries(store, { gte: "s\u0000room", lt: prefixEnd("s\u0000room") });
      expect(unseparated.map(([, value]) => value)).toEqual([
        "the prefix without its separator",
        "in",
        "just after",
        "next room",
      ]);
    },
  );

  it("applies a commit atomically: a failed batch leaves nothing, and every later commit is refused", async () => {
    const store = await open();
    await store.commit([{ type: "put", key: "before", value: "kept" }]);
    expect(store.unavailableReason()).toBeUndefined();
    const failing = place.failingCommit(store, [
      { type: "put", key: "atomic\u0000a", value: "1" },
      { type: "del", key: "before" },
      { type: "put", key: "atomic\u0000b", value: "2" },
    ]);
    // Queued behind the failing batch: refused with it, as nothing may land after a lost write.
    const queued = store.commit([{ type: "put", key: "queued", value: "x" }]);
    await expect(failing).rejects.toThrow(StoreError);
    await expect(queued).rejects.toThrow(/write failed/);
    await expect(store.commit([{ type: "put", key: "later", value: "x" }])).rejects.toThrow(/write failed/);
    expect(store.unavailableReason()).toMatch(/database write failed, the store stopped accepting writes/);
    // Reads still work, and show nothing of the failed batch.
    expect(await store.getMany(["atomic\u0000a", "atomic\u0000b", "before", "queued", "later"])).toEqual([
      undefined,
      undefined,
      "kept",
      undefined,
      undefined,
    ]);
    await store.close();
    const reopened = await open();
    expect(await entries(reopened, ALL)).toEqual([["before", "kept"]]);
    await reopened.commit([{ type: "put", key: "later", value: "x" }]);
    expect(await reopened.get("later")).toBe("x");
  });

  it("merges concurrent commits into one batch, last write winning; listeners see every landed op in order", async () => {
    const store = await open();
    const log: string[] = [];
    const replayed = new Map<string, string>();
    store.onCommitted(() => {
      throw new Error("a broken listener");
    });
    store.onCommitted((ops) => {
      log.push(`batch ${ops.map(describeOp).join(", ")}`);
      for (const op of ops) {
        if (op.type === "put") replayed.set(op.key, op.value);
        else replayed.delete(op.key);
      }
    });
    const commits: BatchOp[][] = [
      [{ type: "put", key: "a", value: "1" }],
      [
        { type: "put", key: "a", value: "2" },
        { type: "put", key: "b", value: "1" },
      ],
      [
        { type: "del", key: "b" },
        { type: "put", key: "c", value: "1" },
      ],
      [{ type: "put", key: "a", value: "3" }],
    ];
    // The first starts a write; the others arrive while it is in flight and go into the next one.
    await Promise.all(commits.map((ops, i) => store.commit(ops).then(() => log.push(`resolved ${i + 1}`))));
    expect(log).toEqual([
      "batch put a=1",
      "resolved 1",
      "batch del b, put c=1, put a=3",
      "resolved 2",
      "resolved 3",
      "resolved 4",
    ]);
    expect(await entries(store, ALL)).toEqual([
      ["a", "3"],
      ["c", "1"],
    ]);
    expect(Object.fromEntries(replayed)).toEqual({ a: "3", c: "1" });
  });

  it("keeps only the last operation on a key within one commit", async () => {
    const store = await open();
    await store.commit([{ type: "put", key: "y", value: "0" }]);
    await store.commit([
      { type: "put", key: "x", value: "1" },
      { type: "del", key: "x" },
      { type: "del", key: "y" },
      { type: "put", key: "y", value: "2" },
      { type: "put", key: "z", value: "1" },
      { type: "put", key: "z", value: "2" },
      { type: "del", key: "never" },
    ]);
    expect(await entries(store, ALL)).toEqual([
      ["y", "2"],
      ["z", "2"],
    ]);
    await store.commit([]);
  });

  it("stops telling a listener once it unsubscribes", async () => {
    const store = await open();
    const seen: string[] = [];
    const unsubscribe = store.onCommitted((ops) => seen.push(...ops.map(describeOp)));
    await store.commit([{ type: "put", key: "a", value: "1" }]);
    unsubscribe();
    await store.commit([{ type: "put", key: "b", value: "1" }]);
    expect(seen).toEqual(["put a=1"]);
  });

  it("lands non-durable commits in order with durable ones", async () => {
    const store = await open("fsync");
    await Promise.all([
      store.commit([{ type: "put", key: "a", value: "1" }], { durable: false }),
      store.commit([{ type: "put", key: "a", value: "2" }]),
    ]);
    expect(await store.get("a")).toBe("2");
    await Promise.all([
      store.commit([{ type: "put", key: "a", value: "3" }]),
      store.commit([{ type: "put", key: "a", value: "4" }], { durable: false }),
      store.commit([{ type: "put", key: "b", value: "1" }], { durable: false }),
    ]);
    expect(await store.getMany(["a", "b"])).toEqual(["4", "1"]);
  });

  it("lands the commits accepted before close, then refuses more; the data outlives a reopen", async () => {
    const store = await open();
    const accepted = [
      store.commit([{ type: "put", key: "a", value: "1" }]),
      store.commit([{ type: "put", key: "b", value: "\u{1F600}" }]),
    ];
    await store.close();
    await Promise.all(accepted);
    expect(store.unavailableReason()).toBe("the store is closed");
    await expect(store.commit([{ type: "put", key: "c", value: "1" }])).rejects.toThrow(/closed/);
    const reopened = await open();
    expect(await entries(reopened, ALL)).toEqual([
      ["a", "1"],
      ["b", "\u{1F600}"],
    ]);
  });

  it("settles every read started just before close: each answers or is refused, none hangs", async () => {
    const store = await open();
    await store.commit(puts(["a", "b"]));
    await store.get("a");
    // Reads issued in the same turn as close(), as a caller reading on after an answer would.
    const reads = [store.get("a"), store.getMany(["a", "b"]), entries(store, ALL)];
    const closed = store.close();
    const outcomes = await Promise.all(
      reads.map((read) =>
        Promise.race([
          read.then(
            () => "answered",
            (err: Error) => (/closed|not open/i.test(err.message) ? "refused" : err.message),
          ),
          new Promise((resolve) => setTimeout(() => resolve("unsettled after 5 s"), 5_000).unref()),
        ]),
      ),
    );
    for (const outcome of outcomes) expect(["answered", "refused"]).toContain(outcome);
    await closed;
  });
});

describe("PgStore on PostgreSQL", () => {
  let url: string;
  const schemas: string[] = [];
  const opened: PgStore[] = [];

  const open = async (schema: string, poolSize = 2) => {
    const store = await PgStore.open({ url, schema, poolSize, durability: "os" });
    opened.push(store);
    return store;
  };
  const newSchema = () => {
    const schema = randomSchema();
    schemas.push(schema);
    return schema;
  };
  const applied = (schema: string) =>
    admin(async (c) => {
      const result = await c.query<{ version: number }>(
        `SELECT version FROM "${schema}".schema_migrations ORDER BY version`,
      );
      return result.rows.map((row) => row.version);
    });

  beforeAll(async () => {
    url = await postgresUrl();
  }, 10 * 60_000);

  afterEach(async () => {
    await Promise.all(opened.splice(0).map((s) => s.close()));
    for (const schema of schemas.splice(0)) await dropSchema(schema);
  });

  it("lets one process at a time use a schema, and applies the migrations once when two open together", async () => {
    const schema = newSchema();
    const outcomes = await Promise.allSettled([open(schema), open(schema)]);
    const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === "rejected");
    expect(refused).toHaveLength(1);
    expect(String(refused[0]!.reason)).toMatch(
      new RegExp(`the PostgreSQL schema ${schema} at .* is in use by another process`),
    );
    const all = PG_MIGRATIONS.map((m) => m.version);
    expect(await applied(schema)).toEqual(all);
    expect(PG_SCHEMA_VERSION).toBe(2);
    const first = (outcomes.find((o) => o.status === "fulfilled") as PromiseFulfilledResult<PgStore>).value;
    await first.commit([{ type: "put", key: "k", value: "from the first" }]);
    await first.close();
    // Once it closed, the schema is free again.
    const second = await open(schema);
    expect(await second.get("k")).toBe("from the first");
    expect(await applied(schema)).toEqual(all);
  });

  it("applies the migrations a schema lacks, in order, keeping its data", async () => {
    const schema = newSchema();
    const later = {
      version: PG_SCHEMA_VERSION + 1,
      name: "later",
      sql: "CREATE TABLE later (id int PRIMARY KEY)",
    };
    await admin(async (c) => {
      await migrate(c, schema);
      await c.query(`INSERT INTO "${schema}".kv (key, value) VALUES ('k'::bytea, 'v'::bytea)`);
      await migrate(c, schema, [...PG_MIGRATIONS, later]);
      // Applied already: nothing runs twice.
      await migrate(c, schema, [...PG_MIGRATIONS, later]);
      await c.query(`INSERT INTO "${schema}".later (id) VALUES (1)`);
    });
    expect(await applied(schema)).toEqual([...PG_MIGRATIONS.map((m) => m.version), later.version]);
    await expect(open(schema)).rejects.toThrow(
      `has migration version ${later.version}, newer than this release supports (${PG_SCHEMA_VERSION})`,
    );
    await admin((c) =>
      c.query(`DELETE FROM "${schema}".schema_migrations WHERE version = $1`, [later.version]),
    );
    expect(await (await open(schema)).get("k")).toBe("v");
  });

  it("stops accepting writes when the session holding its lock ends", async () => {
    const schema = newSchema();
    const store = await open(schema);
    // Only the session holding this schema's lock (other tests use the server meanwhile).
    const ended = await admin((c) =>
      c.query(
        `WITH k AS (SELECT hashtextextended($1, 0) AS key)
         SELECT pg_terminate_backend(l.pid) FROM pg_locks l, k
         WHERE l.locktype = 'advisory' AND l.classid::bigint = ((k.key >> 32) & 4294967295)
           AND l.objid::bigint = (k.key & 4294967295)`,
        [`mimi-appservice schema ${schema}`],
      ),
    );
    expect(ended.rowCount).toBe(1);
    for (let i = 0; i < 100 && store.unavailableReason() === undefined; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(store.unavailableReason()).toMatch(/lost the PostgreSQL session holding the lock on schema/);
    await expect(store.commit([{ type: "put", key: "k", value: "v" }])).rejects.toThrow(
      /lost the PostgreSQL session/,
    );
  });

  it("refuses a schema migrated by a newer release", async () => {
    const schema = newSchema();
    await (await open(schema)).close();
    await admin((c) =>
      c.query(`INSERT INTO "${schema}".schema_migrations (version, applied_at) VALUES (99, now())`),
    );
    const refused = PgStore.open({ url, schema });
    await expect(refused).rejects.toThrow(StoreError);
    await expect(refused).rejects.toThrow(
      `schema ${schema} has migration version 99, newer than this release supports (${PG_SCHEMA_VERSION})`,
    );
  });

  it("keeps its tables in the public schema unless told otherwise", async () => {
    // In a database of its own, so no one else's public schema is touched.
    const database = randomSchema();
    await admin((c) => c.query(`CREATE DATABASE "${database}"`));
    try {
      const there = new URL(url);
      there.pathname = `/${database}`;
      const store = await PgStore.open({ url: there.toString() });
      expect(store.schema).toBe("public");
      expect(store.qualified("kv")).toBe('"public"."kv"');
      await store.commit([{ type: "put", key: "k", value: "v" }]);
      await store.close();
      const client = new Client({ connectionString: there.toString() });
      await client.connect();
      try {
        const result = await client.query("SELECT convert_from(value, 'UTF8') AS value FROM public.kv");
        expect(result.rows).toEqual([{ value: "v" }]);
      } finally {
        await client.end();
      }
    } finally {
      await admin((c) => c.query(`DROP DATABASE "${database}" WITH (FORCE)`));
    }
  });

  it.each([["Upper"], ["1abc"], ["a-b"], ['x"; DROP TABLE kv; --'], ["pg_catalog"], ["a".repeat(64)], [""]])(
    "refuses the schema name %j before connecting",
    async (schema) => {
      await expect(PgStore.open({ url: "postgres://nobody@127.0.0.1:1/none", schema })).rejects.toThrow(
        /schema name .* is not valid/,
      );
    },
  );

  it("names the host, port and database it cannot connect to, never the password", async () => {
    const port = await freePort();
    const unreachable = PgStore.open({ url: `postgres://mimi:s3cret-pw@127.0.0.1:${port}/mimidb` });
    await expect(unreachable).rejects.toThrow(StoreError);
    const message = await unreachable.catch((err: Error) => err.message);
    expect(message).toContain(
      `cannot connect to PostgreSQL at 127.0.0.1:${port}, database mimidb as user mimi`,
    );
    expect(message).toMatch(/ECONNREFUSED/);
    expect(message).not.toContain("s3cret-pw");

    const server = new URL(url);
    server.password = "s3cret-pw";
    server.pathname = "/no_such_database";
    const missing = await PgStore.open({ url: server.toString() }).catch((err: Error) => err.message);
    expect(missing).toContain(`at 127.0.0.1:${server.port}, database no_such_database`);
    expect(missing).toContain('database "no_such_database" does not exist');
    expect(missing).not.toContain("s3cret-pw");
  });

  it("fails stop when its connection is lost in the middle of a batch, which then leaves nothing", async () => {
    const schema = newSchema();
    const store = await open(schema);
    await store.commit([{ type: "put", key: "before", value: "kept" }]);
    // A trigger that stalls the insert of one key, so the batch is surely in flight when cut off.
    await admin((c) =>
      c.query(`
        CREATE FUNCTION "${schema}".stall() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.key = '\\x7374616c6c'::bytea THEN PERFORM pg_sleep(30); END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER stall BEFORE INSERT ON "${schema}".kv FOR EACH ROW EXECUTE FUNCTION "${schema}".stall();
      `),
    );
    const cut = store.commit([
      { type: "del", key: "before" },
      { type: "put", key: "a", value: "1" },
      { type: "put", key: "stall", value: "1" },
    ]);
    const terminated = await admin(async (c) => {
      for (let i = 0; i < 500; i++) {
        const result = await c.query<{ ok: boolean }>(
          "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity " +
            "WHERE application_name = 'mimi-appservice' AND wait_event = 'PgSleep' AND query LIKE $1",
          [`%"${schema}"%`],
        );
        if (result.rows.length > 0) return result.rows.every((row) => row.ok);
        await new Promise((r) => setTimeout(r, 10));
      }
      return false;
    });
    expect(terminated).toBe(true);
    await expect(cut).rejects.toThrow(/write failed.*terminating connection/);
    expect(store.unavailableReason()).toMatch(/write failed/);
    await expect(store.commit([{ type: "put", key: "later", value: "1" }])).rejects.toThrow(/write failed/);
    expect(await entries(store, ALL)).toEqual([["before", "kept"]]);
  });
});
