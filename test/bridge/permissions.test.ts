/**
 * Who may use the bridge: the most specific entry of `appservice.permissions` wins, and the
 * config refuses keys that are neither `*`, a server name nor a Matrix user ID, naming them.
 */
import { allows, permissionLevel, type PermissionLevel } from "../../src/bridge/permissions";
import { ConfigError, parseConfig } from "../../src/config/config";

const table: Record<string, PermissionLevel> = {
  "*": "none",
  "hs.example": "user",
  "Partner.Example": "user",
  "@root:hs.example": "admin",
  "@spam:hs.example": "none",
  "@guest:other.example": "user",
  "ported.example:8448": "admin",
};

describe("permissionLevel", () => {
  it.each<[string, Record<string, PermissionLevel>, string, PermissionLevel]>([
    ["a user of a listed domain", table, "@alice:hs.example", "user"],
    ["a listed user over their domain (up)", table, "@root:hs.example", "admin"],
    ["a listed user over their domain (down)", table, "@spam:hs.example", "none"],
    ["a listed user over * of an unlisted domain", table, "@guest:other.example", "user"],
    ["another user of that unlisted domain: *", table, "@mallory:other.example", "none"],
    ["a domain compared without case", table, "@bob:partner.example", "user"],
    ["a domain with a port", table, "@carol:ported.example:8448", "admin"],
    ["the same host on another port is another domain", table, "@carol:ported.example", "none"],
    ["a subdomain is another domain", table, "@dan:sub.hs.example", "none"],
    ["a user ID is compared exactly", table, "@Root:hs.example", "user"],
    ["* alone", { "*": "user" }, "@anyone:any.example", "user"],
    ["* below a domain", { "*": "admin", "hs.example": "none" }, "@alice:hs.example", "none"],
    ["no entry covers the user: none", { "hs.example": "user" }, "@eve:elsewhere.example", "none"],
    ["an empty map: none", {}, "@alice:hs.example", "none"],
    [
      "a localpart that looks like a domain is not one",
      { "hs.example": "admin" },
      "@hs.example:x.example",
      "none",
    ],
  ])("%s", (_name, permissions, user, level) => {
    expect(permissionLevel(permissions, user)).toBe(level);
  });

  it.each<[PermissionLevel, PermissionLevel, boolean]>([
    ["admin", "admin", true],
    ["admin", "user", true],
    ["user", "admin", false],
    ["user", "user", true],
    ["none", "user", false],
    ["none", "none", true],
  ])("%s allows what %s may do: %s", (level, needed, allowed) => {
    expect(allows(level, needed)).toBe(allowed);
  });
});

describe("appservice.permissions in the config", () => {
  const base =
    'server_name: mimi.example\nfederation: { port: 0 }\nhomeserver: { url: "http://hs", domain: hs.example }\n';

  it("defaults to the homeserver's domain as user", () => {
    expect(parseConfig(base, "/srv").matrix!.appservice.permissions).toEqual({ "hs.example": "user" });
  });

  it("takes *, domains and user IDs as given, without adding the default", () => {
    const config = parseConfig(
      `${base}appservice:\n  permissions:\n    "*": none\n    partner.example: user\n    "@root:hs.example": admin\n    "@a:ported.example:8448": user\n`,
      "/srv",
    );
    expect(config.matrix!.appservice.permissions).toEqual({
      "*": "none",
      "partner.example": "user",
      "@root:hs.example": "admin",
      "@a:ported.example:8448": "user",
    });
  });

  it.each([
    ["a key with a space", '"not a domain": user', 'appservice.permissions: "not a domain" is not "*"'],
    ["a user ID without a server", '"@alice": user', 'appservice.permissions: "@alice" is not'],
    ["a user ID with a bad server", '"@alice:bad_host!": user', 'appservice.permissions: "@alice:bad_host!"'],
    ["a room ID", '"!room:hs.example": user', '"!room:hs.example" is not'],
    [
      "an unknown level",
      "hs.example: superuser",
      "appservice.permissions.hs.example: must be one of none, user, admin",
    ],
  ])("refuses %s, naming it", (_name, entry, message) => {
    const text = `${base}appservice:\n  permissions:\n    ${entry}\n`;
    expect(() => parseConfig(text, "/srv")).toThrow(ConfigError);
    expect(() => parseConfig(text, "/srv")).toThrow(message);
  });
});
