import { RequestAbortedError } from "../../../src/federation/client";
import { FederationNetworkError, RemoteError } from "../../../src/federation/errors";
import {
  OutboundDelivery,
  OutboundQueue,
  PEER_WAKE_MIN_WAIT_MS,
  QueueError,
  backoffDelay,
  type DeliveryFailureInfo,
  type OutboundDeliveryOptions,
  type PduResult,
  type QueueItem,
} from "../../../src/federation/queue";
import { seededRandom } from "../../support/random";
import {
  Clock,
  HoldingStore,
  ManualTimer,
  RecordingSender,
  TempStore,
  edu,
  eventually,
  httpError,
  numbers,
  pdu,
} from "./helpers";

const DEST = "b.example";
const SEP = "\u0000";

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

interface Harness {
  queue: OutboundQueue;
  delivery: OutboundDelivery;
  sender: RecordingSender;
  timer: ManualTimer;
  errors: { destination: string; error: Error; info: DeliveryFailureInfo }[];
  results: { destination: string; txnId: string; results: Record<string, PduResult>; pduIds: string[] }[];
}

let temp: TempStore;
let running: OutboundDelivery[];

beforeEach(async () => {
  temp = await TempStore.create();
  running = [];
});

afterEach(async () => {
  await Promise.all(running.map((d) => d.stop()));
  await temp.dispose();
});

async function harness(
  options: Partial<OutboundDeliveryOptions> = {},
  queue?: OutboundQueue,
): Promise<Harness> {
  const q = queue ?? (await OutboundQueue.open(temp.store));
  const sender = new RecordingSender();
  const timer = new ManualTimer();
  const errors: Harness["errors"] = [];
  const results: Harness["results"] = [];
  const delivery = new OutboundDelivery(q, {
    send: sender.send,
    timer,
    random: () => 0.5,
    onError: (destination, error, info) => errors.push({ destination, error, info }),
    onResults: (destination, txnId, pduResults, pduIds) => {
      results.push({ destination, txnId, results: pduResults, pduIds });
    },
    ...options,
  });
  running.push(delivery);
  return { queue: q, delivery, sender, timer, errors, results };
}

const idle =
  (h: Harness, destination = DEST) =>
  () =>
    h.delivery.depth(destination) === 0 && h.delivery.inFlight(destination) === undefined;

/** Item numbers of every call, in call order. */
const delivered = (calls: { pdus: unknown[]; edus: unknown[] }[]) =>
  calls.map((c) => [...numbers(c.pdus), ...numbers(c.edus)].sort((a, b) => a - b));

