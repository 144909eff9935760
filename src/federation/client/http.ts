import {
  Agent as HttpAgent,
  request as httpRequest,
  type ClientRequest,
  type IncomingHttpHeaders,
} from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { MimiError } from "../../errors";
import { FederationNetworkError } from "../errors";

/** The subset of the global `fetch` we use; injected so tests and callers can wrap it. */
export type FetchFn = (input: string | URL, init?: RequestInit) => Promise<Response>;

/** A peer's answer was larger than we accept. */
export class ResponseTooLargeError extends MimiError {
  constructor(
    readonly destination: string,
    readonly limit: number,
  ) {
    super("M_TOO_LARGE", `${destination}: the response is larger than ${limit} bytes`);
  }
}

/**
 * The caller aborted the request (e.g. on shutdown). Not the peer's fault and
 * not to be retried now; whoever aborted decides whether to try again later.
 */
export class RequestAbortedError extends MimiError {
  readonly aborted = true;
  readonly retryable = false;

  constructor(
    readonly destination: string,
    options?: { cause?: unknown },
  ) {
    super("M_UNKNOWN", `${destination}: the request was aborted`);
    if (options?.cause !== undefined) this.cause = options.cause;
  }
}

/** Response headers by lower-case name; repeated headers joined with ", ". */
export interface HeaderLookup {
  get(name: string): string | null;
}

export interface HttpResult {
  status: number;
  headers: HeaderLookup;
  /** The URL of the final response (after redirects, if they were followed). */
  url: string;
  bytes: Buffer;
}

export interface SendOptions {
  /** Named in error messages: a server name, or a URL for requests that are not to a server. */
  destination: string;
  timeoutMs: number;
  maxBytes: number;
  /** Aborts the request, whatever is left of the timeout: it rejects with RequestAbortedError. */
  signal?: AbortSignal;
}

/**
 * Sends one HTTP request and reads the whole body under a size limit and one
 * timeout (connect, headers and body together). Transport failures become
 * FederationNetworkError; the status is returned as is.
 */
export async function sendHttp(
  fetchFn: FetchFn,
  url: URL,
  init: RequestInit,
  options: SendOptions,
): Promise<HttpResult> {
  if (options.signal?.aborted === true) throw new RequestAbortedError(options.destination);
  const timeout = AbortSignal.timeout(options.timeoutMs);
  const signal = options.signal === undefined ? timeout : AbortSignal.any([timeout, options.signal]);
  let response: Response;
  try {
    response = await fetchFn(url, { ...init, signal });
  } catch (err) {
    throw networkError(err, timeout, options);
  }
  let bytes: Buffer;
  try {
    bytes = await readLimitedBody(response, options.maxBytes, options.destination);
  } catch (err) {
    if (err instanceof ResponseTooLargeError) throw err;
    throw networkError(err, timeout, options);
  }
  return { status: response.status, headers: response.headers, url: response.url, bytes };
}

function networkError(
  err: unknown,
  timeout: { aborted: boolean },
  options: SendOptions,
): FederationNetworkError | RequestAbortedError {
  if (options.signal?.aborted === true) return new RequestAbortedError(options.destination, { cause: err });
  if (timeout.aborted) {
    return new FederationNetworkError(options.destination, `no answer within ${options.timeoutMs} ms`, {
      cause: err,
    });
  }
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  const detail = cause?.code ?? cause?.message ?? (err as Error).message;
  return new FederationNetworkError(options.destination, `request failed: ${detail}`, { cause: err });
}

/** Reads a response body, refusing it as soon as it exceeds `maxBytes` (before reading it all). */
export async function readLimitedBody(
  response: Response,
  maxBytes: number,
  destination: string,
): Promise<Buffer> {
  const declared = Number(response.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) {
    await response.body?.cancel().catch(() => undefined);
    throw new ResponseTooLargeError(destination, maxBytes);
  }
  if (response.body === null) return Buffer.alloc(0);
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => undefined);
      throw new ResponseTooLargeError(destination, maxBytes);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/** Parses JSON that must be UTF-8 (LM-04 §Requests and Responses); undefined when it is not JSON. */
export function parseJsonBytes(bytes: Uint8Array): { value: unknown } | undefined {
  try {
    return { value: JSON.parse(UTF8.decode(bytes)) as unknown };
  } catch {
    return undefined;
  }
}

