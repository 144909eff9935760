import { randomBytes } from "node:crypto";
import yaml from "js-yaml";
import { AppServiceRegistration } from "matrix-appservice-bridge";

/** What the registration must say for the appservice the config describes. */
export interface AppserviceIdentity {
  id: string;
  /** The homeserver's server_name: the domain of the bot, ghosts and portal aliases. */
  domain: string;
  senderLocalpart: string;
  /** Ghost users are `@<userPrefix><escaped MIMI user ID>:<domain>`. */
  userPrefix: string;
  /** Portal aliases are `#<aliasPrefix><escaped MIMI room ID>:<domain>`. */
  aliasPrefix: string;
}

/**
 * An application service registration (Matrix application service API, §Registration), as the
 * homeserver reads it from `app_service_config_files`.
 */
export interface Registration {
  id: string;
  url: string | null;
  as_token: string;
  hs_token: string;
  sender_localpart: string;
  rate_limited: boolean;
  receive_ephemeral: boolean;
  namespaces: {
    users: { exclusive: boolean; regex: string }[];
    aliases: { exclusive: boolean; regex: string }[];
    rooms: { exclusive: boolean; regex: string }[];
  };
}

export class RegistrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RegistrationError";
  }
}

const escapeRegex = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

export const userNamespace = (identity: AppserviceIdentity) =>
  `@${escapeRegex(identity.userPrefix)}.*:${escapeRegex(identity.domain)}`;
export const aliasNamespace = (identity: AppserviceIdentity) =>
  `#${escapeRegex(identity.aliasPrefix)}.*:${escapeRegex(identity.domain)}`;

/** A fresh random token: 32 bytes, base64url. */
export const newToken = () => randomBytes(32).toString("base64url");

/** The registration for `identity`, reached by the homeserver at `url`, with fresh tokens. */
export function buildRegistration(identity: AppserviceIdentity, url: string): Registration {
  if (!/^https?:\/\/[^/\s]+(\/\S*)?$/.test(url)) {
    throw new RegistrationError(
      `the appservice URL must be http(s)://host[:port], got ${JSON.stringify(url)}`,
    );
  }
  // The bridge library's registration model writes the homeserver's fields; it has no rooms
  // namespace list and no receive_ephemeral setter, which are added to its output.
  const registration = new AppServiceRegistration(url);
  registration.setId(identity.id);
  registration.setAppServiceToken(newToken());
  registration.setHomeserverToken(newToken());
  registration.setSenderLocalpart(identity.senderLocalpart);
  registration.setRateLimited(false);
  registration.addRegexPattern("users", userNamespace(identity), true);
  registration.addRegexPattern("aliases", aliasNamespace(identity), true);
  const output = registration.getOutput() as unknown as Omit<Registration, "receive_ephemeral">;
  return {
    id: output.id,
    url: output.url,
    as_token: output.as_token,
    hs_token: output.hs_token,
    sender_localpart: output.sender_localpart,
    rate_limited: output.rate_limited,
    receive_ephemeral: true,
    namespaces: { users: output.namespaces.users, aliases: output.namespaces.aliases, rooms: [] },
  };
}

export function registrationYaml(registration: Registration): string {
  return (
    "# Application service registration of mimi-appservice, written by `-r`.\n" +
    "# Add this file to the homeserver's app_service_config_files and restart it.\n" +
    "# It holds the tokens the appservice and the homeserver authenticate with: keep it private.\n" +
    yaml.dump(registration, { lineWidth: -1 })
  );
}

const PLACEHOLDER = /^change_?me|placeholder|^x+$/i;

/**
 * Reads a registration and checks it against the config: every mismatch is named. Placeholder
 * or short tokens are refused, as are namespaces that are not exclusive or do not cover ghosts.
 */
export function parseRegistration(text: string, identity: AppserviceIdentity, path: string): Registration {
  let raw: unknown;
  try {
    raw = yaml.load(text);
  } catch (err) {
    throw new RegistrationError(`${path} is not valid YAML: ${(err as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null) throw new RegistrationError(`${path} is not a registration`);
  const r = raw as Record<string, unknown>;
  const problems: string[] = [];
  const str = (key: string): string => {
    const value = r[key];
    if (typeof value !== "string") {
      problems.push(`${key}: missing or not a string`);
      return "";
    }
    return value;
  };
  const id = str("id");
  const asToken = str("as_token");
  const hsToken = str("hs_token");
  const sender = str("sender_localpart");
  const url = r.url === null || r.url === undefined ? null : typeof r.url === "string" ? r.url : undefined;
  if (url === undefined) problems.push("url: not a string");
  if (id !== "" && id !== identity.id)
    problems.push(`id: ${JSON.stringify(id)}, the config says ${JSON.stringify(identity.id)}`);
  if (sender !== "" && sender !== identity.senderLocalpart) {
    problems.push(
      `sender_localpart: ${JSON.stringify(sender)}, the config says ${JSON.stringify(identity.senderLocalpart)}`,
    );
  }
  for (const [key, token] of [
    ["as_token", asToken],
    ["hs_token", hsToken],
  ] as const) {
    if (r[key] === undefined || typeof r[key] !== "string") continue;
    if (PLACEHOLDER.test(token) || token.length < 20) {
      problems.push(`${key}: a placeholder or too short (write a fresh registration with -r)`);
    }
  }
  if (asToken !== "" && asToken === hsToken) problems.push("as_token and hs_token are the same");
  if (r.rate_limited !== false)
    problems.push("rate_limited: must be false (the appservice sends for many users)");
  if (r.receive_ephemeral !== true) problems.push("receive_ephemeral: must be true");
  const namespaces = (r.namespaces ?? {}) as Record<string, unknown>;
  const covers = (kind: "users" | "aliases", regex: string) => {
    const list = namespaces[kind];
    const ok =
      Array.isArray(list) &&
      list.some(
        (entry: unknown) =>
          typeof entry === "object" &&
          entry !== null &&
          (entry as { regex?: unknown }).regex === regex &&
          (entry as { exclusive?: unknown }).exclusive === true,
      );
    if (!ok)
      problems.push(`namespaces.${kind}: needs an exclusive entry with regex ${JSON.stringify(regex)}`);
  };
  covers("users", userNamespace(identity));
  covers("aliases", aliasNamespace(identity));
  if (problems.length > 0) {
    throw new RegistrationError(
      `${path} does not match the config:\n  - ${problems.join("\n  - ")}\n` +
        "Write a new one with `-r -u <appservice URL> -f <file>` and give it to the homeserver.",
    );
  }
  const ns = namespaces as Registration["namespaces"];
  return {
    id,
    url: url ?? null,
    as_token: asToken,
    hs_token: hsToken,
    sender_localpart: sender,
    rate_limited: false,
    receive_ephemeral: true,
    namespaces: { users: ns.users, aliases: ns.aliases, rooms: Array.isArray(ns.rooms) ? ns.rooms : [] },
  };
}
