/**
 * The provider's lease and the fence every write of a cluster's process checks (src/store/pg/lease.ts,
 * PgStore's `fence`), on the project's PostgreSQL test server, in both passes of the suite: a
 * cluster needs PostgreSQL whatever the engine under test.
 */
import { randomBytes } from "node:crypto";
import { Client } from "pg";
import { PgLease } from "../../src/store/pg/lease";
import { LeaseFencedError, PgStore } from "../../src/store/pgStore";
import { postgresUrl, withPostgresClient as admin } from "../support/postgres";

const LEASE_MS = 600;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("the provider's lease and the write fence", () => {
  let url: string;
  let schema: string;
  const opened: { close(): Promise<void> }[] = [];

  beforeAll(async () => {
    url = await postgresUrl();
  }, 10 * 60_000);

  beforeEach(async () => {
    schema = `lease_${randomBytes(6).toString("hex")}`;
    await PgStore.prepare({ url, schema });
  });

  afterEach(async () => {
    for (const item of opened.splice(0).reverse()) await item.close();
    await admin((c) => c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
  });

  async function lease(name: string, leaseMs = LEASE_MS): Promise<PgLease> {
    const held = await PgLease.open({
      url,
      schema,
      leaseMs,
      info: { name, urls: { federation: `http://${name}` } },
    });
    opened.push(held);
    return held;
  }

  async function fencedStore(holder: PgLease, onFenced?: (reason: string) => void): Promise<PgStore> {
    const store = await PgStore.open({
      url,
      schema,
      poolSize: 2,
      fence: { ...holder.fence!, stalledTransactionTimeoutMs: 1000, ...(onFenced ? { onFenced } : {}) },
    });
    opened.push(store);
    return store;
  }

  it("is taken by one process at a time; another takes it once it expired, with the next token", async () => {
    const first = await lease("p1");
    const second = await lease("p2");
    expect(await first.tryAcquire()).toBe(true);
    expect(first.fence).toEqual({ resource: "provider", owner: first.owner, token: "1" });
    expect(await second.tryAcquire()).toBe(false);
    expect(second.fence).toBeUndefined();
    const holder = await second.holder();
    expect(holder).toMatchObject({ owner: first.owner, token: "1", info: { name: "p1" } });
    // Not renewed: it expires, and the other process takes it.
    await sleep(LEASE_MS + 100);
    expect(await second.holder()).toBeUndefined();
    expect(await second.tryAcquire()).toBe(true);
    expect(second.fence?.token).toBe("2");
    expect(await first.tryAcquire()).toBe(false);
  });

  it("is kept while renewed, and handed on at once when released", async () => {
    const first = await lease("p1");
    const second = await lease("p2");
    expect(await first.tryAcquire()).toBe(true);
    first.startRenewing();
    await sleep(3 * LEASE_MS);
    expect(await second.tryAcquire()).toBe(false);
    await first.release();
    expect(await second.tryAcquire()).toBe(true);
  });

  it("a store whose lease passed to another process commits nothing, and says why", async () => {
    const first = await lease("p1");
    const second = await lease("p2");
    expect(await first.tryAcquire()).toBe(true);
    const fenced: string[] = [];
    const stale = await fencedStore(first, (reason) => fenced.push(reason));
    await stale.commit([{ type: "put", key: "before", value: "1" }]);

    // As a process paused past its lease finds on resuming: another holds it now.
    await sleep(LEASE_MS + 100);
    expect(await second.tryAcquire()).toBe(true);
    const current = await fencedStore(second);

    const refused = stale.commit([
      { type: "put", key: "after", value: "stale" },
      { type: "del", key: "before" },
    ]);
    await expect(refused).rejects.toThrow(LeaseFencedError);
    await expect(refused).rejects.toThrow(/no longer holds the provider lease .* committed nothing/);
    expect(fenced).toHaveLength(1);
    expect(stale.unavailableReason()).toMatch(/no longer holds the provider lease/);
    await expect(stale.commit([{ type: "put", key: "later", value: "x" }])).rejects.toThrow(LeaseFencedError);
    // Nothing of the refused batch landed; the new holder writes as usual.
    expect(await current.get("before")).toBe("1");
    expect(await current.get("after")).toBeUndefined();
    await current.commit([{ type: "put", key: "after", value: "current" }]);
    expect(await current.get("after")).toBe("current");
  });

  it("a renewal that finds the lease gone makes it lost, once", async () => {
    const first = await lease("p1");
    expect(await first.tryAcquire()).toBe(true);
    const reasons: string[] = [];
    first.onLost((reason) => reasons.push(reason));
    first.startRenewing();
    await admin((c) => c.query(`UPDATE "${schema}".leases SET owner = 'someone else', token = token + 1`));
    for (let i = 0; i < 50 && reasons.length === 0; i++) await sleep(50);
    expect(reasons).toEqual(["the lease expired and may be held by another process now"]);
  });

  it("a takeover waits for a write in flight, which lands first and is seen by the new holder", async () => {
    const first = await lease("p1");
    const second = await lease("p2", 5000);
    expect(await first.tryAcquire()).toBe(true);
    const store = await fencedStore(first);
    // A transaction holding the lease row FOR SHARE, as PgStore's writes do, open past the expiry.
    const writer = new Client({ connectionString: url });
    await writer.connect();
    try {
      await writer.query("BEGIN");
      const held = await writer.query(
        `SELECT 1 FROM "${schema}".leases WHERE owner = $1 AND expires_at > clock_timestamp() FOR SHARE`,
        [first.owner],
      );
      expect(held.rowCount).toBe(1);
      await sleep(LEASE_MS + 100);
      let taken = false;
      const takeover = second.tryAcquire().then((result) => {
        taken = result;
        return result;
      });
      await sleep(300);
      expect(taken).toBe(false);
      await writer.query(
        `INSERT INTO "${schema}".kv (key, value) VALUES (convert_to('in flight', 'UTF8'), convert_to('landed', 'UTF8'))`,
      );
      await writer.query("COMMIT");
      expect(await takeover).toBe(true);
      expect(await store.get("in flight")).toBe("landed");
    } finally {
      await writer.end();
    }
  });

  it("a fenced process and a process holding the schema alone exclude each other", async () => {
    const alone = await PgStore.open({ url, schema, poolSize: 1 });
    const first = await lease("p1");
    expect(await first.tryAcquire()).toBe(true);
    await expect(fencedStore(first)).rejects.toThrow(/in use by a process without database.cluster/);
    await alone.close();
    await fencedStore(first);
    await expect(PgStore.open({ url, schema, poolSize: 1 })).rejects.toThrow(
      /in use by the cluster process p1 \(database.cluster\)/,
    );
  });
});
