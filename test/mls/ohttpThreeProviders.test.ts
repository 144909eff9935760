import { mkdirSync } from "node:fs";
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { parseConfig } from "../../src/config/config";
import { FederationClient } from "../../src/federation/client";
import { NodeHttpTransport } from "../../src/federation/client/http";
import { ServerResolver } from "../../src/federation/discovery";
import { KeyRing } from "../../src/federation/keys";
import { OHTTP_GATEWAY_PATH, OHTTP_RELAY_PATH } from "../../src/federation/ohttp";
import { loadClientIdentity } from "../../src/mls/clients/identity";
import {
  KEY_PACKAGE_CLAIM_PATH,
  KeyPackageClient,
  MLS_FEDERATION_PREFIX,
} from "../../src/mls/federation/keyPackageApi";
import { OhttpClaims } from "../../src/mls/federation/ohttpClaims";
import type { KeyPackagePool } from "../../src/mls/keyPackages";
import { MimiProvider } from "../../src/provider/provider";
import { freePort } from "../../src/util/freePort";
import { eventually } from "../support/providers";
import { removeDir, tempDir } from "../support/services";
import { ALICE, BOB, CAROL, ROLES } from "./people";
import { openTestStore, testDatabaseConfig } from "../support/store";

const DAVE = "@dave:c.example";

/** One HTTP exchange through a recording proxy, bodies as bytes. */
interface Exchange {
  method: string;
  path: string;
  requestHeaders: IncomingHttpHeaders;
  request: Buffer;
  status: number;
  responseHeaders: IncomingHttpHeaders;
  response: Buffer;
}

/** A pass-through proxy to `target` that records every exchange, bytes as they pass. */
async function recordingProxy(
  target: () => string,
  seen: Exchange[],
): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const request = Buffer.concat(chunks);
      const upstream = httpRequest(
        `${target()}${req.url}`,
        { method: req.method, headers: req.headers },
        (answer) => {
          const parts: Buffer[] = [];
          answer.on("data", (chunk: Buffer) => parts.push(chunk));
          answer.on("end", () => {
            const response = Buffer.concat(parts);
            seen.push({
              method: req.method ?? "",
              path: req.url ?? "",
              requestHeaders: req.headers,
              request,
              status: answer.statusCode ?? 0,
              responseHeaders: answer.headers,
              response,
            });
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            res.end(response);
          });
        },
      );
      upstream.on("error", () => {
        res.writeHead(502);
        res.end();
      });
      upstream.end(request);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

let txn = 0;
const txnId = () => `t${++txn}`;

/**
 * McMillion §Privacy: a user on b.example adds users of c.example; b's hosted client claims their
 * KeyPackages over OHTTP through b's own relay, and c's gateway answers. Both legs of the relay
 * are recorded: what the relay receives from the client and answers it, and what it sends to c's
 * gateway and gets back. None of it may hold a user ID, a bearer token or a KeyPackage.
 */
