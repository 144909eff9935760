import { join } from "node:path";
import { LAST_RESORT_EXTENSION, credentialUserId } from "../../src/mls/clients";
import { MlsError } from "../../src/mls/errors";
import { KeyPackagePool, decodeKeyPackageResponse, type ClaimedKeyPackage } from "../../src/mls/keyPackages";
import { SUPPORTED_CIPHERSUITE } from "../../src/mls/tsMls";
import { prefixEnd, type KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore, TEST_STORE_NAME } from "../support/store";

const BOB = "@bob:b.example";
const DAY = 24 * 60 * 60 * 1000;

async function expectMlsError(promise: Promise<unknown>, errcode: string, rule: string): Promise<void> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MlsError);
  expect([(err as MlsError).errcode, (err as MlsError).rule]).toEqual([errcode, rule]);
}

function extensionTypes(claimed: ClaimedKeyPackage): unknown[] {
  return decodeKeyPackageResponse(claimed.keyPackage).keyPackage.extensions.map((e) => e.extensionType);
}

describe(`the KeyPackage pool on a real ${TEST_STORE_NAME}`, () => {
  let dir: string;
  let store: KvStore;
  let now: number;
  let pool: KeyPackagePool;

  const claim = () => pool.claim(BOB, "mls10", SUPPORTED_CIPHERSUITE);

  async function keysUnder(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const [key] of store.range({ gte: prefix, lt: prefixEnd(prefix) })) keys.push(key);
    return keys;
  }

  beforeEach(async () => {
    dir = tempDir("mls-pool");
    store = await openTestStore(join(dir, "db"), { durability: "fsync" });
    now = Date.UTC(2030, 0, 1);
    pool = new KeyPackagePool(store, { clock: () => now });
  });

  afterEach(async () => {
    await store.close();
    removeDir(dir);
  });

  test("replenishAll refills every local user's pool that claims took from, and renews old ones", async () => {
    const other = "@other:b.example";
    await pool.replenish(BOB);
    await pool.replenish(other);
    for (let i = 0; i < 5; i++) await claim();
    expect(await pool.status(BOB)).toEqual({ oneTime: 15, lastResort: true });
    expect(await pool.replenishAll()).toBe(1);
    expect(await pool.status(BOB)).toEqual({ oneTime: 20, lastResort: true });
    expect(await pool.replenishAll()).toBe(0);
    // Near the KeyPackages' expiry, both pools are renewed.
    now += 25 * 24 * 60 * 60 * 1000;
    expect(await pool.replenishAll()).toBe(2);
    expect(await pool.status(other)).toEqual({ oneTime: 20, lastResort: true });
  });

  test("20 one-time KeyPackages, then the last-resort one, again and again", async () => {
    await pool.replenish(BOB);
    expect(await pool.status(BOB)).toEqual({ oneTime: 20, lastResort: true });
    const served: ClaimedKeyPackage[] = [];
    for (let i = 0; i < 22; i++) served.push(await claim());

    const oneTime = served.slice(0, 20);
    expect(oneTime.every((c) => !c.lastResort)).toBe(true);
    expect(new Set(oneTime.map((c) => c.ref)).size).toBe(20);
    expect(oneTime.every((c) => extensionTypes(c).length === 0)).toBe(true);

    const [last1, last2] = served.slice(20);
    expect([last1!.lastResort, last2!.lastResort]).toEqual([true, true]);
    expect(last1!.ref).toBe(last2!.ref);
    expect(oneTime.map((c) => c.ref)).not.toContain(last1!.ref);
    // RFC 9420 §17.3: the last_resort extension (0x000A), which the leaf's capabilities list.
    expect(extensionTypes(last1!)).toEqual([LAST_RESORT_EXTENSION]);
    const leaf = decodeKeyPackageResponse(last1!.keyPackage).keyPackage.leafNode;
    expect(leaf.capabilities.extensions).toContain(LAST_RESORT_EXTENSION);
    expect(credentialUserId(leaf.credential)).toBe(BOB);
    expect(await pool.status(BOB)).toEqual({ oneTime: 0, lastResort: true });

    // Topping up brings 20 new ones and keeps the last-resort KeyPackage.
    await pool.replenish(BOB);
    expect(await pool.status(BOB)).toEqual({ oneTime: 20, lastResort: true });
    const next = await claim();
    expect(served.map((c) => c.ref)).not.toContain(next.ref);
    expect((await pool.claim(BOB, "mls10", SUPPORTED_CIPHERSUITE)).lastResort).toBe(false);
  });

  test("50 concurrent claims never get the same one-time KeyPackage", async () => {
    await pool.replenish(BOB);
    const served = await Promise.all(Array.from({ length: 50 }, () => claim()));
    const oneTime = served.filter((c) => !c.lastResort);
    expect(oneTime).toHaveLength(20);
    expect(new Set(oneTime.map((c) => c.ref)).size).toBe(20);
    expect(new Set(served.filter((c) => c.lastResort).map((c) => c.ref)).size).toBe(1);
    // Concurrent top-ups of one user do not overfill the pool.
    await Promise.all([pool.replenish(BOB), pool.replenish(BOB), pool.replenish(BOB)]);
    expect((await pool.status(BOB)).oneTime).toBe(20);
  });

  test("a crash between claims never re-serves a claimed KeyPackage", async () => {
    await pool.replenish(BOB);
    // Twelve claims in flight; the store closes under them after the first few have resolved.
    const inFlight = Array.from({ length: 12 }, () => claim());
    const before = await Promise.allSettled([...inFlight.slice(0, 3)]).then(async (first) => {
      await store.close();
      return [...first, ...(await Promise.allSettled(inFlight.slice(3)))];
    });
    const servedBefore = before.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    expect(servedBefore.length).toBeGreaterThanOrEqual(3);
    expect(before.some((r) => r.status === "rejected")).toBe(true);

    store = await openTestStore(join(dir, "db"), { durability: "fsync" });
    pool = new KeyPackagePool(store, { clock: () => now });
    const servedAfter: ClaimedKeyPackage[] = [];
    for (;;) {
      const claimed = await claim();
      if (claimed.lastResort) break;
      servedAfter.push(claimed);
    }
    const all = [...servedBefore, ...servedAfter].map((c) => c.ref);
    expect(new Set(all).size).toBe(all.length);
    expect(all.length).toBeLessThanOrEqual(20);
  });

  test("a wrong version or cipher suite is refused and consumes nothing", async () => {
    await pool.replenish(BOB);
    await expectMlsError(
      pool.claim(BOB, "mls10", "MLS_128_DHKEMP256_AES128GCM_SHA256_P256"),
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "keypackage.cipher_suite",
    );
    await expectMlsError(
      pool.claim(BOB, "mls20" as "mls10", SUPPORTED_CIPHERSUITE),
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "keypackage.version",
    );
    expect((await pool.status(BOB)).oneTime).toBe(20);
  });

  test("a user without a pool has no KeyPackage", async () => {
    await expectMlsError(claim(), "M_NOT_FOUND", "keypackage.none");
  });

  test("KeyPackages near their expiry are replaced, expired private keys deleted", async () => {
    pool = new KeyPackagePool(store, {
      clock: () => now,
      oneTimeCount: 3,
      lifetimeMs: 10 * DAY,
      renewBeforeMs: 2 * DAY,
    });
    await pool.replenish(BOB);
    const claimedEarly = await claim();
    const refsBefore = await keysUnder("mka\u0000");
    const lastResortBefore = await store.get("mkl\u0000" + BOB);
    expect(refsBefore).toHaveLength(2);

    now += 9 * DAY; // within renewBefore of not_after: no longer served, then replaced
    expect((await claim()).lastResort).toBe(true);
    await pool.replenish(BOB);
    const refsAfter = await keysUnder("mka\u0000");
    expect(refsAfter).toHaveLength(3);
    expect(refsAfter.filter((key) => refsBefore.includes(key))).toEqual([]);
    expect(await store.get("mkl\u0000" + BOB)).not.toBe(lastResortBefore);
    // The claimed one's private keys stay until it expires: its Welcome may still come.
    expect(await store.get(`mkr\u0000${claimedEarly.ref}`)).toBe(BOB);

    now += 2 * DAY; // past not_after
    await pool.replenish(BOB);
    expect(await store.get(`mkr\u0000${claimedEarly.ref}`)).toBeUndefined();
    expect(await store.get(`mkk\u0000${BOB}\u0000${claimedEarly.ref}`)).toBeUndefined();
  });
});
