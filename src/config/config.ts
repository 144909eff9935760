import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import Ajv, { type ErrorObject } from "ajv";
import yaml from "js-yaml";
import { VerifyKey } from "../events/signingKey";
import { isValidKeyId, isValidServerName } from "../identifiers";
import { CONFIG_SCHEMA } from "./schema";

/**
 * Where the provider keeps everything. `durability`: `fsync` waits for each batch to reach the
 * disk (survives power loss); `os` waits only until the database has it (survives a killed
 * process: LevelDB's OS buffers, PostgreSQL's `synchronous_commit = off`).
 */
export type DatabaseConfig =
  | { engine: "leveldb"; path: string; durability: "fsync" | "os" }
  | {
      engine: "postgres";
      /** A libpq connection URL; what it leaves out (e.g. the password) comes from PG* variables. */
      url: string;
      poolSize: number;
      /** The PostgreSQL schema holding the tables, so one database can hold several providers. */
      schema: string;
      durability: "fsync" | "os";
      /** Several processes of this provider on this schema, one active at a time; none: this process holds it alone. */
      cluster?: ClusterConfig;
    };

/** database.cluster: see docs/architecture.md "Several processes of one provider". */
export interface ClusterConfig {
  /** How long the active process's lease lasts without renewal (ms). */
  leaseMs: number;
  /** This process's name in the lease rows and logs. */
  processName: string | undefined;
  /** Where the other processes reach this one's listeners when it is active, by kind; unset: its loopback address. */
  federationUrl: string | undefined;
  adminUrl: string | undefined;
  appserviceUrl: string | undefined;
}

export interface ProviderConfig {
  /** Our MIMI server name: the part after ':' in our users' and rooms' IDs. */
  serverName: string;
  federation: {
    bindAddress: string;
    port: number;
    /** Server name -> base URL, used before `.well-known` (loopback set-ups need it). */
    staticRoutes: Record<string, string>;
    wellKnown: boolean;
    /** Delivery retries: exponential backoff with full jitter from `retryBaseMs` up to `retryMaxMs`. */
    retryBaseMs: number;
    retryMaxMs: number;
    /** A peer's `retry_after_ms` / `Retry-After` is waited at least, beyond `retryMaxMs`, up to this. */
    retryAfterMaxMs: number;
  };
  limits: Limits;
  database: DatabaseConfig;
  signingKeyPath: string;
  /** Keys we signed with before a rotation: still published, so what they signed still verifies. */
  oldVerifyKeys: { keyId: string; publicKeyBase64: string; expiredTs: number }[];
  admin: { bindAddress: string; port: number; token: string } | undefined;
  logging: { level: "debug" | "info" | "warn" | "error" };
  /** The Prometheus metrics and health listener (`GET /metrics`, `GET /health`); none without it. */
  metrics: { bindAddress: string; port: number } | undefined;
  /** The Matrix side: the homeserver this provider serves as an application service; none without it. */
  matrix: MatrixConfig | undefined;
  mls: {
    /**
     * Local users get hosted MLS clients that follow every room's group, establish it, join it,
     * remove departed users and encrypt and decrypt messages. Off: this provider sequences and
     * relays rooms' events but takes part in no group, and sends no messages of its users.
     */
    hostedClients: boolean;
    /** How long a message waits for its sender's client to be in the room's group. */
    joinWaitMs: number;
    /**
     * The localpart of this provider's own user: the credential of the hub as MLS external
     * sender, and the sender of its Remove proposals. Reserved: no one acts as it through the rooms API.
     */
    hubUserLocalpart: string;
    /**
     * Our clients claim other providers' KeyPackages over OHTTP only; with this, they use the
     * plain claim endpoint for a provider that publishes no OHTTP key configuration.
     */
    plainClaims: boolean;
    /** Claims for several users of one provider go in one request, linking those users for it. */
    bundleClaims: boolean;
  };
  /** The OHTTP gateway's keys and the relay's limits (RFC 9458; docs/protocol.md §12). */
  ohttp: OhttpConfig;
}

export interface OhttpConfig {
  /** The gateway's HPKE keys; those without `retiredTs` are published. */
  keys: { keyId: number; privateKeyPath: string; retiredTs?: number }[];
  /** How long a retired key still opens requests after its `retiredTs`. */
  overlapMs: number;
  /** A request's Date must be this close to our clock; its `enc` is remembered twice as long. */
  replayWindowMs: number;
  replayCacheMaxEntries: number;
  /** The relay's token bucket per target server. */
  relayRequestsPerSecond: number;
  relayBurst: number;
}

