import {
  OutboundQueue,
  QueueError,
  type DeadLetterReason,
  type QueueItem,
} from "../../../src/federation/queue";
import { Clock, CrashingStore, HoldingStore, TempStore, edu, numbers, pdu } from "./helpers";

const DEST = "b.example";
const SEP = "\u0000";

let temp: TempStore;

beforeEach(async () => {
  temp = await TempStore.create();
});

afterEach(async () => {
  await temp.dispose();
});

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe("OutboundQueue enqueue", () => {
  it("puts enqueueOps in the caller's batch: nothing before the commit, both after", async () => {
    const queue = await OutboundQueue.open(temp.store);
    const ops = [
      ...queue.enqueueOps(DEST, [pdu(1), pdu(2)]),
      { type: "put" as const, key: "e\u0000!room:a.example\u00000001", value: "event" },
    ];
    expect(await temp.keys(`q${SEP}`)).toEqual([]);
    expect(await queue.nextTransaction(DEST)).toBeUndefined();

    await temp.store.commit(ops);

    expect(await temp.store.get("e\u0000!room:a.example\u00000001")).toBe("event");
    const txn = await queue.nextTransaction(DEST);
    expect(numbers(txn!.pdus.map((i) => i.body))).toEqual([1, 2]);
  });

  it("keeps sequence numbers unique and increasing across enqueueOps calls made before any commit", async () => {
    const queue = await OutboundQueue.open(temp.store);
    const batches = [
      queue.enqueueOps(DEST, [pdu(1), pdu(2)]),
      queue.enqueueOps(DEST, [pdu(3)]),
      queue.enqueueOps(DEST, [edu(4), pdu(5)]),
    ];
    await Promise.all(batches.map((ops) => temp.store.commit(ops)));

    const keys = await temp.keys(`q${SEP}${DEST}${SEP}`);
    expect(keys).toHaveLength(5);
    expect(new Set(keys).size).toBe(5);
    const seqs = keys.map((k) => parseInt(k.slice(-16), 16));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    const txn = await queue.nextTransaction(DEST);
    expect(numbers(txn!.pdus.map((i) => i.body))).toEqual([1, 2, 3, 5]);
    expect(numbers(txn!.edus.map((i) => i.body))).toEqual([4]);
  });

  it("continues the sequence after a reopen, even when a caller committed two batches out of order", async () => {
    let queue = await OutboundQueue.open(temp.store);
    const first = queue.enqueueOps(DEST, [pdu(1)]);
    const second = queue.enqueueOps(DEST, [pdu(2), pdu(3)]);
    await temp.store.commit(second);
    // The stale counter (next = 2) lands last.
    await temp.store.commit(first);

    queue = await OutboundQueue.open(await temp.reopen());
    await queue.enqueue(DEST, [pdu(4)]);

    const keys = await temp.keys(`q${SEP}${DEST}${SEP}`);
    expect(keys).toHaveLength(4);
    const txn = await queue.nextTransaction(DEST);
    expect(numbers(txn!.pdus.map((i) => i.body))).toEqual([1, 2, 3, 4]);
  });

  it("refuses destinations and items that would break the key layout or the transaction", async () => {
    const queue = await OutboundQueue.open(temp.store);
    expect(() => queue.enqueueOps("", [pdu(1)])).toThrow(QueueError);
    expect(() => queue.enqueueOps(`b${SEP}x`, [pdu(1)])).toThrow(QueueError);
    expect(() =>
      queue.enqueueOps(DEST, [{ kind: "state", id: "x", body: {} } as unknown as QueueItem]),
    ).toThrow(/kind/);
    expect(() => queue.enqueueOps(DEST, [pdu(1), { kind: "pdu", id: "", body: {} }])).toThrow(/id/);
    expect(queue.depth(DEST)).toBe(0);
    expect(queue.enqueueOps(DEST, [])).toEqual([]);
  });
});

