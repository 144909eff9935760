import { MimiError } from "../errors";

export type IdentifierKind = "server_name" | "room_id" | "user_id" | "event_id" | "key_id";

const KIND_LABELS: Record<IdentifierKind, string> = {
  server_name: "server name",
  room_id: "room ID",
  user_id: "user ID",
  event_id: "event ID",
  key_id: "key ID",
};

const MAX_QUOTED_CHARS = 64;

/** A rule broken by an identifier: `rule` is a stable machine name, `detail` is for humans. */
export interface Violation {
  readonly rule: string;
  readonly detail: string;
}

/**
 * An identifier failed validation. `rule` names the broken rule (e.g.
 * "room_id.sigil", "server_name.port_range"); callers match on it, never on
 * the message.
 */
export class IdentifierError extends MimiError {
  readonly kind: IdentifierKind;
  readonly rule: string;

  constructor(kind: IdentifierKind, value: unknown, rule: string, detail: string) {
    super(
      "M_INVALID_PARAM",
      `Invalid ${KIND_LABELS[kind]} ${describeValue(value)}: ${detail} (rule ${rule})`,
    );
    this.kind = kind;
    this.rule = rule;
  }

  static from(kind: IdentifierKind, value: unknown, violation: Violation): IdentifierError {
    return new IdentifierError(kind, value, violation.rule, violation.detail);
  }
}

/** The value JSON-quoted and cut to 64 characters, or its type when it is not a string. */
export function describeValue(value: unknown): string {
  if (typeof value === "string") return quote(value);
  if (value === null) return "(null)";
  if (Array.isArray(value)) return "(array)";
  return `(${typeof value})`;
}

export function quote(s: string): string {
  if (s.length <= MAX_QUOTED_CHARS) return JSON.stringify(s);
  return `${JSON.stringify(s.slice(0, MAX_QUOTED_CHARS))}… (${s.length} characters)`;
}

/** The character at `i`, quoted with its code point, e.g. `"A" (U+0041)`. */
export function describeChar(s: string, i: number): string {
  const cp = s.codePointAt(i) ?? 0;
  const hex = cp.toString(16).toUpperCase().padStart(4, "0");
  return `${JSON.stringify(String.fromCodePoint(cp))} (U+${hex})`;
}

export function notStringViolation(kind: IdentifierKind): Violation {
  return { rule: `${kind}.not_string`, detail: "must be a string" };
}
