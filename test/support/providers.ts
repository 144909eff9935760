import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { removeDir, tempDir } from "./services";
import { freePort } from "../../src/util/freePort";

const ROOT = join(__dirname, "..", "..");
const TOKEN = "test-admin-token-0123456789";

/** One provider running as its own process with its own on-disk LevelDB. */
export class ProviderProcess {
  child: ChildProcess | undefined;
  stderr = "";

  constructor(
    readonly serverName: string,
    readonly dir: string,
    readonly federationPort: number,
    readonly adminPort: number,
  ) {}

  get configPath(): string {
    return join(this.dir, "config.yaml");
  }

  async start(): Promise<void> {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "-c", this.configPath],
      {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, MIMI_LOG_LEVEL: process.env.MIMI_LOG_LEVEL ?? "warn" },
      },
    );
    this.child = child;
    child.stderr!.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString();
      if (process.env.MIMI_TEST_LOGS) process.stderr.write(`[${this.serverName}] ${chunk.toString()}`);
    });
    await new Promise<void>((resolve, reject) => {
      let out = "";
      const onData = (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes('"ready":true')) {
          child.stdout!.off("data", onData);
          resolve();
        }
      };
      child.stdout!.on("data", onData);
      child.once("exit", (code) =>
        reject(new Error(`${this.serverName} exited with ${code}: ${this.stderr}`)),
      );
    });
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once("exit", () => resolve());
      child.kill(signal);
    });
    this.child = undefined;
  }

  async admin<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`http://127.0.0.1:${this.adminPort}/_mimi/admin/v1${path}`, {
      method,
      headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const json = (await response.json()) as T & { errcode?: string; error?: string };
    if (!response.ok) {
      const err = new Error(
        `${this.serverName} ${method} ${path}: ${response.status} ${json.errcode}: ${json.error}`,
      );
      Object.assign(err, { status: response.status, errcode: json.errcode });
      throw err;
    }
    return json;
  }

  async historyIds(roomId: string): Promise<string[]> {
    const { events } = await this.admin<{ events: { event_id: string }[] }>(
      "GET",
      `/rooms/${encodeURIComponent(roomId)}/history`,
    );
    return events.map((e) => e.event_id);
  }
}

/** Starts `names.length` providers on 127.0.0.1 that know each other through static routes. */
export async function startProviders(
  names: string[],
  extraRoutes: Record<string, string> = {},
): Promise<ProviderProcess[]> {
  const ports = await Promise.all(names.map(async () => [await freePort(), await freePort()] as const));
  const routes = {
    ...extraRoutes,
    ...Object.fromEntries(names.map((name, i) => [name, `http://127.0.0.1:${ports[i]![0]}`])),
  };
  const providers = names.map((name, i) => {
    const dir = tempDir(name.replace(/\W/g, "-"));
    mkdirSync(join(dir, "data"), { recursive: true });
    const config = {
      server_name: name,
      federation: {
        bind_address: "127.0.0.1",
        port: ports[i]![0],
        static_routes: routes,
        well_known: false,
        retry_base_ms: 50,
        retry_max_ms: 500,
      },
      database: { path: "data/db", durability: "os" },
      signing_key_path: "data/signing.key",
      admin_api: { bind_address: "127.0.0.1", port: ports[i]![1], token: TOKEN },
      logging: { level: "warn" },
    };
    writeFileSync(join(dir, "config.yaml"), yaml.dump(config));
    return new ProviderProcess(name, dir, ports[i]![0], ports[i]![1]);
  });
  await Promise.all(providers.map((p) => p.start()));
  return providers;
}

export async function stopProviders(providers: ProviderProcess[]): Promise<void> {
  await Promise.all(providers.map((p) => p.kill("SIGTERM")));
  for (const p of providers) removeDir(p.dir);
}

/** Polls until `check` stops throwing or the time is up. */
export async function eventually<T>(
  check: () => Promise<T>,
  timeoutMs = 20_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }
}

export { freePort };
