/** Per-ASCII-character class bits; every identifier grammar here is ASCII-only. */
export const ROOM_LOCALPART = 1;
export const USER_LOCALPART = 2;
export const DNS_CHAR = 4;
export const EVENT_HASH_CHAR = 8;
export const KEY_VERSION_CHAR = 16;
export const DIGIT = 32;
export const HEX_DIGIT = 64;

const table = new Uint8Array(128);

function mark(chars: string, bits: number): void {
  for (let i = 0; i < chars.length; i++) table[chars.charCodeAt(i)] |= bits;
}

const DIGITS = "0123456789";
const LOWER = "abcdefghijklmnopqrstuvwxyz";
const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

// LM-04 §Rooms: localpart = 1*( DIGIT / ALPHA / "-" / "." / "~" / "_" )
mark(DIGITS + LOWER + UPPER + "-.~_", ROOM_LOCALPART);
// LM-04 §Users: localpart = 1*( DIGIT / %x61-7A / "-" / "." / "=" / "_" / "/" / "+" )
mark(DIGITS + LOWER + "-.=_/+", USER_LOCALPART);
// LM-04 §Server Names: dns-char = DIGIT / ALPHA / "-" / "."; labels themselves exclude ".".
mark(DIGITS + LOWER + UPPER + "-", DNS_CHAR);
// LM-04 §Events: URL-safe unpadded base64.
mark(DIGITS + LOWER + UPPER + "-_", EVENT_HASH_CHAR);
// LM-04 §Signing: key_version = 1*( ALPHA / DIGIT / "_" )
mark(DIGITS + LOWER + UPPER + "_", KEY_VERSION_CHAR);
mark(DIGITS, DIGIT);
mark(DIGITS + "abcdefABCDEF", HEX_DIGIT);

export function hasClass(code: number, bits: number): boolean {
  return code < 128 && (table[code] & bits) !== 0;
}
