import type { Server } from "node:http";
import type { ProviderConfig } from "../config/config";
import { parseFullyFormedEvent, parseLimitedEvent } from "../events/envelope";
import { computeEventId, createLimitedEvent, verifyLimitedEvent } from "../events/pdu";
import { loadOrCreateSigningKey } from "../events/signingKeyFile";
import type { ServerSigningKey } from "../events/signingKey";
import type { FullyFormedEvent, JsonObject, LimitedEvent } from "../events/types";
import { isValidRoomId, parseRoomId, parseUserId, serverNameOf } from "../identifiers";
import { createLogger, setLogLevel, type Logger } from "../logging";
import { GapError, RoomError } from "../room/errors";
import type { RoomEventNotice, RoomService } from "../room/roomService";
import { RoomService as RoomServiceImpl } from "../room/roomService";
import { DEFAULT_ROOM_VERSION, getRoomVersion, supportedRoomVersions } from "../roomVersions";
import type { RoomStateView, RoomVersion } from "../roomVersions/types";
import type { BatchOp } from "../store/kv";
import { LevelStore } from "../store/levelStore";
import { ensureSchema } from "../store/schema";
import { RoomStore } from "../store/roomStore";
import { FederationClient, type FetchFn } from "./client";
import { ServerResolver, type Resolver } from "./discovery";
import { FederationError, httpStatusFor, isErrorCode, RemoteError } from "./errors";
import { KeyRing } from "./keys";
import { PendingInvites, type PendingInvite } from "./pendingInvites";
import { OutboundDelivery, OutboundQueue, type PduResult, type SendBody, type SendResponse } from "./queue";
import { createFederationApp } from "./server/app";
import { TransactionStore } from "./transactionStore";

/** LM-04 §Sending Events: at most 50 PDUs and 100 EDUs in one transaction. */
const MAX_PDUS = 50;
const MAX_EDUS = 100;
const BACKFILL_PAGE = 200;
const MAX_BACKFILL_LIMIT = 1000;
const SEND_TIMEOUT_MS = 60_000;
const CATCH_UP_RETRY_MAX_MS = 60_000;

export type Membership = "join" | "leave" | "knock";

/** Per-PDU answer of `PUT /send`: `{}` accepted, `{event_id}` for a sequenced LPDU, or an error. */
export type PduAnswer = { event_id?: string } | { errcode: string; error: string };

export interface SendTransactionAnswer {
  pdus: Record<string, PduAnswer>;
  failed_pdus: Record<string, { errcode: string; error: string }>;
}

interface PendingSend {
  resolve: (eventId: string) => void;
  reject: (err: Error) => void;
}

export interface ProviderOptions {
  fetch?: FetchFn;
  /** Delivery backoff base and cap in ms (tests shorten them). */
  backoff?: { baseMs?: number; capMs?: number };
}

/**
 * One MIMI provider: our rooms (as hub or follower), our server keys, the
 * federation listener and the durable outbound queues. Local users act
 * through its methods; other providers through HTTP.
 */
export class MimiProvider {
  private readonly pendingSends = new Map<string, PendingSend>();
  private readonly catchUps = new Map<
    string,
    { running: Promise<void>; again: string | undefined; hubServer: string }
  >();
  private readonly fanOutTargets = new Map<string, string[]>();
  /** Rooms whose send_join is under way, by hub: events the hub sends meanwhile start the catch-up. */
  private readonly joining = new Map<string, string>();
  private httpServer: Server | undefined;
  private stopped = false;
  private delivery!: OutboundDelivery;
  readonly log: Logger;

  private constructor(
    readonly config: ProviderConfig,
    readonly signingKey: ServerSigningKey,
    private readonly kv: LevelStore,
    readonly keyRing: KeyRing,
    readonly rooms: RoomService,
    readonly client: FederationClient,
    readonly queue: OutboundQueue,
    private readonly transactions: TransactionStore,
    readonly invites: PendingInvites,
  ) {
    this.log = createLogger("provider", { server: config.serverName });
  }

  get serverName(): string {
    return this.config.serverName;
  }

