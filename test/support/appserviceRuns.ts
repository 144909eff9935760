/**
 * Running the provider with its appservice as a child process beside a test Synapse: configs,
 * registrations, the CLI's ready line, and the admin and client-server API calls tests make.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "../../src/util/freePort";
import { tempDir } from "./services";
import { testDatabaseConfig } from "./store";

const ROOT = join(__dirname, "../..");
export const HS = "hs1.test";
export const ADMIN_TOKEN = "admin-token-for-the-appservice-test";

export async function until<T>(probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export interface Run {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  exited: Promise<number | null>;
}

export function runMain(args: string[]): Run {
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MIMI_LOG_LEVEL: "info" },
  });
  const run: Run = {
    child,
    stdout: "",
    stderr: "",
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
  };
  child.stdout!.on("data", (chunk: Buffer) => (run.stdout += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (run.stderr += chunk.toString()));
  return run;
}

export async function ready(run: Run): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const line = run.stdout.split("\n").find((l) => l.includes('"ready":true'));
    if (line !== undefined) return JSON.parse(line) as Record<string, unknown>;
    if (run.child.exitCode !== null) throw new Error(`exited ${run.child.exitCode}: ${run.stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`not ready: ${run.stderr}`);
}

export interface Instance {
  dir: string;
  config: string;
  registration: string;
  appservicePort: number;
  federationPort: number;
}

/** A provider without a homeserver, driven through its admin API, as another MIMI provider. */
export async function plainProvider(
  name: string,
  federationPort: number,
  routes: Record<string, number>,
): Promise<Instance> {
  const dir = tempDir(`plain-${name}`);
  mkdirSync(join(dir, "data"), { recursive: true });
  const config = join(dir, "config.yaml");
  writeFileSync(
    config,
    [
      `server_name: ${name}`,
      `federation: { port: ${federationPort}, bind_address: 127.0.0.1, well_known: false, static_routes: { ${Object.entries(
        routes,
      )
        .map(([server, port]) => `${server}: "http://127.0.0.1:${port}"`)
        .join(", ")} } }`,
      `database: ${JSON.stringify(await testDatabaseConfig(dir))}`,
      "admin_api: { port: 0, token: " + ADMIN_TOKEN + " }",
      "logging: { level: warn }",
    ].join("\n"),
  );
  return { dir, config, registration: "", appservicePort: 0, federationPort };
}

export async function adminCall(port: unknown, method: string, path: string, body?: unknown) {
  const response = await fetch(`http://127.0.0.1:${String(port)}/_mimi/admin/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status !== 200)
    throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return (await response.json()) as Record<string, unknown>;
}

export async function instance(
  name: string,
  homeserverUrl: string,
  extra: { id?: string; sender?: string; prefix?: string; routes?: Record<string, number> } = {},
): Promise<Instance> {
  const dir = tempDir(`as-${name}`);
  mkdirSync(join(dir, "data"), { recursive: true });
  const appservicePort = await freePort();
  const federationPort = await freePort();
  const routes = Object.entries(extra.routes ?? {})
    .map(([server, port]) => `${server}: "http://127.0.0.1:${port}"`)
    .join(", ");
  const config = join(dir, "config.yaml");
  writeFileSync(
    config,
    [
      `server_name: ${HS}`,
      `federation: { port: ${federationPort}, bind_address: 127.0.0.1, well_known: false, static_routes: { ${routes} } }`,
      `database: ${JSON.stringify(await testDatabaseConfig(dir))}`,
      `homeserver: { url: "${homeserverUrl}" }`,
      "appservice:",
      `  id: ${extra.id ?? "mimi"}`,
      `  port: ${appservicePort}`,
      `  sender_localpart: ${extra.sender ?? "_mimi_bot"}`,
      `  user_prefix: ${extra.prefix ?? "_mimi_"}`,
      `  alias_prefix: ${extra.prefix ?? "_mimi_"}`,
      "admin_api: { port: 0, token: " + ADMIN_TOKEN + " }",
      "logging: { level: debug }",
    ].join("\n"),
  );
  return { dir, config, registration: join(dir, "registration.yaml"), appservicePort, federationPort };
}

export async function writeRegistration(i: Instance, url: string, file = i.registration): Promise<void> {
  const run = runMain(["-c", i.config, "-r", "-u", url, "-f", file]);
  const code = await run.exited;
  if (code !== 0) throw new Error(`writing the registration exited with ${code}: ${run.stderr}`);
}

/** A Matrix client's call to the homeserver's client-server API, with the user's access token. */
export const clientCall =
  (baseUrl: string, accessToken: string) => (method: string, path: string, body?: unknown) =>
    fetch(`${baseUrl}/_matrix/client/v3${path}`, {
      method,
      headers: { authorization: `Bearer ${accessToken}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
