import { Agent, request } from "node:http";
import { sleep } from "./util";

/**
 * `txn`: idempotent PUT routes with a transaction ID in the path and a paged,
 * long-polling history. `legacy`: POST routes and a history call that
 * answers the whole history.
 */
export type AdminFlavour = "txn" | "legacy";

export interface HistoryEvent {
  seq: number;
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, unknown>;
}

export class AdminCallError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

const CALL_TIMEOUT_MS = 30_000;
const PAGE_LIMIT = 1000;
const LONG_POLL_MS = 250;

/** An admin API client over keep-alive HTTP, speaking whichever API the provider has. */
export class AdminClient {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 256 });
  private txnCounter = 0;
  private detected: AdminFlavour | undefined;

  constructor(
    readonly label: string,
    readonly port: number,
    private readonly token: string,
  ) {}

  get flavour(): AdminFlavour {
    if (this.detected === undefined) throw new Error(`${this.label}: call detect() first`);
    return this.detected;
  }

  close(): void {
    this.agent.destroy();
  }

  /**
   * Tries `PUT /createRoom/:txnId` once: an answer means the transaction-ID
   * API, a 404 or 405 (no such route) the legacy one.
   */
  async detect(creator: string): Promise<AdminFlavour> {
    const answer = await this.call("PUT", `/createRoom/${this.nextTxn()}`, { creator });
    if (answer.status >= 200 && answer.status < 300) this.detected = "txn";
    else if (answer.status === 404 || answer.status === 405) this.detected = "legacy";
    else throw this.error("PUT", "/createRoom", answer);
    return this.detected;
  }

  async createRoom(creator: string): Promise<string> {
    const answer =
      this.flavour === "txn"
        ? await this.ok<{ room_id: string }>("PUT", `/createRoom/${this.nextTxn()}`, { creator })
        : await this.ok<{ room_id: string }>("POST", "/rooms", { creator });
    return answer.room_id;
  }

  async send(
    roomId: string,
    sender: string,
    type: string,
    content: Record<string, unknown>,
    stateKey?: string,
  ): Promise<string> {
    const room = encodeURIComponent(roomId);
    const extra = stateKey === undefined ? {} : { state_key: stateKey };
    const answer =
      this.flavour === "txn"
        ? await this.ok<{ event_id: string }>(
            "PUT",
            `/rooms/${room}/send/${encodeURIComponent(type)}/${this.nextTxn()}`,
            { sender, content, ...extra },
          )
        : await this.ok<{ event_id: string }>("POST", `/rooms/${room}/send`, {
            sender,
            type,
            content,
            ...extra,
          });
    return answer.event_id;
  }

  async join(roomId: string, user: string): Promise<void> {
    const room = encodeURIComponent(roomId);
    if (this.flavour === "txn") await this.ok("PUT", `/rooms/${room}/join/${this.nextTxn()}`, { user });
    else await this.ok("POST", `/rooms/${room}/join`, { user });
  }

  /**
   * Events at `from` and later. The transaction-ID API waits up to `waitMs`
   * for one when there is none yet; the legacy API answers the whole history
   * at once, which is filtered here.
   */
  async history(roomId: string, from: number, waitMs = 0): Promise<HistoryEvent[]> {
    const room = encodeURIComponent(roomId);
    if (this.flavour === "txn") {
      const page = await this.ok<{ events: HistoryEvent[] }>(
        "GET",
        `/rooms/${room}/history?from=${from}&limit=${PAGE_LIMIT}&wait_ms=${waitMs}`,
      );
      return page.events;
    }
    const all = await this.ok<{ events: HistoryEvent[] }>("GET", `/rooms/${room}/history`);
    return all.events.filter((e) => e.seq >= from);
  }

  /** The sequence number of the newest event in our copy of the room (bounded: 1,000 pages). */
  async headSeq(roomId: string): Promise<number> {
    let from = 1;
    for (let page = 0; page < 1000; page++) {
      const events = await this.history(roomId, from);
      if (events.length === 0) return from - 1;
      from = events[events.length - 1]!.seq + 1;
      if (this.flavour === "legacy") return from - 1;
    }
    throw new Error(`${this.label}: history of ${roomId} has more than 1,000 pages`);
  }

  /**
   * Waits until the provider's outbound queues (`GET /status`) have stayed
   * empty for two looks in a row, or `timeoutMs` has passed.
   */
  async waitForEmptyQueues(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    let quiet = 0;
    while (performance.now() < deadline) {
      const status = await this.ok<{ queues?: unknown }>("GET", "/status");
      if (typeof status.queues !== "object" || status.queues === null) {
        await sleep(500);
        return true;
      }
      const depths = Object.values(status.queues as Record<string, unknown>);
      quiet = depths.every((d) => d === 0) ? quiet + 1 : 0;
      if (quiet >= 2) return true;
      await sleep(50);
    }
    return false;
  }

  private nextTxn(): string {
    return `bench-${process.pid}-${Date.now().toString(36)}-${++this.txnCounter}`;
  }

  private async ok<T>(method: string, path: string, body?: unknown): Promise<T> {
    const answer = await this.call(method, path, body);
    if (answer.status < 200 || answer.status >= 300) throw this.error(method, path, answer);
    return answer.json as T;
  }

  private error(method: string, path: string, answer: { status: number; json: unknown; text: string }) {
    const json = answer.json as { errcode?: unknown; error?: unknown } | undefined;
    const errcode = typeof json?.errcode === "string" ? json.errcode : undefined;
    const detail = errcode !== undefined ? `${errcode}: ${String(json?.error)}` : answer.text.slice(0, 200);
    return new AdminCallError(
      answer.status,
      errcode,
      `${this.label} ${method} ${path.split("?")[0]}: ${answer.status} ${detail}`,
    );
  }

  private call(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; json: unknown; text: string }> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host: "127.0.0.1",
          port: this.port,
          method,
          path: `/_mimi/admin/v1${path}`,
          agent: this.agent,
          headers: {
            Authorization: `Bearer ${this.token}`,
            ...(payload === undefined
              ? {}
              : { "Content-Type": "application/json", "Content-Length": String(payload.length) }),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (chunk: Buffer) => chunks.push(chunk));
          res.on("error", reject);
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let json: unknown;
            try {
              json = JSON.parse(text);
            } catch {
              json = undefined;
            }
            resolve({ status: res.statusCode ?? 0, json, text });
          });
        },
      );
      req.setTimeout(CALL_TIMEOUT_MS, () =>
        req.destroy(
          new Error(`${this.label} ${method} ${path}: no answer within ${CALL_TIMEOUT_MS / 1000} s`),
        ),
      );
      req.on("error", reject);
      req.end(payload);
    });
  }
}

/**
 * Reads a room's history at one provider as it grows, from `from` on, and
 * calls `onEvent` with each new event and the time it was seen. The
 * transaction-ID API long-polls; the legacy API is polled back to back (so
 * rooms watched that way should stay small). Stops at `stop()` or `deadline`.
 */
export class HistoryWatcher {
  private stopped = false;
  private readonly loop: Promise<void>;
  error: unknown;

  constructor(
    private readonly client: AdminClient,
    private readonly roomId: string,
    private from: number,
    private readonly deadline: number,
    private readonly onEvent: (event: HistoryEvent, seenAt: number) => void,
  ) {
    this.loop = this.run().catch((err: unknown) => {
      this.error = err;
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  private async run(): Promise<void> {
    while (!this.stopped && performance.now() < this.deadline) {
      const events = await this.client.history(this.roomId, this.from, LONG_POLL_MS);
      const seenAt = performance.now();
      for (const event of events) {
        if (event.seq < this.from) continue;
        this.onEvent(event, seenAt);
        this.from = event.seq + 1;
      }
      if (this.client.flavour === "legacy") await new Promise((r) => setImmediate(r));
    }
  }
}
