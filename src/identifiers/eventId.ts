import { EVENT_HASH_CHAR, hasClass } from "./chars";
import { IdentifierError, describeChar, notStringViolation, type Violation } from "./errors";

const DOLLAR = 0x24;
// Unpadded base64 of a 32-byte SHA-256 reference hash (LM-04 §Events).
const HASH_CHARS = 43;

/**
 * LM-04 §Events: event_id = "$" 1*( ALPHA / DIGIT / "-" / "_" ), and in this
 * room version the body is always the URL-safe unpadded base64 of a SHA-256
 * reference hash: exactly 43 characters, canonically encoded.
 */
export function eventIdViolation(s: string): Violation | undefined {
  const length = s.length;
  if (length === 0 || s.charCodeAt(0) !== DOLLAR) {
    return {
      rule: "event_id.sigil",
      detail:
        length === 0
          ? 'is empty; must start with the sigil "$"'
          : `must start with the sigil "$", not ${describeChar(s, 0)}`,
    };
  }
  if (length === 1) return { rule: "event_id.hash_empty", detail: 'has nothing after the "$"' };
  for (let i = 1; i < length; i++) {
    if (!hasClass(s.charCodeAt(i), EVENT_HASH_CHAR)) {
      return {
        rule: "event_id.hash_chars",
        detail: `contains ${describeChar(s, i)}; allowed are URL-safe base64 characters (letters, digits, "-" and "_")`,
      };
    }
  }
  if (length - 1 !== HASH_CHARS) {
    return {
      rule: "event_id.hash_length",
      detail: `hash is ${length - 1} characters long; a SHA-256 reference hash is exactly ${HASH_CHARS}`,
    };
  }
  // 43 sextets carry 258 bits for a 256-bit hash: the last one's two low bits must be zero,
  // or two different IDs would decode to the same hash.
  if ((base64UrlValue(s.charCodeAt(length - 1)) & 3) !== 0) {
    return {
      rule: "event_id.hash_non_canonical",
      detail: `last character ${describeChar(s, length - 1)} sets bits beyond the 32-byte hash (non-canonical base64)`,
    };
  }
  return undefined;
}

function base64UrlValue(c: number): number {
  if (c >= 0x41 && c <= 0x5a) return c - 0x41;
  if (c >= 0x61 && c <= 0x7a) return c - 0x61 + 26;
  if (c >= 0x30 && c <= 0x39) return c - 0x30 + 52;
  return c === 0x2d ? 62 : 63;
}

export function isValidEventId(s: string): boolean {
  return typeof s === "string" && eventIdViolation(s) === undefined;
}

/** Checks the grammar AND that the body is a canonical 43-character SHA-256 reference hash. */
export function parseEventId(input: unknown): string {
  if (typeof input !== "string")
    throw IdentifierError.from("event_id", input, notStringViolation("event_id"));
  const v = eventIdViolation(input);
  if (v !== undefined) throw IdentifierError.from("event_id", input, v);
  return input;
}
