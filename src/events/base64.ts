/** Unpadded base64 (LM-04 §Unpadded Base64, RFC 4648 §4 and §5). */

const STANDARD = /^[A-Za-z0-9+/]*={0,2}$/;
const URL_SAFE = /^[A-Za-z0-9_-]*={0,2}$/;

export function encodeUnpaddedBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64").replace(/=+$/, "");
}

export function encodeUrlSafeBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url");
}

/**
 * Decodes standard base64, padded or not (the draft says implementations
 * SHOULD accept both). Returns undefined for anything that is not base64:
 * Node's decoder silently skips bad characters, so the alphabet is checked first.
 */
export function decodeBase64(text: string): Buffer | undefined {
  if (!STANDARD.test(text) || text.length % 4 === 1) return undefined;
  return Buffer.from(text, "base64");
}

export function decodeUrlSafeBase64(text: string): Buffer | undefined {
  if (!URL_SAFE.test(text) || text.length % 4 === 1) return undefined;
  return Buffer.from(text, "base64url");
}
