import { createHash } from "node:crypto";
import { canonicalBytes } from "../../events/canonicalJson";
import type { ServerSigningKey, VerifyKey } from "../../events/signingKey";
import { isValidServerName } from "../../identifiers";
import { FederationError } from "../errors";
import { formatAuthorizationHeader, parseAuthorizationHeader, type XMatrixAuth } from "./authorizationHeader";

export interface RequestToSign {
  method: string;
  /** The path and query exactly as sent, e.g. `/_matrix/federation/v1/send/t1?x=1`. */
  uri: string;
  origin: string;
  destination: string;
  /** The JSON body; absent for requests without one. */
  content?: unknown;
  /** `content` already in canonical JSON (what goes on the wire), so it is not canonicalised again. */
  canonicalContent?: string;
}

/** What verifyRequest needs from the key ring. */
export interface RequestKeySource {
  /** Cheap and synchronous: whether the server's keys could be fetched at all. */
  canRoute(serverName: string): boolean;
  ensureKeys(serverName: string, keyIds: readonly string[]): Promise<void>;
  requestKey(serverName: string, keyId: string): VerifyKey | undefined;
  keyInfo(serverName: string, keyId: string): { old: boolean; validUntil: number } | undefined;
  lastFetchError(serverName: string): string | undefined;
}

const METHOD = /^[A-Z]+$/;

/**
 * What the `content` of the signed object is for a request whose body is not JSON (an OHTTP
 * Encapsulated Request): the body's SHA-256, so the signature still covers the body. An extension
 * of LM-04 §Request Authentication, which signs JSON bodies only.
 */
export function binaryBodyContent(body: Uint8Array): { sha256: string } {
  return { sha256: createHash("sha256").update(body).digest("base64").replace(/=+$/, "") };
}
const URI = /^\/[\x21-\x7e]*$/;

/**
 * The object signed for a request (LM-04 §Request Authentication). A request
 * without a body signs `content: {}` as LM-04 says; `omitEmptyContent` builds
 * the Matrix server-server form that leaves `content` out instead.
 */
function signedRequestObject(request: RequestToSign, omitEmptyContent = false): Record<string, unknown> {
  const object: Record<string, unknown> = {
    method: request.method,
    uri: request.uri,
    origin: request.origin,
    destination: request.destination,
  };
  if (request.content !== undefined) object.content = request.content;
  else if (!omitEmptyContent) object.content = {};
  return object;
}

/**
 * The canonical JSON of the signed object. With the body's canonical JSON at
 * hand it is assembled around it: the object's keys in canonical order
 * (content, destination, method, origin, uri), strings as JSON.stringify
 * writes them, which is RFC 8785's form for strings.
 */
function signedRequestBytes(request: RequestToSign): Buffer {
  if (request.canonicalContent === undefined) return canonicalBytes(signedRequestObject(request));
  const field = (value: string) => JSON.stringify(value);
  return Buffer.from(
    `{"content":${request.canonicalContent},"destination":${field(request.destination)},` +
      `"method":${field(request.method)},"origin":${field(request.origin)},"uri":${field(request.uri)}}`,
    "utf8",
  );
}

/** The `Authorization` header value for a request from `key`'s server. */
export function signRequest(request: RequestToSign, key: ServerSigningKey): string {
  if (request.origin !== key.serverName) {
    throw new Error(`cannot sign as ${request.origin} with a key of ${key.serverName}`);
  }
  if (!isValidServerName(request.destination)) {
    throw new Error(`destination ${JSON.stringify(request.destination)} is not a valid server name`);
  }
  if (!METHOD.test(request.method))
    throw new Error(`method ${JSON.stringify(request.method)} must be upper case`);
  if (!URI.test(request.uri)) {
    throw new Error(`uri ${JSON.stringify(request.uri)} must start with "/" and hold only visible ASCII`);
  }
  const sig = key.sign(signedRequestBytes(request));
  return formatAuthorizationHeader({
    origin: request.origin,
    destination: request.destination,
    key: key.keyId,
    sig,
  });
}

