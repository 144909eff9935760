import { parseFullyFormedEvent, parseLimitedEvent } from "../events/envelope";
import {
  createLimitedEvent,
  computeEventId,
  computeLpduHash,
  type FullyFormedVerifyOptions,
  type OwnSignature,
} from "../events/pdu";
import { EventFormatError } from "../events/errors";
import type { VerifyKeyLookup } from "../events/signatures";
import type { ServerSigningKey } from "../events/signingKey";
import type { FullyFormedEvent, JsonObject, LimitedEvent } from "../events/types";
import { makeRoomId, parseUserId, randomRoomLocalpart, serverNameOf } from "../identifiers";
import { getRoomVersion, DEFAULT_ROOM_VERSION } from "../roomVersions";
import type { AuthDecision, RoomStateView, RoomVersion, StateEntry } from "../roomVersions/types";
import type { BatchOp } from "../store/kv";
import type { RoomRecord, RoomStore, StoredEvent } from "../store/roomStore";
import { RoomError } from "./errors";
import { ExtensionRejection, type FollowUpEvent, type RoomExtension } from "./extension";
import { FollowerRoom, HubRoom, type SequencedEvent } from "./roomCore";
import { RoomState } from "./roomState";

const RECENT_CAPACITY = 100_000;
/** Follow-ups of follow-ups are allowed, to this depth, so an extension cannot loop forever. */
const MAX_FOLLOW_UP_DEPTH = 4;
/** Signatures of our own LPDUs kept for their echo from the hub (about 150 bytes each). */
const OWN_SIGNATURES_KEPT = 10_000;
/** How far ahead of the hub's clock an LPDU's `origin_server_ts` may be. */
export const MAX_CLOCK_SKEW_MS = 5 * 60_000;

/** Told to subscribers once an event is durably part of a room's history. */
export interface RoomEventNotice {
  roomId: string;
  seq: number;
  eventId: string;
  event: FullyFormedEvent;
  json: string;
  role: "hub" | "follower";
}

/**
 * Operations to add to an event's append batch, and what to do once that
 * batch is durable; sees the room state after the event. A hook that throws
 * refuses the event (nothing of it is written).
 */
export type AppendHook = (
  notice: RoomEventNotice,
  stateAfter: RoomStateView,
  version: RoomVersion,
) => AppendHookResult | undefined;

export interface AppendHookResult {
  ops: BatchOp[];
  /** Runs after the batch is durable (never if it is not). */
  afterCommit?: () => void;
}

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

/** One limited event for the hub, from one of our users or from a follower. */
export interface LimitedSubmission {
  lpdu: LimitedEvent;
  /** The server it came from (authenticated by the transport), or our own name. */
  origin: string;
  /** Written in the same batch as the event, if it is sequenced (e.g. an idempotency record). */
  extraOps?: BatchOp[];
  /** Built by `buildLimitedEvent` in this process: its LPDU hash need not be checked again. */
  builtHere?: boolean;
}

/** The outcome of one item of a batch: its result, or the error that refused it. */
export type Outcome<T> = { ok: true; value: T } | { ok: false; error: Error };

interface LoadedRoom {
  /** As of the last durable event. */
  record: RoomRecord;
  version: RoomVersion;
  core: HubRoom | FollowerRoom;
  /** What the core decides on: every event handed to the store, durable or not yet. */
  working: RoomState;
  /** What everyone else reads: only durable events. */
  committed: RoomState;
  extWorking: unknown[];
  extCommitted: unknown[];
  /** Follower checks that may need the store run one at a time, in arrival order. */
  queue: Promise<unknown>;
  stopped: Error | undefined;
}

interface RecentEvent {
  eventId: string;
  seq: number;
}

/** Events decided in one synchronous pass, written as one atomic batch. */
class PendingBatch {
  readonly ops: BatchOp[] = [];
  /** Each event with the extension states of its room before and after it. */
  readonly appended: {
    loaded: LoadedRoom;
    sequenced: SequencedEvent;
    extBefore: unknown[];
    extAfter: unknown[];
    afterCommit: (() => void)[];
  }[] = [];
  readonly newRooms: LoadedRoom[] = [];
}

