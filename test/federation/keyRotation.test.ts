import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { parseSigningKeyFile } from "../../src/events/signingKeyFile";
import { eventually, startProviders, stopProviders, type ProviderProcess } from "../support/providers";

describe("server key rotation", () => {
  let a: ProviderProcess, b: ProviderProcess, c: ProviderProcess;
  beforeAll(async () => {
    [a, b, c] = await startProviders(["a.example", "b.example", "c.example"]);
  }, 60_000);
  afterAll(async () => {
    await stopProviders([a, b, c]);
  });

  it("events signed with a server's old key still verify after it rotates, for servers that join later", async () => {
    const { room_id: roomId } = await a.admin<{ room_id: string }>("POST", "/rooms", {
      creator: "@alice:a.example",
    });
    const path = `/rooms/${encodeURIComponent(roomId)}`;
    await a.admin("POST", `${path}/send`, {
      sender: "@alice:a.example",
      type: "m.room.join_rules",
      state_key: "",
      content: { rule: "public" },
    });
    await b.admin("POST", `${path}/join`, { user: "@bob:b.example" });
    await b.admin("POST", `${path}/send`, {
      sender: "@bob:b.example",
      type: "org.example.message",
      content: { body: "old key" },
    });

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
    await b.admin("POST", `${path}/send`, {
      sender: "@bob:b.example",
      type: "org.example.message",
      content: { body: "new key" },
    });

    // c has never seen b's old key: it fetches b's keys and checks both events while catching up.
    await c.admin("POST", `${path}/join`, { user: "@carol:c.example" });
    const ids = async (p: ProviderProcess) =>
      (await p.admin<{ events: { event_id: string }[] }>("GET", `${path}/history`)).events.map(
        (e) => e.event_id,
      );
    await eventually(async () => {
      const hub = await ids(a);
      expect(hub).toHaveLength(7);
      expect(await ids(c)).toEqual(hub);
      expect(await ids(b)).toEqual(hub);
    });
  }, 60_000);
});