describe("OutboundQueue transactions", () => {
  it("takes the oldest items up to 50 PDUs and 100 EDUs, stopping at the first item that does not fit", async () => {
    const queue = await OutboundQueue.open(temp.store);
    // 40 PDUs, 100 EDUs, then 20 PDUs: the 11th PDU after the EDUs ends the first transaction.
    const items = [...range(1, 40).map(pdu), ...range(41, 140).map(edu), ...range(141, 160).map(pdu)];
    await queue.enqueue(DEST, items);
    expect(queue.depth(DEST)).toBe(160);

    const first = await queue.nextTransaction(DEST);
    expect(first!.pdus).toHaveLength(50);
    expect(first!.edus).toHaveLength(100);
    expect(numbers(first!.pdus.map((i) => i.body))).toEqual([...range(1, 40), ...range(141, 150)]);
    expect(first!.seqs).toEqual(range(1, 150));

    // Until it is completed, the same transaction comes back.
    const again = await queue.nextTransaction(DEST);
    expect(again!.txnId).toBe(first!.txnId);
    expect(again!.seqs).toEqual(first!.seqs);

    await queue.complete(first!);
    expect(queue.depth(DEST)).toBe(10);
    const second = await queue.nextTransaction(DEST);
    expect(second!.txnId).not.toBe(first!.txnId);
    expect(numbers(second!.pdus.map((i) => i.body))).toEqual(range(151, 160));
    await queue.complete(second!);
    expect(await queue.nextTransaction(DEST)).toBeUndefined();
    expect(queue.depth(DEST)).toBe(0);
    expect(await temp.keys("q")).toEqual([`qn${SEP}${DEST}`]);
  });

  it("ends a transaction at the 101st EDU even when a later PDU would fit", async () => {
    const queue = await OutboundQueue.open(temp.store);
    await queue.enqueue(DEST, [...range(1, 10).map(pdu), ...range(11, 111).map(edu), pdu(112)]);
    const txn = await queue.nextTransaction(DEST);
    expect(numbers(txn!.pdus.map((i) => i.body))).toEqual(range(1, 10));
    expect(numbers(txn!.edus.map((i) => i.body))).toEqual(range(11, 110));
    await queue.complete(txn!);
    const rest = await queue.nextTransaction(DEST);
    expect(numbers([...rest!.edus, ...rest!.pdus].map((i) => i.body))).toEqual([111, 112]);
  });

  it("persists the in-flight transaction: after a reopen it has the same ID and exactly the same items", async () => {
    let queue = await OutboundQueue.open(temp.store);
    const early = queue.enqueueOps(DEST, [pdu(1)]);
    const late = queue.enqueueOps(DEST, [pdu(2)]);
    await queue.enqueue(DEST, [pdu(3)]);
    await temp.store.commit(early);
    const txn = await queue.nextTransaction(DEST);
    expect(numbers(txn!.pdus.map((i) => i.body))).toEqual([1, 3]);

    // An item of the seq range that committed after the transaction was chosen stays out of it.
    await temp.store.commit(late);
    await queue.enqueue(DEST, [pdu(4)]);
    queue = await OutboundQueue.open(await temp.reopen());

    expect(queue.inFlightTxnId(DEST)).toBe(txn!.txnId);
    const resumed = await queue.nextTransaction(DEST);
    expect(resumed!.txnId).toBe(txn!.txnId);
    expect(resumed!.pdus).toEqual(txn!.pdus);
    await queue.complete(resumed!);
    const next = await queue.nextTransaction(DEST);
    expect(numbers(next!.pdus.map((i) => i.body))).toEqual([2, 4]);
  });

  it("reads the documented key layout", async () => {
    const item = (n: number) => JSON.stringify(pdu(n));
    const key = (seq: number) => `q${SEP}${DEST}${SEP}${seq.toString(16).padStart(16, "0")}`;
    await temp.store.commit([
      { type: "put", key: key(7), value: item(7) },
      { type: "put", key: key(8), value: item(8) },
      { type: "put", key: key(9), value: item(9) },
      { type: "put", key: `qn${SEP}${DEST}`, value: "10" },
      { type: "put", key: `qt${SEP}${DEST}`, value: JSON.stringify({ txnId: "txn-7", seqs: [7, 8] }) },
    ]);
    const queue = await OutboundQueue.open(temp.store);
    expect(queue.destinations()).toEqual([DEST]);
    expect(queue.depth(DEST)).toBe(3);
    const txn = await queue.nextTransaction(DEST);
    expect(txn!.txnId).toBe("txn-7");
    expect(numbers(txn!.pdus.map((i) => i.body))).toEqual([7, 8]);

    await queue.enqueue(DEST, [pdu(10)]);
    expect(JSON.parse((await temp.store.get(key(10)))!)).toEqual({ ...pdu(10), ts: expect.any(Number) });
  });

  it("refuses to complete a transaction that is not the one in flight", async () => {
    const queue = await OutboundQueue.open(temp.store);
    await queue.enqueue(DEST, [pdu(1)]);
    const txn = await queue.nextTransaction(DEST);
    await expect(queue.complete({ ...txn!, txnId: "other" })).rejects.toThrow(QueueError);
    expect(queue.depth(DEST)).toBe(1);
  });
});