export interface RoomServiceOptions {
  signingKey: ServerSigningKey;
  store: RoomStore;
  keys: VerifyKeyLookup;
  extensions?: readonly RoomExtension[];
  now?: () => number;
  onListenerError?: (error: unknown) => void;
}

/**
 * The room layer's I/O shell: it loads rooms from the store, runs the hub and
 * follower cores, appends accepted events in atomic batches, and tells
 * subscribers once they are durable. The cores decide on a *working* state
 * that runs ahead of the store while batches are being written; everyone else
 * reads the *committed* state, which moves only after a write succeeded. A
 * failed write stops the rooms it touched until the provider is restarted.
 */
export class RoomService {
  private readonly rooms = new Map<string, LoadedRoom>();
  /** Rooms created or first followed in a batch still being written. */
  private readonly pendingRooms = new Map<string, LoadedRoom>();
  private readonly recentLpdus = new Map<string, RecentEvent>();
  private readonly recentEvents = new Map<string, RecentEvent>();
  private readonly listeners = new Set<(notice: RoomEventNotice) => void>();
  private readonly extensions: readonly RoomExtension[];
  private appendHooks: AppendHook[] = [];
  private readonly now: () => number;

  private constructor(private readonly options: RoomServiceOptions) {
    this.now = options.now ?? Date.now;
    this.extensions = options.extensions ?? [];
  }

  get serverName(): string {
    return this.options.signingKey.serverName;
  }

  get store(): RoomStore {
    return this.options.store;
  }

  static async open(options: RoomServiceOptions): Promise<RoomService> {
    const service = new RoomService(options);
    for (const record of await options.store.loadRoomRecords()) {
      const version = requireVersion(record.roomVersion);
      const entries = await options.store.loadState(record.roomId);
      const states = [new RoomState(), new RoomState()] as const;
      for (const state of states) {
        for (const entry of entries) state.setEntry(entry);
        state.eventCount = record.headSeq;
        state.headEventId = record.headEventId;
        state.headType = record.headType;
      }
      const ext = await service.loadExtensions(record.roomId);
      service.rooms.set(record.roomId, service.makeLoaded(record, version, states, ext));
    }
    return service;
  }

  private async loadExtensions(roomId: string): Promise<unknown[]> {
    return Promise.all(this.extensions.map((ext) => ext.load(roomId)));
  }

  private makeLoaded(
    record: RoomRecord,
    version: RoomVersion,
    [working, committed]: readonly [RoomState, RoomState],
    ext: unknown[],
  ): LoadedRoom {
    const core =
      record.role === "hub"
        ? new HubRoom(record.roomId, version, working, this.options.signingKey)
        : new FollowerRoom(record.roomId, version, working, record.hubServer);
    return {
      record,
      version,
      core,
      working,
      committed,
      extWorking: [...ext],
      extCommitted: [...ext],
      queue: Promise.resolve(),
      stopped: undefined,
    };
  }

  /**
   * Registers a hook whose operations join the batch that appends each event
   * (e.g. queueing it for other servers), so both land or neither does.
   */
  addAppendHook(hook: AppendHook): void {
    this.appendHooks.push(hook);
  }

