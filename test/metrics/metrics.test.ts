import { createLogger } from "../../src/logging";
import { createMetricsHandler, MetricsListener } from "../../src/metrics/listener";
import { MimiMetrics } from "../../src/metrics/metrics";
import { providerHealth, providerMetricsSource, providerObserver } from "../../src/metrics/wiring";
import type { MimiProvider } from "../../src/provider/provider";
import { startInProcess, type InProcessSet } from "../support/inProcess";
import { eventually } from "../support/providers";
import { removeDir } from "../support/services";
import { get, sampleValue, scrape, valueOf } from "./scrape";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const MESSAGE = "org.example.message";
const SEQUENCED = "mimi_events_sequenced_total";
const QUEUE_DEPTH = "mimi_federation_queue_depth";
const QUEUE_AGE = "mimi_federation_queue_oldest_age_seconds";

let txn = 0;
const txnId = () => `metrics-${++txn}`;

/** Metrics of `provider` (and its listener on a free port). */
async function listen(metrics: MimiMetrics, provider: MimiProvider): Promise<MetricsListener> {
  metrics.watch(providerMetricsSource(provider));
  const handler = createMetricsHandler({
    metrics,
    health: providerHealth(provider),
    log: createLogger("metrics-test"),
  });
  return MetricsListener.start(handler, "127.0.0.1", 0);
}

async function historyLength(provider: MimiProvider, roomId: string): Promise<number> {
  let count = 0;
  for (let from: number | undefined = 1; from !== undefined; ) {
    const page = await provider.rooms.history(roomId, { fromSeq: from, limit: 100 });
    count += page.events.length;
    from = page.nextSeq;
  }
  return count;
}

