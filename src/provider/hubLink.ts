import { computeEventId } from "../events/pdu";
import type { FullyFormedEvent, LimitedEvent } from "../events/types";
import { httpStatusFor, isErrorCode } from "../federation/errors";
import type {
  DeadLetterReason,
  OutboundDelivery,
  OutboundQueue,
  PduResult,
  QueueItem,
} from "../federation/queue";
import type { Logger } from "../logging";
import { RoomError } from "../room/errors";
import type { RoomEventNotice, RoomService } from "../room/roomService";
import type { RoomVersion } from "../roomVersions/types";
import type { BatchOp, KvStore } from "../store/kv";

const SEP = "\u0000";
/** `hs\0<queue item ID>` -> LPDU hash: our LPDUs in the queues, so a result after a restart still finds its sender. */
const sentKey = (id: string) => `hs${SEP}${id}`;
/** `hr\0<LPDU hash>` -> the hub's refusal `{hubServer, errcode, error, ts}`, for a retried send. */
const refusalKey = (lpduHash: string) => `hr${SEP}${lpduHash}`;
const SENT_KEPT = 100_000;

/** The hub refused one of our users' limited events; errcode and reason are the hub's. */
export class HubRefusal extends RoomError {
  constructor(
    readonly hubServer: string,
    readonly remoteErrcode: string,
    reason: string,
  ) {
    super(
      isErrorCode(remoteErrcode) ? remoteErrcode : "M_UNKNOWN",
      `the hub ${hubServer} refused the event: ${reason}`,
    );
  }

  get status(): number {
    return httpStatusFor(this.errcode);
  }
}

interface Waiter {
  resolve: (eventId: string) => void;
  reject: (err: Error) => void;
}

export interface HubLinkOptions {
  rooms: RoomService;
  kv: KvStore;
  queue: OutboundQueue;
  delivery: OutboundDelivery;
  log: Logger;
  /** Resolves `awaitOutcome` within this time, or rejects saying the event stays queued. */
  answerTimeoutMs?: number;
  /** A fanned-out event a joining peer refused as unknown is queued again this many times. */
  maxResends?: number;
}

/**
 * Our side of the link to each room's hub and followers, over the durable
 * queues. As a follower: our users' limited events go to the hub through the
 * queue, and a send resolves once the event comes back applied from the hub
 * (matched by its LPDU hash) or rejects with the hub's refusal, kept in the
 * store so a retried send after a restart gets it too. As a hub: a
 * fanned-out event that a server refuses because it does not know the room
 * yet (it is still joining) is queued again, so it is never lost.
 */
export class HubLink {
  /** Waiting senders by LPDU hash. */
  private readonly waiters = new Map<string, Waiter[]>();
  private readonly resends = new Map<string, number>();
  /** The `hs` records written by this process, by queue item ID (bounded; the store has them all). */
  private readonly sent = new Map<string, string>();
  private readonly answerTimeoutMs: number;
  private readonly maxResends: number;

  constructor(private readonly options: HubLinkOptions) {
    this.answerTimeoutMs = options.answerTimeoutMs ?? 60_000;
    this.maxResends = options.maxResends ?? 10;
  }

  /** The operations that queue `lpdu` for the hub; commit them (with the caller's own), then `wake`. */
  enqueueOps(hubServer: string, lpdu: LimitedEvent, version: RoomVersion): BatchOp[] {
    // LM-04 §Sending Events: the hub answers under the reference hash of the object it received.
    const id = computeEventId(lpdu as unknown as FullyFormedEvent, version);
    this.rememberSent(id, lpdu.hashes.lpdu.sha256);
    return [
      ...this.options.queue.enqueueOps(hubServer, [{ kind: "pdu", id, body: lpdu }]),
      { type: "put", key: sentKey(id), value: lpdu.hashes.lpdu.sha256 },
    ];
  }

  wake(hubServer: string): void {
    this.options.delivery.wake(hubServer);
  }

