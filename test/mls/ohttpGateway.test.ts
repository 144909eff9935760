import { decodeBase64 } from "../../src/events/base64";
import { FederationClient } from "../../src/federation/client";
import { ServerResolver } from "../../src/federation/discovery";
import {
  MEDIA_OHTTP_KEYS,
  MEDIA_OHTTP_REQUEST,
  MEDIA_OHTTP_RESPONSE,
  OHTTP_GATEWAY_PATH,
  OHTTP_KEYS_FIELD,
  OHTTP_KEYS_PATH,
  OHTTP_RELAY_PATH,
  PROBLEM_DATE,
  PROBLEM_OHTTP_KEY,
  decapsulateResponse,
  decodeKeyConfigList,
  decodeResponse,
  encapsulateRequest,
  encodeRequest,
  fieldValue,
  type KeyConfig,
  type ResponseContext,
} from "../../src/federation/ohttp";
import { KEY_PACKAGE_CLAIM_PATH, MLS_FEDERATION_PREFIX } from "../../src/mls/federation/keyPackageApi";
import {
  KeyPackageService,
  decodeKeyPackageResultBundle,
  encodeKeyPackageRequestBundle,
} from "../../src/mls/keyPackages";
import { availablePrefix } from "../../src/mls/keyPackages/storeKeys";
import { SUPPORTED_CIPHERSUITE } from "../../src/mls/tsMls";
import type { MimiProvider } from "../../src/provider/provider";
import { prefixEnd } from "../../src/store/kv";
import { startInProcess, type InProcessSet } from "../support/inProcess";
import { removeDir } from "../support/services";

const CAROL = "@carol:c.example";
const utf8 = new TextEncoder();

