import { keysHandler } from "../support/expressAuth";
import express from "express";
import { signRequest, verifyRequest } from "../../src/federation/auth";
import type { FetchFn } from "../../src/federation/client/http";
import { ServerResolver } from "../../src/federation/discovery";
import { FederationError } from "../../src/federation/errors";
import {
  DEFAULT_MAX_TRACKED_SERVERS,
  DEFAULT_MIN_REFETCH_INTERVAL_MS,
  KeyRing,
  ServerKeysPublisher,
  type KeyRingOptions,
} from "../../src/federation/keys";
import type { KvStore } from "../../src/store/kv";
import { testKey } from "../support/keys";
import { listen, ManualClock, TempStores, type Listening } from "./clientHarness";

/**
 * Requests from servers we could never talk to are refused before any key
 * fetch, and however many server names requests carry, the key ring
 * remembers at most a bounded number of fetch attempts.
 */
describe("requests from strangers", () => {
  const ours = testKey("a.example", "ed25519:a");
  const b = testKey("b.example", "ed25519:b");
  let clock: ManualClock;
  let stores: TempStores;
  let store: KvStore;
  let keyServer: Listening;
  let fetched: string[];
  /** Real fetch, counted: every key fetch and `.well-known` lookup goes through it. */
  const countingFetch: FetchFn = (input, init) => {
    fetched.push(String(input));
    return fetch(input, init);
  };

  beforeEach(async () => {
    clock = new ManualClock();
    stores = new TempStores();
    store = await stores.openAt(stores.dir());
    fetched = [];
    const app = express();
    app.get("/_matrix/key/v2/server", keysHandler(new ServerKeysPublisher(b, [], { now: clock.now })));
    keyServer = await listen(app);
  });

  afterEach(async () => {
    await keyServer.close();
    await stores.cleanup();
  });

  /** A ring as the provider builds it with `well_known: false`: only b.example has a route. */
  function staticOnlyRing(overrides: Partial<KeyRingOptions> = {}): Promise<KeyRing> {
    const routes: Record<string, string> = { "b.example": keyServer.base };
    return KeyRing.open({
      ourKey: ours,
      store,
      resolver: new ServerResolver({ staticMap: routes, fetch: countingFetch }),
      fetch: countingFetch,
      now: clock.now,
      canRoute: (serverName) => Object.hasOwn(routes, serverName),
      ...overrides,
    });
  }

  function requestFrom(key: ReturnType<typeof testKey>, ring: KeyRing) {
    const request = { method: "GET", uri: "/x", origin: key.serverName, destination: "a.example" };
    return verifyRequest({
      method: "GET",
      uri: "/x",
      headers: { authorization: signRequest(request, key) },
      body: undefined,
      ourServerName: "a.example",
      keyRing: ring,
    });
  }

  async function refusal(promise: Promise<unknown>): Promise<unknown> {
    try {
      await promise;
    } catch (err) {
      return err;
    }
    throw new Error("the request was accepted");
  }

  it("accepts a request from a server with a route, fetching its keys once", async () => {
    const ring = await staticOnlyRing();
    await expect(requestFrom(b, ring)).resolves.toBe("b.example");
    expect(fetched).toEqual([`${keyServer.base}/_matrix/key/v2/server`]);
  });

  it("refuses a request from a server without a route with 401 M_FORBIDDEN, fetching nothing", async () => {
    const ring = await staticOnlyRing();
    const stranger = testKey("stranger.example");
    const err = await refusal(requestFrom(stranger, ring));
    expect(err).toBeInstanceOf(FederationError);
    expect(err).toMatchObject({ status: 401, errcode: "M_FORBIDDEN" });
    // Names that are keys of Object.prototype have no route either.
    for (const name of ["constructor", "toString", "hasOwnProperty"]) {
      expect(await refusal(requestFrom(testKey(name), ring))).toMatchObject({
        status: 401,
        errcode: "M_FORBIDDEN",
      });
    }
    await ring.ensureKeys("stranger.example", ["ed25519:1"]);
    expect(fetched).toEqual([]);
    expect(ring.cacheSizes()).toEqual({ servers: 0, attempts: 0 });
  });

  it("refuses a request naming this server as origin with a key it does not have, fetching nothing", async () => {
    const ring = await staticOnlyRing({ canRoute: () => true });
    const impostor = testKey("a.example", "ed25519:other");
    expect(await refusal(requestFrom(impostor, ring))).toMatchObject({ status: 401, errcode: "M_FORBIDDEN" });
    // Our own key ID with another key: known ID, so the signature check refuses it.
    const sameId = testKey("a.example", "ed25519:a", "not our seed");
    expect(await refusal(requestFrom(sameId, ring))).toMatchObject({ status: 401, errcode: "M_FORBIDDEN" });
    expect(fetched).toEqual([]);
  });

  describe("memory for 10,000 requests naming 10,000 different origins", () => {
    const ORIGINS = 10_000;
    let fetchCalls: number;
    /** Every server answers 404 at once, as unknown hosts behind a catch-all would. */
    const notFound: FetchFn = async () => {
      fetchCalls++;
      return new Response('{"errcode":"M_UNRECOGNIZED"}', { status: 404 });
    };

    beforeEach(() => {
      fetchCalls = 0;
    });

    function openRing(overrides: Partial<KeyRingOptions> = {}): Promise<KeyRing> {
      return KeyRing.open({
        ourKey: ours,
        store,
        resolver: { resolve: (serverName) => Promise.resolve(new URL(`http://${serverName}.invalid/`)) },
        fetch: notFound,
        now: clock.now,
        ...overrides,
      });
    }

    async function flood(ring: KeyRing, prefix = "o"): Promise<void> {
      for (let i = 0; i < ORIGINS; i++) {
        const err = await refusal(
          verifyRequest({
            method: "GET",
            uri: "/x",
            headers: {
              authorization: `X-Matrix origin="${prefix}${i}.example",destination="a.example",key="ed25519:1",sig="${"A".repeat(86)}"`,
            },
            body: undefined,
            ourServerName: "a.example",
            keyRing: ring,
          }),
        );
        expect(err).toMatchObject({ status: 401, errcode: "M_FORBIDDEN" });
      }
    }

    it("keeps at most the default cap of fetch attempts, and nothing for servers that never answered", async () => {
      const ring = await openRing();
      await flood(ring);
      expect(fetchCalls).toBe(ORIGINS);
      expect(DEFAULT_MAX_TRACKED_SERVERS).toBeLessThan(ORIGINS);
      expect(ring.cacheSizes()).toEqual({ servers: 0, attempts: DEFAULT_MAX_TRACKED_SERVERS });
      // The newest attempts are the ones kept: their errors are still known.
      expect(ring.lastFetchError(`o${ORIGINS - 1}.example`)).toEqual(expect.any(String));
      expect(ring.lastFetchError("o0.example")).toBeUndefined();
    });

    it("keeps at most a configured cap, and forgets attempts after the refetch interval", async () => {
      const ring = await openRing({ maxTrackedServers: 50 });
      await flood(ring);
      expect(ring.cacheSizes()).toEqual({ servers: 0, attempts: 50 });
      clock.advance(DEFAULT_MIN_REFETCH_INTERVAL_MS - 1);
      expect(ring.cacheSizes().attempts).toBe(50);
      clock.advance(1);
      expect(ring.cacheSizes().attempts).toBe(0);
    });

    it("still fetches a server at most once per interval while it is remembered", async () => {
      const ring = await openRing({ maxTrackedServers: 50 });
      for (let i = 0; i < 100; i++) await ring.ensureKeys("b.example", [`ed25519:forged${i}`]);
      expect(fetchCalls).toBe(1);
      clock.advance(DEFAULT_MIN_REFETCH_INTERVAL_MS);
      await ring.ensureKeys("b.example", ["ed25519:forged"]);
      expect(fetchCalls).toBe(2);
    });

    it("fetches nothing and remembers nothing for origins that cannot be routed", async () => {
      const ring = await openRing({ canRoute: (serverName) => serverName === "b.example" });
      await flood(ring);
      expect(fetchCalls).toBe(0);
      expect(ring.cacheSizes()).toEqual({ servers: 0, attempts: 0 });
    });

    it("refuses invalid caps", async () => {
      await expect(openRing({ maxTrackedServers: 0 })).rejects.toThrow(Error);
      await expect(openRing({ minRefetchIntervalMs: -1 })).rejects.toThrow(Error);
    });
  });
});