  /**
   * Waits until the event with this LPDU hash is in our history (its event ID)
   * or the hub refused it. Rejects after the timeout; the event stays queued.
   */
  async awaitOutcome(
    roomId: string,
    lpduHash: string,
    hubServer: string,
    queuedNow = false,
  ): Promise<string> {
    let timer: NodeJS.Timeout | undefined;
    let waiter: Waiter | undefined;
    const outcome = new Promise<string>((resolve, reject) => {
      waiter = { resolve, reject };
      const list = this.waiters.get(lpduHash) ?? [];
      list.push(waiter);
      this.waiters.set(lpduHash, list);
      timer = setTimeout(() => {
        this.dropWaiter(lpduHash, waiter!);
        reject(
          new RoomError(
            "M_UNKNOWN",
            `the hub ${hubServer} has not answered yet; the event stays queued and will be retried`,
          ),
        );
      }, this.answerTimeoutMs);
    });
    // Registered first, then looked up: an outcome that lands in between is not missed. An event
    // queued by the caller just now, before its delivery was woken, has no outcome yet to look up.
    const [known, refused] = queuedNow
      ? [undefined, undefined]
      : await Promise.all([
          this.options.rooms.store.findByLpduHash(roomId, lpduHash),
          this.options.kv.get(refusalKey(lpduHash)),
        ]);
    if (known !== undefined) this.settle(lpduHash, (w) => w.resolve(known));
    else if (refused !== undefined) {
      const { hubServer: hub, errcode, error } = JSON.parse(refused) as Record<string, string>;
      const refusal = new HubRefusal(hub!, errcode!, error!);
      this.settle(lpduHash, (w) => w.reject(refusal));
    }
    try {
      return await outcome;
    } finally {
      clearTimeout(timer);
    }
  }

  private dropWaiter(lpduHash: string, waiter: Waiter): void {
    const list = (this.waiters.get(lpduHash) ?? []).filter((w) => w !== waiter);
    if (list.length === 0) this.waiters.delete(lpduHash);
    else this.waiters.set(lpduHash, list);
  }

  private settle(lpduHash: string, action: (waiter: Waiter) => void): void {
    const list = this.waiters.get(lpduHash);
    if (list === undefined) return;
    this.waiters.delete(lpduHash);
    list.forEach(action);
  }

  /** Subscriber: an applied event resolves whoever waits for its LPDU. */
  readonly onApplied = (notice: RoomEventNotice): void => {
    if (this.waiters.size === 0) return;
    this.settle(notice.event.hashes.lpdu.sha256, (w) => w.resolve(notice.eventId));
  };

  /**
   * The delivery worker's per-PDU results for one acknowledged transaction.
   * LM-04 lists only refused events (`failed_pdus`): a missing result is an
   * acceptance. Our waiters resolve when the event comes back applied.
   */
  async onResults(
    destination: string,
    results: Record<string, PduResult>,
    pduIds: string[],
  ): Promise<BatchOp[]> {
    const hashes = await this.sentHashes(pduIds);
    const ops: BatchOp[] = [];
    for (const [i, id] of pduIds.entries()) {
      const lpduHash = hashes[i];
      if (lpduHash !== undefined) ops.push({ type: "del", key: sentKey(id) });
      const result = results[id];
      if (result?.errcode === undefined && result?.error === undefined) continue;
      const errcode = result.errcode ?? "M_UNKNOWN";
      const reason = result.error ?? "";
      if (lpduHash !== undefined) {
        this.options.log.info("the hub refused our event", { destination, id, errcode, error: reason });
        ops.push(this.refusalOp(lpduHash, destination, errcode, reason));
        const refusal = new HubRefusal(destination, errcode, reason);
        this.settle(lpduHash, (w) => w.reject(refusal));
        continue;
      }
      this.options.log.warn("event refused by peer", { destination, id, errcode, error: reason });
      if (errcode === "M_NOT_FOUND" || errcode === "M_UNKNOWN_ROOM")
        await this.resendToJoining(destination, id);
    }
    // Written with the transaction's completion, so after a crash both happened or this runs again.
    return ops;
  }

