import { isValidRoomId, parseRoomId } from "../../src/identifiers";
import { expectRejected } from "./expectIdentifierError";

const SERVER = ":example.org";
/** A room ID of exactly `length` characters. */
const roomIdOfLength = (length: number): string => `!${"a".repeat(length - 1 - SERVER.length)}${SERVER}`;

describe("parseRoomId: accepted", () => {
  it.each<[string, string, string]>([
    ["!abc:example.org", "abc", "example.org"],
    ["!a:b", "a", "b"],
    ["!abc:example.org:8448", "abc", "example.org:8448"],
    ["!abc:example.org:65535", "abc", "example.org:65535"],
    ["!AbC:Example.ORG", "AbC", "Example.ORG"],
    ["!0123456789:example.org", "0123456789", "example.org"],
    ["!-:example.org", "-", "example.org"],
    ["!.:example.org", ".", "example.org"],
    ["!~:example.org", "~", "example.org"],
    ["!_:example.org", "_", "example.org"],
    ["!Z:example.org", "Z", "example.org"],
    ["!a-._~Z9:example.org", "a-._~Z9", "example.org"],
    [roomIdOfLength(255), "a".repeat(255 - 1 - SERVER.length), "example.org"],
  ])("%s", (input, localpart, serverName) => {
    expect(parseRoomId(input)).toEqual({ raw: input, localpart, serverName });
    expect(isValidRoomId(input)).toBe(true);
  });

  it("the 255-character case really is 255 characters", () => {
    expect(roomIdOfLength(255)).toHaveLength(255);
  });
});

describe("parseRoomId: rejected", () => {
  it.each<[string, string, string]>([
    ["", "room_id.sigil", 'is empty; must start with the sigil "!"'],
    ["abc:example.org", "room_id.sigil", 'must start with the sigil "!", not "a"'],
    ["@abc:example.org", "room_id.sigil", 'not "@"'],
    ["$abc:example.org", "room_id.sigil", 'not "$"'],
    ["#abc:example.org", "room_id.sigil", 'not "#"'],
    [" !abc:example.org", "room_id.sigil", 'not " "'],
    ["!abc", "room_id.missing_colon", 'has no ":"'],
    ["!", "room_id.missing_colon", 'has no ":"'],
    ["!:example.org", "room_id.localpart_empty", "localpart is empty"],
    ["!abc:", "server_name.empty", "server name is empty"],
    ["!abc::8448", "server_name.hostname_empty", "hostname is empty"],
    ["!abc:example.org:", "server_name.port_empty", "port after ':' is empty"],
    ["!abc:example.org:0", "server_name.port_range", "port 0 is outside the range 1-65535"],
    ["!abc:example.org:65536", "server_name.port_range", "port 65536"],
    ["!abc:example.org:123456", "server_name.port_length", "6 digits"],
    ["!abc:example.org:abc", "server_name.port_chars", 'port contains "a"'],
    ["!abc:1.2.3.4", "server_name.ipv4_literal", "MUST NOT use literal IP addresses"],
    ["!abc:[::1]:8448", "server_name.ipv6_literal", "IPv6"],
    ["!abc:::1", "server_name.ipv6_literal", "IPv6"],
    ["!abc:a..b", "server_name.label_empty", 'server name "a..b": hostname has an empty label'],
    ["!abc:-a.org", "server_name.label_hyphen", "'-'"],
    ["!abc:exa mple.org", "server_name.hostname_chars", 'hostname contains " "'],
    ["!a/b:example.org", "room_id.localpart_chars", 'localpart contains "/"'],
    ["!a+b:example.org", "room_id.localpart_chars", 'localpart contains "+"'],
    ["!a=b:example.org", "room_id.localpart_chars", 'localpart contains "="'],
    ["!a@b:example.org", "room_id.localpart_chars", 'localpart contains "@"'],
    ["!a!b:example.org", "room_id.localpart_chars", 'localpart contains "!"'],
    ["!a b:example.org", "room_id.localpart_chars", 'localpart contains " "'],
    ["!a*b:example.org", "room_id.localpart_chars", 'localpart contains "*"'],
    ["!a\nb:example.org", "room_id.localpart_chars", 'localpart contains "\\n" (U+000A)'],
    ["!a\u00e9:example.org", "room_id.localpart_chars", "U+00E9"],
    ["!a\u{1F600}:example.org", "room_id.localpart_chars", "U+1F600"],
  ])("%j breaks %s", (input, rule, fragment) => {
    expectRejected(() => parseRoomId(input), "room_id", input, rule, fragment);
    expect(isValidRoomId(input)).toBe(false);
  });

  it("a localpart character error names the allowed set", () => {
    expectRejected(
      () => parseRoomId("!a/b:example.org"),
      "room_id",
      "!a/b:example.org",
      "room_id.localpart_chars",
      'allowed are letters, digits, "-", ".", "~" and "_"',
    );
  });

  it("rejects 256 characters", () => {
    const input = roomIdOfLength(256);
    expect(input).toHaveLength(256);
    expectRejected(
      () => parseRoomId(input),
      "room_id",
      input,
      "room_id.too_long",
      "is 256 characters long; at most 255",
    );
    expect(isValidRoomId(input)).toBe(false);
  });

  it.each<[unknown, string]>([
    [42, "(number)"],
    [null, "(null)"],
    [undefined, "(undefined)"],
    [{ raw: "!abc:example.org" }, "(object)"],
    [["!abc:example.org"], "(array)"],
  ])("non-string %p", (input, typeWording) => {
    expectRejected(
      () => parseRoomId(input),
      "room_id",
      input,
      "room_id.not_string",
      "must be a string",
      typeWording,
    );
    expect(isValidRoomId(input as string)).toBe(false);
  });
});

describe("parseRoomId: case", () => {
  it("keeps case; IDs differing only in case are both valid and distinct", () => {
    const a = parseRoomId("!Abc:example.org");
    const b = parseRoomId("!abc:example.org");
    expect(a.raw).toBe("!Abc:example.org");
    expect(a.localpart).toBe("Abc");
    expect(a.raw).not.toBe(b.raw);
    expect(a.localpart).not.toBe(b.localpart);
    expect(parseRoomId("!abc:EXAMPLE.org").serverName).toBe("EXAMPLE.org");
  });
});
