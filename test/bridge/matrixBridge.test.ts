/**
 * The bridge's consumer of homeserver events, on a real inbox in the store under test: a failure worth waiting
 * out keeps the event in its place until it succeeds; any other failure is logged and the event
 * is done with. The homeserver and rooms API here are recorders (the real ones are exercised on
 * Synapse in appserviceSynapse.test.ts).
 */
import { join } from "node:path";
import { HomeserverError, type HomeserverClient } from "../../src/bridge/homeserverClient";
import { HomeserverInbox } from "../../src/bridge/homeserverInbox";
import { MatrixBridge, isTransient } from "../../src/bridge/matrixBridge";
import { parseConfig } from "../../src/config/config";
import { MimiError } from "../../src/errors";
import { createLogger } from "../../src/logging";
import type { RoomsApi } from "../../src/provider/roomsApiTypes";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const BOT = "@_mimi_bot:hs.test";
const matrix = parseConfig(
  'server_name: hs.test\nfederation: { port: 0 }\nhomeserver: { url: "http://127.0.0.1:1" }\n',
  "/tmp",
).matrix!;

describe("isTransient", () => {
  it.each([
    ["the homeserver unreachable", true, new HomeserverError("down", undefined, undefined)],
    ["a 502 from the homeserver", true, new HomeserverError("bad gateway", 502, "M_UNKNOWN")],
    ["a 429 from the homeserver", true, new HomeserverError("slow down", 429, "M_LIMIT_EXCEEDED")],
    ["a 403 from the homeserver", false, new HomeserverError("no", 403, "M_FORBIDDEN")],
    ["the room layer rate limiting", true, new MimiError("M_LIMIT_EXCEEDED", "later")],
    ["the hub not answering", true, new MimiError("M_UNKNOWN", "no answer")],
    ["a policy refusal", false, new MimiError("M_FORBIDDEN", "not allowed")],
    ["a bug", false, new TypeError("x is undefined")],
  ])("%s: %s", (_name, transient, err) => {
    expect(isTransient(err)).toBe(transient);
  });
});

describe("the bridge's consumer", () => {
  let dir: string;
  let store: KvStore;
  let inbox: HomeserverInbox;
  let bridge: MatrixBridge;
  const joins: string[] = [];
  const created: string[] = [];
  let failures: Error[];
  const unmapped: string[] = [];
  /** Rooms whose next join request never answers (a homeserver that hangs). */
  const hanging = new Set<string>();
  let deps: ConstructorParameters<typeof MatrixBridge>[0];

  const invite = (n: number) => ({
    type: "m.room.member",
    room_id: `!m${n}`,
    sender: "@alice:hs.test",
    state_key: BOT,
    event_id: `$invite${n}`,
    content: { membership: "invite" },
  });

  beforeEach(async () => {
    dir = tempDir("bridge-consumer");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    inbox = await HomeserverInbox.open(store);
    joins.length = 0;
    created.length = 0;
    failures = [];
    unmapped.length = 0;
    const client = {
      joinRoom: async (roomId: string) => {
        if (hanging.delete(roomId)) await new Promise(() => undefined);
        // Only the first room's joins fail (the rooms are mapped side by side).
        const failure = roomId === "!m1" ? failures.shift() : undefined;
        if (failure !== undefined) throw failure;
        joins.push(roomId);
      },
      sendEvent: async () => "$notice",
      stateContent: async () => undefined,
      joinedMembers: async () => [],
    } as unknown as HomeserverClient;
    const rooms = {
      createRoom: async ({ txnId }: { txnId: string }) => {
        created.push(txnId);
        return { roomId: `!r${created.length}:hs.test` };
      },
      onInvite: () => () => undefined,
      allInvites: async () => [],
      roomInfo: () => undefined,
      // The portal's follower long-polls the MIMI room: nothing arrives here.
      messages: () => new Promise((resolve) => setTimeout(() => resolve([]), 50)),
      history: () => new Promise((resolve) => setTimeout(() => resolve({ events: [] }), 50)),
    } as unknown as RoomsApi;
    deps = {
      kv: store,
      inbox,
      client,
      rooms,
      matrix,
      mimiServerName: "hs.test",
      botUserId: BOT,
      log: createLogger("test"),
      onUnmapped: (kind) => unmapped.push(kind),
      stopGraceMs: 300,
    };
    bridge = new MatrixBridge(deps);
  });

  afterEach(async () => {
    await bridge.stop();
    await store.close();
    removeDir(dir);
  });

  const until = async (check: () => boolean | Promise<boolean>) => {
    for (let i = 0; i < 200 && !(await check()); i++) await new Promise((resolve) => setTimeout(resolve, 25));
    expect(await check()).toBe(true);
  };
  /** An event is done with once the batch that removes it from the inbox lands, after it is handled. */
  const inboxEmpty = () => until(async () => (await inbox.pending()).length === 0);

  it("keeps an event whose homeserver call failed for now, and maps it once the homeserver is back", async () => {
    failures = [new HomeserverError("cannot reach the homeserver", undefined, undefined)];
    await inbox.accept("1", [invite(1), invite(2)]);
    await bridge.start();
    // The first attempt failed: the other room's event goes on; after its backoff (1 s) the
    // waiting one is mapped.
    await until(() => joins.length === 2);
    expect(joins).toEqual(["!m2", "!m1"]);
    expect(unmapped).toEqual([]);
    await inboxEmpty();
    expect(await bridge.portalOf("!m1")).toBe("!r2:hs.test");
  });

  it("keeps a room's events in order behind one that waits, without holding up other rooms", async () => {
    failures = [new HomeserverError("cannot reach the homeserver", undefined, undefined)];
    const again = { ...invite(1), event_id: "$again1" };
    await inbox.accept("1", [invite(1), again, invite(2)]);
    await bridge.start();
    await until(() => joins.length === 2);
    // !m2 went first; !m1's second event waited behind its first (already a portal: no join).
    expect(joins).toEqual(["!m2", "!m1"]);
    expect(created).toHaveLength(2);
    await inboxEmpty();
    expect(unmapped).toEqual([]);
  });

  it("does not retry a refusal: the event is logged and done with, the next one goes on", async () => {
    failures = [new HomeserverError("M_FORBIDDEN", 403, "M_FORBIDDEN")];
    await inbox.accept("1", [invite(1), invite(2)]);
    await bridge.start();
    // The two rooms are mapped side by side: either may be done with first.
    await until(() => joins.length === 1 && unmapped.length === 1);
    await inboxEmpty();
    expect(joins).toEqual(["!m2"]);
    expect(unmapped).toEqual(["M_FORBIDDEN"]);
    expect(await bridge.portalOf("!m1")).toBeUndefined();
  });

  it("stops without waiting for a homeserver that hangs; the event is mapped at the next start", async () => {
    hanging.add("!m3");
    await inbox.accept("1", [invite(3)]);
    await bridge.start();
    await until(() => !hanging.has("!m3"));
    const stopping = performance.now();
    await bridge.stop();
    expect(performance.now() - stopping).toBeLessThan(3_000);
    expect((await inbox.pending()).map((e) => e.event.event_id)).toEqual(["$invite3"]);
    expect(unmapped).toEqual([]);

    bridge = new MatrixBridge(deps);
    await bridge.start();
    await until(() => joins.includes("!m3"));
    await inboxEmpty();
    expect(await bridge.portalOf("!m3")).toBeDefined();
  });
});
