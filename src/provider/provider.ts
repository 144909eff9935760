import { createServer } from "node:http";
import type { Server } from "node:http";
import type { ProviderConfig } from "../config/config";
import { loadOrCreateSigningKey } from "../events/signingKeyFile";
import type { ServerSigningKey } from "../events/signingKey";
import type { FullyFormedEvent } from "../events/types";
import { encodeUnpaddedBase64 } from "../events/base64";
import { FederationClient, type FetchFn } from "../federation/client";
import { fetchTransport, NodeHttpTransport } from "../federation/client/http";
import { ServerResolver, type Resolver } from "../federation/discovery";
import { FederationError } from "../federation/errors";
import { KeyRing } from "../federation/keys";
import {
  MAX_ENCAPSULATED_REQUEST_BYTES,
  MAX_ENCAPSULATED_RESPONSE_BYTES,
  MEDIA_OHTTP_REQUEST,
  MEDIA_OHTTP_RESPONSE,
  OHTTP_GATEWAY_PATH,
  OHTTP_KEYS_FIELD,
  OHTTP_PREFIX,
  OHTTP_RELAY_PATH,
  OhttpGateway,
  OhttpRelay,
  ReplayCache,
  loadGatewayKeys,
  type GatewayKeySet,
} from "../federation/ohttp";
import { PendingInvites } from "../federation/pendingInvites";
import { RateLimiter } from "../federation/rateLimit";
import {
  OutboundDelivery,
  OutboundQueue,
  type PduResult,
  type SendBody,
  type SendResponse,
} from "../federation/queue";
import { createFederationApp } from "../federation/server/app";
import { TransactionStore } from "../federation/transactionStore";
import { createLogger, setLogLevel, type Logger } from "../logging";
import { randomBytes } from "node:crypto";
import { GroupAgent } from "../mls/agent/groupAgent";
import {
  KEY_PACKAGE_CLAIM_PATH,
  KeyPackageApi,
  KeyPackageClient,
  MLS_FEDERATION_PREFIX,
} from "../mls/federation/keyPackageApi";
import { OhttpClaims } from "../mls/federation/ohttpClaims";
import { WelcomeRouter, type EduPort } from "../mls/federation/welcomes";
import { BearerTokens, KeyPackagePool, KeyPackageService } from "../mls/keyPackages";
import { makeUserId } from "../identifiers";
import { HubExternalSender } from "../mls/hubSender";
import { RoomGroupExtension } from "../mls/roomGroup";
import type { RoomExtension } from "../room/extension";
import { RoomService } from "../room/roomService";
import type { KvStore } from "../store/kv";
import { openStore, type StoreFence } from "../store/openStore";
import { RoomStore } from "../store/roomStore";
import { ensureSchema } from "../store/schema";
import { CatchUp } from "./catchUp";
import { EventFeed, type EventFeedOptions } from "./eventFeed";
import { ensureEventKeys } from "./eventKeys";
import { fanOutHook } from "./fanOut";
import { HubLink } from "./hubLink";
import { Inbound } from "./inbound";
import { checkAnswer, SEND_ANSWER } from "./peerAnswers";
import { LocalRooms } from "./roomsApi";
import type { RoomsApi } from "./roomsApiTypes";

/** How often every local user's KeyPackage pool is checked for KeyPackages to renew. */
const KEY_PACKAGE_REFRESH_MS = 60 * 60 * 1000;

export interface ProviderOptions {
  fetch?: FetchFn;
  /** Delivery backoff base and cap in ms (tests shorten them). */
  backoff?: { baseMs?: number; capMs?: number };
  /** Per-room extensions of the hub and follower cores, after the MLS group's own. */
  extensions?: readonly RoomExtension[];
  /** Told of what operators count (src/metrics). */
  observe?: ProviderObserver;
  /**
   * The base URL of the OHTTP relay our hosted clients send their KeyPackage claims to. Default:
   * this provider's own federation listener on loopback (tests put a recording proxy in front).
   */
  ohttpRelayUrl?: string;
  /** A cluster's active process: the lease every write of the PostgreSQL store checks (pg/lease.ts). */
  storeFence?: StoreFence;
}

