import { parseFullyFormedEvent } from "../events/envelope";
import { computeEventId } from "../events/pdu";
import type { FullyFormedEvent } from "../events/types";
import type { FederationClient } from "../federation/client";
import type { Logger } from "../logging";
import { RoomError } from "../room/errors";
import type { RoomService } from "../room/roomService";
import { DEFAULT_ROOM_VERSION, getRoomVersion } from "../roomVersions";
import type { RoomVersion } from "../roomVersions/types";
import { BACKFILL_ANSWER, checkAnswer, PeerAnswerError } from "./peerAnswers";

export interface CatchUpOptions {
  rooms: RoomService;
  client: FederationClient;
  /** Fetches the keys an event's signatures need. */
  ensureEventKeys: (event: FullyFormedEvent) => Promise<void>;
  log: Logger;
  /** Events asked for per backfill request. */
  pageSize?: number;
  /** Event bodies kept in memory while walking back; beyond that only IDs are kept and bodies refetched. */
  maxEventsInMemory?: number;
  /** A history gap longer than this is refused (the hub is misbehaving or the room is huge). */
  maxEvents?: number;
  retryMaxMs?: number;
}

interface Running {
  hubServer: string;
  /** Events to reach, in the order asked; merged, never overwritten. */
  targets: string[];
  done: Promise<void>;
}

/**
 * A follower's catch-up (LM-04 §Backfill): pulls the history from the hub
 * backwards from a target event until it meets our head (or the create
 * event, for a room being joined), checks that every page belongs to the room
 * and chains to the next, then applies it forwards in batches. One catch-up
 * per room at a time; targets asked meanwhile are merged into it.
 */
export class CatchUp {
  private readonly running = new Map<string, Running>();
  private readonly pageSize: number;
  private readonly maxEventsInMemory: number;
  private readonly maxEvents: number;
  private readonly retryMaxMs: number;
  /** Aborted by `stop`: a backfill request under way ends at once instead of at its timeout, and nothing is retried. */
  private readonly stopping = new AbortController();

  constructor(private readonly options: CatchUpOptions) {
    this.pageSize = options.pageSize ?? 200;
    this.maxEventsInMemory = options.maxEventsInMemory ?? 20_000;
    this.maxEvents = options.maxEvents ?? 10_000_000;
    this.retryMaxMs = options.retryMaxMs ?? 60_000;
  }

  /** The hub of a room whose catch-up is under way. */
  hubOf(roomId: string): string | undefined {
    return this.running.get(roomId)?.hubServer;
  }

  /** Catches up to `eventId`; resolves once it and everything before it is applied. */
  request(roomId: string, hubServer: string, eventId: string): Promise<void> {
    const current = this.running.get(roomId);
    if (current !== undefined && current.hubServer === hubServer) {
      if (!current.targets.includes(eventId)) current.targets.push(eventId);
      return current.done;
    }
    const entry: Running = { hubServer, targets: [eventId], done: Promise.resolve() };
    entry.done = (async () => {
      try {
        while (entry.targets.length > 0) {
          const target = entry.targets[0]!;
          if ((await this.options.rooms.getEvent(target)) === undefined) {
            await this.catchUpOnce(roomId, hubServer, target);
          }
          entry.targets.shift();
        }
      } finally {
        this.running.delete(roomId);
      }
    })();
    this.running.set(roomId, entry);
    return entry.done;
  }

