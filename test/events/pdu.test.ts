import { decodeBase64, decodeUrlSafeBase64 } from "../../src/events/base64";
import { parseFullyFormedEvent, parseLimitedEvent } from "../../src/events/envelope";
import { EventFormatError, SignatureError } from "../../src/events/errors";
import {
  computeEventId,
  computeLpduHash,
  createLimitedEvent,
  formEvent,
  redactEvent,
  verifyFullyFormedEvent,
  verifyLimitedEvent,
} from "../../src/events/pdu";
import type { FullyFormedEvent, LimitedEvent, LimitedEventTemplate } from "../../src/events/types";
import { MIMI_V1 } from "../../src/roomVersions";
import { lookupOf, testKey } from "../support/keys";

const hub = testKey("hub.example");
const origin = testKey("origin.example");
const stranger = testKey("stranger.example");
const keys = lookupOf(hub, origin, stranger);

const template: LimitedEventTemplate = {
  room_id: "!room:hub.example",
  type: "m.room.name",
  state_key: "",
  sender: "@bob:origin.example",
  origin_server_ts: 1_700_000_000_000,
  hub_server: "hub.example",
  content: { name: "Caf\u00e9 \ud83d\ude00" },
};
const PREV = "$" + "A".repeat(43);
const AUTH = ["$" + "B".repeat(42) + "A", "$" + "C".repeat(42) + "E"];

function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

function fullyFormed(): FullyFormedEvent {
  return formEvent(createLimitedEvent(template, origin, MIMI_V1), AUTH, [PREV], hub, MIMI_V1).event;
}

describe("limited events (LM-04 §Linearized PDU)", () => {
  it("carries the LPDU hash and only the origin's signature", () => {
    const lpdu = createLimitedEvent(template, origin, MIMI_V1);
    expect(lpdu.hashes.lpdu.sha256).toBe(computeLpduHash(template));
    expect(Object.keys(lpdu.signatures)).toEqual(["origin.example"]);
    expect(parseLimitedEvent(clone(lpdu))).toEqual(lpdu);
    expect(() => verifyLimitedEvent(lpdu, keys, MIMI_V1)).not.toThrow();
  });

  it("is unsigned when the origin is the hub (the hub's signature covers it)", () => {
    const local = createLimitedEvent({ ...template, sender: "@alice:hub.example" }, hub, MIMI_V1);
    expect(local.signatures).toEqual({});
    expect(() => verifyLimitedEvent(local, keys, MIMI_V1)).not.toThrow();
  });

  it.each([
    ["content", (e: LimitedEvent) => (e.content.name = "evil")],
    ["origin_server_ts", (e: LimitedEvent) => (e.origin_server_ts += 1)],
    ["hub_server", (e: LimitedEvent) => (e.hub_server = "other.example")],
    ["state_key", (e: LimitedEvent) => (e.state_key = "x")],
  ])("detects a changed %s through the LPDU hash", (_field, tamper) => {
    const lpdu = clone(createLimitedEvent(template, origin, MIMI_V1));
    tamper(lpdu);
    expect(() => verifyLimitedEvent(lpdu, keys, MIMI_V1)).toThrow(/hashes.lpdu.sha256 does not match/);
  });

  it("refuses a re-hashed LPDU whose origin signature no longer matches", () => {
    const lpdu = clone(createLimitedEvent(template, origin, MIMI_V1));
    lpdu.origin_server_ts += 1;
    lpdu.hashes.lpdu.sha256 = computeLpduHash(lpdu);
    expect(() => verifyLimitedEvent(lpdu, keys, MIMI_V1)).toThrow(SignatureError);
  });

  it("refuses an LPDU signed by a server other than the sender's", () => {
    const forged = createLimitedEvent(template, stranger, MIMI_V1);
    expect(() => verifyLimitedEvent(forged, keys, MIMI_V1)).toThrow(/not signed by origin.example/);
  });

  it("refuses an LPDU signed with a key ID we do not know", () => {
    const lpdu = createLimitedEvent(template, testKey("origin.example", "ed25519:other"), MIMI_V1);
    expect(() => verifyLimitedEvent(lpdu, keys, MIMI_V1)).toThrow(/none of the key IDs/);
  });
});

