import express, { type NextFunction, type Request, type Response } from "express";
import { isValidEventId, isValidRoomId, isValidUserId } from "../../identifiers";
import { createLogger } from "../../logging";
import type { ServerSigningKey } from "../../events/signingKey";
import type { JsonObject } from "../../events/types";
import { requireFederationAuth, type RequestKeySource } from "../auth";
import { errorResponse, FederationError } from "../errors";
import { ServerKeysPublisher, type OldVerifyKey } from "../keys";

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
}

type Handler = (req: Request, res: Response) => Promise<unknown> | unknown;

/** Reads a request body of at most `limit` bytes; a larger one is refused as soon as it is known to be. */
async function readBody(req: Request, limit: number): Promise<Buffer> {
  const tooLarge = () =>
    new FederationError(413, "M_TOO_LARGE", `the request body is larger than ${limit} bytes`);
  const declared = Number(req.headers["content-length"] ?? NaN);
  if (declared > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of req as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > limit) throw tooLarge();
      chunks.push(chunk);
    }
  } catch (err) {
    if (err instanceof FederationError) throw err;
    throw new FederationError(400, "M_NOT_JSON", "the request body could not be read");
  }
  return Buffer.concat(chunks, total);
}

/** Runs a handler and answers its value as JSON, or its error as `{errcode, error}` with the right status. */
function route(handler: Handler) {
  return async (req: Request, res: Response) => {
    try {
      const answer = await handler(req, res);
      res.status(200).json(answer ?? {});
    } catch (err) {
      const { status, body } = errorResponse(err);
      if (status >= 500) log.error("request failed", { method: req.method, path: req.path, error: err });
      res.status(status).json(body);
    }
  };
}

