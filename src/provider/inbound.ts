import { parseFullyFormedEvent, parseLimitedEvent } from "../events/envelope";
import { computeEventId, verifyLimitedEvent } from "../events/pdu";
import type { FullyFormedEvent, JsonObject, LimitedEvent } from "../events/types";
import { MimiError } from "../errors";
import { DEFAULT_MAX_RESPONSE_BYTES, type FederationClient } from "../federation/client";
import { FederationError } from "../federation/errors";
import type { KeyRing } from "../federation/keys";
import type { PendingInvite, PendingInvites } from "../federation/pendingInvites";
import type { FederationHandlers, Membership, SendTransactionAnswer } from "../federation/server/app";
import type { TransactionStore } from "../federation/transactionStore";
import { isValidRoomId, serverNameOf } from "../identifiers";
import type { Logger } from "../logging";
import { GapError, RoomError } from "../room/errors";
import type { LimitedSubmission, RoomService } from "../room/roomService";
import type { StoredEvent } from "../store/roomStore";
import { DEFAULT_ROOM_VERSION, getRoomVersion } from "../roomVersions";
import type { RoomVersion } from "../roomVersions/types";
import type { CatchUp } from "./catchUp";
import { ensureEventKeys } from "./eventKeys";
import { askInvitee, isInviteOfOutsider, strippedState } from "./invites";

/** LM-04 §Sending Events: at most 50 PDUs and 100 EDUs in one transaction. */
const MAX_PDUS = 50;
const MAX_EDUS = 100;
const MAX_BACKFILL_LIMIT = 1000;
/** Largest answer we build (state, send_join, backfill): what our own client accepts. */
const MAX_ANSWER_BYTES = DEFAULT_MAX_RESPONSE_BYTES - 64 * 1024;

export interface InboundOptions {
  serverName: string;
  rooms: RoomService;
  keyRing: KeyRing;
  client: FederationClient;
  transactions: TransactionStore;
  invites: PendingInvites;
  catchUp: CatchUp;
  log: Logger;
  /** Rooms whose send_join is under way, by hub: events the hub sends meanwhile start the catch-up. */
  joiningHubOf: (roomId: string) => string | undefined;
  /** Each EDU of an accepted transaction, once (LM-04 §EDUs); failures are the handler's to log. */
  onEdu?: (origin: string, edu: unknown) => Promise<void>;
  now?: () => number;
}

/** The provider's answers to other providers (the federation listener's handlers). */
export class Inbound implements FederationHandlers {
  private readonly rooms: RoomService;
  private readonly now: () => number;

  constructor(private readonly options: InboundOptions) {
    this.rooms = options.rooms;
    this.now = options.now ?? Date.now;
  }

  private get serverName(): string {
    return this.options.serverName;
  }

  private ensureEventKeys(event: {
    sender: string;
    hub_server?: string;
    signatures: LimitedEvent["signatures"];
  }) {
    return ensureEventKeys(this.options.keyRing, event);
  }

  private versionFor(roomId: unknown): RoomVersion {
    const room = typeof roomId === "string" ? this.rooms.room(roomId) : undefined;
    return room?.version ?? getRoomVersion(DEFAULT_ROOM_VERSION)!;
  }

