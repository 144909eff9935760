import { join } from "node:path";
import { encodeUnpaddedBase64 } from "../../../src/events/base64";
import { ServerResolver } from "../../../src/federation/discovery";
import { KeyRing, ServerKeysPublisher } from "../../../src/federation/keys";
import {
  OHTTP_KEYS_FIELD,
  encodeKeyConfigList,
  generateX25519KeyPair,
  importGatewayKey,
} from "../../../src/federation/ohttp";
import type { KvStore } from "../../../src/store/kv";
import { testKey } from "../../support/keys";
import { removeDir, tempDir } from "../../support/services";
import { listen, ManualClock, type Listening } from "../clientHarness";
import { openTestStore } from "../../support/store";

const HOUR = 3_600_000;

/**
 * The OHTTP key configurations come with a server's keys (one fetch, one signed answer) and are
 * pinned per server like them: in memory and in the store, refetched at most once per interval.
 */
describe("OHTTP key configurations, fetched with the server keys and pinned per server", () => {
  const c = testKey("c.example", "ed25519:c");
  const b = testKey("b.example", "ed25519:b");
  let clock: ManualClock;
  let published: Record<string, string>;
  let fetches: number;
  let server: Listening;
  let dir: string;
  let store: KvStore;

  beforeEach(async () => {
    clock = new ManualClock(1_750_000_000_000);
    fetches = 0;
    published = { [OHTTP_KEYS_FIELD]: await keysField(1) };
    server = await listen((_req, res) => {
      fetches++;
      // A new publisher per answer, so a change of the field shows at once.
      const body = new ServerKeysPublisher(c, [], { now: clock.now, fields: published }).response();
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify(body));
    });
    dir = tempDir("ohttp-pins");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
  });
  afterEach(async () => {
    await store.close();
    await server.close();
    removeDir(dir);
  });

  const ring = () =>
    KeyRing.open({
      ourKey: b,
      store,
      resolver: new ServerResolver({ staticMap: { "c.example": server.base } }),
      now: clock.now,
    });

  async function keysField(keyId: number): Promise<string> {
    const key = await importGatewayKey(keyId, generateX25519KeyPair().privateKey);
    return encodeUnpaddedBase64(encodeKeyConfigList([key.config]));
  }

  it("are fetched with the signing keys, kept until the answer's validity, and survive a restart", async () => {
    const first = await ring();
    await first.ensureOhttpKeys("c.example");
    expect(fetches).toBe(1);
    expect(first.ohttpKeys("c.example")?.configs.map((k) => k.keyId)).toEqual([1]);
    // The signing keys came in the same answer: no second fetch for them.
    await first.ensureKeys("c.example", [c.keyId]);
    expect(fetches).toBe(1);
    const reopened = await ring();
    expect(reopened.ohttpKeys("c.example")?.configs.map((k) => k.keyId)).toEqual([1]);
    // Valid as long as the signed answer (12 hours here), then fetched again.
    clock.advance(12 * HOUR);
    expect(reopened.ohttpKeys("c.example")).toBeUndefined();
    await reopened.ensureOhttpKeys("c.example");
    expect(fetches).toBe(2);
  });

  it("a refresh after the gateway refused them is at most once per interval, and picks up the rotated key", async () => {
    const pins = await ring();
    await pins.ensureOhttpKeys("c.example");
    published = { [OHTTP_KEYS_FIELD]: await keysField(2) };
    await pins.ensureOhttpKeys("c.example", true);
    // Within 30 s of the last fetch: the pinned configuration stays.
    expect(fetches).toBe(1);
    expect(pins.ohttpKeys("c.example")?.configs[0]?.keyId).toBe(1);
    clock.advance(30_000);
    await pins.ensureOhttpKeys("c.example", true);
    expect(fetches).toBe(2);
    expect(pins.ohttpKeys("c.example")?.configs[0]?.keyId).toBe(2);
  });

  it("a server that stops publishing them, or publishes a malformed field, has none pinned", async () => {
    const pins = await ring();
    await pins.ensureOhttpKeys("c.example");
    published = {};
    clock.advance(30_000);
    await pins.ensureOhttpKeys("c.example", true);
    expect(pins.ohttpKeys("c.example")).toBeUndefined();
    expect((await ring()).ohttpKeys("c.example")).toBeUndefined();
    published = { [OHTTP_KEYS_FIELD]: "AAEC" };
    clock.advance(30_000);
    await pins.ensureOhttpKeys("c.example", true);
    expect(pins.ohttpKeys("c.example")).toBeUndefined();
    expect(pins.lastOhttpError("c.example")).toMatch(/at least 3 bytes/);
    // The signing keys of that answer still count.
    expect(pins.requestKey("c.example", c.keyId)).toBeDefined();
  });
});
