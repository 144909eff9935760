import { join } from "node:path";
import type { KvStore } from "../../src/store/kv";
import { CURRENT_SCHEMA_VERSION, ensureSchema } from "../../src/store/schema";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

describe("store schema version", () => {
  let dir: string;
  let store: KvStore;
  beforeEach(async () => {
    dir = tempDir("schema");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
  });
  afterEach(async () => {
    await store.close();
    removeDir(dir);
  });

  it("stamps a new database with the current version and keeps it", async () => {
    expect(await ensureSchema(store)).toBe(CURRENT_SCHEMA_VERSION);
    expect(await store.get("m\u0000schema")).toBe(String(CURRENT_SCHEMA_VERSION));
    expect(await ensureSchema(store)).toBe(CURRENT_SCHEMA_VERSION);
  });

  it.each([String(CURRENT_SCHEMA_VERSION + 1), "zero", "0"])(
    "refuses a database stamped %j, and leaves it as it was",
    async (stamp) => {
      await store.commit([{ type: "put", key: "m\u0000schema", value: stamp }]);
      await expect(ensureSchema(store)).rejects.toMatchObject({ errcode: "M_UNKNOWN" });
      expect(await store.get("m\u0000schema")).toBe(stamp);
    },
  );
});
