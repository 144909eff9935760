import type { FullyFormedEvent } from "../events/types";
import { RoomError } from "../room/errors";
import type { RoomService } from "../room/roomService";
import { prefixEnd, type KvStore } from "../store/kv";

const SEP = "\u0000";
/** `f\0<consumer>\0<roomId>` -> the highest acknowledged sequence number of that room. */
const CURSOR_PREFIX = `f${SEP}`;
/** `fc\0<consumer>` -> present once the consumer registered. */
const CONSUMER_PREFIX = `fc${SEP}`;
const CONSUMER_NAME = /^[a-z0-9._-]{1,64}$/;

export interface FeedItem {
  roomId: string;
  /** Position in the room's linear history (1 = the create event). */
  seq: number;
  eventId: string;
  event: FullyFormedEvent;
}

export interface EventFeedOptions {
  /** For a consumer seen for the first time: deliver rooms' histories from the start, or only what comes next. */
  startAt?: "beginning" | "now";
}

/**
 * A durable event feed for one consumer (the Matrix bridge is one): every
 * event of every room, in history order per room, at least once. The
 * consumer's cursor per room is its last acknowledged sequence number, kept
 * in the store; after a crash, what was pulled and not acknowledged comes
 * again. The room service's subscription only wakes the feed up.
 */
export class EventFeed {
  /** Acknowledged positions, as stored. */
  private readonly acked = new Map<string, number>();
  /** Pulled positions in this process (at least the acknowledged ones). */
  private readonly pulled = new Map<string, number>();
  /** Rooms that may have events past their pulled position. */
  private readonly dirty = new Set<string>();
  private readonly wakers = new Set<() => void>();
  private readonly unsubscribe: () => void;

  private constructor(
    readonly consumer: string,
    private readonly kv: KvStore,
    private readonly rooms: RoomService,
  ) {
    this.unsubscribe = rooms.subscribe((notice) => {
      this.dirty.add(notice.roomId);
      for (const wake of [...this.wakers]) wake();
    });
  }

  static async open(
    kv: KvStore,
    rooms: RoomService,
    consumer: string,
    options: EventFeedOptions = {},
  ): Promise<EventFeed> {
    if (!CONSUMER_NAME.test(consumer)) {
      throw new RoomError(
        "M_INVALID_PARAM",
        `feed consumer name ${JSON.stringify(consumer)} must match ${CONSUMER_NAME}`,
      );
    }
    const feed = new EventFeed(consumer, kv, rooms);
    const prefix = `${CURSOR_PREFIX}${consumer}${SEP}`;
    for await (const [key, value] of kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      feed.acked.set(key.slice(prefix.length), Number(value));
    }
    if ((await kv.get(`${CONSUMER_PREFIX}${consumer}`)) === undefined) {
      const ops = [{ type: "put" as const, key: `${CONSUMER_PREFIX}${consumer}`, value: "1" }];
      if (options.startAt === "now") {
        for (const roomId of rooms.roomIds()) {
          const head = rooms.room(roomId)!.record.headSeq;
          feed.acked.set(roomId, head);
          ops.push({ type: "put", key: feed.cursorKey(roomId), value: String(head) });
        }
      }
      await kv.commit(ops);
    }
    for (const [roomId, seq] of feed.acked) feed.pulled.set(roomId, seq);
    for (const roomId of rooms.roomIds()) feed.dirty.add(roomId);
    return feed;
  }

  private cursorKey(roomId: string): string {
    return `${CURSOR_PREFIX}${this.consumer}${SEP}${roomId}`;
  }

  /** Up to `limit` events not pulled yet, oldest first per room, from as many rooms as have them. */
  async pull(limit = 100): Promise<FeedItem[]> {
    const items: FeedItem[] = [];
    for (const roomId of [...this.dirty]) {
      if (items.length >= limit) break;
      const head = this.rooms.room(roomId)?.record.headSeq ?? 0;
      const from = (this.pulled.get(roomId) ?? 0) + 1;
      if (from > head) {
        this.dirty.delete(roomId);
        continue;
      }
      const events = await this.rooms.getEvents(
        roomId,
        from,
        Math.min(limit - items.length, head - from + 1),
      );
      for (const stored of events) {
        items.push({
          roomId,
          seq: stored.seq,
          eventId: stored.eventId,
          event: JSON.parse(stored.json) as FullyFormedEvent,
        });
      }
      const last = events[events.length - 1]?.seq ?? from - 1;
      this.pulled.set(roomId, last);
      if (last >= head) this.dirty.delete(roomId);
    }
    return items;
  }

  /** Acknowledges items: each room's cursor moves to the highest sequence number given (durably). */
  async ack(items: readonly { roomId: string; seq: number }[]): Promise<void> {
    const highest = new Map<string, number>();
    for (const { roomId, seq } of items) highest.set(roomId, Math.max(seq, highest.get(roomId) ?? 0));
    const ops = [...highest]
      .filter(([roomId, seq]) => seq > (this.acked.get(roomId) ?? 0))
      .map(([roomId, seq]) => ({ type: "put" as const, key: this.cursorKey(roomId), value: String(seq) }));
    if (ops.length === 0) return;
    await this.kv.commit(ops);
    for (const [roomId, seq] of highest) {
      if (seq > (this.acked.get(roomId) ?? 0)) this.acked.set(roomId, seq);
    }
  }

  /** The acknowledged position of a room (0 when nothing was acknowledged). */
  cursor(roomId: string): number {
    return this.acked.get(roomId) ?? 0;
  }

  /** Pulled and unacknowledged events are pulled again (e.g. after the consumer failed to handle them). */
  rewind(): void {
    for (const roomId of this.pulled.keys()) {
      this.pulled.set(roomId, this.acked.get(roomId) ?? 0);
      this.dirty.add(roomId);
    }
  }

  /** Resolves when there may be something to pull, or after `timeoutMs`. */
  waitForEvents(timeoutMs: number): Promise<void> {
    if (this.dirty.size > 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.wakers.add(done);
    });
  }

  close(): void {
    this.unsubscribe();
    for (const wake of [...this.wakers]) wake();
  }
}
