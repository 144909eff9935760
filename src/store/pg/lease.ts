import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { Client, escapeIdentifier } from "pg";
import { StoreError } from "../levelStore";

/** The one resource leased today: being the active process of a provider's cluster. */
export const PROVIDER_RESOURCE = "provider";

/** What the lease row tells the other processes about its holder: where to forward requests. */
export interface LeaseOwnerInfo {
  /** A readable name for logs (the config's `process_name`, or host and pid). */
  name: string;
  /** Base URLs of the holder's listeners, by kind: `federation`, `admin`, `appservice`. */
  urls: Record<string, string>;
}

/** What a write transaction checks (PgStore's `fence`): this owner still holds this token. */
export interface LeaseFence {
  readonly resource: string;
  readonly owner: string;
  readonly token: string;
}

export interface LeaseHolder {
  owner: string;
  token: string;
  expiresAt: Date;
  info: LeaseOwnerInfo;
}

export interface PgLeaseOptions {
  url: string;
  schema: string;
  /** How long a lease lasts without renewal (ms); renewed every third of it. */
  leaseMs: number;
  info: LeaseOwnerInfo;
  resource?: string;
}

const CONNECT_TIMEOUT_MS = 10_000;

/**
 * A lease on one resource of a schema's `leases` table, for one process: `tryAcquire` takes it
 * when it is free or expired (the token grows by one), `startRenewing` keeps it, `release` hands
 * it on at once. Expiry is judged by the database's clock alone (`clock_timestamp()`), so the
 * processes' clocks need not agree.
 *
 * Safety does not rest on renewals: PgStore checks the fence inside every write transaction,
 * locking the row FOR SHARE, and a takeover's UPDATE waits for that lock. So a write either
 * lands before the takeover (and the new holder, loading after it, sees it) or sees the lease
 * gone and commits nothing.
 */
export class PgLease {
  /** This process's identity in the lease rows: new at every start, so a restart is a new owner. */
  readonly owner: string;
  private token: string | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private lost = false;
  private lastRenewStarted = 0;
  private readonly lostListeners = new Set<(reason: string) => void>();
  private readonly table: string;
  private readonly resource: string;

  private constructor(
    private readonly client: Client,
    private readonly options: PgLeaseOptions,
  ) {
    this.owner = `${options.info.name}/${randomBytes(6).toString("hex")}`;
    this.table = `${escapeIdentifier(options.schema)}.${escapeIdentifier("leases")}`;
    this.resource = options.resource ?? PROVIDER_RESOURCE;
  }

  /** Connects a session of its own for the lease (the store's pool may be busy when renewals are due). */
  static async open(options: PgLeaseOptions): Promise<PgLease> {
    if (!Number.isSafeInteger(options.leaseMs) || options.leaseMs < 300) {
      throw new StoreError(`the lease duration ${options.leaseMs} ms is below 300 ms`);
    }
    const client = new Client({
      connectionString: options.url,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      application_name: "mimi-appservice (lease)",
      // A takeover waits for writers' FOR SHARE locks; never longer than a lease.
      lock_timeout: options.leaseMs,
    });
    client.on("error", () => undefined);
    try {
      await client.connect();
    } catch (err) {
      await client.end().catch(() => undefined);
      throw new StoreError(`cannot connect to PostgreSQL for the cluster lease: ${(err as Error).message}`);
    }
    return new PgLease(client, options);
  }

  static defaultName(): string {
    return `${hostname()}-${process.pid}`;
  }

  /** The fence for PgStore, once acquired. */
  get fence(): LeaseFence | undefined {
    return this.token === undefined
      ? undefined
      : { resource: this.resource, owner: this.owner, token: this.token };
  }

  /** Takes the lease if no one holds it or its holder's expired; true if this process holds it now. */
  async tryAcquire(): Promise<boolean> {
    const started = Date.now();
    const result = await this.client.query<{ token: string }>(
      `INSERT INTO ${this.table} (resource, owner, token, expires_at, owner_info)
       VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond', $4)
       ON CONFLICT (resource) DO UPDATE
         SET owner = EXCLUDED.owner, token = ${this.table}.token + 1,
             expires_at = EXCLUDED.expires_at, owner_info = EXCLUDED.owner_info
         WHERE ${this.table}.expires_at <= clock_timestamp()
       RETURNING token::text AS token`,
      [this.resource, this.owner, this.options.leaseMs, JSON.stringify(this.options.info)],
    );
    const row = result.rows[0];
    if (row === undefined) return false;
    this.token = row.token;
    this.lastRenewStarted = started;
    return true;
  }

  /** The current holder, if the lease is held and not expired. */
  async holder(): Promise<LeaseHolder | undefined> {
    const result = await this.client.query<{
      owner: string;
      token: string;
      expires_at: Date;
      owner_info: LeaseOwnerInfo;
    }>(
      `SELECT owner, token::text AS token, expires_at, owner_info FROM ${this.table}
       WHERE resource = $1 AND expires_at > clock_timestamp()`,
      [this.resource],
    );
    const row = result.rows[0];
    return row === undefined
      ? undefined
      : { owner: row.owner, token: row.token, expiresAt: row.expires_at, info: row.owner_info };
  }

  /**
   * Renews every third of the lease. A renewal that finds the lease gone, or no renewal landing
   * for a whole lease, makes the lease lost: `onLost` listeners are told once.
   */
  startRenewing(): void {
    if (this.token === undefined) throw new Error("startRenewing before the lease was acquired");
    const period = Math.max(100, Math.floor(this.options.leaseMs / 3));
    const tick = async () => {
      this.renewTimer = undefined;
      if (this.lost) return;
      if (Date.now() - this.lastRenewStarted > this.options.leaseMs) {
        this.markLost(`no renewal of the lease landed for ${this.options.leaseMs} ms`);
        return;
      }
      const started = Date.now();
      try {
        const renewed = await this.client.query(
          `UPDATE ${this.table} SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
           WHERE resource = $1 AND owner = $2 AND token = $3::bigint AND expires_at > clock_timestamp()`,
          [this.resource, this.owner, this.token, this.options.leaseMs],
        );
        if (renewed.rowCount !== 1) {
          this.markLost("the lease expired and may be held by another process now");
          return;
        }
        this.lastRenewStarted = started;
      } catch {
        // The next tick tries again; a lease's worth of failures makes it lost.
      }
      if (!this.lost) this.renewTimer = setTimeout(() => void tick(), period);
    };
    this.renewTimer = setTimeout(() => void tick(), period);
  }

  onLost(listener: (reason: string) => void): () => void {
    this.lostListeners.add(listener);
    return () => this.lostListeners.delete(listener);
  }

  /** Called by the store when its fence check failed: the lease is gone. */
  markLost(reason: string): void {
    if (this.lost) return;
    this.lost = true;
    if (this.renewTimer !== undefined) clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
    for (const listener of this.lostListeners) {
      try {
        listener(reason);
      } catch {
        // Each listener is its own concern.
      }
    }
  }

  /** Ends the lease now (after the last write), so a standby takes over without waiting for expiry. */
  async release(): Promise<void> {
    if (this.renewTimer !== undefined) clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
    if (this.token !== undefined && !this.lost) {
      await this.client
        .query(
          `UPDATE ${this.table} SET expires_at = clock_timestamp()
           WHERE resource = $1 AND owner = $2 AND token = $3::bigint`,
          [this.resource, this.owner, this.token],
        )
        .catch(() => undefined);
    }
    this.lost = true;
  }

  async close(): Promise<void> {
    if (this.renewTimer !== undefined) clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
    this.lost = true;
    await this.client.end().catch(() => undefined);
  }
}