export interface RequestToVerify {
  method: string;
  uri: string;
  /** Request headers; `authorization` may hold several values (one per signing key). */
  headers: Readonly<Record<string, string | readonly string[] | undefined>>;
  /** The body parsed as JSON, or undefined when the request has none. */
  body: unknown;
  ourServerName: string;
  keyRing: RequestKeySource;
}

/**
 * Authenticates a request (LM-04 §Request Authentication): every presented
 * X-Matrix header must be for us, from one origin, and signed by a current
 * key of that origin. Returns the origin. Failures are 401 M_FORBIDDEN.
 * What can be refused without a key fetch is refused first, so a stranger
 * cannot make us fetch keys from a server we could never talk to.
 */
export async function verifyRequest(request: RequestToVerify): Promise<string> {
  const values = authorizationValues(request.headers);
  if (values.length === 0) throw FederationError.unauthorized("missing Authorization header");
  const auths: XMatrixAuth[] = values.map(parseAuthorizationHeader);
  const origin = auths[0]!.origin;
  for (const auth of auths) {
    if (auth.origin !== origin) {
      throw FederationError.unauthorized(
        `Authorization headers name different origins (${JSON.stringify(origin)}, ${JSON.stringify(auth.origin)})`,
      );
    }
    if (auth.destination !== request.ourServerName) {
      throw FederationError.unauthorized(
        `request is for ${JSON.stringify(auth.destination)}, but this server is ${JSON.stringify(request.ourServerName)}`,
      );
    }
  }

  if (origin === request.ourServerName) {
    for (const auth of auths) {
      if (request.keyRing.requestKey(origin, auth.key) === undefined) {
        throw FederationError.unauthorized(
          `request claims to come from this server, but ${auth.key} is not its current key`,
        );
      }
    }
  } else if (!request.keyRing.canRoute(origin)) {
    throw FederationError.unauthorized(`no route to ${origin}: its keys cannot be fetched`);
  }

  await request.keyRing.ensureKeys(
    origin,
    auths.map((auth) => auth.key),
  );
  const toVerify: RequestToSign = {
    method: request.method,
    uri: request.uri,
    origin,
    destination: request.ourServerName,
    content: request.body,
  };
  const signed = canonicalBytes(signedRequestObject(toVerify));
  const signedWithoutContent =
    request.body === undefined ? canonicalBytes(signedRequestObject(toVerify, true)) : undefined;
  for (const auth of auths) {
    const key = request.keyRing.requestKey(origin, auth.key);
    if (key === undefined)
      throw FederationError.unauthorized(unusableKeyReason(request.keyRing, origin, auth.key));
    const valid =
      key.verify(signed, auth.sig) ||
      (signedWithoutContent !== undefined && key.verify(signedWithoutContent, auth.sig));
    if (!valid) {
      throw FederationError.unauthorized(
        `signature of ${origin} with key ${auth.key} does not verify for this request`,
      );
    }
  }
  return origin;
}

function unusableKeyReason(keyRing: RequestKeySource, origin: string, keyId: string): string {
  const info = keyRing.keyInfo(origin, keyId);
  if (info?.old === true) {
    return `key ${keyId} of ${origin} is an old key; requests must be signed with a current key`;
  }
  if (info !== undefined && Number.isFinite(info.validUntil)) {
    return `key ${keyId} of ${origin} expired at ${new Date(info.validUntil).toISOString()} and could not be refreshed`;
  }
  const fetchError = keyRing.lastFetchError(origin);
  return (
    `unknown key ${keyId} of ${origin}` +
    (fetchError === undefined ? "" : ` (fetching its keys failed: ${fetchError})`)
  );
}

function authorizationValues(headers: RequestToVerify["headers"]): string[] {
  const values: string[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (name.toLowerCase() !== "authorization" || value === undefined) continue;
    if (typeof value === "string") values.push(value);
    else values.push(...value);
  }
  return values;
}