describe("fully-formed events (LM-04 §Events, §Hashes, §Signing)", () => {
  it("verifies and yields the same event ID as the hub computed", () => {
    const lpdu = createLimitedEvent(template, origin, MIMI_V1);
    const formed = formEvent(lpdu, AUTH, [PREV], hub, MIMI_V1);
    expect(formed.event.auth_events).toEqual(AUTH);
    expect(formed.event.prev_events).toEqual([PREV]);
    expect(Object.keys(formed.event.signatures).sort()).toEqual(["hub.example", "origin.example"]);
    expect(formed.eventId).toMatch(/^\$[A-Za-z0-9_-]{43}$/);
    expect(verifyFullyFormedEvent(clone(formed.event), keys, MIMI_V1)).toBe(formed.eventId);
    expect(computeEventId(formed.event, MIMI_V1)).toBe(formed.eventId);
    expect(JSON.parse(formed.json)).toEqual(formed.event);
  });

  it("keeps the event ID when content that redaction removes is redacted", () => {
    const event = fullyFormed();
    const redacted = redactEvent(event, MIMI_V1);
    expect(redacted.content).toEqual({});
    expect(computeEventId(redacted, MIMI_V1)).toBe(computeEventId(event, MIMI_V1));
  });

  it.each([
    [
      "content (hash)",
      (e: FullyFormedEvent) => (e.content.name = "evil"),
      /hashes.lpdu.sha256 does not match/,
    ],
    [
      "prev_events (hash)",
      (e: FullyFormedEvent) => (e.prev_events = ["$" + "Z".repeat(42) + "Q"]),
      /hashes.sha256/,
    ],
    ["auth_events (hash)", (e: FullyFormedEvent) => e.auth_events.pop(), /hashes.sha256 does not match/],
    [
      "the hub signature",
      (e: FullyFormedEvent) => (e.signatures["hub.example"]!["ed25519:1"] = "A".repeat(86)),
      /signature of hub.example/,
    ],
    [
      "the origin signature",
      (e: FullyFormedEvent) => delete e.signatures["origin.example"],
      /not signed by origin.example/,
    ],
  ])("detects tampering with %s", (_what, tamper, message) => {
    const event = clone(fullyFormed());
    tamper(event);
    expect(() => verifyFullyFormedEvent(event, keys, MIMI_V1)).toThrow(message);
  });

  describe("the echo of an LPDU this server signed", () => {
    const signed = () => {
      const lpdu = createLimitedEvent(template, origin, MIMI_V1);
      const own = { keyId: "ed25519:1", signature: lpdu.signatures["origin.example"]!["ed25519:1"]! };
      return { event: clone(formEvent(lpdu, AUTH, [PREV], hub, MIMI_V1).event), own };
    };
    // No origin key at all: only the shortcut can accept the origin signature.
    const hubKeyOnly = lookupOf(hub);

    it("needs no check of the origin signature when it carries the very signature we made", () => {
      const { event, own } = signed();
      const ownSignature = (hash: string) => (hash === event.hashes.lpdu.sha256 ? own : undefined);
      expect(() => verifyFullyFormedEvent(event, hubKeyOnly, MIMI_V1)).toThrow(/origin signature/);
      expect(verifyFullyFormedEvent(event, hubKeyOnly, MIMI_V1, { ownSignature })).toBe(
        computeEventId(event, MIMI_V1),
      );
    });

    it.each([
      [
        "another signature value",
        (e: FullyFormedEvent) => (e.signatures["origin.example"]!["ed25519:1"] = "A".repeat(86)),
      ],
      [
        "a second origin signature",
        (e: FullyFormedEvent) => (e.signatures["origin.example"]!["ed25519:2"] = "A".repeat(86)),
      ],
    ])("checks the origin signature as usual when it carries %s", (_what, tamper) => {
      const { event, own } = signed();
      tamper(event);
      const ownSignature = () => own;
      expect(() => verifyFullyFormedEvent(event, hubKeyOnly, MIMI_V1, { ownSignature })).toThrow(
        /origin signature/,
      );
    });

    it("still checks the LPDU hash and the hub signature", () => {
      const { event, own } = signed();
      const ownSignature = () => own;
      const altered = clone(event);
      altered.content.name = "evil";
      expect(() => verifyFullyFormedEvent(altered, keys, MIMI_V1, { ownSignature })).toThrow(
        /hashes.lpdu.sha256 does not match/,
      );
      const resigned = clone(event);
      resigned.signatures["hub.example"]!["ed25519:1"] = "A".repeat(86);
      expect(() => verifyFullyFormedEvent(resigned, keys, MIMI_V1, { ownSignature })).toThrow(
        /signature of hub.example/,
      );
    });
  });

  it("detects a hub that re-hashes an altered event but cannot re-sign for the origin", () => {
    const lpdu = clone(createLimitedEvent(template, origin, MIMI_V1));
    lpdu.content.name = "rewritten by the hub";
    lpdu.hashes.lpdu.sha256 = computeLpduHash(lpdu);
    const event = formEvent(lpdu, AUTH, [PREV], hub, MIMI_V1).event;
    expect(() => verifyFullyFormedEvent(event, keys, MIMI_V1)).toThrow(/origin signature/);
  });

  it("refuses an event larger than 65,536 bytes of canonical JSON", () => {
    const big = createLimitedEvent({ ...template, content: { name: "x".repeat(65_000) } }, origin, MIMI_V1);
    expect(() => formEvent(big, AUTH, [PREV], hub, MIMI_V1)).toThrow(
      expect.objectContaining({ errcode: "M_TOO_LARGE" }),
    );
  });
});