export interface MatrixConfig {
  /** The homeserver's client-server API base URL, without a trailing slash. */
  homeserverUrl: string;
  /** The homeserver's server_name: the domain of its users, of the bot and of the ghosts. */
  domain: string;
  appservice: {
    id: string;
    bindAddress: string;
    port: number;
    /** The registration file: written by `-r`, read and checked at start-up. */
    registrationPath: string;
    senderLocalpart: string;
    userPrefix: string;
    aliasPrefix: string;
    /**
     * Who may use the bridge: `*`, a homeserver domain or a Matrix user ID -> level; the most
     * specific entry wins (src/bridge/permissions.ts). Default: the homeserver's domain -> `user`.
     */
    permissions: Record<string, PermissionLevel>;
  };
}

/** `none`: may not use the bridge; `user`: create, join, invite and chat; `admin`: also admin commands. */
export type PermissionLevel = "none" | "user" | "admin";

/** Bounds on what peers and local users can make this server hold or do; see config.sample.yaml. */
export interface Limits {
  /** Token bucket per authenticated origin, over the endpoints LM-04 marks rate-limited. */
  federationRequestsPerSecond: number;
  federationRequestBurst: number;
  /** Token bucket per local user, over the room actions they take. */
  localSendsPerSecond: number;
  localSendBurst: number;
  /** Keys each rate limiter tracks at once. */
  rateLimitMaxKeys: number;
  /** Inbound transaction answers (LM-04 §Transaction Identifiers): kept at least this long, at most this many. */
  transactionRetentionMs: number;
  transactionMaxAnswers: number;
  /** Invites for local users to rooms we do not follow. */
  pendingInvitesPerUser: number;
  pendingInvitesTotal: number;
  pendingInviteMaxAgeMs: number;
  inviteRoomStateMaxBytes: number;
  /** Outbound queues: per destination, then the dead letters. */
  queueMaxDepth: number;
  queueMaxAgeMs: number;
  queueRefusalsBeforeDeadLetter: number;
  queueRefusalMinSpanMs: number;
  deadLettersPerDestination: number;
  /** Other servers' keys. */
  keyRingMaxServers: number;
  keyFetchMinIntervalMs: number;
}

const DAY_MS = 24 * 60 * 60 * 1000;

export const DEFAULT_LIMITS: Readonly<Limits> = {
  federationRequestsPerSecond: 50,
  federationRequestBurst: 100,
  localSendsPerSecond: 10,
  localSendBurst: 50,
  rateLimitMaxKeys: 10_000,
  transactionRetentionMs: 7 * DAY_MS,
  transactionMaxAnswers: 1_000_000,
  pendingInvitesPerUser: 100,
  pendingInvitesTotal: 10_000,
  pendingInviteMaxAgeMs: 30 * DAY_MS,
  inviteRoomStateMaxBytes: 65_536,
  queueMaxDepth: 100_000,
  queueMaxAgeMs: 7 * DAY_MS,
  queueRefusalsBeforeDeadLetter: 3,
  queueRefusalMinSpanMs: 5 * 60 * 1000,
  deadLettersPerDestination: 100_000,
  keyRingMaxServers: 10_000,
  keyFetchMinIntervalMs: 30_000,
};

export const DEFAULT_RETRY_AFTER_MAX_MS = 60 * 60 * 1000;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

interface RawConfig {
  server_name: string;
  federation: {
    bind_address?: string;
    port: number;
    static_routes?: Record<string, string>;
    well_known?: boolean;
    retry_base_ms?: number;
    retry_max_ms?: number;
    retry_after_max_ms?: number;
  };
  limits?: Partial<Record<RawLimitKey, number>>;
  database?: {
    engine?: "leveldb" | "postgres";
    path?: string;
    durability?: "fsync" | "os";
    url?: string;
    pool_size?: number;
    schema?: string;
    cluster?: {
      lease_ms?: number;
      process_name?: string;
      federation_url?: string;
      admin_url?: string;
      appservice_url?: string;
    };
  };
  signing_key_path?: string;
  old_verify_keys?: Record<string, { key: string; expired_ts: number }>;
  admin_api?: { bind_address?: string; port: number; token: string };
  logging?: { level?: "debug" | "info" | "warn" | "error" };
  metrics?: { bind_address?: string; port: number };
  mls?: {
    hosted_clients?: boolean;
    join_wait_ms?: number;
    hub_user?: string;
    plain_claims?: boolean;
    bundle_claims?: boolean;
  };
  ohttp?: {
    keys?: { key_id: number; private_key_path: string; retired_ts?: number }[];
    overlap_ms?: number;
    replay_window_ms?: number;
    replay_cache_max_entries?: number;
    relay_requests_per_second?: number;
    relay_burst?: number;
  };
  homeserver?: { url: string; domain?: string };
  appservice?: {
    id?: string;
    bind_address?: string;
    port?: number;
    registration?: string;
    sender_localpart?: string;
    user_prefix?: string;
    alias_prefix?: string;
    permissions?: Record<string, PermissionLevel>;
  };
}

