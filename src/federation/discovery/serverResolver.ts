import { isValidServerName, parseServerName } from "../../identifiers";
import { readLimitedBody, parseJsonBytes, type FetchFn } from "../client/http";

/** Turns a server name into the base URL its federation API is served at. */
export interface Resolver {
  resolve(serverName: string): Promise<URL>;
}

export const DEFAULT_FEDERATION_PORT = 8448;
const HOUR_MS = 3_600_000;
/** LM-04 §GET /.well-known/matrix/server: default 24 h, at most 48 h, errors at most 1 h. */
export const WELL_KNOWN_DEFAULT_CACHE_MS = 24 * HOUR_MS;
export const WELL_KNOWN_MAX_CACHE_MS = 48 * HOUR_MS;
export const WELL_KNOWN_ERROR_CACHE_MS = HOUR_MS;
const WELL_KNOWN_MAX_BYTES = 64 * 1024;

export interface ServerResolverOptions {
  /** Server name -> base URL (`http(s)://host[:port]`), consulted first. Needed for loopback deployments and tests. */
  staticMap?: Readonly<Record<string, string>>;
  fetch?: FetchFn;
  now?: () => number;
  /**
   * The URL prefix `.well-known/matrix/server` is appended to for a hostname;
   * default `https://<hostname>/`. Tests point it at a local listener.
   */
  wellKnownBase?: (hostname: string) => string;
  timeoutMs?: number;
}

interface CacheEntry {
  /** The delegated server name, or undefined when `.well-known` gave nothing usable. */
  delegated: string | undefined;
  expiresAt: number;
}

/**
 * LM-04 §Resolving Server Names, without the SRV steps: a static map, then an
 * explicit port, then `.well-known` delegation, then `https://<hostname>:8448`.
 */
export class ServerResolver implements Resolver {
  private readonly staticMap = new Map<string, URL>();
  private readonly fetchFn: FetchFn;
  private readonly now: () => number;
  private readonly wellKnownBase: (hostname: string) => string;
  private readonly timeoutMs: number;
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<CacheEntry>>();

  constructor(options: ServerResolverOptions = {}) {
    for (const [serverName, base] of Object.entries(options.staticMap ?? {})) {
      parseServerName(serverName);
      this.staticMap.set(serverName, parseBaseUrl(base, `static map entry for ${serverName}`));
    }
    this.fetchFn = options.fetch ?? fetch;
    this.now = options.now ?? Date.now;
    this.wellKnownBase = options.wellKnownBase ?? ((hostname) => `https://${hostname}/`);
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  async resolve(serverName: string): Promise<URL> {
    const name = parseServerName(serverName);
    const mapped = this.staticMap.get(name.raw);
    if (mapped !== undefined) return new URL(mapped.href);
    if (name.port !== undefined) return new URL(`https://${name.host}:${name.port}/`);
    const entry = await this.wellKnown(name.host);
    if (entry.delegated === undefined) return new URL(`https://${name.host}:${DEFAULT_FEDERATION_PORT}/`);
    const delegated = parseServerName(entry.delegated);
    return new URL(`https://${delegated.host}:${delegated.port ?? DEFAULT_FEDERATION_PORT}/`);
  }

  private async wellKnown(hostname: string): Promise<CacheEntry> {
    const cached = this.cache.get(hostname);
    if (cached !== undefined && cached.expiresAt > this.now()) return cached;
    let pending = this.inflight.get(hostname);
    if (pending === undefined) {
      pending = this.fetchWellKnown(hostname).finally(() => this.inflight.delete(hostname));
      this.inflight.set(hostname, pending);
    }
    return pending;
  }

  private async fetchWellKnown(hostname: string): Promise<CacheEntry> {
    const entry = await this.lookupWellKnown(hostname);
    if (entry.expiresAt > this.now()) this.cache.set(hostname, entry);
    else this.cache.delete(hostname);
    return entry;
  }

  private async lookupWellKnown(hostname: string): Promise<CacheEntry> {
    const failed = (): CacheEntry => ({
      delegated: undefined,
      expiresAt: this.now() + WELL_KNOWN_ERROR_CACHE_MS,
    });
    let url: URL;
    try {
      const base = this.wellKnownBase(hostname);
      url = new URL(".well-known/matrix/server", base.endsWith("/") ? base : `${base}/`);
    } catch {
      return failed();
    }
    try {
      // LM-04 §GET /.well-known/matrix/server: redirects are followed (fetch stops loops after 20).
      const response = await this.fetchFn(url, {
        redirect: "follow",
        headers: { Accept: "application/json" },
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      if (response.status !== 200) {
        await response.body?.cancel().catch(() => undefined);
        return failed();
      }
      const bytes = await readLimitedBody(response, WELL_KNOWN_MAX_BYTES, url.href);
      // A redirect must not downgrade the lookup from https to http.
      if (response.url !== "" && new URL(response.url).protocol !== url.protocol) return failed();
      // The body is JSON whatever the Content-Type says.
      const parsed = parseJsonBytes(bytes)?.value as { "m.server"?: unknown } | undefined;
      const delegated = typeof parsed === "object" && parsed !== null ? parsed["m.server"] : undefined;
      if (typeof delegated !== "string" || !isValidServerName(delegated)) return failed();
      const lifetime = cacheLifetime(response.headers.get("cache-control"));
      return { delegated, expiresAt: this.now() + lifetime };
    } catch {
      return failed();
    }
  }
}

/** Cache-Control max-age in ms, capped at 48 h; no-store / no-cache mean "do not cache". */
export function cacheLifetime(cacheControl: string | null): number {
  if (cacheControl === null) return WELL_KNOWN_DEFAULT_CACHE_MS;
  let maxAge: number | undefined;
  for (const directive of cacheControl.split(",")) {
    const [rawName, rawValue] = directive.split("=", 2) as [string, string | undefined];
    const name = rawName.trim().toLowerCase();
    if (name === "no-store" || name === "no-cache") return 0;
    if (name === "max-age" && rawValue !== undefined) {
      const value = rawValue.trim().replace(/^"(.*)"$/, "$1");
      if (/^\d+$/.test(value)) maxAge = Number(value) * 1000;
    }
  }
  if (maxAge === undefined) return WELL_KNOWN_DEFAULT_CACHE_MS;
  return Math.min(maxAge, WELL_KNOWN_MAX_CACHE_MS);
}

function parseBaseUrl(text: string, what: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`${what}: ${JSON.stringify(text)} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`${what}: ${JSON.stringify(text)} must use http or https`);
  }
  if (
    url.username !== "" ||
    url.password !== "" ||
    url.search !== "" ||
    url.hash !== "" ||
    url.pathname !== "/"
  ) {
    throw new Error(
      `${what}: ${JSON.stringify(text)} must be a bare scheme://host[:port] without path or query`,
    );
  }
  return url;
}
