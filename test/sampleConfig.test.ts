import { readFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { ConfigError, parseConfig } from "../src/config/config";

const ROOT = join(__dirname, "..");

describe("shipped examples", () => {
  it("config.sample.yaml is a valid config", () => {
    const config = parseConfig(readFileSync(join(ROOT, "config.sample.yaml"), "utf8"), "/srv/mimi");
    expect(config.serverName).toBe("example.org");
    expect(config.database.durability).toBe("fsync");
  });

  it("enabling the sample's admin_api without changing its token is refused", () => {
    const sample = readFileSync(join(ROOT, "config.sample.yaml"), "utf8");
    const block = sample.slice(
      sample.indexOf("# admin_api:"),
      sample.indexOf("\n\n", sample.indexOf("# admin_api:")),
    );
    const text = sample.replace(block, block.replace(/^# ?/gm, ""));
    expect(text).toContain("\nadmin_api:\n  bind_address: 127.0.0.1\n");
    expect(() => parseConfig(text, "/srv/mimi")).toThrow(ConfigError);
    expect(() => parseConfig(text, "/srv/mimi")).toThrow(/admin_api.token: still the placeholder/);
  });

  it("registration.yaml has placeholder tokens and exclusive namespaces", () => {
    const registration = yaml.load(readFileSync(join(ROOT, "registration.yaml"), "utf8")) as {
      as_token: string;
      hs_token: string;
      namespaces: { users: { exclusive: boolean; regex: string }[] };
    };
    expect(registration.as_token).toMatch(/^CHANGE_ME/);
    expect(registration.hs_token).toMatch(/^CHANGE_ME/);
    expect(registration.namespaces.users[0]).toEqual({ exclusive: true, regex: "@_mimi_.*:example\\.org" });
  });
});