type RawLimitKey =
  | "federation_requests_per_second"
  | "federation_request_burst"
  | "local_sends_per_second"
  | "local_send_burst"
  | "rate_limit_max_keys"
  | "transaction_retention_ms"
  | "transaction_max_answers"
  | "pending_invites_per_user"
  | "pending_invites_total"
  | "pending_invite_max_age_ms"
  | "invite_room_state_max_bytes"
  | "queue_max_depth"
  | "queue_max_age_ms"
  | "queue_refusals_before_dead_letter"
  | "queue_refusal_min_span_ms"
  | "dead_letters_per_destination"
  | "key_ring_max_servers"
  | "key_fetch_min_interval_ms";

const LIMIT_KEYS: Record<RawLimitKey, keyof Limits> = {
  federation_requests_per_second: "federationRequestsPerSecond",
  federation_request_burst: "federationRequestBurst",
  local_sends_per_second: "localSendsPerSecond",
  local_send_burst: "localSendBurst",
  rate_limit_max_keys: "rateLimitMaxKeys",
  transaction_retention_ms: "transactionRetentionMs",
  transaction_max_answers: "transactionMaxAnswers",
  pending_invites_per_user: "pendingInvitesPerUser",
  pending_invites_total: "pendingInvitesTotal",
  pending_invite_max_age_ms: "pendingInviteMaxAgeMs",
  invite_room_state_max_bytes: "inviteRoomStateMaxBytes",
  queue_max_depth: "queueMaxDepth",
  queue_max_age_ms: "queueMaxAgeMs",
  queue_refusals_before_dead_letter: "queueRefusalsBeforeDeadLetter",
  queue_refusal_min_span_ms: "queueRefusalMinSpanMs",
  dead_letters_per_destination: "deadLettersPerDestination",
  key_ring_max_servers: "keyRingMaxServers",
  key_fetch_min_interval_ms: "keyFetchMinIntervalMs",
};

function parseLimits(raw: Partial<Record<RawLimitKey, number>>): Limits {
  const limits: Limits = { ...DEFAULT_LIMITS };
  for (const [key, field] of Object.entries(LIMIT_KEYS) as [RawLimitKey, keyof Limits][]) {
    const value = raw[key];
    if (value !== undefined) limits[field] = value;
  }
  if (limits.pendingInvitesPerUser > limits.pendingInvitesTotal) {
    throw new ConfigError(
      `limits.pending_invites_per_user: ${limits.pendingInvitesPerUser} is more than limits.pending_invites_total (${limits.pendingInvitesTotal})`,
    );
  }
  return limits;
}

const ajv = new Ajv({ allErrors: true, strict: true });
const validate = ajv.compile<RawConfig>(CONFIG_SCHEMA);

