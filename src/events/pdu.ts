import { createHash } from "node:crypto";
import { serverNameOf } from "../identifiers";
import type { RoomVersion } from "../roomVersions/types";
import { encodeUnpaddedBase64, encodeUrlSafeBase64 } from "./base64";
import { canonicalBytes } from "./canonicalJson";
import { MAX_EVENT_BYTES } from "./envelope";
import { EventFormatError } from "./errors";
import { checkServerSignature, type VerifyKeyLookup } from "./signatures";
import type { ServerSigningKey } from "./signingKey";
import type { FullyFormedEvent, JsonObject, LimitedEvent, LimitedEventTemplate } from "./types";

type Redactor = Pick<RoomVersion, "redactContent">;

function sha256(bytes: Uint8Array): Buffer {
  return createHash("sha256").update(bytes).digest();
}

/** LM-04 §Event Redactions: the top-level fields an event keeps. */
const REDACTION_KEPT_KEYS = [
  "type",
  "room_id",
  "sender",
  "state_key",
  "content",
  "origin_server_ts",
  "hashes",
  "signatures",
  "prev_events",
  "auth_events",
  "hub_server",
] as const;

/** Redacts an event or LPDU: top-level fields per LM-04, content per the room version. */
export function redactEvent<T extends { type: string; content: JsonObject }>(event: T, version: Redactor): T {
  const source = event as unknown as Record<string, unknown>;
  const redacted: Record<string, unknown> = {};
  for (const key of REDACTION_KEPT_KEYS) {
    if (source[key] !== undefined) redacted[key] = source[key];
  }
  redacted.content = version.redactContent(event.type, event.content);
  return redacted as T;
}

/** The LPDU fields of a limited or fully-formed event, without hashes and signatures. */
export function lpduBody(event: LimitedEventTemplate): LimitedEventTemplate {
  const body: LimitedEventTemplate = {
    room_id: event.room_id,
    type: event.type,
    sender: event.sender,
    origin_server_ts: event.origin_server_ts,
    hub_server: event.hub_server,
    content: event.content,
  };
  if (event.state_key !== undefined) body.state_key = event.state_key;
  return body;
}

/** LM-04 §Content Hash Calculation, LPDU case: canonical LPDU without `hashes` and `signatures`. */
export function computeLpduHash(event: LimitedEventTemplate): string {
  return encodeUnpaddedBase64(sha256(canonicalBytes(lpduBody(event))));
}

/** The bytes the origin signs: the redacted LPDU with `hashes.lpdu`, without `signatures` (protocol.md, point 2). */
function lpduSigningBytes(
  event: LimitedEventTemplate & { hashes: { lpdu: { sha256: string } } },
  version: Redactor,
) {
  const lpdu = { ...lpduBody(event), hashes: { lpdu: event.hashes.lpdu } };
  return canonicalBytes(redactEvent(lpdu, version));
}

type UnsignedEvent = Omit<FullyFormedEvent, "signatures">;

/** LM-04 §Content Hash Calculation, PDU case: without `signatures`, `hashes` reduced to `lpdu`. */
export function computeContentHash(
  event: Omit<UnsignedEvent, "hashes"> & { hashes: { lpdu: { sha256: string } } },
): string {
  const body = { ...stripSignatures(event), hashes: { lpdu: event.hashes.lpdu } };
  return encodeUnpaddedBase64(sha256(canonicalBytes(body)));
}

function stripSignatures<T extends object>(event: T): Omit<T, "signatures"> {
  const { signatures: _signatures, ...rest } = event as T & { signatures?: unknown };
  return rest;
}

/**
 * The canonical redacted event without signatures: the hub signs these bytes
 * (LM-04 §Signing Events) and their SHA-256 is the reference hash (§Reference Hash Calculation).
 */
function redactedUnsignedBytes(event: UnsignedEvent | FullyFormedEvent, version: Redactor): Buffer {
  return canonicalBytes(stripSignatures(redactEvent(event, version)));
}

/** Event ID: `$` + URL-safe unpadded base64 of the reference hash. */
export function computeEventId(event: FullyFormedEvent | UnsignedEvent, version: Redactor): string {
  return "$" + encodeUrlSafeBase64(sha256(redactedUnsignedBytes(event, version)));
}

/**
 * Origin side: hash and sign an LPDU. When the origin is the hub itself the
 * LPDU carries no signature: the hub's signature on the full event covers it
 * (protocol.md, point 4).
 */
export function createLimitedEvent(
  template: LimitedEventTemplate,
  originKey: ServerSigningKey,
  version: Redactor,
): LimitedEvent {
  const body = lpduBody(template);
  const lpdu: LimitedEvent = { ...body, hashes: { lpdu: { sha256: computeLpduHash(body) } }, signatures: {} };
  if (originKey.serverName !== template.hub_server) {
    lpdu.signatures = {
      [originKey.serverName]: { [originKey.keyId]: originKey.sign(lpduSigningBytes(lpdu, version)) },
    };
  }
  return lpdu;
}

/**
 * Hub side, before policy: the LPDU hash matches its content and the origin
 * (the server of `sender`) signed it, unless the origin is the hub, with a key
 * valid at the LPDU's `origin_server_ts`.
 */