export interface HttpRequestInit {
  method: string;
  headers: Record<string, string>;
  /** JSON text, or the bytes of a binary body (OHTTP). */
  body?: string | Uint8Array;
}

/** Sends one request; the contract of `sendHttp`, without redirects followed. */
export type HttpTransport = (url: URL, init: HttpRequestInit, options: SendOptions) => Promise<HttpResult>;

/** Keep-alive connections are reused for this long when idle. */
const IDLE_SOCKET_MS = 30_000;

/**
 * Requests over node:http and node:https with keep-alive connection pools:
 * on loopback a round trip costs a fraction of `fetch`'s. Same limits and
 * errors as `sendHttp`: one timeout for connect, headers and body; a body
 * refused as soon as it exceeds `maxBytes`; transport failures as
 * FederationNetworkError; the caller's signal as RequestAbortedError.
 */
export class NodeHttpTransport {
  private readonly httpAgent = new HttpAgent({ keepAlive: true, timeout: IDLE_SOCKET_MS });
  private readonly httpsAgent = new HttpsAgent({ keepAlive: true, timeout: IDLE_SOCKET_MS });

  readonly send: HttpTransport = (url, init, options) => {
    if (options.signal?.aborted === true) return Promise.reject(new RequestAbortedError(options.destination));
    const https = url.protocol === "https:";
    if (!https && url.protocol !== "http:") {
      return Promise.reject(
        new FederationNetworkError(options.destination, `unsupported URL scheme ${url.protocol}`),
      );
    }
    return new Promise<HttpResult>((resolve, reject) => {
      const timeout = { aborted: false };
      let settled = false;
      let request: ClientRequest | undefined;
      const finish = (error: Error | undefined, result?: HttpResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
        if (error !== undefined) {
          request?.destroy();
          reject(error);
        } else resolve(result!);
      };
      const fail = (err: unknown) =>
        finish(err instanceof ResponseTooLargeError ? err : networkError(err, timeout, options));
      const headers: Record<string, string | number> = { ...init.headers };
      if (init.body !== undefined) headers["Content-Length"] = Buffer.byteLength(init.body);
      const timer = setTimeout(() => {
        timeout.aborted = true;
        fail(new Error("timeout"));
      }, options.timeoutMs);
      const onAbort = () => fail(new Error("aborted"));
      options.signal?.addEventListener("abort", onAbort, { once: true });
      try {
        request = (https ? httpsRequest : httpRequest)(
          url,
          { method: init.method, headers, agent: https ? this.httpsAgent : this.httpAgent },
          (response) => {
            const declared = Number(response.headers["content-length"] ?? NaN);
            if (declared > options.maxBytes) {
              fail(new ResponseTooLargeError(options.destination, options.maxBytes));
              return response.destroy();
            }
            const chunks: Buffer[] = [];
            let total = 0;
            response.on("data", (chunk: Buffer) => {
              total += chunk.length;
              if (total > options.maxBytes) {
                fail(new ResponseTooLargeError(options.destination, options.maxBytes));
                return response.destroy();
              }
              chunks.push(chunk);
            });
            response.on("error", fail);
            response.on("aborted", () => fail(new Error("the connection closed before the body ended")));
            response.on("end", () =>
              finish(undefined, {
                status: response.statusCode ?? 0,
                headers: new NodeHeaders(response.headers),
                url: url.href,
                bytes: Buffer.concat(chunks, total),
              }),
            );
          },
        );
      } catch (err) {
        return fail(err);
      }
      request.on("error", fail);
      request.end(init.body);
    });
  };

  /** Closes the pooled connections. */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }
}

class NodeHeaders implements HeaderLookup {
  constructor(private readonly headers: IncomingHttpHeaders) {}

  get(name: string): string | null {
    const value = this.headers[name.toLowerCase()];
    if (value === undefined) return null;
    return Array.isArray(value) ? value.join(", ") : value;
  }
}

/** `sendHttp` over an injected fetch, as an HttpTransport. */
export function fetchTransport(fetchFn: FetchFn): HttpTransport {
  return (url, init, options) =>
    sendHttp(
      fetchFn,
      url,
      { method: init.method, headers: init.headers, body: init.body, redirect: "manual" },
      options,
    );
}
