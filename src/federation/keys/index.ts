export {
  buildServerKeysResponse,
  parseServerKeysResponse,
  ServerKeysError,
  ServerKeysPublisher,
  MAX_KEY_VALIDITY_MS,
  MAX_KEYS_PER_RESPONSE,
  DEFAULT_PUBLISHED_VALIDITY_MS,
  type OldVerifyKey,
  type ParsedServerKeys,
  type ServerKey,
  type ServerKeysBody,
} from "./serverKeys";
export {
  DEFAULT_MAX_TRACKED_SERVERS,
  DEFAULT_MIN_REFETCH_INTERVAL_MS,
  KeyRing,
  SERVER_KEYS_PATH,
  type KeyRingOptions,
  type OhttpKeys,
} from "./keyRing";
