import type { Server } from "node:http";
import { join } from "node:path";
import { createAppserviceHandler, listenAppservice } from "../../src/bridge/appserviceListener";
import { HomeserverInbox, TRANSACTION_RETENTION_MS } from "../../src/bridge/homeserverInbox";
import { createLogger } from "../../src/logging";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const HS_TOKEN = "hs-token-for-the-inbox-test-0123456789";
const event = (n: number) => ({
  type: "m.room.message",
  room_id: "!r",
  event_id: `$e${n}`,
  content: { body: `${n}` },
});

describe("the homeserver's transactions, over HTTP into a durable inbox", () => {
  let dir: string;
  let store: KvStore;
  let inbox: HomeserverInbox;
  let server: Server;
  let base: string;
  let pings: (string | undefined)[];

  async function open(): Promise<void> {
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    inbox = await HomeserverInbox.open(store);
    pings = [];
    const handler = createAppserviceHandler({
      hsToken: HS_TOKEN,
      inbox,
      log: createLogger("test"),
      onPing: (id) => pings.push(id),
    });
    server = await listenAppservice(handler, "127.0.0.1", 0);
    const address = server.address();
    base = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
  }

  async function close(): Promise<void> {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await store.close();
  }

  const put = (txnId: string, body: unknown, token: string | null = HS_TOKEN) =>
    fetch(`${base}/_matrix/app/v1/transactions/${encodeURIComponent(txnId)}`, {
      method: "PUT",
      headers: {
        "content-type": "application/json",
        ...(token === null ? {} : { authorization: `Bearer ${token}` }),
      },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });

  const seen = async () => (await inbox.pending(1000)).map((entry) => entry.event.event_id);

  beforeEach(async () => {
    dir = tempDir("hs-inbox");
    await open();
  });
  afterEach(async () => {
    await close();
    removeDir(dir);
  });

  it("stores a transaction's events in order before answering 200, and a replayed transaction adds nothing", async () => {
    const first = await put("1", { events: [event(1), event(2)] });
    expect(first.status).toBe(200);
    expect(await first.json()).toEqual({});
    // Answered only once durable: the events are there as soon as the answer is.
    expect(await seen()).toEqual(["$e1", "$e2"]);
    expect((await put("1", { events: [event(1), event(2)] })).status).toBe(200);
    expect((await put("2", { events: [event(3)] })).status).toBe(200);
    expect(await seen()).toEqual(["$e1", "$e2", "$e3"]);
  });

  it("remembers transaction IDs across a restart, and keeps the order of what is not consumed", async () => {
    await put("7", { events: [event(1)] });
    await close();
    await open();
    expect((await put("7", { events: [event(1)] })).status).toBe(200);
    await put("8", { events: [event(2)] });
    expect(await seen()).toEqual(["$e1", "$e2"]);
  });

  it("a consumer removes what it handled in its own batch: each event is handled once", async () => {
    await put("1", { events: [event(1), event(2), event(3)] });
    const taken = await inbox.pending(2);
    await store.commit([...inbox.completeOps(taken), { type: "put", key: "test-consumer", value: "2" }]);
    expect(await seen()).toEqual(["$e3"]);
    await close();
    await open();
    expect(await seen()).toEqual(["$e3"]);
    // Sequence numbers go on after a restart: a new event sorts after the old one.
    await put("2", { events: [event(4)] });
    expect(await seen()).toEqual(["$e3", "$e4"]);
  });

  it("forgets transaction IDs older than the retention", async () => {
    let now = 1_000_000;
    await close();
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    inbox = await HomeserverInbox.open(store, () => now);
    await inbox.accept("old", [event(1)]);
    now += TRANSACTION_RETENTION_MS + 1;
    await inbox.accept("new", [event(2)]);
    expect(await inbox.prune()).toBe(1);
    expect(await inbox.accept("old", [event(3)])).toBe(true);
    expect(await inbox.accept("new", [event(4)])).toBe(false);
    await store.close();
    await open();
  });

  it.each([
    ["no token", () => put("9", { events: [] }, null), 401, "M_UNAUTHORIZED"],
    ["a wrong token", () => put("9", { events: [] }, "wrong-token"), 403, "M_FORBIDDEN"],
    ["a body that is not JSON", () => put("9", "{"), 400, "M_NOT_JSON"],
    ["events that are not objects", () => put("9", { events: [1] }), 400, "M_BAD_JSON"],
    ["a body that is a list", () => put("9", "[]"), 400, "M_BAD_JSON"],
    [
      "an unknown route",
      () => fetch(`${base}/_matrix/app/v1/thirdparty/protocol/x`, { method: "GET" }),
      404,
      "M_UNRECOGNIZED",
    ],
    [
      "a user query without the hs_token",
      () => fetch(`${base}/_matrix/app/v1/users/${encodeURIComponent("@_mimi_x:hs")}`, { method: "GET" }),
      401,
      "M_UNAUTHORIZED",
    ],
    [
      "POST on a transaction",
      () => fetch(`${base}/_matrix/app/v1/transactions/9`, { method: "POST" }),
      405,
      "M_UNRECOGNIZED",
    ],
  ] as const)("refuses %s and stores nothing", async (_name, request, status, errcode) => {
    const response = await request();
    expect(response.status).toBe(status);
    expect(((await response.json()) as { errcode: string }).errcode).toBe(errcode);
    expect(await seen()).toEqual([]);
    // The refused transaction ID was not recorded: its redelivery is stored.
    expect((await put("9", { events: [event(9)] })).status).toBe(200);
    expect(await seen()).toEqual(["$e9"]);
  });

  it("answers the homeserver's ping, with the hs_token only", async () => {
    const ping = (token: string) =>
      fetch(`${base}/_matrix/app/v1/ping`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ transaction_id: "abc" }),
      });
    expect((await ping(HS_TOKEN)).status).toBe(200);
    expect((await ping("nope")).status).toBe(403);
    expect(pings).toEqual(["abc"]);
  });
});