describe("KeyPackage claims over OHTTP across three providers", () => {
  const names = ["a.example", "b.example", "c.example"];
  let providers: MimiProvider[];
  let dirs: string[];
  const proxies: Server[] = [];
  /** b's client <-> b's relay. */
  const clientLeg: Exchange[] = [];
  /** b (its relay, its federation client) <-> c. */
  const toC: Exchange[] = [];

  let ports: number[];
  let relayProxyUrl: string;
  const cPort = () => ports[2]!;
  const relayUrl = () => relayProxyUrl;
  let toCProxyUrl: string;
  let configOf: (i: number, extra?: string[]) => ReturnType<typeof parseConfig>;
  const toCUrl = () => toCProxyUrl;

  beforeAll(async () => {
    ports = await Promise.all(names.map(() => freePort()));
    const relayProxy = await recordingProxy(() => `http://127.0.0.1:${ports[1]}`, clientLeg);
    const cProxy = await recordingProxy(() => `http://127.0.0.1:${ports[2]}`, toC);
    proxies.push(relayProxy.server, cProxy.server);
    relayProxyUrl = relayProxy.url;
    toCProxyUrl = cProxy.url;
    dirs = names.map((name) => {
      const dir = tempDir(name.replace(/\W/g, "-"));
      mkdirSync(join(dir, "data"), { recursive: true });
      return dir;
    });
    const databases = await Promise.all(dirs.map((dir) => testDatabaseConfig(dir)));
    providers = [];
    configOf = (i: number, extra: string[] = []) => {
      const routes = names.map((n, j) =>
        i === 1 && n === "c.example" ? `    ${n}: ${cProxy.url}` : `    ${n}: http://127.0.0.1:${ports[j]}`,
      );
      return parseConfig(
        [
          `server_name: ${names[i]}`,
          "federation:",
          "  bind_address: 127.0.0.1",
          `  port: ${ports[i]}`,
          "  well_known: false",
          "  retry_base_ms: 20",
          "  retry_max_ms: 200",
          "  static_routes:",
          ...routes,
          `database: ${JSON.stringify(databases[i])}`,
          "limits: { local_sends_per_second: 100000, local_send_burst: 100000 }",
          `logging: { level: ${process.env.MIMI_LOG_LEVEL ?? "error"} }`,
          // b bundles the claims of users of one provider when several wait at once.
          `mls: { bundle_claims: ${i === 1} }`,
          ...extra,
        ].join("\n"),
        dirs[i]!,
      );
    };
    for (const i of names.keys()) {
      providers.push(await MimiProvider.start(configOf(i), i === 1 ? { ohttpRelayUrl: relayProxy.url } : {}));
    }
  }, 60_000);
  afterAll(async () => {
    await Promise.all(providers.map((p) => p.stop()));
    for (const proxy of proxies) {
      proxy.closeAllConnections();
      proxy.close();
    }
    dirs.forEach(removeDir);
  });

  it("a user on b adds two users of c with KeyPackages claimed through b's relay; the relay sees none of them", async () => {
    const [a, b, c] = providers as [MimiProvider, MimiProvider, MimiProvider];
    const { roomId } = await a.rooms.createRoom({ creator: ALICE, txnId: txnId() });
    const roles = structuredClone(ROLES);
    roles.roles.member.assignees.push(DAVE);
    await a.rooms.send({
      roomId,
      sender: ALICE,
      type: "m.room.roles",
      content: roles,
      stateKey: "",
      txnId: txnId(),
    });
    const joinAt = async (p: MimiProvider, user: string) => {
      await eventually(async () =>
        expect((await p.rooms.listInvites(user)).map((i) => i.roomId)).toContain(roomId),
      );
      await p.rooms.changeOwnParticipation({ roomId, user, change: "join", txnId: txnId() });
    };
    await a.rooms.invite({ roomId, sender: ALICE, target: BOB, txnId: txnId() });
    await joinAt(b, BOB);
    await agree([ALICE, BOB]);
    // Bob invites both: b's client adds them, with KeyPackages claimed from c.
    await b.rooms.invite({ roomId, sender: BOB, target: CAROL, txnId: txnId() });
    await b.rooms.invite({ roomId, sender: BOB, target: DAVE, txnId: txnId() });
    await Promise.all([joinAt(c, CAROL), joinAt(c, DAVE)]);
    await agree([ALICE, BOB, CAROL, DAVE]);

    // The MLS Adds are bob's commits: carol and dave joined by Welcome, not by external commit.
    const history = (await a.rooms.history(roomId, { fromSeq: 1, limit: 1000 })).events;
    const commits = history.filter((e) => e.event.type === "m.mls.commit").map((e) => e.event.sender);
    expect(commits.filter((sender) => sender === CAROL || sender === DAVE)).toEqual([]);
    expect(commits.filter((sender) => sender === BOB).length).toBeGreaterThanOrEqual(1);

    // Every claim went through b's relay to c's gateway, which answered; none in the clear.
    const relayed = clientLeg.filter((x) => x.path === `${OHTTP_RELAY_PATH}/c.example`);
    const gatewayLeg = toC.filter((x) => x.path === OHTTP_GATEWAY_PATH);
    expect(relayed.length).toBeGreaterThanOrEqual(1);
    expect(gatewayLeg.length).toBe(relayed.length);
    expect(gatewayLeg.every((x) => x.status === 200)).toBe(true);
    expect(toC.filter((x) => x.path === KEY_PACKAGE_CLAIM_PATH)).toEqual([]);
    // The relay forwards the Encapsulated Request and returns the Encapsulated Response unchanged.
    expect(gatewayLeg.map((x) => x.request.toString("hex")).sort()).toEqual(
      relayed.map((x) => x.request.toString("hex")).sort(),
    );
    expect(gatewayLeg.map((x) => x.response.toString("hex")).sort()).toEqual(
      relayed.map((x) => x.response.toString("hex")).sort(),
    );

    // What the relay sees: no user ID, no bearer token, no KeyPackage (every one of a user's
    // KeyPackages holds the user's signature key), in the bodies or the headers of either leg.
    const tokens = toC
      .filter((x) => x.path === `${MLS_FEDERATION_PREFIX}/key_packages/discover`)
      .map((x) => (JSON.parse(x.response.toString("utf8")) as { bearer_token: string }).bearer_token);
    expect(tokens.length).toBe(2);
    const signatureKeys = await Promise.all(
      [CAROL, DAVE].map(async (user) =>
        Buffer.from((await loadClientIdentity(c.kv, user))!.signaturePublicKey),
      ),
    );
    const secrets: Buffer[] = [
      ...[ALICE, BOB, CAROL, DAVE, "carol", "dave"].map((text) => Buffer.from(text)),
      ...tokens.map((token) => Buffer.from(token)),
      ...signatureKeys,
      ...signatureKeys.map((key) => Buffer.from(key.toString("base64").replace(/=+$/, ""))),
    ];
    const seenByRelay = [...relayed, ...gatewayLeg].flatMap((x) => [
      x.request,
      x.response,
      Buffer.from(JSON.stringify([x.path, x.requestHeaders, x.responseHeaders])),
    ]);
    for (const secret of secrets) {
      expect({
        secret: secret.toString("hex"),
        found: seenByRelay.some((bytes) => bytes.includes(secret)),
      }).toEqual({
        secret: secret.toString("hex"),
        found: false,
      });
    }
    // The relay strips the client's Authorization and adds no identifying header but its own X-Matrix.
    for (const x of gatewayLeg) {
      expect(x.requestHeaders.authorization).toMatch(/^X-Matrix origin="b.example",destination="c.example",/);
      expect(Object.keys(x.requestHeaders).sort()).toEqual(
        ["accept", "authorization", "connection", "content-length", "content-type", "host"].sort(),
      );
      expect(Object.keys(x.responseHeaders)).not.toContain("set-cookie");
    }
    const clientToken = relayed[0]!.requestHeaders.authorization!;
    expect(toC.some((x) => JSON.stringify(x.requestHeaders).includes(clientToken.slice(7)))).toBe(false);
    // Sizes tell nothing of the user IDs: every message inside is padded to a multiple of 1,024 bytes
    // (an Encapsulated Request adds 7 + 32 + 16 bytes, a response 16 + 16).
    for (const x of relayed) {
      expect((x.request.length - 55) % 1024).toBe(0);
      expect((x.response.length - 32) % 1024).toBe(0);
    }

    async function agree(users: string[]): Promise<void> {
      const providerOf = (user: string) => providers[names.indexOf(user.split(":")[1]!)]!;
      await eventually(async () => {
        const views = await Promise.all(users.map((u) => providerOf(u).rooms.clientGroup(roomId, u)));
        for (const view of views) expect([...view!.members].sort()).toEqual([...users].sort());
        expect(new Set(views.map((v) => v!.epoch)).size).toBe(1);
      }, 30_000);
    }
  }, 120_000);

  it("claims two users of c in one bundled request with bundle_claims, else in one request each", async () => {
    const b = providers[1]!;
    const dir = tempDir("ohttp-bundle");
    const store = await openTestStore(join(dir, "db"), { durability: "os" });
    const resolver = new ServerResolver({ staticMap: { "c.example": `http://127.0.0.1:${cPort()}` } });
    const client = new FederationClient({ signingKey: b.signingKey, resolver });
    const transport = new NodeHttpTransport();
    try {
      const keyRing = await KeyRing.open({ ourKey: b.signingKey, store, resolver });
      const relay = (b as unknown as { ohttp: { relay: { token: Buffer } } }).ohttp.relay;
      const ohttp = new OhttpClaims({
        keys: keyRing,
        relay: {
          token: relay.token.toString(),
          url: (target) => new URL(`${OHTTP_RELAY_PATH}/${target}`, relayUrl()),
        },
        transport: transport.send,
        claimPath: KEY_PACKAGE_CLAIM_PATH,
      });
      for (const bundleClaims of [true, false]) {
        const claims = new KeyPackageClient({
          serverName: "b.example",
          client,
          pool: undefined as unknown as KeyPackagePool,
          ohttp,
          bundleClaims,
        });
        const before = clientLeg.length;
        const results = await claims.claimMany([CAROL, DAVE]);
        expect([...results.values()].map((r) => r instanceof Uint8Array)).toEqual([true, true]);
        expect(clientLeg.length - before).toBe(bundleClaims ? 1 : 2);
      }
    } finally {
      transport.close();
      client.close();
      await store.close();
      removeDir(dir);
    }
  });

  it("a provider that publishes no OHTTP key configuration is claimed from in the clear only with plain_claims", async () => {
    const b = providers[1]!;
    const client = new FederationClient({
      signingKey: b.signingKey,
      resolver: new ServerResolver({ staticMap: { "c.example": toCUrl() } }),
    });
    // c as a provider that has not upgraded: no key configuration to be had.
    const ohttp = new OhttpClaims({
      keys: {
        ensureOhttpKeys: async () => undefined,
        ohttpKeys: () => undefined,
        lastFetchError: () => undefined,
        lastOhttpError: () => undefined,
      },
      relay: { token: "unused", url: () => new URL("http://127.0.0.1:9/") },
      transport: () => Promise.reject(new Error("no relay request expected")),
      claimPath: KEY_PACKAGE_CLAIM_PATH,
    });
    const plainOf = () => toC.filter((x) => x.path === KEY_PACKAGE_CLAIM_PATH).length;
    const claimsWith = (plainClaims: boolean) =>
      new KeyPackageClient({
        serverName: "b.example",
        client,
        pool: undefined as unknown as KeyPackagePool,
        ohttp,
        plainClaims,
      });
    try {
      await expect(claimsWith(false).claim(CAROL)).rejects.toMatchObject({ rule: "claim.no_ohttp" });
      expect(plainOf()).toBe(0);
      expect((await claimsWith(true).claim(CAROL)).length).toBeGreaterThan(100);
      expect(plainOf()).toBe(1);
    } finally {
      client.close();
    }
  });

  it("after c rotates its key: the old one works during the overlap, then the client refetches and retries once; a skewed clock is corrected once", async () => {
    const b = providers[1]!;
    const dir = tempDir("ohttp-rotation");
    const store = await openTestStore(join(dir, "db"), { durability: "os" });
    const resolver = new ServerResolver({ staticMap: { "c.example": toCUrl() } });
    const client = new FederationClient({ signingKey: b.signingKey, resolver });
    const transport = new NodeHttpTransport();
    const restartC = async (extra: string[]) => {
      await providers[2]!.stop();
      providers[2] = await MimiProvider.start(configOf(2, extra));
    };
    const rotated = (overlapMs: number) => [
      "ohttp:",
      "  keys:",
      "    - { key_id: 2, private_key_path: data/ohttp-2.key }",
      `    - { key_id: 1, private_key_path: data/ohttp-1.key, retired_ts: ${Date.now()} }`,
      `  overlap_ms: ${overlapMs}`,
    ];
    try {
      const keyRing = await KeyRing.open({ ourKey: b.signingKey, store, resolver, minRefetchIntervalMs: 0 });
      const relay = (b as unknown as { ohttp: { relay: { token: Buffer } } }).ohttp.relay;
      const claimsAt = (now: () => number) =>
        new KeyPackageClient({
          serverName: "b.example",
          client,
          pool: undefined as unknown as KeyPackagePool,
          ohttp: new OhttpClaims({
            keys: keyRing,
            relay: {
              token: relay.token.toString(),
              url: (t) => new URL(`${OHTTP_RELAY_PATH}/${t}`, relayUrl()),
            },
            transport: transport.send,
            claimPath: KEY_PACKAGE_CLAIM_PATH,
            now,
          }),
        });
      const relayedStatuses = async (claim: () => Promise<Uint8Array>) => {
        const before = clientLeg.length;
        await claim();
        return clientLeg.slice(before).map((x) => x.status);
      };
      await keyRing.ensureOhttpKeys("c.example");
      expect(keyRing.ohttpKeys("c.example")?.configs.map((k) => k.keyId)).toEqual([1]);
      // Key 1 retired an hour of overlap ago: still accepted, the pinned configuration is used.
      await restartC(rotated(3_600_000));
      expect(await relayedStatuses(() => claimsAt(Date.now).claim(CAROL))).toEqual([200]);
      // Past the overlap: the gateway refuses key 1 (ohttp-key problem), the client refetches and retries.
      await restartC(rotated(0));
      expect(await relayedStatuses(() => claimsAt(Date.now).claim(CAROL))).toEqual([400, 200]);
      expect(keyRing.ohttpKeys("c.example")?.configs.map((k) => k.keyId)).toEqual([2]);
      // A clock ten minutes slow: the date problem carries c's Date, the client corrects and retries.
      const slow = () => Date.now() - 600_000;
      expect(await relayedStatuses(() => claimsAt(slow).claim(CAROL))).toEqual([200, 200]);
    } finally {
      transport.close();
      client.close();
      await store.close();
      removeDir(dir);
    }
  });
});
