import type { Signatures } from "./types";
import { SignatureError } from "./errors";
import type { VerifyKey } from "./signingKey";

/** The verify keys the caller has already fetched; the core never does I/O. */
export interface VerifyKeyLookup {
  keysOf(serverName: string): ReadonlyMap<string, VerifyKey> | undefined;
}

/** A lookup over a fixed map, handy for tests and for a server's own key. */
export class StaticKeyLookup implements VerifyKeyLookup {
  private readonly keys = new Map<string, Map<string, VerifyKey>>();

  add(serverName: string, keyId: string, key: VerifyKey): this {
    let byId = this.keys.get(serverName);
    if (byId === undefined) {
      byId = new Map();
      this.keys.set(serverName, byId);
    }
    byId.set(keyId, key);
    return this;
  }

  keysOf(serverName: string): ReadonlyMap<string, VerifyKey> | undefined {
    return this.keys.get(serverName);
  }
}

/**
 * LM-04 §Checking Signatures: the server must have signed with a key we know.
 * Signatures under key IDs we do not know are ignored; a signature under a
 * known key that does not verify fails the check.
 */
export function checkServerSignature(
  signed: Uint8Array,
  signatures: Signatures,
  serverName: string,
  lookup: VerifyKeyLookup,
  what: string,
): void {
  const byKey = signatures[serverName];
  if (byKey === undefined || Object.keys(byKey).length === 0) {
    throw new SignatureError(`${what} is not signed by ${serverName}`);
  }
  const known = lookup.keysOf(serverName);
  let verified = false;
  for (const [keyId, signature] of Object.entries(byKey)) {
    const key = known?.get(keyId);
    if (key === undefined) continue;
    if (!key.verify(signed, signature)) {
      throw new SignatureError(`${what}: signature of ${serverName} with key ${keyId} does not verify`);
    }
    verified = true;
  }
  if (!verified) {
    throw new SignatureError(
      `${what}: none of the key IDs ${serverName} signed with (${Object.keys(byKey).join(", ")}) is known`,
      "M_UNAUTHORIZED",
    );
  }
}
