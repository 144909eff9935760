#!/usr/bin/env node
import type { Server } from "node:http";
import { resolve } from "node:path";
import { ConfigError, loadConfig, type DatabaseConfig } from "../config/config";
import { StoreError } from "../store/levelStore";
import { copyStore } from "../store/migrateStore";
import { openStore } from "../store/openStore";
import { MimiProvider } from "../provider/provider";
import { createLogger } from "../logging";
import { Appservice, AppserviceStartError } from "../bridge/appservice";
import { RegistrationError } from "../bridge/registration";
import { readRegistration, writeRegistration } from "../bridge/registrationFile";
import { createAdminApp, listenAdmin } from "./adminApi";
import { acquireClusterLease, clusterOf, LEASE_LOST_EXIT_CODE, StandbyStopped } from "../cluster/standby";
import type { PgLease } from "../store/pg/lease";
import { createMetricsHandler, MetricsListener } from "../metrics/listener";
import { MimiMetrics } from "../metrics/metrics";
import {
  adminErrorObserver,
  appserviceObserver,
  providerHealth,
  providerMetricsSource,
  providerObserver,
} from "../metrics/wiring";

const log = createLogger("main");

const USAGE = [
  "usage: mimi-appservice -c <config.yaml>",
  "       mimi-appservice -c <config.yaml> -r -u <appservice URL> [-f <registration.yaml>]",
  "  -c, --config        the config file (config.sample.yaml documents every key)",
  "  -r, --generate-registration",
  "                      write the homeserver's registration file for this config, with fresh tokens, and exit",
  "  -u, --url           with -r: the URL the homeserver reaches the appservice at",
  "  -f, --file          with -r: where to write it (default: appservice.registration)",
  "       mimi-appservice migrate-store -c <config.yaml> --to <leveldb:PATH | postgres://URL> [--to-schema S]",
  "                      copy the config's database into a new, empty one (LevelDB <-> PostgreSQL), check",
  "                      that both hold the same, and exit; stop the provider first",
].join("\n");

function usage(problem?: string): never {
  process.stderr.write(`${problem === undefined ? "" : `${problem}\n`}${USAGE}\n`);
  process.exit(2);
}

interface Arguments {
  config: string;
  generate: boolean;
  url?: string;
  file?: string;
}

