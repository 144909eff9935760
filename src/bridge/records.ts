/**
 * The bridge's records in the shared store, and what both directions of the bridge share: the
 * idempotency keys derived from events, which failures are worth waiting out, notices.
 */
import { createHash } from "node:crypto";
import { MimiError } from "../errors";
import type { BatchOp, KvStore } from "../store/kv";
import { HomeserverError, type HomeserverClient } from "./homeserverClient";

/**
 * Portal records (`␀` is U+0000). Matrix room IDs are opaque (room version 12 has no server
 * part): they are keys here, never parsed.
 *
 * | Key                        | Value                                   |
 * | -------------------------- | --------------------------------------- |
 * | `bp␀<Matrix room ID>`      | `{mimiRoomId, reader}`: the MIMI room it portals, and the local user whose client reads it for the portal |
 * | `bm␀<MIMI room ID>`        | the Matrix room ID of its portal        |
 * | `bc␀<MIMI room ID>`        | the next position of the MIMI room to show in its portal |
 * | `bs␀<MIMI room ID>`        | the next position of the MIMI room whose state changes to show in its portal |
 * | `bo␀<MIMI room ID>`        | a portal room is being made for it (found again by its mark after a crash) |
 * | `bx␀<Matrix event ID>`     | `{eventId, roomId, sender}`: the MIMI event of the same message |
 * | `be␀<MIMI event ID>`       | `{eventId, roomId, sender}`: the portal's Matrix event of the same message |
 * | `bd␀<Matrix room ID>`      | the Matrix user ID whose command room (direct chat with the bot) it is |
 */
export const SEP = "\u0000";
export const portalKey = (matrixRoomId: string) => `bp${SEP}${matrixRoomId}`;
export const mimiPrefix = `bm${SEP}`;
export const mimiKey = (mimiRoomId: string) => `${mimiPrefix}${mimiRoomId}`;
export const cursorKey = (mimiRoomId: string) => `bc${SEP}${mimiRoomId}`;
export const commandRoomKey = (matrixRoomId: string) => `bd${SEP}${matrixRoomId}`;
export const creatingKey = (mimiRoomId: string) => `bo${SEP}${mimiRoomId}`;
/** The state event marking a portal room the bot made with the MIMI room it portals. */
export const PORTAL_MARK = "io.mimi-appservice.portal";
export const stateCursorKey = (mimiRoomId: string) => `bs${SEP}${mimiRoomId}`;
export const matrixLinkKey = (matrixEventId: string) => `bx${SEP}${matrixEventId}`;
export const mimiLinkKey = (mimiEventId: string) => `be${SEP}${mimiEventId}`;

/** One side's view of a bridged message: the other side's event ID, its room, and the MIMI sender. */
export interface EventLink {
  eventId: string;
  roomId: string;
  sender: string;
}

/** The two records linking a Matrix event and the MIMI event of the same message. */
export function linkOps(
  matrixEventId: string,
  matrixRoomId: string,
  mimiEventId: string,
  mimiRoomId: string,
  sender: string,
): BatchOp[] {
  const toMimi: EventLink = { eventId: mimiEventId, roomId: mimiRoomId, sender };
  const toMatrix: EventLink = { eventId: matrixEventId, roomId: matrixRoomId, sender };
  return [
    { type: "put", key: matrixLinkKey(matrixEventId), value: JSON.stringify(toMimi) },
    { type: "put", key: mimiLinkKey(mimiEventId), value: JSON.stringify(toMatrix) },
  ];
}

export interface PortalRecord {
  mimiRoomId: string;
  reader: string;
}

/** The sender's display name in a message's content inside MLS (protocol.md §13). */
export const SENDER_NAME = "io.mimi-appservice.sender_name";

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

/** A stable transaction ID for what `eventId` causes (`purpose` tells several effects apart). */
export const derivedTxnId = (purpose: string, eventId: string) =>
  `mx-${purpose}-${createHash("sha256").update(eventId).digest("base64url").slice(0, 32)}`;

/** The bot's notice in a room. */
export async function postNotice(
  client: HomeserverClient,
  roomId: string,
  body: string,
  txnId: string,
): Promise<void> {
  await client.sendEvent(roomId, "m.room.message", { msgtype: "m.notice", body }, txnId);
}

/** Reads the portal and message-link records. */
export class BridgeRecords {
  constructor(private readonly kv: KvStore) {}

  async portal(matrixRoomId: string): Promise<PortalRecord | undefined> {
    const record = await this.kv.get(portalKey(matrixRoomId));
    return record === undefined ? undefined : (JSON.parse(record) as PortalRecord);
  }

  async linkOfMatrix(matrixEventId: string): Promise<EventLink | undefined> {
    const value = await this.kv.get(matrixLinkKey(matrixEventId));
    return value === undefined ? undefined : (JSON.parse(value) as EventLink);
  }

  async linkOfMimi(mimiEventId: string): Promise<EventLink | undefined> {
    const value = await this.kv.get(mimiLinkKey(mimiEventId));
    return value === undefined ? undefined : (JSON.parse(value) as EventLink);
  }
}
