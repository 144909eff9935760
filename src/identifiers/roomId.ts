import { randomBytes } from "node:crypto";
import { ROOM_LOCALPART } from "./chars";
import { IdentifierError, notStringViolation } from "./errors";
import { makeSigiledId, sigiledIdViolation, type SigiledIdSpec } from "./sigiled";

export interface RoomId {
  readonly raw: string;
  readonly localpart: string;
  readonly serverName: string;
}

// LM-04 §Rooms: room_id = "!" localpart ":" server_name
const ROOM_ID: SigiledIdSpec = {
  kind: "room_id",
  sigil: "!",
  localpartClass: ROOM_LOCALPART,
  allowedLocalpartChars: 'letters, digits, "-", ".", "~" and "_"',
};

export function isValidRoomId(s: string): boolean {
  return typeof s === "string" && sigiledIdViolation(ROOM_ID, s) === undefined;
}

export function parseRoomId(input: unknown): RoomId {
  if (typeof input !== "string") throw IdentifierError.from("room_id", input, notStringViolation("room_id"));
  const v = sigiledIdViolation(ROOM_ID, input);
  if (v !== undefined) throw IdentifierError.from("room_id", input, v);
  const colon = input.indexOf(":");
  return { raw: input, localpart: input.slice(1, colon), serverName: input.slice(colon + 1) };
}

export function makeRoomId(localpart: string, serverName: string): string {
  return makeSigiledId(ROOM_ID, localpart, serverName);
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const RANDOM_LOCALPART_LENGTH = 18;
// The largest multiple of 62 that fits in a byte; bytes at or above it are
// discarded so that `byte % 62` stays uniform.
const UNBIASED_BYTE_LIMIT = 256 - (256 % ALPHABET.length);

/** 18 uniformly random characters from [A-Za-z0-9] (about 107 bits). */
export function randomRoomLocalpart(): string {
  let out = "";
  while (out.length < RANDOM_LOCALPART_LENGTH) {
    const bytes = randomBytes(RANDOM_LOCALPART_LENGTH * 2);
    for (let i = 0; i < bytes.length && out.length < RANDOM_LOCALPART_LENGTH; i++) {
      if (bytes[i] < UNBIASED_BYTE_LIMIT) out += ALPHABET[bytes[i] % ALPHABET.length];
    }
  }
  return out;
}
