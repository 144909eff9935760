/**
 * The appservice's start-up ping against a homeserver that answers over HTTP as the application
 * service API says, scripted: a connection failure on the homeserver's side (a pooled connection
 * to the process before a restart) is tried again; other refusals are final.
 */
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { Appservice, PING_RETRY_DELAYS_MS } from "../../src/bridge/appservice";
import type { Registration } from "../../src/bridge/registration";
import { parseConfig } from "../../src/config/config";
import { createLogger } from "../../src/logging";
import type { RoomsApi } from "../../src/provider/roomsApiTypes";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const HS_TOKEN = "hs-token-for-the-test";

/** Answers `/versions` and `whoami`; each ping takes the next scripted answer, 200 once they run out. */
function fakeHomeserver(pingAnswers: { status: number; errcode: string }[], appservicePort: () => number) {
  const pings: number[] = [];
  const server = createServer((req, res) => {
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (req.url === "/_matrix/client/versions") return reply(200, { versions: ["v1.7"] });
    if (req.url?.startsWith("/_matrix/client/v3/account/whoami"))
      return reply(200, { user_id: "@_mimi_bot:hs.test" });
    if (req.url?.startsWith("/_matrix/client/v1/appservice/mimi/ping")) {
      let text = "";
      req.on("data", (chunk: Buffer) => (text += chunk.toString()));
      req.on("end", () => {
        pings.push(Date.now());
        const scripted = pingAnswers.shift();
        if (scripted !== undefined)
          return reply(scripted.status, { errcode: scripted.errcode, error: "scripted" });
        // The homeserver's own ping of the appservice, as a homeserver does before answering.
        const back = request(
          {
            host: "127.0.0.1",
            port: appservicePort(),
            method: "POST",
            path: "/_matrix/app/v1/ping",
            headers: { authorization: `Bearer ${HS_TOKEN}`, "content-type": "application/json" },
          },
          (answer) => {
            answer.resume();
            answer.on("end", () => reply(200, { duration_ms: 1 }));
          },
        );
        back.end(
          JSON.stringify({ transaction_id: (JSON.parse(text) as { transaction_id: string }).transaction_id }),
        );
      });
      return;
    }
    reply(404, { errcode: "M_UNRECOGNIZED", error: req.url });
  });
  return { server, pings };
}

describe("the appservice's start-up ping", () => {
  let dir: string;
  let store: KvStore;
  let homeserver: Server;
  let appservice: Appservice | undefined;

  beforeEach(async () => {
    dir = tempDir("appservice-start");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
  });

  afterEach(async () => {
    await appservice?.stop();
    appservice = undefined;
    await new Promise((resolve) => homeserver.close(resolve));
    await store.close();
    removeDir(dir);
  });

  const start = async (pingAnswers: { status: number; errcode: string }[]) => {
    const fake = fakeHomeserver(pingAnswers, () => appservice?.port ?? listeningPort);
    homeserver = fake.server;
    await new Promise<void>((resolve) => homeserver.listen(0, "127.0.0.1", resolve));
    const hsPort = (homeserver.address() as AddressInfo).port;
    const matrix = parseConfig(
      `server_name: hs.test\nfederation: { port: 0 }\nhomeserver: { url: "http://127.0.0.1:${hsPort}", domain: hs.test }\nappservice: { port: ${listeningPort} }\n`,
      dir,
    ).matrix!;
    const registration: Registration = {
      id: "mimi",
      url: `http://127.0.0.1:${listeningPort}`,
      as_token: "as-token-for-the-test",
      hs_token: HS_TOKEN,
      sender_localpart: "_mimi_bot",
      rate_limited: false,
      receive_ephemeral: false,
      namespaces: { users: [], aliases: [], rooms: [] },
    };
    const rooms = {
      onInvite: () => () => undefined,
      allInvites: async () => [],
      roomInfo: () => undefined,
    } as unknown as RoomsApi;
    const begun = Date.now();
    const outcome = await Appservice.start({
      matrix,
      registration,
      kv: store,
      log: createLogger("test"),
      rooms,
      mimiServerName: "hs.test",
    }).then(
      (started) => {
        appservice = started;
        return "started";
      },
      (err: unknown) => (err as Error).message,
    );
    return { outcome, pings: fake.pings, elapsedMs: Date.now() - begun };
  };

  let listeningPort = 0;
  beforeEach(async () => {
    // A free port for the appservice's listener, known before the registration is written.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
    listeningPort = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
  });

  it("tries again while the homeserver's connection to it fails, and starts", async () => {
    const { outcome, pings } = await start([
      { status: 502, errcode: "M_CONNECTION_FAILED" },
      { status: 504, errcode: "M_CONNECTION_TIMEOUT" },
    ]);
    expect(outcome).toBe("started");
    expect(pings).toHaveLength(3);
  });

  it("gives up after its retries, naming the URL", async () => {
    const failing = Array.from({ length: 10 }, () => ({ status: 502, errcode: "M_CONNECTION_FAILED" }));
    const { outcome, pings } = await start(failing);
    expect(outcome).toContain(
      `the homeserver cannot reach the appservice at http://127.0.0.1:${listeningPort}`,
    );
    expect(pings).toHaveLength(PING_RETRY_DELAYS_MS.length + 1);
  });

  it("does not try again when the appservice answered badly (a wrong hs_token)", async () => {
    const { outcome, pings } = await start([{ status: 502, errcode: "M_BAD_STATUS" }]);
    expect(outcome).toContain("M_BAD_STATUS");
    expect(pings).toHaveLength(1);
  });
});