describe("OutboundDelivery", () => {
  it("delivers 1,000 items in order, at most 50 PDUs per transaction and one transaction in flight", async () => {
    const h = await harness();
    const item = (n: number): QueueItem => (n % 5 === 0 ? edu(n) : pdu(n));
    await h.queue.enqueue(DEST, range(1, 500).map(item));
    h.delivery.start();
    for (let from = 501; from <= 1000; from += 10) {
      await h.queue.enqueue(DEST, range(from, from + 9).map(item));
      h.delivery.wake(DEST);
    }
    await eventually(idle(h));

    const calls = h.sender.callsTo(DEST);
    expect(h.sender.maxConcurrent.get(DEST)).toBe(1);
    expect(calls.length).toBeGreaterThanOrEqual(800 / 50);
    expect(calls.some((c) => c.pdus.length === 50)).toBe(true);
    for (const call of calls) {
      expect(call.pdus.length).toBeLessThanOrEqual(50);
      expect(call.edus.length).toBeLessThanOrEqual(100);
    }
    // Each transaction is the next contiguous run of the queue.
    expect(delivered(calls).flat()).toEqual(range(1, 1000));
    expect(new Set(calls.map((c) => c.txnId)).size).toBe(calls.length);
    expect(await temp.keys(`q${SEP}`)).toEqual([]);
    expect(await temp.keys(`qt${SEP}`)).toEqual([]);
    expect(h.errors).toEqual([]);
  });

  it("lets every destination progress on its own: a failing one keeps its backlog and blocks no other", async () => {
    const h = await harness();
    h.sender.behaviour = (call) => {
      if (call.destination === "down.example") throw httpError(503, "M_UNKNOWN");
      return { pdus: {} };
    };
    await h.queue.enqueue("down.example", range(1, 120).map(pdu));
    await h.queue.enqueue("up.example", range(1, 120).map(pdu));
    h.delivery.start();

    await eventually(idle(h, "up.example"));
    await h.timer.requested(1);
    expect(delivered(h.sender.callsTo("up.example")).flat()).toEqual(range(1, 120));
    expect(h.delivery.depth("down.example")).toBe(120);
    expect(h.delivery.lastError("down.example")?.message).toMatch(/503/);
    expect(h.delivery.lastError("up.example")).toBeUndefined();
    expect(h.errors.map((e) => e.destination)).toEqual(["down.example"]);
    expect(h.delivery.destinations().sort()).toEqual(["down.example", "up.example"]);

    // More items for the healthy destination still flow while the other waits to retry.
    await h.queue.enqueue("up.example", [pdu(121)]);
    h.delivery.wake("up.example");
    h.delivery.wake("down.example");
    await eventually(idle(h, "up.example"));
    expect(h.sender.callsTo("down.example")).toHaveLength(1);
    expect(h.delivery.inFlight("down.example")).toMatchObject({ pdus: 50, edus: 0, sending: false });
  });

  it("retries a failed transaction with the same txn ID and items, then moves on to a new one", async () => {
    const h = await harness();
    let failures = 2;
    h.sender.behaviour = () => {
      if (failures-- > 0) throw new Error("connection reset");
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, range(1, 60).map(pdu));
    h.delivery.start();

    await h.timer.requested(1);
    const pending = h.delivery.inFlight(DEST);
    expect(pending?.txnId).toBe(h.sender.calls[0]!.txnId);
    expect(h.delivery.lastError(DEST)?.message).toBe("connection reset");
    h.timer.fireAll();
    await h.timer.requested(2);
    h.timer.fireAll();
    await eventually(idle(h));

    const [first, second, third, fourth] = h.sender.calls;
    expect(second!.txnId).toBe(first!.txnId);
    expect(third!.txnId).toBe(first!.txnId);
    expect(second!.pdus).toEqual(first!.pdus);
    expect(third!.pdus).toEqual(first!.pdus);
    expect(numbers(first!.pdus)).toEqual(range(1, 50));
    expect(fourth!.txnId).not.toBe(first!.txnId);
    expect(numbers(fourth!.pdus)).toEqual(range(51, 60));
    expect(h.sender.calls).toHaveLength(4);
    expect(h.errors.map((e) => e.info)).toEqual([
      { txnId: first!.txnId, attempt: 1, permanent: false, retryInMs: 125 },
      { txnId: first!.txnId, attempt: 2, permanent: false, retryInMs: 250 },
    ]);
    expect(h.delivery.lastError(DEST)).toBeUndefined();
    expect(h.delivery.nextRetryAt(DEST)).toBeUndefined();
  });

  it("reports permanent refusals through onError and still retries them", async () => {
    const h = await harness();
    const answers = [
      httpError(400, "M_BAD_JSON"),
      httpError(401, "M_UNAUTHORIZED"),
      Object.assign(new Error("refused"), { status: 502, retryable: false }),
      httpError(429, "M_LIMIT_EXCEEDED"),
      httpError(500, "M_UNKNOWN"),
    ];
    h.sender.behaviour = () => {
      const next = answers.shift();
      if (next !== undefined) throw next;
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    for (let i = 1; i <= 5; i++) {
      await h.timer.requested(i);
      h.timer.fireAll();
    }
    await eventually(idle(h));

    expect(h.errors.map((e) => e.info.permanent)).toEqual([true, true, true, false, false]);
    expect(h.errors.map((e) => (e.error as Error & { errcode?: string }).errcode)).toEqual([
      "M_BAD_JSON",
      "M_UNAUTHORIZED",
      undefined,
      "M_LIMIT_EXCEEDED",
      "M_UNKNOWN",
    ]);
    expect(new Set(h.sender.calls.map((c) => c.txnId)).size).toBe(1);
    expect(h.sender.calls).toHaveLength(6);
  });

  it("hands per-PDU results to onResults and never resends a refused PDU", async () => {
    const h = await harness({ limits: { maxPdus: 3 } });
    let call = 0;
    h.sender.behaviour = () => {
      call++;
      if (call === 1)
        return { pdus: { $e1: {}, $e2: { errcode: "M_FORBIDDEN", error: "not allowed" }, $e3: {} } };
      return { failed_pdus: { $e5: { error: "Invalid event format" } } };
    };
    await h.queue.enqueue(DEST, range(1, 6).map(pdu));
    h.delivery.start();
    await eventually(idle(h));

    expect(h.results).toEqual([
      {
        destination: DEST,
        txnId: h.sender.calls[0]!.txnId,
        results: { $e1: {}, $e2: { errcode: "M_FORBIDDEN", error: "not allowed" }, $e3: {} },
        pduIds: ["$e1", "$e2", "$e3"],
      },
      {
        destination: DEST,
        txnId: h.sender.calls[1]!.txnId,
        results: { $e5: { error: "Invalid event format" } },
        pduIds: ["$e4", "$e5", "$e6"],
      },
    ]);
    expect(delivered(h.sender.calls)).toEqual([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(h.errors).toEqual([]);
    expect(await temp.keys(`q${SEP}`)).toEqual([]);
  });

  it("picks up items woken for while it was finding the queue empty", async () => {
    const store = new HoldingStore(temp.store);
    const h = await harness({}, await OutboundQueue.open(store));
    let hold: ReturnType<HoldingStore["holdNextRange"]> | undefined;
    h.sender.behaviour = () => {
      // Hold the read after this transaction, which finds the queue empty.
      hold ??= store.holdNextRange();
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await eventually(() => hold !== undefined);
    await hold!.reached;
    await h.queue.enqueue(DEST, [pdu(2)]);
    h.delivery.wake(DEST);
    hold!.release();
    await eventually(idle(h));
    expect(h.sender.calls.map((c) => numbers(c.pdus))).toEqual([[1], [2]]);
  });

  it("writes the operations onResults returns in the batch that deletes the transaction's items", async () => {
    const batches: string[][] = [];
    temp.store.onCommitted((ops) => batches.push(ops.map((op) => `${op.type} ${op.key.split(SEP)[0]}`)));
    const h = await harness({
      onResults: (_destination, txnId) => [{ type: "put", key: `rec${SEP}${txnId}`, value: "seen" }],
    });
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await eventually(idle(h));
    const txnId = h.sender.calls[0]!.txnId;
    expect(await temp.store.get(`rec${SEP}${txnId}`)).toBe("seen");
    expect(batches).toContainEqual(["put rec", "del q", "del qt"]);
  });

  it("keeps delivering when onResults throws, and reports it", async () => {
    const h = await harness({
      onResults: () => {
        throw new Error("results hook broke");
      },
    });
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await eventually(idle(h));
    expect(h.errors.map((e) => e.error.message)).toEqual(["results hook broke"]);
    expect(h.sender.calls).toHaveLength(1);
  });
});

describe("OutboundDelivery backoff", () => {
  const policy = { baseMs: 250, capMs: 5000 };

  it("computes full-jitter delays below min(cap, base * 2^(attempt-1))", () => {
    const ceilings = [250, 500, 1000, 2000, 4000, 5000, 5000];
    ceilings.forEach((ceiling, i) => {
      expect(backoffDelay(i + 1, policy, () => 0)).toBe(0);
      expect(backoffDelay(i + 1, policy, () => 0.5)).toBe(ceiling / 2);
      expect(backoffDelay(i + 1, policy, () => 1 - 2 ** -40)).toBe(ceiling - 1);
    });
    expect(backoffDelay(5000, policy, () => 0.5)).toBe(2500);
    const random = seededRandom(7);
    const samples = range(1, 200).map((i) => backoffDelay(((i - 1) % 8) + 1, policy, random));
    samples.forEach((delay, i) => {
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThan(Math.min(5000, 250 * 2 ** (i % 8)));
    });
    expect(new Set(samples).size).toBeGreaterThan(100);
  });

  it("waits growing, jittered delays between attempts, resets after a success and honours retry_after_ms", async () => {
    const randoms = [0.5, 0.25, 0.9, 0.999, 0.1, 0.7, 0.6, 0.3];
    const now = 1_700_000_000_000;
    const h = await harness({
      backoff: { baseMs: 100, capMs: 1000 },
      random: () => randoms.shift()!,
      now: () => now,
    });
    // The first transaction fails five times; the second hits a rate limit, then a timeout.
    const script = ["timeout", "timeout", "timeout", "timeout", "timeout", "ok", "429", "timeout", "ok"];
    h.sender.behaviour = () => {
      const outcome = script.shift();
      if (outcome === "timeout") throw new Error("timeout");
      if (outcome === "429") throw httpError(429, "M_LIMIT_EXCEEDED", { retryAfterMs: 700 });
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, range(1, 51).map(pdu));
    h.delivery.start();
    for (let i = 1; i <= 5; i++) {
      await h.timer.requested(i);
      expect(h.delivery.nextRetryAt(DEST)).toBe(now + h.timer.delays[i - 1]!);
      h.timer.fireAll();
    }
    await h.timer.requested(6);
    h.timer.fireAll();
    await h.timer.requested(7);
    h.timer.fireAll();
    await eventually(idle(h));

    expect(h.timer.delays).toEqual([
      Math.floor(0.5 * 100),
      Math.floor(0.25 * 200),
      Math.floor(0.9 * 400),
      Math.floor(0.999 * 800),
      Math.floor(0.1 * 1000),
      700, // max(0.7 * 100, retry_after_ms)
      Math.floor(0.6 * 200),
    ]);
    expect(h.sender.calls).toHaveLength(9);
    expect(script).toEqual([]);
  });
});

describe("OutboundDelivery restart and crashes", () => {
  it("resumes the backlog after a restart, reusing the persisted txn ID", async () => {
    const before = await harness();
    before.sender.behaviour = () => {
      throw new Error("unreachable");
    };
    await before.queue.enqueue(DEST, range(1, 120).map(pdu));
    await before.queue.enqueue("other.example", [edu(1)]);
    before.delivery.start();
    await before.timer.requested(1);
    await eventually(() => before.errors.length === 2);
    const first = before.sender.callsTo(DEST)[0]!;
    await before.delivery.stop();
    expect(before.timer.pendingCount).toBe(0);

    const store = await temp.reopen();
    const after = await harness({}, await OutboundQueue.open(store));
    expect(after.delivery.depth(DEST)).toBe(120);
    after.delivery.start();
    await eventually(() => idle(after)() && idle(after, "other.example")());

    const calls = after.sender.callsTo(DEST);
    expect(calls[0]!.txnId).toBe(first.txnId);
    expect(calls[0]!.pdus).toEqual(first.pdus);
    expect(delivered(calls).flat()).toEqual(range(1, 120));
    expect(after.sender.callsTo("other.example")).toHaveLength(1);
  });

  it("redelivers with the same txn ID after a crash between the send and the acknowledgement", async () => {
    const before = await harness();
    const processed: string[] = [];
    before.sender.behaviour = (call) => {
      processed.push(...call.pdus.map((p) => (p as { event_id: string }).event_id));
      return { pdus: {} };
    };
    // The receiver processes the transaction, but the answer never reaches the crashed sender.
    const crashing = new OutboundDelivery(before.queue, {
      send: async (...args) => {
        await before.sender.send(...args);
        return new Promise(() => {});
      },
    });
    await before.queue.enqueue(DEST, range(1, 70).map(pdu));
    crashing.start();
    await eventually(() => processed.length === 50);
    const lost = before.sender.calls[0]!;
    expect(await temp.store.get(`qt${SEP}${DEST}`)).toContain(lost.txnId);

    const store = await temp.reopen();
    const after = await harness({ send: before.sender.send }, await OutboundQueue.open(store));
    after.delivery.start();
    await eventually(idle(after));

    const [, resent, next] = before.sender.calls;
    expect(resent!.txnId).toBe(lost.txnId);
    expect(resent!.pdus).toEqual(lost.pdus);
    expect(numbers(next!.pdus)).toEqual(range(51, 70));
    // At least once on the wire, once at the receiver.
    expect(processed).toEqual(range(1, 70).map((n) => `$e${n}`));
  });

  it("resends a transaction found persisted in the store, before anything newer", async () => {
    const key = (seq: number) => `q${SEP}${DEST}${SEP}${seq.toString(16).padStart(16, "0")}`;
    await temp.store.commit([
      ...[4, 5, 6].map((n) => ({ type: "put" as const, key: key(n), value: JSON.stringify(pdu(n)) })),
      { type: "put", key: `qn${SEP}${DEST}`, value: "7" },
      { type: "put", key: `qt${SEP}${DEST}`, value: JSON.stringify({ txnId: "crashed-txn", seqs: [4, 5] }) },
    ]);
    const h = await harness();
    h.delivery.start();
    await eventually(idle(h));
    expect(h.sender.calls.map((c) => [c.txnId, numbers(c.pdus)])).toEqual([
      ["crashed-txn", [4, 5]],
      [expect.any(String), [6]],
    ]);
    expect(h.sender.calls[1]!.txnId).not.toBe("crashed-txn");
  });

  it("stop() aborts an in-flight send and keeps its transaction for the next start", async () => {
    const h = await harness();
    let aborted = false;
    h.sender.behaviour = (_call, signal) =>
      new Promise((_resolve, reject) => {
        signal.addEventListener("abort", () => {
          aborted = true;
          reject(new Error("aborted"));
        });
      });
    await h.queue.enqueue(DEST, [pdu(1), pdu(2)]);
    h.delivery.start();
    await eventually(() => h.delivery.inFlight(DEST)?.sending === true);
    const txnId = h.delivery.inFlight(DEST)!.txnId;

    await h.delivery.stop();
    expect(aborted).toBe(true);
    expect(h.errors).toEqual([]);
    expect(h.delivery.depth(DEST)).toBe(2);
    expect(h.queue.inFlightTxnId(DEST)).toBe(txnId);

    const again = await harness({}, h.queue);
    again.delivery.start();
    await eventually(idle(again));
    expect(again.sender.calls.map((c) => c.txnId)).toEqual([txnId]);
  });

  it("retryNow() ends a backoff wait and tries the same transaction again", async () => {
    const h = await harness();
    let down = true;
    h.sender.behaviour = () => {
      if (down) throw new Error("down");
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await h.timer.requested(1);
    down = false;
    h.delivery.retryNow(DEST);
    await eventually(idle(h));
    expect(h.timer.pendingCount).toBe(0);
    expect(h.sender.calls.map((c) => c.txnId)).toEqual([h.sender.calls[0]!.txnId, h.sender.calls[0]!.txnId]);
  });

  it("a request from the destination ends a backoff wait begun at least a second after the failure", async () => {
    const clock = new Clock();
    const h = await harness({ now: clock.now });
    let down = true;
    h.sender.behaviour = () => {
      if (down) throw new Error("down");
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await h.timer.requested(1);
    down = false;
    // Just after the failure, and from another server: the wait goes on.
    clock.t += PEER_WAKE_MIN_WAIT_MS - 1;
    h.delivery.peerReachedUs(DEST);
    h.delivery.peerReachedUs("c.example");
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(h.sender.calls).toHaveLength(1);
    expect(h.timer.pendingCount).toBe(1);
    clock.t += 1;
    h.delivery.peerReachedUs(DEST);
    await eventually(idle(h));
    expect(h.timer.pendingCount).toBe(0);
    expect(h.sender.calls).toHaveLength(2);
  });

  it("stop() ends a backoff wait at once", async () => {
    const h = await harness();
    h.sender.behaviour = () => {
      throw new Error("down");
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await h.timer.requested(1);
    expect(h.timer.pendingCount).toBe(1);
    await h.delivery.stop();
    expect(h.timer.pendingCount).toBe(0);
    expect(h.sender.calls).toHaveLength(1);
    expect(h.delivery.depth(DEST)).toBe(1);
  });

  it("stop() waits for a send that still succeeds and acknowledges it", async () => {
    const h = await harness();
    let release: () => void = () => {};
    h.sender.behaviour = () => new Promise((resolve) => (release = () => resolve({ pdus: {} })));
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await eventually(() => h.delivery.inFlight(DEST)?.sending === true);

    let stopped = false;
    const stopping = h.delivery.stop().then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 10));
    expect(stopped).toBe(false);
    release();
    await stopping;
    expect(h.delivery.depth(DEST)).toBe(0);
    expect(h.queue.inFlightTxnId(DEST)).toBeUndefined();
    expect(await temp.keys(`q${SEP}`)).toEqual([]);
  });
});

describe("OutboundDelivery dead letters", () => {
  const HOUR = 60 * 60 * 1000;

  /** Refuses every transaction holding item 1 with `error`; accepts the others. */
  function refuseFirst(h: Harness, error: () => Error): void {
    h.sender.behaviour = (call) => {
      if (numbers(call.pdus).includes(1)) throw error();
      return { pdus: {} };
    };
  }

  async function fireUntil(h: Harness, done: () => boolean): Promise<void> {
    while (!done()) {
      h.timer.fireAll();
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  it("dead-letters a transaction after 3 consecutive permanent refusals and delivers the next items", async () => {
    const clock = new Clock();
    const h = await harness({ refusalMinSpanMs: 0, now: clock.now });
    refuseFirst(h, () => new RemoteError(400, "M_BAD_JSON", "pdus must be an array", DEST));
    await h.queue.enqueue(DEST, range(1, 60).map(pdu));
    h.delivery.start();
    await fireUntil(h, idle(h));

    const calls = h.sender.callsTo(DEST);
    expect(calls.map((c) => c.txnId)).toEqual([
      calls[0]!.txnId,
      calls[0]!.txnId,
      calls[0]!.txnId,
      calls[3]!.txnId,
    ]);
    expect(numbers(calls[3]!.pdus)).toEqual(range(51, 60));
    expect(h.queue.deadLetterCount(DEST)).toBe(50);
    const letters = await h.queue.deadLetters(DEST, 100);
    expect(letters.map((l) => l.item)).toEqual(range(1, 50).map(pdu));
    expect(letters[0]!.reason).toEqual({
      reason: "refused",
      time: clock.t,
      attempts: 3,
      txnId: calls[0]!.txnId,
      status: 400,
      errcode: "M_BAD_JSON",
      error: "pdus must be an array",
    });
    expect(h.errors.map((e) => [e.info.attempt, e.info.permanent])).toEqual([
      [1, true],
      [2, true],
      [3, true],
    ]);
    expect(await temp.keys(`q${SEP}${DEST}`)).toEqual([]);
  });

  it.each<[string, boolean, () => Error]>([
    ["400 M_BAD_JSON", true, () => httpError(400, "M_BAD_JSON")],
    ["401 M_UNAUTHORIZED", true, () => httpError(401, "M_UNAUTHORIZED")],
    ["403 M_FORBIDDEN", true, () => httpError(403, "M_FORBIDDEN")],
    ["404 M_UNRECOGNIZED", true, () => httpError(404, "M_UNRECOGNIZED")],
    ["408", false, () => httpError(408, "M_UNKNOWN")],
    ["429 M_LIMIT_EXCEEDED", false, () => httpError(429, "M_LIMIT_EXCEEDED")],
    ["500", false, () => httpError(500, "M_UNKNOWN")],
    ["a network error", false, () => new FederationNetworkError(DEST, "request failed: ECONNREFUSED")],
    ["an aborted request", false, () => new RequestAbortedError(DEST)],
  ])("after 3 answers of %s, dead-letters: %s", async (_name, dead, error) => {
    const h = await harness({ refusalMinSpanMs: 0, limits: { maxPdus: 1 } });
    refuseFirst(h, error);
    await h.queue.enqueue(DEST, [pdu(1), pdu(2)]);
    h.delivery.start();
    await fireUntil(h, () => h.sender.calls.length >= 4);
    const [first, , , fourth] = h.sender.calls;
    expect(h.queue.deadLetterCount(DEST)).toBe(dead ? 1 : 0);
    expect(numbers(fourth!.pdus)).toEqual(dead ? [2] : [1]);
    expect(fourth!.txnId === first!.txnId).toBe(!dead);
  });

  it("counts only consecutive refusals: a transient failure in between starts again", async () => {
    const h = await harness({ refusalMinSpanMs: 0 });
    const script = [400, 400, 503, 400, 400, 400];
    h.sender.behaviour = () => {
      const status = script.shift();
      if (status !== undefined) throw httpError(status, status === 503 ? "M_UNKNOWN" : "M_BAD_JSON");
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await fireUntil(h, () => h.queue.deadLetterCount(DEST) === 1);
    expect(h.sender.calls).toHaveLength(6);
    expect(script).toEqual([]);
  });

  it("waits for the refusals to span refusalMinSpanMs, so a refusal that heals by itself does not dead-letter", async () => {
    const clock = new Clock();
    const h = await harness({ refusalMinSpanMs: 60_000, now: clock.now });
    refuseFirst(h, () => httpError(401, "M_UNAUTHORIZED"));
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    for (let i = 1; i <= 5; i++) {
      await h.timer.requested(i);
      clock.t += 10_000;
      h.timer.fireAll();
    }
    await h.timer.requested(6);
    expect(h.sender.calls).toHaveLength(6);
    expect(h.queue.deadLetterCount(DEST)).toBe(0);
    // The 7th refusal comes 60 s after the first.
    clock.t += 10_000;
    h.timer.fireAll();
    await eventually(() => h.queue.deadLetterCount(DEST) === 1);
    expect(h.sender.calls).toHaveLength(7);
  });

  it("dead-letters a transaction still failing after maxAgeMs as expired, then sends newer items", async () => {
    const clock = new Clock();
    const queue = await OutboundQueue.open(temp.store, { now: clock.now, maxAgeMs: 24 * HOUR });
    const h = await harness({ now: clock.now }, queue);
    let down = true;
    h.sender.behaviour = () => {
      if (down) throw httpError(503, "M_UNKNOWN");
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, [pdu(1), pdu(2)]);
    h.delivery.start();
    await h.timer.requested(1);
    clock.t += 24 * HOUR;
    await h.queue.enqueue(DEST, [pdu(3)]);
    down = false;
    h.timer.fireAll();
    await eventually(idle(h));
    expect(h.sender.calls.map((c) => numbers(c.pdus))).toEqual([[1, 2], [3]]);
    expect(
      (await h.queue.deadLetters(DEST)).map((l) => [l.item.id, l.reason.reason, l.reason.attempts]),
    ).toEqual([
      ["$e1", "expired", 1],
      ["$e2", "expired", 1],
    ]);
  });

  it("trims a full queue while waiting to retry, without sending", async () => {
    const queue = await OutboundQueue.open(temp.store, { maxDepth: 20 });
    const h = await harness({}, queue);
    h.sender.behaviour = () => {
      throw httpError(503, "M_UNKNOWN");
    };
    await h.queue.enqueue(DEST, range(1, 10).map(pdu));
    h.delivery.start();
    await h.timer.requested(1);
    for (let n = 11; n <= 40; n++) {
      await h.queue.enqueue(DEST, [pdu(n)]);
      h.delivery.wake(DEST);
    }
    await eventually(() => h.queue.depth(DEST) <= 20);
    await h.delivery.stop();
    expect(h.sender.calls).toHaveLength(1);
    expect(h.queue.depth(DEST)).toBe(20);
    const letters = await h.queue.deadLetters(DEST, 100);
    expect(letters.map((l) => (l.item.body as { n: number }).n)).toEqual(range(1, 20));
    expect(new Set(letters.map((l) => l.reason.reason))).toEqual(new Set(["queue full"]));
  });

  it("trims again what was queued while a trim was finishing", async () => {
    const store = new HoldingStore(temp.store);
    const h = await harness({}, await OutboundQueue.open(store, { maxDepth: 20 }));
    h.sender.behaviour = () => {
      throw httpError(503, "M_UNKNOWN");
    };
    await h.queue.enqueue(DEST, range(1, 10).map(pdu));
    h.delivery.start();
    await h.timer.requested(1);
    await h.queue.enqueue(DEST, range(11, 25).map(pdu));
    // Hold each of the trim's reads; the one that finds the queue back at its depth is its last.
    let hold = store.holdNextRange();
    h.delivery.wake(DEST);
    for (;;) {
      await hold.reached;
      if (h.queue.depth(DEST) <= 20) break;
      const held = hold;
      hold = store.holdNextRange();
      held.release();
    }
    await h.queue.enqueue(DEST, range(26, 35).map(pdu));
    h.delivery.wake(DEST);
    hold.release();
    await eventually(() => h.queue.depth(DEST) <= 20);
    await h.delivery.stop();
    expect(h.sender.calls).toHaveLength(1);
    expect(h.queue.depth(DEST)).toBe(20);
    const letters = await h.queue.deadLetters(DEST, 100);
    expect(letters.map((l) => (l.item.body as { n: number }).n)).toEqual(range(1, 15));
  });

  it("delivers dead letters put back with retryDeadLetters, after what was queued meanwhile", async () => {
    const h = await harness({ refusalMinSpanMs: 0 });
    let refusing = true;
    h.sender.behaviour = () => {
      if (refusing) throw httpError(403, "M_FORBIDDEN");
      return { pdus: {} };
    };
    await h.queue.enqueue(DEST, [pdu(1), pdu(2)]);
    h.delivery.start();
    await fireUntil(h, () => h.queue.deadLetterCount(DEST) === 2);
    refusing = false;
    await h.queue.enqueue(DEST, [pdu(3)]);
    h.delivery.wake(DEST);
    await eventually(idle(h));
    expect(await h.delivery.retryDeadLetters(DEST)).toBe(2);
    await eventually(idle(h));
    expect(h.sender.calls.slice(3).map((c) => numbers(c.pdus))).toEqual([[3], [1, 2]]);
    expect(h.queue.deadLetterCount(DEST)).toBe(0);
  });

  it("resumes after a restart with the dead letters and the rest of the queue intact", async () => {
    const accepted: number[] = [];
    const before = await harness({ refusalMinSpanMs: 0 });
    let refusing = true;
    const behaviour = (call: { pdus: unknown[] }) => {
      if (refusing && numbers(call.pdus).includes(1)) throw httpError(400, "M_BAD_JSON");
      accepted.push(...numbers(call.pdus));
      return { pdus: {} };
    };
    before.sender.behaviour = behaviour;
    await before.queue.enqueue(DEST, range(1, 70).map(pdu));
    before.delivery.start();
    await fireUntil(before, () => before.queue.deadLetterCount(DEST) === 50);
    await before.delivery.stop();

    const after = await harness({}, await OutboundQueue.open(await temp.reopen()));
    after.sender.behaviour = behaviour;
    refusing = false;
    expect(after.queue.deadLetterCount(DEST)).toBe(50);
    after.delivery.start();
    await eventually(idle(after));
    expect(await after.delivery.retryDeadLetters(DEST)).toBe(50);
    await eventually(idle(after));
    // Each item reached the receiver exactly once: 51..70 first, then the dead letters put back.
    expect(accepted).toEqual([...range(51, 70), ...range(1, 50)]);
    expect(after.queue.deadLetterCount(DEST)).toBe(0);
    expect(await temp.keys(`q${SEP}`)).toEqual([]);
  });

  it("refuses bad dead-letter options", async () => {
    const queue = await OutboundQueue.open(temp.store);
    const send = new RecordingSender().send;
    expect(() => new OutboundDelivery(queue, { send, deadLetterAfterRefusals: 0 })).toThrow(QueueError);
    expect(() => new OutboundDelivery(queue, { send, refusalMinSpanMs: -1 })).toThrow(/refusalMinSpanMs/);
    expect(() => new OutboundDelivery(queue, { send, maxRetryAfterMs: 1.5 })).toThrow(/maxRetryAfterMs/);
  });
});

describe("OutboundDelivery and a peer's 429 (LM-04 §Rate Limiting)", () => {
  it.each<[string, Partial<OutboundDeliveryOptions>, number, number]>([
    ["below the backoff cap", {}, 700, 700],
    ["above the backoff cap", {}, 5000, 5000],
    ["above maxRetryAfterMs (1 h by default)", {}, 2 * 60 * 60 * 1000, 60 * 60 * 1000],
    ["above a configured maxRetryAfterMs", { maxRetryAfterMs: 3000 }, 5000, 3000],
  ])("waits retry_after_ms %s", async (_name, options, retryAfterMs, expected) => {
    const h = await harness({ backoff: { baseMs: 100, capMs: 1000 }, random: () => 0.5, ...options });
    let limited = true;
    h.sender.behaviour = () => {
      if (!limited) return { pdus: {} };
      limited = false;
      throw httpError(429, "M_LIMIT_EXCEEDED", { retryAfterMs });
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await h.timer.requested(1);
    expect(h.timer.delays).toEqual([expected]);
    expect(h.errors[0]!.info).toMatchObject({ permanent: false, retryInMs: expected });
    h.timer.fireAll();
    await eventually(idle(h));
  });

  it("waits a Retry-After header read by the federation client", async () => {
    const h = await harness({ backoff: { baseMs: 100, capMs: 1000 } });
    let limited = true;
    h.sender.behaviour = () => {
      if (!limited) return { pdus: {} };
      limited = false;
      const err = new RemoteError(429, "M_LIMIT_EXCEEDED", "", DEST, { errcode: "M_LIMIT_EXCEEDED" });
      return Promise.reject(Object.defineProperty(err, "retryAfterMs", { value: 30_000 }));
    };
    await h.queue.enqueue(DEST, [pdu(1)]);
    h.delivery.start();
    await h.timer.requested(1);
    expect(h.timer.delays).toEqual([30_000]);
  });
});
