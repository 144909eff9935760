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
  | "M_UNKNOWN_ROOM"
  // MLS refusals (docs/protocol.md §12), namespaced as Matrix asks of custom codes.
  /** Bytes that do not decode as the expected MLS structure, or with bytes left over. */
  | "IO.MIMI_APPSERVICE.MLS_MALFORMED"
  /** Only MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 and protocol version mls10 are supported. */
  | "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED"
  /** The message names another group. */
  | "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP"
  /** The message is for another epoch than the group's current one (`MlsWrongEpochError`). */
  | "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH"
  /** The sender is not a current member (or not a listed external sender). */
  | "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER"
  /** A signature over the message, a leaf node or a KeyPackage does not verify. */
  | "IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE"
  /** A proposal, or the list of proposals a commit covers, is invalid (RFC 9420 §12.1, §12.2). */
  | "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL"
  /** The commit's UpdatePath is missing where required, or invalid (RFC 9420 §7.5, §7.9, §12.4.2). */
  | "IO.MIMI_APPSERVICE.MLS_BAD_PATH"
  /** A ratchet tree does not match its GroupContext or is not a valid tree (RFC 9420 §12.4.3.1). */
  | "IO.MIMI_APPSERVICE.MLS_BAD_TREE"
  /** The GroupInfo published with a commit does not describe the state the commit leads to. */
  | "IO.MIMI_APPSERVICE.MLS_GROUPINFO_MISMATCH"
  /** The caller's policy refused the committer or a client to be added. */
  | "IO.MIMI_APPSERVICE.MLS_FORBIDDEN"
  /** The hub's Remove proposals of this epoch wait for a commit that covers them (Robert §Queueing Service). */
  | "IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING"
  // Oblivious HTTP (RFC 9458) refusals of the gateway and relay (docs/protocol.md §12, KeyPackages over OHTTP).
  /** An Encapsulated Request for a key ID, KEM, KDF or AEAD the gateway does not accept (RFC 9458 §5.3). */
  | "IO.MIMI_APPSERVICE.OHTTP_KEY"
  /** An Encapsulated Request or Response, or the binary HTTP message inside, that does not parse or decrypt. */
  | "IO.MIMI_APPSERVICE.OHTTP_MALFORMED"
  /** An Encapsulated Request the gateway has already seen (RFC 9458 §6.5). */
  | "IO.MIMI_APPSERVICE.OHTTP_REPLAY"
  /** The request's Date is missing or outside the gateway's window (RFC 9458 §6.5.1, §6.5.2). */
  | "IO.MIMI_APPSERVICE.OHTTP_DATE";

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
