import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "../logging";
import { sendJson } from "../util/httpJson";
import type { MimiMetrics } from "./metrics";

/** What `/health` reports. */
export interface HealthSource {
  serverName: string;
  rooms(): number;
  /** Undefined while the provider serves; else why it does not. */
  unavailableReason(): string | undefined;
}

export interface MetricsHandlerOptions {
  metrics: MimiMetrics;
  health: HealthSource;
  log: Logger;
  /** Milliseconds since the epoch, for the uptime. Default `Date.now`. */
  now?: () => number;
}

const ROUTES = new Set(["/metrics", "/health"]);

/**
 * `GET /metrics`: the Prometheus text exposition. `GET /health`: 200 `{status: "ok", ...}` while
 * the provider serves, 503 `{status: "unavailable", reason, ...}` once it does not. Anything else
 * is answered 404 (or 405 for another method) with errcode M_UNRECOGNIZED.
 */
export function createMetricsHandler(options: MetricsHandlerOptions) {
  const now = options.now ?? Date.now;
  const startedAt = now();
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = new URL(req.url ?? "/", "http://metrics").pathname;
    if (!ROUTES.has(path)) {
      sendJson(res, 404, { errcode: "M_UNRECOGNIZED", error: `no such route: ${req.method} ${path}` });
      return;
    }
    if (req.method !== "GET") {
      sendJson(res, 405, { errcode: "M_UNRECOGNIZED", error: `use GET on ${path}` }, { Allow: "GET" });
      return;
    }
    if (path === "/health") {
      const { health } = options;
      const reason = health.unavailableReason();
      const fields = {
        server_name: health.serverName,
        rooms: health.rooms(),
        uptime_seconds: Math.floor((now() - startedAt) / 1000),
      };
      if (reason === undefined) sendJson(res, 200, { status: "ok", ...fields });
      else sendJson(res, 503, { status: "unavailable", reason, ...fields });
      return;
    }
    try {
      const text = await options.metrics.scrape();
      res.writeHead(200, {
        "Content-Type": options.metrics.contentType,
        "Content-Length": Buffer.byteLength(text),
      });
      res.end(text);
    } catch (error) {
      options.log.error("cannot collect the metrics", { error });
      sendJson(res, 500, { errcode: "M_UNKNOWN", error: "cannot collect the metrics" });
    }
  };
}

/** The metrics and health listener, on its own address and port. */
export class MetricsListener {
  private constructor(private readonly server: Server) {}

  static start(
    handler: ReturnType<typeof createMetricsHandler>,
    bindAddress: string,
    port: number,
  ): Promise<MetricsListener> {
    return new Promise((resolve, reject) => {
      const server = createServer((req, res) => void handler(req, res));
      server.once("error", reject);
      server.listen(port, bindAddress, () => {
        server.off("error", reject);
        resolve(new MetricsListener(server));
      });
    });
  }

  get port(): number {
    const address = this.server.address();
    return typeof address === "object" && address !== null ? address.port : 0;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
