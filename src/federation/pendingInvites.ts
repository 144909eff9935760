import { MimiError } from "../errors";
import type { JsonObject, LimitedEvent } from "../events/types";
import { createLogger, type Logger } from "../logging";
import { prefixEnd, type BatchOp, type KvStore } from "../store/kv";
import { systemTimer, type Timer } from "./queue/backoff";

/** An invite for one of our users to a room this server does not follow yet. */
export interface PendingInvite {
  roomId: string;
  userId: string;
  hubServer: string;
  inviter: string;
  roomVersion: string;
  /** LM-04 §Stripped State: context for the user, not verified. */
  strippedState: JsonObject[];
  event: LimitedEvent;
  receivedTs: number;
}

export const MAX_STRIPPED_STATE_ENTRIES = 20;
export const DEFAULT_MAX_STRIPPED_STATE_BYTES = 65_536;
export const DEFAULT_MAX_INVITES_PER_USER = 100;
export const DEFAULT_MAX_INVITES_TOTAL = 10_000;
export const DEFAULT_INVITE_MAX_AGE_MS = 30 * 24 * 60 * 60 * 1000;
export const DEFAULT_INVITE_PRUNE_INTERVAL_MS = 60 * 60 * 1000;

export interface PendingInvitesOptions {
  /** Pending invites kept per local user; the oldest is dropped first. Default 100. */
  maxPerUser?: number;
  /** Pending invites kept in all; the oldest is dropped first. Default 10,000. */
  maxTotal?: number;
  /** An invite older than this (by `receivedTs`) is gone. Default 30 days. */
  maxAgeMs?: number;
  /** Bytes of JSON kept of `strippedState`; entries past it are dropped. Default 65,536. */
  maxStrippedStateBytes?: number;
  /** How often `start()` removes expired invites (ms). Default 1 hour. */
  pruneIntervalMs?: number;
  now?: () => number;
  timer?: Timer;
  log?: Logger;
}

// Key layout. User and room IDs never contain U+0000.
//   v\0<user>\0<room>                 -> the invite (schema 1)
//   vi\0<receivedTs, 12 hex>\0<user>\0<room> -> ""  time index, oldest first
//   vm\0legacy                        -> "done" once every invite written before the index is in it
const SEP = "\u0000";
const INVITES = `v${SEP}`;
const INDEX = `vi${SEP}`;
const LEGACY_MARKER = `vm${SEP}legacy`;
const TS_DIGITS = 12;
const BATCH = 500;

const inviteKey = (userId: string, roomId: string) => `${INVITES}${userId}${SEP}${roomId}`;
const indexKey = (ts: number, userId: string, roomId: string) =>
  `${INDEX}${ts.toString(16).padStart(TS_DIGITS, "0")}${SEP}${userId}${SEP}${roomId}`;

function parseIndexKey(key: string): { ts: number; userId: string; roomId: string } {
  const ts = parseInt(key.slice(INDEX.length, INDEX.length + TS_DIGITS), 16);
  const [userId = "", roomId = ""] = key.slice(INDEX.length + TS_DIGITS + 1).split(SEP);
  return { ts, userId, roomId };
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new MimiError("M_INVALID_PARAM", `PendingInvites ${name} must be a positive integer, got ${value}`);
  }
  return value;
}

/** The longest prefix of `state`, at most 20 entries, whose JSON fits in `maxBytes`. */
function capStrippedState(state: JsonObject[], maxBytes: number): JsonObject[] {
  const kept: JsonObject[] = [];
  let bytes = 2;
  for (const entry of state.slice(0, MAX_STRIPPED_STATE_ENTRIES)) {
    bytes += Buffer.byteLength(JSON.stringify(entry), "utf8") + (kept.length > 0 ? 1 : 0);
    if (bytes > maxBytes) break;
    kept.push(entry);
  }
  return kept;
}

