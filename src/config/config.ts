import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import Ajv, { type ErrorObject } from "ajv";
import yaml from "js-yaml";
import { VerifyKey } from "../events/signingKey";
import { isValidKeyId, isValidServerName } from "../identifiers";
import { CONFIG_SCHEMA } from "./schema";

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
  };
  database: { path: string; durability: "fsync" | "os" };
  signingKeyPath: string;
  /** Keys we signed with before a rotation: still published, so what they signed still verifies. */
  oldVerifyKeys: { keyId: string; publicKeyBase64: string; expiredTs: number }[];
  admin: { bindAddress: string; port: number; token: string } | undefined;
  logging: { level: "debug" | "info" | "warn" | "error" };
}

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
  };
  database?: { path?: string; durability?: "fsync" | "os" };
  signing_key_path?: string;
  old_verify_keys?: Record<string, { key: string; expired_ts: number }>;
  admin_api?: { bind_address?: string; port: number; token: string };
  logging?: { level?: "debug" | "info" | "warn" | "error" };
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
  return {
    serverName: raw.server_name,
    federation: {
      bindAddress: raw.federation.bind_address ?? "0.0.0.0",
      port: raw.federation.port,
      staticRoutes: raw.federation.static_routes ?? {},
      wellKnown: raw.federation.well_known ?? true,
      retryBaseMs: raw.federation.retry_base_ms ?? 250,
      retryMaxMs: raw.federation.retry_max_ms ?? 300_000,
    },
    database: {
      path: resolve(baseDir, raw.database?.path ?? "data/db"),
      durability: raw.database?.durability ?? "fsync",
    },
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
  };
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
