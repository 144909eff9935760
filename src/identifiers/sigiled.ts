import { hasClass } from "./chars";
import { IdentifierError, describeChar, quote, type Violation } from "./errors";
import { serverNameViolation } from "./serverName";

/** LM-04 §Rooms and §Users: the whole ID, sigil and server name included, is at most 255 characters. */
export const MAX_SIGILED_ID_LENGTH = 255;

const COLON = 0x3a;
const UPPER_A = 0x41;
const UPPER_Z = 0x5a;

/** How one `sigil localpart ":" server_name` identifier kind differs from the others. */
export interface SigiledIdSpec {
  readonly kind: "room_id" | "user_id";
  readonly sigil: string;
  readonly localpartClass: number;
  readonly allowedLocalpartChars: string;
}

/** Undefined when `s` is valid; allocates only on failure. */
export function sigiledIdViolation(spec: SigiledIdSpec, s: string): Violation | undefined {
  const length = s.length;
  if (length > MAX_SIGILED_ID_LENGTH) {
    return {
      rule: `${spec.kind}.too_long`,
      detail: `is ${length} characters long; at most ${MAX_SIGILED_ID_LENGTH} allowed`,
    };
  }
  if (length === 0 || s.charCodeAt(0) !== spec.sigil.charCodeAt(0)) {
    return {
      rule: `${spec.kind}.sigil`,
      detail:
        length === 0
          ? `is empty; must start with the sigil "${spec.sigil}"`
          : `must start with the sigil "${spec.sigil}", not ${describeChar(s, 0)}`,
    };
  }
  let i = 1;
  for (; i < length; i++) {
    const c = s.charCodeAt(i);
    if (c === COLON) break;
    if (!hasClass(c, spec.localpartClass)) return localpartCharsViolation(spec, s, i);
  }
  if (i === length) {
    return {
      rule: `${spec.kind}.missing_colon`,
      detail: `has no ":" separating the localpart from the server name`,
    };
  }
  if (i === 1) return { rule: `${spec.kind}.localpart_empty`, detail: "localpart is empty" };
  const v = serverNameViolation(s, i + 1);
  if (v === undefined) return undefined;
  return { rule: v.rule, detail: `server name ${quote(s.slice(i + 1))}: ${v.detail}` };
}

/**
 * Joins and validates. A ":" in `localpart` is reported as a localpart
 * character rather than letting it silently move the server-name split.
 */
export function makeSigiledId(spec: SigiledIdSpec, localpart: string, serverName: string): string {
  const id = `${spec.sigil}${localpart}:${serverName}`;
  const colon = localpart.indexOf(":");
  if (colon >= 0) throw IdentifierError.from(spec.kind, id, localpartCharsViolation(spec, id, colon + 1));
  const v = sigiledIdViolation(spec, id);
  if (v !== undefined) throw IdentifierError.from(spec.kind, id, v);
  return id;
}

export function localpartCharsViolation(spec: SigiledIdSpec, s: string, i: number): Violation {
  const c = s.charCodeAt(i);
  const uppercase = spec.kind === "user_id" && c >= UPPER_A && c <= UPPER_Z;
  return {
    rule: `${spec.kind}.localpart_chars`,
    detail:
      `localpart contains ${describeChar(s, i)}` +
      (uppercase ? ", but uppercase letters are not allowed" : "") +
      `; allowed are ${spec.allowedLocalpartChars}`,
  };
}