/**
 * Invites for our users to rooms we do not follow, from any server: bounded
 * per user and in total (the oldest is dropped first), and gone after
 * `maxAgeMs`.
 */
export class PendingInvites {
  readonly maxPerUser: number;
  readonly maxTotal: number;
  readonly maxAgeMs: number;
  readonly maxStrippedStateBytes: number;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly timer: Timer;
  private readonly log: Logger;
  /** user -> room -> receivedTs, for every stored invite (expired ones until pruned). */
  private readonly byUser = new Map<string, Map<string, number>>();
  private readonly listeners = new Set<(invite: PendingInvite) => void>();
  private total = 0;
  private ready: Promise<void> | undefined;
  /** Writes run one at a time, so the limits hold under concurrent invites. */
  private writes: Promise<unknown> = Promise.resolve();
  private started = false;
  private timerHandle: unknown;
  private pruning: Promise<unknown> | undefined;

  constructor(
    private readonly kv: KvStore,
    options: PendingInvitesOptions = {},
  ) {
    this.maxPerUser = positiveInteger("maxPerUser", options.maxPerUser ?? DEFAULT_MAX_INVITES_PER_USER);
    this.maxTotal = positiveInteger("maxTotal", options.maxTotal ?? DEFAULT_MAX_INVITES_TOTAL);
    this.maxAgeMs = positiveInteger("maxAgeMs", options.maxAgeMs ?? DEFAULT_INVITE_MAX_AGE_MS);
    this.maxStrippedStateBytes = positiveInteger(
      "maxStrippedStateBytes",
      options.maxStrippedStateBytes ?? DEFAULT_MAX_STRIPPED_STATE_BYTES,
    );
    this.intervalMs = positiveInteger(
      "pruneIntervalMs",
      options.pruneIntervalMs ?? DEFAULT_INVITE_PRUNE_INTERVAL_MS,
    );
    this.now = options.now ?? Date.now;
    this.timer = options.timer ?? systemTimer;
    this.log = options.log ?? createLogger("invites");
  }

  /**
   * Stores an invite, replacing one for the same room and user. Its stripped
   * state is cut to 20 entries and `maxStrippedStateBytes`. To stay within the
   * limits, the user's oldest invites, then the oldest of all, are dropped.
   */
  put(invite: PendingInvite): Promise<void> {
    if (!Number.isSafeInteger(invite.receivedTs) || invite.receivedTs < 0) {
      return Promise.reject(
        new MimiError("M_INVALID_PARAM", `invite receivedTs must be a timestamp, got ${invite.receivedTs}`),
      );
    }
    return this.write(() => this.putNow(invite));
  }

  async get(roomId: string, userId: string): Promise<PendingInvite | undefined> {
    const value = await this.kv.get(inviteKey(userId, roomId));
    if (value === undefined) return undefined;
    const invite = JSON.parse(value) as PendingInvite;
    return this.expired(invite.receivedTs) ? undefined : invite;
  }

  remove(roomId: string, userId: string): Promise<void> {
    return this.write(async () => {
      const ops: BatchOp[] = [{ type: "del", key: inviteKey(userId, roomId) }];
      const ts = this.byUser.get(userId)?.get(roomId);
      if (ts !== undefined) ops.push({ type: "del", key: indexKey(ts, userId, roomId) });
      await this.kv.commit(ops);
      this.forget(userId, roomId);
    });
  }