describe("KeyPackage claims through the OHTTP gateway and relay (RFC 9458)", () => {
  let set: InProcessSet;
  let b: MimiProvider, c: MimiProvider;
  /** Requests signed as b.example: the relay's leg to c's gateway. */
  let asB: FederationClient;
  let config: KeyConfig;
  let token: string;
  const served = jest.spyOn(KeyPackageService.prototype, "handleKeyPackageBundle");

  beforeAll(async () => {
    set = await startInProcess(["b.example", "c.example"]);
    [b, c] = set.providers as [MimiProvider, MimiProvider];
    asB = new FederationClient({
      signingKey: b.signingKey,
      resolver: new ServerResolver({ staticMap: { "c.example": cUrl() } }),
    });
    const keys = await fetch(`${cUrl()}${OHTTP_KEYS_PATH}`);
    config = decodeKeyConfigList(new Uint8Array(await keys.arrayBuffer()))[0]!;
    token = (
      await asB.request<{ bearer_token: string }>(
        "c.example",
        "POST",
        `${MLS_FEDERATION_PREFIX}/key_packages/discover`,
        {
          user_id: CAROL,
        },
      )
    ).bearer_token;
    // Every claim below is counted; let the pool's first top-up settle.
    await eventuallyCount(20);
  }, 60_000);
  afterAll(async () => {
    asB.close();
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
    served.mockRestore();
  });

  const cUrl = () => `http://127.0.0.1:${set.ports[1]}`;
  const bUrl = () => `http://127.0.0.1:${set.ports[0]}`;

  /** Carol's unclaimed one-time KeyPackages at c. */
  async function oneTimeCount(): Promise<number> {
    let count = 0;
    for await (const _ of c.kv.range({ gte: availablePrefix(CAROL), lt: prefixEnd(availablePrefix(CAROL)) }))
      count++;
    return count;
  }

  async function eventuallyCount(expected: number): Promise<void> {
    for (let i = 0; i < 100 && (await oneTimeCount()) !== expected; i++)
      await new Promise((r) => setTimeout(r, 20));
    expect(await oneTimeCount()).toBe(expected);
  }

  /** An Encapsulated Request for c's gateway claiming one of carol's KeyPackages. */
  async function sealedClaim(
    overrides: { date?: string | null; authority?: string } = {},
  ): Promise<{ encapsulated: Uint8Array; context: ResponseContext }> {
    const bundle = encodeKeyPackageRequestBundle([
      {
        userId: CAROL,
        bearerToken: utf8.encode(token),
        version: "mls10",
        cipherSuite: SUPPORTED_CIPHERSUITE,
      },
    ]);
    const date = overrides.date === undefined ? new Date().toUTCString() : overrides.date;
    const inner = encodeRequest({
      method: "POST",
      scheme: "https",
      authority: overrides.authority ?? "c.example",
      path: KEY_PACKAGE_CLAIM_PATH,
      headers: [
        ["content-type", "application/octet-stream"],
        ...(date === null ? [] : ([["date", date]] as const)),
      ],
      content: bundle,
      trailers: [],
    });
    return encapsulateRequest(config, inner);
  }

  const toGateway = (body: Uint8Array, contentType = MEDIA_OHTTP_REQUEST) =>
    asB.requestBytes("c.example", "POST", OHTTP_GATEWAY_PATH, body, contentType);

  const json = (bytes: Uint8Array) =>
    JSON.parse(Buffer.from(bytes).toString("utf8")) as Record<string, unknown>;

  it("publishes its key configuration as application/ohttp-keys and, the same bytes, in its signed keys", async () => {
    const keys = await fetch(`${cUrl()}${OHTTP_KEYS_PATH}`);
    expect(keys.headers.get("content-type")).toBe(MEDIA_OHTTP_KEYS);
    const published = new Uint8Array(await keys.arrayBuffer());
    const serverKeys = (await (await fetch(`${cUrl()}/_matrix/key/v2/server`)).json()) as Record<
      string,
      string
    >;
    expect(new Uint8Array(decodeBase64(serverKeys[OHTTP_KEYS_FIELD]!)!)).toEqual(published);
    expect(config).toMatchObject({ keyId: 1, kemId: 0x20 });
    expect(config.algorithms).toEqual([
      { kdfId: 1, aeadId: 1 },
      { kdfId: 1, aeadId: 3 },
    ]);
  });

  it("serves an encapsulated claim: one KeyPackage, inside a 200 message/ohttp-res", async () => {
    const before = served.mock.calls.length;
    const { encapsulated, context } = await sealedClaim();
    const answer = await toGateway(encapsulated);
    expect([answer.status, answer.contentType]).toEqual([200, MEDIA_OHTTP_RESPONSE]);
    const response = decodeResponse(decapsulateResponse(context, answer.bytes));
    expect(response.status).toBe(200);
    const [result] = decodeKeyPackageResultBundle(response.content);
    expect(result?.kind).toBe("key_package");
    expect(served.mock.calls.length).toBe(before + 1);
    await eventuallyCount(20);
  });

  describe("bad input: a clear error, nothing served, no one-time KeyPackage consumed", () => {
    let before: number;
    beforeEach(async () => {
      await eventuallyCount(20);
      before = served.mock.calls.length;
    });
    afterEach(async () => {
      expect(served.mock.calls.length).toBe(before);
      expect(await oneTimeCount()).toBe(20);
    });

    it("a truncated encapsulation: 400 OHTTP_MALFORMED", async () => {
      const { encapsulated } = await sealedClaim();
      for (const cut of [encapsulated.subarray(0, 20), encapsulated.subarray(0, encapsulated.length - 1)]) {
        const answer = await toGateway(cut);
        expect([answer.status, json(answer.bytes).errcode]).toEqual([
          400,
          "IO.MIMI_APPSERVICE.OHTTP_MALFORMED",
        ]);
      }
    });

    it("a tampered encapsulation: 400 OHTTP_MALFORMED, it does not decrypt", async () => {
      const { encapsulated } = await sealedClaim();
      const tampered = new Uint8Array(encapsulated);
      tampered[60]! ^= 1;
      const answer = await toGateway(tampered);
      expect(answer.status).toBe(400);
      expect(json(answer.bytes)).toMatchObject({
        errcode: "IO.MIMI_APPSERVICE.OHTTP_MALFORMED",
        error: "the Encapsulated Request does not decrypt",
      });
    });

    it("an unknown key ID: 400 application/problem+json of type ohttp-key (RFC 9458 §5.3)", async () => {
      const { encapsulated } = await sealedClaim();
      const other = new Uint8Array(encapsulated);
      other[0] = 99;
      const answer = await toGateway(other);
      expect([answer.status, answer.contentType]).toEqual([400, "application/problem+json"]);
      expect(json(answer.bytes)).toMatchObject({
        type: PROBLEM_OHTTP_KEY,
        errcode: "IO.MIMI_APPSERVICE.OHTTP_KEY",
      });
    });

    it("a replayed request: the first is served, the replay gets 400 OHTTP_REPLAY and nothing", async () => {
      const { encapsulated } = await sealedClaim();
      expect((await toGateway(encapsulated)).status).toBe(200);
      expect(served.mock.calls.length).toBe(before + 1);
      before += 1;
      await eventuallyCount(20);
      const replay = await toGateway(encapsulated);
      expect([replay.status, json(replay.bytes).errcode]).toEqual([400, "IO.MIMI_APPSERVICE.OHTTP_REPLAY"]);
    });

    it("an oversized body: 413 M_TOO_LARGE, before anything is read; another media type: 415", async () => {
      const big = await toGateway(new Uint8Array(200 * 1024));
      expect([big.status, json(big.bytes).errcode]).toEqual([413, "M_TOO_LARGE"]);
      const { encapsulated } = await sealedClaim();
      const typed = await toGateway(encapsulated, "application/octet-stream");
      expect(typed.status).toBe(415);
    });

    it("an unsigned request: 401; the gateway admits relays it can authenticate", async () => {
      const { encapsulated } = await sealedClaim();
      const answer = await fetch(`${cUrl()}${OHTTP_GATEWAY_PATH}`, {
        method: "POST",
        headers: { "Content-Type": MEDIA_OHTTP_REQUEST },
        body: encapsulated,
      });
      expect(answer.status).toBe(401);
    });

    it("no Date, or one outside the window: the date problem inside the encapsulated answer, with the gateway's Date", async () => {
      for (const date of [null, new Date(Date.now() - 10 * 60_000).toUTCString(), "yesterday"]) {
        const { encapsulated, context } = await sealedClaim({ date });
        const answer = await toGateway(encapsulated);
        expect(answer.status).toBe(200);
        const response = decodeResponse(decapsulateResponse(context, answer.bytes));
        expect(response.status).toBe(400);
        expect(json(response.content)).toMatchObject({
          type: PROBLEM_DATE,
          errcode: "IO.MIMI_APPSERVICE.OHTTP_DATE",
        });
        expect(Math.abs(Date.parse(fieldValue(response.headers, "date")!) - Date.now())).toBeLessThan(5000);
      }
    });

    it("an inner request for another server: 421 inside the encapsulated answer", async () => {
      const { encapsulated, context } = await sealedClaim({ authority: "b.example" });
      const answer = await toGateway(encapsulated);
      expect(decodeResponse(decapsulateResponse(context, answer.bytes)).status).toBe(421);
    });

    it("the relay: a target it cannot resolve is 404 and nothing is sent; a bad name 400; no token 401", async () => {
      const { encapsulated } = await sealedClaim();
      const relay = (target: string, headers: Record<string, string>) =>
        fetch(`${bUrl()}${OHTTP_RELAY_PATH}/${target}`, {
          method: "POST",
          headers: { "Content-Type": MEDIA_OHTTP_REQUEST, ...headers },
          body: encapsulated,
        });
      // The token is the provider's own secret; a stranger presenting another is refused.
      const stranger = await relay("c.example", { Authorization: "Bearer not-the-token" });
      expect([stranger.status, ((await stranger.json()) as { errcode: string }).errcode]).toEqual([
        401,
        "M_UNKNOWN_TOKEN",
      ]);
      expect((await relay("c.example", {})).status).toBe(401);
      // With the relay's token (read from the provider, as its own clients have it).
      const auth = { Authorization: `Bearer ${relayToken(b)}` };
      const forwarded = jest.spyOn(FederationClient.prototype, "requestBytes");
      const nowhere = await relay("nowhere.example", auth);
      expect([nowhere.status, ((await nowhere.json()) as { errcode: string }).errcode]).toEqual([
        404,
        "M_NOT_FOUND",
      ]);
      expect(forwarded).not.toHaveBeenCalled();
      forwarded.mockRestore();
      expect((await relay("not%20a%20server", auth)).status).toBe(400);
      expect((await relay("b.example", auth)).status).toBe(400);
      const big = await fetch(`${bUrl()}${OHTTP_RELAY_PATH}/c.example`, {
        method: "POST",
        headers: { "Content-Type": MEDIA_OHTTP_REQUEST, ...auth },
        body: new Uint8Array(200 * 1024),
      });
      expect(big.status).toBe(413);
    });
  });

  it("the relay forwards to the gateway and returns its answer unchanged", async () => {
    const { encapsulated, context } = await sealedClaim();
    const answer = await fetch(`${bUrl()}${OHTTP_RELAY_PATH}/c.example`, {
      method: "POST",
      headers: { "Content-Type": MEDIA_OHTTP_REQUEST, Authorization: `Bearer ${relayToken(b)}` },
      body: encapsulated,
    });
    expect([answer.status, answer.headers.get("content-type")]).toEqual([200, MEDIA_OHTTP_RESPONSE]);
    const response = decodeResponse(decapsulateResponse(context, new Uint8Array(await answer.arrayBuffer())));
    expect(decodeKeyPackageResultBundle(response.content)[0]?.kind).toBe("key_package");
  });
});

/** The relay's client token, which only the provider's own clients hold (read here for the test). */
function relayToken(provider: MimiProvider): string {
  const relay = (provider as unknown as { ohttp: { relay: { token: Buffer } } }).ohttp.relay;
  return relay.token.toString();
}
