import { createHash } from "node:crypto";
import type { MatrixConfig } from "../config/config";
import type { JsonObject } from "../events/types";
import { isValidUserId, makeUserId } from "../identifiers";
import type { Logger } from "../logging";
import type { InviteInfo, ReceivedMessage, RoomsApi } from "../provider/roomsApiTypes";
import { prefixEnd, type BatchOp, type KvStore } from "../store/kv";
import { ghostUserId, mimiUserOfGhost } from "./ghosts";
import { MimiError } from "../errors";
import { HomeserverError, type HomeserverClient } from "./homeserverClient";
import type { HomeserverInbox, InboxEntry } from "./homeserverInbox";

/**
 * Portal records (`␀` is U+0000). Matrix room IDs are opaque (room version 12 has no server
 * part): they are keys here, never parsed.
 *
 * | Key                        | Value                                   |
 * | -------------------------- | --------------------------------------- |
 * | `bp␀<Matrix room ID>`      | `{mimiRoomId, reader}`: the MIMI room it portals, and the local user whose client reads it for the portal |
 * | `bm␀<MIMI room ID>`        | the Matrix room ID of its portal        |
 * | `bc␀<MIMI room ID>`        | the next position of the MIMI room to show in its portal |
 */
const SEP = "\u0000";
const portalKey = (matrixRoomId: string) => `bp${SEP}${matrixRoomId}`;
const mimiPrefix = `bm${SEP}`;
const mimiKey = (mimiRoomId: string) => `${mimiPrefix}${mimiRoomId}`;
const cursorKey = (mimiRoomId: string) => `bc${SEP}${mimiRoomId}`;
/** How long one read of a portal's MIMI room waits for a message (bounds how long stopping takes). */
const FOLLOW_WAIT_MS = 2_000;

interface PortalRecord {
  mimiRoomId: string;
  reader: string;
}

const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 60_000;

/**
 * A failure worth waiting out: the homeserver unreachable, overloaded or rate limiting, or the
 * room layer busy or its hub unreachable. Anything else (a refusal, a bad event) will not change.
 */
export function isTransient(err: unknown): boolean {
  if (err instanceof HomeserverError) {
    return err.status === undefined || err.status >= 500 || err.status === 429;
  }
  if (err instanceof MimiError) return err.errcode === "M_LIMIT_EXCEEDED" || err.errcode === "M_UNKNOWN";
  return false;
}

/** Message types of m.room.message that map to MIMI as they are (the body and its formatting). */
const TEXT_MSGTYPES = new Set(["m.text", "m.notice", "m.emote"]);

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
}

/** A stable transaction ID for what `eventId` causes (`purpose` tells several effects apart). */
export const derivedTxnId = (purpose: string, eventId: string) =>
  `mx-${purpose}-${createHash("sha256").update(eventId).digest("base64url").slice(0, 32)}`;

/**
 * Consumes the homeserver's events in the order they arrived, one batch per event: the bridge's
 * records and the event's removal from the inbox land together, and what it asks of the rooms
 * API and the homeserver carries transaction IDs derived from the event, so replaying an event
 * after a crash makes nothing twice.
 *
 * Built so far: a local user creating a room with the bot invited creates a MIMI room with them
 * as creator, and the room becomes its portal; their text messages in a portal go to the MIMI
 * room, end-to-end encrypted; inviting a ghost invites the MIMI user it stands for; remote users'
 * messages appear in the portal from their ghosts. Anything else is acknowledged and not mapped yet.
 */
export class MatrixBridge {
  private stopped = false;
  private wake: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  private readonly followers = new Map<string, Promise<void>>();
  private readonly ghostsIn = new Set<string>();
  private invites: Promise<void> = Promise.resolve();
  private retryMs = 0;

