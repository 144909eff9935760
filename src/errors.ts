/**
 * Error codes shared by every layer. The federation layer maps them to HTTP
 * statuses; nothing matches on error messages.
 */
export type ErrorCode =
  | "M_BAD_JSON"
  | "M_NOT_JSON"
  | "M_INVALID_PARAM"
  | "M_MISSING_PARAM"
  | "M_TOO_LARGE"
  | "M_FORBIDDEN"
  | "M_UNAUTHORIZED"
  | "M_MISSING_TOKEN"
  | "M_UNKNOWN_TOKEN"
  | "M_NOT_FOUND"
  | "M_UNRECOGNIZED"
  | "M_LIMIT_EXCEEDED"
  | "M_UNKNOWN"
  | "M_WRONG_ROOM_KEYS_VERSION"
  | "M_UNSUPPORTED_ROOM_VERSION"
  | "M_INCOMPATIBLE_ROOM_VERSION"
  | "M_MISSING_EVENT"
  | "M_NOT_LINEAR"
  | "M_WRONG_HUB"
  | "M_UNKNOWN_ROOM";

/** Base class: every error that can reach a peer carries an errcode. */
export class MimiError extends Error {
  constructor(
    readonly errcode: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }

  toJSON(): { errcode: ErrorCode; error: string } {
    return { errcode: this.errcode, error: this.message };
  }
}
