import { MimiError, type ErrorCode } from "../errors";

/**
 * The error of the MLS layer's hosted clients, KeyPackage pool and KeyPackage service. The errcode
 * says what kind of refusal it is; `rule` names the failed check more precisely (for logs and
 * tests); `retryAfterMs` says when a rate-limited request may be sent again.
 */
export class MlsError extends MimiError {
  constructor(
    errcode: ErrorCode,
    /** A short name of the rule that failed, e.g. `token.expired`. */
    readonly rule: string,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(errcode, message);
  }

  override toJSON(): { errcode: ErrorCode; error: string; rule: string; retry_after_ms?: number } {
    const body = { errcode: this.errcode, error: this.message, rule: this.rule };
    return this.retryAfterMs === undefined ? body : { ...body, retry_after_ms: this.retryAfterMs };
  }
}

export function mlsError(errcode: ErrorCode, rule: string, message: string): never {
  throw new MlsError(errcode, rule, message);
}
