import { readFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { ConfigError, DEFAULT_LIMITS, DEFAULT_RETRY_AFTER_MAX_MS, parseConfig } from "../src/config/config";
import { CONFIG_SCHEMA } from "../src/config/schema";

const ROOT = join(__dirname, "..");

/** The sample with its commented-out admin_api block enabled. */
function withAdminApi(sample: string): string {
  const block = sample.slice(
    sample.indexOf("# admin_api:"),
    sample.indexOf("\n\n", sample.indexOf("# admin_api:")),
  );
  return sample.replace(block, block.replace(/^# ?/gm, ""));
}

describe("shipped examples", () => {
  it("config.sample.yaml is a valid config", () => {
    const config = parseConfig(readFileSync(join(ROOT, "config.sample.yaml"), "utf8"), "/srv/mimi");
    expect(config.serverName).toBe("example.org");
    expect(config.database.durability).toBe("fsync");
  });

  it("config.sample.yaml lists every key of the schema, each limit with its default", () => {
    const sample = readFileSync(join(ROOT, "config.sample.yaml"), "utf8");
    // The commented-out admin_api block, PostgreSQL and cluster settings count as listed.
    const withPostgres = withAdminApi(sample)
      .replace(/^ {2}# (url|pool_size|schema): /gm, "  $1: ")
      .replace(/^ {2}# cluster:$/gm, "  cluster:")
      .replace(/^ {2}# {3}(lease_ms|process_name|federation_url|admin_url|appservice_url): /gm, "    $1: ");
    const listed = yaml.load(withPostgres) as Record<string, unknown>;
    interface Node {
      properties?: Record<string, Node>;
    }
    const missing: string[] = [];
    const walk = (node: Node, value: unknown, path: string) => {
      for (const [key, child] of Object.entries(node.properties ?? {})) {
        const here = (value as Record<string, unknown> | undefined)?.[key];
        if (here === undefined) missing.push(`${path}${key}`);
        else walk(child, here, `${path}${key}.`);
      }
    };
    walk(CONFIG_SCHEMA as unknown as Node, listed, "");
    expect(missing).toEqual([]);

    const config = parseConfig(sample, "/srv/mimi");
    expect(config.limits).toEqual(DEFAULT_LIMITS);
    expect(config.federation.retryAfterMaxMs).toBe(DEFAULT_RETRY_AFTER_MAX_MS);
  });

  it("enabling the sample's admin_api without changing its token is refused", () => {
    const text = withAdminApi(readFileSync(join(ROOT, "config.sample.yaml"), "utf8"));
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
