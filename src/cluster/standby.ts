import { setTimeout as sleep } from "node:timers/promises";
import { ConfigError, type ClusterConfig, type ProviderConfig } from "../config/config";
import type { Logger } from "../logging";
import { createMetricsHandler, MetricsListener } from "../metrics/listener";
import { MimiMetrics } from "../metrics/metrics";
import { loopbackOf } from "../provider/provider";
import { PgLease, type LeaseHolder, type LeaseOwnerInfo } from "../store/pg/lease";
import { PgStore } from "../store/pgStore";
import { RequestForwarder } from "./forwarder";

/** Exit code of a process that lost its lease: a supervisor restarts it, and it comes back as a standby. */
export const LEASE_LOST_EXIT_CODE = 4;

export type PostgresClusterConfig = ProviderConfig & {
  database: Extract<ProviderConfig["database"], { engine: "postgres" }> & { cluster: ClusterConfig };
};

export function clusterOf(config: ProviderConfig): PostgresClusterConfig | undefined {
  return config.database.engine === "postgres" && config.database.cluster !== undefined
    ? (config as PostgresClusterConfig)
    : undefined;
}

/** The listeners this process has and where the others reach them when it is active. */
function listenersOf(
  config: PostgresClusterConfig,
): { kind: string; bindAddress: string; port: number; url: string }[] {
  const cluster = config.database.cluster;
  const entry = (kind: string, bindAddress: string, port: number, url: string | undefined) => {
    if (url === undefined && port === 0) {
      throw new ConfigError(
        `database.cluster: the ${kind} listener's port is 0; a cluster's processes forward to each other, ` +
          `so give it a fixed port or set database.cluster.${kind}_url`,
      );
    }
    return { kind, bindAddress, port, url: url ?? `http://${loopbackOf(bindAddress)}:${port}` };
  };
  const listeners = [
    entry("federation", config.federation.bindAddress, config.federation.port, cluster.federationUrl),
  ];
  if (config.admin !== undefined)
    listeners.push(entry("admin", config.admin.bindAddress, config.admin.port, cluster.adminUrl));
  if (config.matrix !== undefined) {
    const { bindAddress, port } = config.matrix.appservice;
    listeners.push(entry("appservice", bindAddress, port, cluster.appserviceUrl));
  }
  return listeners;
}

/**
 * A process of a cluster, before it may write: migrates the schema, then takes the provider's
 * lease at once if it is free; else it is a standby until the lease expires. A standby passes
 * every request of its listeners on to the active process (RequestForwarder), answers its
 * health check 503 "standby", and tries to take the lease a few times per lease period.
 * Resolves with the lease held and renewed; the caller starts the provider with its fence.
 */
export async function acquireClusterLease(
  config: PostgresClusterConfig,
  log: Logger,
  announce: (standby: { process: string; active: string | undefined }) => void,
  stopping: () => boolean,
): Promise<PgLease> {
  const { url, schema, cluster } = config.database;
  const listeners = listenersOf(config);
  await PgStore.prepare({ url, schema });
  const info: LeaseOwnerInfo = {
    name: cluster.processName ?? PgLease.defaultName(),
    urls: Object.fromEntries(listeners.map((l) => [l.kind, l.url])),
  };
  const lease = await PgLease.open({ url, schema, leaseMs: cluster.leaseMs, info });
  if (await lease.tryAcquire()) {
    log.info("took the provider's lease: this process is active", { process: info.name });
    lease.startRenewing();
    return lease;
  }

  let holder: LeaseHolder | undefined = await lease.holder();
  const forwarders: RequestForwarder[] = [];
  let health: MetricsListener | undefined;
  try {
    for (const listener of listeners) {
      forwarders.push(
        await RequestForwarder.listen({
          kind: listener.kind,
          bindAddress: listener.bindAddress,
          port: listener.port,
          target: () => holder?.info.urls[listener.kind],
          log: log.child("forwarder"),
        }),
      );
    }
    if (config.metrics !== undefined) {
      const handler = createMetricsHandler({
        metrics: new MimiMetrics(),
        health: {
          serverName: config.serverName,
          rooms: () => 0,
          unavailableReason: () =>
            `standby: ${holder === undefined ? "no process" : holder.info.name} is active`,
        },
        log: log.child("metrics"),
      });
      health = await MetricsListener.start(handler, config.metrics.bindAddress, config.metrics.port);
    }
    log.info("standby: another process holds the provider's lease; requests are passed on to it", {
      process: info.name,
      active: holder?.info.name,
    });
    announce({ process: info.name, active: holder?.info.name });
    const poll = Math.min(1000, Math.max(50, Math.floor(cluster.leaseMs / 10)));
    for (;;) {
      await sleep(poll);
      if (stopping()) throw new StandbyStopped();
      try {
        if (await lease.tryAcquire()) break;
        const now = await lease.holder();
        if (now?.owner !== holder?.owner) {
          log.info("the active process changed", { active: now?.info.name ?? null });
        }
        holder = now;
      } catch (error) {
        log.warn("cannot read or take the provider's lease; trying again", { error });
      }
    }
    log.info("took the provider's lease: this process is active now", {
      process: info.name,
      previous: holder?.info.name,
    });
    // Renewed from now on: starting the provider may take longer than a lease.
    lease.startRenewing();
    return lease;
  } catch (err) {
    await lease.close();
    throw err;
  } finally {
    await Promise.all(forwarders.map((f) => f.close()));
    await health?.stop();
  }
}

/** A standby told to stop before it became active. */
export class StandbyStopped extends Error {
  constructor() {
    super("stopped while a standby");
  }
}
