import { ConfigError, DEFAULT_LIMITS, DEFAULT_RETRY_AFTER_MAX_MS, parseConfig } from "../src/config/config";
import {
  DEFAULT_INVITE_MAX_AGE_MS,
  DEFAULT_MAX_INVITES_PER_USER,
  DEFAULT_MAX_INVITES_TOTAL,
  DEFAULT_MAX_STRIPPED_STATE_BYTES,
} from "../src/federation/pendingInvites";
import {
  DEFAULT_DEAD_LETTER_AFTER_REFUSALS,
  DEFAULT_MAX_DEAD_LETTERS,
  DEFAULT_MAX_RETRY_AFTER_MS,
  DEFAULT_QUEUE_MAX_AGE_MS,
  DEFAULT_QUEUE_MAX_DEPTH,
  DEFAULT_REFUSAL_MIN_SPAN_MS,
} from "../src/federation/queue";
import { DEFAULT_RATE_LIMIT_MAX_KEYS } from "../src/federation/rateLimit";
import {
  DEFAULT_MAX_TRANSACTION_ANSWERS,
  DEFAULT_TRANSACTION_RETENTION_MS,
} from "../src/federation/transactionStore";

const VALID = ["server_name: a.example", "federation:", "  port: 8448"];

describe("config", () => {
  it("fills defaults and resolves paths against the config's folder", () => {
    const config = parseConfig(VALID.join("\n"), "/srv/mimi");
    expect(config).toMatchObject({
      serverName: "a.example",
      federation: { bindAddress: "0.0.0.0", port: 8448, staticRoutes: {}, wellKnown: true },
      database: { engine: "leveldb", path: "/srv/mimi/data/db", durability: "fsync" },
      signingKeyPath: "/srv/mimi/data/signing.key",
      admin: undefined,
    });
  });

  it("defaults every limit to what the parts it configures default to", () => {
    const config = parseConfig(VALID.join("\n"), "/srv/mimi");
    expect(config.limits).toEqual(DEFAULT_LIMITS);
    expect(config.federation.retryAfterMaxMs).toBe(DEFAULT_RETRY_AFTER_MAX_MS);
    expect(DEFAULT_RETRY_AFTER_MAX_MS).toBe(DEFAULT_MAX_RETRY_AFTER_MS);
    expect(DEFAULT_LIMITS).toMatchObject({
      rateLimitMaxKeys: DEFAULT_RATE_LIMIT_MAX_KEYS,
      transactionRetentionMs: DEFAULT_TRANSACTION_RETENTION_MS,
      transactionMaxAnswers: DEFAULT_MAX_TRANSACTION_ANSWERS,
      pendingInvitesPerUser: DEFAULT_MAX_INVITES_PER_USER,
      pendingInvitesTotal: DEFAULT_MAX_INVITES_TOTAL,
      pendingInviteMaxAgeMs: DEFAULT_INVITE_MAX_AGE_MS,
      inviteRoomStateMaxBytes: DEFAULT_MAX_STRIPPED_STATE_BYTES,
      queueMaxDepth: DEFAULT_QUEUE_MAX_DEPTH,
      queueMaxAgeMs: DEFAULT_QUEUE_MAX_AGE_MS,
      queueRefusalsBeforeDeadLetter: DEFAULT_DEAD_LETTER_AFTER_REFUSALS,
      queueRefusalMinSpanMs: DEFAULT_REFUSAL_MIN_SPAN_MS,
      deadLettersPerDestination: DEFAULT_MAX_DEAD_LETTERS,
      keyRingMaxServers: 10_000,
      keyFetchMinIntervalMs: 30_000,
    });
  });

  it("reads the limits section", () => {
    const text = [
      ...VALID,
      "  retry_after_max_ms: 60000",
      "limits:",
      "  federation_requests_per_second: 0.5",
      "  federation_request_burst: 3",
      "  local_sends_per_second: 2",
      "  local_send_burst: 4",
      "  rate_limit_max_keys: 500",
      "  transaction_retention_ms: 86400000",
      "  transaction_max_answers: 1000",
      "  pending_invites_per_user: 5",
      "  pending_invites_total: 50",
      "  pending_invite_max_age_ms: 3600000",
      "  invite_room_state_max_bytes: 4096",
      "  queue_max_depth: 10",
      "  queue_max_age_ms: 600000",
      "  queue_refusals_before_dead_letter: 1",
      "  queue_refusal_min_span_ms: 0",
      "  dead_letters_per_destination: 7",
      "  key_ring_max_servers: 20",
      "  key_fetch_min_interval_ms: 1000",
    ].join("\n");
    const config = parseConfig(text, "/srv");
    expect(config.federation.retryAfterMaxMs).toBe(60_000);
    expect(config.limits).toEqual({
      federationRequestsPerSecond: 0.5,
      federationRequestBurst: 3,
      localSendsPerSecond: 2,
      localSendBurst: 4,
      rateLimitMaxKeys: 500,
      transactionRetentionMs: 86_400_000,
      transactionMaxAnswers: 1000,
      pendingInvitesPerUser: 5,
      pendingInvitesTotal: 50,
      pendingInviteMaxAgeMs: 3_600_000,
      inviteRoomStateMaxBytes: 4096,
      queueMaxDepth: 10,
      queueMaxAgeMs: 600_000,
      queueRefusalsBeforeDeadLetter: 1,
      queueRefusalMinSpanMs: 0,
      deadLettersPerDestination: 7,
      keyRingMaxServers: 20,
      keyFetchMinIntervalMs: 1000,
    });
  });

  it("keeps the defaults of limits left out", () => {
    const config = parseConfig([...VALID, "limits: { queue_max_depth: 5 }"].join("\n"), "/srv");
    expect(config.limits).toEqual({ ...DEFAULT_LIMITS, queueMaxDepth: 5 });
  });

  it.each([
    ["an unknown limit", "limits: { queue_depth: 5 }", /limits: unknown key "queue_depth"/],
    [
      "a rate of 0",
      "limits: { federation_requests_per_second: 0 }",
      /limits.federation_requests_per_second: must be > 0/,
    ],
    ["a fractional burst", "limits: { local_send_burst: 1.5 }", /limits.local_send_burst: must be integer/],
    [
      "a burst of 0",
      "limits: { federation_request_burst: 0 }",
      /limits.federation_request_burst: must be >= 1/,
    ],
    ["a string", "limits: { queue_max_depth: lots }", /limits.queue_max_depth: must be integer/],
    [
      "a negative span",
      "limits: { queue_refusal_min_span_ms: -1 }",
      /limits.queue_refusal_min_span_ms: must be >= 0/,
    ],
    [
      "a retention under a minute",
      "limits: { transaction_retention_ms: 10 }",
      /limits.transaction_retention_ms: must be >= 60000/,
    ],
    [
      "a tiny stripped-state cap",
      "limits: { invite_room_state_max_bytes: 10 }",
      /limits.invite_room_state_max_bytes/,
    ],
    [
      "more invites per user than in all",
      "limits: { pending_invites_per_user: 20, pending_invites_total: 10 }",
      /limits.pending_invites_per_user: 20 is more than limits.pending_invites_total \(10\)/,
    ],
  ])("refuses %s in limits, naming the key", (_what, line, message) => {
    const text = [...VALID, line].join("\n");
    expect(() => parseConfig(text, "/srv")).toThrow(ConfigError);
    expect(() => parseConfig(text, "/srv")).toThrow(message);
  });

  it("refuses a bad retry_after_max_ms, naming it", () => {
    const text = [...VALID, "  retry_after_max_ms: -5"].join("\n");
    expect(() => parseConfig(text, "/srv")).toThrow(/federation.retry_after_max_ms: must be >= 0/);
  });

  it.each([
    ["not YAML", "server_name: [", /not valid YAML/],
    ["a missing key", "server_name: a.example", /missing required key "federation"/],
    ["an unknown key", [...VALID, "databse: {}"].join("\n"), /unknown key "databse"/],
    ["a nested unknown key", [...VALID, "  prot: 1"].join("\n"), /federation: unknown key "prot"/],
    [
      "a port out of range",
      "server_name: a.example\nfederation:\n  port: 70000",
      /federation.port: must be <= 65535/,
    ],
    ["a bad durability", [...VALID, "database: { durability: maybe }"].join("\n"), /database.durability/],
    [
      "an invalid server name",
      "server_name: 'a..example'\nfederation:\n  port: 1",
      /server_name: "a..example" is not a valid/,
    ],
    [
      "a bad static route",
      [...VALID, "  static_routes: { b.example: 'ftp://x' }"].join("\n"),
      /static_routes.b.example/,
    ],
    [
      "the sample's placeholder admin token",
      [...VALID, "admin_api: { port: 1, token: CHANGE_ME_to_a_long_random_secret }"].join("\n"),
      /admin_api.token: still the placeholder/,
    ],
    [
      "a bad old key",
      [...VALID, "old_verify_keys: { 'ed25519:x': { key: 'nope', expired_ts: 1 } }"].join("\n"),
      /old_verify_keys/,
    ],
    [
      "PostgreSQL settings for LevelDB",
      [...VALID, "database: { url: 'postgres://x@127.0.0.1/db' }"].join("\n"),
      /database.url: only for engine postgres/,
    ],
    [
      "a folder for PostgreSQL",
      [...VALID, "database: { engine: postgres, path: db, url: 'postgres://x@h/db' }"].join("\n"),
      /database.path: only for engine leveldb/,
    ],
    [
      "PostgreSQL without a URL",
      [...VALID, "database: { engine: postgres }"].join("\n"),
      /database.url: required/,
    ],
    [
      "a URL that is not PostgreSQL's",
      [...VALID, "database: { engine: postgres, url: 'mysql://h/db' }"].join("\n"),
      /database.url: must be a postgres:\/\/ connection URL/,
    ],
    [
      "a schema name PostgreSQL would need quoted",
      [...VALID, "database: { engine: postgres, url: 'postgres://h/db', schema: 'Mimi-1' }"].join("\n"),
      /database.schema/,
    ],
    ["an unknown engine", [...VALID, "database: { engine: sqlite }"].join("\n"), /database.engine/],
    [
      "a cluster on LevelDB",
      [...VALID, "database: { cluster: { lease_ms: 5000 } }"].join("\n"),
      /database.cluster: only for engine postgres/,
    ],
    [
      "a lease under a second",
      [...VALID, "database: { engine: postgres, url: 'postgres://h/db', cluster: { lease_ms: 10 } }"].join(
        "\n",
      ),
      /database.cluster.lease_ms/,
    ],
    [
      "an unknown cluster setting",
      [...VALID, "database: { engine: postgres, url: 'postgres://h/db', cluster: { leader: true } }"].join(
        "\n",
      ),
      /database.cluster/,
    ],
  ])("refuses %s, naming it", (_what, text, message) => {
    expect(() => parseConfig(text, "/srv")).toThrow(ConfigError);
    expect(() => parseConfig(text, "/srv")).toThrow(message);
  });

  it("reads a PostgreSQL database's settings, with defaults for the pool and schema", () => {
    const url = "postgres://mimi@127.0.0.1:5432/mimi";
    expect(
      parseConfig([...VALID, `database: { engine: postgres, url: '${url}' }`].join("\n"), "/srv").database,
    ).toEqual({ engine: "postgres", url, poolSize: 10, schema: "public", durability: "fsync" });
    const set =
      "database: { engine: postgres, url: 'postgresql://h/db', pool_size: 4, schema: mimi_a, durability: os }";
    expect(parseConfig([...VALID, set].join("\n"), "/srv").database).toEqual({
      engine: "postgres",
      url: "postgresql://h/db",
      poolSize: 4,
      schema: "mimi_a",
      durability: "os",
    });
  });

  it("reads a cluster's settings, with a 10 s lease by default", () => {
    const url = "postgres://h/db";
    const parse = (cluster: string) =>
      parseConfig(
        [...VALID, `database: { engine: postgres, url: '${url}', cluster: ${cluster} }`].join("\n"),
        "/srv",
      ).database;
    expect(parse("{}")).toMatchObject({
      cluster: {
        leaseMs: 10_000,
        processName: undefined,
        federationUrl: undefined,
        adminUrl: undefined,
        appserviceUrl: undefined,
      },
    });
    expect(
      parse(
        "{ lease_ms: 3000, process_name: node-1, federation_url: 'http://10.0.0.1:8448', admin_url: 'http://10.0.0.1:8009' }",
      ),
    ).toMatchObject({
      cluster: {
        leaseMs: 3000,
        processName: "node-1",
        federationUrl: "http://10.0.0.1:8448",
        adminUrl: "http://10.0.0.1:8009",
      },
    });
  });
});

