import { decodeBase64 } from "../../events/base64";
import type { FullyFormedEvent, JsonObject } from "../../events/types";
import { isValidEventId, isValidRoomId, isValidUserId, serverNameOf } from "../../identifiers";
import type { Logger } from "../../logging";
import type { RoomService } from "../../room/roomService";
import type { BatchOp, KvStore } from "../../store/kv";
import { credentialUserId } from "../clients/authService";
import { SUPPORTED_ALGORITHM } from "../clients/suite";
import { toHex } from "../clients/wire";
import { MlsError } from "../errors";
import { decodePublicMessageMessage } from "../observer/wire";
import { MLS_COMMIT } from "../roomGroup";

/** Follower -> hub: the Welcome of a commit the sender's client made (McMillion: Welcomes go to the hub). */
export const WELCOME_EDU = "io.mimi-appservice.mls.welcome";
/** Hub -> joiner's server: LM-04 §To-Device Messaging, `message_type` m.room.encrypted. */
export const TO_DEVICE_EDU = "m.direct_to_device";
/** LM-04 §Updating Group State: the Welcome's `algorithm`. */
export const WELCOME_ALGORITHM = `m.mls.v1.welcome.${SUPPORTED_ALGORITHM.slice("m.mls.v1.".length)}`;

const SEP = "\u0000";
/** `mgw␀<user>␀<commit event>` -> a Welcome for the user's client, as received (JSON). */
export const welcomeKey = (userId: string, commitEventId: string) =>
  `mgw${SEP}${userId}${SEP}${commitEventId}`;

export interface StoredWelcome {
  welcome: string;
  /** The server it came from: it must be the room's hub. */
  origin: string;
}

export interface EduPort {
  /** The operations that queue `edu` for `destination`; commit them, then `wake`. */
  eduOps(destination: string, edu: JsonObject): BatchOp[];
  wake(destination: string): void;
}

/** The users a commit adds, from its Add proposals' KeyPackages (by value: LM-04 allows no others). */
export function addedUsers(commitMessage: Uint8Array): { userId: string; keyPackageRef: string }[] {
  const content = decodePublicMessageMessage(commitMessage, "commit").content;
  if (content.contentType !== "commit") return [];
  const added: { userId: string; keyPackageRef: string }[] = [];
  for (const entry of content.commit.proposals) {
    if (entry.proposalOrRefType !== "proposal" || entry.proposal.proposalType !== "add") continue;
    const keyPackage = entry.proposal.add.keyPackage;
    const userId = credentialUserId(keyPackage.leafNode.credential);
    if (userId !== undefined) {
      added.push({ userId, keyPackageRef: toHex(keyPackage.leafNode.signaturePublicKey).slice(0, 32) });
    }
  }
  return added;
}

/**
 * Welcome messages, both ways (LM-04 §Updating Group State, McMillion §Joining): a member's
 * provider sends each Welcome to the room's hub; the hub checks it belongs to a commit in the
 * room sent by a user of that provider, and passes it on as a to-device message to the server of
 * each user the commit adds; that server keeps it for its user's client, which joins from it
 * when it reaches the commit.
 */
export class WelcomeRouter {
  constructor(
    private readonly options: {
      serverName: string;
      kv: KvStore;
      rooms: RoomService;
      edus: EduPort;
      log: Logger;
      /** A Welcome for a local user was stored. */
      onStored: (userId: string, commitEventId: string) => void;
    },
  ) {}

  /** The users an m.mls.commit event adds. */
  addedOf(commit: FullyFormedEvent): string[] {
    try {
      const message = new Uint8Array(decodeBase64(commit.content.message as string) ?? []);
      return addedUsers(message).map((a) => a.userId);
    } catch {
      return [];
    }
  }

  /** A follower: the operations that send the hub the Welcome of our user's commit (an EDU). */
  toHubOps(
    hub: string,
    sender: string,
    roomId: string,
    commitEventId: string,
    welcome: string,
  ): { ops: BatchOp[]; wake: string[]; local: string[] } {
    const edu: JsonObject = {
      type: WELCOME_EDU,
      sender,
      content: { room_id: roomId, commit_event_id: commitEventId, welcome },
    };
    return { ops: this.options.edus.eduOps(hub, edu), wake: [hub], local: [] };
  }

