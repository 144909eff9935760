import { createHash } from "node:crypto";
import { isValidEventId, parseEventId } from "../../src/identifiers";
import { expectRejected } from "./expectIdentifierError";

const BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const referenceHash = (data: string): string => createHash("sha256").update(data).digest("base64url");
const realId = `$${referenceHash("an event")}`;
const A42 = "A".repeat(42);

describe("parseEventId: accepted", () => {
  it.each<[string]>([
    [realId],
    [`$${referenceHash("another event")}`],
    [`$${A42}A`],
    [`$${"_".repeat(42)}w`],
    [`$${"-".repeat(42)}8`],
    [`$${"z9".repeat(21)}Q`],
  ])("%s", (input) => {
    expect(parseEventId(input)).toBe(input);
    expect(isValidEventId(input)).toBe(true);
  });

  it("the real reference hash has the expected shape", () => {
    expect(realId).toHaveLength(44);
  });

  it("keeps case; IDs differing only in case are both valid and distinct", () => {
    const lower = `$${"a".repeat(42)}A`;
    const upper = `$${"A".repeat(42)}A`;
    expect(parseEventId(lower)).toBe(lower);
    expect(parseEventId(upper)).toBe(upper);
    expect(parseEventId(lower)).not.toBe(parseEventId(upper));
  });
});

describe("parseEventId: rejected", () => {
  it.each<[string, string, string]>([
    ["", "event_id.sigil", 'is empty; must start with the sigil "$"'],
    [realId.slice(1), "event_id.sigil", 'must start with the sigil "$"'],
    [`!${realId.slice(1)}`, "event_id.sigil", 'not "!"'],
    [`@${realId.slice(1)}`, "event_id.sigil", 'not "@"'],
    ["$", "event_id.hash_empty", 'nothing after the "$"'],
    [`$${A42}`, "event_id.hash_length", "hash is 42 characters long; a SHA-256 reference hash is exactly 43"],
    [`$${A42}AA`, "event_id.hash_length", "hash is 44 characters long"],
    ["$abc", "event_id.hash_length", "hash is 3 characters long"],
    [`$${A42.slice(1)}+A`, "event_id.hash_chars", 'contains "+" (U+002B)'],
    [`$${A42.slice(1)}/A`, "event_id.hash_chars", 'contains "/"'],
    [`$${A42}A=`, "event_id.hash_chars", 'contains "="'],
    [`$${A42.slice(1)}.A`, "event_id.hash_chars", 'contains "."'],
    [`$${A42.slice(1)}:A`, "event_id.hash_chars", 'contains ":"'],
    [`$${A42.slice(1)} A`, "event_id.hash_chars", 'contains " "'],
    [`$${A42.slice(1)}\u00e9A`, "event_id.hash_chars", "U+00E9"],
    [
      `$${A42}B`,
      "event_id.hash_non_canonical",
      'last character "B" (U+0042) sets bits beyond the 32-byte hash',
    ],
    [`$${A42}_`, "event_id.hash_non_canonical", "non-canonical"],
  ])("%j breaks %s", (input, rule, fragment) => {
    expectRejected(() => parseEventId(input), "event_id", input, rule, fragment);
    expect(isValidEventId(input)).toBe(false);
  });

  // 43 sextets hold 258 bits; only final characters whose value is a multiple of 4 encode 256.
  it.each(BASE64URL.split("").map((c, value) => [c, value] as const))(
    "final character %s (value %d) is accepted iff its two low bits are zero",
    (c, value) => {
      const input = `$${A42}${c}`;
      expect(isValidEventId(input)).toBe(value % 4 === 0);
      if (value % 4 === 0) {
        expect(Buffer.from(input.slice(1), "base64url").toString("base64url")).toBe(input.slice(1));
      } else {
        expectRejected(() => parseEventId(input), "event_id", input, "event_id.hash_non_canonical");
      }
    },
  );

  it.each<[unknown, string]>([
    [42, "(number)"],
    [null, "(null)"],
    [undefined, "(undefined)"],
    [{ event_id: realId }, "(object)"],
    [[realId], "(array)"],
  ])("non-string %p", (input, typeWording) => {
    expectRejected(
      () => parseEventId(input),
      "event_id",
      input,
      "event_id.not_string",
      "must be a string",
      typeWording,
    );
    expect(isValidEventId(input as string)).toBe(false);
  });
});
