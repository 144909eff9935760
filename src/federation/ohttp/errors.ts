import type { ErrorCode } from "../../errors";
import { FederationError } from "../errors";

/** RFC 9458 §5.3: the key configuration the request used is unknown or outdated. */
export const PROBLEM_OHTTP_KEY = "https://iana.org/assignments/http-problem-types#ohttp-key";
/** RFC 9458 §6.5.2: the request's Date is outside the gateway's window; the answer carries its Date. */
export const PROBLEM_DATE = "https://iana.org/assignments/http-problem-types#date";

/**
 * A refusal of the OHTTP layer: an HTTP status, an errcode as everywhere in this project, and
 * `rule`, the check that failed. With a problem type (RFC 9457) the body is
 * `application/problem+json` and carries `type` and `title` beside `errcode` and `error`.
 */
export class OhttpError extends FederationError {
  readonly contentType: string;

  constructor(
    status: number,
    errcode: ErrorCode,
    readonly rule: string,
    message: string,
    problem?: { type: string; title: string },
  ) {
    super(
      status,
      errcode,
      message,
      problem === undefined ? {} : { type: problem.type, title: problem.title },
    );
    this.contentType = problem === undefined ? "application/json" : "application/problem+json";
  }
}

export function malformed(rule: string, message: string): OhttpError {
  return new OhttpError(400, "IO.MIMI_APPSERVICE.OHTTP_MALFORMED", rule, message);
}