function describe(error: ErrorObject): string {
  const where = error.instancePath === "" ? "(top level)" : error.instancePath.slice(1).replace(/\//g, ".");
  if (error.keyword === "additionalProperties") {
    return `${where}: unknown key "${(error.params as { additionalProperty: string }).additionalProperty}"`;
  }
  if (error.keyword === "required") {
    return `${where}: missing required key "${(error.params as { missingProperty: string }).missingProperty}"`;
  }
  if (error.keyword === "enum") {
    return `${where}: must be one of ${(error.params as { allowedValues: unknown[] }).allowedValues.join(", ")}`;
  }
  return `${where}: ${error.message ?? "is invalid"}`;
}

/** Parses and checks a config document; every problem is named by its key. */
export function parseConfig(text: string, baseDir: string): ProviderConfig {
  let raw: unknown;
  try {
    raw = yaml.load(text);
  } catch (err) {
    throw new ConfigError(`config is not valid YAML: ${(err as Error).message}`);
  }
  if (!validate(raw)) {
    const problems = (validate.errors ?? []).map(describe);
    throw new ConfigError(`config is invalid:\n  - ${problems.join("\n  - ")}`);
  }
  if (!isValidServerName(raw.server_name)) {
    throw new ConfigError(`server_name: ${JSON.stringify(raw.server_name)} is not a valid server name`);
  }
  for (const [name, url] of Object.entries(raw.federation.static_routes ?? {})) {
    if (!isValidServerName(name))
      throw new ConfigError(`federation.static_routes: invalid server name ${JSON.stringify(name)}`);
    if (!/^https?:\/\/[^/]+\/?$/.test(url)) {
      throw new ConfigError(
        `federation.static_routes.${name}: expected a base URL like http://127.0.0.1:8448, got ${JSON.stringify(url)}`,
      );
    }
  }
  if (raw.admin_api !== undefined && /^(CHANGE_ME|changeme|placeholder)/i.test(raw.admin_api.token)) {
    throw new ConfigError(
      "admin_api.token: still the placeholder from the sample config; set a random secret",
    );
  }
  if (raw.appservice !== undefined && raw.homeserver === undefined) {
    throw new ConfigError("appservice: given without homeserver; add homeserver.url, or leave both out");
  }
  return {
    serverName: raw.server_name,
    federation: {
      bindAddress: raw.federation.bind_address ?? "0.0.0.0",
      port: raw.federation.port,
      staticRoutes: raw.federation.static_routes ?? {},
      wellKnown: raw.federation.well_known ?? true,
      retryBaseMs: raw.federation.retry_base_ms ?? 250,
      retryMaxMs: raw.federation.retry_max_ms ?? 300_000,
      retryAfterMaxMs: raw.federation.retry_after_max_ms ?? DEFAULT_RETRY_AFTER_MAX_MS,
    },
    limits: parseLimits(raw.limits ?? {}),
    database: parseDatabase(raw.database ?? {}, baseDir),
    signingKeyPath: resolve(baseDir, raw.signing_key_path ?? "data/signing.key"),
    oldVerifyKeys: Object.entries(raw.old_verify_keys ?? {}).map(([keyId, old]) => {
      if (!isValidKeyId(keyId))
        throw new ConfigError(`old_verify_keys: ${JSON.stringify(keyId)} is not a key ID like ed25519:abc`);
      if (VerifyKey.fromBase64(old.key) === undefined) {
        throw new ConfigError(`old_verify_keys.${keyId}.key: not an unpadded base64 ed25519 public key`);
      }
      return { keyId, publicKeyBase64: old.key, expiredTs: old.expired_ts };
    }),
    admin:
      raw.admin_api === undefined
        ? undefined
        : {
            bindAddress: raw.admin_api.bind_address ?? "127.0.0.1",
            port: raw.admin_api.port,
            token: raw.admin_api.token,
          },
    logging: { level: raw.logging?.level ?? "info" },
    metrics:
      raw.metrics === undefined
        ? undefined
        : { bindAddress: raw.metrics.bind_address ?? "127.0.0.1", port: raw.metrics.port },
    matrix: raw.homeserver === undefined ? undefined : matrixConfig(raw, baseDir),
    mls: {
      hostedClients: raw.mls?.hosted_clients ?? true,
      joinWaitMs: raw.mls?.join_wait_ms ?? 15_000,
      hubUserLocalpart: raw.mls?.hub_user ?? "mimi-hub",
      plainClaims: raw.mls?.plain_claims ?? false,
      bundleClaims: raw.mls?.bundle_claims ?? false,
    },
    ohttp: ohttpConfig(raw, baseDir),
  };
}

function ohttpConfig(raw: RawConfig, baseDir: string): OhttpConfig {
  const section = raw.ohttp ?? {};
  const keys = (section.keys ?? [{ key_id: 1, private_key_path: "data/ohttp-1.key" }]).map((key) => ({
    keyId: key.key_id,
    privateKeyPath: resolve(baseDir, key.private_key_path),
    ...(key.retired_ts === undefined ? {} : { retiredTs: key.retired_ts }),
  }));
  const ids = new Set<number>();
  for (const key of keys) {
    if (ids.has(key.keyId)) throw new ConfigError(`ohttp.keys: key_id ${key.keyId} is listed twice`);
    ids.add(key.keyId);
  }
  if (keys.every((key) => key.retiredTs !== undefined)) {
    throw new ConfigError("ohttp.keys: every key is retired; add a current key (one without retired_ts)");
  }
  return {
    keys,
    overlapMs: section.overlap_ms ?? 24 * 60 * 60 * 1000,
    replayWindowMs: section.replay_window_ms ?? 60_000,
    replayCacheMaxEntries: section.replay_cache_max_entries ?? 100_000,
    relayRequestsPerSecond: section.relay_requests_per_second ?? 20,
    relayBurst: section.relay_burst ?? 50,
  };
}

function matrixConfig(raw: RawConfig, baseDir: string): MatrixConfig {
  const homeserver = raw.homeserver!;
  const domain = homeserver.domain ?? raw.server_name;
  if (!isValidServerName(domain)) {
    throw new ConfigError(`homeserver.domain: ${JSON.stringify(domain)} is not a valid server name`);
  }
  const appservice = raw.appservice ?? {};
  const userPrefix = appservice.user_prefix ?? "_mimi_";
  const senderLocalpart = appservice.sender_localpart ?? "_mimi_bot";
  const hubUser = raw.mls?.hub_user ?? "mimi-hub";
  if (hubUser.startsWith(userPrefix) || senderLocalpart === hubUser) {
    throw new ConfigError(
      `mls.hub_user: ${JSON.stringify(hubUser)} falls in the appservice's namespace (appservice.user_prefix, sender_localpart); pick another`,
    );
  }
  return {
    homeserverUrl: homeserver.url.replace(/\/$/, ""),
    domain,
    appservice: {
      id: appservice.id ?? "mimi",
      bindAddress: appservice.bind_address ?? "127.0.0.1",
      port: appservice.port ?? 9000,
      registrationPath: resolve(baseDir, appservice.registration ?? "registration.yaml"),
      senderLocalpart,
      userPrefix,
      aliasPrefix: appservice.alias_prefix ?? "_mimi_",
      permissions: permissionsOf(appservice.permissions, domain),
    },
  };
}

/** `appservice.permissions`: every key `*`, a server name or a Matrix user ID `@localpart:server`. */
function permissionsOf(
  raw: Record<string, PermissionLevel> | undefined,
  domain: string,
): Record<string, PermissionLevel> {
  if (raw === undefined) return { [domain]: "user" };
  for (const key of Object.keys(raw)) {
    const user = /^@[^:\s]+:(.+)$/.exec(key);
    if (key === "*" || (user !== null ? isValidServerName(user[1]!) : isValidServerName(key))) continue;
    throw new ConfigError(
      `appservice.permissions: ${JSON.stringify(key)} is not "*", a server name (example.org) or a Matrix user ID (@alice:example.org)`,
    );
  }
  return { ...raw };
}

export function loadConfig(path: string): ProviderConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  return parseConfig(text, dirname(resolve(path)));
}

