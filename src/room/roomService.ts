import { parseFullyFormedEvent, parseLimitedEvent } from "../events/envelope";
import { createLimitedEvent, computeEventId, computeLpduHash } from "../events/pdu";
import { EventFormatError } from "../events/errors";
import type { VerifyKeyLookup } from "../events/signatures";
import type { ServerSigningKey } from "../events/signingKey";
import type { FullyFormedEvent, JsonObject, LimitedEvent } from "../events/types";
import { makeRoomId, parseUserId, randomRoomLocalpart, serverNameOf } from "../identifiers";
import { getRoomVersion, DEFAULT_ROOM_VERSION } from "../roomVersions";
import type { AuthDecision, RoomStateView, RoomVersion } from "../roomVersions/types";
import type { BatchOp } from "../store/kv";
import type { RoomRecord, RoomStore, StoredEvent } from "../store/roomStore";
import { RoomError } from "./errors";
import { FollowerRoom, HubRoom, type SequencedEvent } from "./roomCore";
import { RoomState } from "./roomState";

export const DEFAULT_ENCRYPTION_ALGORITHM = "m.mls.v1.dhkemx25519-aes128gcm-sha256-ed25519";
const RECENT_LPDU_CAPACITY = 100_000;

/** Told to subscribers once an event is durably part of a room's history. */
export interface RoomEventNotice {
  roomId: string;
  seq: number;
  eventId: string;
  event: FullyFormedEvent;
  json: string;
  role: "hub" | "follower";
}

/** Operations to add to an event's append batch; sees the room state after the event. */
export type AppendHook = (notice: RoomEventNotice, state: RoomStateView) => BatchOp[];

export interface SubmitResult {
  eventId: string;
  seq: number;
  /** True when this limited event had been sequenced before (a retry): nothing was appended. */
  duplicate: boolean;
}

export interface ApplyResult {
  eventId: string;
  seq: number;
  status: "applied" | "duplicate";
}

interface LoadedRoom {
  record: RoomRecord;
  core: HubRoom | FollowerRoom;
  /** Follower events are applied one at a time: the duplicate check may need the store. */
  queue: Promise<unknown>;
  stopped: Error | undefined;
}

export interface RoomServiceOptions {
  signingKey: ServerSigningKey;
  store: RoomStore;
  keys: VerifyKeyLookup;
  now?: () => number;
}

/**
 * The room layer's I/O shell: it loads rooms from the store, runs the hub and
 * follower cores, appends each accepted event in one atomic batch, and tells
 * subscribers once it is durable. Events of one room are sequenced in order;
 * rooms are independent.
 */
export class RoomService {
  private readonly rooms = new Map<string, LoadedRoom>();
  private readonly recentLpdus = new Map<string, string>();
  private readonly listeners = new Set<(notice: RoomEventNotice) => void>();
  private appendHooks: AppendHook[] = [];
  private readonly now: () => number;

  private constructor(private readonly options: RoomServiceOptions) {
    this.now = options.now ?? Date.now;
  }

  get serverName(): string {
    return this.options.signingKey.serverName;
  }

  static async open(options: RoomServiceOptions): Promise<RoomService> {
    const service = new RoomService(options);
    for (const record of await options.store.loadRoomRecords()) {
      const version = requireVersion(record.roomVersion);
      const state = new RoomState();
      for (const entry of await options.store.loadState(record.roomId)) state.setEntry(entry);
      state.eventCount = record.headSeq;
      state.headEventId = record.headEventId;
      state.headType = record.headType;
      service.rooms.set(record.roomId, service.makeLoaded(record, version, state));
    }
    return service;
  }

  private makeLoaded(record: RoomRecord, version: RoomVersion, state: RoomState): LoadedRoom {
    const core =
      record.role === "hub"
        ? new HubRoom(record.roomId, version, state, this.options.signingKey)
        : new FollowerRoom(record.roomId, version, state, record.hubServer);
    return { record, core, queue: Promise.resolve(), stopped: undefined };
  }

  /**
   * Registers a hook whose operations join the batch that appends each event
   * (e.g. queueing it for other servers), so both land or neither does.
   */
  addAppendHook(hook: AppendHook): void {
    this.appendHooks.push(hook);
  }

