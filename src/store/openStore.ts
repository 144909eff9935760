import type { DatabaseConfig } from "../config/config";
import type { KvStore } from "./kv";
import { LevelStore } from "./levelStore";
import { PgStore, type PgStoreOptions } from "./pgStore";

export type StoreFence = NonNullable<PgStoreOptions["fence"]>;

/**
 * The store the config names: LevelDB in a folder (the default), or a PostgreSQL schema. With a
 * fence (a cluster's active process) the PostgreSQL store checks the lease in every write.
 */
export async function openStore(config: DatabaseConfig, fence?: StoreFence): Promise<KvStore> {
  if (config.engine === "leveldb") {
    if (fence !== undefined) throw new Error("a fenced store needs PostgreSQL");
    return LevelStore.open(config.path, { durability: config.durability });
  }
  return PgStore.open({
    url: config.url,
    poolSize: config.poolSize,
    schema: config.schema,
    durability: config.durability,
    ...(fence === undefined ? {} : { fence }),
  });
}
