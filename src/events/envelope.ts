import {
  isValidEventId,
  isValidKeyId,
  isValidRoomId,
  isValidServerName,
  isValidUserId,
} from "../identifiers";
import { EventFormatError } from "./errors";
import type { FullyFormedEvent, JsonObject, LimitedEvent, Signatures } from "./types";

/** LM-04 §Events: an event MUST NOT exceed 65536 bytes of canonical JSON, signatures included. */
export const MAX_EVENT_BYTES = 65536;
const MAX_TYPE_LENGTH = 255;
const MAX_STATE_KEY_LENGTH = 255;
const MAX_AUTH_EVENTS = 10;
const SHA256_BASE64_LENGTH = 43;

const LIMITED_EVENT_KEYS = new Set([
  "room_id",
  "type",
  "state_key",
  "sender",
  "origin_server_ts",
  "hub_server",
  "content",
  "hashes",
  "signatures",
]);
const FULLY_FORMED_EVENT_KEYS = new Set([...LIMITED_EVENT_KEYS, "auth_events", "prev_events"]);

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function fail(what: string, message: string): never {
  throw new EventFormatError(`${what}: ${message}`);
}

function checkSha256(value: unknown, what: string, field: string): string {
  if (typeof value !== "string" || value.length !== SHA256_BASE64_LENGTH || !/^[A-Za-z0-9+/]+$/.test(value)) {
    fail(what, `${field} must be an unpadded base64 SHA-256 hash (43 characters)`);
  }
  return value;
}

function checkSignatures(value: unknown, what: string): Signatures {
  if (!isPlainObject(value)) fail(what, "signatures must be an object");
  for (const [server, byKey] of Object.entries(value)) {
    if (!isValidServerName(server))
      fail(what, `signatures has an invalid server name ${JSON.stringify(server)}`);
    if (!isPlainObject(byKey)) fail(what, `signatures.${server} must be an object`);
    for (const [keyId, signature] of Object.entries(byKey)) {
      if (!isValidKeyId(keyId))
        fail(what, `signatures.${server} has an invalid key ID ${JSON.stringify(keyId)}`);
      if (typeof signature !== "string") fail(what, `signatures.${server}.${keyId} must be a string`);
    }
  }
  return value as Signatures;
}

/**
 * Where `text` holds a code unit no type or state key may hold, with its name.
 * U+0000 separates the parts of store keys and U+FFFF bounds prefix scans
 * (src/store/kv.ts); an unpaired surrogate has no UTF-8 form, so the store
 * would write U+FFFD and two distinct keys would become one.
 */
function forbiddenCodeUnit(text: string): { index: number; name: string } | undefined {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0000) return { index: i, name: "U+0000" };
    if (c === 0xffff) return { index: i, name: "U+FFFF" };
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
      if (next < 0xdc00 || next > 0xdfff) return { index: i, name: "an unpaired surrogate" };
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      return { index: i, name: "an unpaired surrogate" };
    }
  }
  return undefined;
}

function checkCodeUnits(text: string, what: string, field: string): void {
  const found = forbiddenCodeUnit(text);
  if (found !== undefined) {
    fail(
      what,
      `${field} holds ${found.name} at index ${found.index}; U+0000, U+FFFF and unpaired surrogates are not allowed in type and state_key`,
    );
  }
}

