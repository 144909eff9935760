import { MlsError } from "../errors";
import {
  SUPPORTED_CIPHERSUITE,
  UnsupportedCiphersuiteError,
  ciphersuite,
  type CiphersuiteImpl,
  type CiphersuiteName,
  type ProtocolVersionName,
} from "../tsMls";
import { withFastPrimitives } from "../fastSuite";

/**
 * LM-04 §MLS Considerations: the room's `m.room.create` names its encryption algorithm, "m.mls.v1."
 * followed by the ciphersuite. This is the one pairing this provider runs; any other algorithm,
 * even an MLS one, is refused.
 */
export const SUPPORTED_ALGORITHM = "m.mls.v1.dhkemx25519-aes128gcm-sha256-ed25519";
export const SUPPORTED_VERSION: ProtocolVersionName = "mls10";

/** The ciphersuite of a room's `encryption_algorithm`; refuses every algorithm but the supported one. */
export function suiteForAlgorithm(algorithm: unknown): CiphersuiteName {
  if (algorithm !== SUPPORTED_ALGORITHM) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "suite.algorithm",
      `the encryption algorithm ${JSON.stringify(algorithm)} is not supported; only ${SUPPORTED_ALGORITHM} is`,
    );
  }
  return SUPPORTED_CIPHERSUITE;
}

const loaded = new Map<CiphersuiteName, CiphersuiteImpl>();

/**
 * The implementation of a ciphersuite, refused with MLS_UNSUPPORTED for every suite but the
 * supported one; its hash, KDF, AEAD and signature run on node:crypto (fastSuite.ts).
 */
export async function loadSuite(name: CiphersuiteName): Promise<CiphersuiteImpl> {
  const known = loaded.get(name);
  if (known !== undefined) return known;
  try {
    const suite = withFastPrimitives(await ciphersuite(name));
    loaded.set(name, suite);
    return suite;
  } catch (err) {
    if (err instanceof UnsupportedCiphersuiteError) {
      throw new MlsError("IO.MIMI_APPSERVICE.MLS_UNSUPPORTED", "suite.cipher_suite", err.message);
    }
    throw err;
  }
}