  /** The LPDU hash of each of our queue items, from memory or, after a restart, from the `hs` records. */
  private async sentHashes(pduIds: string[]): Promise<(string | undefined)[]> {
    const hashes = pduIds.map((id) => this.sent.get(id));
    const unknown = pduIds.filter((_id, i) => hashes[i] === undefined);
    if (unknown.length > 0) {
      const stored = await this.options.kv.getMany(unknown.map(sentKey));
      let next = 0;
      hashes.forEach((hash, i) => {
        if (hash === undefined) hashes[i] = stored[next++];
      });
    }
    for (const id of pduIds) this.sent.delete(id);
    return hashes;
  }

  private rememberSent(id: string, lpduHash: string): void {
    this.sent.set(id, lpduHash);
    if (this.sent.size > SENT_KEPT) this.sent.delete(this.sent.keys().next().value as string);
  }

  private refusalOp(lpduHash: string, hubServer: string, errcode: string, error: string): BatchOp {
    return {
      type: "put",
      key: refusalKey(lpduHash),
      value: JSON.stringify({ hubServer, errcode, error, ts: Date.now() }),
    };
  }

  /** The queue gave up on items (refused for good, expired, queue full): our senders hear why. */
  readonly onDeadLetter = (destination: string, items: readonly QueueItem[], why: DeadLetterReason): void => {
    const ops: BatchOp[] = [];
    for (const item of items) {
      const lpdu = item.body as Partial<LimitedEvent> & { prev_events?: unknown };
      const lpduHash = lpdu.hashes?.lpdu?.sha256;
      if (item.kind !== "pdu" || lpdu.prev_events !== undefined || lpduHash === undefined) continue;
      const errcode = why.errcode ?? "M_UNKNOWN";
      const reason = `not delivered (${why.reason}${why.error === undefined ? "" : `: ${why.error}`})`;
      ops.push(this.refusalOp(lpduHash, destination, errcode, reason), {
        type: "del",
        key: sentKey(item.id),
      });
      const refusal = new HubRefusal(destination, errcode, reason);
      this.settle(lpduHash, (w) => w.reject(refusal));
    }
    if (ops.length > 0) {
      this.options.kv
        .commit(ops)
        .catch((error: unknown) => this.options.log.error("could not record a dead letter", { error }));
    }
  };

  /**
   * A server refused a fanned-out event of a room it has a joined user in: it
   * is still joining (its catch-up has not started). Queue the event again.
   */
  private async resendToJoining(destination: string, eventId: string): Promise<void> {
    const stored = await this.options.rooms.getEvent(eventId);
    const room = stored === undefined ? undefined : this.options.rooms.room(stored.roomId);
    if (stored === undefined || room === undefined || room.record.role !== "hub") return;
    if (!room.version.joinedServers(room.state).has(destination)) return;
    const key = `${destination}${SEP}${eventId}`;
    const count = (this.resends.get(key) ?? 0) + 1;
    if (count > this.maxResends) {
      this.resends.delete(key);
      this.options.log.warn("gave up resending a refused event", { destination, eventId });
      return;
    }
    this.resends.set(key, count);
    if (this.resends.size > 10_000) this.resends.delete(this.resends.keys().next().value as string);
    try {
      await this.options.queue.enqueue(destination, [
        { kind: "pdu", id: eventId, body: JSON.parse(stored.json) },
      ]);
      this.options.delivery.wake(destination);
    } catch (error) {
      this.options.log.error("could not queue an event again", { destination, error });
    }
  }

  /** Rejects every waiter (shutdown). */
  close(): void {
    for (const hash of [...this.waiters.keys()]) {
      this.settle(hash, (w) => w.reject(new RoomError("M_UNKNOWN", "provider stopped")));
    }
  }
}
