import { canonicalJson } from "../../events/canonicalJson";
import type { ServerSigningKey } from "../../events/signingKey";
import { parseServerName } from "../../identifiers";
import { binaryBodyContent, signRequest } from "../auth/requestAuth";
import type { Resolver } from "../discovery/serverResolver";
import { RemoteError } from "../errors";
import {
  fetchTransport,
  NodeHttpTransport,
  parseJsonBytes,
  RequestAbortedError,
  type FetchFn,
  type HttpTransport,
} from "./http";

export const DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;

export interface FederationClientOptions {
  /** Signs every request; its server name is our origin. */
  signingKey: ServerSigningKey;
  resolver: Resolver;
  /** Sends through this instead of the built-in node:http transport (tests wrap it). */
  fetch?: FetchFn;
  timeoutMs?: number;
  maxResponseBytes?: number;
  /** Milliseconds since the epoch, to read a `Retry-After` date. Default `Date.now`. */
  now?: () => number;
}

export interface RequestOptions {
  timeoutMs?: number;
  /** Cancels the request (connection, headers and body); it then rejects with RequestAbortedError. */
  signal?: AbortSignal;
}

/** LM-04 §Requests and Responses: POST and PUT always carry a JSON object. */
const BODY_METHODS = new Set(["POST", "PUT"]);
const METHOD = /^[A-Z]+$/;

/**
 * Signed requests to other servers. Errors: RemoteError for an answer that is
 * not 2xx JSON (with the peer's status and errcode), FederationNetworkError
 * (retryable) when the peer cannot be reached or times out,
 * ResponseTooLargeError for an oversized answer, RequestAbortedError when the
 * caller's signal aborts it.
 */
export class FederationClient {
  readonly serverName: string;
  private readonly transport: HttpTransport;
  private readonly ownTransport: NodeHttpTransport | undefined;
  private readonly timeoutMs: number;
  private readonly maxResponseBytes: number;
  private readonly now: () => number;

  constructor(private readonly options: FederationClientOptions) {
    this.serverName = options.signingKey.serverName;
    this.ownTransport = options.fetch === undefined ? new NodeHttpTransport() : undefined;
    this.transport = options.fetch === undefined ? this.ownTransport!.send : fetchTransport(options.fetch);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.now = options.now ?? Date.now;
  }

  /** Closes pooled connections; requests made afterwards open new ones. */
  close(): void {
    this.ownTransport?.close();
  }

