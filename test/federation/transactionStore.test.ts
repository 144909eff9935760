import { join } from "node:path";
import { MimiError } from "../../src/errors";
import { FederationError } from "../../src/federation/errors";
import { TransactionStore, type TransactionStoreOptions } from "../../src/federation/transactionStore";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { ManualTimer, eventually } from "./queue/helpers";
import { openTestStore } from "../support/store";

const SEP = "\u0000";
const DAY = 24 * 60 * 60 * 1000;
const T0 = 1_700_000_000_000;

let dir: string;
let store: KvStore;

beforeEach(async () => {
  dir = tempDir("txn");
  store = await openTestStore(join(dir, "db"), { durability: "os" });
});

afterEach(async () => {
  await store.close().catch(() => undefined);
  removeDir(dir);
});

async function reopen(): Promise<KvStore> {
  await store.close();
  store = await openTestStore(join(dir, "db"), { durability: "os" });
  return store;
}

async function keys(prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const [key] of store.range({ gte: prefix, lt: prefix + "\uffff" })) found.push(key);
  return found;
}

class Clock {
  t = T0;
  readonly now = () => this.t;
}

function counting<T>(answer: T, delay: () => Promise<void> = () => Promise.resolve()) {
  const calls = { runs: 0 };
  const process = async (): Promise<T> => {
    calls.runs++;
    await delay();
    return answer;
  };
  return { calls, process };
}

function txns(options: TransactionStoreOptions = {}): TransactionStore {
  return new TransactionStore(store, options);
}

describe("TransactionStore.once (LM-04 §Transaction Identifiers)", () => {
  it("processes two concurrent deliveries of one transaction once, both getting the answer", async () => {
    const t = txns();
    const { calls, process } = counting({ pdus: { $a: {} } });
    const answers = await Promise.all([
      t.once("b.example", "send", "txn1", process),
      t.once("b.example", "send", "txn1", process),
    ]);
    expect(calls.runs).toBe(1);
    expect(answers).toEqual([{ pdus: { $a: {} } }, { pdus: { $a: {} } }]);
  });

  it.each(["reading the store", "processing", "writing the answer"])(
    "joins a repeat that arrives while the first is %s",
    async (phase) => {
      const t = txns();
      let releaseProcess!: () => void;
      const processGate = new Promise<void>((r) => (releaseProcess = r));
      let releaseCommit!: () => void;
      const commitGate = new Promise<void>((r) => (releaseCommit = r));
      const commit = store.commit.bind(store);
      let commitReached = false;
      jest.spyOn(store, "commit").mockImplementation(async (ops) => {
        commitReached = true;
        await commitGate;
        return commit(ops);
      });
      const { calls, process } = counting("first", () => processGate);
      const first = t.once("b.example", "send", "txn1", process);
      if (phase !== "reading the store") await eventually(() => calls.runs === 1);
      if (phase === "writing the answer") {
        releaseProcess();
        await eventually(() => commitReached);
      }
      const repeat = counting("second");
      const second = t.once("b.example", "send", "txn1", repeat.process);
      releaseProcess();
      releaseCommit();
      await expect(Promise.all([first, second])).resolves.toEqual(["first", "first"]);
      expect(calls.runs + repeat.calls.runs).toBe(1);
    },
  );

  it("keys by origin, endpoint and transaction ID", async () => {
    const t = txns();
    const { calls, process } = counting("x");
    await Promise.all([
      t.once("b.example", "send", "txn1", process),
      t.once("c.example", "send", "txn1", process),
      t.once("b.example", "invite", "txn1", process),
      t.once("b.example", "send", "txn2", process),
    ]);
    expect(calls.runs).toBe(4);
  });

  it("gives a concurrent repeat the first run's failure, stores nothing, and runs a later retry again", async () => {
    const t = txns();
    let runs = 0;
    const failing = async (): Promise<string> => {
      runs++;
      await new Promise((r) => setImmediate(r));
      throw new FederationError(400, "M_BAD_JSON", "bad body");
    };
    const results = await Promise.allSettled([
      t.once("b.example", "send", "txn1", failing),
      t.once("b.example", "send", "txn1", failing),
    ]);
    expect(runs).toBe(1);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    for (const r of results)
      expect((r as PromiseRejectedResult).reason).toMatchObject({ errcode: "M_BAD_JSON" });
    expect(await keys("t")).toEqual([]);

    const { calls, process } = counting("ok");
    await expect(t.once("b.example", "send", "txn1", process)).resolves.toBe("ok");
    await expect(t.once("b.example", "send", "txn1", process)).resolves.toBe("ok");
    expect(calls.runs).toBe(1);
  });

  it("answers a repeat after a restart from the database, with a different body processed never", async () => {
    await txns().once("b.example", "send", "txn1", counting({ n: 1 }).process);
    const t = new TransactionStore(await reopen());
    const { calls, process } = counting({ n: 2 });
    await expect(t.once("b.example", "send", "txn1", process)).resolves.toEqual({ n: 1 });
    expect(calls.runs).toBe(0);
  });
});