  /**
   * Hub: the operations that pass a Welcome on to the users `commit` (an m.mls.commit of one of
   * our rooms) adds: a to-device EDU per remote user, a stored Welcome per local one.
   */
  routeOps(
    commit: FullyFormedEvent,
    commitEventId: string,
    welcome: string,
  ): { ops: BatchOp[]; wake: string[]; local: string[] } {
    const message = new Uint8Array(decodeBase64(commit.content.message as string) ?? []);
    const ops: BatchOp[] = [];
    const wake = new Set<string>();
    const local: string[] = [];
    for (const { userId, keyPackageRef } of addedUsers(message)) {
      const server = serverNameOf(userId);
      if (server === this.options.serverName) {
        const stored: StoredWelcome = { welcome, origin: this.options.serverName };
        ops.push({ type: "put", key: welcomeKey(userId, commitEventId), value: JSON.stringify(stored) });
        local.push(userId);
        continue;
      }
      const edu: JsonObject = {
        type: TO_DEVICE_EDU,
        sender: commit.sender,
        content: {
          target: userId,
          target_device: keyPackageRef,
          message_type: "m.room.encrypted",
          message: { algorithm: WELCOME_ALGORITHM, ciphertext: welcome, commit_event_id: commitEventId },
        },
      };
      ops.push(...this.options.edus.eduOps(server, edu));
      wake.add(server);
    }
    return { ops, wake: [...wake], local };
  }

  /** After `routeOps`' operations are durable. */
  routed(result: { wake: string[]; local: string[] }, commitEventId: string): void {
    for (const server of result.wake) this.options.edus.wake(server);
    for (const userId of result.local) this.options.onStored(userId, commitEventId);
  }

  /** An EDU of a `/send` transaction; unknown types are ignored, as LM-04 §EDUs allows. */
  async onEdu(origin: string, edu: unknown): Promise<void> {
    if (typeof edu !== "object" || edu === null) return;
    const { type, content, sender } = edu as { type?: unknown; content?: unknown; sender?: unknown };
    if (typeof content !== "object" || content === null) return;
    try {
      if (type === WELCOME_EDU) await this.fromMember(origin, sender, content as Record<string, unknown>);
      else if (type === TO_DEVICE_EDU) await this.toDevice(origin, content as Record<string, unknown>);
    } catch (err) {
      this.options.log.info("ignored an EDU", { origin, type, error: (err as Error).message });
    }
  }

  /** Hub: a member's provider hands over the Welcome of its commit. */
  private async fromMember(origin: string, sender: unknown, content: Record<string, unknown>): Promise<void> {
    const { room_id: roomId, commit_event_id: commitEventId, welcome } = content;
    if (typeof roomId !== "string" || !isValidRoomId(roomId)) throw refusal("room_id is not a room ID");
    if (typeof commitEventId !== "string" || !isValidEventId(commitEventId))
      throw refusal("commit_event_id is not an event ID");
    if (typeof welcome !== "string" || decodeBase64(welcome) === undefined)
      throw refusal("welcome is not base64");
    const room = this.options.rooms.room(roomId);
    if (room?.record.role !== "hub") throw refusal(`${this.options.serverName} is not the hub of ${roomId}`);
    const stored = await this.options.rooms.getEvent(commitEventId);
    const commit = stored === undefined ? undefined : (JSON.parse(stored.json) as FullyFormedEvent);
    if (commit === undefined || commit.room_id !== roomId || commit.type !== MLS_COMMIT) {
      throw refusal(`${commitEventId} is not an m.mls.commit of ${roomId}`);
    }
    if (serverNameOf(commit.sender) !== origin || sender !== commit.sender) {
      throw refusal(`the commit was sent by ${commit.sender}, not by a user of ${origin}`);
    }
    const result = this.routeOps(commit, commitEventId, welcome);
    await this.options.kv.commit(result.ops);
    this.routed(result, commitEventId);
  }

  /** A joiner's server: the hub passes on a Welcome for one of our users. */
  private async toDevice(origin: string, content: Record<string, unknown>): Promise<void> {
    const { target, message_type: messageType, message } = content;
    if (
      typeof target !== "string" ||
      !isValidUserId(target) ||
      serverNameOf(target) !== this.options.serverName
    ) {
      throw refusal("target is not one of our users");
    }
    if (messageType !== "m.room.encrypted" || typeof message !== "object" || message === null) return;
    const { algorithm, ciphertext, commit_event_id: commitEventId } = message as Record<string, unknown>;
    if (algorithm !== WELCOME_ALGORITHM)
      throw refusal(`algorithm ${String(algorithm)} is not ${WELCOME_ALGORITHM}`);
    if (typeof ciphertext !== "string" || decodeBase64(ciphertext) === undefined)
      throw refusal("ciphertext is not base64");
    if (typeof commitEventId !== "string" || !isValidEventId(commitEventId))
      throw refusal("commit_event_id is not an event ID");
    // Whether `origin` is the room's hub is checked when the client reaches the commit.
    const stored: StoredWelcome = { welcome: ciphertext, origin };
    await this.options.kv.commit([
      { type: "put", key: welcomeKey(target, commitEventId), value: JSON.stringify(stored) },
    ]);
    this.options.onStored(target, commitEventId);
  }
}

function refusal(reason: string): MlsError {
  return new MlsError("M_INVALID_PARAM", "welcome.edu", reason);
}