/** What the provider reports as it happens, for metrics; a throwing callback is logged and ignored. */
export interface ProviderObserver {
  /** Each event once it is durably appended to a room's history, with our role in that room. */
  eventAppended?(role: "hub" | "follower"): void;
  /** Each error answer of the federation listener. */
  federationError?(errcode: string, status: number): void;
}

/** One destination's outbound queue. */
export interface QueueBacklog {
  destination: string;
  depth: number;
  /** When its oldest queued item was enqueued (ms since the epoch); undefined when it has none. */
  oldestEnqueuedTs: number | undefined;
}

/** What an operator sees and does (the admin API's operator routes). */
export interface OperatorView {
  status(): Promise<Record<string, unknown>>;
  deadLetters(destination: string | undefined, limit: number): Promise<unknown[]>;
  retryDeadLetters(destination: string): Promise<number>;
  keyPackageTokens(userId: string): Promise<unknown[]>;
  revokeKeyPackageTokens(userId: string, tokenId: string | undefined): Promise<number>;
}

/**
 * One MIMI provider: the composition root. It opens the one store and hands
 * it to every layer (rooms, federation queues and transactions, and later MLS
 * and the bridge), so that their records share its atomic batches; it wires
 * the room service, fan-out, catch-up, the link to hubs, the inbound handlers
 * and the rooms API together, and runs the federation listener.
 */
export class MimiProvider {
  private httpServer: Server | undefined;
  private stopped = false;
  readonly log: Logger;

  private constructor(
    readonly config: ProviderConfig,
    readonly signingKey: ServerSigningKey,
    /** The one store every layer writes to. */
    readonly kv: KvStore & { close(): Promise<void> },
    private readonly roomService: RoomService,
    private readonly queue: OutboundQueue,
    private readonly delivery: OutboundDelivery,
    private readonly keyRing: KeyRing,
    /** The one interface for local users. */
    readonly rooms: RoomsApi,
    private readonly inbound: Inbound,
    private readonly catchUp: CatchUp,
    private readonly hubLink: HubLink,
    /** The hosted MLS clients of local users. */
    readonly mls: GroupAgent,
    log: Logger,
  ) {
    this.log = log;
  }

  get serverName(): string {
    return this.config.serverName;
  }

