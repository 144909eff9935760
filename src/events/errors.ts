import { MimiError, type ErrorCode } from "../errors";

/** An event that is malformed, too large, or whose hashes do not match. */
export class EventFormatError extends MimiError {
  constructor(message: string, errcode: ErrorCode = "M_BAD_JSON") {
    super(errcode, message);
  }
}

/** A missing, unverifiable or invalid signature. */
export class SignatureError extends MimiError {
  constructor(message: string, errcode: ErrorCode = "M_FORBIDDEN") {
    super(errcode, message);
  }
}
