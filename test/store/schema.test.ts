import { join } from "node:path";
import { LevelStore } from "../../src/store/levelStore";
import { CURRENT_SCHEMA_VERSION, ensureSchema } from "../../src/store/schema";
import { removeDir, tempDir } from "../support/services";

describe("store schema version", () => {
  let dir: string;
  let store: LevelStore;
  beforeEach(async () => {
    dir = tempDir("schema");
    store = await LevelStore.open(join(dir, "db"), { durability: "os" });
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

  it.each([
    [String(CURRENT_SCHEMA_VERSION + 1), /newer than this release supports/],
    ["zero", /is not valid/],
  ])("refuses a database stamped %j", async (stamp, message) => {
    await store.commit([{ type: "put", key: "m\u0000schema", value: stamp }]);
    await expect(ensureSchema(store)).rejects.toThrow(message);
  });
});
