import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";

export type RoomRole = "hub" | "follower";
export type HomeserverTransactionOutcome = "stored" | "duplicate" | "rejected";
/** Where an error was answered or dropped. */
/** Where an error happened: a listener's error answers, or the bridge's homeserver events it could not map. */
export type ErrorEdge = "federation" | "admin" | "appservice" | "bridge";

/** One destination's outbound queue, as read at scrape time. */
export interface QueueReading {
  destination: string;
  /** Items queued and not yet acknowledged. */
  depth: number;
  /** When the oldest of them was enqueued (ms since the epoch); undefined when none is queued. */
  oldestEnqueuedTs: number | undefined;
}

/** What the scrape-time gauges read of a running provider. */
export interface MetricsSource {
  queues(): Promise<QueueReading[]>;
  /** The MLS epoch of each room whose group is established, as this provider's observer tracks it. */
  mlsEpochs(): { roomId: string; epoch: bigint }[];
}

/** Distinct `kind` values kept per edge; any further kind is counted as `other`. */
export const MAX_ERROR_KINDS = 64;
const ERROR_KIND = /^[A-Za-z][A-Za-z0-9_.]{0,79}$/;

export interface MimiMetricsOptions {
  /** Process metrics (RSS, heap, event loop lag, GC). Default true. */
  defaultMetrics?: boolean;
  /** Milliseconds since the epoch, for queue ages. Default `Date.now`. */
  now?: () => number;
}

/**
 * The process's Prometheus metrics, on a registry of its own (never prom-client's global one, so
 * a process, or a test, can hold several). Counters are bumped through the methods below; the
 * gauges read their `MetricsSource` when scraped.
 */
export class MimiMetrics {
  readonly registry = new Registry();
  private readonly sequenced: Counter<"room_role">;
  private readonly homeserverTransactions: Counter<"outcome">;
  private readonly homeserverEvents: Counter;
  private readonly errors: Counter<"edge" | "kind">;
  private readonly errorKinds = new Map<ErrorEdge, Set<string>>();
  private readonly sources: MetricsSource[] = [];
  private readonly now: () => number;

  constructor(options: MimiMetricsOptions = {}) {
    this.now = options.now ?? Date.now;
    const registers = [this.registry];
    this.sequenced = new Counter({
      name: "mimi_events_sequenced_total",
      help: "Events durably appended to room histories, by this provider's role in the room",
      labelNames: ["room_role"],
      registers,
    });
    for (const role of ["hub", "follower"] as const) this.sequenced.inc({ room_role: role }, 0);
    this.homeserverTransactions = new Counter({
      name: "mimi_homeserver_transactions_total",
      help: "Transactions the homeserver pushed to the appservice, by outcome",
      labelNames: ["outcome"],
      registers,
    });
    for (const outcome of ["stored", "duplicate", "rejected"] as const)
      this.homeserverTransactions.inc({ outcome }, 0);
    this.homeserverEvents = new Counter({
      name: "mimi_homeserver_events_total",
      help: "Events of the homeserver's transactions stored in the inbox (duplicates not counted again)",
      registers,
    });
    this.errors = new Counter({
      name: "mimi_errors_total",
      help: "Errors answered at the edges, by edge and errcode",
      labelNames: ["edge", "kind"],
      registers,
    });
    const sources = this.sources;
    const now = this.now;
    // Both queue gauges are collected at once: they share one reading of the queues.
    let reading: Promise<QueueReading[]> | undefined;
    const readQueues = () =>
      (reading ??= Promise.all(sources.map(readOrNothing)).then((readings) => {
        reading = undefined;
        return readings.flat();
      }));
    new Gauge({
      name: "mimi_federation_queue_depth",
      help: "Items in the outbound federation queue of each destination, not yet acknowledged",
      labelNames: ["destination"],
      registers,
      async collect() {
        this.reset();
        for (const queue of await readQueues()) this.set({ destination: queue.destination }, queue.depth);
      },
    });
    new Gauge({
      name: "mimi_federation_queue_oldest_age_seconds",
      help: "Age of the oldest item in each destination's outbound federation queue (0 when it is empty)",
      labelNames: ["destination"],
      registers,
      async collect() {
        this.reset();
        for (const queue of await readQueues()) {
          const age = queue.oldestEnqueuedTs === undefined ? 0 : (now() - queue.oldestEnqueuedTs) / 1000;
          this.set({ destination: queue.destination }, Math.max(0, age));
        }
      },
    });
    new Gauge({
      name: "mimi_mls_epoch",
      help: "The MLS epoch of each room's group as this provider's observer tracks it (one series per room)",
      labelNames: ["room"],
      registers,
      collect() {
        this.reset();
        for (const source of sources) {
          for (const { roomId, epoch } of source.mlsEpochs()) this.set({ room: roomId }, Number(epoch));
        }
      },
    });
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Reads `source` at every scrape (a provider; see `providerMetricsSource`). */
  watch(source: MetricsSource): void {
    this.sources.push(source);
  }

  eventSequenced(role: RoomRole): void {
    this.sequenced.inc({ room_role: role });
  }

  homeserverTransaction(outcome: HomeserverTransactionOutcome, events: number): void {
    this.homeserverTransactions.inc({ outcome });
    if (outcome === "stored" && events > 0) this.homeserverEvents.inc(events);
  }

  /**
   * Counts an error answered at `edge`. `kind` is an errcode; as some errcodes come from peers,
   * one that does not look like one, or beyond `MAX_ERROR_KINDS` per edge, is counted as `other`.
   */
  error(edge: ErrorEdge, kind: string): void {
    let kinds = this.errorKinds.get(edge);
    if (kinds === undefined) this.errorKinds.set(edge, (kinds = new Set()));
    const known = kinds.has(kind) || (ERROR_KIND.test(kind) && kinds.size < MAX_ERROR_KINDS);
    if (known) kinds.add(kind);
    this.errors.inc({ edge, kind: known ? kind : "other" });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The Prometheus text exposition of every metric. */
  scrape(): Promise<string> {
    return this.registry.metrics();
  }
}

/** A source that fails (its provider stopping) contributes nothing to the scrape. */
async function readOrNothing(source: MetricsSource): Promise<QueueReading[]> {
  try {
    return await source.queues();
  } catch {
    return [];
  }
}
