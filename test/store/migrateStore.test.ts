/**
 * `mimi-appservice migrate-store` as an admin runs it, a separate process on real databases: a
 * provider's LevelDB (rooms, events, state, queues, keys, MLS records) copied into PostgreSQL and
 * back gives the same entries and room heads; a database in use, or a target that is not empty, is
 * refused and left as it was.
 */
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import yaml from "js-yaml";
import { loadConfig } from "../../src/config/config";
import { MimiProvider } from "../../src/provider/provider";
import { LevelStore } from "../../src/store/levelStore";
import { summarize } from "../../src/store/migrateStore";
import { PgStore } from "../../src/store/pgStore";
import { startInProcess } from "../support/inProcess";
import { postgresUrl } from "../support/postgres";
import { removeDir } from "../support/services";

const run = promisify(execFile);
const ROOT = join(__dirname, "..", "..");
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";

async function migrateStore(config: string, ...args: string[]) {
  return run(
    process.execPath,
    ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "migrate-store", "-c", config, ...args],
    { cwd: ROOT },
  ).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: { code: number; stdout: string; stderr: string }) => ({
      code: err.code,
      stdout: err.stdout,
      stderr: err.stderr,
    }),
  );
}

/** A config of a.example over the given database section, written into `dir`. */
function configFile(dir: string, name: string, database: Record<string, unknown>): string {
  const path = join(dir, name);
  const config = {
    server_name: "a.example",
    federation: { bind_address: "127.0.0.1", port: 0, well_known: false },
    database,
    logging: { level: "error" },
  };
  writeFileSync(path, yaml.dump(config));
  return path;
}

describe("migrate-store", () => {
  let dirs: string[] = [];
  const schema = `migrate_${process.pid}_${Date.now()}`;

  afterEach(() => {
    dirs.forEach(removeDir);
    dirs = [];
  });

  it("copies a provider's LevelDB into PostgreSQL and back: the same entries, rooms and queues", async () => {
    // Real data: a room of a.example with a member of b.example, messages, MLS state and queues,
    // on LevelDB whichever engine the suite runs on: the copy goes from LevelDB and back to it.
    const set = await startInProcess(["a.example", "b.example"], {}, undefined, undefined, "leveldb");
    const [a, b] = set.providers;
    dirs.push(...set.dirs);
    const { roomId } = await a!.rooms.createRoom({ creator: ALICE, txnId: "create" });
    await a!.rooms.invite({ roomId, sender: ALICE, target: BOB, txnId: "invite" });
    await b!.rooms.changeOwnParticipation({ roomId, user: BOB, change: "join", txnId: "join" });
    for (let i = 0; i < 5; i++) {
      const content = { msgtype: "m.text", body: `m${i}` };
      await a!.rooms.sendMessage({ roomId, sender: ALICE, type: "m.room.message", content, txnId: `m${i}` });
    }
    const historyOf = async (provider: MimiProvider) =>
      (await provider.rooms.history(roomId, { fromSeq: 1, limit: 1000 })).events.map((e) => e.eventId);
    const history = await historyOf(a!);
    await Promise.all(set.providers.map((p) => p.stop()));

    const levelPath = join(set.dirs[0]!, "data", "db");
    const url = await postgresUrl();
    const levelConfig = configFile(set.dirs[0]!, "level.yaml", { path: levelPath, durability: "os" });
    const toPostgres = await migrateStore(levelConfig, "--to", url, "--to-schema", schema);
    expect(toPostgres).toMatchObject({ code: 0 });
    expect(JSON.parse(toPostgres.stdout)).toMatchObject({ verified: true, rooms: 1 });

    const pgConfig = configFile(set.dirs[0]!, "pg.yaml", {
      engine: "postgres",
      url,
      schema,
      durability: "os",
    });
    const onPostgres = await PgStore.open({ url, schema, durability: "os" });
    const original = await LevelStore.open(levelPath, { durability: "os" });
    try {
      expect(await summarize(onPostgres)).toEqual(await summarize(original));
    } finally {
      await Promise.all([original.close(), onPostgres.close()]);
    }
    // The provider runs on the copy as it did on LevelDB.
    const provider = await MimiProvider.start(loadConfig(pgConfig));
    try {
      expect(await historyOf(provider)).toEqual(history);
    } finally {
      await provider.stop();
    }
    const backPath = join(set.dirs[0]!, "data", "db-back");
    const back = await migrateStore(pgConfig, "--to", `leveldb:${backPath}`);
    expect(back).toMatchObject({ code: 0 });

    const copy = await LevelStore.open(backPath, { durability: "os" });
    const pg = await PgStore.open({ url, schema, durability: "os" });
    try {
      const [there, again] = await Promise.all([summarize(pg), summarize(copy)]);
      expect(there.keys).toBeGreaterThan(50);
      expect(Object.keys(there.heads)).toEqual([roomId]);
      expect(again).toEqual(there);
    } finally {
      await Promise.all([copy.close(), pg.close()]);
    }
  }, 120_000);

  it("refuses a target that is not empty, and a database a provider is using, changing neither", async () => {
    // LevelDB's own refusal of a folder in use (its lock) is part of what is tested.
    const set = await startInProcess(["a.example"], {}, undefined, undefined, "leveldb");
    dirs.push(...set.dirs);
    const levelPath = join(set.dirs[0]!, "data", "db");
    const config = configFile(set.dirs[0]!, "level.yaml", { path: levelPath, durability: "os" });
    // The provider holds the database.
    const busy = await migrateStore(config, "--to", `leveldb:${join(set.dirs[0]!, "copy")}`);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toContain("is another process using it?");
    await set.providers[0]!.stop();

    const url = await postgresUrl();
    const target = await PgStore.open({ url, schema: `${schema}_full`, durability: "os" });
    await target.commit([{ type: "put", key: "x", value: "already here" }]);
    await target.close();
    const full = await migrateStore(config, "--to", url, "--to-schema", `${schema}_full`);
    expect(full.code).toBe(1);
    expect(full.stderr).toContain("the target database is not empty");
    const after = await PgStore.open({ url, schema: `${schema}_full`, durability: "os" });
    try {
      expect((await summarize(after)).keys).toBe(1);
    } finally {
      await after.close();
    }
  }, 120_000);
});