export function verifyLimitedEvent(
  lpdu: LimitedEvent,
  lookup: VerifyKeyLookup,
  version: Redactor,
  options: { lpduHashChecked?: boolean } = {},
): void {
  if (options.lpduHashChecked !== true && computeLpduHash(lpdu) !== lpdu.hashes.lpdu.sha256) {
    throw new EventFormatError("limited event: hashes.lpdu.sha256 does not match the event's content");
  }
  const origin = serverNameOf(lpdu.sender);
  if (origin === lpdu.hub_server) return;
  checkServerSignature(
    lpduSigningBytes(lpdu, version),
    lpdu.signatures,
    origin,
    lookup,
    "limited event",
    lpdu.origin_server_ts,
  );
}

export interface FormedEvent {
  event: FullyFormedEvent;
  eventId: string;
  /** JSON of the event, as stored and sent (not canonical: receivers canonicalise what they hash). */
  json: string;
}

/**
 * Hub side, after policy (protocol.md, point 3): add `auth_events` and
 * `prev_events`, the full content hash, and the hub's signature.
 */
export function formEvent(
  lpdu: LimitedEvent,
  authEvents: string[],
  prevEvents: string[],
  hubKey: ServerSigningKey,
  version: Redactor,
): FormedEvent {
  const withoutHash = {
    ...lpduBody(lpdu),
    hashes: { lpdu: lpdu.hashes.lpdu },
    auth_events: authEvents,
    prev_events: prevEvents,
  };
  const unsigned: UnsignedEvent = {
    ...withoutHash,
    hashes: { sha256: computeContentHash(withoutHash), lpdu: lpdu.hashes.lpdu },
  };
  const signedBytes = redactedUnsignedBytes(unsigned, version);
  // Only the origin's signature is carried over: others are not part of the event (LM-04 §Receiving Events, step 2).
  const signatures: FullyFormedEvent["signatures"] = {};
  const origin = serverNameOf(lpdu.sender);
  const originSignatures = lpdu.signatures[origin];
  if (origin !== hubKey.serverName && originSignatures !== undefined)
    signatures[origin] = { ...originSignatures };
  signatures[hubKey.serverName] = { [hubKey.keyId]: hubKey.sign(signedBytes) };
  const event: FullyFormedEvent = { ...unsigned, signatures };
  const eventId = "$" + encodeUrlSafeBase64(sha256(signedBytes));
  // Same length as the canonical form (only key order differs), and much cheaper to produce.
  const canonical = JSON.stringify(event);
  if (Buffer.byteLength(canonical, "utf8") > MAX_EVENT_BYTES) {
    throw new EventFormatError(
      `event would be larger than ${MAX_EVENT_BYTES} bytes of canonical JSON`,
      "M_TOO_LARGE",
    );
  }
  return { event, eventId, json: canonical };
}

/**
 * Follower side (LM-04 §Receiving Events): both content hashes, the hub's
 * signature, and the origin's signature over the LPDU. Returns the event ID.
 * Both signatures are checked with keys valid at `origin_server_ts`, the only
 * time the event records: the origin signed then, and the hub when it
 * sequenced the event, normally moments later. History sequenced under a hub
 * key since rotated out thus still verifies.
 */
export function verifyFullyFormedEvent(
  event: FullyFormedEvent,
  lookup: VerifyKeyLookup,
  version: Redactor,
  options: FullyFormedVerifyOptions = {},
): string {
  if (computeLpduHash(event) !== event.hashes.lpdu.sha256) {
    throw new EventFormatError("event: hashes.lpdu.sha256 does not match the event's content");
  }
  if (computeContentHash(event) !== event.hashes.sha256) {
    throw new EventFormatError("event: hashes.sha256 does not match the event");
  }
  const signedBytes = redactedUnsignedBytes(event, version);
  checkServerSignature(
    signedBytes,
    event.signatures,
    event.hub_server,
    lookup,
    "event (hub signature)",
    event.origin_server_ts,
  );
  const origin = serverNameOf(event.sender);
  if (origin !== event.hub_server && !isOwnSignature(event, origin, options)) {
    checkServerSignature(
      lpduSigningBytes(event, version),
      event.signatures,
      origin,
      lookup,
      "event (origin signature)",
      event.origin_server_ts,
    );
  }
  return "$" + encodeUrlSafeBase64(sha256(signedBytes));
}

/** An origin signature this server made itself. */
export interface OwnSignature {
  keyId: string;
  signature: string;
}

export interface FullyFormedVerifyOptions {
  /**
   * The signature this server made over the LPDU with this hash, if it built
   * that LPDU. The event's LPDU hash is checked first, so its content is what
   * was signed: carrying the very same signature stands for verifying it.
   */
  ownSignature?: (lpduHash: string) => OwnSignature | undefined;
}

function isOwnSignature(event: FullyFormedEvent, origin: string, options: FullyFormedVerifyOptions): boolean {
  const own = options.ownSignature?.(event.hashes.lpdu.sha256);
  const carried = event.signatures[origin];
  if (own === undefined || carried === undefined) return false;
  const keyIds = Object.keys(carried);
  return keyIds.length === 1 && keyIds[0] === own.keyId && carried[own.keyId] === own.signature;
}

export function eventByteLength(event: unknown): number {
  return canonicalBytes(event).length;
}
