import { IdentifierError, parseUserId } from "../../identifiers";
import { sameBytes } from "../clients/wire";
import { MlsError } from "../errors";
import {
  ciphersuites,
  decodeKeyPackage,
  encodeKeyPackage,
  protocolVersions,
  type CiphersuiteName,
  type KeyPackage,
  type ProtocolVersionName,
} from "../tsMls";
import { TlsReader, TlsWriter } from "./tls";

/**
 * McMillion §Key Packages, in the TLS presentation language (RFC 9420 §2.1):
 *
 *     struct {
 *       opaque user_id<V>;
 *       opaque bearer_token<V>;
 *       ProtocolVersion version;
 *       CipherSuite cipher_suite;
 *     } KeyPackageRequest;
 *
 *     struct { KeyPackage key_package; } KeyPackageResponse;
 *
 * and our bundles (McMillion §Privacy allows bundling several requests in one transaction, and
 * gives no format; docs/protocol.md describes this one):
 *
 *     struct { KeyPackageRequest requests<V>; } KeyPackageRequestBundle;
 *
 *     enum { reserved(0), key_package(1), error(2), (255) } KeyPackageResultType;
 *
 *     struct {
 *       opaque errcode<V>;        // UTF-8, e.g. "M_LIMIT_EXCEEDED"
 *       opaque error<V>;          // UTF-8, for humans
 *       uint32 retry_after_ms;    // 0 when no retry time is given
 *     } KeyPackageError;
 *
 *     struct {
 *       KeyPackageResultType result_type;
 *       select (KeyPackageResult.result_type) {
 *         case key_package: KeyPackageResponse response;
 *         case error:       KeyPackageError error;
 *       };
 *     } KeyPackageResult;
 *
 *     struct { KeyPackageResult results<V>; } KeyPackageResponseBundle;  // one per request, in order
 */
export interface KeyPackageRequest {
  userId: string;
  bearerToken: Uint8Array;
  version: ProtocolVersionName;
  cipherSuite: CiphersuiteName;
}

export type KeyPackageResult =
  | { kind: "key_package"; keyPackage: Uint8Array }
  | { kind: "error"; errcode: string; error: string; retryAfterMs: number | undefined };

export const KEY_PACKAGE_LIMITS = {
  /** A whole request or bundle. */
  maxInputBytes: 64 * 1024,
  /** LM-04 §Users: a user ID is at most 255 bytes. */
  maxUserIdBytes: 255,
  maxTokenBytes: 256,
  maxBundleRequests: 64,
  maxErrcodeBytes: 255,
  maxErrorBytes: 4096,
} as const;

const RESULT_KEY_PACKAGE = 1;
const RESULT_ERROR = 2;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

const versionNames = new Map<number, ProtocolVersionName>(
  Object.entries(protocolVersions).map(([name, value]) => [value, name as ProtocolVersionName]),
);
const suiteNames = new Map<number, CiphersuiteName>(
  Object.entries(ciphersuites).map(([name, value]) => [value, name as CiphersuiteName]),
);

// ---- requests ----

export function encodeKeyPackageRequest(request: KeyPackageRequest): Uint8Array {
  return writeRequest(new TlsWriter(), request).bytes();
}

/** One KeyPackageRequest, exactly: truncated input, bytes left over and bad lengths are refused. */
export function decodeKeyPackageRequest(bytes: Uint8Array): KeyPackageRequest {
  const reader = new TlsReader(checkSize(bytes));
  const request = readRequest(reader);
  reader.end("the KeyPackageRequest");
  return request;
}

export function encodeKeyPackageRequestBundle(requests: readonly KeyPackageRequest[]): Uint8Array {
  const inner = new TlsWriter();
  for (const request of requests) writeRequest(inner, request);
  return new TlsWriter().opaque(inner.bytes()).bytes();
}

/** A KeyPackageRequestBundle, exactly; every request in it is decoded before any is served. */
export function decodeKeyPackageRequestBundle(bytes: Uint8Array): KeyPackageRequest[] {
  const reader = new TlsReader(checkSize(bytes));
  const inner = reader.vector("requests", KEY_PACKAGE_LIMITS.maxInputBytes);
  reader.end("the KeyPackageRequestBundle");
  const requests: KeyPackageRequest[] = [];
  while (inner.remaining > 0) {
    if (requests.length === KEY_PACKAGE_LIMITS.maxBundleRequests) {
      throw new MlsError(
        "M_TOO_LARGE",
        "bundle.too_many",
        `a bundle holds at most ${KEY_PACKAGE_LIMITS.maxBundleRequests} requests`,
      );
    }
    requests.push(readRequest(inner));
  }
  if (requests.length === 0) {
    throw new MlsError("IO.MIMI_APPSERVICE.MLS_MALFORMED", "bundle.empty", "the bundle holds no request");
  }
  return requests;
}

function writeRequest(writer: TlsWriter, request: KeyPackageRequest): TlsWriter {
  return writer
    .opaque(utf8.encode(request.userId))
    .opaque(request.bearerToken)
    .uint16(protocolVersions[request.version])
    .uint16(ciphersuites[request.cipherSuite]);
}

