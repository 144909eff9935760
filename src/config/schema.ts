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
      },
    },
    database: {
      type: "object",
      additionalProperties: false,
      properties: {
        path: { type: "string", minLength: 1 },
        durability: { enum: ["fsync", "os"] },
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
    logging: {
      type: "object",
      additionalProperties: false,
      properties: { level: { enum: ["debug", "info", "warn", "error"] } },
    },
  },
} as const;
