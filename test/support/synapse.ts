/**
 * A real Synapse homeserver for end-to-end tests.
 *
 * `ensureSynapse()` installs the pinned Synapse into a virtualenv (see scripts/synapse/install.sh);
 * `startSynapse()` writes a test config into a directory, starts Synapse as a child process on
 * 127.0.0.1 and resolves once the client API answers. Synapse listens for the client-server API
 * only (no federation listener), stores everything in SQLite inside `dir`, logs at WARNING to
 * `dir/homeserver.log`, and has rate limits raised far enough for bulk test traffic.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import yaml from "js-yaml";
import { freePort } from "../../src/util/freePort";

export const SYNAPSE_VERSION = "1.163.2";

const ROOT = resolve(__dirname, "..", "..");
const INSTALL_SCRIPT = join(ROOT, "scripts", "synapse", "install.sh");
const READY_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 10_000;
const LOG_TAIL_LINES = 40;

export interface StartSynapseOptions {
  /** The Matrix server name, e.g. `hs1.test`. User IDs end in `:<serverName>`. */
  serverName: string;
  /** Directory for config, keys, database, media and logs. Created if missing. */
  dir: string;
  /** Absolute paths of appservice registration files (`app_service_config_files`). */
  appserviceRegistrations?: string[];
  /** Port on 127.0.0.1 for the client listener; a free one is picked if omitted. */
  port?: number;
  /** Extra top-level homeserver.yaml keys, merged over the defaults (shallow). */
  extraConfig?: Record<string, unknown>;
}

export interface RegisteredUser {
  userId: string;
  accessToken: string;
  deviceId: string;
}

export interface SynapseHandle {
  /** Base URL of the client API, e.g. `http://127.0.0.1:34567`. */
  readonly url: string;
  readonly port: number;
  readonly serverName: string;
  readonly dir: string;
  /** PID of the current Synapse process (changes on restart). */
  readonly pid: number;
  /** Path of Synapse's log file. */
  readonly logFile: string;
  /** The `registration_shared_secret` in homeserver.yaml. */
  readonly registrationSharedSecret: string;
  /** Registers a (non-admin) user through the shared-secret admin API. */
  registerUser(localpart: string, password?: string): Promise<RegisteredUser>;
  /** SIGTERM, then SIGKILL after 10 s; resolves when the process has exited. */
  stop(): Promise<void>;
  /** Sends a signal (default SIGKILL) without waiting. */
  kill(signal?: NodeJS.Signals): void;
  /** Stops (if running) and starts again on the same dir and port; resolves when /versions answers. */
  restart(): Promise<void>;
  /** The last lines of the Synapse log and its stdout/stderr, for error messages. */
  logTail(lines?: number): string;
}

let cachedPython: string | undefined;

/**
 * Installs Synapse (idempotent; a no-op when already installed) and returns the venv's python.
 * Throws if installation fails: tests that need Synapse must fail, never skip.
 */
export function ensureSynapse(): string {
  if (cachedPython !== undefined) return cachedPython;
  let stdout: string;
  try {
    stdout = execFileSync("bash", [INSTALL_SCRIPT], {
      cwd: ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
      timeout: 10 * 60_000,
    });
  } catch (err) {
    throw new Error(
      `Installing Synapse ${SYNAPSE_VERSION} with ${INSTALL_SCRIPT} failed (see its stderr above): ${
        err instanceof Error ? err.message : String(err)
      }`,
    );
  }
  const lines = stdout.trim().split("\n");
  const venv = lines[lines.length - 1]?.trim() ?? "";
  const python = join(venv, "bin", "python");
  if (venv === "" || !existsSync(python)) {
    throw new Error(`${INSTALL_SCRIPT} did not print a usable venv path (stdout: ${JSON.stringify(stdout)})`);
  }
  cachedPython = python;
  return python;
}

const HIGH_RATE = { per_second: 10_000, burst_count: 100_000 };