describe("config: OHTTP (KeyPackages over Oblivious HTTP)", () => {
  it("defaults to one gateway key, OHTTP-only claims and no bundling", () => {
    const config = parseConfig(VALID.join("\n"), "/srv/mimi");
    expect(config.ohttp).toEqual({
      keys: [{ keyId: 1, privateKeyPath: "/srv/mimi/data/ohttp-1.key" }],
      overlapMs: 86_400_000,
      replayWindowMs: 60_000,
      replayCacheMaxEntries: 100_000,
      relayRequestsPerSecond: 20,
      relayBurst: 50,
    });
    expect(config.mls).toMatchObject({ plainClaims: false, bundleClaims: false });
  });

  it("reads a rotation: a current key and a retired one", () => {
    const text = [
      ...VALID,
      "ohttp:",
      "  keys:",
      "    - { key_id: 2, private_key_path: k2 }",
      "    - { key_id: 1, private_key_path: k1, retired_ts: 1767225600000 }",
      "  overlap_ms: 3600000",
    ].join("\n");
    expect(parseConfig(text, "/srv").ohttp).toMatchObject({
      keys: [
        { keyId: 2, privateKeyPath: "/srv/k2" },
        { keyId: 1, privateKeyPath: "/srv/k1", retiredTs: 1767225600000 },
      ],
      overlapMs: 3_600_000,
    });
  });

  it.each([
    [
      "a key ID used twice",
      "    - { key_id: 1, private_key_path: a }\n    - { key_id: 1, private_key_path: b }",
      /listed twice/,
    ],
    ["only retired keys", "    - { key_id: 1, private_key_path: a, retired_ts: 1 }", /every key is retired/],
    ["a key ID above 255", "    - { key_id: 256, private_key_path: a }", /key_id/],
  ])("refuses %s", (_what, keys, message) => {
    const text = [...VALID, "ohttp:", "  keys:", keys].join("\n");
    expect(() => parseConfig(text, "/srv")).toThrow(message);
  });
});
