import { parseFullyFormedEvent } from "../events/envelope";
import { computeEventId, createLimitedEvent } from "../events/pdu";
import type { ServerSigningKey } from "../events/signingKey";
import type { JsonObject, LimitedEvent } from "../events/types";
import type { FederationClient } from "../federation/client";
import type { PendingInvite, PendingInvites } from "../federation/pendingInvites";
import { makeRoomId, parseRoomId, parseUserId, randomRoomLocalpart, serverNameOf } from "../identifiers";
import type { Logger } from "../logging";
import { RoomError } from "../room/errors";
import type { RoomService } from "../room/roomService";
import { getRoomVersion, supportedRoomVersions } from "../roomVersions";
import type { Participation, RoomVersion } from "../roomVersions/types";
import { prefixEnd, type BatchOp, type KvStore } from "../store/kv";
import type { CatchUp } from "./catchUp";
import type { HubLink } from "./hubLink";
import { askInvitee, isInviteOfOutsider, lpduTxnId } from "./invites";
import { checkAnswer, EVENT_ID_ANSWER, MAKE_ANSWER, PeerAnswerError, SEND_JOIN_ANSWER } from "./peerAnswers";
import type {
  ClientGroupView,
  CreateRoomRequest,
  HistoryPage,
  InviteInfo,
  InviteRequest,
  MessageRequest,
  OtherParticipationRequest,
  OwnParticipationRequest,
  RoomInfo,
  ReceivedMessage,
  RoomsApi,
  SendRequest,
} from "./roomsApiTypes";
import type { GroupAgent } from "../mls/agent/groupAgent";
import { MLS_COMMIT, MLS_ENCRYPTED, MLS_PROPOSAL } from "../mls/roomGroup";

const SEP = "\u0000";
/** Idempotency records: `x\0<acting user>\0<txnId>` -> the first call's outcome. */
const TXN_PREFIX = `x${SEP}`;
const MAX_TXN_ID_LENGTH = 255;
const MAX_HISTORY_PAGE = 1000;
const MAX_WAIT_MS = 30_000;

type TxnRecord =
  /** Written in the batch that creates the room. */
  | { kind: "room"; roomId: string }
  /** Written in the batch that sequences the event here (we are the hub): found again by its LPDU hash. */
  | { kind: "sequenced"; roomId: string; lpduHash: string }
  /** Written in the batch that queues the event for the hub; the event ID is known once it comes back. */
  | { kind: "relayed"; roomId: string; hubServer: string; lpduHash: string }
  /** A make/send handshake with a hub: the LPDU is kept so a retry sends the same one. */
  | {
      kind: "handshake";
      roomId: string;
      hubServer: string;
      roomVersion: string;
      change: "join" | "leave" | "knock";
      lpdu: LimitedEvent;
    }
  | { kind: "done"; roomId: string; eventId: string };

/** An event of a local user's hosted MLS client (`submitOwn`). */
export interface OwnEvent {
  roomId: string;
  sender: string;
  type: string;
  content: JsonObject;
  /** Operations for the batch that makes the event durable, given its LPDU hash and our role. */
  extraOps: (lpduHash: string, role: "hub" | "follower") => BatchOp[];
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: Error };

export interface RoomsApiOptions {
  serverName: string;
  signingKey: ServerSigningKey;
  kv: KvStore;
  rooms: RoomService;
  hubLink: HubLink;
  catchUp: CatchUp;
  client: FederationClient;
  invites: PendingInvites;
  log: Logger;
  /** Throws (e.g. a rate limit) to refuse a local user's call before it does anything. */
  admit?: (userId: string) => void;
  /** The provider's own user (the hub as MLS external sender): no one acts as it here. */
  reservedUser?: string;
  /** Marks a room as being joined through `hubServer` while the send_join is under way. */
  setJoining: (roomId: string, hubServer: string | undefined) => void;
  now?: () => number;
}

