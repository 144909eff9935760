import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { removeDir, tempDir } from "../support/services";
import { testDatabaseConfig } from "../support/store";
import { get, valueOf } from "./scrape";

const ROOT = join(__dirname, "..", "..");
const TOKEN = "metrics-main-test-token-0123456789";

interface Running {
  child: ChildProcess;
  ready: Record<string, unknown>;
  stderr: () => string;
}

/** Runs src/cli/main.ts on a config of these lines and the test database; resolves with its ready line. */
async function run(dir: string, lines: string[]): Promise<Running> {
  mkdirSync(join(dir, "data"), { recursive: true });
  const configPath = join(dir, "config.yaml");
  writeFileSync(
    configPath,
    [...lines, `database: ${JSON.stringify(await testDatabaseConfig(dir))}`].join("\n"),
  );
  const child = spawn(
    process.execPath,
    ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "-c", configPath],
    {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split("\n").find((l) => l.includes('"ready":true'));
      if (line !== undefined) resolve(JSON.parse(line) as Record<string, unknown>);
    });
    child.once("exit", (code) => reject(new Error(`main.ts exited with ${code}: ${stderr}`)));
  });
  return { child, ready, stderr: () => stderr };
}

/** SIGTERM; resolves with how it exited: `0` for a clean stop. */
async function terminate({ child, stderr }: Running): Promise<string> {
  const exited = (code: number | null, signal: string | null) =>
    code === 0 ? "0" : `code ${code}, signal ${signal}: ${stderr()}`;
  if (child.exitCode !== null) return exited(child.exitCode, child.signalCode);
  return new Promise((resolve) => {
    child.once("exit", (code, signal) => resolve(exited(code, signal)));
    child.kill("SIGTERM");
  });
}

const BASE_CONFIG = [
  "server_name: a.example",
  "federation: { bind_address: 127.0.0.1, port: 0, well_known: false }",
  "logging: { level: info }",
  "mls: { hosted_clients: false }",
];

describe("main.ts with a metrics section", () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir("metrics-main");
  });
  afterEach(() => removeDir(dir));

  it("starts the listener after the provider, names its port in the ready line and logs, and stops on SIGTERM", async () => {
    const running = await run(dir, [
      ...BASE_CONFIG,
      `admin_api: { bind_address: 127.0.0.1, port: 0, token: ${TOKEN} }`,
      "metrics: { port: 0 }",
    ]);
    const { ready, stderr } = running;
    try {
      const port = ready.metrics_port as number;
      expect(port).toEqual(expect.any(Number));
      expect(port).not.toBe(ready.federation_port);
      expect(port).not.toBe(ready.admin_port);
      const logged = stderr()
        .split("\n")
        .filter((line) => line.includes('"metrics listening"'))
        .map((line) => JSON.parse(line) as { port: number });
      expect(logged.map((line) => line.port)).toEqual([port]);

      const health = await get(port, "/health");
      expect(health.status).toBe(200);
      expect(JSON.parse(health.text)).toMatchObject({ status: "ok", server_name: "a.example", rooms: 0 });

      const admin = `http://127.0.0.1:${ready.admin_port as number}/_mimi/admin/v1/status`;
      expect((await fetch(admin, { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
      const created = await fetch(
        `http://127.0.0.1:${ready.admin_port as number}/_mimi/admin/v1/createRoom/t1`,
        {
          method: "PUT",
          headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ creator: "@alice:a.example" }),
        },
      );
      expect(created.status).toBe(200);
      const text = (await get(port, "/metrics")).text;
      expect(valueOf(text, "mimi_errors_total", { edge: "admin", kind: "M_UNKNOWN_TOKEN" })).toBe(1);
      expect(valueOf(text, "mimi_events_sequenced_total", { room_role: "hub" })).toBe(2);
      expect(valueOf(text, "process_resident_memory_bytes")).toBeGreaterThan(0);
    } finally {
      expect(await terminate(running)).toBe("0");
    }
  }, 30_000);

  it("serves no metrics without the section", async () => {
    const running = await run(dir, BASE_CONFIG);
    const { ready } = running;
    try {
      expect(ready).toMatchObject({ ready: true, server_name: "a.example" });
      expect(ready).not.toHaveProperty("metrics_port");
    } finally {
      expect(await terminate(running)).toBe("0");
    }
  }, 30_000);
});
