import { DIGIT, DNS_CHAR, HEX_DIGIT, hasClass } from "./chars";
import { IdentifierError, describeChar, notStringViolation, type Violation } from "./errors";

export interface ServerName {
  readonly raw: string;
  readonly host: string;
  readonly port: number | undefined;
}

const COLON = 0x3a;
const DOT = 0x2e;
const HYPHEN = 0x2d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const ZERO = 0x30;
const LOWER_X = 0x78;
const UPPER_X = 0x58;

const MAX_HOSTNAME_LENGTH = 255;
const MAX_LABEL_LENGTH = 63;
const MAX_PORT_DIGITS = 5;
const MAX_PORT = 65535;

const IP_LITERALS_FORBIDDEN =
  "servers MUST NOT use literal IP addresses as server names (LM-04 §Server Names)";

/**
 * Checks `s.slice(start)` against LM-04 §Server Names
 * (`server_name = hostname [ ":" port ]`) with the RFC 1123 §2.1 label rules.
 * Returns undefined when valid; allocates only on failure.
 */
export function serverNameViolation(s: string, start = 0): Violation | undefined {
  const end = s.length;
  if (start === end) return { rule: "server_name.empty", detail: "server name is empty" };

  let colon = -1;
  let colons = 0;
  let onlyIpv6Chars = true;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === LBRACKET || c === RBRACKET) {
      return {
        rule: "server_name.ipv6_literal",
        detail: `brackets denote an IPv6 literal; ${IP_LITERALS_FORBIDDEN}`,
      };
    }
    if (c === COLON) {
      if (colon < 0) colon = i;
      colons++;
    } else if (c !== DOT && !hasClass(c, HEX_DIGIT)) {
      onlyIpv6Chars = false;
    }
  }
  if (colons > 1 && onlyIpv6Chars) {
    return {
      rule: "server_name.ipv6_literal",
      detail: `looks like an unbracketed IPv6 literal; ${IP_LITERALS_FORBIDDEN}`,
    };
  }

  const hostEnd = colon < 0 ? end : colon;
  const hostLength = hostEnd - start;
  if (hostLength === 0) return { rule: "server_name.hostname_empty", detail: "hostname is empty" };
  if (hostLength > MAX_HOSTNAME_LENGTH) {
    return {
      rule: "server_name.hostname_too_long",
      detail: `hostname is ${hostLength} characters long; at most ${MAX_HOSTNAME_LENGTH} allowed`,
    };
  }

  let labelStart = start;
  for (let i = start; i <= hostEnd; i++) {
    const c = i < hostEnd ? s.charCodeAt(i) : DOT;
    if (c === DOT) {
      const v = labelViolation(s, labelStart, i);
      if (v !== undefined) return v;
      if (i < hostEnd) labelStart = i + 1;
    } else if (!hasClass(c, DNS_CHAR)) {
      return {
        rule: "server_name.hostname_chars",
        detail: `hostname contains ${describeChar(s, i)}; allowed are letters, digits, "-" and "."`,
      };
    }
  }
  if (endsInNumber(s, labelStart, hostEnd)) {
    return {
      rule: "server_name.ipv4_literal",
      detail: `hostname ends in a numeric label, so it is read as an IPv4 address; ${IP_LITERALS_FORBIDDEN}`,
    };
  }

  if (colon >= 0) return portViolation(s, colon + 1, end);
  return undefined;
}

// RFC 1123 §2.1 (updating RFC 952): letters, digits and hyphens, not starting or ending with a
// hyphen, at most 63 characters (RFC 1035 §2.3.4).
function labelViolation(s: string, start: number, end: number): Violation | undefined {
  const length = end - start;
  if (length === 0) {
    return {
      rule: "server_name.label_empty",
      detail: "hostname has an empty label (leading, trailing or doubled '.')",
    };
  }
  if (length > MAX_LABEL_LENGTH) {
    return {
      rule: "server_name.label_too_long",
      detail: `hostname label is ${length} characters long; at most ${MAX_LABEL_LENGTH} allowed`,
    };
  }
  if (s.charCodeAt(start) === HYPHEN || s.charCodeAt(end - 1) === HYPHEN) {
    return {
      rule: "server_name.label_hyphen",
      detail: "hostname label starts or ends with '-'",
    };
  }
  return undefined;
}

// WHATWG URL Standard "ends in a number": such hosts are parsed as IPv4 addresses
// (e.g. "127.1", "2130706433", "0x7f.0.0.1"), so they are IP literals in disguise.
function endsInNumber(s: string, start: number, end: number): boolean {
  let allDigits = true;
  for (let i = start; i < end; i++) {
    if (!hasClass(s.charCodeAt(i), DIGIT)) {
      allDigits = false;
      break;
    }
  }
  if (allDigits) return true;
  if (end - start < 2 || s.charCodeAt(start) !== ZERO) return false;
  const x = s.charCodeAt(start + 1);
  if (x !== LOWER_X && x !== UPPER_X) return false;
  for (let i = start + 2; i < end; i++) {
    if (!hasClass(s.charCodeAt(i), HEX_DIGIT)) return false;
  }
  return true;
}

// LM-04 §Server Names: port = 1*5DIGIT, and a TCP port is 1..65535.
function portViolation(s: string, start: number, end: number): Violation | undefined {
  if (start === end) return { rule: "server_name.port_empty", detail: "port after ':' is empty" };
  let value = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (!hasClass(c, DIGIT)) {
      return {
        rule: "server_name.port_chars",
        detail: `port contains ${describeChar(s, i)}; only digits are allowed`,
      };
    }
    value = value * 10 + (c - ZERO);
  }
  const digits = end - start;
  if (digits > MAX_PORT_DIGITS) {
    return {
      rule: "server_name.port_length",
      detail: `port has ${digits} digits; at most ${MAX_PORT_DIGITS} allowed`,
    };
  }
  if (value < 1 || value > MAX_PORT) {
    return {
      rule: "server_name.port_range",
      detail: `port ${value} is outside the range 1-${MAX_PORT}`,
    };
  }
  return undefined;
}

export function isValidServerName(s: string): boolean {
  return typeof s === "string" && serverNameViolation(s) === undefined;
}

export function parseServerName(input: unknown): ServerName {
  if (typeof input !== "string")
    throw IdentifierError.from("server_name", input, notStringViolation("server_name"));
  const v = serverNameViolation(input);
  if (v !== undefined) throw IdentifierError.from("server_name", input, v);
  const colon = input.indexOf(":");
  if (colon < 0) return { raw: input, host: input, port: undefined };
  return { raw: input, host: input.slice(0, colon), port: Number(input.slice(colon + 1)) };
}
