/**
 * A PostgreSQL server for the tests: `postgresUrl()` runs scripts/postgres/ensure-postgres.sh
 * (which installs the server binaries if missing, and starts a throwaway cluster under
 * .postgres/ unless one already answers) once per process, and returns its connection URL.
 * Throws with the script's output if that fails: tests that need PostgreSQL fail, never skip.
 */
import { execFileSync } from "node:child_process";
import { join, resolve } from "node:path";
import { Client } from "pg";

const ROOT = resolve(__dirname, "..", "..");
const ENSURE_SCRIPT = join(ROOT, "scripts", "postgres", "ensure-postgres.sh");

let cachedUrl: string | undefined;

export async function postgresUrl(): Promise<string> {
  if (cachedUrl !== undefined) return cachedUrl;
  let stdout: string;
  try {
    stdout = execFileSync("bash", [ENSURE_SCRIPT], {
      cwd: ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      // Installing PostgreSQL with apt-get can take minutes.
      timeout: 10 * 60_000,
    });
  } catch (err) {
    const failed = err as { message?: string; stdout?: string; stderr?: string };
    throw new Error(
      `${ENSURE_SCRIPT} failed: ${failed.message ?? String(err)}\n` +
        `--- its stdout ---\n${failed.stdout ?? ""}\n--- its stderr ---\n${failed.stderr ?? ""}`,
    );
  }
  const lines = stdout.trim().split("\n");
  const url = lines[lines.length - 1]?.trim() ?? "";
  if (!url.startsWith("postgres://")) {
    throw new Error(
      `${ENSURE_SCRIPT} did not print a connection URL last (stdout: ${JSON.stringify(stdout)})`,
    );
  }
  cachedUrl = url;
  return url;
}

/** Runs `fn` with a client of its own on the test cluster's database, ended afterwards. */
export async function withPostgresClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: await postgresUrl() });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}
