#!/usr/bin/env node
import type { Server } from "node:http";
import { ConfigError, loadConfig } from "../config/config";
import { MimiProvider } from "../provider/provider";
import { createLogger } from "../logging";
import { createAdminApp, listenAdmin } from "./adminApi";

const log = createLogger("main");

function usage(): never {
  process.stderr.write("usage: mimi-provider -c <config.yaml>\n");
  process.exit(2);
}

async function main(argv: string[]): Promise<void> {
  const index = argv.findIndex((a) => a === "-c" || a === "--config");
  const configPath = index >= 0 ? argv[index + 1] : undefined;
  if (configPath === undefined) usage();
  const config = loadConfig(configPath);
  const provider = await MimiProvider.start(config);
  let admin: Server | undefined;
  if (config.admin !== undefined) {
    admin = await listenAdmin(
      createAdminApp({ rooms: provider.rooms, operator: provider.operator, token: config.admin.token }),
      config.admin.bindAddress,
      config.admin.port,
    );
    const address = admin.address();
    log.info("admin API listening", {
      port: typeof address === "object" && address ? address.port : config.admin.port,
    });
  }
  // Machine-readable line for supervisors and tests: the ports actually bound.
  const adminAddress = admin?.address();
  process.stdout.write(
    JSON.stringify({
      ready: true,
      server_name: config.serverName,
      federation_port: provider.federationPort,
      admin_port: typeof adminAddress === "object" && adminAddress ? adminAddress.port : undefined,
    }) + "\n",
  );
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("stopping", { signal });
    admin?.closeAllConnections();
    admin?.close();
    await provider.stop();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  log.error("fatal", { error: err });
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