  /**
   * `PUT /send/:txnId` (LM-04 §Sending Events): each PDU gets its own result,
   * but all the events of one transaction are written in one batch per role
   * (the hub's LPDUs in one, each followed room's events in one).
   */
  onSendTransaction(origin: string, txnId: string, body: unknown): Promise<SendTransactionAnswer> {
    return this.options.transactions.once(origin, "send", txnId, async () => {
      const { pdus, edus } = checkTransactionBody(body);
      const answer: SendTransactionAnswer = { pdus: {}, failed_pdus: {} };
      const refuse = (id: string, err: unknown) => {
        const failure = failureOf(err);
        answer.pdus[id] = failure;
        answer.failed_pdus[id] = failure;
        this.options.log.info("refused a PDU", {
          origin,
          id,
          errcode: failure.errcode,
          error: failure.error,
        });
      };
      const ids: string[] = [];
      const limited: { id: string; lpdu: LimitedEvent }[] = [];
      const followed = new Map<string, { id: string; event: FullyFormedEvent }[]>();
      for (const [index, raw] of pdus.entries()) {
        const parsed = parseOnce(raw);
        // LM-04 §Sending Events: results are keyed by the ID of the object as received; an object
        // that is not an event has no such ID and is keyed by its position.
        const id =
          parsed.event === undefined
            ? `invalid:${index}`
            : computeEventId(parsed.event as FullyFormedEvent, this.versionFor(parsed.event.room_id));
        ids.push(id);
        try {
          const sorted = this.sortPdu(origin, raw, parsed, id);
          if (sorted === undefined) continue;
          if (sorted.kind === "limited") limited.push({ id, lpdu: sorted.lpdu });
          else {
            const list = followed.get(sorted.event.room_id) ?? [];
            list.push({ id, event: sorted.event });
            followed.set(sorted.event.room_id, list);
          }
          answer.pdus[id] = {};
        } catch (err) {
          refuse(id, err);
        }
      }
      await Promise.all([
        this.sequenceLimited(origin, limited, answer, refuse),
        ...[...followed].map(([roomId, list]) => this.applyFollowed(origin, roomId, list, answer, refuse)),
      ]);
      // After the PDUs: a Welcome's commit may be among them.
      for (const edu of edus) await this.options.onEdu?.(origin, edu);
      // Keep the answer in the order of the request, as a reader of the JSON expects.
      const ordered: SendTransactionAnswer = { pdus: {}, failed_pdus: {} };
      for (const id of ids) {
        if (answer.pdus[id] !== undefined) ordered.pdus[id] = answer.pdus[id]!;
        if (answer.failed_pdus[id] !== undefined) ordered.failed_pdus[id] = answer.failed_pdus[id]!;
      }
      return ordered;
    });
  }

  /** Sorts one PDU: an LPDU for a room we are the hub of, an event of a room we follow, or done with. */
  private sortPdu(
    origin: string,
    raw: unknown,
    parsed: Parsed,
    id: string,
  ): { kind: "limited"; lpdu: LimitedEvent } | { kind: "event"; event: FullyFormedEvent } | undefined {
    const roomId = (raw as { room_id?: unknown } | null)?.room_id;
    if (typeof roomId !== "string" || !isValidRoomId(roomId)) {
      throw new FederationError(400, "M_BAD_JSON", "the PDU has no valid room_id");
    }
    const room = this.rooms.room(roomId);
    if (room === undefined) {
      // Events fanned out while we are still pulling the history of a room we just joined.
      const joiningHub = this.options.catchUp.hubOf(roomId) ?? this.options.joiningHubOf(roomId);
      if (joiningHub !== origin) {
        throw new RoomError("M_NOT_FOUND", `${this.serverName} is not in room ${roomId}`);
      }
      if (parsed.kind !== "full") parseFullyFormedEvent(raw);
      this.options.catchUp.inBackground(roomId, origin, id);
      return undefined;
    }
    if (room.record.role === "hub") {
      // A fully-formed event (or garbage) fails the LPDU envelope check with its precise error.
      return { kind: "limited", lpdu: parsed.kind === "limited" ? parsed.event : parseLimitedEvent(raw) };
    }
    if (origin !== room.record.hubServer) {
      throw new FederationError(
        403,
        "M_FORBIDDEN",
        `only the hub ${room.record.hubServer} sends events of ${roomId} to us`,
      );
    }
    return { kind: "event", event: parsed.kind === "full" ? parsed.event : parseFullyFormedEvent(raw) };
  }

  private async sequenceLimited(
    origin: string,
    limited: { id: string; lpdu: LimitedEvent }[],
    answer: SendTransactionAnswer,
    refuse: (id: string, err: unknown) => void,
  ): Promise<void> {
    if (limited.length === 0) return;
    const ready: { id: string; submission: LimitedSubmission }[] = [];
    await Promise.all(
      limited.map(async ({ id, lpdu }) => {
        try {
          await this.ensureEventKeys(lpdu);
          if (isInviteOfOutsider(this.rooms, lpdu)) await this.askInvitee(lpdu);
          ready.push({ id, submission: { lpdu, origin } });
        } catch (err) {
          refuse(id, err);
        }
      }),
    );
    // Keep the transaction's order: Promise.all above may have finished out of order.
    const order = new Map(limited.map(({ id }, i) => [id, i]));
    ready.sort((a, b) => order.get(a.id)! - order.get(b.id)!);
    const outcomes = await this.rooms.submitLimitedEvents(ready.map((r) => r.submission));
    outcomes.forEach((outcome, i) => {
      const { id } = ready[i]!;
      if (outcome.ok) answer.pdus[id] = { event_id: outcome.value.eventId };
      else refuse(id, outcome.error);
    });
  }

