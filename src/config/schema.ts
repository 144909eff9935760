const count = (maximum: number) => ({ type: "integer", minimum: 1, maximum }) as const;
const ms = (minimum: number, maximum: number) => ({ type: "integer", minimum, maximum }) as const;
const rate = { type: "number", exclusiveMinimum: 0, maximum: 1_000_000 } as const;
const DAY_MS = 86_400_000;

/** JSON schema of the config file; config.sample.yaml documents every key. */
export const CONFIG_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["server_name", "federation"],
  properties: {
    server_name: { type: "string", minLength: 1 },
    federation: {
      type: "object",
      additionalProperties: false,
      required: ["port"],
      properties: {
        bind_address: { type: "string", minLength: 1 },
        port: { type: "integer", minimum: 0, maximum: 65535 },
        static_routes: { type: "object", additionalProperties: { type: "string" } },
        well_known: { type: "boolean" },
        retry_base_ms: { type: "integer", minimum: 10, maximum: 600000 },
        retry_max_ms: { type: "integer", minimum: 100, maximum: 86400000 },
        retry_after_max_ms: ms(0, DAY_MS),
      },
    },
    limits: {
      type: "object",
      additionalProperties: false,
      properties: {
        federation_requests_per_second: rate,
        federation_request_burst: count(1_000_000),
        local_sends_per_second: rate,
        local_send_burst: count(1_000_000),
        rate_limit_max_keys: count(10_000_000),
        transaction_retention_ms: ms(60_000, 365 * DAY_MS),
        transaction_max_answers: count(100_000_000),
        pending_invites_per_user: count(1_000_000),
        pending_invites_total: count(100_000_000),
        pending_invite_max_age_ms: ms(60_000, 365 * DAY_MS),
        invite_room_state_max_bytes: { type: "integer", minimum: 1024, maximum: 4_194_304 },
        queue_max_depth: count(100_000_000),
        queue_max_age_ms: ms(60_000, 365 * DAY_MS),
        queue_refusals_before_dead_letter: count(1_000_000),
        queue_refusal_min_span_ms: ms(0, 30 * DAY_MS),
        dead_letters_per_destination: count(100_000_000),
        key_ring_max_servers: count(100_000_000),
        key_fetch_min_interval_ms: ms(0, DAY_MS),
      },
    },
    database: {
      type: "object",
      additionalProperties: false,
      properties: {
        engine: { enum: ["leveldb", "postgres"] },
        path: { type: "string", minLength: 1 },
        durability: { enum: ["fsync", "os"] },
        url: { type: "string", minLength: 1 },
        pool_size: { type: "integer", minimum: 1, maximum: 1000 },
        schema: { type: "string", pattern: "^[a-z_][a-z0-9_]{0,62}$" },
        cluster: {
          type: "object",
          additionalProperties: false,
          properties: {
            lease_ms: { type: "integer", minimum: 1000, maximum: 600_000 },
            process_name: { type: "string", pattern: "^[A-Za-z0-9._-]{1,64}$" },
            federation_url: { type: "string", pattern: "^https?://" },
            admin_url: { type: "string", pattern: "^https?://" },
            appservice_url: { type: "string", pattern: "^https?://" },
          },
        },
      },
    },
    signing_key_path: { type: "string", minLength: 1 },
    old_verify_keys: {
      type: "object",
      additionalProperties: {
        type: "object",
        additionalProperties: false,
        required: ["key", "expired_ts"],
        properties: {
          key: { type: "string", minLength: 43 },
          expired_ts: { type: "integer", minimum: 0 },
        },
      },
    },
    admin_api: {
      type: "object",
      additionalProperties: false,
      required: ["port", "token"],
      properties: {
        bind_address: { type: "string", minLength: 1 },
        port: { type: "integer", minimum: 0, maximum: 65535 },
        token: { type: "string", minLength: 16 },
      },
    },
    mls: {
      type: "object",
      additionalProperties: false,
      properties: {
        hosted_clients: { type: "boolean" },
        join_wait_ms: ms(0, 600_000),
        // LM-04 §Users: a user ID's localpart.
        hub_user: { type: "string", pattern: "^[0-9a-z\\-.=_/+]{1,64}$" },
        plain_claims: { type: "boolean" },
        bundle_claims: { type: "boolean" },
      },
    },
    ohttp: {
      type: "object",
      additionalProperties: false,
      properties: {
        keys: {
          type: "array",
          minItems: 1,
          maxItems: 16,
          items: {
            type: "object",
            additionalProperties: false,
            required: ["key_id", "private_key_path"],
            properties: {
              key_id: { type: "integer", minimum: 0, maximum: 255 },
              private_key_path: { type: "string", minLength: 1 },
              retired_ts: { type: "integer", minimum: 0 },
            },
          },
        },
        overlap_ms: ms(0, 30 * DAY_MS),
        replay_window_ms: ms(1000, 3_600_000),
        replay_cache_max_entries: count(100_000_000),
        relay_requests_per_second: rate,
        relay_burst: count(1_000_000),
      },
    },
    homeserver: {
      type: "object",
      additionalProperties: false,
      required: ["url"],
      properties: {
        url: { type: "string", pattern: "^https?://[^/\\s]+/?$" },
        domain: { type: "string", minLength: 1 },
      },
    },
    appservice: {
      type: "object",
      additionalProperties: false,
      properties: {
        id: { type: "string", pattern: "^[A-Za-z0-9._-]{1,64}$" },
        bind_address: { type: "string", minLength: 1 },
        port: { type: "integer", minimum: 0, maximum: 65535 },
        registration: { type: "string", minLength: 1 },
        // LM-04 §Users / Matrix user ID grammar: localparts, and the prefixes of ghosts and aliases.
        sender_localpart: { type: "string", pattern: "^[0-9a-z\\-.=_/+]{1,64}$" },
        user_prefix: { type: "string", pattern: "^[0-9a-z\\-.=_/+]{1,32}$" },
        alias_prefix: { type: "string", pattern: "^[0-9a-z\\-.=_/+]{1,32}$" },
        // Keys: "*", a server name or a Matrix user ID, checked in config.ts (the error names the key).
        permissions: { type: "object", additionalProperties: { enum: ["none", "user", "admin"] } },
      },
    },
    logging: {
      type: "object",
      additionalProperties: false,
      properties: { level: { enum: ["debug", "info", "warn", "error"] } },
    },
    metrics: {
      type: "object",
      additionalProperties: false,
      required: ["port"],
      properties: {
        bind_address: { type: "string", minLength: 1 },
        port: { type: "integer", minimum: 0, maximum: 65535 },
      },
    },
  },
} as const;