function parseArguments(argv: string[]): Arguments {
  const parsed: Partial<Arguments> & { generate: boolean } = { generate: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = () => {
      const next = argv[++i];
      if (next === undefined || next.startsWith("-")) usage(`${arg} needs a value`);
      return next;
    };
    if (arg === "-c" || arg === "--config") parsed.config = value();
    else if (arg === "-r" || arg === "--generate-registration") parsed.generate = true;
    else if (arg === "-u" || arg === "--url") parsed.url = value();
    else if (arg === "-f" || arg === "--file") parsed.file = value();
    else if (arg === "-h" || arg === "--help") usage();
    else usage(`unknown argument ${JSON.stringify(arg)}`);
  }
  if (parsed.config === undefined) usage("-c <config.yaml> is required");
  if (!parsed.generate && (parsed.url !== undefined || parsed.file !== undefined))
    usage("-u and -f go with -r");
  if (parsed.generate && parsed.url === undefined)
    usage("-r needs -u <the URL the homeserver reaches the appservice at>");
  return parsed as Arguments;
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === "migrate-store") {
    await migrateStoreCommand(argv.slice(1));
    return;
  }
  const args = parseArguments(argv);
  const config = loadConfig(args.config);
  if (args.generate) {
    const path = writeRegistration(config, args.url!, args.file);
    process.stdout.write(
      `wrote ${path}: add it to the homeserver's app_service_config_files and restart the homeserver\n`,
    );
    return;
  }
  const registration = config.matrix === undefined ? undefined : readRegistration(config.matrix);
  // A signal before everything runs: a standby leaves at its next poll; an active process of a
  // cluster once it started (to hand its lease on); any other process at once, as before it
  // listened there was nothing to stop (what it wrote is durable or not acknowledged).
  let stopRequested: string | undefined;
  let lease: PgLease | undefined;
  let stop: (signal: string) => Promise<void> = async (signal) => {
    stopRequested ??= signal;
    if (lease === undefined && clusterOf(config) === undefined) process.exit(0);
  };
  // Before the ready line: a supervisor may signal as soon as it reads it.
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));

  const cluster = clusterOf(config);
  if (cluster !== undefined) {
    try {
      lease = await acquireClusterLease(
        cluster,
        log.child("cluster"),
        (standby) =>
          process.stdout.write(
            JSON.stringify({ standby: true, server_name: config.serverName, ...standby }) + "\n",
          ),
        () => stopRequested !== undefined,
      );
    } catch (err) {
      if (err instanceof StandbyStopped) process.exit(0);
      throw err;
    }
    const held = lease;
    held.onLost((reason) => {
      // Nothing more may be written (the store's fence refuses it anyway): leave at once, and let
      // the supervisor start this process again, as a standby.
      log.error("lost the provider's lease; exiting", { reason, exit_code: LEASE_LOST_EXIT_CODE });
      process.exit(LEASE_LOST_EXIT_CODE);
    });
    if (stopRequested !== undefined) {
      await held.release();
      process.exit(0);
    }
  }
  // Counting starts with the provider; the listener serving the counts starts once everything runs.
  const metrics = config.metrics === undefined ? undefined : new MimiMetrics();
  const fence = lease?.fence;
  const provider = await MimiProvider.start(config, {
    ...(metrics === undefined ? {} : { observe: providerObserver(metrics) }),
    ...(lease === undefined || fence === undefined
      ? {}
      : {
          storeFence: {
            ...fence,
            onFenced: (reason: string) => lease.markLost(reason),
            stalledTransactionTimeoutMs: Math.max(500, Math.floor(cluster!.database.cluster.leaseMs / 2)),
          },
        }),
  });
  let appservice: Appservice | undefined;
  if (config.matrix !== undefined && registration !== undefined) {
    try {
      appservice = await Appservice.start({
        matrix: config.matrix,
        registration,
        kv: provider.kv,
        log: createLogger("appservice"),
        rooms: provider.rooms,
        mimiServerName: config.serverName,
        ...(metrics === undefined ? {} : { observe: appserviceObserver(metrics) }),
      });
    } catch (err) {
      await provider.stop();
      throw err;
    }
  }
  let admin: Server | undefined;
  if (config.admin !== undefined) {
    admin = await listenAdmin(
      createAdminApp({
        rooms: provider.rooms,
        operator: provider.operator,
        token: config.admin.token,
        ...(metrics === undefined ? {} : { onError: adminErrorObserver(metrics) }),
      }),
      config.admin.bindAddress,
      config.admin.port,
    );
    const address = admin.address();
    log.info("admin API listening", {
      port: typeof address === "object" && address ? address.port : config.admin.port,
    });
  }
  let metricsListener: MetricsListener | undefined;
  if (metrics !== undefined && config.metrics !== undefined) {
    metrics.watch(providerMetricsSource(provider));
    const handler = createMetricsHandler({
      metrics,
      health: providerHealth(provider),
      log: log.child("metrics"),
    });
    try {
      metricsListener = await MetricsListener.start(handler, config.metrics.bindAddress, config.metrics.port);
    } catch (err) {
      admin?.closeAllConnections();
      admin?.close();
      await appservice?.stop();
      await provider.stop();
      throw new Error(
        `cannot listen for metrics on ${config.metrics.bindAddress}:${config.metrics.port} (${(err as NodeJS.ErrnoException).code ?? String(err)}): check metrics.port`,
      );
    }
    log.info("metrics listening", { port: metricsListener.port });
  }
  let stopping = false;
  stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("stopping", { signal });
    admin?.closeAllConnections();
    admin?.close();
    await appservice?.stop();
    await provider.stop();
    // After the last write: a standby takes over at once instead of at the lease's expiry.
    await lease?.release();
    await lease?.close();
    await metricsListener?.stop();
    process.exit(0);
  };
  if (stopRequested !== undefined) void stop(stopRequested);
  // Machine-readable line for supervisors and tests: the ports actually bound.
  const adminAddress = admin?.address();
  process.stdout.write(
    JSON.stringify({
      ready: true,
      server_name: config.serverName,
      federation_port: provider.federationPort,
      admin_port: typeof adminAddress === "object" && adminAddress ? adminAddress.port : undefined,
      appservice_port: appservice?.port,
      metrics_port: metricsListener?.port,
    }) + "\n",
  );
}