  private async applyFollowed(
    origin: string,
    roomId: string,
    list: { id: string; event: FullyFormedEvent }[],
    answer: SendTransactionAnswer,
    refuse: (id: string, err: unknown) => void,
  ): Promise<void> {
    const ready: { id: string; event: FullyFormedEvent }[] = [];
    for (const item of list) {
      try {
        await this.ensureEventKeys(item.event);
        ready.push(item);
      } catch (err) {
        refuse(item.id, err);
      }
    }
    const outcomes = await this.rooms.applyEvents(
      roomId,
      ready.map((r) => r.event),
    );
    let gap = false;
    outcomes.forEach((outcome, i) => {
      const { id } = ready[i]!;
      if (outcome.ok) {
        answer.pdus[id] = { event_id: outcome.value.eventId };
      } else if (outcome.error instanceof GapError || gap) {
        // The event and everything before it are pulled from the hub.
        if (!gap) this.options.catchUp.inBackground(roomId, origin, id);
        gap = true;
        answer.pdus[id] = { event_id: id };
      } else {
        refuse(id, outcome.error);
      }
    });
    if (gap) this.options.catchUp.inBackground(roomId, origin, ready[ready.length - 1]!.id);
  }

  /** `POST /invite/:txnId`: to the invitee's server, or to the hub from a follower (relayed). */
  onInvite(origin: string, txnId: string, body: unknown): Promise<JsonObject> {
    return this.options.transactions.once(origin, "invite", txnId, async (): Promise<JsonObject> => {
      if (typeof body !== "object" || body === null || Array.isArray(body)) {
        throw new FederationError(400, "M_BAD_JSON", "body must be an object");
      }
      const {
        event,
        room_version: roomVersion,
        invite_room_state: strippedState,
      } = body as Record<string, unknown>;
      const lpdu = parseLimitedEvent(event);
      if (typeof roomVersion !== "string" || getRoomVersion(roomVersion) === undefined) {
        throw new FederationError(
          400,
          "M_INCOMPATIBLE_ROOM_VERSION",
          `room version ${String(roomVersion)} is not supported here`,
        );
      }
      const version = getRoomVersion(roomVersion)!;
      const membership = version.membership;
      if (
        lpdu.type !== membership.eventType ||
        membership.participationIn(lpdu.content) !== "invite" ||
        lpdu.state_key === undefined
      ) {
        throw new FederationError(400, "M_BAD_JSON", `event must be an ${membership.eventType} invite`);
      }
      if (serverNameOf(lpdu.sender) !== origin && lpdu.hub_server !== origin) {
        throw new FederationError(403, "M_FORBIDDEN", `${origin} cannot send invites from ${lpdu.sender}`);
      }
      if (serverNameOf(lpdu.state_key) === this.serverName) {
        await this.ensureEventKeys(lpdu);
        verifyLimitedEvent(lpdu, this.options.keyRing, version);
        const invite: PendingInvite = {
          roomId: lpdu.room_id,
          userId: lpdu.state_key,
          hubServer: lpdu.hub_server,
          inviter: lpdu.sender,
          roomVersion,
          strippedState: Array.isArray(strippedState) ? (strippedState as JsonObject[]).slice(0, 20) : [],
          event: lpdu,
          receivedTs: this.now(),
        };
        await this.options.invites.put(invite);
        this.options.log.info("invite received", {
          roomId: invite.roomId,
          userId: invite.userId,
          inviter: invite.inviter,
        });
        return {};
      }
      const room = this.rooms.room(lpdu.room_id);
      if (room === undefined || room.record.role !== "hub") {
        throw new FederationError(
          403,
          "M_FORBIDDEN",
          `${lpdu.state_key} is not a user of ${this.serverName}`,
        );
      }
      await this.ensureEventKeys(lpdu);
      if (isInviteOfOutsider(this.rooms, lpdu)) await this.askInvitee(lpdu);
      return { event_id: (await this.rooms.submitParsedLimitedEvent(lpdu, origin)).eventId };
    });
  }

  private strippedState(roomId: string): JsonObject[] {
    return strippedState(this.rooms, roomId);
  }

  private askInvitee(lpdu: LimitedEvent): Promise<void> {
    return askInvitee(this.rooms, this.options.client, lpdu);
  }

