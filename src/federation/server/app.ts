import type { IncomingMessage, RequestListener, ServerResponse } from "node:http";
import { sendJson } from "../../util/httpJson";
import { isValidEventId, isValidRoomId, isValidUserId } from "../../identifiers";
import { createLogger } from "../../logging";
import type { ServerSigningKey } from "../../events/signingKey";
import type { JsonObject } from "../../events/types";
import { binaryBodyContent, verifyRequest, type RequestKeySource } from "../auth/requestAuth";
import { errorResponse, FederationError } from "../errors";
import { ServerKeysPublisher, type OldVerifyKey } from "../keys";
import { MEDIA_OHTTP_KEYS, MEDIA_OHTTP_REQUEST, MEDIA_OHTTP_RESPONSE } from "../ohttp/keyConfig";
import type { RawAnswer } from "../ohttp/relay";

/** Largest request body we read: 50 PDUs of at most 64 KiB each, plus room for the envelope. */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024;
const log = createLogger("federation.http");

export type Membership = "join" | "leave" | "knock";

/** Per-PDU answer of `PUT /send`: `{}` accepted, `{event_id}` for a sequenced LPDU, or an error. */
export type PduAnswer = { event_id?: string } | { errcode: string; error: string };

export interface SendTransactionAnswer {
  pdus: Record<string, PduAnswer>;
  failed_pdus: Record<string, { errcode: string; error: string }>;
}

/**
 * What the listener serves, once a request is authenticated: `origin` is the
 * server that signed it. Implemented by the provider layer; errors are
 * MimiErrors whose errcode gives the status.
 */
export interface FederationHandlers {
  onSendTransaction(origin: string, txnId: string, body: unknown): Promise<SendTransactionAnswer>;
  onInvite(origin: string, txnId: string, body: unknown): Promise<JsonObject>;
  onMakeMembership(
    origin: string,
    change: Membership,
    roomId: string,
    userId: string,
    versions: string[],
  ): JsonObject | Promise<JsonObject>;
  onSendMembership(origin: string, change: Membership, txnId: string, body: unknown): Promise<JsonObject>;
  onGetEvent(origin: string, eventId: string): Promise<JsonObject>;
  onGetState(origin: string, roomId: string, eventId: string, idsOnly: boolean): Promise<JsonObject>;
  onBackfill(origin: string, roomId: string, from: string, limit: number): Promise<JsonObject>;
}

export interface FederationAppOptions {
  handlers: FederationHandlers;
  serverName: string;
  signingKey: ServerSigningKey;
  oldVerifyKeys: readonly OldVerifyKey[];
  keyRing: RequestKeySource;
  /** Called with the authenticated origin before a rate-limited endpoint's handler; throws to refuse. */
  admit?: (origin: string) => void;
  /** Told of every authenticated origin (the peer is up); must not throw. */
  onAuthenticated?: (origin: string) => void;
  /** Told of each error answer (e.g. to count them); must not throw. */
  onError?: (errcode: string, status: number) => void;
  /** Our MLS endpoints (KeyPackage discovery and claims), under `mls.prefix`. */
  mls?: {
    prefix: string;
    onDiscover(origin: string, body: unknown): Promise<JsonObject>;
    onClaim(origin: string, body: unknown): Promise<JsonObject>;
  };
  /** Fields added to our signed `GET /_matrix/key/v2/server` answer (the OHTTP key configurations). */
  serverKeysFields?: Record<string, string>;
  /** Our OHTTP resources (RFC 9458): binary bodies, under `ohttp.prefix`. */
  ohttp?: {
    prefix: string;
    /** Body limit of the gateway and relay resources. */
    maxRequestBytes: number;
    /** `GET …/keys`: `application/ohttp-keys`, no authentication. */
    keys(): Uint8Array;
    /** `POST …/gateway`, X-Matrix over the body's digest: the encapsulated response. */
    gateway(body: Uint8Array): Promise<Uint8Array>;
    /** `POST …/relay/:serverName`, for our own clients (their token in `authorization`). */
    relay(target: string, authorization: string | undefined, body: Uint8Array): Promise<RawAnswer>;
  };
}

