import type { RequestHandler } from "express";
import { verifyRequest, type RequestKeySource } from "../../src/federation/auth/requestAuth";
import { parseJsonBytes } from "../../src/federation/client/http";
import { errorResponse, FederationError } from "../../src/federation/errors";
import type { ServerKeysPublisher } from "../../src/federation/keys";

/**
 * For test servers built on Express: middleware for endpoints that need request authentication. It must
 * run after a body parser: `req.body` is either the JSON parsed from the raw
 * bytes (express.json) or the raw bytes themselves (express.raw), which it
 * parses. On success `res.locals.origin` is the authenticated server name;
 * failures are answered as JSON `{errcode, error}` with their status.
 */
export function requireFederationAuth(keyRing: RequestKeySource, ourServerName: string): RequestHandler {
  return async (req, res, next) => {
    try {
      res.locals.origin = await verifyRequest({
        method: req.method,
        uri: req.originalUrl,
        headers: req.headersDistinct,
        body: bodyJson(req.body),
        ourServerName,
        keyRing,
      });
    } catch (err) {
      const { status, body } = errorResponse(err);
      res.status(status).json(body);
      return;
    }
    next();
  };
}

function bodyJson(body: unknown): unknown {
  if (body === undefined) return undefined;
  if (typeof body !== "string" && !Buffer.isBuffer(body)) return body;
  const bytes = typeof body === "string" ? Buffer.from(body, "utf8") : body;
  if (bytes.length === 0) return undefined;
  const parsed = parseJsonBytes(bytes);
  if (parsed === undefined)
    throw new FederationError(400, "M_NOT_JSON", "the request body is not UTF-8 JSON");
  return parsed.value;
}

/** An Express handler for `GET /_matrix/key/v2/server` serving `publisher`'s keys. */
export function keysHandler(publisher: ServerKeysPublisher): RequestHandler {
  return (_req, res) => {
    res.json(publisher.response());
  };
}
