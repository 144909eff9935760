import type { FullyFormedEvent, JsonObject } from "../events/types";
import type { ReceivedMessage } from "../mls/agent/groupAgent";

export type { ReceivedMessage };

/**
 * The one interface for local users (the admin API and the Matrix bridge).
 * Every mutating call carries an idempotency key (`txnId`, like Matrix's
 * client-server `txnId`), scoped to the acting user: a call repeated with the
 * same user and key, even after a restart, returns the first call's result and
 * makes no second event. Errors are the room layer's `MimiError`s (errcode +
 * message, `RoomError` / `AuthRejection` / identifier and event errors), never
 * HTTP errors; `errcode` decides the HTTP status at the edge.
 */
export interface RoomsApi {
  /** Creates a room with this provider as its hub; `creator` is a local user. */
  createRoom(request: CreateRoomRequest): Promise<{ roomId: string }>;
  /** Sends an event as a local user: sequenced here when we are the hub, else relayed to the hub. */
  send(request: SendRequest): Promise<{ eventId: string }>;
  /**
   * Sends a local user's message, end-to-end encrypted: the user's hosted MLS client encrypts
   * `{type, content}` and the room gets an `m.room.encrypted` event (LM-04 §m.room.encrypted).
   * Waits (up to a bound) for the user's client to be in the room's group.
   */
  sendMessage(request: MessageRequest): Promise<{ eventId: string }>;
  /**
   * The messages of a room as a local user's client received them (decrypted), oldest first. With
   * `waitMs`, waits up to that long for one when there is none yet (a long poll).
   */
  messages(
    roomId: string,
    userId: string,
    page: { fromSeq: number; limit: number; waitMs?: number },
  ): Promise<ReceivedMessage[]>;
  /** A local user's MLS client in a room's group: its epoch and the members it sees; undefined if it has none. */
  clientGroup(roomId: string, userId: string): Promise<ClientGroupView | undefined>;
  /** `sender` (local) invites `target` (any server). */
  invite(request: InviteRequest): Promise<{ eventId: string }>;
  /** A local user's own join, leave or knock; works for rooms this provider does not follow yet. */
  changeOwnParticipation(request: OwnParticipationRequest): Promise<{ eventId: string }>;
  /** `sender` (local) kicks (`leave`) or bans (`ban`) `target`. */
  changeParticipationOf(request: OtherParticipationRequest): Promise<{ eventId: string }>;
  /** Invites for a local user to rooms this provider does not follow yet. */
  listInvites(userId: string): Promise<InviteInfo[]>;
  /** Every local user's invites to rooms this provider does not follow yet, oldest first. */
  allInvites(): Promise<InviteInfo[]>;
  /** Calls `listener` with each such invite once it is stored; returns the unsubscribe function. */
  onInvite(listener: (invite: InviteInfo) => void): () => void;
  listRooms(): string[];
  /** Undefined for a room this provider is not in. */
  roomInfo(roomId: string): RoomInfo | undefined;
  /**
   * One page of a room's linear history, oldest first, from `fromSeq` (1 = the
   * create event). With `waitMs`, waits up to that long for an event at
   * `fromSeq` when there is none yet (a long poll), then answers what there is.
   */
  history(roomId: string, page: { fromSeq: number; limit: number; waitMs?: number }): Promise<HistoryPage>;
}

export interface CreateRoomRequest {
  creator: string;
  txnId: string;
  roomLocalpart?: string;
}

export interface SendRequest {
  roomId: string;
  sender: string;
  type: string;
  content: JsonObject;
  stateKey?: string;
  txnId: string;
}

export interface ClientGroupView {
  /** The client's MLS epoch (decimal). */
  epoch: string;
  /** The user ID of each leaf's client, by leaf index. */
  members: string[];
  /** False once the client was removed from the group. */
  active: boolean;
  /** The GroupContext's tree hash (unpadded base64): equal clients agree on the whole tree. */
  treeHash: string;
}

export interface MessageRequest {
  roomId: string;
  sender: string;
  /** The message's own type, inside the ciphertext (e.g. `m.room.message`). */
  type: string;
  content: JsonObject;
  txnId: string;
}

export interface InviteRequest {
  roomId: string;
  sender: string;
  target: string;
  reason?: string;
  txnId: string;
}

export interface OwnParticipationRequest {
  roomId: string;
  user: string;
  change: "join" | "leave" | "knock";
  reason?: string;
  txnId: string;
}

export interface OtherParticipationRequest {
  roomId: string;
  sender: string;
  target: string;
  change: "leave" | "ban";
  reason?: string;
  txnId: string;
}

export interface InviteInfo {
  roomId: string;
  userId: string;
  inviter: string;
  hubServer: string;
  roomVersion: string;
  /** LM-04 §Stripped State: unverified context (name, topic, join rules...). */
  strippedState: JsonObject[];
  receivedTs: number;
}

export interface RoomInfo {
  roomId: string;
  roomVersion: string;
  hubServer: string;
  role: "hub" | "follower";
  /** Sequence number and ID of the last event durably in the history. */
  headSeq: number;
  headEventId: string;
  /** Participation of every user with an `m.room.user` state entry. */
  participation: Record<string, string>;
  /** Current state entries other than participation, by `type` then `state_key`. */
  state: { type: string; stateKey: string; sender: string; content: JsonObject }[];
}

export interface HistoryEntry {
  seq: number;
  eventId: string;
  event: FullyFormedEvent;
}

export interface HistoryPage {
  events: HistoryEntry[];
  /** The `fromSeq` of the next page, or undefined when this page reached the head. */
  nextSeq: number | undefined;
}
