import { isValidUserId, parseUserId } from "../../src/identifiers";
import { expectRejected } from "./expectIdentifierError";

const SERVER = ":example.org";
const userIdOfLength = (length: number): string => `@${"a".repeat(length - 1 - SERVER.length)}${SERVER}`;

describe("parseUserId: accepted", () => {
  it.each<[string, string, string]>([
    ["@alice:example.org", "alice", "example.org"],
    ["@a:b", "a", "b"],
    ["@alice:example.org:8448", "alice", "example.org:8448"],
    ["@alice:EXAMPLE.org", "alice", "EXAMPLE.org"],
    ["@0123456789:example.org", "0123456789", "example.org"],
    ["@abcdefghijklmnopqrstuvwxyz:example.org", "abcdefghijklmnopqrstuvwxyz", "example.org"],
    ["@-:example.org", "-", "example.org"],
    ["@.:example.org", ".", "example.org"],
    ["@=:example.org", "=", "example.org"],
    ["@_:example.org", "_", "example.org"],
    ["@/:example.org", "/", "example.org"],
    ["@+:example.org", "+", "example.org"],
    ["@a-.=_/+9:example.org", "a-.=_/+9", "example.org"],
    [userIdOfLength(255), "a".repeat(255 - 1 - SERVER.length), "example.org"],
  ])("%s", (input, localpart, serverName) => {
    expect(parseUserId(input)).toEqual({ raw: input, localpart, serverName });
    expect(isValidUserId(input)).toBe(true);
  });

  it("the 255-character case really is 255 characters", () => {
    expect(userIdOfLength(255)).toHaveLength(255);
  });
});

describe("parseUserId: rejected", () => {
  it.each<[string, string, string]>([
    ["", "user_id.sigil", 'is empty; must start with the sigil "@"'],
    ["alice:example.org", "user_id.sigil", 'must start with the sigil "@", not "a"'],
    ["!alice:example.org", "user_id.sigil", 'not "!"'],
    ["#alice:example.org", "user_id.sigil", 'not "#"'],
    ["@alice", "user_id.missing_colon", 'has no ":"'],
    ["@", "user_id.missing_colon", 'has no ":"'],
    ["@:example.org", "user_id.localpart_empty", "localpart is empty"],
    ["@alice:", "server_name.empty", "server name is empty"],
    ["@alice::8448", "server_name.hostname_empty", "hostname is empty"],
    ["@alice:example.org:", "server_name.port_empty", "port"],
    ["@alice:example.org:0", "server_name.port_range", "1-65535"],
    ["@alice:example.org:65536", "server_name.port_range", "65536"],
    ["@alice:example.org:123456", "server_name.port_length", "6 digits"],
    ["@alice:example.org:abc", "server_name.port_chars", 'port contains "a"'],
    ["@alice:10.0.0.1", "server_name.ipv4_literal", "MUST NOT use literal IP addresses"],
    ["@alice:[2001:db8::1]", "server_name.ipv6_literal", "IPv6"],
    ["@alice:example..org", "server_name.label_empty", "empty label"],
    [
      "@Alice:example.org",
      "user_id.localpart_chars",
      'localpart contains "A" (U+0041), but uppercase letters are not allowed',
    ],
    ["@aliCe:example.org", "user_id.localpart_chars", "uppercase letters are not allowed"],
    ["@Z:example.org", "user_id.localpart_chars", "uppercase"],
    ["@a~b:example.org", "user_id.localpart_chars", 'localpart contains "~"'],
    ["@a!b:example.org", "user_id.localpart_chars", 'localpart contains "!"'],
    ["@a@b:example.org", "user_id.localpart_chars", 'localpart contains "@"'],
    ["@a b:example.org", "user_id.localpart_chars", 'localpart contains " "'],
    ["@a#b:example.org", "user_id.localpart_chars", 'localpart contains "#"'],
    ["@a*b:example.org", "user_id.localpart_chars", 'localpart contains "*"'],
    ['@a"b:example.org', "user_id.localpart_chars", 'localpart contains "\\""'],
    ["@a\u00e9:example.org", "user_id.localpart_chars", "U+00E9"],
  ])("%j breaks %s", (input, rule, fragment) => {
    expectRejected(() => parseUserId(input), "user_id", input, rule, fragment);
    expect(isValidUserId(input)).toBe(false);
  });

  it("only uppercase letters get the uppercase hint", () => {
    const err = expectRejected(
      () => parseUserId("@a~b:example.org"),
      "user_id",
      "@a~b:example.org",
      "user_id.localpart_chars",
      'allowed are lowercase letters, digits, "-", ".", "=", "_", "/" and "+"',
    );
    expect(err.message).not.toContain("uppercase letters are not allowed");
  });

  it("rejects 256 characters", () => {
    const input = userIdOfLength(256);
    expect(input).toHaveLength(256);
    expectRejected(
      () => parseUserId(input),
      "user_id",
      input,
      "user_id.too_long",
      "is 256 characters long; at most 255",
    );
    expect(isValidUserId(input)).toBe(false);
  });

  it.each<[unknown, string]>([
    [7, "(number)"],
    [null, "(null)"],
    [undefined, "(undefined)"],
    [{}, "(object)"],
    [Symbol("x"), "(symbol)"],
  ])("non-string %p", (input, typeWording) => {
    expectRejected(
      () => parseUserId(input),
      "user_id",
      input,
      "user_id.not_string",
      "must be a string",
      typeWording,
    );
    expect(isValidUserId(input as string)).toBe(false);
  });
});

describe("parseUserId: case", () => {
  it("keeps the server name's case; user IDs differing only there are both valid and distinct", () => {
    const a = parseUserId("@alice:Example.org");
    const b = parseUserId("@alice:example.org");
    expect(a.serverName).toBe("Example.org");
    expect(a.raw).toBe("@alice:Example.org");
    expect(a.raw).not.toBe(b.raw);
    expect(a.serverName).not.toBe(b.serverName);
  });
});