describe("envelope shape", () => {
  const good = () => clone(fullyFormed()) as unknown as Record<string, unknown>;
  it.each([
    [
      "an unknown top-level field",
      (e: Record<string, unknown>) => (e.depth = 3),
      /unexpected top-level field "depth"/,
    ],
    ["a bad room ID", (e: Record<string, unknown>) => (e.room_id = "room:hub.example"), /room_id/],
    ["a bad sender", (e: Record<string, unknown>) => (e.sender = "@Bob:origin.example"), /sender/],
    [
      "a fractional timestamp",
      (e: Record<string, unknown>) => (e.origin_server_ts = 1.5),
      /origin_server_ts/,
    ],
    ["two prev_events", (e: Record<string, unknown>) => (e.prev_events = [PREV, PREV]), /prev_events/],
    ["no prev_events", (e: Record<string, unknown>) => (e.prev_events = []), /exactly one/],
    [
      "content that is an array",
      (e: Record<string, unknown>) => (e.content = []),
      /content must be an object/,
    ],
    [
      "a short hash",
      (e: Record<string, unknown>) => (e.hashes = { sha256: "abc", lpdu: { sha256: "abc" } }),
      /SHA-256/,
    ],
    ["duplicate auth events", (e: Record<string, unknown>) => (e.auth_events = [PREV, PREV]), /duplicates/],
    [
      "an invalid key ID",
      (e: Record<string, unknown>) => (e.signatures = { "hub.example": { "rsa:1": "x" } }),
      /key ID/,
    ],
  ])("refuses %s", (_what, mutate, message) => {
    const event = good();
    mutate(event);
    expect(() => parseFullyFormedEvent(event)).toThrow(EventFormatError);
    expect(() => parseFullyFormedEvent(event)).toThrow(message);
  });

  it("refuses a limited event that carries ordering fields", () => {
    const lpdu = { ...clone(createLimitedEvent(template, origin, MIMI_V1)), prev_events: [PREV] };
    expect(() => parseLimitedEvent(lpdu)).toThrow(/unexpected top-level field "prev_events"/);
  });

  it("refuses a limited event with a top-level hash", () => {
    const lpdu = clone(createLimitedEvent(template, origin, MIMI_V1)) as unknown as { hashes: object };
    lpdu.hashes = { ...lpdu.hashes, sha256: "A".repeat(43) };
    expect(() => parseLimitedEvent(lpdu)).toThrow(/no top-level hash/);
  });
});