function checkCommonFields(input: Record<string, unknown>, allowed: Set<string>, what: string): void {
  for (const key of Object.keys(input)) {
    if (!allowed.has(key)) fail(what, `unexpected top-level field ${JSON.stringify(key)}`);
  }
  if (typeof input.room_id !== "string" || !isValidRoomId(input.room_id))
    fail(what, "room_id is not a valid room ID");
  if (typeof input.type !== "string" || input.type.length === 0 || input.type.length > MAX_TYPE_LENGTH) {
    fail(what, `type must be a string of 1 to ${MAX_TYPE_LENGTH} characters`);
  }
  checkCodeUnits(input.type, what, "type");
  if (input.state_key !== undefined) {
    if (typeof input.state_key !== "string" || input.state_key.length > MAX_STATE_KEY_LENGTH) {
      fail(what, `state_key must be a string of at most ${MAX_STATE_KEY_LENGTH} characters`);
    }
    checkCodeUnits(input.state_key, what, "state_key");
  }
  if (typeof input.sender !== "string" || !isValidUserId(input.sender))
    fail(what, "sender is not a valid user ID");
  const ts = input.origin_server_ts;
  if (typeof ts !== "number" || !Number.isSafeInteger(ts) || ts < 0) {
    fail(what, "origin_server_ts must be a non-negative integer");
  }
  if (typeof input.hub_server !== "string" || !isValidServerName(input.hub_server)) {
    fail(what, "hub_server is not a valid server name");
  }
  if (!isPlainObject(input.content)) fail(what, "content must be an object");
  checkSignatures(input.signatures, what);
}

/** Shape of a limited event (LM-04 §Linearized PDU), before any hash or signature is checked. */
export function parseLimitedEvent(input: unknown): LimitedEvent {
  const what = "limited event";
  if (!isPlainObject(input)) fail(what, "must be a JSON object");
  checkCommonFields(input, LIMITED_EVENT_KEYS, what);
  const hashes = input.hashes;
  if (!isPlainObject(hashes) || Object.keys(hashes).length !== 1 || !isPlainObject(hashes.lpdu)) {
    fail(what, "hashes must hold exactly the lpdu hash (a limited event has no top-level hash)");
  }
  if (Object.keys(hashes.lpdu).length !== 1) fail(what, "hashes.lpdu must hold exactly sha256");
  checkSha256(hashes.lpdu.sha256, what, "hashes.lpdu.sha256");
  return input as unknown as LimitedEvent;
}

function checkEventIdList(value: unknown, what: string, field: string, max: number): string[] {
  if (!Array.isArray(value)) fail(what, `${field} must be an array`);
  if (value.length > max) fail(what, `${field} has ${value.length} entries, at most ${max} allowed`);
  for (const id of value) {
    if (typeof id !== "string" || !isValidEventId(id)) fail(what, `${field} holds an invalid event ID`);
  }
  return value as string[];
}

/** Shape of a fully-formed event (LM-04 §Events), before any hash or signature is checked. */
export function parseFullyFormedEvent(input: unknown): FullyFormedEvent {
  const what = "event";
  if (!isPlainObject(input)) fail(what, "must be a JSON object");
  checkCommonFields(input, FULLY_FORMED_EVENT_KEYS, what);
  const hashes = input.hashes;
  if (!isPlainObject(hashes) || Object.keys(hashes).length !== 2 || !isPlainObject(hashes.lpdu)) {
    fail(what, "hashes must hold exactly sha256 and lpdu");
  }
  checkSha256(hashes.sha256, what, "hashes.sha256");
  if (Object.keys(hashes.lpdu).length !== 1) fail(what, "hashes.lpdu must hold exactly sha256");
  checkSha256(hashes.lpdu.sha256, what, "hashes.lpdu.sha256");
  const authEvents = checkEventIdList(input.auth_events, what, "auth_events", MAX_AUTH_EVENTS);
  const prevEvents = checkEventIdList(input.prev_events, what, "prev_events", 1);
  if (input.type === "m.room.create") {
    if (prevEvents.length !== 0 || authEvents.length !== 0) {
      fail(what, "m.room.create has no prev_events and no auth_events");
    }
  } else if (prevEvents.length !== 1) {
    fail(what, "prev_events must hold exactly one event ID (the hub's head)");
  }
  if (new Set(authEvents).size !== authEvents.length) fail(what, "auth_events holds duplicates");
  return input as unknown as FullyFormedEvent;
}

export function isJsonObject(value: unknown): value is JsonObject {
  return isPlainObject(value);
}
