import { createHash } from "node:crypto";
import { StaticKeyLookup } from "../../src/events/signatures";
import { ServerSigningKey } from "../../src/events/signingKey";

/** A deterministic signing key for a test server: the seed is SHA-256 of its name. */
export function testKey(
  serverName: string,
  keyId = "ed25519:1",
  seedText = `seed:${serverName}`,
): ServerSigningKey {
  return new ServerSigningKey(serverName, keyId, createHash("sha256").update(seedText).digest());
}

export function lookupOf(...keys: ServerSigningKey[]): StaticKeyLookup {
  const lookup = new StaticKeyLookup();
  for (const key of keys) lookup.add(key.serverName, key.keyId, key.verifyKey());
  return lookup;
}
