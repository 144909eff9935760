import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { canonicalize as secondImplementation } from "json-canonicalize";
import { decodeBase64 } from "../../src/events/base64";
import { parseFullyFormedEvent, parseLimitedEvent } from "../../src/events/envelope";
import { EventFormatError, SignatureError } from "../../src/events/errors";
import {
  computeContentHash,
  computeEventId,
  computeLpduHash,
  redactEvent,
  verifyFullyFormedEvent,
  verifyLimitedEvent,
} from "../../src/events/pdu";
import { StaticKeyLookup } from "../../src/events/signatures";
import { ServerSigningKey } from "../../src/events/signingKey";
import {
  TEST_VECTORS_PATH,
  buildTestVectors,
  serializeTestVectors,
  type TestVector,
  type TestVectorFile,
} from "../../scripts/testVectors";
import type { FullyFormedEvent, JsonObject, JsonValue } from "../../src/events/types";
import { FollowerRoom } from "../../src/room/roomCore";
import { RoomState } from "../../src/room/roomState";
import { MIMI_V1 } from "../../src/roomVersions";

const FILE_PATH = resolve(__dirname, "..", "..", TEST_VECTORS_PATH);
const fileText = readFileSync(FILE_PATH, "utf8");
const committed = JSON.parse(fileText) as TestVectorFile;
const vectors = committed.vectors.map((vector) => [vector.name, vector] as const);

function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

function seedOf(key: { seed: string }): Buffer {
  const seed = decodeBase64(key.seed);
  if (seed === undefined || seed.length !== 32) throw new Error(`bad seed ${key.seed}`);
  return seed;
}

/** A lookup holding exactly the keys the vector lists, derived from its seeds. */
function lookupFor(vector: TestVector): StaticKeyLookup {
  const lookup = new StaticKeyLookup();
  for (const [server, key] of Object.entries(vector.signing_keys)) {
    lookup.add(server, key.key_id, new ServerSigningKey(server, key.key_id, seedOf(key)).verifyKey());
  }
  return lookup;
}

function allKeys(): StaticKeyLookup {
  const lookup = new StaticKeyLookup();
  for (const vector of committed.vectors) {
    for (const [server, key] of Object.entries(vector.signing_keys)) {
      lookup.add(server, key.key_id, new ServerSigningKey(server, key.key_id, seedOf(key)).verifyKey());
    }
  }
  return lookup;
}

