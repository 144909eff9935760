import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../../src/config/config";
import { MimiProvider, type ProviderOptions } from "../../src/provider/provider";
import { freePort } from "../../src/util/freePort";
import { tempDir } from "./services";
import { TEST_STORE_ENGINE, testDatabaseConfig, type TestStoreEngine } from "./store";

export interface InProcessSet {
  providers: MimiProvider[];
  dirs: string[];
  ports: number[];
  /** Starts provider `i` again on its folder and port (after `stop`). */
  restart(i: number): Promise<MimiProvider>;
}

/** Providers in this process on 127.0.0.1, each with its own database (the engine under test), knowing each other by static routes. */
export async function startInProcess(
  names: string[],
  options: ProviderOptions = {},
  limits = "{ local_sends_per_second: 100000, local_send_burst: 100000 }",
  hostedClients = true,
  /** The database engine: the one under test unless a test needs one of them. */
  engine: TestStoreEngine = TEST_STORE_ENGINE,
): Promise<InProcessSet> {
  const ports = await Promise.all(names.map(() => freePort()));
  const dirs = names.map((name) => {
    const dir = tempDir(name.replace(/\W/g, "-"));
    mkdirSync(join(dir, "data"), { recursive: true });
    return dir;
  });
  // Passed on as given: a value that is neither fsync nor os fails the config, naming it.
  const durability = (process.env.MIMI_TEST_DURABILITY ?? "os") as "fsync" | "os";
  const databases = await Promise.all(
    dirs.map((dir) => testDatabaseConfig(dir, "data/db", durability, engine)),
  );
  const configOf = (i: number) =>
    parseConfig(
      [
        `server_name: ${names[i]}`,
        "federation:",
        "  bind_address: 127.0.0.1",
        `  port: ${ports[i]}`,
        "  well_known: false",
        "  retry_base_ms: 20",
        "  retry_max_ms: 200",
        "  static_routes:",
        ...names.map((n, j) => `    ${n}: http://127.0.0.1:${ports[j]}`),
        `database: ${JSON.stringify(databases[i])}`,
        `limits: ${limits}`,
        `logging: { level: ${process.env.MIMI_LOG_LEVEL ?? "error"} }`,
        `mls: { hosted_clients: ${hostedClients} }`,
      ].join("\n"),
      dirs[i]!,
    );
  const providers: MimiProvider[] = [];
  for (const i of names.keys()) providers.push(await MimiProvider.start(configOf(i), options));
  return {
    providers,
    dirs,
    ports,
    restart: async (i) => {
      providers[i] = await MimiProvider.start(configOf(i), options);
      return providers[i]!;
    },
  };
}
