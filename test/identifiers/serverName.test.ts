import { isValidServerName, parseServerName } from "../../src/identifiers";
import { expectRejected } from "./expectIdentifierError";

const label63 = "a".repeat(63);
const hostname255 = [label63, label63, label63, label63].join("."); // 4 * 63 + 3 dots
const IP_WORDING = "MUST NOT use literal IP addresses";

describe("parseServerName: accepted", () => {
  it.each<[string, string, number | undefined]>([
    ["example.org", "example.org", undefined],
    ["example.org:8448", "example.org", 8448],
    ["example.org:1", "example.org", 1],
    ["example.org:65535", "example.org", 65535],
    ["example.org:00080", "example.org", 80],
    ["localhost", "localhost", undefined],
    ["a", "a", undefined],
    ["EXAMPLE.org", "EXAMPLE.org", undefined],
    ["matrix-federation.example.com", "matrix-federation.example.com", undefined],
    ["xn--bcher-kva.example", "xn--bcher-kva.example", undefined],
    ["123.example", "123.example", undefined],
    ["1.2.3.a", "1.2.3.a", undefined],
    ["example.0xg", "example.0xg", undefined],
    [`${label63}.org`, `${label63}.org`, undefined],
    [hostname255, hostname255, undefined],
    [`${hostname255}:8448`, hostname255, 8448],
  ])("%s", (input, host, port) => {
    expect(parseServerName(input)).toEqual({ raw: input, host, port });
    expect(isValidServerName(input)).toBe(true);
  });
});

describe("parseServerName: rejected", () => {
  it.each<[string, string, string]>([
    ["", "server_name.empty", "server name is empty"],
    [":8448", "server_name.hostname_empty", "hostname is empty"],
    ["example.org:", "server_name.port_empty", "port after ':' is empty"],
    ["example.org:0", "server_name.port_range", "port 0 is outside the range 1-65535"],
    ["example.org:00000", "server_name.port_range", "port 0 is outside"],
    ["example.org:65536", "server_name.port_range", "port 65536 is outside"],
    ["example.org:99999", "server_name.port_range", "port 99999 is outside"],
    ["example.org:123456", "server_name.port_length", "port has 6 digits; at most 5"],
    ["example.org:000080", "server_name.port_length", "port has 6 digits"],
    ["example.org:abc", "server_name.port_chars", 'port contains "a" (U+0061)'],
    ["example.org:+80", "server_name.port_chars", 'port contains "+"'],
    ["example.org:-1", "server_name.port_chars", 'port contains "-"'],
    ["example.org: 80", "server_name.port_chars", 'port contains " "'],
    ["example.org:80:90", "server_name.port_chars", 'port contains ":"'],
    ["example.org:8e3", "server_name.port_chars", 'port contains "e"'],
    ["1.2.3.4", "server_name.ipv4_literal", IP_WORDING],
    ["1.2.3.4:8448", "server_name.ipv4_literal", "IPv4"],
    ["127.1", "server_name.ipv4_literal", "IPv4"],
    ["2130706433", "server_name.ipv4_literal", "IPv4"],
    ["0x7f.0.0.1", "server_name.ipv4_literal", "IPv4"],
    ["example.123", "server_name.ipv4_literal", "numeric label"],
    ["[::1]", "server_name.ipv6_literal", IP_WORDING],
    ["[1234:5678::abcd]:5678", "server_name.ipv6_literal", "IPv6"],
    ["example.org]", "server_name.ipv6_literal", "brackets"],
    ["::1", "server_name.ipv6_literal", "unbracketed IPv6"],
    ["1234:5678::abcd", "server_name.ipv6_literal", "IPv6"],
    ["fe80::1", "server_name.ipv6_literal", "IPv6"],
    ["a..b", "server_name.label_empty", "empty label"],
    [".example.org", "server_name.label_empty", "empty label"],
    ["example.org.", "server_name.label_empty", "empty label"],
    ["example.org.:8448", "server_name.label_empty", "empty label"],
    [".", "server_name.label_empty", "empty label"],
    ["-example.org", "server_name.label_hyphen", "starts or ends with '-'"],
    ["example-.org", "server_name.label_hyphen", "starts or ends with '-'"],
    ["example.-org", "server_name.label_hyphen", "starts or ends with '-'"],
    ["-", "server_name.label_hyphen", "'-'"],
    [`${"a".repeat(64)}.org`, "server_name.label_too_long", "label is 64 characters long; at most 63"],
    [`a${hostname255}`, "server_name.hostname_too_long", "hostname is 256 characters long; at most 255"],
    ["exa mple.org", "server_name.hostname_chars", 'hostname contains " " (U+0020)'],
    ["exa_mple.org", "server_name.hostname_chars", 'hostname contains "_"'],
    ["user@example.org", "server_name.hostname_chars", 'hostname contains "@"'],
    ["example.org/path", "server_name.hostname_chars", 'hostname contains "/"'],
    ["b\u00fccher.example", "server_name.hostname_chars", "U+00FC"],
    ["\u{1F600}.org", "server_name.hostname_chars", "U+1F600"],
  ])("%j breaks %s", (input, rule, fragment) => {
    expectRejected(() => parseServerName(input), "server_name", input, rule, fragment);
    expect(isValidServerName(input)).toBe(false);
  });

  it.each<[unknown, string]>([
    [42, "(number)"],
    [null, "(null)"],
    [undefined, "(undefined)"],
    [{ host: "example.org" }, "(object)"],
    [["example.org"], "(array)"],
    [true, "(boolean)"],
  ])("non-string %p", (input, typeWording) => {
    expectRejected(
      () => parseServerName(input),
      "server_name",
      input,
      "server_name.not_string",
      "must be a string",
      typeWording,
    );
    expect(isValidServerName(input as string)).toBe(false);
  });
});

describe("parseServerName: case", () => {
  it("keeps case and treats names differing only in case as distinct", () => {
    const upper = parseServerName("Example.ORG:8448");
    const lower = parseServerName("example.org:8448");
    expect(upper.raw).toBe("Example.ORG:8448");
    expect(upper.host).toBe("Example.ORG");
    expect(upper.raw).not.toBe(lower.raw);
    expect(upper.host).not.toBe(lower.host);
  });
});