  subscribe(listener: (notice: RoomEventNotice) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  roomIds(): string[] {
    return [...this.rooms.keys()];
  }

  room(roomId: string): { record: RoomRecord; state: RoomState; version: RoomVersion } | undefined {
    const loaded = this.rooms.get(roomId);
    if (loaded === undefined) return undefined;
    return { record: { ...loaded.record }, state: loaded.core.state, version: loaded.core.version };
  }

  private requireRoom(roomId: string): LoadedRoom {
    const loaded = this.rooms.get(roomId);
    if (loaded === undefined) throw new RoomError("M_NOT_FOUND", `unknown room ${roomId}`);
    if (loaded.stopped !== undefined) {
      throw new RoomError(
        "M_UNKNOWN",
        `room ${roomId} stopped after a storage failure: ${loaded.stopped.message}`,
      );
    }
    return loaded;
  }

  /** Origin side: a limited event for one of our users, hashed and (unless we are the hub) signed. */
  buildLimitedEvent(
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey?: string,
  ): LimitedEvent {
    const loaded = this.requireRoom(roomId);
    return this.buildFor(
      loaded.record.hubServer,
      loaded.core.version,
      roomId,
      sender,
      type,
      content,
      stateKey,
    );
  }

  private buildFor(
    hubServer: string,
    version: RoomVersion,
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey: string | undefined,
  ): LimitedEvent {
    if (parseUserId(sender).serverName !== this.serverName) {
      throw new RoomError("M_FORBIDDEN", `${sender} is not a user of ${this.serverName}`);
    }
    const template = {
      room_id: roomId,
      type,
      sender,
      origin_server_ts: this.now(),
      hub_server: hubServer,
      content,
      ...(stateKey === undefined ? {} : { state_key: stateKey }),
    };
    return createLimitedEvent(template, this.options.signingKey, version);
  }

  /**
   * Creates a room with us as its hub: the create event, then the creator's
   * join (signaling draft §Room Structure).
   */
  async createRoom(
    creator: string,
    options: { roomLocalpart?: string; encryptionAlgorithm?: string; roomVersion?: string } = {},
  ): Promise<string> {
    const version = requireVersion(options.roomVersion ?? DEFAULT_ROOM_VERSION);
    const roomId = makeRoomId(options.roomLocalpart ?? randomRoomLocalpart(), this.serverName);
    if (this.rooms.has(roomId)) throw new RoomError("M_INVALID_PARAM", `room ${roomId} already exists`);
    const createContent = {
      policy_id: version.id,
      encryption_algorithm: options.encryptionAlgorithm ?? DEFAULT_ENCRYPTION_ALGORITHM,
    };
    const create = this.buildFor(
      this.serverName,
      version,
      roomId,
      creator,
      "m.room.create",
      createContent,
      "",
    );
    const record: RoomRecord = {
      roomId,
      roomVersion: version.id,
      hubServer: this.serverName,
      role: "hub",
      headSeq: 0,
      headEventId: "",
      headType: "",
    };
    const loaded = this.makeLoaded(record, version, new RoomState());
    const core = loaded.core as HubRoom;
    const sequenced = core.sequence(create, this.serverName, this.options.keys);
    this.rooms.set(roomId, loaded);
    const join = this.buildLimitedEvent(roomId, creator, "m.room.user", { participation: "join" }, creator);
    const joined = core.sequence(join, this.serverName, this.options.keys);
    await Promise.all([this.persist(loaded, sequenced), this.persist(loaded, joined)]);
    return roomId;
  }

  /**
   * Hub: take a limited event from one of our users or from a follower
   * (`origin`, authenticated by the transport), sequence it and store it.
   * A limited event already sequenced is not appended again: its event ID is returned.
   */
  submitLimitedEvent(input: unknown, origin: string): Promise<SubmitResult> {
    return this.submitParsedLimitedEvent(parseLimitedEvent(input), origin);
  }

  /** `submitLimitedEvent` for a caller that has already checked the shape with `parseLimitedEvent`. */
  async submitParsedLimitedEvent(lpdu: LimitedEvent, origin: string): Promise<SubmitResult> {
    const loaded = this.requireRoom(lpdu.room_id);
    if (loaded.record.role !== "hub") {
      throw new RoomError(
        "M_WRONG_HUB",
        `${this.serverName} is not the hub of ${lpdu.room_id}; send limited events to ${loaded.record.hubServer}`,
      );
    }
    // The retry lookup below trusts the LPDU hash, so it is checked first, and so is the origin.
    if (computeLpduHash(lpdu) !== lpdu.hashes.lpdu.sha256) {
      throw new EventFormatError("limited event: hashes.lpdu.sha256 does not match the event's content");
    }
    if (serverNameOf(lpdu.sender) !== origin) {
      throw new RoomError("M_FORBIDDEN", `server ${origin} cannot send events for ${lpdu.sender}`);
    }
    const recentKey = `${lpdu.room_id}\u0000${lpdu.hashes.lpdu.sha256}`;
    let known = this.recentLpdus.get(recentKey);
    if (known === undefined) {
      const stored = this.options.store.findByLpduHashSync(lpdu.room_id, lpdu.hashes.lpdu.sha256);
      known =
        stored === "unavailable"
          ? await this.options.store.findByLpduHash(lpdu.room_id, lpdu.hashes.lpdu.sha256)
          : stored;
      // After an await an identical event may have been sequenced meanwhile.
      known ??= this.recentLpdus.get(recentKey);
    }
    if (known !== undefined) return this.duplicateOf(known);
    const sequenced = (loaded.core as HubRoom).sequence(lpdu, origin, this.options.keys, true);
    this.rememberLpdu(recentKey, sequenced.eventId);
    await this.persist(loaded, sequenced);
    return { eventId: sequenced.eventId, seq: sequenced.seq, duplicate: false };
  }

  private async duplicateOf(eventId: string): Promise<SubmitResult> {
    const where = await this.options.store.locateEvent(eventId);
    return { eventId, seq: where?.seq ?? -1, duplicate: true };
  }

  private rememberLpdu(key: string, eventId: string): void {
    this.recentLpdus.set(key, eventId);
    if (this.recentLpdus.size > RECENT_LPDU_CAPACITY) {
      const oldest = this.recentLpdus.keys().next().value as string;
      this.recentLpdus.delete(oldest);
    }
  }

  /** Our users' events: sequenced here when we are the hub. */
  async sendAsHub(
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey?: string,
  ): Promise<SubmitResult> {
    const lpdu = this.buildLimitedEvent(roomId, sender, type, content, stateKey);
    return this.submitParsedLimitedEvent(lpdu, this.serverName);
  }

  /**
   * Follower: start following a room from its create event, hub being the
   * create event's sender's server (LM-04 §Hub Selection).
   */
  followRoom(createEventInput: unknown): Promise<ApplyResult> {
    return this.followParsedRoom(parseFullyFormedEvent(createEventInput));
  }

  /** `followRoom` for a caller that has already checked the shape with `parseFullyFormedEvent`. */
  async followParsedRoom(event: FullyFormedEvent): Promise<ApplyResult> {
    if (event.type !== "m.room.create") {
      throw new RoomError(
        "M_INVALID_PARAM",
        `a room is followed from its m.room.create event, got ${event.type}`,
      );
    }
    const existing = this.rooms.get(event.room_id);
    if (existing !== undefined) return this.applyParsedEvent(event);
    const policyId = event.content.policy_id;
    const version = typeof policyId === "string" ? getRoomVersion(policyId) : undefined;
    if (version === undefined) {
      throw new RoomError(
        "M_UNSUPPORTED_ROOM_VERSION",
        `room version ${JSON.stringify(policyId)} is not supported`,
      );
    }
    const hubServer = serverNameOf(event.sender);
    const record: RoomRecord = {
      roomId: event.room_id,
      roomVersion: version.id,
      hubServer,
      role: "follower",
      headSeq: 0,
      headEventId: "",
      headType: "",
    };
    const loaded = this.makeLoaded(record, version, new RoomState());
    const sequenced = (loaded.core as FollowerRoom).apply(event, this.options.keys);
    this.rooms.set(event.room_id, loaded);
    await this.persist(loaded, sequenced);
    return { eventId: sequenced.eventId, seq: sequenced.seq, status: "applied" };
  }

  /**
   * Follower: apply one fully-formed event from the hub. Duplicates are
   * no-ops; an event whose parent we lack throws a GapError naming it.
   */
  applyEvent(input: unknown): Promise<ApplyResult> {
    return this.applyParsedEvent(parseFullyFormedEvent(input));
  }

  /** `applyEvent` for a caller that has already checked the shape with `parseFullyFormedEvent`. */
  async applyParsedEvent(event: FullyFormedEvent): Promise<ApplyResult> {
    const loaded = this.requireRoom(event.room_id);
    if (loaded.record.role !== "follower") {
      throw new RoomError(
        "M_FORBIDDEN",
        `${this.serverName} is the hub of ${event.room_id}; it takes limited events`,
      );
    }
    const run = loaded.queue.then(() => this.applyInOrder(loaded, event));
    loaded.queue = run.catch(() => undefined);
    return run;
  }

  private async applyInOrder(loaded: LoadedRoom, event: FullyFormedEvent): Promise<ApplyResult> {
    const core = loaded.core as FollowerRoom;
    if (core.placement(event) !== "next") {
      const eventId = computeEventId(event, core.version);
      const where = await this.options.store.locateEvent(eventId);
      if (where !== undefined) return { eventId, seq: where.seq, status: "duplicate" };
      const parent = event.prev_events[0];
      if (parent !== undefined && (await this.options.store.locateEvent(parent)) !== undefined) {
        throw new RoomError(
          "M_NOT_LINEAR",
          `event ${eventId} follows ${parent}, but our head is ${core.state.headEventId ?? "(none)"}: ` +
            "the room's history cannot fork",
        );
      }
      throw core.gapFor(event);
    }
    const sequenced = core.apply(event, this.options.keys);
    await this.persist(loaded, sequenced);
    return { eventId: sequenced.eventId, seq: sequenced.seq, status: "applied" };
  }

  private async persist(loaded: LoadedRoom, sequenced: SequencedEvent): Promise<void> {
    const record: RoomRecord = {
      ...loaded.record,
      headSeq: sequenced.seq,
      headEventId: sequenced.eventId,
      headType: sequenced.event.type,
    };
    loaded.record = record;
    const ops = this.options.store.appendOps(record, {
      roomId: sequenced.roomId,
      seq: sequenced.seq,
      eventId: sequenced.eventId,
      json: sequenced.json,
      stateEntry: sequenced.stateEntry,
      lpduHash: record.role === "hub" ? sequenced.lpduHash : undefined,
    });
    const notice: RoomEventNotice = {
      roomId: sequenced.roomId,
      seq: sequenced.seq,
      eventId: sequenced.eventId,
      event: sequenced.event,
      json: sequenced.json,
      role: record.role,
    };
    for (const hook of this.appendHooks) ops.push(...hook(notice, loaded.core.state));
    try {
      await this.options.store.kv.commit(ops);
    } catch (err) {
      loaded.stopped = err as Error;
      throw err;
    }
    for (const listener of this.listeners) listener(notice);
  }

  /** Would the room accept this event from this sender now? (For make_* and invite pre-checks.) */
  checkAllowed(
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey?: string,
  ): AuthDecision {
    const loaded = this.requireRoom(roomId);
    const event = { type, sender, content, roomId, ...(stateKey === undefined ? {} : { stateKey }) };
    return loaded.core.version.authorize(loaded.core.state, event);
  }

  /** The state before `eventId` (LM-04 §State Events), rebuilt by replaying the history up to it. */
  async stateBefore(roomId: string, eventId: string): Promise<{ state: RoomState; seq: number } | undefined> {
    this.requireRoom(roomId);
    const where = await this.options.store.locateEvent(eventId);
    if (where === undefined || where.roomId !== roomId) return undefined;
    const state = new RoomState();
    const BATCH = 1000;
    for (let from = 1; from < where.seq; from += BATCH) {
      const events = await this.options.store.getEvents(roomId, from, Math.min(BATCH, where.seq - from));
      for (const stored of events) state.append(stored.eventId, JSON.parse(stored.json) as FullyFormedEvent);
    }
    return { state, seq: where.seq };
  }

  /** Events up to and including `seq`, newest first. */
  getEventsBackwards(roomId: string, toSeq: number, limit: number): Promise<StoredEvent[]> {
    this.requireRoom(roomId);
    return this.options.store.getEventsBackwards(roomId, toSeq, limit);
  }

  getEvents(roomId: string, fromSeq: number, limit: number): Promise<StoredEvent[]> {
    this.requireRoom(roomId);
    return this.options.store.getEvents(roomId, fromSeq, limit);
  }

  getEvent(eventId: string): Promise<StoredEvent | undefined> {
    return this.options.store.getEvent(eventId);
  }
}

function requireVersion(id: string): RoomVersion {
  const version = getRoomVersion(id);
  if (version === undefined)
    throw new RoomError("M_UNSUPPORTED_ROOM_VERSION", `room version ${id} is not supported`);
  return version;
}
