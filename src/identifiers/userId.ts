import { USER_LOCALPART } from "./chars";
import { IdentifierError, notStringViolation } from "./errors";
import { makeSigiledId, sigiledIdViolation, type SigiledIdSpec } from "./sigiled";

export interface UserId {
  readonly raw: string;
  readonly localpart: string;
  readonly serverName: string;
}

// LM-04 §Users: user_id = "@" localpart ":" server_name, localpart lowercase only.
const USER_ID: SigiledIdSpec = {
  kind: "user_id",
  sigil: "@",
  localpartClass: USER_LOCALPART,
  allowedLocalpartChars: 'lowercase letters, digits, "-", ".", "=", "_", "/" and "+"',
};

export function isValidUserId(s: string): boolean {
  return typeof s === "string" && sigiledIdViolation(USER_ID, s) === undefined;
}

export function parseUserId(input: unknown): UserId {
  if (typeof input !== "string") throw IdentifierError.from("user_id", input, notStringViolation("user_id"));
  const v = sigiledIdViolation(USER_ID, input);
  if (v !== undefined) throw IdentifierError.from("user_id", input, v);
  const colon = input.indexOf(":");
  return { raw: input, localpart: input.slice(1, colon), serverName: input.slice(colon + 1) };
}

export function makeUserId(localpart: string, serverName: string): string {
  return makeSigiledId(USER_ID, localpart, serverName);
}