  /** `GET /make_{join,leave,knock}/:roomId/:userId`: a template, if the change would be allowed now. */
  onMakeMembership(
    origin: string,
    change: Membership,
    roomId: string,
    userId: string,
    versions: string[],
  ): JsonObject {
    if (serverNameOf(userId) !== origin) {
      throw new FederationError(403, "M_FORBIDDEN", `${origin} cannot act for ${userId}`);
    }
    const room = this.requireHubRoom(roomId);
    if (change !== "leave" && !versions.includes(room.version.id)) {
      throw new FederationError(
        400,
        "M_INCOMPATIBLE_ROOM_VERSION",
        `the room's version ${room.version.id} is not among ${JSON.stringify(versions)}`,
      );
    }
    const membership = room.version.membership;
    const content = membership.content(change);
    const decision = this.rooms.checkAllowed(roomId, userId, membership.eventType, content, userId);
    if (!decision.allowed) {
      throw new FederationError(
        403,
        "M_FORBIDDEN",
        `${change} refused by rule ${decision.rule}: ${decision.reason}`,
      );
    }
    return {
      event: {
        room_id: roomId,
        type: membership.eventType,
        state_key: userId,
        sender: userId,
        hub_server: this.serverName,
        content,
      },
      room_version: room.version.id,
    };
  }

  /** `POST /send_{join,leave,knock}/:txnId`: sequence the filled template. */
  onSendMembership(origin: string, change: Membership, txnId: string, body: unknown): Promise<JsonObject> {
    return this.options.transactions.once(origin, `send_${change}`, txnId, async () => {
      const lpdu = parseLimitedEvent(body);
      const room = this.requireHubRoom(lpdu.room_id);
      const membership = room.version.membership;
      if (
        lpdu.type !== membership.eventType ||
        lpdu.state_key !== lpdu.sender ||
        membership.participationIn(lpdu.content) !== change
      ) {
        throw new FederationError(
          400,
          "M_BAD_JSON",
          `event must be the sender's own ${membership.eventType} ${change}`,
        );
      }
      await this.ensureEventKeys(lpdu);
      const result = await this.rooms.submitParsedLimitedEvent(lpdu, origin);
      if (change === "knock") return { stripped_state: this.strippedState(lpdu.room_id) };
      if (change === "leave") return { event_id: result.eventId };
      return this.sendJoinAnswer(lpdu.room_id, result.eventId);
    });
  }

  /**
   * The join event, the state before it and the auth chain of that state
   * (without the events already in the state), within a byte budget.
   */
  private async sendJoinAnswer(roomId: string, joinEventId: string): Promise<JsonObject> {
    const stored = await this.rooms.getEvent(joinEventId);
    // LM-04 §send_join: the state before the join event.
    const before = await this.rooms.store.stateAt(roomId, stored!.seq);
    const { events, bytes } = await this.stateEvents(
      roomId,
      before.map((e) => e.eventId),
    );
    const chain = await this.rooms.store.authChain(roomId, events, {
      maxBytes: MAX_ANSWER_BYTES - bytes,
      exclude: new Set(before.map((e) => e.eventId)),
    });
    if (!chain.complete) throw this.tooLarge(roomId);
    return {
      event: JSON.parse(stored!.json) as JsonObject,
      state: events.map((e) => JSON.parse(e.json) as JsonObject),
      auth_chain: chain.events.map((e) => JSON.parse(e.json) as JsonObject),
    };
  }

  private tooLarge(roomId: string): FederationError {
    return new FederationError(
      413,
      "M_TOO_LARGE",
      `the state of ${roomId} and its auth chain are larger than ${MAX_ANSWER_BYTES} bytes`,
    );
  }

  /** The stored state events by ID, within the answer budget. */
  private async stateEvents(
    roomId: string,
    ids: string[],
  ): Promise<{ events: StoredEvent[]; bytes: number }> {
    const events: StoredEvent[] = [];
    let bytes = 0;
    for (const stored of await this.rooms.store.getEventsByIds(ids)) {
      if (stored === undefined) continue;
      bytes += Buffer.byteLength(stored.json);
      events.push(stored);
    }
    if (bytes > MAX_ANSWER_BYTES) throw this.tooLarge(roomId);
    return { events, bytes };
  }

  private requireHubRoom(roomId: string) {
    const room = this.rooms.room(roomId);
    if (room === undefined) throw new RoomError("M_NOT_FOUND", `unknown room ${roomId}`);
    if (room.record.role !== "hub") {
      throw new FederationError(
        400,
        "M_WRONG_HUB",
        `${this.serverName} is not the hub of ${roomId}; ask ${room.record.hubServer}`,
      );
    }
    return room;
  }

