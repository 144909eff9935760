import { ConfigError, parseConfig } from "../src/config/config";

const VALID = ["server_name: a.example", "federation:", "  port: 8448"];

describe("config", () => {
  it("fills defaults and resolves paths against the config's folder", () => {
    const config = parseConfig(VALID.join("\n"), "/srv/mimi");
    expect(config).toMatchObject({
      serverName: "a.example",
      federation: { bindAddress: "0.0.0.0", port: 8448, staticRoutes: {}, wellKnown: true },
      database: { path: "/srv/mimi/data/db", durability: "fsync" },
      signingKeyPath: "/srv/mimi/data/signing.key",
      admin: undefined,
    });
  });

  it.each([
    ["not YAML", "server_name: [", /not valid YAML/],
    ["a missing key", "server_name: a.example", /missing required key "federation"/],
    ["an unknown key", [...VALID, "databse: {}"].join("\n"), /unknown key "databse"/],
    ["a nested unknown key", [...VALID, "  prot: 1"].join("\n"), /federation: unknown key "prot"/],
    [
      "a port out of range",
      "server_name: a.example\nfederation:\n  port: 70000",
      /federation.port: must be <= 65535/,
    ],
    ["a bad durability", [...VALID, "database: { durability: maybe }"].join("\n"), /database.durability/],
    [
      "an invalid server name",
      "server_name: 'a..example'\nfederation:\n  port: 1",
      /server_name: "a..example" is not a valid/,
    ],
    [
      "a bad static route",
      [...VALID, "  static_routes: { b.example: 'ftp://x' }"].join("\n"),
      /static_routes.b.example/,
    ],
    [
      "the sample's placeholder admin token",
      [...VALID, "admin_api: { port: 1, token: CHANGE_ME_to_a_long_random_secret }"].join("\n"),
      /admin_api.token: still the placeholder/,
    ],
    [
      "a bad old key",
      [...VALID, "old_verify_keys: { 'ed25519:x': { key: 'nope', expired_ts: 1 } }"].join("\n"),
      /old_verify_keys/,
    ],
  ])("refuses %s, naming it", (_what, text, message) => {
    expect(() => parseConfig(text, "/srv")).toThrow(ConfigError);
    expect(() => parseConfig(text, "/srv")).toThrow(message);
  });
});