/** A matched request: decoded path parameters, the query, and the parsed JSON body (if any). */
interface Call {
  origin: string;
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
  /** The raw body of a binary route. */
  bytes: Uint8Array;
  authorization: string | undefined;
}

interface Route {
  method: "GET" | "PUT" | "POST";
  pattern: RegExp;
  names: string[];
  /** No request authentication (the key endpoint). */
  open?: boolean;
  /** LM-04 marks it "Rate-limited: Yes". */
  limited: boolean;
  /** A binary route: its body's media type and size limit; it answers a RawAnswer. */
  binary?: { mediaType: string; maxBytes: number };
  handle(call: Call, res: ServerResponse): Promise<unknown> | unknown;
}

function compile(template: string): { pattern: RegExp; names: string[] } {
  const names: string[] = [];
  const source = template.replace(/:(\w+)/g, (_m, name: string) => {
    names.push(name);
    return "([^/]+)";
  });
  return { pattern: new RegExp(`^${source}$`), names };
}

/** Reads a request body of at most `limit` bytes; a larger one is refused as soon as it is known to be. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = () =>
    new FederationError(413, "M_TOO_LARGE", `the request body is larger than ${limit} bytes`);
  const declared = Number(req.headers["content-length"] ?? NaN);
  if (declared > limit) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    let settled = false;
    const settle = (err: Error | undefined) => {
      if (settled) return;
      settled = true;
      if (err === undefined) resolve(Buffer.concat(chunks, total));
      else reject(err);
    };
    req.on("data", (chunk: Buffer) => {
      total += chunk.length;
      if (total > limit) settle(tooLarge());
      else chunks.push(chunk);
    });
    req.on("end", () => settle(undefined));
    req.on("error", () =>
      settle(new FederationError(400, "M_NOT_JSON", "the request body could not be read")),
    );
    req.on("close", () => settle(new FederationError(400, "M_NOT_JSON", "the request body ended early")));
  });
}

function decodeParams(route: Route, values: string[]): Record<string, string> {
  const params: Record<string, string> = {};
  route.names.forEach((name, i) => {
    try {
      params[name] = decodeURIComponent(values[i]!);
    } catch {
      throw new FederationError(400, "M_INVALID_PARAM", `${name} is not valid percent-encoded UTF-8`);
    }
  });
  return params;
}

function param(call: Call, name: string, check: (v: string) => boolean, what: string): string {
  const value = call.params[name];
  if (typeof value !== "string" || !check(value)) {
    throw new FederationError(
      400,
      "M_INVALID_PARAM",
      `${name} is not a valid ${what}: ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function txnId(call: Call): string {
  return param(call, "txnId", (v) => v.length > 0 && v.length <= 255, "transaction ID");
}

function queryString(call: Call, name: string): string {
  const values = call.query.getAll(name);
  const value = values.length === 1 ? values[0]! : undefined;
  if (value === undefined || value === "") {
    throw new FederationError(400, "M_MISSING_PARAM", `query parameter ${name} is required`);
  }
  return value;
}

/**
 * The federation listener (LM-04 §Transport), on its own port: request
 * bodies are read raw, checked for type and size, parsed strictly, and
 * authenticated before any handler runs.
 */
