import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, parseConfig } from "../../src/config/config";

const VALID = ["server_name: a.example", "federation:", "  port: 8448"];
const parse = (...lines: string[]) => parseConfig([...VALID, ...lines].join("\n"), "/srv/mimi");

describe("the metrics section of the config", () => {
  it("is off when left out", () => {
    expect(parse().metrics).toBeUndefined();
  });

  it("reads bind_address and port, bind_address defaulting to loopback", () => {
    expect(parse("metrics:", "  bind_address: 0.0.0.0", "  port: 9464").metrics).toEqual({
      bindAddress: "0.0.0.0",
      port: 9464,
    });
    expect(parse("metrics: { port: 9464 }").metrics).toEqual({ bindAddress: "127.0.0.1", port: 9464 });
  });

  it("takes port 0 (a free port is picked)", () => {
    expect(parse("metrics: { port: 0 }").metrics?.port).toBe(0);
  });

  it("refuses a section without a port, naming it", () => {
    expect(() => parse("metrics: { bind_address: 127.0.0.1 }")).toThrow(
      /metrics: missing required key "port"/,
    );
  });

  it.each([["65536"], ["-1"], ["1.5"], ['"9464"']])("refuses port %s, naming metrics.port", (port) => {
    expect(() => parse(`metrics: { port: ${port} }`)).toThrow(ConfigError);
    expect(() => parse(`metrics: { port: ${port} }`)).toThrow(/metrics\.port: /);
  });

  it("refuses an unknown key, naming it", () => {
    expect(() => parse("metrics: { port: 9464, path: /metrics }")).toThrow(/metrics: unknown key "path"/);
  });

  it("is listed in config.sample.yaml, where it parses", () => {
    const sample = readFileSync(join(__dirname, "..", "..", "config.sample.yaml"), "utf8");
    expect(parseConfig(sample, "/srv/mimi").metrics).toEqual({ bindAddress: "127.0.0.1", port: 9464 });
  });
});
