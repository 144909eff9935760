import {
  Agent,
  createServer,
  request,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import type { Logger } from "../logging";

/** The errcode a standby answers with when no active process can be reached (docs/protocol.md §Clusters). */
export const NOT_ACTIVE_ERRCODE = "IO.MIMI_APPSERVICE.NOT_ACTIVE";
/** What a standby suggests waiting before the retry. */
export const NOT_ACTIVE_RETRY_MS = 1000;

// RFC 9110 §7.6.1: connection-specific fields, never passed on by an intermediary.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

function endToEnd(headers: IncomingMessage["headers"]): Record<string, string | string[]> {
  const named = new Set(
    String(headers.connection ?? "")
      .split(",")
      .map((name) => name.trim().toLowerCase())
      .filter((name) => name !== ""),
  );
  const kept: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name)) continue;
    kept[name] = value;
  }
  return kept;
}

/**
 * A standby's stand-in for one of the active process's listeners: every request is passed on as
 * it came (method, path, headers, body; an X-Matrix signature names the provider, not the
 * process, so it still verifies), and the answer passed back. With no active process known or
 * reachable the answer is 503 `IO.MIMI_APPSERVICE.NOT_ACTIVE` with `retry_after_ms`.
 */
export class RequestForwarder {
  private constructor(
    private readonly server: Server,
    private readonly agent: Agent,
  ) {}

  static async listen(options: {
    /** Which listener this stands in for, for logs: federation, admin, appservice. */
    kind: string;
    bindAddress: string;
    port: number;
    /** The active process's base URL for this listener, if one is known now. */
    target: () => string | undefined;
    log: Logger;
  }): Promise<RequestForwarder> {
    const agent = new Agent({ keepAlive: true });
    const server = createServer((req, res) => forward(req, res, options.target(), agent, options));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port, options.bindAddress, () => {
        server.off("error", reject);
        resolve();
      });
    });
    return new RequestForwarder(server, agent);
  }

  get port(): number {
    const address = this.server.address();
    return typeof address === "object" && address !== null ? address.port : 0;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.agent.destroy();
  }
}

function notActive(res: ServerResponse, why: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({
    errcode: NOT_ACTIVE_ERRCODE,
    error: `this process of the provider is a standby and ${why}; retry later`,
    retry_after_ms: NOT_ACTIVE_RETRY_MS,
  });
  res.writeHead(503, {
    "content-type": "application/json",
    "retry-after": String(Math.ceil(NOT_ACTIVE_RETRY_MS / 1000)),
  });
  res.end(body);
}

let lastWarning = 0;

function forward(
  req: IncomingMessage,
  res: ServerResponse,
  target: string | undefined,
  agent: Agent,
  options: { kind: string; log: Logger },
): void {
  if (target === undefined) {
    req.resume();
    notActive(res, "no active process holds the lease now");
    return;
  }
  const url = new URL(req.url ?? "/", target);
  const headers = endToEnd(req.headers);
  const upstream = request(url, { method: req.method, headers, agent }, (answer) => {
    res.writeHead(answer.statusCode ?? 502, endToEnd(answer.headers));
    answer.pipe(res);
    answer.on("error", () => res.destroy());
  });
  upstream.on("error", (error) => {
    // Once a second at most: a dead active process fails every request until the lease moves.
    const now = Date.now();
    if (now - lastWarning >= 1000) {
      lastWarning = now;
      options.log.warn("cannot reach the active process", { listener: options.kind, target, error });
    }
    notActive(res, "cannot reach the active process");
  });
  // A client that goes away takes its forwarded request with it (long polls included).
  res.on("close", () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
}
