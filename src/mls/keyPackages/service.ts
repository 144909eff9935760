import { MimiError } from "../../errors";
import {
  decodeKeyPackageRequest,
  decodeKeyPackageRequestBundle,
  encodeKeyPackageResponse,
  encodeKeyPackageResultBundle,
  type KeyPackageRequest,
  type KeyPackageResult,
} from "./codec";
import type { ClaimedKeyPackage, KeyPackagePool } from "./pool";
import type { BearerTokens } from "./tokens";

/**
 * The KeyPackage endpoint of McMillion §Key Packages, bytes in and bytes out so that OHTTP
 * (RFC 9458, McMillion §Privacy) can carry it. A request is decoded whole before anything is
 * served; each claim needs a bearer token issued for its user, valid, and under its claim limit.
 */
export class KeyPackageService {
  constructor(
    private readonly pool: KeyPackagePool,
    private readonly tokens: BearerTokens,
  ) {}

  /** One KeyPackageRequest -> one KeyPackageResponse; every refusal is an MlsError. */
  async handleKeyPackageRequest(bytes: Uint8Array): Promise<Uint8Array> {
    const request = decodeKeyPackageRequest(bytes);
    const claimed = await this.serve(request);
    return encodeKeyPackageResponse(claimed.keyPackage);
  }

  /**
   * A KeyPackageRequestBundle -> a KeyPackageResponseBundle with one result per request, in
   * order: a KeyPackage, or the error that refused that request alone. A bundle that does not
   * decode is refused whole, and then nothing is claimed.
   */
  async handleKeyPackageBundle(bytes: Uint8Array): Promise<Uint8Array> {
    const requests = decodeKeyPackageRequestBundle(bytes);
    const results: KeyPackageResult[] = [];
    for (const request of requests) {
      try {
        results.push({ kind: "key_package", keyPackage: (await this.serve(request)).keyPackage });
      } catch (err) {
        // The KeyPackages already claimed for earlier requests must still reach the requester.
        results.push(
          err instanceof MimiError
            ? {
                kind: "error",
                errcode: err.errcode,
                error: err.message,
                retryAfterMs: (err as { retryAfterMs?: number }).retryAfterMs,
              }
            : { kind: "error", errcode: "M_UNKNOWN", error: "internal error", retryAfterMs: undefined },
        );
      }
    }
    return encodeKeyPackageResultBundle(results);
  }

  private async serve(request: KeyPackageRequest): Promise<ClaimedKeyPackage> {
    const token = await this.tokens.check(request.bearerToken, request.userId);
    const release = this.tokens.reserveClaim(token);
    try {
      return await this.pool.claim(request.userId, request.version, request.cipherSuite);
    } catch (err) {
      release();
      throw err;
    }
  }
}
