/**
 * The MIMI-to-Matrix direction of the bridge: each portal's followers show its MIMI room's
 * messages (from remote users' ghosts) and what remote users do to its state, and keep its ghosts
 * in line with the MIMI room's participation.
 */
import type { MatrixConfig } from "../config/config";
import type { FullyFormedEvent } from "../events/types";
import { serverNameOf } from "../identifiers";
import type { Logger } from "../logging";
import type { ReceivedMessage, RoomsApi } from "../provider/roomsApiTypes";
import type { BatchOp, KvStore } from "../store/kv";
import { ghostUserId, mimiUserOfGhost } from "./ghosts";
import { HomeserverError, type HomeserverClient } from "./homeserverClient";
import { mapMessageContent, referencedEventIds } from "./messageContent";
import {
  BridgeRecords,
  cursorKey,
  derivedTxnId,
  isTransient,
  linkOps,
  portalKey,
  postNotice,
  SENDER_NAME,
  SEP,
  stateCursorKey,
} from "./records";

/** How long one read of a portal's MIMI room waits for an event (stopping does not wait for it). */
const FOLLOW_WAIT_MS = 25_000;
/** How long a portal's follower waits before trying again after a failure. */
const FOLLOW_RETRY_MS = 2_000;

export interface PortalFollowersDeps {
  kv: KvStore;
  client: HomeserverClient;
  rooms: RoomsApi;
  matrix: MatrixConfig;
  mimiServerName: string;
  log: Logger;
}

export class PortalFollowers {
  private stopped = false;
  private readonly followers = new Map<string, Promise<void>>();
  /** `<ghost>␀<Matrix room ID>`: the ghosts in each portal, as this process knows them. */
  private readonly ghostsIn = new Set<string>();
  /** The local user whose client reads each followed MIMI room for its portal. */
  private readonly readers = new Map<string, string>();
  private readonly readerChanged = new Map<string, () => void>();
  /** Display names this process set on ghosts. */
  private readonly ghostNames = new Map<string, string>();
  private readonly records: BridgeRecords;
  private stopNow: () => void = () => undefined;
  private readonly stopping = new Promise<undefined>((resolve) => (this.stopNow = () => resolve(undefined)));

  constructor(private readonly deps: PortalFollowersDeps) {
    this.records = new BridgeRecords(deps.kv);
  }

  /** Stops every follower; a long wait in progress is cut short. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopNow();
    await Promise.all(this.followers.values());
  }

  /** A portal's reader changes (a portal made for an alias gets its first local member). */
  setReader(mimiRoomId: string, reader: string): void {
    this.readers.set(mimiRoomId, reader);
    this.readerChanged.get(mimiRoomId)?.();
  }

  /** Forgets that a ghost is in a portal (it was removed there). */
  forgetGhost(ghost: string, matrixRoomId: string): void {
    this.ghostsIn.delete(`${ghost}${SEP}${matrixRoomId}`);
  }

  private async notice(roomId: string, body: string, txnId: string): Promise<void> {
    await postNotice(this.deps.client, roomId, body, txnId);
  }

  /**
   * The portal's reader left the MIMI room: another local member's client reads it for the portal
   * from now on (none left: the portal shows nothing more until a local user joins again).
   */
  async handOver(roomId: string, mimiRoomId: string, leaving: string): Promise<void> {
    const record = await this.records.portal(roomId);
    if (record === undefined || record.reader !== leaving) return;
    const local = `:${this.deps.mimiServerName}`;
    const participation = this.deps.rooms.roomInfo(mimiRoomId)?.participation ?? {};
    const next = Object.keys(participation).find(
      (user) => user !== leaving && user.endsWith(local) && participation[user] === "join",
    );
    await this.deps.kv.commit([
      { type: "put", key: portalKey(roomId), value: JSON.stringify({ ...record, reader: next ?? "" }) },
    ]);
    if (next !== undefined) {
      this.readers.set(mimiRoomId, next);
      this.readerChanged.get(mimiRoomId)?.();
    }
    this.deps.log.info("a portal's reader left the MIMI room", { roomId, mimiRoomId, leaving, next });
  }

  /**
   * A long wait that stopping cuts short (answers undefined then). What it waited for may still
   * settle later, unobserved: its failure then is of no interest.
   */
  private untilStopped<T>(wait: Promise<T>): Promise<T | undefined> {
    wait.catch(() => undefined);
    return Promise.race([wait, this.stopping]);
  }