/** The path to the first string value inside `value`, depth first. */
function firstStringPath(value: JsonValue, path: (string | number)[] = []): (string | number)[] | undefined {
  if (typeof value === "string") return path;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = firstStringPath(value[i]!, [...path, i]);
      if (found !== undefined) return found;
    }
  } else if (typeof value === "object" && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      const found = firstStringPath(item, [...path, key]);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/** Changes one character of the first string in `content`. */
function flipOneCharacter(content: JsonObject): void {
  const path = firstStringPath(content);
  if (path === undefined || path.length === 0) throw new Error("content holds no string");
  let parent = content as unknown as Record<string | number, JsonValue>;
  for (const step of path.slice(0, -1))
    parent = parent[step] as unknown as Record<string | number, JsonValue>;
  const last = path[path.length - 1]!;
  const text = parent[last] as string;
  parent[last] = (text[0] === "x" ? "y" : "x") + text.slice(1);
}

function sha256Base64(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("base64").replace(/=+$/, "");
}

function withoutSignatures(value: object): object {
  const { signatures: _signatures, ...rest } = value as { signatures?: unknown };
  return rest;
}

describe("docs/test-vectors/events.json", () => {
  it("is exactly what the generator produces (regenerate with `npx tsx scripts/generateTestVectors.ts`)", () => {
    const regenerated = buildTestVectors();
    expect(JSON.parse(serializeTestVectors(regenerated))).toEqual(committed);
    expect(serializeTestVectors(regenerated)).toBe(fileText);
  });

  it("covers the cases other implementations need", () => {
    expect(committed.room_version).toBe(MIMI_V1.id);
    expect(committed.vectors.length).toBeGreaterThanOrEqual(8);
    const types = committed.vectors.map((v) => `${v.event.type}/${String(v.event.content.participation)}`);
    expect(types).toEqual(
      expect.arrayContaining([
        "m.room.create/undefined",
        "m.room.user/join",
        "m.room.user/ban",
        "m.room.roles/undefined",
        "m.room.name/undefined",
        "org.example.message/undefined",
      ]),
    );
    const twoSigned = committed.vectors.filter((v) => Object.keys(v.event.signatures).length === 2);
    expect(twoSigned.length).toBeGreaterThan(0);
    for (const vector of twoSigned) expect(vector.event.sender).not.toMatch(/:hub\.example$/);
    expect(fileText).toMatch(/\\u0007/);
    expect(fileText).toMatch(/\u{1F600}/u);
    expect(fileText.endsWith("}\n")).toBe(true);
  });

  describe.each(vectors)("vector %s", (_name, vector) => {
    const event = (): FullyFormedEvent => clone(vector.event);

    it("has a valid envelope and verifies with the keys derived from its seeds", () => {
      expect(parseFullyFormedEvent(event())).toEqual(vector.event);
      for (const [server, key] of Object.entries(vector.signing_keys)) {
        const signing = new ServerSigningKey(server, key.key_id, seedOf(key));
        expect(signing.publicKeyBase64).toBe(key.public_key);
        expect(Object.keys(vector.event.signatures[server] ?? {})).toEqual([key.key_id]);
      }
      expect(Object.keys(vector.event.signatures).sort()).toEqual(Object.keys(vector.signing_keys).sort());
      expect(verifyFullyFormedEvent(event(), lookupFor(vector), MIMI_V1)).toBe(vector.event_id);
    });

    it("has the event ID, hashes and redacted form the vector states", () => {
      expect(computeEventId(event(), MIMI_V1)).toBe(vector.event_id);
      expect(redactEvent(event(), MIMI_V1)).toEqual(vector.redacted);
      expect(computeEventId(clone(vector.redacted), MIMI_V1)).toBe(vector.event_id);
      expect(computeLpduHash(event())).toBe(vector.lpdu_hash);
      expect(vector.event.hashes.lpdu.sha256).toBe(vector.lpdu_hash);
      expect(computeContentHash(event())).toBe(vector.content_hash);
      expect(vector.event.hashes.sha256).toBe(vector.content_hash);
    });

    it("has a limited event the hub accepts and that matches the fully-formed event", () => {
      const lpdu = parseLimitedEvent(clone(vector.limited_event));
      expect(() => verifyLimitedEvent(lpdu, lookupFor(vector), MIMI_V1)).not.toThrow();
      const hub = vector.event.hub_server;
      const { auth_events: _a, prev_events: _p, hashes, signatures, ...rest } = event();
      const originSignatures = Object.fromEntries(Object.entries(signatures).filter(([s]) => s !== hub));
      expect(vector.limited_event).toEqual({
        ...rest,
        hashes: { lpdu: hashes.lpdu },
        signatures: originSignatures,
      });
    });

    it("has canonical strings that a second RFC 8785 implementation and raw ed25519 agree with", () => {
      const { auth_events: _a, prev_events: _p, hashes, signatures: _s, ...lpduBody } = event();
      expect(vector.canonical_lpdu).toBe(secondImplementation(lpduBody));
      expect(sha256Base64(vector.canonical_lpdu)).toBe(vector.lpdu_hash);

      const contentInput = { ...withoutSignatures(event()), hashes: { lpdu: hashes.lpdu } };
      expect(vector.canonical_content).toBe(secondImplementation(contentInput));
      expect(sha256Base64(vector.canonical_content)).toBe(vector.content_hash);

      expect(vector.canonical_redacted).toBe(secondImplementation(withoutSignatures(vector.redacted)));
      const referenceHash = createHash("sha256")
        .update(vector.canonical_redacted, "utf8")
        .digest("base64url");
      expect("$" + referenceHash).toBe(vector.event_id);

      const hub = vector.event.hub_server;
      const origin = vector.event.sender.slice(vector.event.sender.indexOf(":") + 1);
      const rawVerify = (server: string, text: string): boolean => {
        const key = vector.signing_keys[server]!;
        const publicKey = createPublicKey({
          key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(key.public_key, "base64").toString("base64url") },
          format: "jwk",
        });
        const signature = Buffer.from(vector.event.signatures[server]![key.key_id]!, "base64");
        return verify(null, Buffer.from(text, "utf8"), publicKey, signature);
      };
      expect(rawVerify(hub, vector.canonical_redacted)).toBe(true);
      if (origin === hub) {
        expect(vector.canonical_origin_signed).toBeUndefined();
      } else {
        const redactedLpdu = redactEvent({ ...lpduBody, hashes: { lpdu: hashes.lpdu } }, MIMI_V1);
        expect(vector.canonical_origin_signed).toBe(secondImplementation(redactedLpdu));
        expect(rawVerify(origin, vector.canonical_origin_signed!)).toBe(true);
      }
    });

    it("fails verification when one character of its content changes", () => {
      const tampered = event();
      flipOneCharacter(tampered.content);
      expect(() => verifyFullyFormedEvent(tampered, lookupFor(vector), MIMI_V1)).toThrow(EventFormatError);
      const tamperedLpdu = clone(vector.limited_event);
      flipOneCharacter(tamperedLpdu.content);
      expect(() => verifyLimitedEvent(tamperedLpdu, lookupFor(vector), MIMI_V1)).toThrow(EventFormatError);
    });

    it("fails verification when a signature changes", () => {
      for (const [server, key] of Object.entries(vector.signing_keys)) {
        const tampered = event();
        const signature = tampered.signatures[server]![key.key_id]!;
        tampered.signatures[server]![key.key_id] = (signature[0] === "A" ? "B" : "A") + signature.slice(1);
        expect(() => verifyFullyFormedEvent(tampered, lookupFor(vector), MIMI_V1)).toThrow(SignatureError);
      }
    });
  });

  it("replays in order through a fresh follower (linearity, auth_events selection, auth rules)", () => {
    const first = committed.vectors[0]!.event;
    const state = new RoomState();
    const follower = new FollowerRoom(first.room_id, MIMI_V1, state, first.hub_server);
    const lookup = allKeys();
    for (const vector of committed.vectors) {
      const applied = follower.apply(clone(vector.event), lookup);
      expect(applied.eventId).toBe(vector.event_id);
      expect(applied.seq).toBe(vector.seq);
      state.append(applied.eventId, applied.event);
    }
  });
});
