import { OutboundQueue, QueueError, type QueueItem } from "../../../src/federation/queue";
import { TempStore, edu, numbers, pdu } from "./helpers";

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
    expect(await temp.store.get(key(10))).toBe(item(10));
  });

  it("refuses to complete a transaction that is not the one in flight", async () => {
    const queue = await OutboundQueue.open(temp.store);
    await queue.enqueue(DEST, [pdu(1)]);
    const txn = await queue.nextTransaction(DEST);
    await expect(queue.complete({ ...txn!, txnId: "other" })).rejects.toThrow(QueueError);
    expect(queue.depth(DEST)).toBe(1);
  });
});
