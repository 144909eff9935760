import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { parseSigningKeyFile } from "../../src/events/signingKeyFile";
import { eventually, startProviders, stopProviders, type ProviderProcess } from "../support/providers";

describe("server key rotation", () => {
  let a: ProviderProcess, b: ProviderProcess, c: ProviderProcess;
  beforeAll(async () => {
    // These tests count the room layer's events; the hosted MLS clients (which add commits) have tests of their own.
    [a, b, c] = await startProviders(["a.example", "b.example", "c.example"], {}, { hostedClients: false });
  }, 60_000);
  afterAll(async () => {
    await stopProviders([a, b, c]);
  });

  it("events signed with a server's old key still verify after it rotates, for servers that join later", async () => {
    const roomId = await a.createRoom("@alice:a.example");
    await a.send(roomId, "@alice:a.example", "m.room.join_rules", { rule: "public" }, "");
    await b.join(roomId, "@bob:b.example");
    await b.send(roomId, "@bob:b.example", "org.example.message", { body: "old key" });

    // Rotate b: a fresh key file, the old public key kept under old_verify_keys.
    const keyPath = join(b.dir, "data/signing.key");
    const oldKey = parseSigningKeyFile(readFileSync(keyPath, "utf8"), keyPath, "b.example");
    await b.kill("SIGTERM");
    rmSync(keyPath);
    const config = yaml.load(readFileSync(b.configPath, "utf8")) as Record<string, unknown>;
    config.old_verify_keys = { [oldKey.keyId]: { key: oldKey.publicKeyBase64, expired_ts: Date.now() } };
    writeFileSync(b.configPath, yaml.dump(config));
    await b.start();
    const newKey = parseSigningKeyFile(readFileSync(keyPath, "utf8"), keyPath, "b.example");
    expect(newKey.keyId).not.toBe(oldKey.keyId);
    await b.send(roomId, "@bob:b.example", "org.example.message", { body: "new key" });

    // c has never seen b's old key: it fetches b's keys and checks both events while catching up.
    await c.join(roomId, "@carol:c.example");
    const ids = (p: ProviderProcess) => p.historyIds(roomId);
    await eventually(async () => {
      const hub = await ids(a);
      expect(hub).toHaveLength(7);
      expect(await ids(c)).toEqual(hub);
      expect(await ids(b)).toEqual(hub);
    });
  }, 60_000);
});