  /** The ghosts the portal has joined already, as the homeserver sees them (after a restart too). */
  private async ghostsInPortal(matrixRoomId: string): Promise<void> {
    try {
      for (const member of await this.deps.client.joinedMembers(matrixRoomId)) {
        if (
          mimiUserOfGhost(member, this.deps.matrix.appservice.userPrefix, this.deps.matrix.domain) !==
          undefined
        )
          this.ghostsIn.add(`${member}${SEP}${matrixRoomId}`);
      }
    } catch (err) {
      this.deps.log.warn("cannot read a portal's members", { matrixRoomId, error: err });
    }
  }

  /** Shows the MIMI room's messages in its portal: remote users' as their ghosts, in order, once each. */
  follow(mimiRoomId: string, matrixRoomId: string, reader: string): void {
    if (this.followers.has(mimiRoomId) || this.stopped) return;
    this.readers.set(mimiRoomId, reader);
    const run = (async () => {
      let from = Number((await this.deps.kv.get(cursorKey(mimiRoomId))) ?? "1");
      while (!this.stopped) {
        let page;
        const readBy = this.readers.get(mimiRoomId) ?? reader;
        try {
          // A hand-over to another reader cuts the wait short (`handOver`).
          const handedOver = new Promise<"handed over">((resolve) =>
            this.readerChanged.set(mimiRoomId, () => resolve("handed over")),
          );
          const read = this.deps.rooms.messages(mimiRoomId, readBy, {
            fromSeq: from,
            limit: 50,
            waitMs: FOLLOW_WAIT_MS,
          });
          page = await this.untilStopped(Promise.race([read, handedOver]));
          if (page === undefined) return;
          // What the leaving reader's client read (or could not) is read again by the next one.
          if (page === "handed over" || readBy !== this.readers.get(mimiRoomId)) continue;
        } catch (err) {
          this.deps.log.warn("cannot read a portal's MIMI room", { mimiRoomId, error: err });
          await this.untilStopped(new Promise((resolve) => setTimeout(resolve, FOLLOW_RETRY_MS)));
          continue;
        }
        for (const message of page) {
          let ops: BatchOp[];
          try {
            ops = await this.show(mimiRoomId, matrixRoomId, message);
          } catch (err) {
            // Not shown now: the cursor stays, and the next read tries again.
            this.deps.log.warn("cannot show a MIMI message in its portal", {
              mimiRoomId,
              eventId: message.eventId,
              error: err,
            });
            await this.untilStopped(new Promise((resolve) => setTimeout(resolve, FOLLOW_RETRY_MS)));
            break;
          }
          from = message.seq + 1;
          await this.deps.kv.commit([
            ...ops,
            { type: "put", key: cursorKey(mimiRoomId), value: String(from) },
          ]);
        }
      }
    })();
    const state = this.followState(mimiRoomId, matrixRoomId);
    this.followers.set(
      mimiRoomId,
      Promise.all([run, state])
        .then(() => undefined)
        .catch((err: unknown) => this.deps.log.error("portal follower stopped", { mimiRoomId, error: err })),
    );
  }

  /**
   * Shows in the portal what remote users do to the MIMI room's state from the time the portal
   * follows it: invites of local users bring them into the portal, kicks and bans of local users
   * remove them from it, invites of remote users invite their ghosts, name and topic changes are
   * set on the portal. What the bot cannot do there (it lacks the power) becomes a notice.
   */
  private async followState(mimiRoomId: string, matrixRoomId: string): Promise<void> {
    await this.ghostsInPortal(matrixRoomId);
    const stored = await this.deps.kv.get(stateCursorKey(mimiRoomId));
    let from =
      stored === undefined ? (this.deps.rooms.roomInfo(mimiRoomId)?.headSeq ?? 0) + 1 : Number(stored);
    if (stored === undefined)
      await this.deps.kv.commit([{ type: "put", key: stateCursorKey(mimiRoomId), value: String(from) }]);
    while (!this.stopped) {
      // First at the start (a remote user may have left while this process was down), then after each page.
      await this.syncGhosts(mimiRoomId, matrixRoomId).catch((err: unknown) =>
        this.deps.log.warn("cannot bring a portal's ghosts in line with the MIMI room", {
          mimiRoomId,
          error: err,
        }),
      );
      let page;
      try {
        page = await this.untilStopped(
          this.deps.rooms.history(mimiRoomId, { fromSeq: from, limit: 50, waitMs: FOLLOW_WAIT_MS }),
        );
        if (page === undefined) return;
      } catch (err) {
        this.deps.log.warn("cannot read a portal's MIMI room history", { mimiRoomId, error: err });
        await this.untilStopped(new Promise((resolve) => setTimeout(resolve, FOLLOW_RETRY_MS)));
        continue;
      }
      for (const entry of page.events) {
        try {
          await this.showState(mimiRoomId, matrixRoomId, entry.eventId, entry.event);
        } catch (err) {
          if (isTransient(err)) {
            this.deps.log.warn("cannot show a MIMI state change in its portal for now", {
              mimiRoomId,
              eventId: entry.eventId,
              error: err,
            });
            await this.untilStopped(new Promise((resolve) => setTimeout(resolve, FOLLOW_RETRY_MS)));
            break;
          }
          this.deps.log.warn("a MIMI state change was not shown in its portal", {
            mimiRoomId,
            eventId: entry.eventId,
            error: err,
          });
        }
        from = entry.seq + 1;
        await this.deps.kv.commit([{ type: "put", key: stateCursorKey(mimiRoomId), value: String(from) }]);
      }
    }
  }