function homeserverConfig(
  serverName: string,
  dir: string,
  port: number,
  sharedSecret: string,
  registrations: string[],
  extra: Record<string, unknown>,
): Record<string, unknown> {
  return {
    server_name: serverName,
    public_baseurl: `http://127.0.0.1:${port}/`,
    pid_file: join(dir, "homeserver.pid"),
    signing_key_path: join(dir, "signing.key"),
    log_config: join(dir, "log.config"),
    media_store_path: join(dir, "media_store"),
    database: { name: "sqlite3", args: { database: join(dir, "homeserver.db") } },
    listeners: [
      {
        port,
        bind_addresses: ["127.0.0.1"],
        type: "http",
        tls: false,
        x_forwarded: false,
        // `client` also serves /_synapse/admin; appservices use the client API with their as_token.
        resources: [{ names: ["client"], compress: false }],
      },
    ],
    report_stats: false,
    enable_metrics: false,
    enable_registration: false,
    registration_shared_secret: sharedSecret,
    macaroon_secret_key: randomBytes(24).toString("hex"),
    form_secret: randomBytes(24).toString("hex"),
    bcrypt_rounds: 4,
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    app_service_config_files: registrations,
    url_preview_enabled: false,
    rc_message: HIGH_RATE,
    rc_registration: HIGH_RATE,
    rc_registration_token_validity: HIGH_RATE,
    rc_login: { address: HIGH_RATE, account: HIGH_RATE, failed_attempts: HIGH_RATE },
    rc_admin_redaction: HIGH_RATE,
    rc_joins: { local: HIGH_RATE, remote: HIGH_RATE },
    rc_joins_per_room: HIGH_RATE,
    rc_3pid_validation: HIGH_RATE,
    rc_invites: { per_room: HIGH_RATE, per_user: HIGH_RATE, per_issuer: HIGH_RATE },
    rc_third_party_invite: HIGH_RATE,
    rc_media_create: HIGH_RATE,
    rc_key_requests: HIGH_RATE,
    rc_presence: { per_user: HIGH_RATE },
    rc_delayed_event_mgmt: HIGH_RATE,
    rc_room_creation: HIGH_RATE,
    rc_reports: HIGH_RATE,
    rc_user_directory: HIGH_RATE,
    rc_profile: HIGH_RATE,
    rc_federation: {
      window_size: 1000,
      sleep_limit: 10_000,
      sleep_delay: 1,
      reject_limit: 100_000,
      concurrent: 1000,
    },
    ...extra,
  };
}

function logConfig(logFile: string): Record<string, unknown> {
  return {
    version: 1,
    formatters: {
      precise: { format: "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s" },
    },
    handlers: {
      file: { class: "logging.FileHandler", filename: logFile, formatter: "precise", encoding: "utf8" },
    },
    root: { level: "WARNING", handlers: ["file"] },
    // How Synapse delivers to the appservice (down, retries, recovered): what a failed test needs.
    loggers: { "synapse.appservice": { level: "INFO" } },
    disable_existing_loggers: false,
  };
}

/** A Synapse signing key file: `ed25519 <key id> <unpadded base64 seed>`. */
function signingKeyFile(): string {
  const id = `a_${randomBytes(3).toString("hex")}`;
  const seed = randomBytes(32).toString("base64").replace(/=+$/, "");
  return `ed25519 ${id} ${seed}\n`;
}