  constructor(private readonly deps: MatrixBridgeDeps) {}

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
        this.follow(mimiRoomId, matrixRoomId, record.reader);
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
    const suffix = `:${this.deps.mimiServerName}`;
    if (!invite.userId.endsWith(suffix)) return;
    const matrixUser = `@${invite.userId.slice(1, -suffix.length)}:${this.deps.matrix.domain}`;
    const name = invite.strippedState.find((e) => e.type === "m.room.name")?.content as
      | { name?: unknown }
      | undefined;
    const matrixRoomId = await this.deps.client.createRoom({
      preset: "private_chat",
      name: typeof name?.name === "string" ? name.name : invite.roomId,
      invite: [matrixUser],
    });
    const record: PortalRecord = { mimiRoomId: invite.roomId, reader: invite.userId };
    await this.deps.kv.commit([
      { type: "put", key: portalKey(matrixRoomId), value: JSON.stringify(record) },
      { type: "put", key: mimiKey(invite.roomId), value: matrixRoomId },
    ]);
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

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    this.wake?.();
    await this.running;
    await this.invites;
    await Promise.all(this.followers.values());
  }

  /** The MIMI room a Matrix room portals, if it is a portal. */
  async portalOf(matrixRoomId: string): Promise<string | undefined> {
    return (await this.portal(matrixRoomId))?.mimiRoomId;
  }

  private async portal(matrixRoomId: string): Promise<PortalRecord | undefined> {
    const record = await this.deps.kv.get(portalKey(matrixRoomId));
    return record === undefined ? undefined : (JSON.parse(record) as PortalRecord);
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const entries = await this.deps.inbox.pending(100);
      if (entries.length === 0) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          // An event that landed between the read and now would otherwise wait for the next one.
          void this.deps.inbox.pending(1).then((more) => more.length > 0 && resolve());
        });
        this.wake = undefined;
        continue;
      }
      for (const entry of entries) {
        if (this.stopped) return;
        if (!(await this.consume(entry))) {
          // The homeserver or the hub is unreachable for now: the event waits, in its place.
          this.retryMs = Math.min(this.retryMs === 0 ? RETRY_FIRST_MS : this.retryMs * 2, RETRY_MAX_MS);
          await new Promise<void>((resolve) => {
            this.wake = resolve;
            setTimeout(resolve, this.retryMs).unref();
          });
          this.wake = undefined;
          break;
        }
        this.retryMs = 0;
      }
    }
  }

  /** Maps one event and removes it from the inbox; false when it must be tried again later. */
  private async consume(entry: InboxEntry): Promise<boolean> {
    let ops: BatchOp[] = [];
    try {
      ops = await this.handle(entry.event);
    } catch (err) {
      const fields = { eventId: entry.event.event_id, type: entry.event.type, error: err };
      if (isTransient(err)) {
        this.deps.log.warn("a homeserver event waits: its mapping failed for now", fields);
        return false;
      }
      this.deps.log.warn("a homeserver event could not be mapped", fields);
    }
    await this.deps.kv.commit([...ops, ...this.deps.inbox.completeOps([entry])]);
    return true;
  }

  private async handle(event: Record<string, unknown>): Promise<BatchOp[]> {
    const roomId = event.room_id;
    const sender = event.sender;
    const eventId = event.event_id;
    if (typeof roomId !== "string" || typeof sender !== "string" || typeof eventId !== "string") return [];
    const content = (event.content ?? {}) as Record<string, unknown>;
    if (
      event.type === "m.room.member" &&
      event.state_key === this.deps.botUserId &&
      content.membership === "invite"
    ) {
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
      if (target !== undefined) await this.invitedGhost(roomId, sender, eventId, target);
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
      await this.message(roomId, sender, eventId, content);
    }
    return [];
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
    queueMicrotask(() => this.follow(mimiRoomId, roomId, creator));
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
      await this.notice(
        roomId,
        `Not done in the MIMI room (${type}): ${(err as Error).message}`,
        derivedTxnId("refused", eventId),
      );
    }
  }

  /** A local user invited a ghost into a portal: the MIMI user it stands for is invited to the MIMI room. */
  private async invitedGhost(roomId: string, sender: string, eventId: string, target: string): Promise<void> {
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
        if (membership === "join")
          this.follow(mimiRoomId, roomId, (await this.portal(roomId))?.reader ?? target);
      } else if (membership !== "join") {
        await this.deps.rooms.changeParticipationOf({
          roomId: mimiRoomId,
          sender: actor,
          target,
          change: membership,
          txnId,
          ...why,
        });
      }
    } catch (err) {
      if (isTransient(err)) throw err;
      await this.notice(
        roomId,
        `Not done in the MIMI room (${membership} of ${target}): ${(err as Error).message}`,
        derivedTxnId("refused", eventId),
      );
    }
  }

  /** Shows the MIMI room's messages in its portal: remote users' as their ghosts, in order, once each. */
  private follow(mimiRoomId: string, matrixRoomId: string, reader: string): void {
    if (this.followers.has(mimiRoomId) || this.stopped) return;
    const run = (async () => {
      let from = Number((await this.deps.kv.get(cursorKey(mimiRoomId))) ?? "1");
      while (!this.stopped) {
        let page;
        try {
          page = await this.deps.rooms.messages(mimiRoomId, reader, {
            fromSeq: from,
            limit: 50,
            waitMs: FOLLOW_WAIT_MS,
          });
        } catch (err) {
          this.deps.log.warn("cannot read a portal's MIMI room", { mimiRoomId, error: err });
          await new Promise((resolve) => setTimeout(resolve, FOLLOW_WAIT_MS));
          continue;
        }
        for (const message of page) {
          try {
            await this.show(matrixRoomId, message);
          } catch (err) {
            // Not shown now: the cursor stays, and the next read tries again.
            this.deps.log.warn("cannot show a MIMI message in its portal", {
              mimiRoomId,
              eventId: message.eventId,
              error: err,
            });
            await new Promise((resolve) => setTimeout(resolve, FOLLOW_WAIT_MS));
            break;
          }
          from = message.seq + 1;
          await this.deps.kv.commit([{ type: "put", key: cursorKey(mimiRoomId), value: String(from) }]);
        }
        await this.syncGhosts(mimiRoomId, matrixRoomId).catch((err: unknown) =>
          this.deps.log.warn("cannot bring a portal's ghosts in line with the MIMI room", {
            mimiRoomId,
            error: err,
          }),
        );
      }
    })();
    this.followers.set(
      mimiRoomId,
      run.catch((err: unknown) => this.deps.log.error("portal follower stopped", { mimiRoomId, error: err })),
    );
  }

  /**
   * The portal's ghosts follow the MIMI room's participation: a remote user who joined has their
   * ghost join, one who left or was removed has it leave (those this process let in).
   */
  private async syncGhosts(mimiRoomId: string, matrixRoomId: string): Promise<void> {
    const participation = this.deps.rooms.roomInfo(mimiRoomId)?.participation;
    if (participation === undefined) return;
    for (const [user, state] of Object.entries(participation)) {
      if (user.endsWith(`:${this.deps.mimiServerName}`)) continue;
      const ghost = ghostUserId(user, this.deps.matrix.appservice.userPrefix, this.deps.matrix.domain);
      const key = `${ghost}${SEP}${matrixRoomId}`;
      if (state === "join" && !this.ghostsIn.has(key)) await this.ghostIn(matrixRoomId, user);
      else if (state !== "join" && this.ghostsIn.has(key)) {
        this.ghostsIn.delete(key);
        await this.deps.client.leaveRoom(matrixRoomId, ghost);
      }
    }
  }

  private async show(matrixRoomId: string, message: ReceivedMessage): Promise<void> {
    if (message.sender.endsWith(`:${this.deps.mimiServerName}`)) return;
    if (message.status !== "decrypted") {
      if (message.status === "sent") return;
      await this.notice(
        matrixRoomId,
        `A message from ${message.sender} could not be read (${message.status}${message.reason === undefined ? "" : `: ${message.reason}`}).`,
        derivedTxnId("unreadable", message.eventId),
      );
      return;
    }
    const content = message.content ?? {};
    const ghost = await this.ghostIn(matrixRoomId, message.sender);
    if (
      message.type === "m.room.message" &&
      typeof content.msgtype === "string" &&
      TEXT_MSGTYPES.has(content.msgtype)
    ) {
      const shown: Record<string, unknown> = { msgtype: content.msgtype, body: String(content.body ?? "") };
      if (content.format === "org.matrix.custom.html" && typeof content.formatted_body === "string") {
        shown.format = content.format;
        shown.formatted_body = content.formatted_body;
      }
      await this.deps.client.sendEvent(
        matrixRoomId,
        "m.room.message",
        shown,
        derivedTxnId("show", message.eventId),
        ghost,
      );
      return;
    }
    await this.notice(
      matrixRoomId,
      `${message.sender} sent a message of type ${message.type ?? "?"} that cannot be shown here yet.`,
      derivedTxnId("unshown", message.eventId),
    );
  }

  /** The ghost of a remote MIMI user, registered and joined to the portal. */
  private async ghostIn(matrixRoomId: string, mimiUserId: string): Promise<string> {
    const { userPrefix } = this.deps.matrix.appservice;
    const ghost = ghostUserId(mimiUserId, userPrefix, this.deps.matrix.domain);
    const key = `${ghost}${SEP}${matrixRoomId}`;
    if (this.ghostsIn.has(key)) return ghost;
    await this.deps.client.registerGhost(ghost.slice(1, ghost.indexOf(":")));
    await this.deps.client.setDisplayName(ghost, mimiUserId);
    try {
      await this.deps.client.joinRoom(matrixRoomId, ghost);
    } catch {
      // Not invited yet: the bot invites it, then it joins.
      await this.deps.client.invite(matrixRoomId, ghost);
      await this.deps.client.joinRoom(matrixRoomId, ghost);
    }
    this.ghostsIn.add(key);
    return ghost;
  }

  private async message(roomId: string, sender: string, eventId: string, content: Record<string, unknown>) {
    const mimiRoomId = await this.portalOf(roomId);
    if (mimiRoomId === undefined) return;
    const user = this.mimiUserOf(sender);
    if (user === undefined) return;
    if (typeof content.msgtype !== "string" || !TEXT_MSGTYPES.has(content.msgtype)) {
      await this.notice(
        roomId,
        `Not sent to the MIMI room: messages of type ${JSON.stringify(content.msgtype)} are not bridged yet.`,
        derivedTxnId("refused", eventId),
      );
      return;
    }
    const mapped: JsonObject = { msgtype: content.msgtype, body: String(content.body ?? "") };
    if (content.format === "org.matrix.custom.html" && typeof content.formatted_body === "string") {
      mapped.format = content.format;
      mapped.formatted_body = content.formatted_body;
    }
    try {
      await this.deps.rooms.sendMessage({
        roomId: mimiRoomId,
        sender: user,
        type: "m.room.message",
        content: mapped,
        txnId: derivedTxnId("message", eventId),
      });
    } catch (err) {
      if (isTransient(err)) throw err;
      await this.notice(
        roomId,
        `Not sent to the MIMI room: ${(err as Error).message}`,
        derivedTxnId("refused", eventId),
      );
    }
  }

  private async notice(roomId: string, body: string, txnId: string): Promise<void> {
    await this.deps.client.sendEvent(roomId, "m.room.message", { msgtype: "m.notice", body }, txnId);
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
