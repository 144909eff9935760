import { encodeUnpaddedBase64, decodeBase64 } from "../../src/events/base64";
import { FederationClient } from "../../src/federation/client";
import { ServerResolver } from "../../src/federation/discovery";
import { MLS_FEDERATION_PREFIX } from "../../src/mls/federation/keyPackageApi";
import {
  decodeKeyPackageResultBundle,
  encodeKeyPackageRequestBundle,
  type KeyPackageRequest,
  type KeyPackageResult,
} from "../../src/mls/keyPackages";
import { SUPPORTED_CIPHERSUITE } from "../../src/mls/tsMls";
import type { MimiProvider } from "../../src/provider/provider";
import { startInProcess, type InProcessSet } from "../support/inProcess";
import { removeDir } from "../support/services";

const BOB = "@bob:b.example";
const utf8 = new TextEncoder();

describe("KeyPackage discovery and claims over federation", () => {
  let set: InProcessSet;
  let b: MimiProvider;
  let client: FederationClient;
  beforeAll(async () => {
    set = await startInProcess(["a.example", "b.example"]);
    b = set.providers[1]!;
    // Requests signed as a.example, with a.example's own key, to b.example's listener.
    client = new FederationClient({
      signingKey: set.providers[0]!.signingKey,
      resolver: new ServerResolver({ staticMap: { "b.example": `http://127.0.0.1:${set.ports[1]}` } }),
    });
  }, 60_000);
  afterAll(async () => {
    client.close();
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  const discover = (userId: string) =>
    client.request<{ bearer_token: string; expires_ts: number; user_id: string }>(
      "b.example",
      "POST",
      `${MLS_FEDERATION_PREFIX}/key_packages/discover`,
      { user_id: userId },
    );

  async function claim(requests: KeyPackageRequest[]): Promise<KeyPackageResult[]> {
    const answer = await client.request<{ bundle: string }>(
      "b.example",
      "POST",
      `${MLS_FEDERATION_PREFIX}/key_packages/claim`,
      { bundle: encodeUnpaddedBase64(encodeKeyPackageRequestBundle(requests)) },
    );
    return decodeKeyPackageResultBundle(new Uint8Array(decodeBase64(answer.bundle)!));
  }

  const request = (token: string, overrides: Partial<KeyPackageRequest> = {}): KeyPackageRequest => ({
    userId: BOB,
    bearerToken: utf8.encode(token),
    version: "mls10",
    cipherSuite: SUPPORTED_CIPHERSUITE,
    ...overrides,
  });

  it("issues a bearer token at discovery and serves each one-time KeyPackage once", async () => {
    const { bearer_token: token, expires_ts: expires } = await discover(BOB);
    expect(token.length).toBeGreaterThan(20);
    expect(expires).toBeGreaterThan(Date.now());
    const results = await claim([request(token), request(token), request(token)]);
    expect(results.map((r) => r.kind)).toEqual(["key_package", "key_package", "key_package"]);
    const packages = results.map((r) => (r.kind === "key_package" ? encodeUnpaddedBase64(r.keyPackage) : ""));
    expect(new Set(packages).size).toBe(3);
  });

  it("refuses a wrong token, another user's token and an unsupported suite, one result each", async () => {
    const { bearer_token: token } = await discover(BOB);
    const { bearer_token: other } = await discover("@bert:b.example");
    const results = await claim([
      request("not-a-token"),
      request(other),
      request(token, { cipherSuite: "MLS_256_DHKEMP521_AES256GCM_SHA512_P521" }),
      request(token),
    ]);
    expect(results.map((r) => (r.kind === "error" ? r.errcode : r.kind))).toEqual([
      "M_UNKNOWN_TOKEN",
      "M_UNKNOWN_TOKEN",
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "key_package",
    ]);
  });

  it("refuses discovery of a user of another server and a malformed bundle", async () => {
    await expect(discover("@carol:c.example")).rejects.toMatchObject({ errcode: "M_NOT_FOUND" });
    await expect(discover("not a user")).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    await expect(
      client.request("b.example", "POST", `${MLS_FEDERATION_PREFIX}/key_packages/claim`, { bundle: "AAEC" }),
    ).rejects.toMatchObject({ errcode: "IO.MIMI_APPSERVICE.MLS_MALFORMED" });
    await expect(
      client.request("b.example", "POST", `${MLS_FEDERATION_PREFIX}/key_packages/claim`, { bundle: "@@" }),
    ).rejects.toMatchObject({ errcode: "M_BAD_JSON" });
  });

  it("lets the operator list and revoke tokens; a revoked token claims nothing", async () => {
    const { bearer_token: token } = await discover(BOB);
    const listed = (await b.operator.keyPackageTokens(BOB)) as { token_id: string; requester: string }[];
    expect(listed.length).toBeGreaterThanOrEqual(1);
    expect(listed.every((t) => t.requester === "a.example")).toBe(true);
    expect((await claim([request(token)]))[0]!.kind).toBe("key_package");
    expect(await b.operator.revokeKeyPackageTokens(BOB, undefined)).toBeGreaterThanOrEqual(1);
    const [refused] = await claim([request(token)]);
    expect(refused).toMatchObject({ kind: "error", errcode: "M_UNKNOWN_TOKEN" });
  });
});