function tailOf(file: string, lines: number): string {
  if (!existsSync(file)) return "";
  const all = readFileSync(file, "utf8").trimEnd().split("\n");
  return all.slice(-lines).join("\n");
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function responseError(res: Response, what: string): Promise<Error> {
  const body = await res.text().catch(() => "");
  return new Error(`${what}: HTTP ${res.status} ${body}`);
}

class Synapse implements SynapseHandle {
  readonly url: string;
  readonly logFile: string;
  private readonly stdioFile: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readonly killOnExit = (): void => {
    this.child?.kill("SIGKILL");
  };

  constructor(
    private readonly python: string,
    readonly serverName: string,
    readonly dir: string,
    readonly port: number,
    readonly registrationSharedSecret: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
    this.logFile = join(dir, "homeserver.log");
    this.stdioFile = join(dir, "synapse.stdio.log");
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  private get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  logTail(lines = LOG_TAIL_LINES): string {
    const parts = [
      `--- ${this.logFile} ---\n${tailOf(this.logFile, lines)}`,
      `--- ${this.stdioFile} ---\n${tailOf(this.stdioFile, lines)}`,
    ];
    return parts.join("\n");
  }

  /** Starts the process and waits for /versions; throws (with the log tail) on early exit or timeout. */
  async start(): Promise<void> {
    if (this.running) throw new Error(`Synapse ${this.serverName} is already running (pid ${this.pid})`);
    const out = openSync(this.stdioFile, "a");
    let child: ChildProcess;
    try {
      child = spawn(this.python, ["-m", "synapse.app.homeserver", "-c", join(this.dir, "homeserver.yaml")], {
        cwd: this.dir,
        detached: false,
        stdio: ["ignore", out, out],
        env: { ...process.env, PYTHONUNBUFFERED: "1" },
      });
    } finally {
      closeSync(out);
    }
    this.child = child;
    let exitInfo: string | undefined;
    this.exited = new Promise<void>((resolveExit) => {
      child.once("exit", (code, signal) => {
        exitInfo = signal !== null ? `signal ${signal}` : `code ${code}`;
        process.removeListener("exit", this.killOnExit);
        resolveExit();
      });
    });
    let spawnError: Error | undefined;
    child.once("error", (err) => {
      spawnError = err;
      exitInfo ??= `spawn error: ${err.message}`;
    });
    process.on("exit", this.killOnExit);

    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (true) {
      if (spawnError !== undefined || exitInfo !== undefined) {
        throw new Error(
          `Synapse ${this.serverName} exited before it was ready (${exitInfo ?? spawnError?.message}).\n${this.logTail()}`,
        );
      }
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error(
          `Synapse ${this.serverName} did not answer ${this.url}/_matrix/client/versions within ${
            READY_TIMEOUT_MS / 1000
          } s.\n${this.logTail()}`,
        );
      }
      try {
        const res = await fetch(`${this.url}/_matrix/client/versions`, { signal: AbortSignal.timeout(2000) });
        await res.body?.cancel();
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      await delay(100);
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    if (this.running) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
      try {
        await this.exited;
      } finally {
        clearTimeout(timer);
      }
    } else {
      await this.exited;
    }
  }

  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    if (this.running) this.child?.kill(signal);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async registerUser(localpart: string, password?: string): Promise<RegisteredUser> {
    const pw = password ?? randomBytes(12).toString("hex");
    const endpoint = `${this.url}/_synapse/admin/v1/register`;
    const nonceRes = await fetch(endpoint);
    if (!nonceRes.ok) throw await responseError(nonceRes, `GET ${endpoint}`);
    const { nonce } = (await nonceRes.json()) as { nonce: string };
    const mac = createHmac("sha1", this.registrationSharedSecret)
      .update(`${nonce}\0${localpart}\0${pw}\0notadmin`)
      .digest("hex");
    const res = await fetch(endpoint, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ nonce, username: localpart, password: pw, admin: false, mac }),
    });
    if (!res.ok) throw await responseError(res, `registering @${localpart}:${this.serverName}`);
    const body = (await res.json()) as { user_id: string; access_token: string; device_id: string };
    return { userId: body.user_id, accessToken: body.access_token, deviceId: body.device_id };
  }
}

/**
 * Writes homeserver.yaml, log.config and a signing key into `options.dir` and starts Synapse.
 * Resolves once `GET /_matrix/client/versions` answers 200 (up to 90 s). If the port was not
 * given and another process grabs the picked one first, retries with a new port.
 */
export async function startSynapse(options: StartSynapseOptions): Promise<SynapseHandle> {
  const python = ensureSynapse();
  const dir = resolve(options.dir);
  mkdirSync(join(dir, "media_store"), { recursive: true });
  const keyPath = join(dir, "signing.key");
  if (!existsSync(keyPath)) writeFileSync(keyPath, signingKeyFile(), { mode: 0o600 });
  const logFile = join(dir, "homeserver.log");
  writeFileSync(join(dir, "log.config"), yaml.dump(logConfig(logFile)));
  const sharedSecret = randomBytes(24).toString("hex");
  const registrations = (options.appserviceRegistrations ?? []).map((p) => resolve(p));

  const attempts = options.port === undefined ? 3 : 1;
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await freePort());
    const config = homeserverConfig(
      options.serverName,
      dir,
      port,
      sharedSecret,
      registrations,
      options.extraConfig ?? {},
    );
    writeFileSync(join(dir, "homeserver.yaml"), yaml.dump(config), { mode: 0o600 });
    const synapse = new Synapse(python, options.serverName, dir, port, sharedSecret);
    try {
      await synapse.start();
      return synapse;
    } catch (err) {
      const portTaken = /Address already in use/i.test(synapse.logTail(200));
      if (!portTaken || attempt >= attempts) throw err;
    }
  }
}