/** The rooms API (see roomsApiTypes.ts): what local users do, for the admin API and the bridge. */
export class LocalRooms implements RoomsApi {
  private readonly running = new Map<string, Promise<unknown>>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly now: () => number;
  /** The hosted MLS clients, which encrypt and decrypt users' messages (set once wired). */
  agent: GroupAgent | undefined;

  constructor(private readonly options: RoomsApiOptions) {
    this.now = options.now ?? Date.now;
    options.rooms.subscribe((notice) => {
      const waiting = this.waiters.get(notice.roomId);
      if (waiting === undefined) return;
      this.waiters.delete(notice.roomId);
      waiting.forEach((wake) => wake());
    });
  }

  private get rooms(): RoomService {
    return this.options.rooms;
  }

  private requireLocalUser(userId: string, field: string): void {
    if (parseUserId(userId).serverName !== this.options.serverName) {
      throw new RoomError(
        "M_INVALID_PARAM",
        `${field}: ${userId} is not a user of ${this.options.serverName}`,
      );
    }
    if (userId === this.options.reservedUser) {
      throw new RoomError(
        "M_INVALID_PARAM",
        `${field}: ${userId} is this provider's own user (mls.hub_user), not a user who can act in rooms`,
      );
    }
  }

  /** Runs `work` once per (actor, txnId), across concurrent calls and restarts. */
  private async once<T>(
    actor: string,
    txnId: string,
    work: (key: string, previous: TxnRecord | undefined) => Promise<T>,
  ): Promise<T> {
    if (
      typeof txnId !== "string" ||
      txnId.length === 0 ||
      txnId.length > MAX_TXN_ID_LENGTH ||
      txnId.includes(SEP)
    ) {
      throw new RoomError("M_INVALID_PARAM", `txnId must be 1 to ${MAX_TXN_ID_LENGTH} characters`);
    }
    const key = `${TXN_PREFIX}${actor}${SEP}${txnId}`;
    const running = this.running.get(key);
    if (running !== undefined) return running as Promise<T>;
    const run = (async () => {
      const kv = this.options.kv;
      const stored = kv.getSync !== undefined ? kv.getSync(key) : await kv.get(key);
      return work(key, stored === undefined ? undefined : (JSON.parse(stored) as TxnRecord));
    })();
    this.running.set(key, run);
    try {
      return await run;
    } finally {
      this.running.delete(key);
    }
  }

  private recordOp(key: string, record: TxnRecord): BatchOp {
    return { type: "put", key, value: JSON.stringify(record) };
  }

  async createRoom(request: CreateRoomRequest): Promise<{ roomId: string }> {
    this.requireLocalUser(request.creator, "creator");
    this.options.admit?.(request.creator);
    return this.once(request.creator, request.txnId, async (key, previous) => {
      if (previous?.kind === "room") return { roomId: previous.roomId };
      if (previous !== undefined) throw usedForAnother(previous);
      const localpart = request.roomLocalpart ?? randomRoomLocalpart();
      const roomId = makeRoomId(localpart, this.options.serverName);
      await this.rooms.createRoom(request.creator, {
        roomLocalpart: localpart,
        extraOps: [this.recordOp(key, { kind: "room", roomId })],
      });
      return { roomId };
    });
  }

  async send(request: SendRequest): Promise<{ eventId: string }> {
    this.requireLocalUser(request.sender, "sender");
    parseRoomId(request.roomId);
    if (request.type === MLS_COMMIT || request.type === MLS_ENCRYPTED || request.type === MLS_PROPOSAL) {
      throw new RoomError(
        "M_INVALID_PARAM",
        `${request.type} events are made by the user's hosted MLS client; send a message with sendMessage`,
      );
    }
    // A user's message is always encrypted (LM-04 §m.room.encrypted).
    if (request.type === "m.room.message" && request.stateKey === undefined) {
      return this.sendMessage({
        roomId: request.roomId,
        sender: request.sender,
        type: request.type,
        content: request.content,
        txnId: request.txnId,
      });
    }
    this.options.admit?.(request.sender);
    return this.once(request.sender, request.txnId, (key, previous) =>
      this.sendOnce(
        key,
        previous,
        request.roomId,
        request.sender,
        request.type,
        request.content,
        request.stateKey,
      ),
    );
  }

