import type { MatrixConfig } from "../config/config";
import type { JsonObject } from "../events/types";
import { isValidRoomId, isValidUserId, makeUserId, serverNameOf } from "../identifiers";
import type { Logger } from "../logging";
import type { InviteInfo, RoomsApi } from "../provider/roomsApiTypes";
import { prefixEnd, type BatchOp, type KvStore } from "../store/kv";
import { ghostUserId, mimiRoomOfAlias, mimiUserOfGhost } from "./ghosts";
import { MimiError } from "../errors";
import { HomeserverError, type HomeserverClient } from "./homeserverClient";
import type { HomeserverInbox, InboxEntry } from "./homeserverInbox";
import { mapMessageContent, referencedEventIds } from "./messageContent";
import { greeting, notAllowed, parseCommand, runCommand } from "./botCommands";
import { permissionLevel, type PermissionLevel } from "./permissions";
import { PortalFollowers } from "./portalFollowers";
import {
  BridgeRecords,
  commandRoomKey,
  creatingKey,
  derivedTxnId,
  isTransient,
  linkOps,
  mimiKey,
  mimiPrefix,
  PORTAL_MARK,
  portalKey,
  postNotice,
  SENDER_NAME,
  SEP,
  type PortalRecord,
} from "./records";

export { derivedTxnId, isTransient };

/** State a user sets on purpose that the MIMI room would not see: worth a notice. */
const NOTED_STATE_TYPES: ReadonlySet<string> = new Set([
  "m.room.avatar",
  "m.room.encryption",
  "m.room.pinned_events",
]);

interface Lane {
  entries: InboxEntry[];
  running: boolean;
  retryMs: number;
}

/** Rooms whose homeserver events are mapped at the same time. */
const MAX_ACTIVE_LANES = 8;
/** Homeserver events read from the inbox into lanes and not mapped yet, at most. */
const MAX_HELD_EVENTS = 10_000;

const NAME_TTL_MS = 10 * 60_000;

const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 60_000;
/**
 * How long a stop waits for the mapping under way (a homeserver request may take 30 s). What is
 * not finished by then stays in the inbox and is mapped again at the next start.
 */
export const STOP_GRACE_MS = 5_000;

export interface MatrixBridgeDeps {
  kv: KvStore;
  inbox: HomeserverInbox;
  client: HomeserverClient;
  rooms: RoomsApi;
  matrix: MatrixConfig;
  /** Our MIMI server name: a local Matrix user `@l:<domain>` is `@l:<mimiServerName>` in MIMI. */
  mimiServerName: string;
  botUserId: string;
  log: Logger;
  /** Told of each homeserver event whose mapping failed for good (errcode, or the error's name). */
  onUnmapped?: (kind: string) => void;
  /** `STOP_GRACE_MS` unless given. */
  stopGraceMs?: number;
}

/**
 * Consumes the homeserver's events in the order they arrived, one batch per event: the bridge's
 * records and the event's removal from the inbox land together, and what it asks of the rooms
 * API and the homeserver carries transaction IDs derived from the event, so replaying an event
 * after a crash makes nothing twice.
 *
 * The Matrix-to-MIMI direction, and the portals' life: a local user's room with the bot invited
 * becomes the portal of a new MIMI room, a direct chat with the bot their command room
 * (botCommands.ts); what they do in a portal (messages, relations, redactions, membership, name
 * and topic) is done in the MIMI room as they, and what its policy refuses is undone in the portal
 * with a notice; MIMI invites for local users and portal aliases make portals. The other
 * direction is `PortalFollowers`. A user whose level in `appservice.permissions` is `none`
 * changes nothing in MIMI.
 */
export class MatrixBridge {
  private stopped = false;
  private wake: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  private readonly followers: PortalFollowers;
  private readonly records: BridgeRecords;
  /** Local users' display names as last read. */
  private readonly localNames = new Map<string, { name: string | undefined; at: number }>();
  private invites: Promise<void> = Promise.resolve();
  /** Each room's events read from the inbox and not yet mapped, in order (see `loop`). */
  private readonly lanes = new Map<string, Lane>();
  private readonly waitingLanes: string[] = [];
  private readonly laneRuns = new Set<Promise<void>>();
  private activeLanes = 0;
  private held = 0;
  private readUpTo: number | undefined;
  private stopNow: () => void = () => undefined;
  private readonly stopping = new Promise<undefined>((resolve) => (this.stopNow = () => resolve(undefined)));

  constructor(private readonly deps: MatrixBridgeDeps) {
    this.followers = new PortalFollowers(deps);
    this.records = new BridgeRecords(deps.kv);
  }

  async start(): Promise<void> {
    const unsubscribeInbox = this.deps.inbox.onEvents(() => this.wake?.());
    const unsubscribeInvites = this.deps.rooms.onInvite((invite) => this.queueInvite(invite));
    this.unsubscribe = () => {
      unsubscribeInbox();
      unsubscribeInvites();
    };
    this.running = this.loop();
    for await (const [key, matrixRoomId] of this.deps.kv.range({
      gte: mimiPrefix,
      lt: prefixEnd(mimiPrefix),
    })) {
      const record = await this.portal(matrixRoomId);
      const mimiRoomId = key.slice(mimiPrefix.length);
      // A portal made for an invite is followed once its user has joined the MIMI room.
      if (record !== undefined && this.deps.rooms.roomInfo(mimiRoomId) !== undefined) {
        this.followers.follow(mimiRoomId, matrixRoomId, record.reader);
      }
    }
    for (const invite of await this.deps.rooms.allInvites()) this.queueInvite(invite);
  }

