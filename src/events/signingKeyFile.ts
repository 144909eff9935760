import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { randomBytes } from "node:crypto";
import { isValidKeyId } from "../identifiers";
import { decodeBase64 } from "./base64";
import { ServerSigningKey } from "./signingKey";

/**
 * The server's signing key file: one line `ed25519 <version> <unpadded base64 seed>`
 * (the layout Synapse uses). Created with a fresh key on first start.
 */
export async function loadOrCreateSigningKey(path: string, serverName: string): Promise<ServerSigningKey> {
  let text: string | undefined;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (text !== undefined) return parseSigningKeyFile(text, path, serverName);
  const version = "a_" + randomBytes(3).toString("hex");
  const key = ServerSigningKey.generate(serverName, `ed25519:${version}`);
  await mkdir(dirname(path), { recursive: true });
  const temporary = `${path}.tmp-${process.pid}`;
  await writeFile(temporary, `ed25519 ${version} ${key.seedBase64}\n`, { mode: 0o600 });
  await rename(temporary, path);
  await chmod(path, 0o600);
  return key;
}

export function parseSigningKeyFile(text: string, path: string, serverName: string): ServerSigningKey {
  const line = text.split("\n").find((l) => l.trim() !== "");
  const parts = line?.trim().split(/\s+/) ?? [];
  if (parts.length !== 3 || parts[0] !== "ed25519") {
    throw new Error(`signing key file ${path}: expected one line "ed25519 <version> <base64 seed>"`);
  }
  const keyId = `ed25519:${parts[1]}`;
  if (!isValidKeyId(keyId))
    throw new Error(`signing key file ${path}: invalid key version ${JSON.stringify(parts[1])}`);
  const seed = decodeBase64(parts[2]!);
  if (seed === undefined || seed.length !== 32) {
    throw new Error(`signing key file ${path}: the seed must be 32 bytes of base64`);
  }
  return new ServerSigningKey(serverName, keyId, seed);
}
