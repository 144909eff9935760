import type { DatabaseConfig } from "../config/config";
import type { KvStore } from "./kv";
import { LevelStore } from "./levelStore";
import { PgStore } from "./pgStore";

/** The store the config names: LevelDB in a folder (the default), or a PostgreSQL schema. */
export async function openStore(config: DatabaseConfig): Promise<KvStore> {
  if (config.engine === "leveldb") return LevelStore.open(config.path, { durability: config.durability });
  return PgStore.open({
    url: config.url,
    poolSize: config.poolSize,
    schema: config.schema,
    durability: config.durability,
  });
}