  private async showState(
    mimiRoomId: string,
    matrixRoomId: string,
    eventId: string,
    event: FullyFormedEvent,
  ): Promise<void> {
    const local = `:${this.deps.mimiServerName}`;
    // Local users' actions came from the portal (or the admin API) and are there already.
    if (event.sender.endsWith(local) || event.state_key === undefined) return;
    const { userPrefix } = this.deps.matrix.appservice;
    const txnId = (purpose: string) => derivedTxnId(purpose, eventId);
    if (event.type === "m.room.name" || event.type === "m.room.topic") {
      const field = event.type === "m.room.name" ? "name" : "topic";
      const value = event.content[field];
      if (typeof value !== "string") return;
      await this.botOrNotice(
        matrixRoomId,
        () => this.deps.client.setState(matrixRoomId, event.type, "", { [field]: value }),
        `${event.sender} set the MIMI room's ${field} to ${JSON.stringify(value)}`,
        txnId("state-notice"),
      );
      return;
    }
    if (event.type !== "m.room.user") return;
    const target = event.state_key;
    const participation = event.content.participation;
    const reason = typeof event.content.reason === "string" ? event.content.reason : undefined;
    const byWhom = `by ${event.sender} in the MIMI room${reason === undefined ? "" : `: ${reason}`}`;
    if (target.endsWith(local)) {
      const matrixUser = `@${target.slice(1, -local.length)}:${this.deps.matrix.domain}`;
      if (participation === "invite") {
        await this.botOrNotice(
          matrixRoomId,
          () => this.deps.client.invite(matrixRoomId, matrixUser),
          `${event.sender} invited ${matrixUser}; invite them here to let them in`,
          txnId("invite-notice"),
        );
      } else if ((participation === "leave" || participation === "ban") && event.sender !== target) {
        const action = participation === "ban" ? "ban" : "kick";
        await this.botOrNotice(
          matrixRoomId,
          () =>
            this.deps.client.moderate(
              action,
              matrixRoomId,
              matrixUser,
              `${action === "ban" ? "banned" : "removed"} ${byWhom}`,
            ),
          `${matrixUser} was ${action === "ban" ? "banned" : "removed"} ${byWhom}`,
          txnId("moderate-notice"),
        );
        await this.handOver(matrixRoomId, mimiRoomId, target);
      }
      return;
    }
    if (participation === "invite") {
      const inviter = await this.ghostIn(matrixRoomId, event.sender);
      const ghost = ghostUserId(target, userPrefix, this.deps.matrix.domain);
      await this.deps.client.registerGhost(ghost.slice(1, ghost.indexOf(":")));
      await this.deps.client.setDisplayName(ghost, target);
      await this.deps.client.invite(matrixRoomId, ghost, inviter).catch(async (err: unknown) => {
        if (isTransient(err)) throw err;
        await this.notice(
          matrixRoomId,
          `${event.sender} invited ${target} to the MIMI room.`,
          txnId("invite-notice"),
        );
      });
    } else if (participation === "ban" && event.sender !== target) {
      await this.notice(matrixRoomId, `${target} was banned ${byWhom}.`, txnId("ban-notice"));
    }
  }

