import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadOrCreateSigningKey } from "../../src/events/signingKeyFile";
import { removeDir, tempDir } from "../support/services";

describe("server signing key file", () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir("key");
  });
  afterEach(() => removeDir(dir));

  it("is created on first start, private to its owner, and the same key is loaded afterwards", async () => {
    const path = join(dir, "sub", "signing.key");
    const created = await loadOrCreateSigningKey(path, "a.example");
    expect(created.keyId).toMatch(/^ed25519:a_[0-9a-f]{6}$/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const loaded = await loadOrCreateSigningKey(path, "a.example");
    expect(loaded.keyId).toBe(created.keyId);
    expect(loaded.publicKeyBase64).toBe(created.publicKeyBase64);
    const message = Buffer.from("signed once, verified after a restart");
    expect(created.verifyKey().verify(message, loaded.sign(message))).toBe(true);
  });

  it.each([
    ["a wrong algorithm", "rsa a_1 AAAA\n", /expected one line/],
    ["a bad key version", "ed25519 bad-version AAAA\n", /invalid key version/],
    ["a short seed", "ed25519 a_1 AAAA\n", /32 bytes/],
  ])("refuses a file with %s", async (_what, text, message) => {
    const path = join(dir, "signing.key");
    writeFileSync(path, text);
    await expect(loadOrCreateSigningKey(path, "a.example")).rejects.toThrow(message);
  });
});