  /**
   * A catch-up nobody awaits: the event was acknowledged to the hub, so a
   * failure is retried with backoff until it succeeds or the provider stops.
   */
  inBackground(roomId: string, hubServer: string, eventId: string, attempt = 0): void {
    this.request(roomId, hubServer, eventId).catch((error: unknown) => {
      if (this.stopping.signal.aborted) return;
      const delay = Math.min(this.retryMaxMs, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
      this.options.log.warn("catch-up failed; retrying", {
        roomId,
        hubServer,
        error,
        retryInMs: Math.round(delay),
      });
      setTimeout(() => {
        if (!this.stopping.signal.aborted) this.inBackground(roomId, hubServer, eventId, attempt + 1);
      }, delay).unref();
    });
  }

  /** Ends the backfill requests under way (their catch-ups fail) and the retries; call before `settle` on shutdown. */
  stop(): void {
    this.stopping.abort();
  }

  async settle(): Promise<void> {
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  private versionOf(roomId: string): RoomVersion {
    return this.options.rooms.room(roomId)?.version ?? getRoomVersion(DEFAULT_ROOM_VERSION)!;
  }

  private async backfill(roomId: string, hubServer: string, from: string, limit: number) {
    const path =
      `/_matrix/federation/v2/backfill/${encodeURIComponent(roomId)}` +
      `?v=${encodeURIComponent(from)}&limit=${limit}`;
    const answer = checkAnswer(
      BACKFILL_ANSWER,
      await this.options.client.request(hubServer, "GET", path, undefined, { signal: this.stopping.signal }),
      hubServer,
      "backfill",
    );
    if (answer.pdus.length === 0 || answer.pdus.length > limit) {
      throw new PeerAnswerError(
        hubServer,
        "backfill",
        `${answer.pdus.length} events for a limit of ${limit}`,
      );
    }
    return answer.pdus.map((pdu) => parseFullyFormedEvent(pdu));
  }

  /**
   * One page, oldest first, must end with `from` and chain: each event's
   * parent is the one before it. Returns the events with their IDs.
   */
  private checkPage(
    roomId: string,
    hubServer: string,
    from: string,
    events: FullyFormedEvent[],
    version: RoomVersion,
  ): { id: string; event: FullyFormedEvent }[] {
    const page = events.map((event) => ({ id: computeEventId(event, version), event }));
    for (const [i, { id, event }] of page.entries()) {
      if (event.room_id !== roomId) {
        throw new PeerAnswerError(
          hubServer,
          "backfill",
          `event ${id} is in room ${event.room_id}, not ${roomId}`,
        );
      }
      if (event.hub_server !== hubServer) {
        throw new PeerAnswerError(hubServer, "backfill", `event ${id} names hub ${event.hub_server}`);
      }
      if (i > 0 && event.prev_events[0] !== page[i - 1]!.id) {
        throw new PeerAnswerError(hubServer, "backfill", `event ${id} does not follow ${page[i - 1]!.id}`);
      }
    }
    if (page[page.length - 1]!.id !== from) {
      throw new PeerAnswerError(
        hubServer,
        "backfill",
        `the page does not end with the event asked for, ${from}`,
      );
    }
    return page;
  }

  private async catchUpOnce(roomId: string, hubServer: string, target: string): Promise<void> {
    const version = this.versionOf(roomId);
    const room = this.options.rooms.room(roomId);
    const head = room?.state.headEventId;
    // Walk back from the target to our head, newest first: IDs always, bodies while they fit.
    const ids: string[] = [];
    const bodies = new Map<string, FullyFormedEvent>();
    let from = target;
    for (;;) {
      const page = this.checkPage(
        roomId,
        hubServer,
        from,
        await this.backfill(roomId, hubServer, from, this.pageSize),
        version,
      );
      let reached = false;
      for (let i = page.length - 1; i >= 0; i--) {
        const { id, event } = page[i]!;
        if (id === head) {
          reached = true;
          break;
        }
        ids.push(id);
        if (bodies.size < this.maxEventsInMemory) bodies.set(id, event);
        if (event.prev_events.length === 0) {
          if (room !== undefined) {
            throw new PeerAnswerError(
              hubServer,
              "backfill",
              `reached the create event without meeting our head ${head}`,
            );
          }
          reached = true;
          break;
        }
      }
      if (reached) break;
      if (ids.length > this.maxEvents) {
        throw new RoomError("M_TOO_LARGE", `room ${roomId}: more than ${this.maxEvents} events are missing`);
      }
      from = page[0]!.event.prev_events[0]!;
    }
    ids.reverse();
    // Apply forwards in batches; bodies that did not fit are fetched again, a page at a time.
    for (let start = 0; start < ids.length; start += this.pageSize) {
      const chunkIds = ids.slice(start, start + this.pageSize);
      let chunk = chunkIds.map((id) => bodies.get(id));
      if (chunk.some((event) => event === undefined)) {
        const last = chunkIds[chunkIds.length - 1]!;
        const page = this.checkPage(
          roomId,
          hubServer,
          last,
          await this.backfill(roomId, hubServer, last, chunkIds.length),
          version,
        );
        if (page.length !== chunkIds.length || page.some((e, i) => e.id !== chunkIds[i])) {
          throw new PeerAnswerError(
            hubServer,
            "backfill",
            "a page fetched again differs from the first answer",
          );
        }
        chunk = page.map((e) => e.event);
      }
      const events = chunk as FullyFormedEvent[];
      for (const id of chunkIds) bodies.delete(id);
      for (const event of events) await this.options.ensureEventKeys(event);
      const outcomes = await this.options.rooms.applyEvents(roomId, events);
      const failed = outcomes.find((o) => !o.ok);
      if (failed !== undefined && !failed.ok) throw failed.error;
    }
    this.options.log.debug("caught up", { roomId, applied: ids.length });
  }
}
