export {
  FederationClient,
  DEFAULT_MAX_RESPONSE_BYTES,
  DEFAULT_REQUEST_TIMEOUT_MS,
  parseRetryAfter,
  type BytesAnswer,
  type FederationClientOptions,
  type RequestOptions,
} from "./federationClient";
export {
  RequestAbortedError,
  ResponseTooLargeError,
  readLimitedBody,
  sendHttp,
  parseJsonBytes,
  type FetchFn,
} from "./http";
