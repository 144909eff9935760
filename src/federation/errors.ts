import { MimiError, type ErrorCode } from "../errors";

type JsonField = null | boolean | number | string | JsonField[] | { [key: string]: JsonField };

const STATUS: Record<ErrorCode, number> = {
  M_BAD_JSON: 400,
  M_NOT_JSON: 400,
  M_INVALID_PARAM: 400,
  M_MISSING_PARAM: 400,
  M_UNSUPPORTED_ROOM_VERSION: 400,
  M_INCOMPATIBLE_ROOM_VERSION: 400,
  M_MISSING_EVENT: 400,
  M_UNAUTHORIZED: 401,
  M_MISSING_TOKEN: 401,
  M_UNKNOWN_TOKEN: 401,
  M_FORBIDDEN: 403,
  M_WRONG_HUB: 400,
  M_WRONG_ROOM_KEYS_VERSION: 403,
  M_NOT_FOUND: 404,
  M_UNKNOWN_ROOM: 404,
  M_UNRECOGNIZED: 404,
  M_NOT_LINEAR: 409,
  M_TOO_LARGE: 413,
  M_LIMIT_EXCEEDED: 429,
  M_UNKNOWN: 500,
  "IO.MIMI_APPSERVICE.MLS_MALFORMED": 400,
  "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED": 400,
  "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP": 400,
  "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH": 409,
  "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER": 403,
  "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE": 400,
  "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL": 400,
  "IO.MIMI_APPSERVICE.MLS_BAD_PATH": 400,
  "IO.MIMI_APPSERVICE.MLS_BAD_TREE": 400,
  "IO.MIMI_APPSERVICE.MLS_GROUPINFO_MISMATCH": 400,
  "IO.MIMI_APPSERVICE.MLS_FORBIDDEN": 403,
  "IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING": 409,
  "IO.MIMI_APPSERVICE.OHTTP_KEY": 400,
  "IO.MIMI_APPSERVICE.OHTTP_MALFORMED": 400,
  "IO.MIMI_APPSERVICE.OHTTP_REPLAY": 400,
  "IO.MIMI_APPSERVICE.OHTTP_DATE": 400,
};

const KNOWN_CODES = new Set<string>(Object.keys(STATUS));

/** The HTTP status that goes with an error code (LM-04 §Errors). */
export function httpStatusFor(errcode: ErrorCode): number {
  return STATUS[errcode];
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && KNOWN_CODES.has(value);
}

export interface ErrorBody {
  errcode: ErrorCode;
  error: string;
  [field: string]: JsonField;
}

/**
 * An error answered to a peer with an explicit HTTP status. `extra` adds
 * fields to the JSON body (e.g. `retry_after_ms`, `event_id`).
 */
export class FederationError extends MimiError {
  constructor(
    readonly status: number,
    errcode: ErrorCode,
    message: string,
    readonly extra: Readonly<Record<string, JsonField>> = {},
  ) {
    super(errcode, message);
  }

  /** A request that failed authentication: LM-04 §Request Authentication answers 401 with M_FORBIDDEN. */
  static unauthorized(message: string): FederationError {
    return new FederationError(401, "M_FORBIDDEN", message);
  }

  static missingEvent(eventId: string, message = `event ${eventId} is missing`): FederationError {
    return new FederationError(400, "M_MISSING_EVENT", message, { event_id: eventId });
  }

  override toJSON(): ErrorBody {
    return { ...this.extra, errcode: this.errcode, error: this.message };
  }
}

/** A peer answered with an error. `remoteErrcode` is its code as sent; `errcode` is M_UNKNOWN when we do not know it. */
export class RemoteError extends MimiError {
  readonly retryAfterMs: number | undefined;

  constructor(
    readonly status: number,
    readonly remoteErrcode: string,
    readonly error: string,
    readonly destination: string,
    readonly body?: unknown,
  ) {
    super(
      isErrorCode(remoteErrcode) ? remoteErrcode : "M_UNKNOWN",
      `${destination} answered ${status} ${remoteErrcode}${error === "" ? "" : `: ${error}`}`,
    );
    const retry = (body as { retry_after_ms?: unknown } | undefined)?.retry_after_ms;
    this.retryAfterMs = Number.isSafeInteger(retry) && (retry as number) >= 0 ? (retry as number) : undefined;
  }

  /** Whether sending the same request later may succeed (server errors and rate limits). */
  get retryable(): boolean {
    return this.status >= 500 || this.status === 429;
  }
}

/** The peer could not be reached, timed out, or broke the connection: always worth retrying. */
export class FederationNetworkError extends MimiError {
  readonly retryable = true;

  constructor(
    readonly destination: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super("M_UNKNOWN", `${destination}: ${message}`);
    if (options?.cause !== undefined) this.cause = options.cause;
  }
}

/**
 * The status and JSON body to answer for any thrown value. Errors from peers
 * become 502 so a peer's refusal is not passed off as ours; errors that are not
 * MimiErrors are internal and their text is not leaked.
 */
export function errorResponse(err: unknown): { status: number; body: ErrorBody } {
  if (err instanceof FederationError) return { status: err.status, body: err.toJSON() };
  if (err instanceof RemoteError || err instanceof FederationNetworkError) {
    return { status: 502, body: { errcode: "M_UNKNOWN", error: err.message } };
  }
  // Every other MimiError: the status of its errcode, and the body it gives itself (with
  // `retry_after_ms` for a rate limit, `event_id` for a missing event).
  if (err instanceof MimiError)
    return { status: httpStatusFor(err.errcode), body: err.toJSON() as ErrorBody };
  return { status: 500, body: { errcode: "M_UNKNOWN", error: "internal server error" } };
}