describe("OutboundQueue dead letters", () => {
  const HOUR = 60 * 60 * 1000;
  const refused = (time: number, txnId: string): DeadLetterReason => ({
    reason: "refused",
    time,
    attempts: 3,
    txnId,
    status: 400,
    errcode: "M_BAD_JSON",
    error: "bad",
  });

  /** Every item number stored for DEST, queued or dead. */
  async function stored(): Promise<{ queued: number[]; dead: number[] }> {
    const read = async (prefix: string) => {
      const found: number[] = [];
      for await (const [, value] of temp.store.range({ gte: prefix, lt: prefix + "\uffff" })) {
        found.push((JSON.parse(value) as { body: { n: number } }).body.n);
      }
      return found;
    };
    return { queued: await read(`q${SEP}${DEST}${SEP}`), dead: await read(`qd${SEP}${DEST}${SEP}`) };
  }

  it("moves a refused transaction to the dead letters in one batch and goes on with the next items", async () => {
    const clock = new Clock();
    const moved: [string, number[], DeadLetterReason][] = [];
    const queue = await OutboundQueue.open(temp.store, {
      now: clock.now,
      onDeadLetter: (destination, items, reason) =>
        moved.push([destination, numbers(items.map((i) => i.body)), reason]),
    });
    await queue.enqueue(DEST, range(1, 60).map(pdu));
    await queue.enqueue("c.example", [pdu(1)]);
    const txn = await queue.nextTransaction(DEST);
    const commits = jest.spyOn(temp.store, "commit");

    clock.t += 1000;
    const reason = refused(clock.t, txn!.txnId);
    expect(await queue.deadLetter(txn!, reason)).toEqual({ moved: 50, dropped: 0 });

    expect(commits).toHaveBeenCalledTimes(1);
    expect(await stored()).toEqual({ queued: range(51, 60), dead: range(1, 50) });
    expect(await temp.store.get(`qt${SEP}${DEST}`)).toBeUndefined();
    expect(queue.inFlightTxnId(DEST)).toBeUndefined();
    expect(queue.deadLetterCount(DEST)).toBe(50);
    expect(queue.deadLetterCount("c.example")).toBe(0);
    expect(queue.depth(DEST)).toBe(10);
    expect(moved).toEqual([[DEST, range(1, 50), reason]]);

    const letters = await queue.deadLetters(DEST, 3);
    expect(letters).toEqual(
      [1, 2, 3].map((n) => ({ destination: DEST, seq: n, item: pdu(n), enqueuedTs: clock.t - 1000, reason })),
    );
    expect(await queue.deadLetters(undefined, 1000)).toHaveLength(50);

    const next = await queue.nextTransaction(DEST);
    expect(numbers(next!.pdus.map((i) => i.body))).toEqual(range(51, 60));
  });

  it("refuses to dead-letter a transaction that is not in flight, changing nothing", async () => {
    const queue = await OutboundQueue.open(temp.store);
    await queue.enqueue(DEST, [pdu(1)]);
    const txn = await queue.nextTransaction(DEST);
    await expect(queue.deadLetter({ ...txn!, txnId: "other" }, refused(0, "other"))).rejects.toThrow(
      QueueError,
    );
    expect(await stored()).toEqual({ queued: [1], dead: [] });
    expect(queue.inFlightTxnId(DEST)).toBe(txn!.txnId);
  });

  it("expires items older than maxAgeMs, the in-flight transaction as a whole", async () => {
    const clock = new Clock();
    const queue = await OutboundQueue.open(temp.store, { now: clock.now, maxAgeMs: 24 * HOUR });
    await queue.enqueue(DEST, range(1, 3).map(pdu));
    clock.t += HOUR;
    await queue.enqueue(DEST, range(4, 6).map(pdu));
    const txn = await queue.nextTransaction(DEST, { maxPdus: 2, maxEdus: 1 });
    clock.t += 23 * HOUR - 1;
    expect(queue.isExpired(txn!)).toBe(false);
    expect(await queue.expire(DEST, 7)).toEqual({ moved: 0, dropped: 0 });

    clock.t += 1;
    expect(queue.isExpired(txn!)).toBe(true);
    expect(await queue.expire(DEST, 7)).toEqual({ moved: 3, dropped: 0 });
    expect(await stored()).toEqual({ queued: [4, 5, 6], dead: [1, 2, 3] });
    const reasons = (await queue.deadLetters(DEST)).map((l) => l.reason);
    expect(reasons).toEqual([
      { reason: "expired", time: clock.t, attempts: 7, txnId: txn!.txnId },
      { reason: "expired", time: clock.t, attempts: 7, txnId: txn!.txnId },
      { reason: "expired", time: clock.t, attempts: 0 },
    ]);
    expect(queue.inFlightTxnId(DEST)).toBeUndefined();
  });

  it("ages items stored without an enqueue time from when the queue was opened", async () => {
    const key = (seq: number) => `q${SEP}${DEST}${SEP}${seq.toString(16).padStart(16, "0")}`;
    await temp.store.commit([
      { type: "put", key: key(1), value: JSON.stringify(pdu(1)) },
      { type: "put", key: `qn${SEP}${DEST}`, value: "2" },
    ]);
    const clock = new Clock();
    const queue = await OutboundQueue.open(temp.store, { now: clock.now, maxAgeMs: HOUR });
    const txn = await queue.nextTransaction(DEST);
    expect(txn!.enqueuedTs).toBe(clock.t);
    clock.t += HOUR;
    expect(await queue.expire(DEST)).toEqual({ moved: 1, dropped: 0 });
    expect((await queue.deadLetters(DEST))[0]).toMatchObject({ item: pdu(1), enqueuedTs: undefined });
  });

  it("dead-letters the oldest items beyond maxDepth as queue full, accepting every enqueue", async () => {
    const queue = await OutboundQueue.open(temp.store, { maxDepth: 10 });
    await queue.enqueue(DEST, range(1, 5).map(pdu));
    await queue.nextTransaction(DEST);
    await queue.enqueue(DEST, range(6, 25).map(pdu));
    expect(queue.depth(DEST)).toBe(25);
    expect(queue.overDepth(DEST)).toBe(true);

    expect(await queue.expire(DEST)).toEqual({ moved: 15, dropped: 0 });
    expect(await stored()).toEqual({ queued: range(16, 25), dead: range(1, 15) });
    expect(queue.depth(DEST)).toBe(10);
    expect(queue.overDepth(DEST)).toBe(false);
    expect(new Set((await queue.deadLetters(DEST)).map((l) => l.reason.reason))).toEqual(
      new Set(["queue full"]),
    );
    expect(await queue.expire(DEST)).toEqual({ moved: 0, dropped: 0 });
  });

  it("keeps at most maxDeadLetters per destination, deleting the oldest for good", async () => {
    const queue = await OutboundQueue.open(temp.store, { maxDeadLetters: 5 });
    await queue.enqueue(DEST, range(1, 4).map(pdu));
    const first = await queue.nextTransaction(DEST);
    expect(await queue.deadLetter(first!, refused(0, first!.txnId))).toEqual({ moved: 4, dropped: 0 });
    await queue.enqueue(DEST, range(5, 7).map(pdu));
    const second = await queue.nextTransaction(DEST);
    expect(await queue.deadLetter(second!, refused(0, second!.txnId))).toEqual({ moved: 3, dropped: 2 });
    expect((await stored()).dead).toEqual([3, 4, 5, 6, 7]);
    await queue.enqueue(DEST, range(8, 15).map(pdu));
    const third = await queue.nextTransaction(DEST);
    expect(await queue.deadLetter(third!, refused(0, third!.txnId))).toEqual({ moved: 8, dropped: 8 });
    expect((await stored()).dead).toEqual([11, 12, 13, 14, 15]);
    expect(queue.deadLetterCount(DEST)).toBe(5);
  });

  it("puts dead letters back at the tail, in order, after items enqueued meanwhile", async () => {
    const queue = await OutboundQueue.open(temp.store);
    await queue.enqueue(DEST, range(1, 3).map(pdu));
    const txn = await queue.nextTransaction(DEST);
    await queue.deadLetter(txn!, refused(0, txn!.txnId));
    await queue.enqueue(DEST, [pdu(4)]);

    expect(await queue.retryDeadLetters(DEST)).toBe(3);
    expect(queue.deadLetterCount(DEST)).toBe(0);
    expect(await queue.deadLetters(DEST)).toEqual([]);
    const next = await queue.nextTransaction(DEST);
    expect(numbers(next!.pdus.map((i) => i.body))).toEqual([4, 1, 2, 3]);
    expect(next!.seqs).toEqual([4, 5, 6, 7]);
    expect(await queue.retryDeadLetters("unknown.example")).toBe(0);
  });

  it("keeps counts and positions across a reopen, even with a stale counter", async () => {
    let queue = await OutboundQueue.open(temp.store);
    const early = queue.enqueueOps(DEST, [pdu(1)]);
    const late = queue.enqueueOps(DEST, [pdu(2), pdu(3)]);
    await temp.store.commit(late);
    await temp.store.commit(early);
    const txn = await queue.nextTransaction(DEST);
    await queue.deadLetter(txn!, refused(0, txn!.txnId));
    // Every item is dead and the stored counter says 2.
    expect(await temp.store.get(`qn${SEP}${DEST}`)).toBe("2");

    queue = await OutboundQueue.open(await temp.reopen());
    expect(queue.deadLetterCount(DEST)).toBe(3);
    await queue.enqueue(DEST, [pdu(4)]);
    const next = await queue.nextTransaction(DEST);
    expect(next!.seqs).toEqual([4]);
    await queue.deadLetter(next!, refused(0, next!.txnId));
    expect((await stored()).dead).toEqual([1, 2, 3, 4]);
  });

  it("loses and duplicates nothing when the store dies in the middle of moving items", async () => {
    const crashing = new CrashingStore(temp.store);
    let queue = await OutboundQueue.open(crashing, { maxDepth: 600 });
    await queue.enqueue(DEST, range(1, 1200).map(pdu));
    let txn = await queue.nextTransaction(DEST);

    // A dead-lettering that does not land changes nothing.
    crashing.crashAfter(0);
    await expect(queue.deadLetter(txn!, refused(0, txn!.txnId))).rejects.toThrow("crashed");
    expect(await stored()).toEqual({ queued: range(1, 1200), dead: [] });
    expect(await temp.store.get(`qt${SEP}${DEST}`)).toContain(txn!.txnId);

    // After a restart, trimming 600 items takes three writes; the second does not land.
    const trimming = new CrashingStore(await temp.reopen());
    queue = await OutboundQueue.open(trimming, { maxDepth: 600 });
    trimming.crashAfter(1);
    await expect(queue.expire(DEST)).rejects.toThrow("crashed");
    let after = await stored();
    expect([...after.dead, ...after.queued]).toEqual(range(1, 1200));
    expect(after.dead.length).toBeGreaterThan(0);

    queue = await OutboundQueue.open(await temp.reopen(), { maxDepth: 600 });
    expect(queue.deadLetterCount(DEST)).toBe(after.dead.length);
    await queue.expire(DEST);
    after = await stored();
    expect(after).toEqual({ queued: range(601, 1200), dead: range(1, 600) });

    // Putting 600 back takes two writes; the second does not land.
    const retrying = new CrashingStore(temp.store);
    queue = await OutboundQueue.open(retrying, { maxDepth: 10_000 });
    retrying.crashAfter(1);
    await expect(queue.retryDeadLetters(DEST)).rejects.toThrow("crashed");
    after = await stored();
    expect([...after.queued].sort((a, b) => a - b)).toEqual(
      [...range(1, 500), ...range(601, 1200)].sort((a, b) => a - b),
    );
    expect(after.dead).toEqual(range(501, 600));

    queue = await OutboundQueue.open(await temp.reopen(), { maxDepth: 10_000 });
    expect(queue.deadLetterCount(DEST)).toBe(100);
    expect(await queue.retryDeadLetters(DEST)).toBe(100);
    const order: number[] = [];
    for (
      txn = await queue.nextTransaction(DEST);
      txn !== undefined;
      txn = await queue.nextTransaction(DEST)
    ) {
      order.push(...numbers(txn.pdus.map((i) => i.body)));
      await queue.complete(txn);
    }
    expect(order).toEqual([...range(601, 1200), ...range(1, 600)]);
  });

  it("refuses bad options and a bad listing limit", async () => {
    await expect(OutboundQueue.open(temp.store, { maxDepth: 0 })).rejects.toThrow(QueueError);
    await expect(OutboundQueue.open(temp.store, { maxAgeMs: 1.5 })).rejects.toThrow(/maxAgeMs/);
    await expect(OutboundQueue.open(temp.store, { maxDeadLetters: -1 })).rejects.toThrow(/maxDeadLetters/);
    const queue = await OutboundQueue.open(temp.store);
    await expect(queue.deadLetters(DEST, 0)).rejects.toThrow(QueueError);
    await expect(queue.deadLetters(`b${SEP}x`)).rejects.toThrow(QueueError);
  });
});

