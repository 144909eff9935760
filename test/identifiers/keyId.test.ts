import { isValidKeyId, parseKeyId } from "../../src/identifiers";
import { expectRejected } from "./expectIdentifierError";

describe("parseKeyId: accepted", () => {
  it.each<[string, string]>([
    ["ed25519:abc", "abc"],
    ["ed25519:0", "0"],
    ["ed25519:_", "_"],
    ["ed25519:a_B_1", "a_B_1"],
    ["ed25519:ABC", "ABC"],
  ])("%s", (input, version) => {
    expect(parseKeyId(input)).toEqual({ raw: input, algorithm: "ed25519", version });
    expect(isValidKeyId(input)).toBe(true);
  });

  it("keeps case in the version; versions differing only in case are distinct", () => {
    expect(parseKeyId("ed25519:Key1").version).toBe("Key1");
    expect(parseKeyId("ed25519:Key1").raw).not.toBe(parseKeyId("ed25519:key1").raw);
  });
});

describe("parseKeyId: rejected", () => {
  it.each<[string, string, string]>([
    ["", "key_id.missing_colon", 'has no ":"'],
    ["ed25519", "key_id.missing_colon", 'has no ":"'],
    ["ed25519_abc", "key_id.missing_colon", 'has no ":"'],
    ["curve25519:abc", "key_id.algorithm", 'algorithm "curve25519" is not supported; only "ed25519" is'],
    ["signed_curve25519:abc", "key_id.algorithm", '"signed_curve25519"'],
    ["ED25519:abc", "key_id.algorithm", 'algorithm "ED25519"'],
    ["ed25519x:abc", "key_id.algorithm", 'algorithm "ed25519x"'],
    ["ed2551:abc", "key_id.algorithm", 'algorithm "ed2551"'],
    ["xed25519:abc", "key_id.algorithm", 'algorithm "xed25519"'],
    [":abc", "key_id.algorithm", 'algorithm ""'],
    ["ed25519:", "key_id.version_empty", "key version is empty"],
    ["ed25519:a-b", "key_id.version_chars", 'key version contains "-" (U+002D)'],
    ["ed25519:a.b", "key_id.version_chars", 'key version contains "."'],
    ["ed25519:a:b", "key_id.version_chars", 'key version contains ":"'],
    ["ed25519:a b", "key_id.version_chars", 'key version contains " "'],
    ["ed25519:a/b", "key_id.version_chars", 'key version contains "/"'],
    ["ed25519:\u00e9", "key_id.version_chars", "U+00E9"],
  ])("%j breaks %s", (input, rule, fragment) => {
    expectRejected(() => parseKeyId(input), "key_id", input, rule, fragment);
    expect(isValidKeyId(input)).toBe(false);
  });

  it.each<[unknown, string]>([
    [25519, "(number)"],
    [null, "(null)"],
    [undefined, "(undefined)"],
    [{ algorithm: "ed25519" }, "(object)"],
  ])("non-string %p", (input, typeWording) => {
    expectRejected(
      () => parseKeyId(input),
      "key_id",
      input,
      "key_id.not_string",
      "must be a string",
      typeWording,
    );
    expect(isValidKeyId(input as string)).toBe(false);
  });
});