function parseDatabase(raw: NonNullable<RawConfig["database"]>, baseDir: string): DatabaseConfig {
  const durability = raw.durability ?? "fsync";
  if ((raw.engine ?? "leveldb") === "leveldb") {
    for (const key of ["url", "pool_size", "schema", "cluster"] as const) {
      if (raw[key] !== undefined)
        throw new ConfigError(`database.${key}: only for engine postgres (this database is LevelDB)`);
    }
    return { engine: "leveldb", path: resolve(baseDir, raw.path ?? "data/db"), durability };
  }
  if (raw.path !== undefined)
    throw new ConfigError("database.path: only for engine leveldb; PostgreSQL is reached at database.url");
  if (raw.url === undefined)
    throw new ConfigError(
      "database.url: required for engine postgres, e.g. postgres://mimi@127.0.0.1:5432/mimi",
    );
  if (!/^postgres(ql)?:\/\//.test(raw.url))
    throw new ConfigError("database.url: must be a postgres:// connection URL");
  const cluster = raw.cluster;
  return {
    engine: "postgres",
    url: raw.url,
    poolSize: raw.pool_size ?? 10,
    schema: raw.schema ?? "public",
    durability,
    ...(cluster === undefined
      ? {}
      : {
          cluster: {
            leaseMs: cluster.lease_ms ?? 10_000,
            processName: cluster.process_name,
            federationUrl: cluster.federation_url,
            adminUrl: cluster.admin_url,
            appserviceUrl: cluster.appservice_url,
          },
        }),
  };
}