describe("OutboundQueue item cache", () => {
  const deliverAll = async (queue: OutboundQueue): Promise<number[]> => {
    const seen: number[] = [];
    for (;;) {
      const txn = await queue.nextTransaction(DEST);
      if (txn === undefined) return seen;
      seen.push(...numbers(txn.pdus.map((i) => i.body)));
      await queue.complete(txn);
    }
  };

  it("serves a destination that started empty from memory, in order, with what the store holds", async () => {
    const store = new HoldingStore(temp.store, { followCommits: true });
    const queue = await OutboundQueue.open(store);
    const opened = store.ranges;
    await queue.enqueue(DEST, [pdu(1), pdu(2)]);
    const later = queue.enqueueOps(DEST, [pdu(3)]);
    const earlier = queue.enqueueOps(DEST, [pdu(4)]);
    await store.commit(earlier);
    await store.commit(later);

    expect(await deliverAll(queue)).toEqual([1, 2, 3, 4]);
    expect(store.ranges).toBe(opened);
    expect(await temp.keys(`q${SEP}${DEST}${SEP}`)).toEqual([]);
  });

  it("never serves items whose batch has not landed", async () => {
    const store = new HoldingStore(temp.store, { followCommits: true });
    const queue = await OutboundQueue.open(store);
    const ops = queue.enqueueOps(DEST, [pdu(1)]);
    expect(await queue.nextTransaction(DEST)).toBeUndefined();
    await store.commit(ops);
    expect(numbers((await queue.nextTransaction(DEST))!.pdus.map((i) => i.body))).toEqual([1]);
  });

  it("reads from the store after a reopen with a backlog, then from memory once it is drained", async () => {
    const first = await OutboundQueue.open(temp.store);
    await first.enqueue(DEST, range(1, 60).map(pdu));
    const store = new HoldingStore(await temp.reopen(), { followCommits: true });
    const queue = await OutboundQueue.open(store);
    const opened = store.ranges;

    expect(await deliverAll(queue)).toEqual(range(1, 60));
    const readsToDrain = store.ranges;
    expect(readsToDrain).toBeGreaterThan(opened);

    await queue.enqueue(DEST, [pdu(61), pdu(62)]);
    expect(await deliverAll(queue)).toEqual([61, 62]);
    expect(store.ranges).toBe(readsToDrain);
  });

  it("falls back to the store when a backlog outgrows the cache, losing and repeating nothing", async () => {
    const store = new HoldingStore(temp.store, { followCommits: true });
    const queue = await OutboundQueue.open(store);
    const opened = store.ranges;
    for (let start = 1; start <= 2500; start += 500) {
      await queue.enqueue(DEST, range(start, start + 499).map(pdu));
    }
    expect(await deliverAll(queue)).toEqual(range(1, 2500));
    expect(store.ranges).toBeGreaterThan(opened);
  });

  it("keeps an item that lands while the store is being read", async () => {
    const first = await OutboundQueue.open(temp.store);
    await first.enqueue(DEST, [pdu(1)]);
    const store = new HoldingStore(await temp.reopen(), { followCommits: true });
    const queue = await OutboundQueue.open(store);

    const held = store.holdNextRange();
    const reading = queue.nextTransaction(DEST);
    await held.reached;
    await queue.enqueue(DEST, [pdu(2)]);
    held.release();
    const txn = await reading;
    expect(numbers(txn!.pdus.map((i) => i.body))).toEqual([1]);
    await queue.complete(txn!);
    const reads = store.ranges;
    expect(await deliverAll(queue)).toEqual([2]);
    // The read saw the whole backlog, so the cache is whole again: pdu 2 came from memory.
    expect(store.ranges).toBe(reads);
  });
});