  static async start(config: ProviderConfig, options: ProviderOptions = {}): Promise<MimiProvider> {
    setLogLevel(config.logging.level);
    const log = createLogger("provider", { server: config.serverName });
    const signingKey = await loadOrCreateSigningKey(config.signingKeyPath, config.serverName);
    const kv = await openStore(config.database, options.storeFence);
    await ensureSchema(kv);
    const discovery = new ServerResolver({
      staticMap: config.federation.staticRoutes,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    const resolver: Resolver = config.federation.wellKnown
      ? discovery
      : { resolve: (name) => staticRouteOnly(config.federation.staticRoutes, name, discovery) };
    const limits = config.limits;
    const keyRing = await KeyRing.open({
      ourKey: signingKey,
      ourOldKeys: config.oldVerifyKeys,
      store: kv,
      resolver,
      maxTrackedServers: limits.keyRingMaxServers,
      minRefetchIntervalMs: limits.keyFetchMinIntervalMs,
      // With .well-known off, a server outside the static routes is refused before any fetch.
      ...(config.federation.wellKnown
        ? {}
        : { canRoute: (name: string) => Object.hasOwn(config.federation.staticRoutes, name) }),
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    const roomStore = new RoomStore(kv);
    const hubSender = await HubExternalSender.load(
      kv,
      makeUserId(config.mls.hubUserLocalpart, config.serverName),
    );
    const groupExtension = new RoomGroupExtension(kv, { history: roomStore, hubSender });
    const roomService = await RoomService.open({
      signingKey,
      store: roomStore,
      keys: keyRing,
      // The room's MLS group comes first: other extensions see only events it accepted.
      extensions: [groupExtension, ...(options.extensions ?? [])],
      onListenerError: (error) => log.error("an event subscriber failed", { error }),
    });
    const { eventAppended, federationError } = options.observe ?? {};
    if (eventAppended !== undefined) roomService.subscribe((notice) => eventAppended(notice.role));
    const client = new FederationClient({
      signingKey,
      resolver,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    // The queue and delivery report to the hub link, which needs them to exist first.
    const late: { hubLink?: HubLink } = {};
    const queue = await OutboundQueue.open(kv, {
      maxDepth: limits.queueMaxDepth,
      maxAgeMs: limits.queueMaxAgeMs,
      maxDeadLetters: limits.deadLettersPerDestination,
      onDeadLetter: (destination, items, why) => late.hubLink?.onDeadLetter(destination, items, why),
    });
    const delivery = new OutboundDelivery(queue, {
      send: (destination, txnId, body, signal) => sendTransaction(client, destination, txnId, body, signal),
      onResults: (destination, _txnId, results: Record<string, PduResult>, pduIds) =>
        late.hubLink!.onResults(destination, results, pduIds),
      onError: (destination, error, info) =>
        log.warn("delivery failed", { destination, error, attempt: info.attempt, retryInMs: info.retryInMs }),
      backoff: {
        baseMs: config.federation.retryBaseMs,
        capMs: config.federation.retryMaxMs,
        ...options.backoff,
      },
      deadLetterAfterRefusals: limits.queueRefusalsBeforeDeadLetter,
      maxRetryAfterMs: config.federation.retryAfterMaxMs,
      refusalMinSpanMs: limits.queueRefusalMinSpanMs,
    });
    const hubLink = new HubLink({ rooms: roomService, kv, queue, delivery, log: log.child("hub-link") });
    late.hubLink = hubLink;
    const transactions = new TransactionStore(kv, {
      retentionMs: limits.transactionRetentionMs,
      maxAnswers: limits.transactionMaxAnswers,
      log: log.child("transactions"),
    });
    const invites = new PendingInvites(kv, {
      maxPerUser: limits.pendingInvitesPerUser,
      maxTotal: limits.pendingInvitesTotal,
      maxAgeMs: limits.pendingInviteMaxAgeMs,
      maxStrippedStateBytes: limits.inviteRoomStateMaxBytes,
      log: log.child("invites"),
    });
    const localSends = new RateLimiter({
      ratePerSecond: limits.localSendsPerSecond,
      burst: limits.localSendBurst,
      maxKeys: limits.rateLimitMaxKeys,
    });
    const federationRequests = new RateLimiter({
      ratePerSecond: limits.federationRequestsPerSecond,
      burst: limits.federationRequestBurst,
      maxKeys: limits.rateLimitMaxKeys,
    });
    const joining = new Map<string, string>();
    const catchUp = new CatchUp({
      rooms: roomService,
      client,
      ensureEventKeys: (event: FullyFormedEvent) => ensureEventKeys(keyRing, event),
      log: log.child("catch-up"),
    });
    const pool = new KeyPackagePool(kv);
    const tokens = new BearerTokens(kv);
    const keyPackageApi = new KeyPackageApi({
      serverName: config.serverName,
      pool,
      tokens,
      service: new KeyPackageService(pool, tokens),
      log: log.child("key-packages"),
    });
    // KeyPackage claims over Oblivious HTTP: our gateway for other providers' clients, our relay
    // for our own (docs/protocol.md §12). The relay serves only the holders of this process's token.
    const gatewayKeys = await loadGatewayKeys(config.ohttp.keys, config.ohttp.overlapMs);
    const gateway = new OhttpGateway({
      serverName: config.serverName,
      keys: gatewayKeys,
      inner: (request) => keyPackageApi.onOhttpRequest(request),
      replay: new ReplayCache(config.ohttp.replayWindowMs, config.ohttp.replayCacheMaxEntries),
      startedAt: Date.now(),
    });
    const relayToken = randomBytes(32).toString("base64url");
    const relay = new OhttpRelay({
      serverName: config.serverName,
      clientToken: relayToken,
      limiter: new RateLimiter({
        ratePerSecond: config.ohttp.relayRequestsPerSecond,
        burst: config.ohttp.relayBurst,
        maxKeys: limits.rateLimitMaxKeys,
      }),
      canRoute: (name) => keyRing.canRoute(name),
      forward: async (target, body) => {
        const answer = await client.requestBytes(
          target,
          "POST",
          OHTTP_GATEWAY_PATH,
          body,
          MEDIA_OHTTP_REQUEST,
          {
            accept: MEDIA_OHTTP_RESPONSE,
            maxResponseBytes: MAX_ENCAPSULATED_RESPONSE_BYTES,
            timeoutMs: 30_000,
          },
        );
        return { status: answer.status, contentType: answer.contentType, body: answer.bytes };
      },
    });
    const relayTransport = options.fetch === undefined ? new NodeHttpTransport() : undefined;
    const lateProvider: { provider?: MimiProvider } = {};
    const relayBase = () =>
      options.ohttpRelayUrl ??
      `http://${loopbackOf(config.federation.bindAddress)}:${lateProvider.provider!.federationPort}`;
    const keyPackageClaims = new KeyPackageClient({
      serverName: config.serverName,
      client,
      pool,
      ohttp: new OhttpClaims({
        keys: keyRing,
        relay: {
          token: relayToken,
          url: (target) => new URL(`${OHTTP_RELAY_PATH}/${encodeURIComponent(target)}`, relayBase()),
        },
        transport: relayTransport?.send ?? fetchTransport(options.fetch!),
        claimPath: KEY_PACKAGE_CLAIM_PATH,
      }),
      plainClaims: config.mls.plainClaims,
      bundleClaims: config.mls.bundleClaims,
    });
    const lateAgent: { agent?: GroupAgent } = {};
    // Our EDUs (Welcomes) go through the same durable queues as PDUs.
    const edus: EduPort = {
      eduOps: (destination, edu) =>
        queue.enqueueOps(destination, [{ kind: "edu", id: randomBytes(12).toString("hex"), body: edu }]),
      wake: (destination) => delivery.wake(destination),
    };
    const welcomeRouter = new WelcomeRouter({
      serverName: config.serverName,
      kv,
      rooms: roomService,
      edus,
      log: log.child("welcomes"),
      onStored: (userId, commitEventId) => lateAgent.agent?.welcomeStored(userId, commitEventId),
    });
    const inbound = new Inbound({
      serverName: config.serverName,
      rooms: roomService,
      keyRing,
      client,
      transactions,
      invites,
      catchUp,
      log: log.child("inbound"),
      joiningHubOf: (roomId) => joining.get(roomId),
      onEdu: (origin, edu) => welcomeRouter.onEdu(origin, edu),
    });
    const rooms = new LocalRooms({
      serverName: config.serverName,
      signingKey,
      kv,
      rooms: roomService,
      hubLink,
      catchUp,
      client,
      invites,
      log: log.child("rooms"),
      admit: (userId) => localSends.check(userId),
      setJoining: (roomId, hub) => (hub === undefined ? joining.delete(roomId) : joining.set(roomId, hub)),
      reservedUser: hubSender.userId,
    });
    roomService.addAppendHook(fanOutHook(config.serverName, queue, delivery));
    roomService.subscribe(hubLink.onApplied);
    const agent = new GroupAgent({
      serverName: config.serverName,
      kv,
      rooms: roomService,
      groups: groupExtension,
      port: rooms,
      log: log.child("mls"),
      joinWaitMs: config.mls.joinWaitMs,
      hubSender,
      welcomes: {
        pool,
        claims: keyPackageClaims,
        router: welcomeRouter,
      },
    });
    lateAgent.agent = agent;
    if (config.mls.hostedClients) rooms.agent = agent;
    const provider = new MimiProvider(
      config,
      signingKey,
      kv,
      roomService,
      queue,
      delivery,
      keyRing,
      rooms,
      inbound,
      catchUp,
      hubLink,
      agent,
      log,
    );
    provider.admitFederation = (origin) => federationRequests.check(origin);
    if (federationError !== undefined) provider.onFederationError = federationError;
    lateProvider.provider = provider;
    provider.keyPackageApi = keyPackageApi;
    provider.keyPackageTokens = tokens;
    provider.ohttp = { keys: gatewayKeys, gateway, relay };
    provider.keyPackageClaims = keyPackageClaims;
    // KeyPackages are also topped up after each claim; this renews those nearing their expiry.
    const replenishing = setInterval(() => {
      pool.replenishAll().catch((error: unknown) => log.warn("cannot replenish KeyPackages", { error }));
    }, KEY_PACKAGE_REFRESH_MS);
    replenishing.unref();
    provider.background = [
      transactions,
      invites,
      { stop: async () => client.close() },
      { stop: async () => relayTransport?.close() },
      { stop: async () => clearInterval(replenishing) },
    ];
    transactions.start();
    invites.start();
    delivery.start();
    await provider.listen();
    if (config.mls.hostedClients) agent.start();
    log.info("provider started", {
      federation: `${config.federation.bindAddress}:${provider.federationPort}`,
      rooms: roomService.roomIds().length,
      keyId: signingKey.keyId,
    });
    return provider;
  }

  private admitFederation: (origin: string) => void = () => undefined;
  private onFederationError: (errcode: string, status: number) => void = () => undefined;
  private keyPackageApi: KeyPackageApi | undefined;
  private keyPackageTokens: BearerTokens | undefined;
  private ohttp: { keys: GatewayKeySet; gateway: OhttpGateway; relay: OhttpRelay } | undefined;
  /** How the hosted clients claim KeyPackages: over OHTTP through our relay (the benchmark uses it too). */
  keyPackageClaims!: KeyPackageClient;
  private background: { stop(): Promise<void> }[] = [];

  private async listen(): Promise<void> {
    const app = createFederationApp({
      handlers: this.inbound,
      serverName: this.serverName,
      signingKey: this.signingKey,
      oldVerifyKeys: this.config.oldVerifyKeys,
      keyRing: this.keyRing,
      admit: (origin) => this.admitFederation(origin),
      onAuthenticated: (origin) => this.delivery.peerReachedUs(origin),
      onError: (errcode, status) => {
        try {
          this.onFederationError(errcode, status);
        } catch (error) {
          this.log.error("the federation error observer failed", { error });
        }
      },
      ...(this.keyPackageApi === undefined
        ? {}
        : {
            mls: {
              prefix: MLS_FEDERATION_PREFIX,
              onDiscover: (origin: string, body: unknown) => this.keyPackageApi!.onDiscover(origin, body),
              onClaim: (origin: string, body: unknown) => this.keyPackageApi!.onClaim(origin, body),
            },
          }),
      ...(this.ohttp === undefined
        ? {}
        : {
            serverKeysFields: { [OHTTP_KEYS_FIELD]: encodeUnpaddedBase64(this.ohttp.keys.publishedBytes) },
            ohttp: {
              prefix: OHTTP_PREFIX,
              maxRequestBytes: MAX_ENCAPSULATED_REQUEST_BYTES,
              keys: () => this.ohttp!.keys.publishedBytes,
              gateway: (body: Uint8Array) => this.ohttp!.gateway.handle(body),
              relay: (target: string, authorization: string | undefined, body: Uint8Array) =>
                this.ohttp!.relay.handle(target, authorization, body),
            },
          }),
    });
    await new Promise<void>((resolve, reject) => {
      const server = createServer(app).listen(
        this.config.federation.port,
        this.config.federation.bindAddress,
        () => resolve(),
      );
      server.on("error", reject);
      this.httpServer = server;
    });
  }

  get federationPort(): number {
    const address = this.httpServer?.address();
    return typeof address === "object" && address !== null ? address.port : this.config.federation.port;
  }

  /** Each destination's outbound queue: how many items wait, and since when. */
  async queueBacklog(): Promise<QueueBacklog[]> {
    return Promise.all(
      this.queue.destinations().map(async (destination) => ({
        destination,
        depth: this.queue.depth(destination),
        oldestEnqueuedTs: await this.queue.oldestEnqueuedTs(destination),
      })),
    );
  }

  /**
   * Why the provider cannot serve (for `/health`): stopped, its store closed or failed, or rooms
   * stopped after a failed write; undefined while it runs.
   */
  unavailableReason(): string | undefined {
    if (this.stopped) return "the provider is stopped";
    const store = this.kv.unavailableReason?.();
    if (store !== undefined) return store;
    const stoppedRooms = this.roomService.stoppedRooms();
    if (stoppedRooms.length === 0) return undefined;
    const [first] = stoppedRooms;
    return (
      `${stoppedRooms.length} room(s) stopped after a storage failure (${first!.roomId}: ${first!.reason}); ` +
      "restart the provider"
    );
  }

  /** A durable feed of every room's events for one consumer (e.g. the bridge). */
  openFeed(consumer: string, options: EventFeedOptions = {}): Promise<EventFeed> {
    return EventFeed.open(this.kv, this.roomService, consumer, options);
  }

  /** Operator view: rooms and delivery queues. */
  readonly operator: OperatorView = {
    status: async () => {
      const queues: Record<string, number> = {};
      for (const destination of this.queue.destinations())
        queues[destination] = this.queue.depth(destination);
      return { server_name: this.serverName, rooms: this.roomService.roomIds().length, queues };
    },
    deadLetters: (destination, limit) => this.queue.deadLetters(destination, limit),
    retryDeadLetters: async (destination) => {
      const requeued = await this.queue.retryDeadLetters(destination);
      this.delivery.wake(destination);
      return requeued;
    },
    keyPackageTokens: async (userId) =>
      (await this.keyPackageTokens!.list(userId)).map((t) => ({
        token_id: t.id,
        requester: t.requester,
        issued_ts: t.issuedAt,
        expires_ts: t.expiresAt,
        revoked: t.revoked,
      })),
    revokeKeyPackageTokens: async (userId, tokenId) => {
      const tokens = this.keyPackageTokens!;
      if (tokenId === undefined) return tokens.revokeAll(userId);
      const owned = (await tokens.list(userId)).some((t) => t.id === tokenId && !t.revoked);
      return owned && (await tokens.revokeById(tokenId)) ? 1 : 0;
    },
  };

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.catchUp.stop();
    await this.mls.stop();
    await new Promise<void>((resolve) => {
      if (this.httpServer === undefined) return resolve();
      this.httpServer.close(() => resolve());
      this.httpServer.closeAllConnections();
    });
    await this.delivery.stop();
    await Promise.all(this.background.map((b) => b.stop()));
    this.hubLink.close();
    await this.catchUp.settle();
    await this.kv.close();
  }
}

async function sendTransaction(
  client: FederationClient,
  destination: string,
  txnId: string,
  body: SendBody,
  signal: AbortSignal,
): Promise<SendResponse> {
  const path = `/_matrix/federation/v2/send/${encodeURIComponent(txnId)}`;
  const payload = body.edus.length > 0 ? body : { pdus: body.pdus };
  const answer = checkAnswer(
    SEND_ANSWER,
    await client.request(destination, "PUT", path, payload, { signal }),
    destination,
    "send",
  );
  return { pdus: answer.pdus ?? {}, failed_pdus: answer.failed_pdus ?? {} };
}

/** The address our own clients reach the federation listener at. */
export function loopbackOf(bindAddress: string): string {
  if (bindAddress === "0.0.0.0") return "127.0.0.1";
  if (bindAddress === "::") return "[::1]";
  return bindAddress.includes(":") ? `[${bindAddress}]` : bindAddress;
}

/** With `.well-known` discovery turned off, only servers in the static routes are reachable. */
function staticRouteOnly(
  routes: Record<string, string>,
  serverName: string,
  resolver: Resolver,
): Promise<URL> {
  if (!Object.hasOwn(routes, serverName)) {
    return Promise.reject(
      new FederationError(
        404,
        "M_NOT_FOUND",
        `no route to ${serverName}: it is not in federation.static_routes and well_known is off`,
      ),
    );
  }
  return resolver.resolve(serverName);
}