/** `migrate-store`: the config's database copied into the one `--to` names. */
async function migrateStoreCommand(argv: string[]): Promise<void> {
  let configPath: string | undefined;
  let target: string | undefined;
  let targetSchema: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const next = argv[++i];
    if (next === undefined) usage(`${arg} needs a value`);
    if (arg === "-c" || arg === "--config") configPath = next;
    else if (arg === "--to") target = next;
    else if (arg === "--to-schema") targetSchema = next;
    else usage(`unknown argument ${JSON.stringify(arg)}`);
  }
  if (configPath === undefined || target === undefined)
    usage("migrate-store needs -c <config.yaml> and --to");
  const config = loadConfig(configPath);
  const to = parseStoreTarget(target, targetSchema, config.database.durability);
  const describe = (db: DatabaseConfig) =>
    db.engine === "leveldb" ? `LevelDB at ${db.path}` : `PostgreSQL schema ${db.schema}`;
  if (describe(to) === describe(config.database) && to.engine === "leveldb")
    throw new ConfigError("migrate-store: --to names the config's own database");
  const source = await openStore(config.database);
  try {
    const destination = await openStore(to);
    try {
      process.stderr.write(`copying ${describe(config.database)} into ${describe(to)}\n`);
      const summary = await copyStore(source, destination, {
        onProgress: (copied) => {
          if (copied % 100_000 === 0) process.stderr.write(`  ${copied} keys copied\n`);
        },
      });
      process.stdout.write(
        JSON.stringify({
          copied_keys: summary.keys,
          rooms: Object.keys(summary.heads).length,
          digest: summary.digest,
          verified: true,
        }) + "\n",
      );
      process.stderr.write(
        `done: ${summary.keys} keys and ${Object.keys(summary.heads).length} rooms, verified; point database: in the config at the new one\n`,
      );
    } finally {
      await destination.close();
    }
  } finally {
    await source.close();
  }
}

function parseStoreTarget(
  target: string,
  schema: string | undefined,
  durability: "fsync" | "os",
): DatabaseConfig {
  if (target.startsWith("leveldb:")) {
    if (schema !== undefined) usage("--to-schema goes with a postgres:// target");
    const path = target.slice("leveldb:".length);
    if (path === "") usage("--to leveldb: needs a folder, e.g. leveldb:data/db-copy");
    return { engine: "leveldb", path: resolve(path), durability };
  }
  if (/^postgres(ql)?:\/\//.test(target)) {
    if (schema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(schema))
      usage("--to-schema: a lower-case PostgreSQL name (letters, digits, _)");
    return { engine: "postgres", url: target, poolSize: 4, schema: schema ?? "public", durability };
  }
  return usage(`--to: ${JSON.stringify(target)} is neither leveldb:<folder> nor a postgres:// URL`);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof RegistrationError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  if (err instanceof AppserviceStartError) {
    // Exit code 3: the config is fine, the homeserver (or our view of it) is not.
    process.stderr.write(`${err.message}\n`);
    process.exit(3);
  }
  if (err instanceof StoreError) {
    // The database cannot be used (locked, newer, unreachable, not empty): its message says why.
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
  log.error("fatal", { error: err });
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