  /** Who may read a room's events, as its version says (servers with a joined user, and the hub). */
  private requireVisible(origin: string, roomId: string) {
    const room = this.rooms.room(roomId);
    if (room === undefined || !room.version.mayRead(room.state, origin, room.record.hubServer)) {
      throw new RoomError("M_NOT_FOUND", `room ${roomId} is unknown or not visible to ${origin}`);
    }
    return room;
  }

  async onGetEvent(origin: string, eventId: string): Promise<JsonObject> {
    const stored = await this.rooms.getEvent(eventId);
    if (stored === undefined) throw new RoomError("M_NOT_FOUND", `unknown event ${eventId}`);
    this.requireVisible(origin, stored.roomId);
    return JSON.parse(stored.json) as JsonObject;
  }

  async onGetState(origin: string, roomId: string, eventId: string, idsOnly: boolean): Promise<JsonObject> {
    this.requireVisible(origin, roomId);
    this.requireHubRoom(roomId);
    const before = await this.rooms.stateBefore(roomId, eventId);
    if (before === undefined) throw new RoomError("M_NOT_FOUND", `event ${eventId} is not in room ${roomId}`);
    const { events, bytes } = await this.stateEvents(
      roomId,
      before.state.map((e) => e.eventId),
    );
    const chain = await this.rooms.store.authChain(roomId, events, { maxBytes: MAX_ANSWER_BYTES - bytes });
    if (!chain.complete) throw this.tooLarge(roomId);
    if (idsOnly) {
      return { pdu_ids: events.map((e) => e.eventId), auth_chain_ids: chain.events.map((e) => e.eventId) };
    }
    return {
      pdus: events.map((e) => JSON.parse(e.json) as JsonObject),
      auth_chain: chain.events.map((e) => JSON.parse(e.json) as JsonObject),
    };
  }

  async onBackfill(origin: string, roomId: string, from: string, limit: number): Promise<JsonObject> {
    this.requireVisible(origin, roomId);
    const stored = await this.rooms.getEvent(from);
    if (stored === undefined || stored.roomId !== roomId) {
      throw new RoomError("M_NOT_FOUND", `event ${from} is not in room ${roomId}`);
    }
    const events = await this.rooms.getEventsBackwards(
      roomId,
      stored.seq,
      Math.min(limit, MAX_BACKFILL_LIMIT),
    );
    return { pdus: events.reverse().map((e) => JSON.parse(e.json) as JsonObject) };
  }
}

type Parsed =
  | { kind: "limited"; event: LimitedEvent }
  | { kind: "full"; event: FullyFormedEvent }
  | { kind: "invalid"; event: undefined };

/** Parses a PDU once, as the kind its fields say (LM-04: an LPDU has no `prev_events`). */
function parseOnce(raw: unknown): Parsed {
  try {
    return (raw as { prev_events?: unknown } | null)?.prev_events === undefined
      ? { kind: "limited", event: parseLimitedEvent(raw) }
      : { kind: "full", event: parseFullyFormedEvent(raw) };
  } catch {
    return { kind: "invalid", event: undefined };
  }
}

function checkTransactionBody(body: unknown): { pdus: unknown[]; edus: unknown[] } {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new FederationError(400, "M_BAD_JSON", "the transaction must be a JSON object");
  }
  const { pdus, edus } = body as { pdus?: unknown; edus?: unknown };
  if (!Array.isArray(pdus)) throw new FederationError(400, "M_BAD_JSON", "pdus must be an array");
  if (pdus.length > MAX_PDUS) {
    throw new FederationError(400, "M_BAD_JSON", `pdus has ${pdus.length} entries; at most ${MAX_PDUS}`);
  }
  if (edus !== undefined && !Array.isArray(edus))
    throw new FederationError(400, "M_BAD_JSON", "edus must be an array");
  if (Array.isArray(edus) && edus.length > MAX_EDUS) {
    throw new FederationError(400, "M_BAD_JSON", `edus has ${edus.length} entries; at most ${MAX_EDUS}`);
  }
  return { pdus, edus: (edus as unknown[] | undefined) ?? [] };
}

function failureOf(err: unknown): { errcode: string; error: string } {
  if (err instanceof MimiError) return { errcode: err.errcode, error: err.message };
  return { errcode: "M_UNKNOWN", error: "internal error" };
}
