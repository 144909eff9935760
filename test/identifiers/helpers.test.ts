import {
  isValidRoomId,
  makeRoomId,
  makeUserId,
  parseRoomId,
  randomRoomLocalpart,
  serverNameOf,
} from "../../src/identifiers";
import { expectRejected } from "./expectIdentifierError";

describe("serverNameOf", () => {
  it.each<[string, string]>([
    ["@alice:example.org", "example.org"],
    ["@alice:example.org:8448", "example.org:8448"],
    ["!abc:Example.ORG", "Example.ORG"],
    ["!a:b", "b"],
  ])("%s -> %s", (id, serverName) => {
    expect(serverNameOf(id)).toBe(serverName);
  });

  it.each<[string, "room_id" | "user_id", string]>([
    ["@alice", "user_id", "user_id.missing_colon"],
    ["!abc", "room_id", "room_id.missing_colon"],
  ])("refuses %s, which has no colon", (id, kind, rule) => {
    expectRejected(() => serverNameOf(id), kind, id, rule, 'has no ":"');
  });
});

describe("makeRoomId / makeUserId", () => {
  it.each<[string, string, string]>([
    ["abc", "example.org", "!abc:example.org"],
    ["A~b", "Example.org:8448", "!A~b:Example.org:8448"],
  ])("makeRoomId(%s, %s)", (localpart, serverName, expected) => {
    expect(makeRoomId(localpart, serverName)).toBe(expected);
  });

  it.each<[string, string, string]>([
    ["alice", "example.org", "@alice:example.org"],
    ["a/b+c=d", "example.org:8448", "@a/b+c=d:example.org:8448"],
  ])("makeUserId(%s, %s)", (localpart, serverName, expected) => {
    expect(makeUserId(localpart, serverName)).toBe(expected);
  });

  it.each<[string, string, string, string]>([
    ["a:b", "example.org", "room_id.localpart_chars", 'localpart contains ":"'],
    ["", "example.org", "room_id.localpart_empty", "localpart is empty"],
    ["a/b", "example.org", "room_id.localpart_chars", 'localpart contains "/"'],
    ["abc", "", "server_name.empty", "server name is empty"],
    ["abc", "1.2.3.4", "server_name.ipv4_literal", "MUST NOT use literal IP addresses"],
    ["abc", "example.org:0", "server_name.port_range", "port 0"],
    ["a".repeat(243), "example.org", "room_id.too_long", "256 characters"],
  ])("makeRoomId(%j, %j) breaks %s", (localpart, serverName, rule, fragment) => {
    expectRejected(
      () => makeRoomId(localpart, serverName),
      "room_id",
      `!${localpart}:${serverName}`,
      rule,
      fragment,
    );
  });

  it.each<[string, string, string, string]>([
    ["Alice", "example.org", "user_id.localpart_chars", "uppercase letters are not allowed"],
    ["a:b", "example.org", "user_id.localpart_chars", 'localpart contains ":"'],
    ["a~b", "example.org", "user_id.localpart_chars", 'localpart contains "~"'],
    ["alice", "exa mple.org", "server_name.hostname_chars", 'hostname contains " "'],
    ["alice", "[::1]", "server_name.ipv6_literal", "IPv6"],
  ])("makeUserId(%j, %j) breaks %s", (localpart, serverName, rule, fragment) => {
    expectRejected(
      () => makeUserId(localpart, serverName),
      "user_id",
      `@${localpart}:${serverName}`,
      rule,
      fragment,
    );
  });
});

describe("randomRoomLocalpart", () => {
  const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

  it("is 18 characters of [A-Za-z0-9] and makes a valid room ID", () => {
    for (let i = 0; i < 100; i++) {
      const localpart = randomRoomLocalpart();
      expect(localpart).toMatch(/^[A-Za-z0-9]{18}$/);
      const roomId = makeRoomId(localpart, "example.org");
      expect(isValidRoomId(roomId)).toBe(true);
      expect(parseRoomId(roomId).localpart).toBe(localpart);
    }
  });

  it("does not repeat", () => {
    const seen = new Set(Array.from({ length: 1000 }, () => randomRoomLocalpart()));
    expect(seen.size).toBe(1000);
  });

  it("uses the whole alphabet without modulo bias", () => {
    const counts = new Map<string, number>();
    const draws = 5000;
    for (let i = 0; i < draws; i++) {
      for (const c of randomRoomLocalpart()) counts.set(c, (counts.get(c) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual(ALPHABET.split("").sort());
    const expected = (draws * 18) / ALPHABET.length;
    // `byte % 62` without rejection would make the first 8 characters ~21% more frequent.
    const first8 = ALPHABET.slice(0, 8).split("");
    const meanFirst8 = first8.reduce((sum, c) => sum + (counts.get(c) ?? 0), 0) / first8.length;
    expect(Math.abs(meanFirst8 - expected) / expected).toBeLessThan(0.1);
  });
});
