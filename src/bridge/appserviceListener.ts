import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "../logging";
import { sendJson } from "../util/httpJson";
import type { HomeserverInbox } from "./homeserverInbox";

/** Largest transaction body read: a homeserver sends at most 100 PDUs and 100 EDUs per transaction. */
export const MAX_TRANSACTION_BYTES = 16 * 1024 * 1024;
const TRANSACTION_PATH = /^\/_matrix\/app\/v1\/transactions\/([^/]+)$/;
const PING_PATH = "/_matrix/app/v1/ping";
const ROOM_QUERY_PATH = /^\/_matrix\/app\/v1\/rooms\/([^/]+)$/;
const USER_QUERY_PATH = /^\/_matrix\/app\/v1\/users\/([^/]+)$/;

export interface AppserviceListenerOptions {
  hsToken: string;
  inbox: HomeserverInbox;
  log: Logger;
  /** Called for each ping, with the homeserver's transaction_id (our own ping's, or none). */
  onPing?: (transactionId: string | undefined) => void;
  /** Told of each transaction: stored (with its events), a duplicate, or rejected (a bad request). */
  onTransaction?: (outcome: "stored" | "duplicate" | "rejected", events: number) => void;
  /**
   * Application service API §Querying: a room alias or a user of our namespace the homeserver
   * does not know; true once it exists (the portal made, the ghost registered).
   */
  onRoomQuery?: (alias: string) => Promise<boolean>;
  onUserQuery?: (userId: string) => Promise<boolean>;
  /** Told of each error answer (e.g. to count them). */
  onError?: (errcode: string, status: number) => void;
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
 * stored durably before the 200, `POST /ping`, and the alias and user queries. Every request must carry the hs_token
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
    let transaction: RegExpExecArray | null = null;
    try {
      const url = new URL(req.url ?? "/", "http://appservice");
      transaction = TRANSACTION_PATH.exec(url.pathname);
      const roomQuery = ROOM_QUERY_PATH.exec(url.pathname);
      const userQuery = USER_QUERY_PATH.exec(url.pathname);
      if (roomQuery !== null || userQuery !== null) {
        if (req.method !== "GET") throw new RequestError(405, "M_UNRECOGNIZED", `use GET on ${url.pathname}`);
        authorized(req, url);
        const subject = decodeURIComponent((roomQuery ?? userQuery)![1]!);
        const query = roomQuery !== null ? options.onRoomQuery : options.onUserQuery;
        if (query !== undefined && (await query(subject))) {
          sendJson(res, 200, {});
          return;
        }
        throw new RequestError(404, "M_NOT_FOUND", `${subject} is not one of ours`);
      }
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
        options.onTransaction?.(fresh ? "stored" : "duplicate", events.length);
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
      const { status, errcode } = err instanceof RequestError ? err : { status: 500, errcode: "M_UNKNOWN" };
      if (transaction !== null) options.onTransaction?.("rejected", 0);
      options.onError?.(errcode, status);
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
