export {
  ServerResolver,
  cacheLifetime,
  DEFAULT_FEDERATION_PORT,
  WELL_KNOWN_DEFAULT_CACHE_MS,
  WELL_KNOWN_ERROR_CACHE_MS,
  WELL_KNOWN_MAX_CACHE_MS,
  type Resolver,
  type ServerResolverOptions,
} from "./serverResolver";