describe("TransactionStore.answerOps", () => {
  it("lets process store the answer in its own batch: written once, joined meanwhile, kept after a reopen", async () => {
    const clock = new Clock();
    const t = txns({ now: clock.now });
    let runs = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const process = async () => {
      runs++;
      await gate;
      const answer = { event_id: "$x" };
      await store.commit([
        { type: "put", key: `e${SEP}event`, value: "the event" },
        ...t.answerOps("b.example", "send_join", "txn1", answer),
      ]);
      clock.t += 5; // a second write would get another index entry
      return answer;
    };
    const first = t.once("b.example", "send_join", "txn1", process);
    await new Promise((r) => setImmediate(r));
    const second = t.once("b.example", "send_join", "txn1", process);
    release();
    expect(await Promise.all([first, second])).toEqual([{ event_id: "$x" }, { event_id: "$x" }]);
    expect(runs).toBe(1);
    expect(await keys(`ti${SEP}`)).toHaveLength(1);
    expect(JSON.parse((await store.get(`t${SEP}b.example${SEP}send_join${SEP}txn1`))!)).toEqual({
      answer: { event_id: "$x" },
      ts: T0,
    });

    const after = new TransactionStore(await reopen());
    await expect(
      after.once("b.example", "send_join", "txn1", () => Promise.resolve("again")),
    ).resolves.toEqual({
      event_id: "$x",
    });
  });
});