  /** Calls `listener` with each invite once it is stored; returns the unsubscribe function. */
  onStored(listener: (invite: PendingInvite) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Every invite that has not expired, oldest first (at most the configured total). */
  async all(): Promise<PendingInvite[]> {
    const invites: PendingInvite[] = [];
    for await (const [key] of this.kv.range({ gte: INDEX, lt: prefixEnd(INDEX) })) {
      const { userId, roomId } = parseIndexKey(key);
      const invite = await this.get(roomId, userId);
      if (invite !== undefined) invites.push(invite);
    }
    return invites;
  }

  /** The user's invites that have not expired. */
  async forUser(userId: string): Promise<PendingInvite[]> {
    const prefix = `${INVITES}${userId}${SEP}`;
    const invites: PendingInvite[] = [];
    for await (const [, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      const invite = JSON.parse(value) as PendingInvite;
      if (!this.expired(invite.receivedTs)) invites.push(invite);
    }
    return invites;
  }

  /** Stored invites, expired ones included until pruned. */
  async count(): Promise<number> {
    await this.init();
    return this.total;
  }

  /** Removes expired invites, oldest first, in batches. Returns how many were removed. */
  prune(): Promise<number> {
    return this.write(async () => {
      let removed = 0;
      for (;;) {
        const cutoff = this.now() - this.maxAgeMs;
        const doomed: string[] = [];
        for await (const [key] of this.kv.range({ gte: INDEX, lt: prefixEnd(INDEX), limit: BATCH })) {
          if (parseIndexKey(key).ts > cutoff) break;
          doomed.push(key);
        }
        if (doomed.length === 0) return removed;
        const ops: BatchOp[] = [];
        for (const key of doomed) {
          const { userId, roomId } = parseIndexKey(key);
          ops.push({ type: "del", key }, { type: "del", key: inviteKey(userId, roomId) });
        }
        await this.kv.commit(ops);
        for (const key of doomed) {
          const { userId, roomId } = parseIndexKey(key);
          this.forget(userId, roomId);
        }
        removed += doomed.length;
      }
    });
  }

  /** Prunes now and then every `pruneIntervalMs`, until `stop()`. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.started = false;
    if (this.timerHandle !== undefined) this.timer.clearTimeout(this.timerHandle);
    this.timerHandle = undefined;
    await this.pruning;
  }

  private schedule(delayMs: number): void {
    if (!this.started) return;
    this.timerHandle = this.timer.setTimeout(() => {
      this.timerHandle = undefined;
      this.pruning = this.prune()
        .catch((err: unknown) => this.log.warn("pruning pending invites failed", { error: err }))
        .finally(() => {
          this.pruning = undefined;
          this.schedule(this.intervalMs);
        });
    }, delayMs);
  }

  private expired(receivedTs: number): boolean {
    return receivedTs <= this.now() - this.maxAgeMs;
  }

  private write<T>(task: () => Promise<T>): Promise<T> {
    const run = this.writes.then(async () => {
      await this.init();
      return task();
    });
    this.writes = run.catch(() => undefined);
    return run;
  }

  private async putNow(invite: PendingInvite): Promise<void> {
    const { userId, roomId, receivedTs } = invite;
    const stored: PendingInvite = {
      ...invite,
      strippedState: capStrippedState(
        Array.isArray(invite.strippedState) ? invite.strippedState : [],
        this.maxStrippedStateBytes,
      ),
    };
    const ops: BatchOp[] = [];
    const dropped: { userId: string; roomId: string; ts: number; reason: string }[] = [];
    const drop = (user: string, room: string, ts: number, reason: string) => {
      dropped.push({ userId: user, roomId: room, ts, reason });
      ops.push({ type: "del", key: inviteKey(user, room) }, { type: "del", key: indexKey(ts, user, room) });
    };

    const replaced = this.byUser.get(userId)?.get(roomId);
    if (replaced !== undefined) ops.push({ type: "del", key: indexKey(replaced, userId, roomId) });
    const others = [...(this.byUser.get(userId) ?? new Map<string, number>())]
      .filter(([room]) => room !== roomId)
      .sort(([roomA, a], [roomB, b]) => a - b || (roomA < roomB ? -1 : 1));
    const cutoff = this.now() - this.maxAgeMs;
    let kept = others.length;
    for (const [room, ts] of others) {
      if (ts <= cutoff) drop(userId, room, ts, "expired");
      else if (kept >= this.maxPerUser) drop(userId, room, ts, "per-user limit");
      else continue;
      kept--;
    }

    let total = this.total - (replaced === undefined ? 0 : 1) - dropped.length;
    if (total >= this.maxTotal) {
      const doomed = new Set(dropped.map((d) => indexKey(d.ts, d.userId, d.roomId)));
      for await (const [key] of this.kv.range({ gte: INDEX, lt: prefixEnd(INDEX) })) {
        if (total < this.maxTotal) break;
        const old = parseIndexKey(key);
        if (doomed.has(key) || (old.userId === userId && old.roomId === roomId)) continue;
        drop(old.userId, old.roomId, old.ts, "total limit");
        total--;
      }
    }

    ops.push(
      { type: "put", key: inviteKey(userId, roomId), value: JSON.stringify(stored) },
      { type: "put", key: indexKey(receivedTs, userId, roomId), value: "" },
    );
    await this.kv.commit(ops);
    for (const d of dropped) {
      this.forget(d.userId, d.roomId);
      this.log.info("dropped a pending invite", {
        roomId: d.roomId,
        userId: d.userId,
        receivedTs: d.ts,
        reason: d.reason,
      });
    }
    if (replaced !== undefined) this.forget(userId, roomId);
    this.remember(userId, roomId, receivedTs);
    for (const listener of this.listeners) {
      try {
        listener(stored);
      } catch (err) {
        this.log.warn("an invite listener failed", { error: err });
      }
    }
  }

  private remember(userId: string, roomId: string, ts: number): void {
    let rooms = this.byUser.get(userId);
    if (rooms === undefined) {
      rooms = new Map();
      this.byUser.set(userId, rooms);
    }
    if (!rooms.has(roomId)) this.total++;
    rooms.set(roomId, ts);
  }

  private forget(userId: string, roomId: string): void {
    const rooms = this.byUser.get(userId);
    if (rooms?.delete(roomId) !== true) return;
    this.total--;
    if (rooms.size === 0) this.byUser.delete(userId);
  }

  private init(): Promise<void> {
    this.ready ??= this.load().catch((err: unknown) => {
      this.ready = undefined;
      throw err;
    });
    return this.ready;
  }

  /** Loads the time index; the first time, indexes invites stored before it existed. */
  private async load(): Promise<void> {
    const stale: BatchOp[] = [];
    for await (const [key] of this.kv.range({ gte: INDEX, lt: prefixEnd(INDEX) })) {
      const { ts, userId, roomId } = parseIndexKey(key);
      const earlier = this.byUser.get(userId)?.get(roomId);
      if (earlier !== undefined) stale.push({ type: "del", key: indexKey(earlier, userId, roomId) });
      this.remember(userId, roomId, ts);
    }
    if (stale.length > 0) await this.kv.commit(stale);
    if ((await this.kv.get(LEGACY_MARKER)) === "done") return;
    let cursor = INVITES;
    for (;;) {
      const entries: [string, string][] = [];
      for await (const entry of this.kv.range({ gte: cursor, lt: prefixEnd(INVITES), limit: BATCH })) {
        entries.push(entry);
      }
      const ops: BatchOp[] = [];
      for (const [key, value] of entries) {
        const [userId = "", roomId = ""] = key.slice(INVITES.length).split(SEP);
        if (this.byUser.get(userId)?.has(roomId) === true) continue;
        const { receivedTs } = JSON.parse(value) as Partial<PendingInvite>;
        const ts = Number.isSafeInteger(receivedTs) && receivedTs! >= 0 ? receivedTs! : this.now();
        ops.push({ type: "put", key: indexKey(ts, userId, roomId), value: "" });
        this.remember(userId, roomId, ts);
      }
      const last = entries.length < BATCH;
      if (last) ops.push({ type: "put", key: LEGACY_MARKER, value: "done" });
      if (ops.length > 0) await this.kv.commit(ops);
      if (last) return;
      cursor = entries[entries.length - 1]![0] + SEP;
    }
  }
}
