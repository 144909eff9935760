import canonicalize from "canonicalize";
import { EventFormatError } from "./errors";

/**
 * RFC 8785 (JSON Canonicalization Scheme), as LM-04 §Canonical JSON requires.
 * Values that JSON cannot represent (NaN, Infinity, undefined at the top) are refused.
 */
export function canonicalJson(value: unknown): string {
  let text: string | undefined;
  try {
    text = canonicalize(value);
  } catch (err) {
    throw new EventFormatError(`value cannot be canonicalised: ${(err as Error).message}`);
  }
  if (text === undefined) throw new EventFormatError("value cannot be canonicalised: not a JSON value");
  return text;
}

export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalJson(value), "utf8");
}