  private queueInvite(invite: InviteInfo): void {
    this.invites = this.invites.then(() =>
      this.deliverInvite(invite).catch((err: unknown) =>
        this.deps.log.warn("cannot deliver a MIMI invite to the homeserver", {
          roomId: invite.roomId,
          userId: invite.userId,
          error: err,
        }),
      ),
    );
  }

  /**
   * A local user is invited to a MIMI room this provider does not follow: the bot makes a portal
   * room and invites the Matrix user into it; their join there joins the MIMI room.
   */
  private async deliverInvite(invite: InviteInfo): Promise<void> {
    if (this.stopped || (await this.deps.kv.get(mimiKey(invite.roomId))) !== undefined) return;
    const matrixUser = this.matrixUserOf(invite.userId);
    if (matrixUser === undefined) return;
    if (this.levelOf(matrixUser) === "none") {
      this.deps.log.info("a MIMI invite for a user not allowed to use the bridge is not delivered", {
        mimiRoomId: invite.roomId,
        user: matrixUser,
      });
      return;
    }
    const name = invite.strippedState.find((e) => e.type === "m.room.name")?.content as
      | { name?: unknown }
      | undefined;
    const matrixRoomId = await this.openPortal(
      invite.roomId,
      invite.userId,
      typeof name?.name === "string" ? name.name : undefined,
    );
    await this.notice(
      matrixRoomId,
      `${invite.inviter} invites you to the MIMI room ${invite.roomId} (hosted by ${invite.hubServer}). ` +
        "Join this room to accept.",
      derivedTxnId("invited", `${invite.roomId}${SEP}${invite.userId}`),
    );
    this.deps.log.info("portal created for an invite", {
      matrixRoomId,
      mimiRoomId: invite.roomId,
      user: matrixUser,
    });
  }

  /**
   * The portal of a MIMI room for a local user (`mimiUser`, who reads the room for it): when the
   * MIMI room has none yet, the bot creates a Matrix room named `name` (else the MIMI room ID),
   * invites the user's Matrix account and records the room as the portal (`bp`, `bm`) before
   * answering. Answers the portal's Matrix room ID. Following the MIMI room is the caller's call
   * (a user only invited has no client in the room to read it yet).
   */
  async openPortal(mimiRoomId: string, mimiUser: string, name?: string): Promise<string> {
    const existing = await this.deps.kv.get(mimiKey(mimiRoomId));
    if (existing !== undefined) return existing;
    const matrixUser = this.matrixUserOf(mimiUser);
    if (matrixUser === undefined) {
      throw new MimiError("M_INVALID_PARAM", `${mimiUser} is not a user of this homeserver`);
    }
    const { matrixRoomId, recovered } = await this.createPortalRoom(mimiRoomId, {
      preset: "private_chat",
      name: name ?? mimiRoomId,
      invite: [matrixUser],
    });
    // A room made before a crash may not have had its invite out yet.
    if (recovered) await this.deps.client.invite(matrixRoomId, matrixUser).catch(() => undefined);
    const record: PortalRecord = { mimiRoomId, reader: mimiUser };
    await this.deps.kv.commit([
      { type: "put", key: portalKey(matrixRoomId), value: JSON.stringify(record) },
      { type: "put", key: mimiKey(mimiRoomId), value: matrixRoomId },
      { type: "del", key: creatingKey(mimiRoomId) },
    ]);
    return matrixRoomId;
  }

