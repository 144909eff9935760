import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "../logging";
import { sendJson } from "../util/httpJson";
import type { HomeserverInbox } from "./homeserverInbox";

/** Largest transaction body read: a homeserver sends at most 100 PDUs and 100 EDUs per transaction. */
export const MAX_TRANSACTION_BYTES = 16 * 1024 * 1024;
const TRANSACTION_PATH = /^\/_matrix\/app\/v1\/transactions\/([^/]+)$/;
const PING_PATH = "/_matrix/app/v1/ping";

export interface AppserviceListenerOptions {
  hsToken: string;
  inbox: HomeserverInbox;
  log: Logger;
  /** Called for each ping, with the homeserver's transaction_id (our own ping's, or none). */
  onPing?: (transactionId: string | undefined) => void;
}

class RequestError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: string,
    message: string,
  ) {
    super(message);
  }
}

const sha256 = (text: string) => createHash("sha256").update(text).digest();

/**
 * The HTTP side the homeserver calls (application service API): `PUT /transactions/{txnId}`,
 * stored durably before the 200, and `POST /ping`. Every request must carry the hs_token
 * (`Authorization: Bearer`, or the legacy `access_token` query parameter).
 */
export function createAppserviceHandler(options: AppserviceListenerOptions) {
  const expected = sha256(options.hsToken);
  const authorized = (req: IncomingMessage, url: URL): void => {
    const header = req.headers.authorization;
    const token = header?.startsWith("Bearer ")
      ? header.slice(7)
      : (url.searchParams.get("access_token") ?? undefined);
    if (token === undefined) throw new RequestError(401, "M_UNAUTHORIZED", "no hs_token in the request");
    if (!timingSafeEqual(sha256(token), expected))
      throw new RequestError(403, "M_FORBIDDEN", "wrong hs_token");
  };
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    try {
      const url = new URL(req.url ?? "/", "http://appservice");
      const transaction = TRANSACTION_PATH.exec(url.pathname);
      if (url.pathname !== PING_PATH && transaction === null) {
        throw new RequestError(404, "M_UNRECOGNIZED", `no such route: ${req.method} ${url.pathname}`);
      }
      const method = transaction !== null ? "PUT" : "POST";
      if (req.method !== method)
        throw new RequestError(405, "M_UNRECOGNIZED", `use ${method} on ${url.pathname}`);
      authorized(req, url);
      const body = await readJsonObject(req);
      if (transaction !== null) {
        const txnId = decodeURIComponent(transaction[1]!);
        const events = body.events ?? [];
        if (
          !Array.isArray(events) ||
          !events.every((e) => typeof e === "object" && e !== null && !Array.isArray(e))
        ) {
          throw new RequestError(400, "M_BAD_JSON", "events: must be a list of event objects");
        }
        const fresh = await options.inbox.accept(txnId, events as Record<string, unknown>[]);
        options.log.debug("homeserver transaction", {
          txnId,
          events: events.length,
          rooms: [...new Set(events.map((e) => (e as { room_id?: unknown }).room_id))],
          duplicate: !fresh,
        });
        sendJson(res, 200, {});
        return;
      }
      const transactionId = typeof body.transaction_id === "string" ? body.transaction_id : undefined;
      options.onPing?.(transactionId);
      sendJson(res, 200, {});
    } catch (err) {
      if (err instanceof RequestError) {
        sendJson(res, err.status, { errcode: err.errcode, error: err.message });
        return;
      }
      options.log.error("homeserver request failed", { error: err });
      sendJson(res, 500, { errcode: "M_UNKNOWN", error: "internal error" });
    }
  };
}

async function readJsonObject(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_TRANSACTION_BYTES) throw new RequestError(413, "M_TOO_LARGE", "the body is too large");
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text === "") return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new RequestError(400, "M_NOT_JSON", "the body is not JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new RequestError(400, "M_BAD_JSON", "the body must be a JSON object");
  }
  return body as Record<string, unknown>;
}

export function listenAppservice(
  handler: ReturnType<typeof createAppserviceHandler>,
  bindAddress: string,
  port: number,
): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer((req, res) => void handler(req, res));
    server.once("error", reject);
    server.listen(port, bindAddress, () => {
      server.off("error", reject);
      resolve(server);
    });
  });
}
