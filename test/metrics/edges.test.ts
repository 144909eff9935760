import type { Server } from "node:http";
import { join } from "node:path";
import { createAppserviceHandler, listenAppservice } from "../../src/bridge/appserviceListener";
import { HomeserverInbox } from "../../src/bridge/homeserverInbox";
import { createAdminApp, listenAdmin, type OperatorApi } from "../../src/cli/adminApi";
import { OutboundQueue } from "../../src/federation/queue";
import { createLogger } from "../../src/logging";
import { MAX_ERROR_KINDS, MimiMetrics } from "../../src/metrics/metrics";
import { adminErrorObserver, appserviceObserver } from "../../src/metrics/wiring";
import type { RoomsApi } from "../../src/provider/roomsApiTypes";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { valueOf } from "./scrape";
import { openTestStore } from "../support/store";

const portOf = (server: Server) => {
  const address = server.address();
  return typeof address === "object" && address !== null ? address.port : 0;
};

async function close(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

describe("the homeserver's transactions, counted at the appservice listener", () => {
  const HS_TOKEN = "hs-token-for-the-metrics-test-0123456789";
  let dir: string;
  let store: KvStore;
  let server: Server;
  let metrics: MimiMetrics;

  beforeAll(async () => {
    dir = tempDir("metrics-appservice");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    metrics = new MimiMetrics({ defaultMetrics: false });
    const handler = createAppserviceHandler({
      hsToken: HS_TOKEN,
      inbox: await HomeserverInbox.open(store),
      log: createLogger("metrics-test"),
      ...appserviceObserver(metrics),
    });
    server = await listenAppservice(handler, "127.0.0.1", 0);
  });
  afterAll(async () => {
    await close(server);
    await store.close();
    removeDir(dir);
  });

  const put = (txnId: string, body: string, token = HS_TOKEN) =>
    fetch(`http://127.0.0.1:${portOf(server)}/_matrix/app/v1/transactions/${txnId}`, {
      method: "PUT",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body,
    });
  const event = (n: number) => ({ type: "m.room.message", room_id: "!r", event_id: `$e${n}`, content: {} });

  it("counts stored, duplicate and rejected transactions, and the events stored", async () => {
    expect((await put("1", JSON.stringify({ events: [event(1), event(2)] }))).status).toBe(200);
    expect((await put("1", JSON.stringify({ events: [event(1), event(2)] }))).status).toBe(200);
    expect((await put("2", JSON.stringify({ events: [event(3)] }))).status).toBe(200);
    expect((await put("3", "{not json")).status).toBe(400);
    expect((await put("4", JSON.stringify({ events: [] }), "wrong-token")).status).toBe(403);
    const text = await metrics.scrape();
    expect(valueOf(text, "mimi_homeserver_transactions_total", { outcome: "stored" })).toBe(2);
    expect(valueOf(text, "mimi_homeserver_transactions_total", { outcome: "duplicate" })).toBe(1);
    expect(valueOf(text, "mimi_homeserver_transactions_total", { outcome: "rejected" })).toBe(2);
    expect(valueOf(text, "mimi_homeserver_events_total")).toBe(3);
    expect(valueOf(text, "mimi_errors_total", { edge: "appservice", kind: "M_NOT_JSON" })).toBe(1);
    expect(valueOf(text, "mimi_errors_total", { edge: "appservice", kind: "M_FORBIDDEN" })).toBe(1);
  });
});

describe("the admin API's error answers", () => {
  it("are counted by errcode", async () => {
    const metrics = new MimiMetrics({ defaultMetrics: false });
    const app = createAdminApp({
      rooms: {} as RoomsApi,
      operator: {} as OperatorApi,
      token: "admin-token-for-the-metrics-test",
      onError: adminErrorObserver(metrics),
    });
    const server = await listenAdmin(app, "127.0.0.1", 0);
    try {
      const url = `http://127.0.0.1:${portOf(server)}/_mimi/admin/v1/status`;
      expect((await fetch(url)).status).toBe(401);
      expect((await fetch(url, { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
      expect((await fetch(url)).status).toBe(401);
    } finally {
      await close(server);
    }
    const text = await metrics.scrape();
    expect(valueOf(text, "mimi_errors_total", { edge: "admin", kind: "M_MISSING_TOKEN" })).toBe(2);
    expect(valueOf(text, "mimi_errors_total", { edge: "admin", kind: "M_UNKNOWN_TOKEN" })).toBe(1);
  });
});

describe("MimiMetrics", () => {
  it("keeps the error kinds bounded: odd ones and those beyond the limit count as other", async () => {
    const metrics = new MimiMetrics({ defaultMetrics: false });
    metrics.error("federation", "M_FORBIDDEN");
    metrics.error("federation", 'not an "errcode"\n');
    for (let i = 0; i < MAX_ERROR_KINDS + 5; i++) metrics.error("federation", `X_KIND_${i}`);
    metrics.error("federation", "M_FORBIDDEN");
    metrics.error("admin", "X_KIND_70");
    const text = await metrics.scrape();
    expect(valueOf(text, "mimi_errors_total", { edge: "federation", kind: "M_FORBIDDEN" })).toBe(2);
    // M_FORBIDDEN and 63 X_KIND_ took the 64 places; the odd kind and 6 more are "other".
    expect(valueOf(text, "mimi_errors_total", { edge: "federation", kind: "other" })).toBe(7);
    expect(text).not.toContain(`kind="X_KIND_${MAX_ERROR_KINDS - 1}"`);
    expect(valueOf(text, "mimi_errors_total", { edge: "admin", kind: "X_KIND_70" })).toBe(1);
  });

  it("holds its metrics in a registry of its own: two of them count apart", async () => {
    const one = new MimiMetrics();
    const two = new MimiMetrics();
    one.eventSequenced("hub");
    one.eventSequenced("hub");
    two.eventSequenced("follower");
    const [first, second] = await Promise.all([one.scrape(), two.scrape()]);
    expect(valueOf(first, "mimi_events_sequenced_total", { room_role: "hub" })).toBe(2);
    expect(valueOf(first, "mimi_events_sequenced_total", { room_role: "follower" })).toBe(0);
    expect(valueOf(second, "mimi_events_sequenced_total", { room_role: "hub" })).toBe(0);
    expect(valueOf(second, "mimi_events_sequenced_total", { room_role: "follower" })).toBe(1);
  });

  it("ages a queue's oldest item from the reading's clock", async () => {
    let now = 10_000;
    const metrics = new MimiMetrics({ defaultMetrics: false, now: () => now });
    metrics.watch({
      queues: async () => [
        { destination: "b.example", depth: 2, oldestEnqueuedTs: 4_000 },
        { destination: "c.example", depth: 0, oldestEnqueuedTs: undefined },
      ],
      mlsEpochs: () => [{ roomId: "!r:a.example", epoch: 7n }],
    });
    now = 12_500;
    const text = await metrics.scrape();
    expect(valueOf(text, "mimi_federation_queue_oldest_age_seconds", { destination: "b.example" })).toBe(8.5);
    expect(valueOf(text, "mimi_federation_queue_oldest_age_seconds", { destination: "c.example" })).toBe(0);
    expect(valueOf(text, "mimi_federation_queue_depth", { destination: "b.example" })).toBe(2);
    expect(valueOf(text, "mimi_mls_epoch", { room: "!r:a.example" })).toBe(7);
  });
});

describe("OutboundQueue.oldestEnqueuedTs", () => {
  const DEST = "b.example";
  const item = (id: string) => ({ kind: "pdu" as const, id, body: { id } });
  let dir: string;
  let store: KvStore;

  beforeEach(async () => {
    dir = tempDir("metrics-queue");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
  });
  afterEach(async () => {
    await store.close();
    removeDir(dir);
  });

  /** The store without `onCommitted`: the queue keeps no item cache and reads the store. */
  const uncached = (kv: KvStore): KvStore => ({
    get: (key) => kv.get(key),
    getMany: (keys) => kv.getMany(keys),
    range: (options) => kv.range(options),
    commit: (ops, options) => kv.commit(ops, options),
    close: () => kv.close(),
  });

  it.each([
    ["with its item cache", false],
    ["from the store", true],
  ])("is the enqueue time of the oldest undelivered item (%s)", async (_how, readStore) => {
    let now = 1_000;
    const kv = readStore ? uncached(store) : store;
    const queue = await OutboundQueue.open(kv, { now: () => now });
    expect(await queue.oldestEnqueuedTs(DEST)).toBeUndefined();
    await queue.enqueue(DEST, [item("$1"), item("$2")]);
    now = 5_000;
    await queue.enqueue(DEST, [item("$3")]);
    expect(await queue.oldestEnqueuedTs(DEST)).toBe(1_000);
    const first = await queue.nextTransaction(DEST, { maxPdus: 2, maxEdus: 1 });
    await queue.complete(first!);
    expect(await queue.oldestEnqueuedTs(DEST)).toBe(5_000);
    // Reopened, the queue reads the store until its cache is whole again.
    const reopened = await OutboundQueue.open(kv, { now: () => now });
    expect(await reopened.oldestEnqueuedTs(DEST)).toBe(5_000);
    await queue.complete((await queue.nextTransaction(DEST))!);
    expect(await queue.oldestEnqueuedTs(DEST)).toBeUndefined();
  });
});
