import type { JsonObject, LimitedEvent } from "../events/types";
import { prefixEnd, type KvStore } from "../store/kv";

const SEP = "\u0000";

/** An invite for one of our users to a room this server does not follow yet. */
export interface PendingInvite {
  roomId: string;
  userId: string;
  hubServer: string;
  inviter: string;
  roomVersion: string;
  /** LM-04 §Stripped State: context for the user, not verified. */
  strippedState: JsonObject[];
  event: LimitedEvent;
  receivedTs: number;
}

export class PendingInvites {
  constructor(private readonly kv: KvStore) {}

  private key(roomId: string, userId: string): string {
    return `v${SEP}${userId}${SEP}${roomId}`;
  }

  async put(invite: PendingInvite): Promise<void> {
    await this.kv.commit([
      { type: "put", key: this.key(invite.roomId, invite.userId), value: JSON.stringify(invite) },
    ]);
  }

  async get(roomId: string, userId: string): Promise<PendingInvite | undefined> {
    const value = await this.kv.get(this.key(roomId, userId));
    return value === undefined ? undefined : (JSON.parse(value) as PendingInvite);
  }

  async remove(roomId: string, userId: string): Promise<void> {
    await this.kv.commit([{ type: "del", key: this.key(roomId, userId) }]);
  }

  async forUser(userId: string): Promise<PendingInvite[]> {
    const prefix = `v${SEP}${userId}${SEP}`;
    const invites: PendingInvite[] = [];
    for await (const [, value] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      invites.push(JSON.parse(value) as PendingInvite);
    }
    return invites;
  }
}
