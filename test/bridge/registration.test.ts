import { execFile } from "node:child_process";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import yaml from "js-yaml";
import {
  RegistrationError,
  aliasNamespace,
  buildRegistration,
  parseRegistration,
  registrationYaml,
  userNamespace,
  type AppserviceIdentity,
} from "../../src/bridge/registration";
import { ConfigError, parseConfig } from "../../src/config/config";
import { removeDir, tempDir } from "../support/services";

const run = promisify(execFile);
const ROOT = join(__dirname, "../..");

const identity: AppserviceIdentity = {
  id: "mimi",
  domain: "hs.example.org",
  senderLocalpart: "_mimi_bot",
  userPrefix: "_mimi_",
  aliasPrefix: "_mimi_",
};

describe("the registration written for the config", () => {
  const registration = buildRegistration(identity, "http://127.0.0.1:9000");

  it("claims the ghosts and portal aliases exclusively, is not rate limited and receives ephemeral events", () => {
    expect(registration).toMatchObject({
      id: "mimi",
      url: "http://127.0.0.1:9000",
      sender_localpart: "_mimi_bot",
      rate_limited: false,
      receive_ephemeral: true,
      namespaces: {
        users: [{ exclusive: true, regex: "@_mimi_.*:hs\\.example\\.org" }],
        aliases: [{ exclusive: true, regex: "#_mimi_.*:hs\\.example\\.org" }],
        rooms: [],
      },
    });
  });

  it.each([
    ["@_mimi_alice=40b.example:hs.example.org", true],
    ["@_mimi_bot:hs.example.org", true],
    ["@alice:hs.example.org", false],
    ["@_mimi_alice:hs-example.org", false],
    ["@_mimi_alice:hs.example.org.evil", false],
  ])("the user namespace matches %s: %s", (userId, matches) => {
    expect(new RegExp(`^${userNamespace(identity)}$`).test(userId)).toBe(matches);
  });

  it("the alias namespace matches portal aliases only", () => {
    const alias = new RegExp(`^${aliasNamespace(identity)}$`);
    expect(alias.test("#_mimi_room:hs.example.org")).toBe(true);
    expect(alias.test("#general:hs.example.org")).toBe(false);
  });

  it("has fresh random tokens, different from each other and from another registration's", () => {
    const other = buildRegistration(identity, "http://127.0.0.1:9000");
    expect(registration.as_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(registration.hs_token).not.toBe(registration.as_token);
    expect(other.as_token).not.toBe(registration.as_token);
  });

  it("reads back as it was written", () => {
    const text = registrationYaml(registration);
    expect(parseRegistration(text, identity, "registration.yaml")).toEqual(registration);
  });

  it("refuses an appservice URL that is not http(s)", () => {
    expect(() => buildRegistration(identity, "127.0.0.1:9000")).toThrow(RegistrationError);
  });
});

describe("a registration that does not fit the config is refused, naming what is wrong", () => {
  const good = buildRegistration(identity, "http://127.0.0.1:9000");
  const variants: [string, Record<string, unknown>, string][] = [
    ["placeholder as_token", { as_token: "CHANGE_ME_as_token_placeholder" }, "as_token: a placeholder"],
    ["short hs_token", { hs_token: "abc" }, "hs_token: a placeholder or too short"],
    ["equal tokens", { hs_token: good.as_token }, "as_token and hs_token are the same"],
    ["another id", { id: "other" }, 'id: "other", the config says "mimi"'],
    ["another sender", { sender_localpart: "bot" }, 'sender_localpart: "bot"'],
    ["rate limited", { rate_limited: true }, "rate_limited: must be false"],
    ["no ephemeral", { receive_ephemeral: false }, "receive_ephemeral: must be true"],
    [
      "users not exclusive",
      { namespaces: { ...good.namespaces, users: [{ exclusive: false, regex: userNamespace(identity) }] } },
      "namespaces.users: needs an exclusive entry",
    ],
    [
      "aliases of another domain",
      { namespaces: { ...good.namespaces, aliases: [{ exclusive: true, regex: "#_mimi_.*:other\\.org" }] } },
      "namespaces.aliases: needs an exclusive entry",
    ],
    ["no as_token", { as_token: undefined }, "as_token: missing or not a string"],
  ];

  it.each(variants)("%s", (_name, change, message) => {
    const text = yaml.dump({ ...good, ...change });
    expect(() => parseRegistration(text, identity, "reg.yaml")).toThrow(message);
    expect(() => parseRegistration(text, identity, "reg.yaml")).toThrow(
      /^reg\.yaml does not match the config/,
    );
  });

  it("refuses a file that is not YAML or not a mapping", () => {
    expect(() => parseRegistration("a: [", identity, "reg.yaml")).toThrow("reg.yaml is not valid YAML");
    expect(() => parseRegistration("42", identity, "reg.yaml")).toThrow("reg.yaml is not a registration");
  });
});

describe("the homeserver and appservice sections of the config", () => {
  const base = "server_name: mimi.example\nfederation: { port: 0 }\n";

  it("default the domain to server_name and the appservice keys to the documented values", () => {
    const config = parseConfig(`${base}homeserver: { url: "http://127.0.0.1:8008/" }\n`, "/srv/mimi");
    expect(config.matrix).toEqual({
      homeserverUrl: "http://127.0.0.1:8008",
      domain: "mimi.example",
      appservice: {
        id: "mimi",
        bindAddress: "127.0.0.1",
        port: 9000,
        registrationPath: "/srv/mimi/registration.yaml",
        senderLocalpart: "_mimi_bot",
        userPrefix: "_mimi_",
        aliasPrefix: "_mimi_",
        permissions: { "mimi.example": "user" },
      },
    });
    expect(parseConfig(base, "/srv/mimi").matrix).toBeUndefined();
  });

  it.each([
    ["appservice without homeserver", "appservice: { port: 9000 }\n", "appservice: given without homeserver"],
    ["a URL with a path", 'homeserver: { url: "http://hs/_matrix" }\n', "homeserver.url: must match pattern"],
    ["an invalid domain", 'homeserver: { url: "http://hs", domain: "a b" }\n', "homeserver.domain"],
    [
      "a sender localpart with capitals",
      'homeserver: { url: "http://hs" }\nappservice: { sender_localpart: "Bot" }\n',
      "appservice.sender_localpart: must match pattern",
    ],
    [
      "the hub user among the ghosts",
      'homeserver: { url: "http://hs" }\nmls: { hub_user: "_mimi_hub" }\n',
      "mls.hub_user",
    ],
    ["an unknown key", 'homeserver: { url: "http://hs", token: "x" }\n', 'homeserver: unknown key "token"'],
  ])("refuse %s", (_name, section, message) => {
    expect(() => parseConfig(base + section, "/srv")).toThrow(ConfigError);
    expect(() => parseConfig(base + section, "/srv")).toThrow(message);
  });
});

describe("the command line", () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir("registration-cli");
    writeFileSync(
      join(dir, "config.yaml"),
      [
        "server_name: mimi.example",
        "federation: { port: 0, bind_address: 127.0.0.1, well_known: false }",
        'homeserver: { url: "http://127.0.0.1:1", domain: hs.example.org }',
        "appservice: { registration: reg.yaml, port: 0 }",
        "logging: { level: error }",
      ].join("\n"),
    );
  });
  afterEach(() => removeDir(dir));

  const main = (...args: string[]) =>
    run(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args], { cwd: ROOT }).then(
      (r) => ({ code: 0, ...r }),
      (err: { code: number; stdout: string; stderr: string }) => err,
    );

  it("-r -u writes the registration the config asks for, private to its owner, and exits", async () => {
    const result = await main("-c", join(dir, "config.yaml"), "-r", "-u", "http://127.0.0.1:9000");
    expect(result.code).toBe(0);
    expect(result.stdout).toContain("reg.yaml: add it to the homeserver's app_service_config_files");
    const path = join(dir, "reg.yaml");
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const written = parseRegistration(readFileSync(path, "utf8"), identity, path);
    expect(written.url).toBe("http://127.0.0.1:9000");
    // -f writes elsewhere.
    await main(
      "-c",
      join(dir, "config.yaml"),
      "-r",
      "-u",
      "http://127.0.0.1:9000",
      "-f",
      join(dir, "other.yaml"),
    );
    const other = yaml.load(readFileSync(join(dir, "other.yaml"), "utf8")) as { as_token: string };
    expect(other.as_token).not.toBe(written.as_token);
  });

  it("refuses to start without a registration, or with the placeholder one, naming the problem", async () => {
    const missing = await main("-c", join(dir, "config.yaml"));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("cannot read the registration");
    expect(missing.stderr).toContain("reg.yaml (ENOENT)");
    // The example registration shipped in the repository holds placeholders and another domain.
    writeFileSync(join(dir, "reg.yaml"), readFileSync(join(ROOT, "registration.yaml")));
    const placeholder = await main("-c", join(dir, "config.yaml"));
    expect(placeholder.code).toBe(2);
    expect(placeholder.stderr).toContain("as_token: a placeholder");
    expect(placeholder.stderr).toContain("namespaces.users: needs an exclusive entry");
  });

  it("refuses -u without -r, and -r without -u", async () => {
    expect((await main("-c", join(dir, "config.yaml"), "-u", "http://x")).code).toBe(2);
    const noUrl = await main("-c", join(dir, "config.yaml"), "-r");
    expect(noUrl.code).toBe(2);
    expect(noUrl.stderr).toContain("-r needs -u");
  });
});
