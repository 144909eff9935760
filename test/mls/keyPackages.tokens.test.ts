import { join } from "node:path";
import { MlsError } from "../../src/mls/errors";
import {
  BearerTokens,
  KeyPackagePool,
  KeyPackageService,
  decodeKeyPackageResponse,
  decodeKeyPackageResultBundle,
  encodeKeyPackageRequest,
  encodeKeyPackageRequestBundle,
  tokenId,
  type KeyPackageRequest,
} from "../../src/mls/keyPackages";
import { SUPPORTED_CIPHERSUITE } from "../../src/mls/tsMls";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";
const HOUR = 60 * 60 * 1000;
const utf8 = new TextEncoder();

describe("bearer tokens guarding KeyPackage claims (McMillion §Key Packages, §Privacy)", () => {
  let dir: string;
  let store: KvStore;
  let now: number;
  let pool: KeyPackagePool;
  let tokens: BearerTokens;
  let service: KeyPackageService;

  const request = (token: string | Uint8Array, userId = BOB): KeyPackageRequest => ({
    userId,
    bearerToken: typeof token === "string" ? utf8.encode(token) : token,
    version: "mls10",
    cipherSuite: SUPPORTED_CIPHERSUITE,
  });
  const claimWith = (token: string | Uint8Array, userId = BOB) =>
    service.handleKeyPackageRequest(encodeKeyPackageRequest(request(token, userId)));

  /** The claim is refused with this errcode and rule, and claims nothing. */
  async function expectRefused(
    claim: Promise<unknown>,
    errcode: string,
    rule: string,
    userId = BOB,
  ): Promise<MlsError> {
    const before = await pool.status(userId);
    const err = await claim.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(MlsError);
    expect([(err as MlsError).errcode, (err as MlsError).rule]).toEqual([errcode, rule]);
    expect(await pool.status(userId)).toEqual(before);
    return err as MlsError;
  }

  beforeEach(async () => {
    dir = tempDir("mls-tokens");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    now = Date.UTC(2030, 0, 1);
    pool = new KeyPackagePool(store, { clock: () => now });
    tokens = new BearerTokens(store, {
      clock: () => now,
      claimsPerWindow: 3,
      windowMs: HOUR,
      lifetimeMs: 24 * HOUR,
    });
    service = new KeyPackageService(pool, tokens);
    await pool.replenish(BOB);
    await pool.replenish(CAROL);
  });

  afterEach(async () => {
    await store.close();
    removeDir(dir);
  });

  test("a token issued for the user claims its KeyPackages; the token is stored only as its hash", async () => {
    const issued = await tokens.issue(BOB, "c.example");
    expect(issued.id).toBe(tokenId(issued.token));
    expect(issued.expiresAt).toBe(now + 24 * HOUR);
    const served = decodeKeyPackageResponse(await claimWith(issued.token));
    expect(
      new TextDecoder().decode((served.keyPackage.leafNode.credential as { identity: Uint8Array }).identity),
    ).toBe(BOB);
    expect((await pool.status(BOB)).oneTime).toBe(19);

    for await (const [key, value] of store.range({ gte: "", lt: "\u{10FFFF}" })) {
      expect(key).not.toContain(issued.token);
      expect(value).not.toContain(issued.token);
    }
    expect(await tokens.list(BOB)).toEqual([
      {
        id: issued.id,
        target: BOB,
        requester: "c.example",
        issuedAt: now,
        expiresAt: now + 24 * HOUR,
        revoked: false,
      },
    ]);
  });

  test("wrong, missing, foreign, revoked and expired tokens are refused", async () => {
    const forBob = await tokens.issue(BOB, "c.example");
    const forCarol = await tokens.issue(CAROL, "c.example");
    await expectRefused(claimWith("not-a-token"), "M_UNKNOWN_TOKEN", "token.unknown");
    await expectRefused(claimWith(new Uint8Array()), "M_MISSING_TOKEN", "token.missing");
    // A token claims only its own user's KeyPackages.
    await expectRefused(claimWith(forCarol.token), "M_UNKNOWN_TOKEN", "token.unknown");

    expect(await tokens.revoke(forBob.token)).toBe(true);
    await expectRefused(claimWith(forBob.token), "M_UNKNOWN_TOKEN", "token.revoked");
    expect(await tokens.revoke("never issued")).toBe(false);

    const second = await tokens.issue(BOB, "d.example");
    await claimWith(second.token);
    now += 24 * HOUR;
    await expectRefused(claimWith(second.token), "M_UNKNOWN_TOKEN", "token.expired");
    // Tokens survive a restart.
    await store.close();
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    pool = new KeyPackagePool(store, { clock: () => now });
    tokens = new BearerTokens(store, { clock: () => now, lifetimeMs: 24 * HOUR });
    service = new KeyPackageService(pool, tokens);
    await expectRefused(claimWith(second.token), "M_UNKNOWN_TOKEN", "token.expired");
    expect(await tokens.prune()).toBe(3);
    expect(await tokens.list(BOB)).toEqual([]);
  });

  test("the operator revokes one token by ID, or all of a user's", async () => {
    const a = await tokens.issue(BOB, "c.example");
    const b = await tokens.issue(BOB, "@dave:d.example");
    const c = await tokens.issue(BOB, "e.example");
    const carols = await tokens.issue(CAROL, "c.example");
    expect(await tokens.revokeById(a.id)).toBe(true);
    expect(await tokens.revokeAll(BOB)).toBe(2);
    for (const token of [a, b, c])
      await expectRefused(claimWith(token.token), "M_UNKNOWN_TOKEN", "token.revoked");
    // Other users' tokens are untouched.
    await claimWith(carols.token, CAROL);
  });

  test("at most K claims per token per window, with the time to wait", async () => {
    const issued = await tokens.issue(BOB, "c.example");
    await claimWith(issued.token);
    now += 10 * 60 * 1000;
    await claimWith(issued.token);
    // A refused claim (wrong suite) serves nothing and does not count.
    await expectRefused(
      service.handleKeyPackageRequest(
        encodeKeyPackageRequest({
          ...request(issued.token),
          cipherSuite: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
        }),
      ),
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "keypackage.cipher_suite",
    );
    await claimWith(issued.token);
    const limited = await expectRefused(claimWith(issued.token), "M_LIMIT_EXCEEDED", "token.rate");
    // The first claim of the window leaves it 50 minutes from now.
    expect(limited.retryAfterMs).toBe(50 * 60 * 1000);
    expect(limited.toJSON()).toMatchObject({ errcode: "M_LIMIT_EXCEEDED", retry_after_ms: 50 * 60 * 1000 });
    // Another token of the same user has its own allowance.
    await claimWith((await tokens.issue(BOB, "d.example")).token);

    now += HOUR;
    for (let i = 0; i < 3; i++) await claimWith(issued.token);
    await expectRefused(claimWith(issued.token), "M_LIMIT_EXCEEDED", "token.rate");
  });

  test("a bundle answers each request on its own, in order", async () => {
    const forBob = await tokens.issue(BOB, "c.example");
    const forCarol = await tokens.issue(CAROL, "c.example");
    const bundle = encodeKeyPackageRequestBundle([
      request(forBob.token),
      request("wrong"),
      request(forCarol.token, CAROL),
      request(forBob.token),
      request(forBob.token),
      request(forBob.token),
    ]);
    const results = decodeKeyPackageResultBundle(await service.handleKeyPackageBundle(bundle));
    expect(results.map((r) => (r.kind === "error" ? r.errcode : r.kind))).toEqual([
      "key_package",
      "M_UNKNOWN_TOKEN",
      "key_package",
      "key_package",
      "key_package",
      "M_LIMIT_EXCEEDED",
    ]);
    expect(results[5]).toMatchObject({ kind: "error", retryAfterMs: HOUR });
    expect(await pool.status(BOB)).toEqual({ oneTime: 17, lastResort: true });
    expect(await pool.status(CAROL)).toEqual({ oneTime: 19, lastResort: true });
  });

  test("issuing needs a valid target and requester", async () => {
    await expect(tokens.issue("bob", "c.example")).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    await expect(tokens.issue(BOB, "")).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
  });
});
