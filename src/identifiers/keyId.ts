import { KEY_VERSION_CHAR, hasClass } from "./chars";
import { IdentifierError, describeChar, notStringViolation, quote, type Violation } from "./errors";

export interface KeyId {
  readonly raw: string;
  readonly algorithm: "ed25519";
  readonly version: string;
}

const ALGORITHM = "ed25519";

/** LM-04 §Signing: key_id = "ed25519" ":" key_version, key_version = 1*( ALPHA / DIGIT / "_" ). */
export function keyIdViolation(s: string): Violation | undefined {
  const colon = s.indexOf(":");
  if (colon < 0) {
    return {
      rule: "key_id.missing_colon",
      detail: 'has no ":" separating the algorithm from the key version',
    };
  }
  if (colon !== ALGORITHM.length || !s.startsWith(ALGORITHM)) {
    return {
      rule: "key_id.algorithm",
      detail: `algorithm ${quote(s.slice(0, colon))} is not supported; only "${ALGORITHM}" is`,
    };
  }
  const length = s.length;
  if (colon + 1 === length) return { rule: "key_id.version_empty", detail: "key version is empty" };
  for (let i = colon + 1; i < length; i++) {
    if (!hasClass(s.charCodeAt(i), KEY_VERSION_CHAR)) {
      return {
        rule: "key_id.version_chars",
        detail: `key version contains ${describeChar(s, i)}; allowed are letters, digits and "_"`,
      };
    }
  }
  return undefined;
}

export function isValidKeyId(s: string): boolean {
  return typeof s === "string" && keyIdViolation(s) === undefined;
}

export function parseKeyId(input: unknown): KeyId {
  if (typeof input !== "string") throw IdentifierError.from("key_id", input, notStringViolation("key_id"));
  const v = keyIdViolation(input);
  if (v !== undefined) throw IdentifierError.from("key_id", input, v);
  return { raw: input, algorithm: ALGORITHM, version: input.slice(ALGORITHM.length + 1) };
}