  /**
   * The bot creates a portal room, marked with the MIMI room it portals (state
   * `io.mimi-appservice.portal`). A record of the attempt lands first: after a crash between the
   * homeserver's answer and the portal record, the next attempt finds the room by its mark among
   * the bot's rooms instead of making a second one.
   */
  private async createPortalRoom(
    mimiRoomId: string,
    body: Record<string, unknown>,
  ): Promise<{ matrixRoomId: string; recovered: boolean }> {
    if ((await this.deps.kv.get(creatingKey(mimiRoomId))) !== undefined) {
      for (const roomId of await this.deps.client.joinedRooms()) {
        const mark = await this.deps.client.stateContent(roomId, PORTAL_MARK).catch(() => undefined);
        if (mark?.room_id === mimiRoomId && (await this.portal(roomId)) === undefined) {
          this.deps.log.info("found the portal room made before a restart", {
            matrixRoomId: roomId,
            mimiRoomId,
          });
          return { matrixRoomId: roomId, recovered: true };
        }
      }
    } else {
      await this.deps.kv.commit([{ type: "put", key: creatingKey(mimiRoomId), value: String(Date.now()) }]);
    }
    const matrixRoomId = await this.deps.client.createRoom({
      ...body,
      initial_state: [{ type: PORTAL_MARK, state_key: "", content: { room_id: mimiRoomId } }],
    });
    return { matrixRoomId, recovered: false };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopNow();
    this.unsubscribe?.();
    this.wake?.();
    const inProgress = this.laneRuns.size;
    const finished = (async () => {
      await this.running;
      await Promise.all(this.laneRuns);
      await this.invites;
      await this.followers.stop();
      return true;
    })();
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), this.deps.stopGraceMs ?? STOP_GRACE_MS);
    });
    const done = await Promise.race([finished, graceOver]);
    clearTimeout(timer);
    if (!done) {
      this.deps.log.warn("stopped without waiting longer for the homeserver events being mapped", {
        rooms: inProgress,
        note: "they stay in the inbox and are mapped again at the next start",
      });
    }
  }

  /**
   * The homeserver asks for an alias of our namespace: a portal alias names a MIMI room, and the
   * bot makes a portal for it with that alias, which anyone on the homeserver may join; their
   * join there is their join of the MIMI room, whose policy decides (a refused join is undone).
   * A room that has a portal already gets the alias on it.
   */
  async portalForAlias(alias: string): Promise<boolean> {
    const { aliasPrefix } = this.deps.matrix.appservice;
    const mimiRoomId = mimiRoomOfAlias(alias, aliasPrefix, this.deps.matrix.domain);
    if (mimiRoomId === undefined || !isValidRoomId(mimiRoomId) || this.stopped) return false;
    const existing = await this.deps.kv.get(mimiKey(mimiRoomId));
    if (existing !== undefined) {
      await this.deps.client.setAlias(alias, existing);
      return true;
    }
    const localpart = alias.slice(1, alias.lastIndexOf(":"));
    const { matrixRoomId, recovered } = await this.createPortalRoom(mimiRoomId, {
      preset: "public_chat",
      visibility: "private",
      room_alias_name: localpart,
      name: mimiRoomId,
      topic: `The MIMI room ${mimiRoomId}, hosted by ${serverNameOf(mimiRoomId)}`,
    });
    if (recovered) await this.deps.client.setAlias(alias, matrixRoomId);
    // No reader yet: the first local user to join reads the MIMI room for the portal.
    const record: PortalRecord = { mimiRoomId, reader: "" };
    await this.deps.kv.commit([
      { type: "put", key: portalKey(matrixRoomId), value: JSON.stringify(record) },
      { type: "put", key: mimiKey(mimiRoomId), value: matrixRoomId },
      { type: "del", key: creatingKey(mimiRoomId) },
    ]);
    this.deps.log.info("portal created for an alias", { alias, matrixRoomId, mimiRoomId });
    return true;
  }

  /** The homeserver asks for a user of our namespace: a ghost is registered, with the MIMI user ID as its name. */
  async ghostExists(userId: string): Promise<boolean> {
    const { userPrefix } = this.deps.matrix.appservice;
    const mimiUser = mimiUserOfGhost(userId, userPrefix, this.deps.matrix.domain);
    if (
      mimiUser === undefined ||
      !isValidUserId(mimiUser) ||
      mimiUser.endsWith(`:${this.deps.mimiServerName}`)
    )
      return false;
    await this.deps.client.registerGhost(userId.slice(1, userId.indexOf(":")));
    await this.deps.client.setDisplayName(userId, mimiUser);
    return true;
  }

  /**
   * A local user is in the MIMI room through a portal: the portal follows it, read by its first
   * local member's client; a portal made for an alias takes the MIMI room's name and topic then.
   */
  private async joinedPortal(roomId: string, mimiRoomId: string, user: string): Promise<void> {
    const record = await this.portal(roomId);
    if (record !== undefined && record.reader === "") {
      await this.deps.kv.commit([
        { type: "put", key: portalKey(roomId), value: JSON.stringify({ ...record, reader: user }) },
      ]);
      this.followers.setReader(mimiRoomId, user);
      for (const entry of this.deps.rooms.roomInfo(mimiRoomId)?.state ?? []) {
        if ((entry.type === "m.room.name" || entry.type === "m.room.topic") && entry.stateKey === "")
          await this.deps.client
            .setState(roomId, entry.type, "", entry.content)
            .catch((err: unknown) =>
              this.deps.log.warn("cannot copy the MIMI room's state to its portal", { roomId, error: err }),
            );
      }
    }
    this.followers.follow(mimiRoomId, roomId, record?.reader || user);
  }

  /** The MIMI room a Matrix room portals, if it is a portal. */
  async portalOf(matrixRoomId: string): Promise<string | undefined> {
    return (await this.portal(matrixRoomId))?.mimiRoomId;
  }

  private portal(matrixRoomId: string): Promise<PortalRecord | undefined> {
    return this.records.portal(matrixRoomId);
  }

  /**
   * Reads the inbox in arrival order and hands each event to its room's lane: a room's events are
   * mapped one at a time, in order; rooms go on side by side (up to `MAX_ACTIVE_LANES` at once),
   * so one whose hub is unreachable waits alone. At most `MAX_HELD_EVENTS` events are held in
   * memory; the rest wait in the inbox.
   */
  private async loop(): Promise<void> {
    while (!this.stopped) {
      const read = this.held < MAX_HELD_EVENTS ? await this.deps.inbox.pending(100, this.readUpTo) : [];
      if (read.length === 0) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          // An event that landed between the read and now would otherwise wait for the next one.
          if (this.held < MAX_HELD_EVENTS)
            void this.deps.inbox.pending(1, this.readUpTo).then((more) => more.length > 0 && resolve());
        });
        this.wake = undefined;
        continue;
      }
      for (const entry of read) {
        this.readUpTo = entry.seq;
        const roomId = typeof entry.event.room_id === "string" ? entry.event.room_id : "";
        let lane = this.lanes.get(roomId);
        if (lane === undefined) this.lanes.set(roomId, (lane = { entries: [], running: false, retryMs: 0 }));
        lane.entries.push(entry);
        this.held++;
        this.runLane(roomId, lane);
      }
    }
  }

  private runLane(roomId: string, lane: Lane): void {
    if (lane.running || this.stopped) return;
    if (this.activeLanes >= MAX_ACTIVE_LANES) {
      if (!this.waitingLanes.includes(roomId)) this.waitingLanes.push(roomId);
      return;
    }
    lane.running = true;
    this.activeLanes++;
    const run = (async () => {
      while (!this.stopped && lane.entries.length > 0) {
        const entry = lane.entries[0]!;
        if (!(await this.consume(entry))) {
          // The homeserver or the hub is unreachable for now: the event waits, in its place.
          lane.retryMs = Math.min(lane.retryMs === 0 ? RETRY_FIRST_MS : lane.retryMs * 2, RETRY_MAX_MS);
          await Promise.race([
            new Promise((resolve) => setTimeout(resolve, lane.retryMs).unref()),
            this.stopping,
          ]);
          continue;
        }
        lane.retryMs = 0;
        lane.entries.shift();
        this.held--;
        this.wake?.();
      }
    })();
    this.laneRuns.add(run);
    void run.finally(() => {
      this.laneRuns.delete(run);
      lane.running = false;
      this.activeLanes--;
      if (lane.entries.length === 0) this.lanes.delete(roomId);
      const next = this.waitingLanes.shift();
      const waiting = next === undefined ? undefined : this.lanes.get(next);
      if (next !== undefined && waiting !== undefined) this.runLane(next, waiting);
    });
  }

  /** Maps one event and removes it from the inbox; false when it must be tried again later. */
  private async consume(entry: InboxEntry): Promise<boolean> {
    let ops: BatchOp[] = [];
    try {
      ops = await this.handle(entry.event);
    } catch (err) {
      // A failure while stopping may be the stop's doing: the event is mapped again at the next start.
      if (this.stopped) return false;
      const fields = { eventId: entry.event.event_id, type: entry.event.type, error: err };
      if (isTransient(err)) {
        this.deps.log.warn("a homeserver event waits: its mapping failed for now", fields);
        return false;
      }
      this.deps.log.warn("a homeserver event could not be mapped", fields);
      this.deps.onUnmapped?.(
        err instanceof MimiError || err instanceof HomeserverError
          ? (err.errcode ?? "M_UNKNOWN")
          : err instanceof Error
            ? err.name
            : "unknown",
      );
    }
    try {
      await this.deps.kv.commit([...ops, ...this.deps.inbox.completeOps([entry])]);
    } catch (err) {
      // The event stays in the inbox; mapping it again makes nothing twice (derived transaction IDs).
      if (!this.stopped) {
        this.deps.log.error("could not record a homeserver event's mapping", {
          eventId: entry.event.event_id,
          error: err,
        });
      }
      return false;
    }
    return true;
  }

  private async handle(event: Record<string, unknown>): Promise<BatchOp[]> {
    const roomId = event.room_id;
    const sender = event.sender;
    const eventId = event.event_id;
    if (typeof roomId !== "string" || typeof sender !== "string" || typeof eventId !== "string") return [];
    const content = (event.content ?? {}) as Record<string, unknown>;
    if (await this.refusedUser(event, roomId, sender, eventId, content)) return [];
    if (
      event.type === "m.room.member" &&
      event.state_key === this.deps.botUserId &&
      content.membership === "invite"
    ) {
      // A direct chat with the bot is a command room; any other room becomes a portal.
      if (content.is_direct === true) return this.invitedBotDirect(roomId, sender, eventId);
      return this.invitedBot(roomId, sender, eventId);
    }
    if (
      event.type === "m.room.member" &&
      content.membership === "invite" &&
      typeof event.state_key === "string"
    ) {
      const target = mimiUserOfGhost(
        event.state_key,
        this.deps.matrix.appservice.userPrefix,
        this.deps.matrix.domain,
      );
      const invited = target ?? this.mimiUserOf(event.state_key);
      if (invited !== undefined)
        await this.invitedUser(roomId, sender, eventId, invited, target !== undefined);
      return [];
    }
    if (
      event.type === "m.room.member" &&
      typeof event.state_key === "string" &&
      (content.membership === "leave" || content.membership === "ban" || content.membership === "join")
    ) {
      await this.membership(roomId, sender, eventId, event.state_key, content.membership, content.reason);
      return [];
    }
    if ((event.type === "m.room.name" || event.type === "m.room.topic") && event.state_key === "") {
      await this.roomState(roomId, sender, eventId, event.type, content);
      return [];
    }
    if (event.type === "m.room.message" && sender !== this.deps.botUserId) {
      const owner = await this.commandRoomOwner(roomId);
      if (owner !== undefined) {
        await this.command(roomId, owner, sender, eventId, content);
        return [];
      }
      return this.message(roomId, sender, eventId, content);
    }
    if (event.type === "m.room.redaction") {
      // Room versions up to 10 carry `redacts` at the top; 11 and later in the content.
      return this.redaction(roomId, sender, eventId, content.redacts ?? event.redacts, content.reason);
    }
    if (typeof event.type === "string")
      await this.unmapped(roomId, sender, eventId, event.type, event.state_key);
    return [];
  }

  /**
   * A local user's event in a portal that has no MIMI counterpart: they get a notice saying so,
   * rather than believing the other side saw it. The room settings a Matrix client makes on its
   * own (power levels, join rules, history visibility, ...) stay Matrix-only without a word.
   */
  private async unmapped(
    roomId: string,
    sender: string,
    eventId: string,
    type: string,
    stateKey: unknown,
  ): Promise<void> {
    if (stateKey !== undefined && !NOTED_STATE_TYPES.has(type)) return;
    if (this.mimiUserOf(sender) === undefined || (await this.portalOf(roomId)) === undefined) return;
    const what =
      type === "m.room.encrypted" || type === "m.room.encryption"
        ? "Matrix end-to-end encryption in a portal hides messages from the bridge; they cannot reach the MIMI room (its messages are end-to-end encrypted with MLS already)"
        : `${type} events are not bridged to the MIMI room`;
    await this.notice(roomId, `Not sent to the MIMI room: ${what}.`, derivedTxnId("unmapped", eventId));
  }

  /** The bridge's permission level of a Matrix user (`appservice.permissions`). */
  private levelOf(matrixUserId: string): PermissionLevel {
    return permissionLevel(this.deps.matrix.appservice.permissions, matrixUserId);
  }

  /**
   * A local user whose level is `none` changes nothing in MIMI: an event of theirs that would act
   * there (inviting the bot; in a portal, a message, a redaction, a join, leave, kick or ban, an
   * invite of a ghost or a local user, a name or topic; in a command room, a message) is answered by one notice
   * from the bot instead. Answers whether the event was refused.
   */
  private async refusedUser(
    event: Record<string, unknown>,
    roomId: string,
    sender: string,
    eventId: string,
    content: Record<string, unknown>,
  ): Promise<boolean> {
    if (this.mimiUserOf(sender) === undefined || this.levelOf(sender) !== "none") return false;
    const txnId = derivedTxnId("not-allowed", eventId);
    const stateKey = event.state_key;
    if (
      event.type === "m.room.member" &&
      stateKey === this.deps.botUserId &&
      content.membership === "invite"
    ) {
      // The bot joins only to say so, and leaves.
      await this.deps.client.joinRoom(roomId);
      await this.notice(roomId, notAllowed(sender), txnId);
      await this.deps.client.leaveRoom(roomId, this.deps.botUserId);
      this.deps.log.info("refused an invite of the bot by a user not allowed to use the bridge", {
        roomId,
        sender,
      });
      return true;
    }
    let acts: boolean;
    if ((await this.portalOf(roomId)) !== undefined) {
      const { userPrefix } = this.deps.matrix.appservice;
      acts =
        event.type === "m.room.message" ||
        event.type === "m.room.redaction" ||
        ((event.type === "m.room.name" || event.type === "m.room.topic") && stateKey === "") ||
        (event.type === "m.room.member" &&
          typeof stateKey === "string" &&
          (content.membership === "invite"
            ? mimiUserOfGhost(stateKey, userPrefix, this.deps.matrix.domain) !== undefined ||
              this.mimiUserOf(stateKey) !== undefined
            : content.membership === "join" ||
              content.membership === "leave" ||
              content.membership === "ban"));
    } else {
      acts = event.type === "m.room.message" && (await this.commandRoomOwner(roomId)) !== undefined;
    }
    if (!acts) return false;
    await this.notice(roomId, notAllowed(sender), txnId);
    this.deps.log.info("refused an event of a user not allowed to use the bridge", {
      roomId,
      sender,
      type: event.type,
    });
    return true;
  }

  /** The Matrix user whose command room this is, if it is one. */
  private commandRoomOwner(matrixRoomId: string): Promise<string | undefined> {
    return this.deps.kv.get(commandRoomKey(matrixRoomId));
  }

  /**
   * A local user opened a direct chat with the bot: the bot joins, greets them with the command
   * list, and the room becomes their command room (`bd`, in the event's batch).
   */
  private async invitedBotDirect(roomId: string, sender: string, eventId: string): Promise<BatchOp[]> {
    if ((await this.commandRoomOwner(roomId)) !== undefined || (await this.portalOf(roomId)) !== undefined)
      return [];
    if (this.mimiUserOf(sender) === undefined) {
      this.deps.log.info("a user of another homeserver opened a direct chat with the bot; not joining", {
        roomId,
        sender,
      });
      return [];
    }
    await this.deps.client.joinRoom(roomId);
    await this.notice(roomId, greeting(this.levelOf(sender)), derivedTxnId("greet", eventId));
    this.deps.log.info("command room opened", { matrixRoomId: roomId, user: sender });
    return [{ type: "put", key: commandRoomKey(roomId), value: sender }];
  }

  /**
   * A message in a command room: its owner's `m.text` is a command (botCommands.ts), answered by
   * a notice from the bot whose transaction ID is derived from the message, like every call the
   * command makes. Anyone else's messages there are left alone.
   */
  private async command(
    roomId: string,
    owner: string,
    sender: string,
    eventId: string,
    content: Record<string, unknown>,
  ): Promise<void> {
    const mimiUser = this.mimiUserOf(sender);
    if (sender !== owner || mimiUser === undefined) return;
    if (content.msgtype !== "m.text" || typeof content.body !== "string") return;
    const command = parseCommand(content.body);
    if (command === undefined) return;
    const { userPrefix } = this.deps.matrix.appservice;
    const answer = await runCommand(
      command,
      {
        matrixUser: sender,
        mimiUser,
        level: this.levelOf(sender),
        txnId: (purpose) => derivedTxnId(`command-${purpose}`, eventId),
      },
      {
        rooms: this.deps.rooms,
        openPortal: async (mimiRoomId, user, name) => {
          const portal = await this.openPortal(mimiRoomId, user, name);
          this.followers.follow(mimiRoomId, portal, user);
          return portal;
        },
        portalOf: (matrixRoomId) => this.portalOf(matrixRoomId),
        portalFor: (mimiRoomId) => this.deps.kv.get(mimiKey(mimiRoomId)),
        invitePortal: async (mimiRoomId, user) => {
          const matrixUser = this.matrixUserOf(user);
          const portal = await this.deps.kv.get(mimiKey(mimiRoomId));
          if (matrixUser === undefined || portal === undefined) return undefined;
          await this.deps.client.invite(portal, matrixUser);
          return portal;
        },
        mimiUserOfGhost: (matrixUserId) => mimiUserOfGhost(matrixUserId, userPrefix, this.deps.matrix.domain),
        isTransient,
      },
    );
    await this.notice(roomId, answer, derivedTxnId("answer", eventId));
  }

  /** A local user invited the bot: the room becomes the portal of a new MIMI room they created. */
  private async invitedBot(roomId: string, sender: string, eventId: string): Promise<BatchOp[]> {
    if ((await this.portalOf(roomId)) !== undefined) return [];
    const creator = this.mimiUserOf(sender);
    if (creator === undefined) {
      this.deps.log.info("the bot was invited by a user of another homeserver; not joining", {
        roomId,
        sender,
      });
      return [];
    }
    await this.deps.client.joinRoom(roomId);
    const { roomId: mimiRoomId } = await this.deps.rooms.createRoom({
      creator,
      txnId: derivedTxnId("create", eventId),
    });
    // The room's name and topic, set before the bot was there, become the MIMI room's.
    for (const type of ["m.room.name", "m.room.topic"] as const) {
      const content = await this.deps.client.stateContent(roomId, type);
      if (content !== undefined)
        await this.roomState(roomId, sender, `${eventId}${SEP}${type}`, type, content, mimiRoomId);
    }
    await this.notice(
      roomId,
      `This room is now the MIMI room ${mimiRoomId}, hosted by ${this.deps.mimiServerName}. ` +
        "Messages sent here are end-to-end encrypted (MLS) between MIMI providers.",
      derivedTxnId("created", eventId),
    );
    this.deps.log.info("portal created", { matrixRoomId: roomId, mimiRoomId, creator });
    const record: PortalRecord = { mimiRoomId, reader: creator };
    // The follower starts once the portal is stored (it reads the record's cursor).
    queueMicrotask(() => this.followers.follow(mimiRoomId, roomId, creator));
    return [
      { type: "put", key: portalKey(roomId), value: JSON.stringify(record) },
      { type: "put", key: mimiKey(mimiRoomId), value: roomId },
    ];
  }

  /** A local user renames a portal or sets its topic: the MIMI room gets the same state. */
  private async roomState(
    roomId: string,
    sender: string,
    eventId: string,
    type: "m.room.name" | "m.room.topic",
    content: Record<string, unknown>,
    portalOf?: string,
  ): Promise<void> {
    const mimiRoomId = portalOf ?? (await this.portalOf(roomId));
    const user = this.mimiUserOf(sender);
    if (mimiRoomId === undefined || user === undefined) return;
    const field = type === "m.room.name" ? "name" : "topic";
    const value = content[field];
    if (typeof value !== "string") return;
    try {
      await this.deps.rooms.send({
        roomId: mimiRoomId,
        sender: user,
        type,
        stateKey: "",
        content: { [field]: value },
        txnId: derivedTxnId("state", eventId),
      });
    } catch (err) {
      if (isTransient(err)) throw err;
      // The portal shows the MIMI room's value again (none: empty).
      const current = this.deps.rooms
        .roomInfo(mimiRoomId)
        ?.state.find((e) => e.type === type && e.stateKey === "");
      const previous = current?.content[field];
      let undone = "";
      try {
        await this.deps.client.setState(roomId, type, "", {
          [field]: typeof previous === "string" ? previous : "",
        });
        undone = " Set back to the MIMI room's.";
      } catch (undoErr) {
        if (isTransient(undoErr)) throw undoErr;
        undone = ` The bridge could not set it back here: ${(undoErr as Error).message}`;
      }
      await this.notice(
        roomId,
        `Not done in the MIMI room (${type}): ${(err as Error).message}${undone}`,
        derivedTxnId("refused", eventId),
      );
    }
  }

  /** A local user invited a ghost (or another local user) into a portal: the MIMI user is invited to the MIMI room. */
  private async invitedUser(
    roomId: string,
    sender: string,
    eventId: string,
    target: string,
    isGhost: boolean,
  ): Promise<void> {
    const mimiRoomId = await this.portalOf(roomId);
    const inviter = this.mimiUserOf(sender);
    if (mimiRoomId === undefined || inviter === undefined) return;
    try {
      await this.deps.rooms.invite({
        roomId: mimiRoomId,
        sender: inviter,
        target,
        txnId: derivedTxnId("invite", eventId),
      });
    } catch (err) {
      if (isTransient(err)) throw err;
      // The ghost turns the invite down, so the portal does not show an invite that is not there.
      if (isGhost) {
        const ghost = ghostUserId(target, this.deps.matrix.appservice.userPrefix, this.deps.matrix.domain);
        await this.deps.client.leaveRoom(roomId, ghost).catch((leaveErr: unknown) => {
          if (isTransient(leaveErr)) throw leaveErr;
        });
      }
      await this.notice(
        roomId,
        `${target} was not invited to the MIMI room: ${(err as Error).message}`,
        derivedTxnId("refused", eventId),
      );
    }
  }

  /**
   * A membership change in a portal, by a local user: their own join or leave becomes theirs in
   * the MIMI room; removing (kick) or banning a local user or a ghost becomes a kick or ban of the
   * MIMI user. The MIMI room's policy decides; a refusal is answered by a notice.
   */
  private async membership(
    roomId: string,
    sender: string,
    eventId: string,
    stateKey: string,
    membership: "join" | "leave" | "ban",
    reason: unknown,
  ): Promise<void> {
    const mimiRoomId = await this.portalOf(roomId);
    const actor = this.mimiUserOf(sender);
    if (mimiRoomId === undefined || actor === undefined) return;
    const target =
      this.mimiUserOf(stateKey) ??
      mimiUserOfGhost(stateKey, this.deps.matrix.appservice.userPrefix, this.deps.matrix.domain);
    if (target === undefined) return;
    const txnId = derivedTxnId("membership", eventId);
    const why = typeof reason === "string" && reason !== "" ? { reason } : {};
    try {
      if (sender === stateKey) {
        if (membership === "ban") return;
        // A participation the MIMI room already has (the portal's creator joined) changes nothing.
        const now = this.deps.rooms.roomInfo(mimiRoomId)?.participation[target];
        if (membership === "join" && now === "join") return;
        await this.deps.rooms.changeOwnParticipation({
          roomId: mimiRoomId,
          user: target,
          change: membership,
          txnId,
          ...why,
        });
        if (membership === "join") await this.joinedPortal(roomId, mimiRoomId, target);
        else await this.followers.handOver(roomId, mimiRoomId, target);
      } else if (membership !== "join") {
        await this.deps.rooms.changeParticipationOf({
          roomId: mimiRoomId,
          sender: actor,
          target,
          change: membership,
          txnId,
          ...why,
        });
        await this.followers.handOver(roomId, mimiRoomId, target);
      }
    } catch (err) {
      if (isTransient(err)) throw err;
      const undone = await this.undoMembership(roomId, stateKey, target, sender === stateKey, membership);
      await this.notice(
        roomId,
        `Not done in the MIMI room (${membership} of ${target}): ${(err as Error).message}` +
          (undone === undefined ? "" : ` ${undone}`),
        derivedTxnId("refused", eventId),
      );
    }
  }

  /**
   * Puts a portal's membership back after the MIMI room refused the change: a refused kick or ban
   * is reverted (unban, then the bot invites the user back; a ghost rejoins), a refused own join
   * is undone by a kick. Answers what it did, or why it could not (the bot lacks the power).
   */
  private async undoMembership(
    roomId: string,
    matrixUser: string,
    target: string,
    own: boolean,
    membership: "join" | "leave" | "ban",
  ): Promise<string | undefined> {
    const isGhost = !target.endsWith(`:${this.deps.mimiServerName}`);
    try {
      if (own) {
        if (membership !== "join") return undefined;
        await this.deps.client.moderate("kick", roomId, matrixUser, "the MIMI room refused this join");
        return "Removed from this room again.";
      }
      if (membership === "ban") await this.deps.client.moderate("unban", roomId, matrixUser);
      if (isGhost) {
        this.followers.forgetGhost(matrixUser, roomId);
        await this.followers.ghostIn(roomId, target);
      } else {
        await this.deps.client.invite(roomId, matrixUser);
      }
      return isGhost ? "Put back in this room." : "Invited back to this room.";
    } catch (err) {
      if (isTransient(err)) throw err;
      return `The bridge could not undo it here: ${(err as Error).message}`;
    }
  }

  /** A local user's message in a portal: sent to the MIMI room, end-to-end encrypted. */
  private async message(
    roomId: string,
    sender: string,
    eventId: string,
    content: Record<string, unknown>,
  ): Promise<BatchOp[]> {
    const mimiRoomId = await this.portalOf(roomId);
    const user = this.mimiUserOf(sender);
    if (mimiRoomId === undefined || user === undefined) return [];
    const ids = new Map<string, string>();
    for (const id of referencedEventIds(content)) {
      const link = await this.records.linkOfMatrix(id);
      if (link !== undefined && link.roomId === mimiRoomId) ids.set(id, link.eventId);
    }
    const mapped = mapMessageContent(content, ids);
    if ("refused" in mapped) {
      await this.notice(
        roomId,
        `Not sent to the MIMI room: ${mapped.refused}.`,
        derivedTxnId("refused", eventId),
      );
      return [];
    }
    const name = await this.localName(sender);
    if (name !== undefined) mapped.ok[SENDER_NAME] = name;
    return this.sendToMimi(roomId, mimiRoomId, user, eventId, "m.room.message", mapped.ok);
  }

  /**
   * A local user's redaction in a portal: a redaction of their own bridged message is sent to the
   * MIMI room as an encrypted `m.room.redaction` naming the MIMI event (protocol.md §13).
   */
  private async redaction(
    roomId: string,
    sender: string,
    eventId: string,
    redacts: unknown,
    reason: unknown,
  ): Promise<BatchOp[]> {
    const mimiRoomId = await this.portalOf(roomId);
    const user = this.mimiUserOf(sender);
    if (mimiRoomId === undefined || user === undefined || typeof redacts !== "string") return [];
    const link = await this.records.linkOfMatrix(redacts);
    if (link === undefined || link.roomId !== mimiRoomId) return [];
    if (link.sender !== user) {
      await this.notice(
        roomId,
        "Removed here only: redacting another user's message is not bridged to the MIMI room.",
        derivedTxnId("refused", eventId),
      );
      return [];
    }
    const content: JsonObject = { redacts: link.eventId };
    if (typeof reason === "string" && reason !== "") content.reason = reason;
    return this.sendToMimi(roomId, mimiRoomId, user, eventId, "m.room.redaction", content);
  }

  /** Sends one message to the MIMI room; the records linking the two events land with the event's batch. */
  private async sendToMimi(
    roomId: string,
    mimiRoomId: string,
    user: string,
    eventId: string,
    type: string,
    content: JsonObject,
  ): Promise<BatchOp[]> {
    let mimiEventId: string;
    try {
      ({ eventId: mimiEventId } = await this.deps.rooms.sendMessage({
        roomId: mimiRoomId,
        sender: user,
        type,
        content,
        txnId: derivedTxnId("message", eventId),
      }));
    } catch (err) {
      if (isTransient(err)) throw err;
      await this.notice(
        roomId,
        `Not sent to the MIMI room: ${(err as Error).message}`,
        derivedTxnId("refused", eventId),
      );
      return [];
    }
    return linkOps(eventId, roomId, mimiEventId, mimiRoomId, user);
  }

  /** A local user's display name, as their homeserver has it (read at most every 10 minutes). */
  private async localName(matrixUser: string): Promise<string | undefined> {
    const known = this.localNames.get(matrixUser);
    if (known !== undefined && Date.now() - known.at < NAME_TTL_MS) return known.name;
    const name = await this.deps.client.displayName(matrixUser).catch(() => known?.name);
    this.localNames.set(matrixUser, { name, at: Date.now() });
    return name;
  }

  private async notice(roomId: string, body: string, txnId: string): Promise<void> {
    await postNotice(this.deps.client, roomId, body, txnId);
  }

  /** `@l:<our MIMI server name>` is `@l:<homeserver domain>`; users of other providers have none. */
  private matrixUserOf(mimiUserId: string): string | undefined {
    const suffix = `:${this.deps.mimiServerName}`;
    if (!mimiUserId.startsWith("@") || !mimiUserId.endsWith(suffix)) return undefined;
    return `@${mimiUserId.slice(1, -suffix.length)}:${this.deps.matrix.domain}`;
  }

  /** `@l:<homeserver domain>` is `@l:<our MIMI server name>`; users of other homeservers have none. */
  private mimiUserOf(matrixUserId: string): string | undefined {
    if (matrixUserId === this.deps.botUserId) return undefined;
    const suffix = `:${this.deps.matrix.domain}`;
    if (!matrixUserId.startsWith("@") || !matrixUserId.endsWith(suffix)) return undefined;
    const localpart = matrixUserId.slice(1, -suffix.length);
    if (localpart.startsWith(this.deps.matrix.appservice.userPrefix)) return undefined;
    try {
      const userId = makeUserId(localpart, this.deps.mimiServerName);
      return isValidUserId(userId) ? userId : undefined;
    } catch {
      return undefined;
    }
  }
}
