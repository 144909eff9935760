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

export interface HttpResult {
  status: number;
  headers: Headers;
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
  timeout: AbortSignal,
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