export function createFederationApp(options: FederationAppOptions): RequestListener {
  const provider = options.handlers;
  const publisher = new ServerKeysPublisher(options.signingKey, [...options.oldVerifyKeys], {
    ...(options.serverKeysFields === undefined ? {} : { fields: options.serverKeysFields }),
  });
  const v = "/_matrix/federation";
  const routes: Route[] = [];
  const add = (
    method: Route["method"],
    template: string,
    handle: Route["handle"],
    flags: { limited?: boolean; open?: boolean; binary?: Route["binary"] } = {},
  ) =>
    routes.push({
      method,
      ...compile(template),
      limited: flags.limited ?? true,
      handle,
      ...(flags.open ? { open: true } : {}),
      ...(flags.binary === undefined ? {} : { binary: flags.binary }),
    });

  add("GET", "/_matrix/key/v2/server", () => publisher.response(), { open: true, limited: false });
  add(
    "PUT",
    `${v}/v2/send/:txnId`,
    (call) => provider.onSendTransaction(call.origin, txnId(call), call.body),
    { limited: false },
  );
  add("POST", `${v}/v3/invite/:txnId`, (call) => provider.onInvite(call.origin, txnId(call), call.body));
  for (const change of ["join", "leave", "knock"] as Membership[]) {
    add("GET", `${v}/v1/make_${change}/:roomId/:userId`, (call) =>
      provider.onMakeMembership(
        call.origin,
        change,
        param(call, "roomId", isValidRoomId, "room ID"),
        param(call, "userId", isValidUserId, "user ID"),
        call.query.getAll("ver"),
      ),
    );
    add("POST", `${v}/v3/send_${change}/:txnId`, (call) =>
      provider.onSendMembership(call.origin, change, txnId(call), call.body),
    );
  }
  add("GET", `${v}/v2/event/:eventId`, (call) =>
    provider.onGetEvent(call.origin, param(call, "eventId", isValidEventId, "event ID")),
  );
  for (const [path, idsOnly] of [
    ["state", false],
    ["state_ids", true],
  ] as const) {
    add("GET", `${v}/v1/${path}/:roomId`, (call) => {
      const eventId = queryString(call, "event_id");
      if (!isValidEventId(eventId))
        throw new FederationError(400, "M_INVALID_PARAM", "event_id is not a valid event ID");
      return provider.onGetState(
        call.origin,
        param(call, "roomId", isValidRoomId, "room ID"),
        eventId,
        idsOnly,
      );
    });
  }
  add("GET", `${v}/v2/backfill/:roomId`, (call) => {
    const from = queryString(call, "v");
    if (!isValidEventId(from)) throw new FederationError(400, "M_INVALID_PARAM", "v is not a valid event ID");
    const limit = Number(queryString(call, "limit"));
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new FederationError(400, "M_INVALID_PARAM", "limit must be a positive integer");
    }
    return provider.onBackfill(call.origin, param(call, "roomId", isValidRoomId, "room ID"), from, limit);
  });

  const mls = options.mls;
  if (mls !== undefined) {
    add("POST", `${mls.prefix}/key_packages/discover`, (call) => mls.onDiscover(call.origin, call.body));
    add("POST", `${mls.prefix}/key_packages/claim`, (call) => mls.onClaim(call.origin, call.body));
  }

  const ohttp = options.ohttp;
  if (ohttp !== undefined) {
    const binary = { mediaType: MEDIA_OHTTP_REQUEST, maxBytes: ohttp.maxRequestBytes };
    add(
      "GET",
      `${ohttp.prefix}/keys`,
      (): RawAnswer => ({ status: 200, contentType: MEDIA_OHTTP_KEYS, body: ohttp.keys() }),
      { open: true, limited: false, binary },
    );
    // Authenticated as the relaying server, and rate-limited per relay before any HPKE work.
    add(
      "POST",
      `${ohttp.prefix}/gateway`,
      async (call): Promise<RawAnswer> => ({
        status: 200,
        contentType: MEDIA_OHTTP_RESPONSE,
        body: await ohttp.gateway(call.bytes),
        headers: { "Cache-Control": "no-store" },
      }),
      { binary },
    );
    // Our clients' resource, not a federation one: no X-Matrix (their token is checked by the relay).
    add(
      "POST",
      `${ohttp.prefix}/relay/:serverName`,
      (call) => ohttp.relay(call.params.serverName!, call.authorization, call.bytes),
      { open: true, limited: false, binary },
    );
  }

  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const target = req.url ?? "/";
    const queryAt = target.indexOf("?");
    const path = queryAt === -1 ? target : target.slice(0, queryAt);
    const method = req.method ?? "";
    try {
      // LM-04 §Unsupported Endpoints: 404 for unknown paths, 405 for a known path with the wrong method.
      const matching = routes.filter((r) => r.pattern.test(path));
      const route = matching.find((r) => r.method === method);
      if (route === undefined) {
        if (matching.length === 0)
          throw new FederationError(404, "M_UNRECOGNIZED", `unknown endpoint ${method} ${path}`);
        throw new FederationError(405, "M_UNRECOGNIZED", `method ${method} is not allowed on ${path}`);
      }
      // LM-04 §Requests and Responses: POST and PUT carry a JSON object; binary routes their media type.
      const hasBody = method === "POST" || method === "PUT";
      const binary = route.binary;
      if (hasBody && binary !== undefined) {
        if (mediaTypeOf(req.headers["content-type"]) !== binary.mediaType) {
          throw new FederationError(415, "M_INVALID_PARAM", `Content-Type must be ${binary.mediaType}`);
        }
      } else if (hasBody && !/^application\/json\s*(;|$)/i.test(req.headers["content-type"] ?? "")) {
        throw new FederationError(400, "M_NOT_JSON", "Content-Type must be application/json");
      }
      let body: unknown;
      let bytes: Buffer;
      try {
        bytes = await readBody(req, binary?.maxBytes ?? MAX_REQUEST_BYTES);
      } catch (err) {
        // The rest of an oversized body is not read: the connection is closed after the answer.
        res.setHeader("Connection", "close");
        throw err;
      }
      if (binary !== undefined) {
        if (hasBody && bytes.length === 0)
          throw new FederationError(400, "IO.MIMI_APPSERVICE.OHTTP_MALFORMED", "the request body is empty");
        // The signature covers a binary body through its digest.
        if (hasBody) body = binaryBodyContent(bytes);
      } else if (bytes.length === 0) {
        if (hasBody) throw new FederationError(400, "M_NOT_JSON", "the request body is empty");
      } else {
        try {
          body = JSON.parse(UTF8.decode(bytes));
        } catch {
          throw new FederationError(400, "M_NOT_JSON", "the request body is not UTF-8 JSON");
        }
      }
      const params = decodeParams(route, route.pattern.exec(path)!.slice(1));
      const query = new URLSearchParams(queryAt === -1 ? "" : target.slice(queryAt + 1));
      let origin = "";
      if (route.open !== true) {
        origin = await verifyRequest({
          method,
          uri: target,
          headers: req.headersDistinct,
          body,
          ourServerName: options.serverName,
          keyRing: options.keyRing,
        });
        options.onAuthenticated?.(origin);
        if (route.limited) options.admit?.(origin);
      }
      const authorization = req.headers.authorization;
      const answer = await route.handle({ origin, params, query, body, bytes, authorization }, res);
      if (binary !== undefined) sendRaw(res, answer as RawAnswer);
      else sendJson(res, 200, answer ?? {});
    } catch (err) {
      const { status, body } = errorResponse(err);
      if (status >= 500) log.error("request failed", { method, path, error: err });
      options.onError?.(body.errcode, status);
      const headers: Record<string, string> = {};
      const retryAfterMs = (body as { retry_after_ms?: unknown }).retry_after_ms;
      if (typeof retryAfterMs === "number") headers["Retry-After"] = String(Math.ceil(retryAfterMs / 1000));
      // An OHTTP refusal with a problem type (RFC 9458 §5.3) is application/problem+json.
      const contentType = (err as { contentType?: unknown }).contentType;
      if (res.headersSent) res.destroy();
      else sendJson(res, status, body, headers, typeof contentType === "string" ? contentType : undefined);
    }
  };
  return (req, res) => void serve(req, res);
}

function sendRaw(res: ServerResponse, answer: RawAnswer): void {
  res.writeHead(answer.status, {
    ...answer.headers,
    "Content-Type": answer.contentType,
    "Content-Length": answer.body.length,
  });
  res.end(answer.body);
}

/** The media type of a Content-Type value, lower case, without parameters. */
function mediaTypeOf(value: string | undefined): string | undefined {
  return value?.split(";")[0]!.trim().toLowerCase();
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });
