import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { join } from "node:path";
import yaml from "js-yaml";
import { freePort, ProviderProcess, startProviders } from "./providers";
import { removeDir, tempDir } from "./services";
import { testDatabaseConfig } from "./store";

const TOKEN = "test-admin-token-0123456789";

/**
 * A TCP load balancer in front of a cluster's processes, as an operator would run HAProxy in TCP
 * mode: each connection goes to the next upstream in turn that accepts it; one that refuses the
 * connection is skipped.
 */
export class TcpBalancer {
  private next = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly upstreams: () => number[],
  ) {}

  static async start(upstreams: () => number[]): Promise<TcpBalancer> {
    const port = await freePort();
    const holder: { balancer?: TcpBalancer } = {};
    const server = createServer((socket) => holder.balancer!.accept(socket));
    const balancer = new TcpBalancer(server, port, upstreams);
    holder.balancer = balancer;
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
    return balancer;
  }

  private accept(client: Socket): void {
    this.sockets.add(client);
    client.on("close", () => this.sockets.delete(client));
    client.on("error", () => client.destroy());
    client.pause();
    const ports = this.upstreams();
    const start = this.next++;
    const attempt = (tried: number) => {
      if (tried >= ports.length) {
        client.destroy();
        return;
      }
      const port = ports[(start + tried) % ports.length]!;
      const upstream = connect(port, "127.0.0.1");
      let connected = false;
      upstream.once("error", () => {
        upstream.destroy();
        if (!connected) attempt(tried + 1);
      });
      upstream.once("connect", () => {
        connected = true;
        this.sockets.add(upstream);
        upstream.on("close", () => {
          this.sockets.delete(upstream);
          client.destroy();
        });
        upstream.on("error", () => upstream.destroy());
        client.on("close", () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(0);
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** One process of a cluster: a provider process whose config shares the cluster's schema and key. */
export class ClusterProcess extends ProviderProcess {
  /** Starts it and waits until it is active (`"ready":true`), a standby (`"standby":true`), or either. */
  async startAs(role: "active" | "standby" | "either"): Promise<void> {
    await this.startUntil(
      role === "active" ? /"ready":true/ : role === "standby" ? /"standby":true/ : /"(ready|standby)":true/,
    );
  }

  /** True once it took the lease (its ready line). */
  get active(): boolean {
    return /"ready":true/.test(this.stdout);
  }

  async waitUntilActive(): Promise<void> {
    await this.waitForOutput(/"ready":true/);
  }
}

/**
 * A provider of several processes on one PostgreSQL schema behind two TCP balancers (federation
 * and admin API), and other providers (on the engine under test) that reach it through the
 * federation balancer. `hub` speaks to the cluster through the admin balancer, as an operator's
 * tools would.
 */
export class ClusterSet {
  private count = 0;

  private constructor(
    readonly serverName: string,
    readonly dir: string,
    readonly processes: ClusterProcess[],
    readonly federation: TcpBalancer,
    readonly adminBalancer: TcpBalancer,
    readonly hub: ProviderProcess,
    readonly others: ProviderProcess[],
    private readonly base: Record<string, unknown>,
  ) {}

  static async start(options: {
    serverName: string;
    others: string[];
    leaseMs: number;
    /** Processes started at first: the first becomes active, the others standbys. */
    processes: number;
    /** What node runs for each process instead of the sources through tsx. */
    entry?: readonly string[];
    /** Hosted MLS clients; default off (the tests count the room layer's events). */
    hostedClients?: boolean;
    /** The store's durability; default os (tests), fsync for the bench. */
    durability?: "fsync" | "os";
  }): Promise<ClusterSet> {
    const dir = tempDir(options.serverName.replace(/\W/g, "-"));
    mkdirSync(join(dir, "data"), { recursive: true });
    const processes: ClusterProcess[] = [];
    const federation = await TcpBalancer.start(() =>
      processes.filter((p) => p.child).map((p) => p.federationPort),
    );
    const adminBalancer = await TcpBalancer.start(() =>
      processes.filter((p) => p.child).map((p) => p.adminPort),
    );
    const routes = { [options.serverName]: `http://127.0.0.1:${federation.port}` };
    const others = await startProviders(options.others, routes, {
      hostedClients: options.hostedClients ?? false,
    });
    for (const other of others) routes[other.serverName] = `http://127.0.0.1:${other.federationPort}`;
    const database = await testDatabaseConfig(dir, "data/db", options.durability ?? "os", "postgres");
    const base = {
      entry: options.entry,
      hosted_clients: options.hostedClients ?? false,
      server_name: options.serverName,
      static_routes: routes,
      database: { ...database, cluster: { lease_ms: options.leaseMs } },
    };
    const hub = new ProviderProcess(
      options.serverName,
      dir,
      federation.port,
      adminBalancer.port,
      options.entry,
    );
    const set = new ClusterSet(
      options.serverName,
      dir,
      processes,
      federation,
      adminBalancer,
      hub,
      others,
      base,
    );
    for (let i = 0; i < options.processes; i++) await set.addProcess(i === 0 ? "active" : "standby");
    return set;
  }

  /** A new process of the cluster (a new folder and ports, the shared schema and signing key). */
  async addProcess(role: "active" | "standby" | "either"): Promise<ClusterProcess> {
    const name = `p${++this.count}`;
    const dir = join(this.dir, name);
    mkdirSync(join(dir, "data"), { recursive: true });
    const [federationPort, adminPort] = [await freePort(), await freePort()];
    const database = this.base.database as Record<string, unknown>;
    const config = {
      server_name: this.serverName,
      federation: {
        bind_address: "127.0.0.1",
        port: federationPort,
        static_routes: this.base.static_routes,
        well_known: false,
        retry_base_ms: 50,
        retry_max_ms: 500,
      },
      database: { ...database, cluster: { ...(database.cluster as object), process_name: name } },
      limits: { local_sends_per_second: 100_000, local_send_burst: 100_000 },
      // One signing key for the provider, whichever process signs.
      signing_key_path: join(this.dir, "data", "signing.key"),
      admin_api: { bind_address: "127.0.0.1", port: adminPort, token: TOKEN },
      logging: { level: "warn" },
      mls: { hosted_clients: this.base.hosted_clients },
    };
    writeFileSync(join(dir, "config.yaml"), yaml.dump(config));
    const entry = this.base.entry as readonly string[] | undefined;
    const process = new ClusterProcess(this.serverName, dir, federationPort, adminPort, entry);
    this.processes.push(process);
    await process.startAs(role);
    return process;
  }

  /** The processes not killed or stopped. */
  running(): ClusterProcess[] {
    return this.processes.filter((p) => p.child !== undefined);
  }

  async stop(): Promise<void> {
    await Promise.all(this.processes.map((p) => p.kill("SIGTERM")));
    await Promise.all(this.others.map((p) => p.kill("SIGTERM")));
    await this.federation.close();
    await this.adminBalancer.close();
    for (const p of this.others) removeDir(p.dir);
    removeDir(this.dir);
  }
}