  /** Called once per event after it is durable, in history order per room. A wake-up, not a feed. */
  subscribe(listener: (notice: RoomEventNotice) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  roomIds(): string[] {
    return [...this.rooms.keys()];
  }

  /** Rooms stopped after a failed write, with the failure: they refuse everything until a restart. */
  stoppedRooms(): { roomId: string; reason: string }[] {
    return [...this.rooms.values()]
      .filter((loaded) => loaded.stopped !== undefined)
      .map((loaded) => ({ roomId: loaded.record.roomId, reason: loaded.stopped!.message }));
  }

  /** The room as of its last durable event. */
  room(roomId: string): { record: RoomRecord; state: RoomState; version: RoomVersion } | undefined {
    const loaded = this.rooms.get(roomId);
    if (loaded === undefined) return undefined;
    return { record: { ...loaded.record }, state: loaded.committed, version: loaded.version };
  }

  /** The committed state of an extension for a room (e.g. for answering reads). */
  extensionState<S>(roomId: string, extension: RoomExtension<S>): S | undefined {
    const loaded = this.rooms.get(roomId);
    const index = this.extensions.indexOf(extension as RoomExtension);
    if (loaded === undefined || index < 0) return undefined;
    return loaded.extCommitted[index] as S;
  }

  private requireRoom(roomId: string): LoadedRoom {
    const loaded = this.rooms.get(roomId);
    if (loaded === undefined) throw new RoomError("M_NOT_FOUND", `unknown room ${roomId}`);
    if (loaded.stopped !== undefined) {
      throw new RoomError(
        "M_UNKNOWN",
        `room ${roomId} stopped after a storage failure (${loaded.stopped.message}); restart the provider`,
      );
    }
    return loaded;
  }

  /** Origin side: a limited event for one of our users, hashed and signed. */
  buildLimitedEvent(
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey?: string,
  ): LimitedEvent {
    const loaded = this.requireRoom(roomId);
    return this.buildFor(loaded.record.hubServer, loaded.version, roomId, sender, type, content, stateKey);
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
    const lpdu = createLimitedEvent(template, this.options.signingKey, version);
    if (hubServer !== this.serverName) this.rememberOwnSignature(lpdu);
    return lpdu;
  }

  /** Our LPDUs' signatures, so the hub's echo of one needs no signature check of ours (bounded, oldest out). */
  private readonly ownSignatures = new Map<string, OwnSignature>();
  private readonly verifyOptions: FullyFormedVerifyOptions = {
    ownSignature: (lpduHash) => this.ownSignatures.get(lpduHash),
  };

  private rememberOwnSignature(lpdu: LimitedEvent): void {
    const { keyId } = this.options.signingKey;
    const signature = lpdu.signatures[this.serverName]?.[keyId];
    if (signature === undefined) return;
    this.ownSignatures.set(lpdu.hashes.lpdu.sha256, { keyId, signature });
    if (this.ownSignatures.size > OWN_SIGNATURES_KEPT) {
      this.ownSignatures.delete(this.ownSignatures.keys().next().value as string);
    }
  }

  /**
   * Creates a room with us as its hub: the create event, then the creator's
   * join (signaling draft §Room Structure), in one batch.
   */
  async createRoom(
    creator: string,
    options: {
      roomLocalpart?: string;
      encryptionAlgorithm?: string;
      roomVersion?: string;
      extraOps?: BatchOp[];
    } = {},
  ): Promise<string> {
    const version = requireVersion(options.roomVersion ?? DEFAULT_ROOM_VERSION);
    const roomId = makeRoomId(options.roomLocalpart ?? randomRoomLocalpart(), this.serverName);
    if (this.rooms.has(roomId) || this.pendingRooms.has(roomId)) {
      throw new RoomError("M_INVALID_PARAM", `room ${roomId} already exists`);
    }
    const createContent = version.createContent(options.encryptionAlgorithm);
    const create = this.buildFor(
      this.serverName,
      version,
      roomId,
      creator,
      version.createEventType,
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
    const ext = await this.loadExtensions(roomId);
    const loaded = this.makeLoaded(record, version, [new RoomState(), new RoomState()], ext);
    const batch = new PendingBatch();
    batch.newRooms.push(loaded);
    this.pendingRooms.set(roomId, loaded);
    try {
      this.sequenceInto(batch, loaded, create, this.serverName, 0);
      const join = this.buildFor(
        this.serverName,
        version,
        roomId,
        creator,
        version.membership.eventType,
        version.membership.content("join"),
        creator,
      );
      this.sequenceInto(batch, loaded, join, this.serverName, 0);
      batch.ops.push(...(options.extraOps ?? []));
    } catch (err) {
      this.pendingRooms.delete(roomId);
      throw err;
    }
    await this.write(batch);
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
  async submitParsedLimitedEvent(
    lpdu: LimitedEvent,
    origin: string,
    extraOps?: BatchOp[],
  ): Promise<SubmitResult> {
    const [outcome] = await this.submitLimitedEvents([{ lpdu, origin, ...(extraOps ? { extraOps } : {}) }]);
    if (!outcome!.ok) throw outcome!.error;
    return outcome!.value;
  }

  /**
   * Hub: sequences many limited events (e.g. one inbound transaction) in
   * order and writes all that were accepted in one atomic batch. Each item
   * gets its own outcome; a refused item changes nothing.
   */
  async submitLimitedEvents(items: readonly LimitedSubmission[]): Promise<Outcome<SubmitResult>[]> {
    const outcomes: (Outcome<SubmitResult> | undefined)[] = items.map((item) => {
      try {
        this.precheckLimited(item.lpdu, item.origin, item.builtHere === true);
        return undefined;
      } catch (err) {
        return { ok: false, error: err as Error };
      }
    });
    await Promise.all(
      items.map(async (item, i) => {
        if (outcomes[i] !== undefined) return;
        try {
          await this.prepareExtensions(item.lpdu.room_id, item.lpdu);
          if (
            this.options.store.findByLpduHashSync(item.lpdu.room_id, item.lpdu.hashes.lpdu.sha256) ===
            "unavailable"
          ) {
            const stored = await this.options.store.findByLpduHash(
              item.lpdu.room_id,
              item.lpdu.hashes.lpdu.sha256,
            );
            if (stored !== undefined) outcomes[i] = { ok: true, value: await this.duplicateOf(stored) };
          }
        } catch (err) {
          outcomes[i] = { ok: false, error: err as Error };
        }
      }),
    );
    // From here to the write nothing awaits: the working states cannot change under us.
    const batch = new PendingBatch();
    const sequencedAt = new Map<number, SequencedEvent>();
    for (const [i, item] of items.entries()) {
      if (outcomes[i] !== undefined) continue;
      try {
        const loaded = this.requireRoom(item.lpdu.room_id);
        const known = this.knownLpdu(item.lpdu);
        if (known !== undefined) {
          outcomes[i] = { ok: true, value: { eventId: known.eventId, seq: known.seq, duplicate: true } };
          continue;
        }
        sequencedAt.set(i, this.sequenceInto(batch, loaded, item.lpdu, item.origin, 0));
        batch.ops.push(...(item.extraOps ?? []));
      } catch (err) {
        outcomes[i] = { ok: false, error: err as Error };
      }
    }
    if (batch.appended.length > 0) {
      try {
        await this.write(batch);
      } catch (err) {
        for (const i of sequencedAt.keys()) outcomes[i] = { ok: false, error: err as Error };
      }
    }
    for (const [i, sequenced] of sequencedAt) {
      if (outcomes[i] === undefined) {
        outcomes[i] = {
          ok: true,
          value: { eventId: sequenced.eventId, seq: sequenced.seq, duplicate: false },
        };
      }
    }
    return outcomes as Outcome<SubmitResult>[];
  }

  /** Checks that need no room state: the hub role, the LPDU hash (the retry lookup trusts it) and the origin. */
  private precheckLimited(lpdu: LimitedEvent, origin: string, builtHere: boolean): void {
    const loaded = this.requireRoom(lpdu.room_id);
    if (loaded.record.role !== "hub") {
      throw new RoomError(
        "M_WRONG_HUB",
        `${this.serverName} is not the hub of ${lpdu.room_id}; send limited events to ${loaded.record.hubServer}`,
      );
    }
    if (!builtHere && computeLpduHash(lpdu) !== lpdu.hashes.lpdu.sha256) {
      throw new EventFormatError("limited event: hashes.lpdu.sha256 does not match the event's content");
    }
    if (serverNameOf(lpdu.sender) !== origin) {
      throw new RoomError("M_FORBIDDEN", `server ${origin} cannot send events for ${lpdu.sender}`);
    }
    // The time of an event is the time its signatures are checked at (keys expire): not in the future.
    if (lpdu.origin_server_ts > this.now() + MAX_CLOCK_SKEW_MS) {
      throw new RoomError(
        "M_INVALID_PARAM",
        `origin_server_ts ${lpdu.origin_server_ts} is more than ${MAX_CLOCK_SKEW_MS / 60_000} minutes ahead of the hub's clock`,
      );
    }
  }

  private knownLpdu(lpdu: LimitedEvent): RecentEvent | undefined {
    const key = `${lpdu.room_id}\u0000${lpdu.hashes.lpdu.sha256}`;
    const recent = this.recentLpdus.get(key);
    if (recent !== undefined) return recent;
    const stored = this.options.store.findByLpduHashSync(lpdu.room_id, lpdu.hashes.lpdu.sha256);
    if (stored === undefined || stored === "unavailable") return undefined;
    return { eventId: stored, seq: -1 };
  }

  private async duplicateOf(eventId: string): Promise<SubmitResult> {
    const where = await this.options.store.locateEvent(eventId);
    return { eventId, seq: where?.seq ?? -1, duplicate: true };
  }

  private async prepareExtensions(roomId: string, event: LimitedEvent | FullyFormedEvent): Promise<void> {
    for (const ext of this.extensions) await ext.prepare?.(roomId, event);
  }

  /**
   * Hub, synchronous: sequence one limited event on the working state, run
   * the extensions and hooks, and add it (and its follow-ups) to the batch.
   * On any refusal the working state is put back as it was.
   */
  private sequenceInto(
    batch: PendingBatch,
    loaded: LoadedRoom,
    lpdu: LimitedEvent,
    origin: string,
    depth: number,
  ): SequencedEvent {
    const core = loaded.core as HubRoom;
    const mark = loaded.working.mark();
    const opsLength = batch.ops.length;
    const appendedLength = batch.appended.length;
    try {
      const sequenced = core.sequence(lpdu, origin, this.options.keys, true);
      const followUps = this.appendDecided(batch, loaded, sequenced);
      if (followUps.length > 0 && depth >= MAX_FOLLOW_UP_DEPTH) {
        throw new RoomError("M_UNKNOWN", `follow-up events nested deeper than ${MAX_FOLLOW_UP_DEPTH}`);
      }
      for (const followUp of followUps) {
        const event = this.buildFor(
          this.serverName,
          loaded.version,
          loaded.record.roomId,
          followUp.sender,
          followUp.type,
          followUp.content,
          followUp.stateKey,
        );
        this.sequenceInto(batch, loaded, event, this.serverName, depth + 1);
      }
      this.rememberLpdu(`${lpdu.room_id}\u0000${lpdu.hashes.lpdu.sha256}`, sequenced);
      loaded.working.release(mark);
      return sequenced;
    } catch (err) {
      loaded.working.rollback(mark);
      batch.ops.length = opsLength;
      const undone = batch.appended.splice(appendedLength);
      if (undone.length > 0) loaded.extWorking = undone[0]!.extBefore;
      for (const { sequenced } of undone) this.forgetLpdu(sequenced);
      throw err;
    }
  }

  /**
   * Runs the extensions on an event the core accepted, appends it to the
   * working state, and adds its operations to the batch. Returns follow-ups.
   */
  private appendDecided(batch: PendingBatch, loaded: LoadedRoom, sequenced: SequencedEvent): FollowUpEvent[] {
    const followUps: FollowUpEvent[] = [];
    const extBefore = loaded.extWorking;
    const extAfter = [...extBefore];
    const extOps: BatchOp[] = [];
    this.extensions.forEach((ext, index) => {
      const decision = ext.decide({
        roomId: loaded.record.roomId,
        role: loaded.record.role,
        version: loaded.version,
        seq: sequenced.seq,
        eventId: sequenced.eventId,
        event: sequenced.event,
        stateBefore: loaded.working,
        state: extAfter[index],
      });
      if (!decision.allowed) throw new ExtensionRejection(ext.name, decision.errcode, decision.reason);
      if (decision.state !== undefined) extAfter[index] = decision.state;
      if (decision.ops !== undefined) extOps.push(...decision.ops);
      if (decision.followUps !== undefined && decision.followUps.length > 0) {
        if (loaded.record.role !== "hub") {
          throw new ExtensionRejection(ext.name, "M_UNKNOWN", "only the hub can add follow-up events");
        }
        followUps.push(...decision.followUps);
      }
    });
    loaded.working.append(sequenced.eventId, sequenced.event);
    const record = this.recordAfter(loaded, sequenced);
    const notice = noticeOf(sequenced, record.role);
    const hookOps: BatchOp[] = [];
    const afterCommit: (() => void)[] = [];
    for (const hook of this.appendHooks) {
      const result = hook(notice, loaded.working, loaded.version);
      if (result === undefined) continue;
      hookOps.push(...result.ops);
      if (result.afterCommit !== undefined) afterCommit.push(result.afterCommit);
    }
    batch.ops.push(
      ...this.options.store.appendOps(
        record,
        {
          roomId: sequenced.roomId,
          seq: sequenced.seq,
          eventId: sequenced.eventId,
          json: sequenced.json,
          stateEntry: sequenced.stateEntry,
          lpduHash: sequenced.lpduHash,
        },
        loaded.working,
      ),
      ...extOps,
      ...hookOps,
    );
    batch.appended.push({ loaded, sequenced, extBefore, extAfter, afterCommit });
    loaded.extWorking = extAfter;
    return followUps;
  }

  private recordAfter(loaded: LoadedRoom, sequenced: SequencedEvent): RoomRecord {
    return {
      ...loaded.record,
      headSeq: sequenced.seq,
      headEventId: sequenced.eventId,
      headType: sequenced.event.type,
    };
  }

  /**
   * Writes a batch. On success the committed states, records and extension
   * states catch up and subscribers hear of each event, in order; on failure
   * every room the batch touched stops.
   */
  private async write(batch: PendingBatch): Promise<void> {
    try {
      await this.options.store.kv.commit(batch.ops);
    } catch (err) {
      for (const { loaded } of batch.appended) loaded.stopped ??= err as Error;
      for (const loaded of batch.newRooms) this.pendingRooms.delete(loaded.record.roomId);
      throw err;
    }
    for (const loaded of batch.newRooms) {
      this.pendingRooms.delete(loaded.record.roomId);
      this.rooms.set(loaded.record.roomId, loaded);
    }
    const notices: RoomEventNotice[] = [];
    for (const { loaded, sequenced, extAfter } of batch.appended) {
      loaded.committed.append(sequenced.eventId, sequenced.event);
      loaded.record = this.recordAfter(loaded, sequenced);
      loaded.extCommitted = extAfter;
      notices.push(noticeOf(sequenced, loaded.record.role));
    }
    const run = (action: () => void) => {
      try {
        action();
      } catch (err) {
        this.options.onListenerError?.(err);
      }
    };
    for (const { afterCommit } of batch.appended) afterCommit.forEach(run);
    for (const notice of notices) {
      for (const listener of this.listeners) run(() => listener(notice));
    }
  }

  private rememberLpdu(key: string, sequenced: SequencedEvent): void {
    this.recentLpdus.set(key, { eventId: sequenced.eventId, seq: sequenced.seq });
    if (this.recentLpdus.size > RECENT_CAPACITY) {
      this.recentLpdus.delete(this.recentLpdus.keys().next().value as string);
    }
  }

  private forgetLpdu(sequenced: SequencedEvent): void {
    this.recentLpdus.delete(`${sequenced.roomId}\u0000${sequenced.lpduHash}`);
  }

  /** Our users' events: sequenced here when we are the hub. */
  async sendAsHub(
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey?: string,
    extraOps?: BatchOp[],
  ): Promise<SubmitResult> {
    const lpdu = this.buildLimitedEvent(roomId, sender, type, content, stateKey);
    const [outcome] = await this.submitLimitedEvents([
      { lpdu, origin: this.serverName, builtHere: true, ...(extraOps ? { extraOps } : {}) },
    ]);
    if (!outcome!.ok) throw outcome!.error;
    return outcome!.value;
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
    const [outcome] = await this.applyEvents(event.room_id, [event]);
    if (!outcome!.ok) throw outcome!.error;
    return outcome!.value;
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
    const [outcome] = await this.applyEvents(event.room_id, [event]);
    if (!outcome!.ok) throw outcome!.error;
    return outcome!.value;
  }

  /**
   * Follower: applies the hub's events of one room in order and writes all
   * that were applied in one atomic batch. A room we do not follow yet is
   * followed from its create event, which must come first. Each event gets
   * its own outcome; once one is refused, the later ones are refused too
   * (they would not be linear).
   */
  async applyEvents(roomId: string, events: readonly FullyFormedEvent[]): Promise<Outcome<ApplyResult>[]> {
    const existing = this.rooms.get(roomId) ?? this.pendingRooms.get(roomId);
    let loaded: LoadedRoom;
    let created = false;
    if (existing === undefined) {
      const first = events[0];
      if (first === undefined) return [];
      try {
        loaded = await this.followerRoomFor(first);
      } catch (err) {
        return events.map(() => ({ ok: false, error: err as Error }));
      }
      if (this.rooms.has(roomId) || this.pendingRooms.has(roomId)) return this.applyEvents(roomId, events);
      this.pendingRooms.set(roomId, loaded);
      created = true;
    } else {
      loaded = existing;
    }
    const run = loaded.queue.then(() => this.applyInOrder(loaded, events, created));
    // The next batch waits for this one to be durable, and runs even if its write failed (it then
    // finds the room stopped): the queue never holds a rejection, which nothing else may handle.
    loaded.queue = run.then(
      (r) => r.written.catch(() => undefined),
      () => undefined,
    );
    const { outcomes, written } = await run;
    try {
      await written;
    } catch (err) {
      return outcomes.map((o) =>
        o.ok && o.value.status === "applied" ? { ok: false, error: err as Error } : o,
      );
    }
    return outcomes;
  }

  private async followerRoomFor(event: FullyFormedEvent): Promise<LoadedRoom> {
    if (event.type !== "m.room.create") {
      throw new RoomError(
        "M_INVALID_PARAM",
        `a room is followed from its m.room.create event, got ${event.type}`,
      );
    }
    const policyId = event.content.policy_id;
    const version = typeof policyId === "string" ? getRoomVersion(policyId) : undefined;
    if (version === undefined) {
      throw new RoomError(
        "M_UNSUPPORTED_ROOM_VERSION",
        `room version ${JSON.stringify(policyId)} is not supported`,
      );
    }
    const record: RoomRecord = {
      roomId: event.room_id,
      roomVersion: version.id,
      hubServer: serverNameOf(event.sender),
      role: "follower",
      headSeq: 0,
      headEventId: "",
      headType: "",
    };
    const ext = await this.loadExtensions(event.room_id);
    return this.makeLoaded(record, version, [new RoomState(), new RoomState()], ext);
  }

  /** Runs in the room's queue; resolves once the batch is handed to the store (`written` settles when durable). */
  private async applyInOrder(
    loaded: LoadedRoom,
    events: readonly FullyFormedEvent[],
    created: boolean,
  ): Promise<{ outcomes: Outcome<ApplyResult>[]; written: Promise<void> }> {
    const outcomes: Outcome<ApplyResult>[] = [];
    const batch = new PendingBatch();
    if (created) batch.newRooms.push(loaded);
    let refused: Error | undefined;
    for (const event of events) {
      if (refused !== undefined) {
        outcomes.push({ ok: false, error: refused });
        continue;
      }
      try {
        if (loaded.stopped !== undefined) this.requireRoom(loaded.record.roomId);
        if (loaded.record.role !== "follower") {
          throw new RoomError(
            "M_FORBIDDEN",
            `${this.serverName} is the hub of ${event.room_id}; it takes limited events`,
          );
        }
        const core = loaded.core as FollowerRoom;
        if (core.placement(event) !== "next") {
          outcomes.push({ ok: true, value: await this.notNext(loaded, event) });
          continue;
        }
        await this.prepareExtensions(loaded.record.roomId, event);
        const mark = loaded.working.mark();
        const opsLength = batch.ops.length;
        try {
          const sequenced = core.apply(event, this.options.keys, this.verifyOptions);
          this.appendDecided(batch, loaded, sequenced);
          loaded.working.release(mark);
          this.rememberEvent(sequenced);
          outcomes.push({
            ok: true,
            value: { eventId: sequenced.eventId, seq: sequenced.seq, status: "applied" },
          });
        } catch (err) {
          loaded.working.rollback(mark);
          batch.ops.length = opsLength;
          throw err;
        }
      } catch (err) {
        refused = err as Error;
        outcomes.push({ ok: false, error: refused });
      }
    }
    if (batch.appended.length === 0) {
      if (created) this.pendingRooms.delete(loaded.record.roomId);
      return { outcomes, written: Promise.resolve() };
    }
    const written = this.write(batch);
    written.catch(() => undefined);
    return { outcomes, written };
  }

  /** An event that does not follow our head: a duplicate, a fork, or a gap to fill. */
  private async notNext(loaded: LoadedRoom, event: FullyFormedEvent): Promise<ApplyResult> {
    const core = loaded.core as FollowerRoom;
    const eventId = computeEventId(event, loaded.version);
    const recent = this.recentEvents.get(eventId);
    if (recent !== undefined) return { eventId, seq: recent.seq, status: "duplicate" };
    const where = await this.options.store.locateEvent(eventId);
    if (where !== undefined) return { eventId, seq: where.seq, status: "duplicate" };
    const parent = event.prev_events[0];
    if (
      parent !== undefined &&
      (this.recentEvents.has(parent) || (await this.options.store.locateEvent(parent)) !== undefined)
    ) {
      throw new RoomError(
        "M_NOT_LINEAR",
        `event ${eventId} follows ${parent}, but our head is ${core.state.headEventId ?? "(none)"}: ` +
          "the room's history cannot fork",
      );
    }
    throw core.gapFor(event);
  }

  private rememberEvent(sequenced: SequencedEvent): void {
    this.recentEvents.set(sequenced.eventId, { eventId: sequenced.eventId, seq: sequenced.seq });
    if (this.recentEvents.size > RECENT_CAPACITY) {
      this.recentEvents.delete(this.recentEvents.keys().next().value as string);
    }
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
    return loaded.version.authorize(loaded.committed, event);
  }

  /** The state before `eventId` (LM-04 §State Events), read from the store's state index. */
  async stateBefore(
    roomId: string,
    eventId: string,
  ): Promise<{ state: StateEntry[]; seq: number } | undefined> {
    this.requireRoom(roomId);
    const where = await this.options.store.locateEvent(eventId);
    if (where === undefined || where.roomId !== roomId) return undefined;
    return { state: await this.options.store.stateAt(roomId, where.seq), seq: where.seq };
  }

  /** Events up to and including `seq`, newest first. */
  getEventsBackwards(
    roomId: string,
    toSeq: number,
    limit: number,
    maxBytes?: number,
  ): Promise<StoredEvent[]> {
    this.requireRoom(roomId);
    return this.options.store.getEventsBackwards(roomId, toSeq, limit, maxBytes);
  }

  getEvents(roomId: string, fromSeq: number, limit: number): Promise<StoredEvent[]> {
    this.requireRoom(roomId);
    return this.options.store.getEvents(roomId, fromSeq, limit);
  }

  getEvent(eventId: string): Promise<StoredEvent | undefined> {
    return this.options.store.getEvent(eventId);
  }
}

function noticeOf(sequenced: SequencedEvent, role: "hub" | "follower"): RoomEventNotice {
  return {
    roomId: sequenced.roomId,
    seq: sequenced.seq,
    eventId: sequenced.eventId,
    event: sequenced.event,
    json: sequenced.json,
    role,
  };
}

function requireVersion(id: string): RoomVersion {
  const version = getRoomVersion(id);
  if (version === undefined)
    throw new RoomError("M_UNSUPPORTED_ROOM_VERSION", `room version ${id} is not supported`);
  return version;
}