  static async start(config: ProviderConfig, options: ProviderOptions = {}): Promise<MimiProvider> {
    setLogLevel(config.logging.level);
    const signingKey = await loadOrCreateSigningKey(config.signingKeyPath, config.serverName);
    const kv = await LevelStore.open(config.database.path, { durability: config.database.durability });
    await ensureSchema(kv);
    const discovery = new ServerResolver({
      staticMap: config.federation.staticRoutes,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    const resolver: Resolver = config.federation.wellKnown
      ? discovery
      : { resolve: (name) => staticRouteOnly(config.federation.staticRoutes, name, discovery) };
    const keyRing = await KeyRing.open({
      ourKey: signingKey,
      ourOldKeys: config.oldVerifyKeys,
      store: kv,
      resolver,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    const rooms = await RoomServiceImpl.open({ signingKey, store: new RoomStore(kv), keys: keyRing });
    const client = new FederationClient({
      signingKey,
      resolver,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    const queue = await OutboundQueue.open(kv);
    const provider = new MimiProvider(
      config,
      signingKey,
      kv,
      keyRing,
      rooms,
      client,
      queue,
      new TransactionStore(kv),
      new PendingInvites(kv),
    );
    provider.delivery = new OutboundDelivery(queue, {
      send: (destination, txnId, body, signal) => provider.sendTransaction(destination, txnId, body, signal),
      onResults: (destination, txnId, results, pduIds) =>
        provider.onDeliveryResults(destination, txnId, results, pduIds),
      onError: (destination, error, info) =>
        provider.log.warn("delivery failed", {
          destination,
          error,
          attempt: info.attempt,
          retryInMs: info.retryInMs,
        }),
      backoff: {
        baseMs: config.federation.retryBaseMs,
        capMs: config.federation.retryMaxMs,
        ...options.backoff,
      },
    });
    rooms.addAppendHook((notice, state) => provider.fanOutOps(notice, state));
    rooms.subscribe((notice) => provider.afterAppend(notice));
    provider.delivery.start();
    await provider.listen();
    provider.log.info("provider started", {
      federation: `${config.federation.bindAddress}:${provider.federationPort}`,
      rooms: rooms.roomIds().length,
      keyId: signingKey.keyId,
    });
    return provider;
  }

  private async listen(): Promise<void> {
    const app = createFederationApp(this);
    await new Promise<void>((resolve, reject) => {
      const server = app.listen(this.config.federation.port, this.config.federation.bindAddress, () =>
        resolve(),
      );
      server.on("error", reject);
      this.httpServer = server;
    });
  }

  get federationPort(): number {
    const address = this.httpServer?.address();
    return typeof address === "object" && address !== null ? address.port : this.config.federation.port;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await new Promise<void>((resolve) => {
      if (this.httpServer === undefined) return resolve();
      this.httpServer.close(() => resolve());
      this.httpServer.closeAllConnections();
    });
    await this.delivery.stop();
    for (const pending of this.pendingSends.values()) pending.reject(new Error("provider stopped"));
    this.pendingSends.clear();
    await Promise.allSettled([...this.catchUps.values()].map((c) => c.running));
    await this.kv.close();
  }

  // ---------------------------------------------------------------- fan-out (hub)

  /** Servers with at least one joined user (LM-04 §Sending Events). */
  private joinedServers(state: RoomStateView): Set<string> {
    const servers = new Set<string>();
    for (const entry of state.entriesOfType("m.room.user")) {
      if (entry.content.participation === "join") servers.add(serverNameOf(entry.stateKey));
    }
    return servers;
  }

  /**
   * Queues a sequenced event for every other server in the room, in the same
   * batch as the append. The target of a participation change hears of it too
   * (a kick, ban, or its own leave), as LM-04 §Sending Events asks.
   */
  private fanOutOps(notice: RoomEventNotice, state: RoomStateView): BatchOp[] {
    if (notice.role !== "hub") return [];
    const targets = this.joinedServers(state);
    if (notice.event.type === "m.room.user" && notice.event.state_key !== undefined) {
      const participation = notice.event.content.participation;
      if (participation === "leave" || participation === "ban")
        targets.add(serverNameOf(notice.event.state_key));
    }
    targets.delete(this.serverName);
    if (targets.size === 0) return [];
    const destinations = [...targets];
    this.fanOutTargets.set(notice.eventId, destinations);
    const item = { kind: "pdu" as const, id: notice.eventId, body: notice.event };
    return destinations.flatMap((destination) => this.queue.enqueueOps(destination, [item]));
  }

  private afterAppend(notice: RoomEventNotice): void {
    const destinations = this.fanOutTargets.get(notice.eventId);
    if (destinations === undefined) return;
    this.fanOutTargets.delete(notice.eventId);
    for (const destination of destinations) this.delivery.wake(destination);
  }

  private async sendTransaction(
    destination: string,
    txnId: string,
    body: SendBody,
    _signal: AbortSignal,
  ): Promise<SendResponse> {
    const path = `/_matrix/federation/v2/send/${encodeURIComponent(txnId)}`;
    const payload = body.edus.length > 0 ? body : { pdus: body.pdus };
    const answer = await this.client.request<SendTransactionAnswer>(destination, "PUT", path, payload);
    const pdus: Record<string, PduResult> = {};
    for (const [id, result] of Object.entries(answer.pdus ?? {})) pdus[id] = result as PduResult;
    return { pdus, failed_pdus: answer.failed_pdus ?? {} };
  }

  private onDeliveryResults(
    destination: string,
    _txnId: string,
    results: Record<string, PduResult>,
    pduIds: string[],
  ): void {
    for (const id of pduIds) {
      const result = results[id] as (PduResult & { event_id?: string }) | undefined;
      const pending = this.pendingSends.get(id);
      if (result?.errcode !== undefined || result?.error !== undefined) {
        this.log.warn("event refused by peer", {
          destination,
          id,
          errcode: result.errcode,
          error: result.error,
        });
        const errcode = result.errcode ?? "M_UNKNOWN";
        const status = isErrorCode(errcode) ? httpStatusFor(errcode) : 400;
        pending?.reject(new RemoteError(status, errcode, result.error ?? "", destination));
      } else {
        pending?.resolve(result?.event_id ?? id);
      }
      this.pendingSends.delete(id);
    }
  }

  // ---------------------------------------------------------------- local users

  private requireLocalUser(userId: string): void {
    if (parseUserId(userId).serverName !== this.serverName) {
      throw new FederationError(400, "M_INVALID_PARAM", `${userId} is not a user of ${this.serverName}`);
    }
  }

  /** Creates a room with us as its hub; `creator` is one of our users. */
  async createRoom(creator: string, options: { roomLocalpart?: string } = {}): Promise<string> {
    this.requireLocalUser(creator);
    return this.rooms.createRoom(creator, options);
  }

  /**
   * Sends an event for one of our users: sequenced here when we are the hub,
   * otherwise queued durably for the hub as a limited event. Resolves with the
   * event ID once the hub has accepted it.
   */
  async sendEvent(
    roomId: string,
    sender: string,
    type: string,
    content: JsonObject,
    stateKey?: string,
  ): Promise<string> {
    this.requireLocalUser(sender);
    const room = this.rooms.room(roomId);
    if (room === undefined) throw new RoomError("M_NOT_FOUND", `${this.serverName} is not in room ${roomId}`);
    if (room.record.role === "hub") {
      return (await this.rooms.sendAsHub(roomId, sender, type, content, stateKey)).eventId;
    }
    const lpdu = this.rooms.buildLimitedEvent(roomId, sender, type, content, stateKey);
    return this.sendToHub(room.record.hubServer, lpdu);
  }

  private async sendToHub(hub: string, lpdu: LimitedEvent): Promise<string> {
    const id = computeEventId(lpdu as unknown as FullyFormedEvent, versionFor(this.rooms, lpdu.room_id));
    const accepted = new Promise<string>((resolve, reject) => {
      this.pendingSends.set(id, { resolve, reject });
    });
    await this.queue.enqueue(hub, [{ kind: "pdu", id, body: lpdu }]);
    this.delivery.wake(hub);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new RoomError(
              "M_UNKNOWN",
              `the hub ${hub} has not answered yet; the event stays queued and will be retried`,
            ),
          ),
        SEND_TIMEOUT_MS,
      );
    });
    try {
      return await Promise.race([accepted, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** `sender` invites `target` (ours or another server's): LM-04 §Invites. */
  async invite(roomId: string, sender: string, target: string): Promise<string> {
    this.requireLocalUser(sender);
    parseUserId(target);
    const room = this.rooms.room(roomId);
    if (room === undefined) throw new RoomError("M_NOT_FOUND", `${this.serverName} is not in room ${roomId}`);
    const content = { participation: "invite" };
    if (room.record.role === "follower") {
      const lpdu = this.rooms.buildLimitedEvent(roomId, sender, "m.room.user", content, target);
      const targetServer = serverNameOf(target);
      if (this.joinedServers(room.state).has(targetServer))
        return this.sendToHub(room.record.hubServer, lpdu);
      const answer = await this.client.request<{ event_id: string }>(
        room.record.hubServer,
        "POST",
        `/_matrix/federation/v3/invite/${encodeURIComponent(lpduTxnId(lpdu))}`,
        { event: lpdu, room_version: room.version.id, invite_room_state: [] },
      );
      return answer.event_id;
    }
    const lpdu = this.rooms.buildLimitedEvent(roomId, sender, "m.room.user", content, target);
    return this.inviteAsHub(lpdu, this.serverName);
  }

  /**
   * Hub: sequence an invite, asking the invitee's server first when it is not
   * in the room yet (it may refuse, e.g. for an unknown user).
   */
  private async inviteAsHub(lpdu: LimitedEvent, origin: string): Promise<string> {
    const target = lpdu.state_key!;
    const targetServer = serverNameOf(target);
    const room = this.rooms.room(lpdu.room_id)!;
    const decision = this.rooms.checkAllowed(lpdu.room_id, lpdu.sender, "m.room.user", lpdu.content, target);
    if (!decision.allowed)
      throw new FederationError(
        403,
        "M_FORBIDDEN",
        `invite refused by rule ${decision.rule}: ${decision.reason}`,
      );
    if (targetServer !== this.serverName && !this.joinedServers(room.state).has(targetServer)) {
      await this.client.request(
        targetServer,
        "POST",
        `/_matrix/federation/v3/invite/${encodeURIComponent(lpduTxnId(lpdu))}`,
        {
          event: lpdu,
          room_version: room.version.id,
          invite_room_state: this.strippedState(lpdu.room_id),
        },
      );
    }
    await this.ensureEventKeys(lpdu);
    return (await this.rooms.submitParsedLimitedEvent(lpdu, origin)).eventId;
  }

  /** LM-04 §Stripped State: create, name, avatar, topic and join rules, for context only. */
  strippedState(roomId: string): JsonObject[] {
    const room = this.rooms.room(roomId);
    if (room === undefined) return [];
    const stripped: JsonObject[] = [];
    for (const type of [
      "m.room.create",
      "m.room.name",
      "m.room.avatar",
      "m.room.topic",
      "m.room.join_rules",
    ]) {
      const entry = room.state.get(type, "");
      if (entry !== undefined)
        stripped.push({ type, state_key: "", sender: entry.sender, content: entry.content });
    }
    return stripped;
  }

  /** One of our users joins, leaves or knocks: directly when we are in the room, else make/send via the hub. */
  async membership(roomId: string, userId: string, change: Membership, reason?: string): Promise<string> {
    this.requireLocalUser(userId);
    parseRoomId(roomId);
    const content: JsonObject = { participation: change, ...(reason === undefined ? {} : { reason }) };
    if (this.rooms.room(roomId) !== undefined) {
      const eventId = await this.sendEvent(roomId, userId, "m.room.user", content, userId);
      if (change !== "knock") await this.invites.remove(roomId, userId);
      return eventId;
    }
    const invite = await this.invites.get(roomId, userId);
    const hub = invite?.hubServer ?? serverNameOf(roomId);
    const versions = supportedRoomVersions();
    const query = versions.map((v) => `ver=${encodeURIComponent(v)}`).join("&");
    const made = await this.client.request<{ event: JsonObject; room_version: string }>(
      hub,
      "GET",
      `/_matrix/federation/v1/make_${change}/${encodeURIComponent(roomId)}/${encodeURIComponent(userId)}?${query}`,
    );
    const version = getRoomVersion(made.room_version);
    if (version === undefined) {
      throw new RoomError(
        "M_INCOMPATIBLE_ROOM_VERSION",
        `room version ${made.room_version} is not supported`,
      );
    }
    const hubServer = typeof made.event?.hub_server === "string" ? made.event.hub_server : hub;
    const lpdu = createLimitedEvent(
      {
        room_id: roomId,
        type: "m.room.user",
        state_key: userId,
        sender: userId,
        origin_server_ts: Date.now(),
        hub_server: hubServer,
        content,
      },
      this.signingKey,
      version,
    );
    const path = `/_matrix/federation/v3/send_${change}/${encodeURIComponent(lpduTxnId(lpdu))}`;
    if (change === "join") this.joining.set(roomId, hubServer);
    let answer: { event?: JsonObject; event_id?: string };
    try {
      answer = await this.client.request<{ event?: JsonObject; event_id?: string }>(
        hubServer,
        "POST",
        path,
        lpdu,
      );
    } finally {
      if (change === "join") this.joining.delete(roomId);
    }
    if (change !== "knock") await this.invites.remove(roomId, userId);
    if (change === "join") {
      const joinEvent = parseFullyFormedEvent(answer.event);
      const eventId = computeEventId(joinEvent, version);
      await this.catchUp(roomId, hubServer, eventId);
      return eventId;
    }
    return answer.event_id ?? "";
  }

  // ---------------------------------------------------------------- catch-up (follower)

  /**
   * Pulls the history from the hub backwards from `eventId` until it meets our
   * head (or the create event for a room we are joining), then applies it
   * forwards. One catch-up per room at a time; a later request re-runs it.
   */
  catchUp(roomId: string, hubServer: string, eventId: string): Promise<void> {
    const current = this.catchUps.get(roomId);
    if (current !== undefined) {
      current.again = eventId;
      return current.running;
    }
    const entry = { running: Promise.resolve(), again: undefined as string | undefined, hubServer };
    entry.running = (async () => {
      let target: string | undefined = eventId;
      try {
        while (target !== undefined) {
          entry.again = undefined;
          await this.catchUpOnce(roomId, hubServer, target);
          target = entry.again;
        }
      } finally {
        this.catchUps.delete(roomId);
      }
    })();
    this.catchUps.set(roomId, entry);
    return entry.running;
  }

  /**
   * A catch-up nobody awaits: the event was acknowledged to the hub, so a
   * failure is retried with backoff until it succeeds or the provider stops.
   */
  private catchUpInBackground(roomId: string, hubServer: string, eventId: string, attempt = 0): void {
    this.catchUp(roomId, hubServer, eventId).catch((error: unknown) => {
      if (this.stopped) return;
      const delay = Math.min(CATCH_UP_RETRY_MAX_MS, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
      this.log.warn("catch-up failed; retrying", { roomId, hubServer, error, retryInMs: Math.round(delay) });
      setTimeout(() => {
        if (!this.stopped) this.catchUpInBackground(roomId, hubServer, eventId, attempt + 1);
      }, delay).unref();
    });
  }

  private async catchUpOnce(roomId: string, hubServer: string, eventId: string): Promise<void> {
    const room = this.rooms.room(roomId);
    const head = room?.state.headEventId;
    const missing: FullyFormedEvent[] = [];
    let from = eventId;
    for (;;) {
      const page = await this.client.request<{ pdus: unknown[] }>(
        hubServer,
        "GET",
        `/_matrix/federation/v2/backfill/${encodeURIComponent(roomId)}?v=${encodeURIComponent(from)}&limit=${BACKFILL_PAGE}`,
      );
      if (!Array.isArray(page.pdus) || page.pdus.length === 0) {
        throw new RoomError("M_BAD_JSON", `backfill from ${hubServer} returned no events`);
      }
      const events = page.pdus.map((pdu) => parseFullyFormedEvent(pdu));
      let reached = false;
      for (let i = events.length - 1; i >= 0; i--) {
        const event = events[i]!;
        if (head !== undefined && computeEventId(event, versionFor(this.rooms, event.room_id)) === head) {
          reached = true;
          break;
        }
        missing.push(event);
        if (event.prev_events.length === 0) {
          reached = true;
          break;
        }
      }
      if (reached) break;
      from = events[0]!.prev_events[0]!;
      if (room !== undefined && (await this.rooms.getEvent(from)) !== undefined) break;
    }
    missing.reverse();
    for (const event of missing) {
      await this.ensureEventKeys(event);
      if (this.rooms.room(roomId) === undefined) await this.rooms.followParsedRoom(event);
      else await this.rooms.applyParsedEvent(event);
    }
    this.log.debug("caught up", { roomId, applied: missing.length });
  }

  // ---------------------------------------------------------------- keys

  /** Fetches the keys needed to check an event's signatures: the hub's and the origin's. */
  async ensureEventKeys(event: {
    sender: string;
    hub_server?: string;
    signatures: LimitedEvent["signatures"];
  }) {
    const servers = new Set([serverNameOf(event.sender)]);
    if (event.hub_server !== undefined) servers.add(event.hub_server);
    await Promise.all(
      [...servers].map((server) => {
        const keyIds = Object.keys(event.signatures[server] ?? {});
        return keyIds.length === 0 ? Promise.resolve() : this.keyRing.ensureKeys(server, keyIds);
      }),
    );
  }

  // ---------------------------------------------------------------- inbound (called by the HTTP layer)

  /** `PUT /send/:txnId`: each PDU in order, each with its own result (LM-04 §Sending Events). */
  onSendTransaction(origin: string, txnId: string, body: unknown): Promise<SendTransactionAnswer> {
    return this.transactions.once(origin, "send", txnId, async () => {
      const { pdus } = checkTransactionBody(body);
      const answer: SendTransactionAnswer = { pdus: {}, failed_pdus: {} };
      for (const [index, raw] of pdus.entries()) {
        const id = safeEventId(this.rooms, raw, index);
        try {
          answer.pdus[id] = await this.receivePdu(origin, raw);
        } catch (err) {
          const failure = failureOf(err);
          answer.pdus[id] = failure;
          answer.failed_pdus[id] = failure;
          this.log.info("refused a PDU", { origin, id, errcode: failure.errcode, error: failure.error });
        }
      }
      return answer;
    });
  }

  private async receivePdu(origin: string, raw: unknown): Promise<PduAnswer> {
    const roomId = (raw as { room_id?: unknown } | null)?.room_id;
    if (typeof roomId !== "string" || !isValidRoomId(roomId)) {
      throw new FederationError(400, "M_BAD_JSON", "the PDU has no valid room_id");
    }
    const room = this.rooms.room(roomId);
    if (room === undefined) {
      // Events fanned out while we are still pulling the history of a room we just joined.
      const joining = this.catchUps.get(roomId)?.hubServer ?? this.joining.get(roomId);
      if (joining !== origin) {
        throw new RoomError("M_NOT_FOUND", `${this.serverName} is not in room ${roomId}`);
      }
      const event = parseFullyFormedEvent(raw);
      const eventId = computeEventId(event, versionFor(this.rooms, event.room_id));
      this.catchUpInBackground(roomId, origin, eventId);
      return { event_id: eventId };
    }
    if (room.record.role === "hub") {
      const lpdu = parseLimitedEvent(raw);
      await this.ensureEventKeys(lpdu);
      const result = await this.rooms.submitParsedLimitedEvent(lpdu, origin);
      return { event_id: result.eventId };
    }
    if (origin !== room.record.hubServer) {
      throw new FederationError(
        403,
        "M_FORBIDDEN",
        `only the hub ${room.record.hubServer} sends events of ${roomId} to us`,
      );
    }
    const event = parseFullyFormedEvent(raw);
    await this.ensureEventKeys(event);
    try {
      const result = await this.rooms.applyParsedEvent(event);
      return { event_id: result.eventId };
    } catch (err) {
      if (!(err instanceof GapError)) throw err;
      // The event and everything before it are pulled from the hub.
      const eventId = computeEventId(event, room.version);
      this.catchUpInBackground(roomId, origin, eventId);
      return { event_id: eventId };
    }
  }

  /** `POST /invite/:txnId`: to the invitee's server, or to the hub from a follower (relayed). */
  onInvite(origin: string, txnId: string, body: unknown): Promise<Record<string, unknown>> {
    return this.transactions.once(origin, "invite", txnId, async () => {
      if (typeof body !== "object" || body === null)
        throw new FederationError(400, "M_BAD_JSON", "body must be an object");
      const {
        event,
        room_version: roomVersion,
        invite_room_state: strippedState,
      } = body as Record<string, unknown>;
      const lpdu = parseLimitedEvent(event);
      if (
        lpdu.type !== "m.room.user" ||
        lpdu.content.participation !== "invite" ||
        lpdu.state_key === undefined
      ) {
        throw new FederationError(400, "M_BAD_JSON", "event must be an m.room.user invite");
      }
      if (serverNameOf(lpdu.sender) !== origin && lpdu.hub_server !== origin) {
        throw new FederationError(403, "M_FORBIDDEN", `${origin} cannot send invites from ${lpdu.sender}`);
      }
      if (typeof roomVersion !== "string" || getRoomVersion(roomVersion) === undefined) {
        throw new FederationError(
          400,
          "M_INCOMPATIBLE_ROOM_VERSION",
          `room version ${String(roomVersion)} is not supported here`,
        );
      }
      if (serverNameOf(lpdu.state_key) === this.serverName) {
        await this.ensureEventKeys(lpdu);
        verifyLimitedEvent(lpdu, this.keyRing, getRoomVersion(roomVersion)!);
        const invite: PendingInvite = {
          roomId: lpdu.room_id,
          userId: lpdu.state_key,
          hubServer: lpdu.hub_server,
          inviter: lpdu.sender,
          roomVersion,
          strippedState: Array.isArray(strippedState) ? (strippedState as JsonObject[]).slice(0, 20) : [],
          event: lpdu,
          receivedTs: Date.now(),
        };
        await this.invites.put(invite);
        this.log.info("invite received", {
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
      return { event_id: await this.inviteAsHub(lpdu, origin) };
    });
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
    const content = { participation: change };
    const decision = this.rooms.checkAllowed(roomId, userId, "m.room.user", content, userId);
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
        type: "m.room.user",
        state_key: userId,
        sender: userId,
        hub_server: this.serverName,
        content,
      },
      room_version: room.version.id,
    };
  }

  /** `POST /send_{join,leave,knock}/:txnId`: sequence the filled template. */
  onSendMembership(
    origin: string,
    change: Membership,
    txnId: string,
    body: unknown,
  ): Promise<Record<string, unknown>> {
    return this.transactions.once(origin, `send_${change}`, txnId, async () => {
      const lpdu = parseLimitedEvent(body);
      if (
        lpdu.type !== "m.room.user" ||
        lpdu.state_key !== lpdu.sender ||
        lpdu.content.participation !== change
      ) {
        throw new FederationError(400, "M_BAD_JSON", `event must be the sender's own m.room.user ${change}`);
      }
      this.requireHubRoom(lpdu.room_id);
      await this.ensureEventKeys(lpdu);
      const result = await this.rooms.submitParsedLimitedEvent(lpdu, origin);
      if (change === "knock") return { stripped_state: this.strippedState(lpdu.room_id) };
      if (change === "leave") return { event_id: result.eventId };
      const stored = await this.rooms.getEvent(result.eventId);
      const room = this.rooms.room(lpdu.room_id)!;
      const stateEvents = await this.eventsById([...room.state.allEntries()].map((e) => e.eventId));
      return {
        event: JSON.parse(stored!.json) as JsonObject,
        state: stateEvents,
        auth_chain: await this.authChain(stateEvents),
      };
    });
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

  private async eventsById(ids: string[]): Promise<JsonObject[]> {
    const events: JsonObject[] = [];
    for (const id of ids) {
      const stored = await this.rooms.getEvent(id);
      if (stored !== undefined) events.push(JSON.parse(stored.json) as JsonObject);
    }
    return events;
  }

  /** The auth events of `events`, and theirs, down to the create event (LM-04 §`GET /state`). */
  private async authChain(events: JsonObject[]): Promise<JsonObject[]> {
    const seen = new Set<string>();
    const chain: JsonObject[] = [];
    let frontier = events.flatMap((e) => (e.auth_events as string[] | undefined) ?? []);
    while (frontier.length > 0) {
      const next: string[] = [];
      for (const id of frontier) {
        if (seen.has(id)) continue;
        seen.add(id);
        const stored = await this.rooms.getEvent(id);
        if (stored === undefined) continue;
        const event = JSON.parse(stored.json) as JsonObject;
        chain.push(event);
        next.push(...((event.auth_events as string[] | undefined) ?? []));
      }
      frontier = next;
    }
    return chain;
  }

  /** Who may read a room's events: servers with a joined user, and the hub. */
  private requireVisible(origin: string, roomId: string) {
    const room = this.rooms.room(roomId);
    if (
      room === undefined ||
      !(this.joinedServers(room.state).has(origin) || origin === room.record.hubServer)
    ) {
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
    const stateIds = [...before.state.allEntries()].map((e) => e.eventId);
    const pdus = await this.eventsById(stateIds);
    const chain = await this.authChain(pdus);
    if (idsOnly) {
      return {
        pdu_ids: stateIds,
        auth_chain_ids: chain.map((e) =>
          computeEventId(e as unknown as FullyFormedEvent, versionFor(this.rooms, e.room_id)),
        ),
      };
    }
    return { pdus, auth_chain: chain };
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

  /** Our users' view for the admin API and the demo. */
  async history(roomId: string): Promise<{ seq: number; eventId: string; event: FullyFormedEvent }[]> {
    const events = await this.rooms.getEvents(roomId, 1, 1_000_000);
    return events.map((e) => ({
      seq: e.seq,
      eventId: e.eventId,
      event: JSON.parse(e.json) as FullyFormedEvent,
    }));
  }

  metricsSnapshot(): { rooms: number; queues: Record<string, number> } {
    const queues: Record<string, number> = {};
    for (const destination of this.queue.destinations()) queues[destination] = this.queue.depth(destination);
    return { rooms: this.rooms.roomIds().length, queues };
  }
}

/**
 * The room version used to compute an event ID: the room's own when we are in
 * it, else our default (for correlating events of rooms we are still joining).
 */
function versionFor(rooms: RoomService, roomId: unknown): RoomVersion {
  const room = typeof roomId === "string" ? rooms.room(roomId) : undefined;
  return room?.version ?? getRoomVersion(DEFAULT_ROOM_VERSION)!;
}

/** With `.well-known` discovery turned off, only servers in the static routes are reachable. */
function staticRouteOnly(
  routes: Record<string, string>,
  serverName: string,
  resolver: Resolver,
): Promise<URL> {
  if (routes[serverName] === undefined) {
    return Promise.reject(
      new FederationError(
        404,
        "M_NOT_FOUND",
        `no route to ${serverName}: it is not in federation.static_routes and well_known is off`,
      ),
    );
  }
  return resolver.resolve(serverName);
}

/** A transaction ID for requests that carry one LPDU: its hash, so a retry reuses it. */
function lpduTxnId(lpdu: LimitedEvent): string {
  return lpdu.hashes.lpdu.sha256.replace(/\+/g, "-").replace(/\//g, "_");
}

function checkTransactionBody(body: unknown): { pdus: unknown[]; edus: unknown[] } {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new FederationError(400, "M_BAD_JSON", "the transaction must be a JSON object");
  }
  const { pdus, edus } = body as { pdus?: unknown; edus?: unknown };
  if (!Array.isArray(pdus)) throw new FederationError(400, "M_BAD_JSON", "pdus must be an array");
  if (pdus.length > MAX_PDUS)
    throw new FederationError(400, "M_BAD_JSON", `pdus has ${pdus.length} entries; at most ${MAX_PDUS}`);
  if (edus !== undefined && !Array.isArray(edus))
    throw new FederationError(400, "M_BAD_JSON", "edus must be an array");
  if (Array.isArray(edus) && edus.length > MAX_EDUS) {
    throw new FederationError(400, "M_BAD_JSON", `edus has ${edus.length} entries; at most ${MAX_EDUS}`);
  }
  return { pdus, edus: (edus as unknown[] | undefined) ?? [] };
}

/** LM-04 §Sending Events: results are keyed by the ID of the object as received. */
function safeEventId(rooms: RoomService, raw: unknown, index: number): string {
  let event: LimitedEvent | FullyFormedEvent;
  try {
    event =
      (raw as { prev_events?: unknown }).prev_events === undefined
        ? parseLimitedEvent(raw)
        : parseFullyFormedEvent(raw);
  } catch {
    // Malformed objects have no meaningful reference hash; they are keyed by position.
    return `invalid:${index}`;
  }
  return computeEventId(event as FullyFormedEvent, versionFor(rooms, event.room_id));
}

function failureOf(err: unknown): { errcode: string; error: string } {
  if (err instanceof FederationError || err instanceof RoomError)
    return { errcode: err.errcode, error: err.message };
  if (err instanceof Error && "errcode" in err) return { errcode: String(err.errcode), error: err.message };
  return { errcode: "M_UNKNOWN", error: "internal error" };
}