  /** The bot does something in a portal; when the homeserver refuses it, a notice says what happened instead. */
  private async botOrNotice(
    matrixRoomId: string,
    act: () => Promise<unknown>,
    instead: string,
    txnId: string,
  ): Promise<void> {
    try {
      await act();
    } catch (err) {
      if (isTransient(err)) throw err;
      await this.notice(
        matrixRoomId,
        `${instead}. (The bridge could not do it here: ${(err as Error).message})`,
        txnId,
      );
    }
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
        await this.deps.client.leaveRoom(matrixRoomId, ghost).catch((err: unknown) => {
          // Kicked or banned in the portal already: out is what was wanted.
          if (!(err instanceof HomeserverError && err.status === 403)) throw err;
        });
      }
    }
  }

  /** Shows one MIMI message in the portal; answers the records to land with the follower's cursor. */
  private async show(mimiRoomId: string, matrixRoomId: string, message: ReceivedMessage): Promise<BatchOp[]> {
    if (message.sender.endsWith(`:${this.deps.mimiServerName}`)) return [];
    if (message.status !== "decrypted") {
      if (message.status === "sent") return [];
      await this.notice(
        matrixRoomId,
        `A message from ${message.sender} could not be read (${message.status}${message.reason === undefined ? "" : `: ${message.reason}`}).`,
        derivedTxnId("unreadable", message.eventId),
      );
      return [];
    }
    const content = message.content ?? {};
    if (message.type === "m.room.redaction") {
      const link =
        typeof content.redacts === "string" ? await this.records.linkOfMimi(content.redacts) : undefined;
      // Only a message's own sender takes it back; a redaction of anything else changes nothing.
      if (link === undefined || link.sender !== message.sender || link.roomId !== matrixRoomId) return [];
      const ghost = await this.ghostIn(matrixRoomId, message.sender);
      const reason = typeof content.reason === "string" ? content.reason : undefined;
      await this.deps.client.redact(
        matrixRoomId,
        link.eventId,
        derivedTxnId("redact", message.eventId),
        reason,
        ghost,
      );
      return [];
    }
    if (message.type === "m.room.message") {
      const ids = new Map<string, string>();
      for (const id of referencedEventIds(content)) {
        const link = await this.records.linkOfMimi(id);
        if (link !== undefined && link.roomId === matrixRoomId) ids.set(id, link.eventId);
      }
      const mapped = mapMessageContent(content, ids);
      if ("ok" in mapped) {
        const ghost = await this.ghostIn(matrixRoomId, message.sender);
        await this.nameGhost(ghost, message.sender, content[SENDER_NAME]);
        const matrixEventId = await this.deps.client.sendEvent(
          matrixRoomId,
          "m.room.message",
          mapped.ok,
          derivedTxnId("show", message.eventId),
          ghost,
        );
        return linkOps(matrixEventId, matrixRoomId, message.eventId, mimiRoomId, message.sender);
      }
      await this.notice(
        matrixRoomId,
        `${message.sender} sent a message that cannot be shown here: ${mapped.refused}.`,
        derivedTxnId("unshown", message.eventId),
      );
      return [];
    }
    await this.notice(
      matrixRoomId,
      `${message.sender} sent a message of type ${message.type ?? "?"} that cannot be shown here.`,
      derivedTxnId("unshown", message.eventId),
    );
    return [];
  }

  /** The ghost of a remote MIMI user, registered and joined to the portal. */
  async ghostIn(matrixRoomId: string, mimiUserId: string): Promise<string> {
    const { userPrefix } = this.deps.matrix.appservice;
    const ghost = ghostUserId(mimiUserId, userPrefix, this.deps.matrix.domain);
    const key = `${ghost}${SEP}${matrixRoomId}`;
    if (this.ghostsIn.has(key)) return ghost;
    await this.deps.client.registerGhost(ghost.slice(1, ghost.indexOf(":")));
    // A ghost is named after its MIMI user until its messages bring a name (protocol.md §13).
    if (!this.ghostNames.has(ghost) && (await this.deps.client.displayName(ghost)) === undefined)
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

  /** Gives a ghost the display name its MIMI user's messages carry: `<name> (<their server>)`. */
  private async nameGhost(ghost: string, mimiUser: string, sent: unknown): Promise<void> {
    if (typeof sent !== "string") return;
    // Control characters out, and a bound: a name is for reading, not for layout tricks.
    const clean = sent
      .replace(/[\p{Cc}\p{Cf}]/gu, "")
      .trim()
      .slice(0, 100);
    if (clean === "") return;
    const name = `${clean} (${serverNameOf(mimiUser)})`;
    if (this.ghostNames.get(ghost) === name) return;
    await this.deps.client.setDisplayName(ghost, name);
    this.ghostNames.set(ghost, name);
  }
}
