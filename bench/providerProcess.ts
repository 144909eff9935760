import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { freePort } from "../src/util/freePort";
import { removeDir, tempDir } from "./util";

export const ADMIN_TOKEN = "bench-admin-token-0123456789abcdef";
const START_TIMEOUT_MS = 90_000;
const STOP_TIMEOUT_MS = 15_000;
const STDERR_KEEP = 64 * 1024;

/**
 * One provider started the way an operator starts it (`node dist/cli/main.js
 * -c config.yaml`, see `providerEntry`) from the checkout at `root`, with its
 * own config, key file and fsync'd LevelDB in a temp folder.
 */
export class BenchProvider {
  private child: ChildProcess | undefined;
  private stderrText = "";

  constructor(
    readonly serverName: string,
    readonly root: string,
    readonly dir: string,
    readonly federationPort: number,
    readonly adminPort: number,
    /** What node runs instead of `--import tsx src/cli/main.ts` (e.g. the tsc-compiled main.js). */
    private readonly entry?: readonly string[],
  ) {}

  get signingKeyPath(): string {
    return join(this.dir, "data", "signing.key");
  }

  get federationUrl(): string {
    return `http://127.0.0.1:${this.federationPort}`;
  }

  /** True once the process has exited, whether asked to or not. */
  get exited(): boolean {
    return this.child === undefined || this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** The last 64 KiB the process wrote to stderr. */
  get stderr(): string {
    return this.stderrText;
  }

  async start(): Promise<void> {
    const child = spawn(
      process.execPath,
      [
        // BENCH_NODE_ARGS adds Node options to every provider, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
        ...(process.env.BENCH_NODE_ARGS ?? "").split(" ").filter((arg) => arg !== ""),
        ...(this.entry ?? ["--import", "tsx", join(this.root, "src/cli/main.ts")]),
        "-c",
        join(this.dir, "config.yaml"),
      ],
      { cwd: this.root, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, MIMI_LOG_LEVEL: "warn" } },
    );
    this.child = child;
    child.stderr!.on("data", (chunk: Buffer) => {
      this.stderrText = (this.stderrText + chunk.toString()).slice(-STDERR_KEEP);
    });
    await new Promise<void>((resolve, reject) => {
      let out = "";
      const fail = (why: string) => {
        clearTimeout(timer);
        reject(new Error(`${this.serverName} (${this.root}) ${why}; its stderr:\n${this.stderrText}`));
      };
      const timer = setTimeout(() => {
        fail(`did not print its ready line within ${START_TIMEOUT_MS / 1000} s`);
        child.kill("SIGKILL");
      }, START_TIMEOUT_MS);
      const onData = (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes('"ready":true')) {
          clearTimeout(timer);
          child.stdout!.off("data", onData);
          child.off("exit", onExit);
          child.stdout!.resume();
          resolve();
        }
      };
      const onExit = (code: number | null, signal: string | null) =>
        // Give the stderr pipe a moment to deliver the last of the output.
        setTimeout(() => fail(`exited during start-up (code ${code}, signal ${signal})`), 100);
      child.stdout!.on("data", onData);
      child.once("exit", onExit);
    });
  }

  /** SIGTERM, then SIGKILL if it has not exited after 15 s. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill("SIGTERM");
    });
  }

  /** Synchronous last resort for an interrupted run. */
  killNow(): void {
    this.child?.kill("SIGKILL");
  }
}

/** The highest rate limits the config schema allows; the benchmark measures the provider, not its limiter. */
const RAISED_LIMITS: Record<string, number> = {
  federation_requests_per_second: 1_000_000,
  federation_request_burst: 1_000_000,
  local_sends_per_second: 1_000_000,
  local_send_burst: 1_000_000,
};

/**
 * The rate-limit keys of RAISED_LIMITS that the checkout at `root` has
 * (those its config.sample.yaml lists under `limits`), raised; undefined
 * for a checkout without rate limits, whose schema would refuse the keys.
 */
export function raisedLimits(root: string): Record<string, number> | undefined {
  const sample = join(root, "config.sample.yaml");
  if (!existsSync(sample)) return undefined;
  const limits = (yaml.load(readFileSync(sample, "utf8")) as { limits?: Record<string, unknown> } | null)
    ?.limits;
  if (typeof limits !== "object" || limits === null) return undefined;
  const known = Object.entries(RAISED_LIMITS).filter(([key]) => key in limits);
  return known.length === 0 ? undefined : Object.fromEntries(known);
}

const built = new Map<string, string[]>();

/**
 * The node arguments that run the checkout at `root` as `npm start` does: its code compiled by
 * tsc (`tsconfig.build.json` into `dist/`, built once per run). BENCH_RUNNER=tsx runs the sources
 * through tsx instead, whose transform makes some dependencies (ts-mls) several times slower.
 */
export function providerEntry(root: string): string[] | undefined {
  if (process.env.BENCH_RUNNER === "tsx") return undefined;
  let entry = built.get(root);
  if (entry === undefined) {
    execFileSync(
      process.execPath,
      [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"],
      {
        cwd: root,
        stdio: "inherit",
      },
    );
    entry = [join(root, "dist/cli/main.js")];
    built.set(root, entry);
  }
  return entry;
}

const running = new Set<BenchProvider>();

/** Kills every provider still running and removes its folder (for an interrupted run). */
export function killAllProviders(): void {
  for (const provider of running) {
    provider.killNow();
    removeDir(provider.dir);
  }
  running.clear();
}

/**
 * Starts one provider per name from the checkout at `root`, all on 127.0.0.1
 * and knowing each other through static routes. On any start-up failure the
 * ones already up are stopped and the error (with stderr) is thrown.
 */
export async function startProviders(
  root: string,
  names: string[],
  entry?: readonly string[],
): Promise<BenchProvider[]> {
  const ports = await Promise.all(names.map(async () => [await freePort(), await freePort()] as const));
  const routes = Object.fromEntries(names.map((name, i) => [name, `http://127.0.0.1:${ports[i]![0]}`]));
  const limits = raisedLimits(root);
  const providers = names.map((name, i) => {
    const dir = tempDir(`bench-${name.replace(/\W/g, "-")}`);
    mkdirSync(join(dir, "data"), { recursive: true });
    const config = {
      server_name: name,
      federation: {
        bind_address: "127.0.0.1",
        port: ports[i]![0],
        static_routes: routes,
        well_known: false,
        retry_base_ms: 50,
        retry_max_ms: 1000,
      },
      database: { path: "data/db", durability: "fsync" },
      signing_key_path: "data/signing.key",
      admin_api: { bind_address: "127.0.0.1", port: ports[i]![1], token: ADMIN_TOKEN },
      logging: { level: "warn" },
      ...(limits === undefined ? {} : { limits }),
    };
    writeFileSync(join(dir, "config.yaml"), yaml.dump(config));
    return new BenchProvider(name, root, dir, ports[i]![0], ports[i]![1], entry);
  });
  for (const p of providers) running.add(p);
  const started = await Promise.allSettled(providers.map((p) => p.start()));
  const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed !== undefined) {
    await stopProviders(providers);
    throw failed.reason;
  }
  return providers;
}

export async function stopProviders(providers: BenchProvider[]): Promise<void> {
  await Promise.all(providers.map((p) => p.stop()));
  for (const p of providers) {
    running.delete(p);
    removeDir(p.dir);
  }
}
