import { randomBytes } from "node:crypto";
import type { Server } from "node:http";
import type { MatrixConfig } from "../config/config";
import type { Logger } from "../logging";
import type { KvStore } from "../store/kv";
import {
  createAppserviceHandler,
  listenAppservice,
  type AppserviceListenerOptions,
} from "./appserviceListener";
import { HomeserverClient, HomeserverError } from "./homeserverClient";
import { HomeserverInbox } from "./homeserverInbox";
import { MatrixBridge } from "./matrixBridge";
import type { Registration } from "./registration";
import type { RoomsApi } from "../provider/roomsApiTypes";

/** A start-up check that failed; its message says what to fix. */
export class AppserviceStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AppserviceStartError";
  }
}

/** Callbacks for the metrics: the listener's transactions and error answers, the bridge's unmapped events. */
export type AppserviceObserver = Pick<AppserviceListenerOptions, "onTransaction" | "onError"> & {
  /** A homeserver event whose mapping failed for good (`kind`: its errcode, or the error's name). */
  onUnmapped?: (kind: string) => void;
};

export interface AppserviceDeps {
  matrix: MatrixConfig;
  registration: Registration;
  kv: KvStore;
  log: Logger;
  rooms: RoomsApi;
  /** Our MIMI server name, for the MIMI user IDs of the homeserver's users. */
  mimiServerName: string;
  /** Told of the homeserver's transactions and of the listener's error answers (metrics). */
  observe?: AppserviceObserver;
}

/**
 * The application service side of the process: checks the homeserver and its view of us, then
 * serves the homeserver's transactions into the durable inbox.
 */
export class Appservice {
  private constructor(
    readonly client: HomeserverClient,
    readonly inbox: HomeserverInbox,
    private readonly server: Server,
    readonly botUserId: string,
    readonly bridge: MatrixBridge,
  ) {}

  get port(): number {
    const address = this.server.address();
    return typeof address === "object" && address !== null ? address.port : 0;
  }

  /**
   * The start-up self-check: the homeserver answers `/versions`; it knows our as_token (`whoami`
   * as the bot); then, once we listen, it reaches us (`/appservice/{id}/ping`), which also makes it
   * retry at once the transactions it queued while we were down instead of after its backoff.
   */
  static async start(deps: AppserviceDeps): Promise<Appservice> {
    const { matrix, registration, log } = deps;
    const client = new HomeserverClient({ url: matrix.homeserverUrl, asToken: registration.as_token });
    const versions = await client.versions().catch((err: unknown) => {
      throw new AppserviceStartError(err instanceof HomeserverError ? err.message : String(err));
    });
    const expectedBot = `@${registration.sender_localpart}:${matrix.domain}`;
    const botUserId = await client.whoami().catch((err: unknown) => {
      if (err instanceof HomeserverError && (err.status === 401 || err.status === 403)) {
        throw new AppserviceStartError(
          `the homeserver at ${matrix.homeserverUrl} does not know our as_token (${err.errcode ?? err.status}): ` +
            `add ${matrix.appservice.registrationPath} to its app_service_config_files and restart it`,
        );
      }
      throw new AppserviceStartError(err instanceof HomeserverError ? err.message : String(err));
    });
    if (botUserId !== expectedBot) {
      throw new AppserviceStartError(
        `the homeserver says our bot is ${botUserId}, the config expects ${expectedBot}: check homeserver.domain`,
      );
    }
    const inbox = await HomeserverInbox.open(deps.kv);
    const pingId = `mimi-start-${randomBytes(8).toString("hex")}`;
    let bridgeStarted: (bridge: MatrixBridge | undefined) => void = () => undefined;
    const bridgeReady = new Promise<MatrixBridge | undefined>((resolve) => (bridgeStarted = resolve));
    let pinged = false;
    const handler = createAppserviceHandler({
      hsToken: registration.hs_token,
      inbox,
      log,
      onPing: (transactionId) => {
        if (transactionId === pingId) pinged = true;
      },
      // The bridge exists once we listen; a query before that finds nothing yet.
      onRoomQuery: async (alias) => (await bridgeReady)?.portalForAlias(alias) ?? false,
      onUserQuery: async (userId) => (await bridgeReady)?.ghostExists(userId) ?? false,
      ...(deps.observe?.onTransaction === undefined ? {} : { onTransaction: deps.observe.onTransaction }),
      ...(deps.observe?.onError === undefined ? {} : { onError: deps.observe.onError }),
    });
    const server = await listenAppservice(
      handler,
      matrix.appservice.bindAddress,
      matrix.appservice.port,
    ).catch((err: unknown) => {
      throw new AppserviceStartError(
        `cannot listen on ${matrix.appservice.bindAddress}:${matrix.appservice.port} (${(err as NodeJS.ErrnoException).code ?? String(err)}): check appservice.port`,
      );
    });
    const bridge = new MatrixBridge({
      kv: deps.kv,
      inbox,
      client,
      rooms: deps.rooms,
      matrix,
      mimiServerName: deps.mimiServerName,
      botUserId,
      log,
      ...(deps.observe?.onUnmapped === undefined ? {} : { onUnmapped: deps.observe.onUnmapped }),
    });
    const appservice = new Appservice(client, inbox, server, botUserId, bridge);
    await bridge.start();
    bridgeStarted(bridge);
    if (!versions.some((v) => /^v1\.(\d+)$/.test(v) && Number(v.slice(3)) >= 7)) {
      log.warn(
        "the homeserver does not offer the appservice ping (spec v1.7): queued transactions wait for its retry",
        {
          versions,
        },
      );
      return appservice;
    }
    try {
      await pingWithRetries(client, registration.id, pingId, log);
    } catch (err) {
      await appservice.stop();
      const reason = err instanceof HomeserverError ? err.message : String(err);
      throw new AppserviceStartError(
        `the homeserver cannot reach the appservice at ${registration.url ?? "(no url)"}: ${reason}. ` +
          "Check the registration's url (written by -u) and appservice.bind_address/port, and that the hs_token is the one in the registration",
      );
    }
    if (!pinged)
      log.warn("the homeserver's ping answered but did not reach this listener", { url: registration.url });
    log.info("homeserver reached", {
      homeserver: matrix.homeserverUrl,
      bot: botUserId,
      port: appservice.port,
    });
    return appservice;
  }

  async stop(): Promise<void> {
    await this.bridge.stop();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Pause before each further ping when the homeserver's connection to us failed (ms). */
export const PING_RETRY_DELAYS_MS = [250, 500, 1_000, 2_000];

/**
 * The start-up ping, tried again when the homeserver answers that its connection to us failed
 * (`M_CONNECTION_FAILED`, `M_CONNECTION_TIMEOUT`): after a restart it may first use a pooled
 * connection to the process that is gone. Other answers (a wrong hs_token, no URL) are final.
 */
async function pingWithRetries(
  client: HomeserverClient,
  appserviceId: string,
  pingId: string,
  log: Logger,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await client.ping(appserviceId, pingId);
      return;
    } catch (err) {
      const delay = PING_RETRY_DELAYS_MS[attempt];
      const transient =
        err instanceof HomeserverError &&
        (err.errcode === "M_CONNECTION_FAILED" || err.errcode === "M_CONNECTION_TIMEOUT");
      if (!transient || delay === undefined) throw err;
      log.warn("the homeserver could not reach us yet; pinging again", {
        error: err.message,
        retryInMs: delay,
      });
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}