describe("characters refused in type and state_key (store keys use U+0000 and U+FFFF)", () => {
  type Parser = (input: unknown) => unknown;
  const parsers: [string, () => Record<string, unknown>, Parser][] = [
    [
      "parseLimitedEvent",
      () => clone(createLimitedEvent(template, origin, MIMI_V1)) as unknown as Record<string, unknown>,
      parseLimitedEvent,
    ],
    [
      "parseFullyFormedEvent",
      () => clone(fullyFormed()) as unknown as Record<string, unknown>,
      parseFullyFormedEvent,
    ],
  ];
  // ("x\0y", "z") and ("x", "y\0z") would share the store key x\0y\0z.
  const refused: [string, string, string][] = [
    ["type", "x\u0000y", "U+0000 inside"],
    ["state_key", "y\u0000z", "U+0000 inside"],
    ["state_key", "\u0000", "U+0000 alone"],
    ["type", "m.room.name\uffff", "U+FFFF"],
    ["state_key", "\uffff", "U+FFFF"],
    ["type", "x\ud800", "an unpaired high surrogate at the end"],
    ["state_key", "\ud800x", "an unpaired high surrogate before another character"],
    ["state_key", "x\udc00", "an unpaired low surrogate"],
  ];
  const cases = parsers.flatMap(([name, make, parse]) =>
    refused.map(([field, value, what]) => [name, field, what, value, make, parse] as const),
  );

  it.each(cases)("%s refuses a %s holding %s", (_parser, field, _what, value, make, parse) => {
    const input = make();
    input[field] = value;
    let thrown: unknown;
    try {
      parse(input);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(EventFormatError);
    expect((thrown as EventFormatError).errcode).toBe("M_BAD_JSON");
    expect((thrown as EventFormatError).message).toContain(`${field} holds`);
  });

  const identifiers: [string, string][] = [
    ["room_id", "!ro\u0000om:hub.example"],
    ["sender", "@bob:origin.example\u0000"],
    ["hub_server", "hub.example\uffff"],
  ];
  it.each(
    parsers.flatMap(([name, make, parse]) =>
      identifiers.map(([field, value]) => [name, field, value, make, parse] as const),
    ),
  )(
    "%s refuses U+0000 and U+FFFF in %s through the identifier grammar",
    (_parser, field, value, make, parse) => {
      const input = make();
      input[field] = value;
      let thrown: unknown;
      try {
        parse(input);
      } catch (err) {
        thrown = err;
      }
      expect((thrown as EventFormatError).errcode).toBe("M_BAD_JSON");
      expect((thrown as EventFormatError).message).toContain(field);
    },
  );

  it.each(parsers)("%s accepts paired surrogates, U+FFFE and U+0001", (_parser, make, parse) => {
    const input = make();
    input.type = "org.example.\ud83d\ude00\ufffe";
    input.state_key = "\u0001\ud83d\ude00";
    expect(() => parse(input)).not.toThrow();
  });
});

describe("unpadded base64", () => {
  it.each([
    ["aGk", "hi"],
    ["aGk=", "hi"],
    ["", ""],
  ])("decodes %j", (text, expected) => {
    expect(decodeBase64(text)?.toString()).toBe(expected);
  });
  it.each(["a", "a*b=", "aGk==="])("refuses %j", (text) => {
    expect(decodeBase64(text)).toBeUndefined();
  });
  it("keeps the URL-safe alphabet apart", () => {
    expect(decodeUrlSafeBase64("-_8")).toBeDefined();
    expect(decodeBase64("-_8")).toBeUndefined();
  });
});