describe("the metrics and health listener of one provider", () => {
  let set: InProcessSet;
  let metrics: MimiMetrics;
  let listener: MetricsListener;
  const a = () => set.providers[0]!;

  beforeAll(async () => {
    metrics = new MimiMetrics();
    // Without hosted MLS clients, the room layer's events are exactly those sent here.
    set = await startInProcess(["a.example"], { observe: providerObserver(metrics) }, undefined, false);
    listener = await listen(metrics, a());
  });
  afterAll(async () => {
    await listener.stop();
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  it("counts each event appended to a room's history once, as hub", async () => {
    const before = await scrape(listener.port);
    const { roomId } = await a().rooms.createRoom({ creator: ALICE, txnId: txnId() });
    for (const body of ["one", "two", "three"]) {
      const request = { roomId, sender: ALICE, type: MESSAGE, content: { body }, txnId: txnId() };
      await a().rooms.send(request);
      await a().rooms.send(request); // a retry appends nothing
    }
    const after = await scrape(listener.port);
    const added =
      valueOf(after, SEQUENCED, { room_role: "hub" }) - valueOf(before, SEQUENCED, { room_role: "hub" });
    // The create event and the creator's join, then the three messages.
    expect(added).toBe(5);
    expect(await historyLength(a(), roomId)).toBe(5);
    expect(valueOf(after, SEQUENCED, { room_role: "follower" })).toBe(0);
  });

  it("counts the federation listener's error answers by errcode", async () => {
    const kind = { edge: "federation", kind: "M_UNRECOGNIZED" };
    const before = sampleValue(await scrape(listener.port), "mimi_errors_total", kind) ?? 0;
    for (let i = 0; i < 2; i++) {
      const response = await fetch(
        `http://127.0.0.1:${a().federationPort}/_matrix/federation/v1/no-such-thing`,
      );
      expect(response.status).toBe(404);
    }
    const unauthenticated = await fetch(
      `http://127.0.0.1:${a().federationPort}/_matrix/federation/v2/event/$x`,
    );
    expect(unauthenticated.status).toBe(401);
    const { errcode } = (await unauthenticated.json()) as { errcode: string };
    expect(errcode).not.toBe("M_UNRECOGNIZED");
    const after = await scrape(listener.port);
    expect(valueOf(after, "mimi_errors_total", kind)).toBe(before + 2);
    expect(valueOf(after, "mimi_errors_total", { edge: "federation", kind: errcode })).toBe(1);
  });

  it("serves process metrics in the registry's content type", async () => {
    const answer = await get(listener.port, "/metrics");
    expect(answer.status).toBe(200);
    expect(answer.contentType).toBe(metrics.registry.contentType);
    expect(answer.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const name of [
      "process_resident_memory_bytes",
      "nodejs_heap_size_used_bytes",
      "nodejs_eventloop_lag_seconds",
    ])
      expect(sampleValue(answer.text, name)).toBeGreaterThan(0);
    expect(answer.text).toContain("# TYPE mimi_events_sequenced_total counter");
    expect(answer.text).toContain("# TYPE mimi_federation_queue_depth gauge");
  });

  it("answers /health 200 with the server name and its rooms while the provider runs", async () => {
    const answer = await get(listener.port, "/health");
    expect(answer.status).toBe(200);
    expect(answer.contentType).toBe("application/json");
    expect(JSON.parse(answer.text)).toMatchObject({
      status: "ok",
      server_name: "a.example",
      rooms: a().rooms.listRooms().length,
    });
    expect(a().rooms.listRooms().length).toBeGreaterThan(0);
  });

  it("answers 404 M_UNRECOGNIZED for another path, and 405 for another method", async () => {
    for (const path of ["/", "/metrics/x", "/healthz", "/_matrix/federation/v1/version"]) {
      const answer = await get(listener.port, path);
      expect([path, answer.status]).toEqual([path, 404]);
      expect(JSON.parse(answer.text)).toMatchObject({ errcode: "M_UNRECOGNIZED" });
    }
    const post = await get(listener.port, "/metrics", "POST");
    expect(post.status).toBe(405);
    expect(JSON.parse(post.text)).toMatchObject({ errcode: "M_UNRECOGNIZED" });
  });

  it("answers /health 503 with the reason once the store is closed, then once the provider stopped", async () => {
    await a().kv.close();
    const closed = await get(listener.port, "/health");
    expect(closed.status).toBe(503);
    expect(JSON.parse(closed.text)).toMatchObject({
      status: "unavailable",
      reason: "the store is closed",
      server_name: "a.example",
    });
    await a().stop();
    const stopped = await get(listener.port, "/health");
    expect(stopped.status).toBe(503);
    expect(JSON.parse(stopped.text)).toMatchObject({
      status: "unavailable",
      reason: "the provider is stopped",
    });
    // Scraping a stopped provider still works: its queues are left out.
    expect((await get(listener.port, "/metrics")).status).toBe(200);
  });
});

describe("the federation queue gauges of two providers", () => {
  let set: InProcessSet;
  let metrics: MimiMetrics;
  let listener: MetricsListener;
  const a = () => set.providers[0]!;
  const b = () => set.providers[1]!;
  const toB = { destination: "b.example" };

  beforeAll(async () => {
    metrics = new MimiMetrics({ defaultMetrics: false });
    // Both providers report their appends here; only a's queues are watched.
    set = await startInProcess(
      ["a.example", "b.example"],
      { observe: providerObserver(metrics) },
      undefined,
      false,
    );
    listener = await listen(metrics, a());
  });
  afterAll(async () => {
    await listener.stop();
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  it("show a destination's backlog while it is down, and 0 once it is back", async () => {
    const { roomId } = await a().rooms.createRoom({ creator: ALICE, txnId: txnId() });
    const rules = {
      roomId,
      sender: ALICE,
      type: "m.room.join_rules",
      content: { rule: "public" },
      stateKey: "",
    };
    await a().rooms.send({ ...rules, txnId: txnId() });
    await b().rooms.changeOwnParticipation({ roomId, user: BOB, change: "join", txnId: txnId() });
    await eventually(async () => expect(valueOf(await scrape(listener.port), QUEUE_DEPTH, toB)).toBe(0));

    await b().stop();
    for (const body of ["while", "b is", "down"]) {
      await a().rooms.send({ roomId, sender: ALICE, type: MESSAGE, content: { body }, txnId: txnId() });
    }
    const down = await scrape(listener.port);
    expect(valueOf(down, QUEUE_DEPTH, toB)).toBe(3);
    await new Promise((r) => setTimeout(r, 1100));
    expect(valueOf(await scrape(listener.port), QUEUE_AGE, toB)).toBeGreaterThanOrEqual(1);

    await set.restart(1);
    await eventually(async () => {
      const back = await scrape(listener.port);
      expect(valueOf(back, QUEUE_DEPTH, toB)).toBe(0);
      expect(valueOf(back, QUEUE_AGE, toB)).toBe(0);
    });
    // Every event counted once where it was sequenced, and once where it was applied.
    await eventually(async () =>
      expect(await historyLength(b(), roomId)).toBe(await historyLength(a(), roomId)),
    );
    const text = await scrape(listener.port);
    expect(valueOf(text, SEQUENCED, { room_role: "hub" })).toBe(await historyLength(a(), roomId));
    expect(valueOf(text, SEQUENCED, { room_role: "follower" })).toBe(await historyLength(b(), roomId));
  }, 60_000);
});

describe("the MLS epoch gauge", () => {
  let set: InProcessSet;
  let metrics: MimiMetrics;
  let listener: MetricsListener;
  const a = () => set.providers[0]!;

  beforeAll(async () => {
    metrics = new MimiMetrics({ defaultMetrics: false });
    set = await startInProcess(["a.example"]);
    listener = await listen(metrics, a());
  }, 60_000);
  afterAll(async () => {
    await listener.stop();
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  it("shows each room's epoch as the observer tracks it, and follows its commits", async () => {
    const { roomId } = await a().rooms.createRoom({ creator: ALICE, txnId: txnId() });
    const room = { room: roomId };
    const established = await eventually(async () => {
      const epoch = sampleValue(await scrape(listener.port), "mimi_mls_epoch", room);
      expect(epoch).toBeDefined();
      return epoch!;
    });
    expect(String(established)).toBe(a().mls.observerView(roomId)?.epoch);
    // Another local user joins: the group moves to a later epoch.
    const rules = {
      roomId,
      sender: ALICE,
      type: "m.room.join_rules",
      content: { rule: "public" },
      stateKey: "",
    };
    await a().rooms.send({ ...rules, txnId: txnId() });
    await a().rooms.changeOwnParticipation({
      roomId,
      user: "@carol:a.example",
      change: "join",
      txnId: txnId(),
    });
    await eventually(async () => {
      const epoch = valueOf(await scrape(listener.port), "mimi_mls_epoch", room);
      expect(epoch).toBeGreaterThan(established);
      expect(String(epoch)).toBe(a().mls.observerView(roomId)?.epoch);
    });
  }, 60_000);
});