describe("TransactionStore retention and cap", () => {
  const put = (t: TransactionStore, txnId: string, answer: unknown = txnId) =>
    t.once("b.example", "send", txnId, () => Promise.resolve(answer));

  it("removes answers older than the retention period; a repeat after that is processed again", async () => {
    const clock = new Clock();
    const t = txns({ now: clock.now, retentionMs: DAY });
    await put(t, "old");
    clock.t += DAY / 2;
    await put(t, "new");
    clock.t += DAY / 2 - 1;
    expect(await t.prune()).toBe(0);
    clock.t += 1;
    expect(await t.prune()).toBe(1);
    expect(t.size()).toBe(1);

    const { calls, process } = counting("processed again");
    await expect(t.once("b.example", "send", "old", process)).resolves.toBe("processed again");
    await expect(t.once("b.example", "send", "new", process)).resolves.toBe("new");
    expect(calls.runs).toBe(1);
  });

  it("keeps at most maxAnswers, removing the oldest first in batches", async () => {
    const clock = new Clock();
    const t = txns({ now: clock.now, maxAnswers: 5, pruneBatchSize: 2 });
    for (let i = 1; i <= 12; i++) {
      await put(t, `txn${i}`);
      clock.t += 1000;
    }
    const commits = jest.spyOn(store, "commit");
    expect(await t.prune()).toBe(7);
    // 7 removals in batches of at most 2.
    const removals = commits.mock.calls.map(
      ([ops]) => ops.filter((op) => op.key.startsWith(`ti${SEP}`)).length,
    );
    expect(removals.filter((n) => n > 0)).toEqual([2, 2, 2, 1]);
    expect(t.size()).toBe(5);
    expect((await keys(`t${SEP}`)).map((k) => k.split(SEP).pop())).toEqual([
      "txn10",
      "txn11",
      "txn12",
      "txn8",
      "txn9",
    ]);
    // The count stays exact as answers are added.
    await put(t, "txn13");
    expect(t.size()).toBe(6);
    expect(await t.prune()).toBe(1);
    expect(await keys(`t${SEP}`)).not.toContain(`t${SEP}b.example${SEP}send${SEP}txn8`);
  });

  it("counts answers stored by an earlier run, after a reopen", async () => {
    const clock = new Clock();
    const before = txns({ now: clock.now });
    for (let i = 0; i < 4; i++) await put(before, `txn${i}`);
    const t = new TransactionStore(await reopen(), { now: clock.now, maxAnswers: 3 });
    expect(t.size()).toBeUndefined();
    expect(await t.prune()).toBe(1);
    expect(t.size()).toBe(3);
  });

  it("honours answers stored in the old layout, then ages them from the first prune", async () => {
    const legacy = (txnId: string) => `t${SEP}b.example${SEP}send${SEP}${txnId}`;
    await store.commit([
      { type: "put", key: legacy("a"), value: JSON.stringify({ answer: { pdus: { $a: {} } } }) },
      { type: "put", key: legacy("b\u0000odd"), value: JSON.stringify({ answer: "b" }) },
    ]);
    const clock = new Clock();
    const t = txns({ now: clock.now, retentionMs: DAY, pruneBatchSize: 1 });
    const { calls, process } = counting("processed");
    await expect(t.once("b.example", "send", "a", process)).resolves.toEqual({ pdus: { $a: {} } });
    expect(calls.runs).toBe(0);

    expect(await t.prune()).toBe(0);
    expect(await keys(`ti${SEP}`)).toHaveLength(2);
    expect(await store.get(`tm${SEP}legacy`)).toBe("done");
    await expect(t.once("b.example", "send", "b\u0000odd", process)).resolves.toBe("b");

    // Indexing is done once: a restart a day later does not give them a new lease.
    clock.t += DAY;
    const later = new TransactionStore(await reopen(), { now: clock.now, retentionMs: DAY });
    expect(await later.prune()).toBe(2);
    expect(await keys("t")).toEqual([`tm${SEP}legacy`]);
    await expect(later.once("b.example", "send", "a", process)).resolves.toBe("processed");
  });

  it("does not let a stale index entry remove a newer answer", async () => {
    const clock = new Clock();
    const t = txns({ now: clock.now, retentionMs: DAY });
    await store.commit(t.answerOps("b.example", "send", "twice", "first"));
    clock.t += DAY / 2;
    await store.commit(t.answerOps("b.example", "send", "twice", "second"));
    clock.t += DAY / 2;
    expect(await t.prune()).toBe(1);
    await expect(t.once("b.example", "send", "twice", () => Promise.resolve("third"))).resolves.toBe(
      "second",
    );
  });

  it("prunes in the background from start() until stop()", async () => {
    const clock = new Clock();
    const timer = new ManualTimer();
    const t = txns({ now: clock.now, retentionMs: DAY, pruneIntervalMs: 60_000, timer });
    await put(t, "a");
    t.start();
    expect(timer.delays).toEqual([0]);
    timer.fireAll();
    await timer.requested(2);
    expect(timer.delays).toEqual([0, 60_000]);
    expect(await keys(`t${SEP}`)).toHaveLength(1);

    clock.t += DAY;
    timer.fireAll();
    await eventually(async () => (await keys(`t${SEP}`)).length === 0);
    await timer.requested(3);
    await t.stop();
    expect(timer.pendingCount).toBe(0);
  });

  it.each<[string, TransactionStoreOptions]>([
    ["retentionMs 0", { retentionMs: 0 }],
    ["a negative maxAnswers", { maxAnswers: -1 }],
    ["a fractional pruneBatchSize", { pruneBatchSize: 1.5 }],
    ["pruneIntervalMs NaN", { pruneIntervalMs: NaN }],
  ])("refuses %s", (_name, options) => {
    expect(() => txns(options)).toThrow(MimiError);
    expect(() => txns(options)).toThrow(expect.objectContaining({ errcode: "M_INVALID_PARAM" }));
  });
});
