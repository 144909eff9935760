import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { decodeBase64, encodeUnpaddedBase64 } from "../../events/base64";
import { generateX25519KeyPair, importGatewayKey, type GatewayKey } from "./encapsulation";
import { encodeKeyConfigList, type KeyConfig } from "./keyConfig";

/** One key of `ohttp.keys` in the config. */
export interface GatewayKeyEntry {
  keyId: number;
  privateKeyPath: string;
  /** When it stopped being published; it still opens requests until `retiredTs + overlapMs`. */
  retiredTs?: number;
}

/**
 * The gateway's HPKE keys and their rotation: keys without `retiredTs` are current (published in
 * the key configuration, and open requests); a retired key is no longer published but still opens
 * requests during the overlap, so clients that pinned the previous configuration are not refused
 * while they learn the new one; after that its key ID is unknown (RFC 9458 §5.3).
 */
export class GatewayKeySet {
  private readonly byId = new Map<number, { key: GatewayKey; retiredTs: number | undefined }>();
  readonly published: readonly KeyConfig[];
  /** `application/ohttp-keys` of the published keys (RFC 9458 §3.2). */
  readonly publishedBytes: Uint8Array;

  constructor(
    keys: readonly { key: GatewayKey; retiredTs?: number }[],
    readonly overlapMs: number,
    private readonly now: () => number = Date.now,
  ) {
    for (const { key, retiredTs } of keys) {
      if (this.byId.has(key.config.keyId))
        throw new RangeError(`OHTTP key ID ${key.config.keyId} is used twice`);
      this.byId.set(key.config.keyId, { key, retiredTs });
    }
    this.published = keys.filter((k) => k.retiredTs === undefined).map((k) => k.key.config);
    if (this.published.length === 0)
      throw new RangeError("at least one OHTTP key must be current (no retired_ts)");
    this.publishedBytes = encodeKeyConfigList(this.published);
  }

  /** The key a request's key ID names, if it still opens requests now. */
  lookup(keyId: number): GatewayKey | undefined {
    const entry = this.byId.get(keyId);
    if (entry === undefined) return undefined;
    if (entry.retiredTs !== undefined && entry.retiredTs + this.overlapMs <= this.now()) return undefined;
    return entry.key;
  }
}

/**
 * Reads each key file (one line `x25519 <key ID> <unpadded base64 private key>`), creating the
 * file of a current key on first start (mode 0600). A retired key's file must exist.
 */
export async function loadGatewayKeys(
  entries: readonly GatewayKeyEntry[],
  overlapMs: number,
  now: () => number = Date.now,
): Promise<GatewayKeySet> {
  const keys: { key: GatewayKey; retiredTs?: number }[] = [];
  for (const entry of entries) {
    const privateKey = await readOrCreate(entry);
    keys.push({
      key: await importGatewayKey(entry.keyId, privateKey),
      ...(entry.retiredTs === undefined ? {} : { retiredTs: entry.retiredTs }),
    });
  }
  return new GatewayKeySet(keys, overlapMs, now);
}

async function readOrCreate(entry: GatewayKeyEntry): Promise<Uint8Array> {
  let text: string | undefined;
  try {
    text = await readFile(entry.privateKeyPath, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (text !== undefined) return parseGatewayKeyFile(text, entry);
  if (entry.retiredTs !== undefined) {
    throw new Error(
      `OHTTP key ${entry.keyId}: the file ${entry.privateKeyPath} of this retired key is missing`,
    );
  }
  const { privateKey } = generateX25519KeyPair();
  await mkdir(dirname(entry.privateKeyPath), { recursive: true });
  const temporary = `${entry.privateKeyPath}.tmp-${process.pid}`;
  await writeFile(temporary, `x25519 ${entry.keyId} ${encodeUnpaddedBase64(privateKey)}\n`, { mode: 0o600 });
  await rename(temporary, entry.privateKeyPath);
  await chmod(entry.privateKeyPath, 0o600);
  return privateKey;
}

export function parseGatewayKeyFile(text: string, entry: GatewayKeyEntry): Uint8Array {
  const parts = text.trim().split(/\s+/);
  const where = `OHTTP key file ${entry.privateKeyPath}`;
  if (parts.length !== 3 || parts[0] !== "x25519") {
    throw new Error(`${where}: expected one line "x25519 <key ID> <base64 private key>"`);
  }
  if (parts[1] !== String(entry.keyId)) {
    throw new Error(`${where} holds key ${parts[1]}, but the config names it key ${entry.keyId}`);
  }
  const key = decodeBase64(parts[2]!);
  if (key === undefined || key.length !== 32)
    throw new Error(`${where}: the private key must be 32 bytes of base64`);
  return new Uint8Array(key);
}