function readRequest(reader: TlsReader): KeyPackageRequest {
  const userIdBytes = reader.opaque("user_id", KEY_PACKAGE_LIMITS.maxUserIdBytes);
  const bearerToken = reader.opaque("bearer_token", KEY_PACKAGE_LIMITS.maxTokenBytes);
  const versionNumber = reader.uint16("version");
  const suiteNumber = reader.uint16("cipher_suite");
  const userId = text(userIdBytes, "user_id");
  try {
    parseUserId(userId);
  } catch (err) {
    if (err instanceof IdentifierError) throw new MlsError("M_INVALID_PARAM", "request.user_id", err.message);
    throw err;
  }
  const version = versionNames.get(versionNumber);
  if (version === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "request.version",
      `unknown MLS version ${versionNumber}`,
    );
  }
  const cipherSuite = suiteNames.get(suiteNumber);
  if (cipherSuite === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "request.cipher_suite",
      `unknown MLS cipher suite 0x${suiteNumber.toString(16).padStart(4, "0")}`,
    );
  }
  return { userId, bearerToken, version, cipherSuite };
}

// ---- responses ----

/** KeyPackageResponse: the KeyPackage's own encoding (RFC 9420 §10), nothing around it. */
export function encodeKeyPackageResponse(keyPackage: Uint8Array): Uint8Array {
  return keyPackage;
}

/** One KeyPackageResponse, exactly, in the one canonical encoding of its KeyPackage. */
export function decodeKeyPackageResponse(bytes: Uint8Array): { keyPackage: KeyPackage; encoded: Uint8Array } {
  const reader = new TlsReader(checkSize(bytes));
  const decoded = readKeyPackage(reader);
  reader.end("the KeyPackageResponse");
  return decoded;
}

export function encodeKeyPackageResultBundle(results: readonly KeyPackageResult[]): Uint8Array {
  const inner = new TlsWriter();
  for (const result of results) {
    if (result.kind === "key_package") {
      inner.uint8(RESULT_KEY_PACKAGE).raw(result.keyPackage);
    } else {
      inner
        .uint8(RESULT_ERROR)
        .opaque(utf8.encode(result.errcode))
        .opaque(utf8.encode(result.error))
        .uint32(result.retryAfterMs ?? 0);
    }
  }
  return new TlsWriter().opaque(inner.bytes()).bytes();
}

export function decodeKeyPackageResultBundle(bytes: Uint8Array): KeyPackageResult[] {
  const reader = new TlsReader(bytes);
  const inner = reader.vector("results", Number.MAX_SAFE_INTEGER);
  reader.end("the KeyPackageResponseBundle");
  const results: KeyPackageResult[] = [];
  while (inner.remaining > 0) {
    const type = inner.uint8("result_type");
    if (type === RESULT_KEY_PACKAGE) {
      results.push({ kind: "key_package", keyPackage: readKeyPackage(inner).encoded });
    } else if (type === RESULT_ERROR) {
      const errcode = text(inner.opaque("errcode", KEY_PACKAGE_LIMITS.maxErrcodeBytes), "errcode");
      const error = text(inner.opaque("error", KEY_PACKAGE_LIMITS.maxErrorBytes), "error");
      const retry = inner.uint32("retry_after_ms");
      results.push({ kind: "error", errcode, error, retryAfterMs: retry === 0 ? undefined : retry });
    } else {
      throw new MlsError("IO.MIMI_APPSERVICE.MLS_MALFORMED", "result_type", `unknown result type ${type}`);
    }
  }
  return results;
}

// ---- helpers ----

function checkSize(bytes: Uint8Array): Uint8Array {
  if (bytes.length > KEY_PACKAGE_LIMITS.maxInputBytes) {
    throw new MlsError(
      "M_TOO_LARGE",
      "request.too_large",
      `the request is ${bytes.length} bytes, at most ${KEY_PACKAGE_LIMITS.maxInputBytes} allowed`,
    );
  }
  return bytes;
}

function text(bytes: Uint8Array, field: string): string {
  try {
    return fromUtf8.decode(bytes);
  } catch {
    throw new MlsError("IO.MIMI_APPSERVICE.MLS_MALFORMED", `${field}.utf8`, `${field} is not UTF-8`);
  }
}

/**
 * A KeyPackage carries no length of its own: ts-mls reads it and says how many bytes it took. Its
 * re-encoding must give the same bytes, which refuses non-shortest lengths inside it.
 */
function readKeyPackage(reader: TlsReader): { keyPackage: KeyPackage; encoded: Uint8Array } {
  let decoded: [KeyPackage, number] | undefined;
  try {
    decoded = decodeKeyPackage(reader.rest(), 0);
  } catch {
    decoded = undefined;
  }
  if (decoded === undefined) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "key_package",
      "the bytes do not decode as a KeyPackage",
    );
  }
  const start = reader.position;
  reader.skip(decoded[1], "key_package");
  const encoded = reader.slice(start);
  if (!sameBytes(encodeKeyPackage(decoded[0]), encoded)) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "key_package.canonical",
      "the KeyPackage is not canonically encoded",
    );
  }
  return { keyPackage: decoded[0], encoded: new Uint8Array(encoded) };
}