  /**
   * `path` is the path and query exactly as it goes on the wire: callers
   * encode each path segment and query value with encodeURIComponent. A path
   * that URL parsing would rewrite (dot segments, unencoded characters) is
   * refused, since the signature covers it byte for byte.
   */
  async request<T>(
    destination: string,
    method: string,
    path: string,
    body?: unknown,
    options: RequestOptions = {},
  ): Promise<T> {
    const url = await this.urlOf(destination, method, path, options);
    const content = body === undefined && BODY_METHODS.has(method) ? {} : body;
    // Canonical JSON on the wire: the receiver's parse-and-canonicalise gives back exactly the signed bytes.
    const payload = content === undefined ? undefined : canonicalJson(content);
    const headers: Record<string, string> = {
      Accept: "application/json",
      Authorization: signRequest(
        {
          method,
          uri: path,
          origin: this.serverName,
          destination,
          content,
          ...(payload === undefined ? {} : { canonicalContent: payload }),
        },
        this.options.signingKey,
      ),
    };
    if (payload !== undefined) headers["Content-Type"] = "application/json";

    const result = await this.transport(
      url,
      { method, headers, ...(payload === undefined ? {} : { body: payload }) },
      {
        destination,
        timeoutMs: options.timeoutMs ?? this.timeoutMs,
        maxBytes: this.maxResponseBytes,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
    );
    const json = parseJsonBytes(result.bytes);
    if (result.status >= 200 && result.status < 300) {
      if (json === undefined) {
        throw new RemoteError(result.status, "M_NOT_JSON", "the response is not JSON", destination);
      }
      return json.value as T;
    }
    const error = json?.value as { errcode?: unknown; error?: unknown } | undefined;
    let remote: RemoteError;
    if (typeof error === "object" && error !== null && typeof error.errcode === "string") {
      remote = new RemoteError(
        result.status,
        error.errcode,
        typeof error.error === "string" ? error.error : "",
        destination,
        error,
      );
    } else {
      const snippet = result.bytes.subarray(0, 200).toString("utf8");
      remote = new RemoteError(
        result.status,
        "M_UNKNOWN",
        `answer without a JSON error${snippet === "" ? "" : `: ${JSON.stringify(snippet)}`}`,
        destination,
      );
    }
    // LM-04 §Rate Limiting names `retry_after_ms` in the body; HTTP's Retry-After header is the fallback.
    const header = parseRetryAfter(result.headers.get("retry-after"), this.now());
    if (remote.retryAfterMs === undefined && header !== undefined) {
      Object.defineProperty(remote, "retryAfterMs", { value: header, enumerable: true });
    }
    throw remote;
  }

  /**
   * A signed request with a binary body (an OHTTP Encapsulated Request): the X-Matrix signature's
   * `content` is the body's digest (`binaryBodyContent`). Answers the status, Content-Type and
   * bytes as they came, any status; rejects only when the peer cannot be resolved or reached
   * (FederationNetworkError), answers too much (ResponseTooLargeError) or the signal aborts.
   */
  async requestBytes(
    destination: string,
    method: string,
    path: string,
    body: Uint8Array,
    contentType: string,
    options: RequestOptions & { maxResponseBytes?: number; accept?: string } = {},
  ): Promise<BytesAnswer> {
    const url = await this.urlOf(destination, method, path, options);
    const headers: Record<string, string> = {
      "Content-Type": contentType,
      Authorization: signRequest(
        { method, uri: path, origin: this.serverName, destination, content: binaryBodyContent(body) },
        this.options.signingKey,
      ),
    };
    if (options.accept !== undefined) headers.Accept = options.accept;
    const result = await this.transport(
      url,
      { method, headers, body },
      {
        destination,
        timeoutMs: options.timeoutMs ?? this.timeoutMs,
        maxBytes: options.maxResponseBytes ?? this.maxResponseBytes,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
    );
    return {
      status: result.status,
      contentType: result.headers.get("content-type") ?? undefined,
      bytes: result.bytes,
    };
  }

  /** The URL of `path` at `destination`, refusing a path that URL parsing would rewrite (it is signed). */
  private async urlOf(
    destination: string,
    method: string,
    path: string,
    options: RequestOptions,
  ): Promise<URL> {
    parseServerName(destination);
    if (!METHOD.test(method)) throw new Error(`method ${JSON.stringify(method)} must be upper case`);
    if (options.signal?.aborted === true) throw new RequestAbortedError(destination);
    const base = await this.options.resolver.resolve(destination);
    const url = new URL(path, base);
    if (!path.startsWith("/") || path.startsWith("//") || url.pathname + url.search !== path) {
      throw new Error(
        `path ${JSON.stringify(path)} is not in the form sent on the wire ` +
          `(would be sent as ${JSON.stringify(url.pathname + url.search)}); encode segments with encodeURIComponent`,
      );
    }
    return url;
  }
}

/** A binary answer, whatever its status (`requestBytes`). */
export interface BytesAnswer {
  status: number;
  contentType: string | undefined;
  bytes: Buffer;
}

/** RFC 9110 §10.2.3 `Retry-After`: delay-seconds or an HTTP date, as milliseconds from `now`. */
export function parseRetryAfter(value: string | null, now: number): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) {
    const ms = Number(text) * 1000;
    return Number.isSafeInteger(ms) ? ms : undefined;
  }
  // An HTTP date starts with the day name, in all three of its forms.
  const date = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun)/.test(text) ? Date.parse(text) : NaN;
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}