  /** Sequenced here as the hub (the record in the event's batch), or queued for the hub (the record in the queue's batch). */
  private async sendOnce(
    key: string,
    previous: TxnRecord | undefined,
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey?: string,
  ): Promise<{ eventId: string }> {
    if (previous !== undefined) return this.outcomeOf(previous);
    const room = this.rooms.room(roomId);
    if (room === undefined)
      throw new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${roomId}`);
    const lpdu = this.rooms.buildLimitedEvent(roomId, sender, type, content, stateKey);
    if (room.record.role === "hub") {
      if (isInviteOfOutsider(this.rooms, lpdu)) await askInvitee(this.rooms, this.options.client, lpdu);
      const record: TxnRecord = { kind: "sequenced", roomId, lpduHash: lpdu.hashes.lpdu.sha256 };
      const [outcome] = await this.rooms.submitLimitedEvents([
        { lpdu, origin: this.options.serverName, builtHere: true, extraOps: [this.recordOp(key, record)] },
      ]);
      if (!outcome!.ok) throw outcome!.error;
      return { eventId: outcome!.value.eventId };
    }
    const record: TxnRecord = {
      kind: "relayed",
      roomId,
      hubServer: room.record.hubServer,
      lpduHash: lpdu.hashes.lpdu.sha256,
    };
    await this.options.kv.commit([
      ...this.options.hubLink.enqueueOps(room.record.hubServer, lpdu, room.version),
      this.recordOp(key, record),
    ]);
    this.options.hubLink.wake(room.record.hubServer);
    return this.outcomeOf(record, true);
  }

  /**
   * The provider's own MLS clients send through here: an event of a local user, with the
   * operations `extraOps(lpduHash)` in the batch that makes it durable (the one that sequences it
   * when we are the hub, the one that queues it for the hub otherwise). Resolves once that batch
   * is durable; `outcome` then gives the event ID, or the hub's refusal. A refusal at our own hub
   * is thrown here, and nothing is written.
   */
  async submitOwn(input: OwnEvent): Promise<{ lpduHash: string; outcome: Promise<string> }> {
    const [result] = await this.submitOwnMany([input]);
    if (!result!.ok) throw result!.error;
    return result!.value;
  }

  /**
   * `submitOwn` for several events of one room, made durable in one batch (one write for all).
   * Each gets its own result; at our own hub one may be refused while the others are sequenced.
   */
  async submitOwnMany(
    inputs: readonly OwnEvent[],
  ): Promise<Outcome<{ lpduHash: string; outcome: Promise<string> }>[]> {
    const roomId = inputs[0]?.roomId;
    if (roomId === undefined) return [];
    const room = this.rooms.room(roomId);
    if (room === undefined || inputs.some((input) => input.roomId !== roomId))
      throw new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${roomId}`);
    const lpdus = inputs.map((input) =>
      this.rooms.buildLimitedEvent(roomId, input.sender, input.type, input.content),
    );
    if (room.record.role === "hub") {
      const outcomes = await this.rooms.submitLimitedEvents(
        lpdus.map((lpdu, i) => ({
          lpdu,
          origin: this.options.serverName,
          builtHere: true,
          extraOps: inputs[i]!.extraOps(lpdu.hashes.lpdu.sha256, "hub"),
        })),
      );
      return outcomes.map((outcome, i) =>
        outcome.ok
          ? {
              ok: true,
              value: {
                lpduHash: lpdus[i]!.hashes.lpdu.sha256,
                outcome: Promise.resolve(outcome.value.eventId),
              },
            }
          : outcome,
      );
    }
    const hub = room.record.hubServer;
    await this.options.kv.commit(
      lpdus.flatMap((lpdu, i) => [
        ...this.options.hubLink.enqueueOps(hub, lpdu, room.version),
        ...inputs[i]!.extraOps(lpdu.hashes.lpdu.sha256, "follower"),
      ]),
    );
    this.options.hubLink.wake(hub);
    return lpdus.map((lpdu) => {
      const outcome = this.options.hubLink.awaitOutcome(roomId, lpdu.hashes.lpdu.sha256, hub, true);
      outcome.catch(() => undefined);
      return { ok: true, value: { lpduHash: lpdu.hashes.lpdu.sha256, outcome } };
    });
  }

  /** The outcome of an event `submitOwn` queued for the hub, e.g. after a restart. */
  awaitOwn(roomId: string, lpduHash: string): Promise<string> {
    const room = this.rooms.room(roomId);
    if (room === undefined)
      return Promise.reject(
        new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${roomId}`),
      );
    return this.options.hubLink.awaitOutcome(roomId, lpduHash, room.record.hubServer);
  }

  /** The idempotency record of an event `submitOwn` makes durable, for `once`. */
  ownRecordOp(key: string, roomId: string, lpduHash: string, role: "hub" | "follower"): BatchOp {
    const room = this.rooms.room(roomId);
    const record: TxnRecord =
      role === "hub"
        ? { kind: "sequenced", roomId, lpduHash }
        : { kind: "relayed", roomId, hubServer: room!.record.hubServer, lpduHash };
    return this.recordOp(key, record);
  }

  async sendMessage(request: MessageRequest): Promise<{ eventId: string }> {
    this.requireLocalUser(request.sender, "sender");
    parseRoomId(request.roomId);
    if (typeof request.type !== "string" || request.type.length === 0 || request.type.length > 255) {
      throw new RoomError("M_INVALID_PARAM", "type must be 1 to 255 characters");
    }
    const agent = this.requireAgent();
    this.options.admit?.(request.sender);
    return this.once(request.sender, request.txnId, async (key, previous) => {
      if (previous !== undefined) return this.outcomeOf(previous);
      if (this.rooms.room(request.roomId) === undefined) {
        throw new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${request.roomId}`);
      }
      const outcome = await agent.sendMessage(
        request.roomId,
        request.sender,
        { type: request.type, content: request.content },
        (lpduHash, role) => [this.ownRecordOp(key, request.roomId, lpduHash, role)],
      );
      return { eventId: await outcome };
    });
  }

  async messages(
    roomId: string,
    userId: string,
    page: { fromSeq: number; limit: number; waitMs?: number },
  ): Promise<ReceivedMessage[]> {
    this.requireLocalUser(userId, "user");
    parseRoomId(roomId);
    if (!Number.isSafeInteger(page.fromSeq) || page.fromSeq < 1) {
      throw new RoomError("M_INVALID_PARAM", "from must be a positive integer");
    }
    if (!Number.isSafeInteger(page.limit) || page.limit < 1 || page.limit > MAX_HISTORY_PAGE) {
      throw new RoomError("M_INVALID_PARAM", `limit must be 1 to ${MAX_HISTORY_PAGE}`);
    }
    if (this.rooms.room(roomId) === undefined)
      throw new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${roomId}`);
    return this.requireAgent().messages(
      roomId,
      userId,
      page.fromSeq,
      page.limit,
      Math.min(page.waitMs ?? 0, MAX_WAIT_MS),
    );
  }

  async clientGroup(roomId: string, userId: string): Promise<ClientGroupView | undefined> {
    this.requireLocalUser(userId, "user");
    parseRoomId(roomId);
    if (this.rooms.room(roomId) === undefined)
      throw new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${roomId}`);
    return this.requireAgent().clientView(roomId, userId);
  }

  private requireAgent(): GroupAgent {
    if (this.agent === undefined) throw new RoomError("M_UNKNOWN", "the hosted MLS clients are not running");
    return this.agent;
  }

  /** `queuedNow`: the record was written by this call, so the hub cannot have answered yet. */
  private async outcomeOf(record: TxnRecord, queuedNow = false): Promise<{ eventId: string }> {
    switch (record.kind) {
      case "done":
        return { eventId: record.eventId };
      case "sequenced": {
        const eventId = await this.rooms.store.findByLpduHash(record.roomId, record.lpduHash);
        if (eventId === undefined)
          throw new RoomError("M_UNKNOWN", "the event of this txnId is missing from the history");
        return { eventId };
      }
      case "relayed":
        // A retry finds the event again by its LPDU hash: no further record is needed.
        return {
          eventId: await this.options.hubLink.awaitOutcome(
            record.roomId,
            record.lpduHash,
            record.hubServer,
            queuedNow,
          ),
        };
      default:
        throw usedForAnother(record);
    }
  }

  async invite(request: InviteRequest): Promise<{ eventId: string }> {
    this.requireLocalUser(request.sender, "sender");
    parseUserId(request.target);
    const version = this.requireRoomVersion(request.roomId);
    this.options.admit?.(request.sender);
    return this.once(request.sender, request.txnId, (key, previous) =>
      this.sendOnce(
        key,
        previous,
        request.roomId,
        request.sender,
        version.membership.eventType,
        version.membership.content("invite", request.reason),
        request.target,
      ),
    );
  }

  async changeParticipationOf(request: OtherParticipationRequest): Promise<{ eventId: string }> {
    this.requireLocalUser(request.sender, "sender");
    parseUserId(request.target);
    const version = this.requireRoomVersion(request.roomId);
    this.options.admit?.(request.sender);
    return this.once(request.sender, request.txnId, (key, previous) =>
      this.sendOnce(
        key,
        previous,
        request.roomId,
        request.sender,
        version.membership.eventType,
        version.membership.content(request.change, request.reason),
        request.target,
      ),
    );
  }

  private requireRoomVersion(roomId: string): RoomVersion {
    parseRoomId(roomId);
    const room = this.rooms.room(roomId);
    if (room === undefined)
      throw new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${roomId}`);
    return room.version;
  }

  /** One of our users joins, leaves or knocks: directly when we are in the room, else make/send via the hub. */
  async changeOwnParticipation(request: OwnParticipationRequest): Promise<{ eventId: string }> {
    const { roomId, user, change } = request;
    this.requireLocalUser(user, "user");
    parseRoomId(roomId);
    this.options.admit?.(user);
    return this.once(user, request.txnId, async (key, previous) => {
      if (previous?.kind === "handshake")
        return this.handshake(key, previous, roomId, user, change, request.reason);
      if (previous !== undefined) return this.outcomeOf(previous);
      const room = this.rooms.room(roomId);
      if (room === undefined) return this.handshake(key, undefined, roomId, user, change, request.reason);
      const membership = room.version.membership;
      const content = membership.content(change, request.reason);
      const result = await this.sendOnce(key, undefined, roomId, user, membership.eventType, content, user);
      if (change !== "knock") await this.options.invites.remove(roomId, user);
      return result;
    });
  }

  /** LM-04 §Make and Send: ask the hub for a template, sign it, send it; for a join, catch up. */
  private async handshake(
    key: string,
    previous: Extract<TxnRecord, { kind: "handshake" }> | undefined,
    roomId: string,
    user: string,
    change: "join" | "leave" | "knock",
    reason: string | undefined,
  ): Promise<{ eventId: string }> {
    let hubServer: string;
    let lpdu: LimitedEvent;
    let version: RoomVersion;
    if (previous !== undefined) {
      ({ hubServer, lpdu } = previous);
      version = requireVersion(previous.roomVersion);
    } else {
      const invite = await this.options.invites.get(roomId, user);
      hubServer = invite?.hubServer ?? serverNameOf(roomId);
      ({ lpdu, version } = await this.makeTemplate(hubServer, roomId, user, change, reason));
      await this.options.kv.commit([
        this.recordOp(key, { kind: "handshake", roomId, hubServer, roomVersion: version.id, change, lpdu }),
      ]);
    }
    const path = `/_matrix/federation/v3/send_${change}/${encodeURIComponent(lpduTxnId(lpdu))}`;
    if (change === "join") this.options.setJoining(roomId, hubServer);
    let answer: unknown;
    let caughtUp: Promise<void> | undefined;
    try {
      answer = await this.options.client.request(hubServer, "POST", path, lpdu);
      if (change === "join") {
        const joined = checkAnswer(SEND_JOIN_ANSWER, answer, hubServer, "send_join");
        const joinEvent = parseFullyFormedEvent(joined.event);
        if (joinEvent.hashes.lpdu.sha256 !== lpdu.hashes.lpdu.sha256 || joinEvent.room_id !== roomId) {
          throw new PeerAnswerError(hubServer, "send_join", "the event is not the join we sent");
        }
        const eventId = computeEventId(joinEvent, version);
        // Registered before `joining` is cleared, so no event the hub sends meanwhile is refused.
        caughtUp = this.options.catchUp.request(roomId, hubServer, eventId).then(() => undefined);
        // Awaited below, after other awaits: observed now, so a failure meanwhile is not an
        // unhandled rejection (which would stop the process) but this call's error.
        caughtUp.catch(() => undefined);
        answer = { event_id: eventId };
      }
    } finally {
      if (change === "join") this.options.setJoining(roomId, undefined);
    }
    if (change !== "knock") await this.options.invites.remove(roomId, user);
    await caughtUp;
    const eventId = checkAnswer(EVENT_ID_ANSWER, answer, hubServer, `send_${change}`).event_id ?? "";
    await this.options.kv.commit([this.recordOp(key, { kind: "done", roomId, eventId })]);
    return { eventId };
  }

  private async makeTemplate(
    hubServer: string,
    roomId: string,
    user: string,
    change: "join" | "leave" | "knock",
    reason: string | undefined,
  ): Promise<{ lpdu: LimitedEvent; version: RoomVersion }> {
    const query = supportedRoomVersions()
      .map((v) => `ver=${encodeURIComponent(v)}`)
      .join("&");
    const made = checkAnswer(
      MAKE_ANSWER,
      await this.options.client.request(
        hubServer,
        "GET",
        `/_matrix/federation/v1/make_${change}/${encodeURIComponent(roomId)}/${encodeURIComponent(user)}?${query}`,
      ),
      hubServer,
      `make_${change}`,
    );
    const version = requireVersion(made.room_version);
    const template = made.event;
    const membership = version.membership;
    // The template must be the event we asked for, for the hub we asked: nothing in it is taken on trust.
    const mismatch =
      template.room_id !== roomId
        ? "room_id"
        : template.type !== membership.eventType
          ? "type"
          : template.state_key !== user
            ? "state_key"
            : template.sender !== user
              ? "sender"
              : template.hub_server !== undefined && template.hub_server !== hubServer
                ? "hub_server"
                : membership.participationIn(template.content as JsonObject) !== (change as Participation)
                  ? "content"
                  : undefined;
    if (mismatch !== undefined) {
      throw new PeerAnswerError(
        hubServer,
        `make_${change}`,
        `the template's ${mismatch} is not what was asked for`,
      );
    }
    const lpdu = createLimitedEvent(
      {
        room_id: roomId,
        type: membership.eventType,
        state_key: user,
        sender: user,
        origin_server_ts: this.now(),
        hub_server: hubServer,
        content: membership.content(change, reason),
      },
      this.options.signingKey,
      version,
    );
    return { lpdu, version };
  }

  async listInvites(userId: string): Promise<InviteInfo[]> {
    this.requireLocalUser(userId, "user");
    return (await this.options.invites.forUser(userId)).map(inviteInfo);
  }

  async allInvites(): Promise<InviteInfo[]> {
    return (await this.options.invites.all()).map(inviteInfo);
  }

  onInvite(listener: (invite: InviteInfo) => void): () => void {
    return this.options.invites.onStored((invite) => listener(inviteInfo(invite)));
  }

  listRooms(): string[] {
    return this.rooms.roomIds();
  }

  roomInfo(roomId: string): RoomInfo | undefined {
    const room = this.rooms.room(roomId);
    if (room === undefined) return undefined;
    const membershipType = room.version.membership.eventType;
    const participation: Record<string, string> = {};
    const state: RoomInfo["state"] = [];
    for (const entry of room.state.allEntries()) {
      if (entry.type === membershipType) {
        participation[entry.stateKey] = room.version.membership.participationIn(entry.content) ?? "unknown";
      } else {
        state.push({
          type: entry.type,
          stateKey: entry.stateKey,
          sender: entry.sender,
          content: entry.content,
        });
      }
    }
    return {
      roomId,
      roomVersion: room.version.id,
      hubServer: room.record.hubServer,
      role: room.record.role,
      headSeq: room.record.headSeq,
      headEventId: room.record.headEventId,
      participation,
      state,
    };
  }

  async history(
    roomId: string,
    page: { fromSeq: number; limit: number; waitMs?: number },
  ): Promise<HistoryPage> {
    parseRoomId(roomId);
    if (!Number.isSafeInteger(page.fromSeq) || page.fromSeq < 1) {
      throw new RoomError("M_INVALID_PARAM", "from must be a positive integer");
    }
    if (!Number.isSafeInteger(page.limit) || page.limit < 1 || page.limit > MAX_HISTORY_PAGE) {
      throw new RoomError("M_INVALID_PARAM", `limit must be 1 to ${MAX_HISTORY_PAGE}`);
    }
    const waitMs = Math.min(page.waitMs ?? 0, MAX_WAIT_MS);
    const room = this.rooms.room(roomId);
    if (room === undefined)
      throw new RoomError("M_NOT_FOUND", `${this.options.serverName} is not in room ${roomId}`);
    if (waitMs > 0 && room.record.headSeq < page.fromSeq)
      await this.waitForEvent(roomId, page.fromSeq, waitMs);
    const stored = await this.rooms.getEvents(roomId, page.fromSeq, page.limit);
    const events = stored.map((e) => ({ seq: e.seq, eventId: e.eventId, event: JSON.parse(e.json) }));
    const head = this.rooms.room(roomId)!.record.headSeq;
    const last = events[events.length - 1]?.seq ?? page.fromSeq - 1;
    return { events, nextSeq: last < head ? last + 1 : undefined };
  }

  private waitForEvent(roomId: string, seq: number, waitMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, waitMs);
      const rooms = this.rooms;
      const waiters = this.waiters;
      function check() {
        if ((rooms.room(roomId)?.record.headSeq ?? 0) >= seq) done();
        else register();
      }
      function register() {
        const set = waiters.get(roomId) ?? new Set();
        set.add(check);
        waiters.set(roomId, set);
      }
      function done() {
        clearTimeout(timer);
        waiters.get(roomId)?.delete(check);
        resolve();
      }
      register();
    });
  }

  /** Idempotency records of one user (for tests and operators). */
  async *records(userId: string): AsyncIterable<[string, TxnRecord]> {
    const prefix = `${TXN_PREFIX}${userId}${SEP}`;
    for await (const [key, value] of this.options.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      yield [key.slice(prefix.length), JSON.parse(value) as TxnRecord];
    }
  }
}

function requireVersion(id: string): RoomVersion {
  const version = getRoomVersion(id);
  if (version === undefined) {
    throw new RoomError("M_INCOMPATIBLE_ROOM_VERSION", `room version ${id} is not supported`);
  }
  return version;
}

function usedForAnother(record: TxnRecord): RoomError {
  return new RoomError("M_INVALID_PARAM", `this txnId was already used for another request (${record.kind})`);
}

function inviteInfo(invite: PendingInvite): InviteInfo {
  return {
    roomId: invite.roomId,
    userId: invite.userId,
    inviter: invite.inviter,
    hubServer: invite.hubServer,
    roomVersion: invite.roomVersion,
    strippedState: invite.strippedState,
    receivedTs: invite.receivedTs,
  };
}