function param(req: Request, name: string, check: (v: string) => boolean, what: string): string {
  const value = req.params[name];
  if (typeof value !== "string" || !check(value)) {
    throw new FederationError(
      400,
      "M_INVALID_PARAM",
      `${name} is not a valid ${what}: ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function txnId(req: Request): string {
  return param(req, "txnId", (v) => v.length > 0 && v.length <= 255, "transaction ID");
}

function queryString(req: Request, name: string): string {
  const value = req.query[name];
  if (typeof value !== "string" || value === "") {
    throw new FederationError(400, "M_MISSING_PARAM", `query parameter ${name} is required`);
  }
  return value;
}

/**
 * The federation listener (LM-04 §Transport), on its own port: request
 * bodies are read raw, checked for type and size, parsed strictly, and
 * authenticated before any handler runs.
 */
export function createFederationApp(options: FederationAppOptions): express.Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("strict routing", true);
  app.set("case sensitive routing", true);
  const provider = options.handlers;
  const verify = requireFederationAuth(options.keyRing, options.serverName);
  // LM-04 marks every endpoint below "Rate-limited: Yes" except `PUT /send` and the key endpoints.
  const authenticated =
    (limited: boolean): express.RequestHandler =>
    (req, res, next) => {
      void verify(req, res, (err?: unknown) => {
        if (err !== undefined) return next(err);
        try {
          if (limited) options.admit?.(res.locals.origin as string);
        } catch (refusal) {
          const { status, body } = errorResponse(refusal);
          res.status(status).json(body);
          return;
        }
        next();
      });
    };
  const auth = authenticated(true);
  const authNotLimited = authenticated(false);

  const publisher = new ServerKeysPublisher(options.signingKey, [...options.oldVerifyKeys]);

  app.use((_req, res, next) => {
    res.setHeader("Content-Type", "application/json");
    next();
  });

  const knownPaths = [
    "/_matrix/key/v2/server",
    `/_matrix/federation/v2/send/:x`,
    `/_matrix/federation/v3/invite/:x`,
    `/_matrix/federation/v1/make_(join|leave|knock)/:x/:x`,
    `/_matrix/federation/v3/send_(join|leave|knock)/:x`,
    `/_matrix/federation/v2/event/:x`,
    `/_matrix/federation/v1/state/:x`,
    `/_matrix/federation/v1/state_ids/:x`,
    `/_matrix/federation/v2/backfill/:x`,
  ].map((template) => new RegExp("^" + template.replace(/:x/g, "[^/]+") + "$"));
  const isKnownPath = (path: string) => knownPaths.some((pattern) => pattern.test(path));

  // LM-04 §Requests and Responses: POST and PUT carry a JSON object (unknown paths get 404 below).
  app.use((req: Request, _res: Response, next: NextFunction) => {
    if ((req.method !== "POST" && req.method !== "PUT") || !isKnownPath(req.path)) return next();
    const type = req.headers["content-type"] ?? "";
    if (!/^application\/json\s*(;|$)/i.test(type)) {
      return next(new FederationError(400, "M_NOT_JSON", "Content-Type must be application/json"));
    }
    next();
  });
  app.use((req: Request, res: Response, next: NextFunction) => {
    if (!isKnownPath(req.path)) {
      req.body = undefined;
      return next();
    }
    readBody(req, MAX_REQUEST_BYTES).then(
      (bytes) => {
        if (bytes.length === 0) {
          req.body = undefined;
          if (req.method === "POST" || req.method === "PUT") {
            return next(new FederationError(400, "M_NOT_JSON", "the request body is empty"));
          }
          return next();
        }
        try {
          req.body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
        } catch {
          return next(new FederationError(400, "M_NOT_JSON", "the request body is not UTF-8 JSON"));
        }
        next();
      },
      (err: unknown) => {
        // The rest of an oversized body is not read: the connection is closed after the answer.
        res.setHeader("Connection", "close");
        next(err);
      },
    );
  });

  app.get("/_matrix/key/v2/server", publisher.handler());

  const v = "/_matrix/federation";
  app.put(
    `${v}/v2/send/:txnId`,
    authNotLimited,
    route((req, res) => provider.onSendTransaction(res.locals.origin as string, txnId(req), req.body)),
  );
  app.post(
    `${v}/v3/invite/:txnId`,
    auth,
    route((req, res) => provider.onInvite(res.locals.origin as string, txnId(req), req.body)),
  );
  for (const change of ["join", "leave", "knock"] as Membership[]) {
    app.get(
      `${v}/v1/make_${change}/:roomId/:userId`,
      auth,
      route((req, res) => {
        const raw = req.query.ver;
        const versions = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).map(String);
        return provider.onMakeMembership(
          res.locals.origin as string,
          change,
          param(req, "roomId", isValidRoomId, "room ID"),
          param(req, "userId", isValidUserId, "user ID"),
          versions,
        );
      }),
    );
    app.post(
      `${v}/v3/send_${change}/:txnId`,
      auth,
      route((req, res) =>
        provider.onSendMembership(res.locals.origin as string, change, txnId(req), req.body),
      ),
    );
  }
  app.get(
    `${v}/v2/event/:eventId`,
    auth,
    route((req, res) =>
      provider.onGetEvent(res.locals.origin as string, param(req, "eventId", isValidEventId, "event ID")),
    ),
  );
  for (const [path, idsOnly] of [
    ["state", false],
    ["state_ids", true],
  ] as const) {
    app.get(
      `${v}/v1/${path}/:roomId`,
      auth,
      route((req, res) => {
        const eventId = queryString(req, "event_id");
        if (!isValidEventId(eventId))
          throw new FederationError(400, "M_INVALID_PARAM", "event_id is not a valid event ID");
        return provider.onGetState(
          res.locals.origin as string,
          param(req, "roomId", isValidRoomId, "room ID"),
          eventId,
          idsOnly,
        );
      }),
    );
  }
  app.get(
    `${v}/v2/backfill/:roomId`,
    auth,
    route((req, res) => {
      const from = queryString(req, "v");
      if (!isValidEventId(from))
        throw new FederationError(400, "M_INVALID_PARAM", "v is not a valid event ID");
      const limit = Number(queryString(req, "limit"));
      if (!Number.isSafeInteger(limit) || limit < 1) {
        throw new FederationError(400, "M_INVALID_PARAM", "limit must be a positive integer");
      }
      return provider.onBackfill(
        res.locals.origin as string,
        param(req, "roomId", isValidRoomId, "room ID"),
        from,
        limit,
      );
    }),
  );

  // LM-04 §Unsupported Endpoints: 404 for unknown paths, 405 for a known path with the wrong method.
  app.use((req: Request, res: Response) => {
    if (isKnownPath(req.path)) {
      res
        .status(405)
        .json({ errcode: "M_UNRECOGNIZED", error: `method ${req.method} is not allowed on ${req.path}` });
    } else {
      res
        .status(404)
        .json({ errcode: "M_UNRECOGNIZED", error: `unknown endpoint ${req.method} ${req.path}` });
    }
  });

  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const failure = err;
    const { status, body } = errorResponse(failure);
    if (status >= 500) log.error("request failed", { method: req.method, path: req.path, error: err });
    res.status(status).json(body);
  });
  return app;
}
