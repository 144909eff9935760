import { createHash } from "node:crypto";
import { serverNameOf } from "../src/identifiers";
import { FollowerRoom, HubRoom } from "../src/room/roomCore";
import { RoomState } from "../src/room/roomState";
import { MIMI_V1 } from "../src/roomVersions";
import { DEFAULT_ENCRYPTION_ALGORITHM, ROOM_VERSION_ID } from "../src/roomVersions/mimi1";
import { encodeUnpaddedBase64, encodeUrlSafeBase64 } from "../src/events/base64";
import { canonicalJson } from "../src/events/canonicalJson";
import { createLimitedEvent, redactEvent, lpduBody } from "../src/events/pdu";
import { StaticKeyLookup } from "../src/events/signatures";
import { ServerSigningKey } from "../src/events/signingKey";
import type { FullyFormedEvent, JsonObject, LimitedEvent, LimitedEventTemplate } from "../src/events/types";

/**
 * Interoperability test vectors (docs/test-vectors/events.json): one
 * deterministic room history of room version io.mimi-appservice.room.v1,
 * sequenced by the real hub core and re-applied by the real follower core.
 * Seeds, timestamps and the room ID are fixed and ed25519 signatures are
 * deterministic, so the output is reproducible byte for byte.
 */

/** Where the vectors live, relative to the repository root. */
export const TEST_VECTORS_PATH = "docs/test-vectors/events.json";

export const HUB_SERVER = "hub.example";
export const FOLLOWER_SERVER = "follower.example";
const HUB_KEY_ID = "ed25519:hub1";
const FOLLOWER_KEY_ID = "ed25519:follower1";
const ROOM_ID = `!TestVectorRoom:${HUB_SERVER}`;
const ALICE = `@alice:${HUB_SERVER}`;
const BOB = `@bob:${FOLLOWER_SERVER}`;
/** 2025-01-01T00:00:00Z; event i (0-based) is stamped FIRST_TS + 1000 * i. */
const FIRST_TS = 1_735_689_600_000;
const SEED_PREFIX = "io.mimi-appservice test vectors: ";

export interface TestVectorKey {
  key_id: string;
  /** Unpadded standard base64 of the 32-byte ed25519 seed (RFC 8032 private key). */
  seed: string;
  /** Unpadded standard base64 of the 32-byte ed25519 public key derived from the seed. */
  public_key: string;
}

export interface TestVector {
  name: string;
  description: string;
  /** 1-based position of the event in the room's history. */
  seq: number;
  /** The keys of every server whose signature the event carries. */
  signing_keys: Record<string, TestVectorKey>;
  event_id: string;
  /** The fully-formed event, as the hub emits it. */
  event: FullyFormedEvent;
  /** The event redacted (top level and content), signatures kept. */
  redacted: FullyFormedEvent;
  /** The limited event (LPDU) the origin sent to the hub. */
  limited_event: LimitedEvent;
  lpdu_hash: string;
  content_hash: string;
  /** Canonical JSON whose SHA-256 is `lpdu_hash`. */
  canonical_lpdu: string;
  /** Canonical JSON the origin signed (absent when the origin is the hub). */
  canonical_origin_signed?: string;
  /** Canonical JSON whose SHA-256 is `content_hash`. */
  canonical_content: string;
  /** Canonical JSON the hub signed; its SHA-256, URL-safe unpadded base64, is the event ID. */
  canonical_redacted: string;
}

export interface TestVectorFile {
  room_version: string;
  description: string;
  vectors: TestVector[];
}

const DESCRIPTION = [
  `Test vectors for room version ${ROOM_VERSION_ID} (see docs/protocol.md, sections 3 to 6).`,
  "The vectors are one room history, in order: applying every `event` in turn to an empty room must succeed (hashes, signatures, auth_events selection and auth rules).",
  `Signing keys: the seed of a server is SHA-256 of the UTF-8 string "${SEED_PREFIX}<server name>"; each vector lists the keys of the servers that signed it.`,
  "Per vector: `event` is the fully-formed event, `redacted` its redacted form, `event_id` its ID, `limited_event` the LPDU the origin sent to the hub.",
  "`canonical_lpdu` is hashed to `lpdu_hash` (hashes.lpdu.sha256); `canonical_origin_signed` is what the origin signed (absent when the origin is the hub, which then signs alone);",
  "`canonical_content` is hashed to `content_hash` (hashes.sha256); `canonical_redacted` is what the hub signed, and its SHA-256 in URL-safe unpadded base64 after `$` is the event ID.",
  "All hashes and signatures are unpadded standard base64; all canonical strings are RFC 8785 JSON.",
].join(" ");

interface Step {
  name: string;
  description: string;
  sender: string;
  type: string;
  stateKey?: string;
  content: JsonObject;
}

/** The admin role of the vectors' room, the same in both roles events. */
const ADMIN_ROLE = {
  order: 100,
  permissions: { add: true, kick: true, ban: true, redact: true, roles: ["admin", "moderator", "member"] },
  assignees: [ALICE],
};

const STEPS: readonly Step[] = [
  {
    name: "create",
    description:
      "m.room.create: the first event, no auth_events and no prev_events. The creator is on the hub, so only the hub signs.",
    sender: ALICE,
    type: "m.room.create",
    stateKey: "",
    content: { policy_id: ROOM_VERSION_ID, encryption_algorithm: DEFAULT_ENCRYPTION_ALGORITHM },
  },
  {
    name: "creator join",
    description:
      "The creator's join, which must be the second event (it skips the join rules). Hub-local: only the hub signs.",
    sender: ALICE,
    type: "m.room.user",
    stateKey: ALICE,
    content: { participation: "join" },
  },
  {
    name: "invite",
    description:
      "The creator invites a user of the follower (the creator holds every permission until the first m.room.roles event).",
    sender: ALICE,
    type: "m.room.user",
    stateKey: BOB,
    content: { participation: "invite", reason: "Welcome to the test room" },
  },
  {
    name: "follower join relayed by the hub",
    description:
      "The invited user joins from follower.example: the follower signed the LPDU, the hub added auth_events, prev_events, hashes.sha256 and its own signature. Two signatures.",
    sender: BOB,
    type: "m.room.user",
    stateKey: BOB,
    content: { participation: "join" },
  },
  {
    name: "first roles event",
    description:
      "The creator defines the room's first roles; from now on only roles count, and auth_events include this event.",
    sender: ALICE,
    type: "m.room.roles",
    stateKey: "",
    content: {
      roles: {
        admin: ADMIN_ROLE,
        member: { order: 1, permissions: { sendMessages: true }, assignees: [BOB] },
      },
    },
  },
  {
    name: "name change",
    description:
      "m.room.name: its content is removed by redaction, so only the content hash covers the name.",
    sender: ALICE,
    type: "m.room.name",
    stateKey: "",
    content: { name: "Interop test room" },
  },
  {
    name: "message",
    description:
      "A custom non-state event type from a joined user with sendMessages. Its numbers exercise RFC 8785 number serialisation (ECMAScript Number.prototype.toString).",
    sender: ALICE,
    type: "org.example.message",
    content: {
      msgtype: "org.example.text",
      body: "Hello, world!",
      numbers: [0, -1, 1.5, 100, 1e20, 1e21, 1e-7, -0.000001, 9007199254740991],
    },
  },
  {
    name: "non-ASCII message from the follower",
    description:
      "Relayed from follower.example (two signatures). The body holds Latin-1, BMP and astral-plane characters, CJK, Hangul, and characters RFC 8785 escapes (U+0007, U+0008, U+000C, U+001F, tab, newline, carriage return, quote, backslash) or leaves alone (U+007F, U+2028, '/'). The keys of `sorted_by_utf16` are ordered by UTF-16 code units in canonical JSON (the emoji's surrogates sort before U+FF5A), not by code points.",
    sender: BOB,
    type: "org.example.message",
    content: {
      msgtype: "org.example.text",
      body: 'Caf\u00e9 \u2615 \u2014 \ud83d\ude00 \u6f22\u5b57 \u304b\u306a \ud55c\uae00 | bell\u0007 bs\b ff\f us\u001f tab\t nl\n cr\r "quote" back\\slash del\u007f ls\u2028 /slash',
      sorted_by_utf16: { z: 1, "\uff5a": 2, "\ud83d\ude00": 3, "\u00e9": 4, Z: 5, "\u0007": 6 },
    },
  },
  {
    name: "roles change",
    description:
      "The admin adds a moderator role: allowed because the admin's roles permission names every role the change touches (moderator).",
    sender: ALICE,
    type: "m.room.roles",
    stateKey: "",
    content: {
      roles: {
        admin: ADMIN_ROLE,
        moderator: { order: 50, permissions: { kick: true }, assignees: [BOB] },
        member: { order: 1, permissions: { sendMessages: true }, assignees: [BOB] },
      },
    },
  },
  {
    name: "ban",
    description:
      "The admin bans the follower's user: ban permission, and effective ban power 100 against 0 (none of the target's roles defines ban). Redaction keeps participation, drops reason.",
    sender: ALICE,
    type: "m.room.user",
    stateKey: BOB,
    content: { participation: "ban", reason: "Test vector: ban" },
  },
];

/** The deterministic key of one test server. */
export function testVectorKey(serverName: string, keyId: string): ServerSigningKey {
  const seed = createHash("sha256")
    .update(SEED_PREFIX + serverName, "utf8")
    .digest();
  return new ServerSigningKey(serverName, keyId, seed);
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`test vector self-check failed: ${what}`);
}

function withoutSignatures<T extends { signatures?: unknown }>(value: T): Omit<T, "signatures"> {
  const { signatures: _signatures, ...rest } = value;
  return rest;
}

function keyEntry(key: ServerSigningKey): TestVectorKey {
  return { key_id: key.keyId, seed: key.seedBase64, public_key: key.publicKeyBase64 };
}

/**
 * Builds the vectors: every step goes origin → `createLimitedEvent` →
 * `HubRoom.sequence` → `FollowerRoom.apply`, and the canonical strings are
 * checked against the hashes, signatures and event ID the real code produced.
 */
export function buildTestVectors(): TestVectorFile {
  const hubKey = testVectorKey(HUB_SERVER, HUB_KEY_ID);
  const followerKey = testVectorKey(FOLLOWER_SERVER, FOLLOWER_KEY_ID);
  const keysByServer = new Map([
    [HUB_SERVER, hubKey],
    [FOLLOWER_SERVER, followerKey],
  ]);
  const lookup = new StaticKeyLookup()
    .add(HUB_SERVER, hubKey.keyId, hubKey.verifyKey())
    .add(FOLLOWER_SERVER, followerKey.keyId, followerKey.verifyKey());
  const hubState = new RoomState();
  const followerState = new RoomState();
  const hub = new HubRoom(ROOM_ID, MIMI_V1, hubState, hubKey);
  const follower = new FollowerRoom(ROOM_ID, MIMI_V1, followerState, HUB_SERVER);

  const vectors = STEPS.map((step, index): TestVector => {
    const origin = serverNameOf(step.sender);
    const originKey = keysByServer.get(origin);
    if (originKey === undefined) throw new Error(`no key for ${origin}`);
    const template: LimitedEventTemplate = {
      room_id: ROOM_ID,
      type: step.type,
      sender: step.sender,
      origin_server_ts: FIRST_TS + 1000 * index,
      hub_server: HUB_SERVER,
      content: clone(step.content),
    };
    if (step.stateKey !== undefined) template.state_key = step.stateKey;

    const lpdu = createLimitedEvent(template, originKey, MIMI_V1);
    const limitedEvent = clone(lpdu);
    const sequenced = hub.sequence(clone(lpdu), origin, lookup);
    hubState.append(sequenced.eventId, sequenced.event);
    const event = clone(sequenced.event);
    const applied = follower.apply(clone(sequenced.event), lookup);
    followerState.append(applied.eventId, applied.event);
    check(applied.eventId === sequenced.eventId, `${step.name}: hub and follower event IDs differ`);
    check(applied.seq === index + 1 && sequenced.seq === index + 1, `${step.name}: position`);

    const lpduHash = event.hashes.lpdu.sha256;
    const contentHash = event.hashes.sha256;
    const canonicalLpdu = canonicalJson(lpduBody(event));
    check(encodeUnpaddedBase64(sha256(canonicalLpdu)) === lpduHash, `${step.name}: lpdu hash`);
    const canonicalContent = canonicalJson({
      ...withoutSignatures(event),
      hashes: { lpdu: event.hashes.lpdu },
    });
    check(encodeUnpaddedBase64(sha256(canonicalContent)) === contentHash, `${step.name}: content hash`);
    const redacted = redactEvent(event, MIMI_V1);
    const canonicalRedacted = canonicalJson(withoutSignatures(redacted));
    check(
      "$" + encodeUrlSafeBase64(sha256(canonicalRedacted)) === sequenced.eventId,
      `${step.name}: event ID`,
    );
    const hubSignature = event.signatures[HUB_SERVER]?.[hubKey.keyId];
    check(
      hubSignature !== undefined &&
        hubKey.verifyKey().verify(Buffer.from(canonicalRedacted, "utf8"), hubSignature),
      `${step.name}: hub signature`,
    );

    const signingKeys: Record<string, TestVectorKey> = { [HUB_SERVER]: keyEntry(hubKey) };
    let canonicalOriginSigned: string | undefined;
    if (origin !== HUB_SERVER) {
      signingKeys[origin] = keyEntry(originKey);
      canonicalOriginSigned = canonicalJson(
        redactEvent({ ...lpduBody(event), hashes: { lpdu: event.hashes.lpdu } }, MIMI_V1),
      );
      const originSignature = event.signatures[origin]?.[originKey.keyId];
      check(
        originSignature !== undefined &&
          originKey.verifyKey().verify(Buffer.from(canonicalOriginSigned, "utf8"), originSignature),
        `${step.name}: origin signature`,
      );
    } else {
      check(
        Object.keys(event.signatures).length === 1,
        `${step.name}: hub-local event signed by the hub only`,
      );
    }

    return {
      name: step.name,
      description: step.description,
      seq: sequenced.seq,
      signing_keys: signingKeys,
      event_id: sequenced.eventId,
      event,
      redacted,
      limited_event: limitedEvent,
      lpdu_hash: lpduHash,
      content_hash: contentHash,
      canonical_lpdu: canonicalLpdu,
      ...(canonicalOriginSigned === undefined ? {} : { canonical_origin_signed: canonicalOriginSigned }),
      canonical_content: canonicalContent,
      canonical_redacted: canonicalRedacted,
    };
  });

  return { room_version: ROOM_VERSION_ID, description: DESCRIPTION, vectors };
}

/** The file's exact text: 2-space indentation and a trailing newline. */
export function serializeTestVectors(file: TestVectorFile): string {
  return JSON.stringify(file, null, 2) + "\n";
}
