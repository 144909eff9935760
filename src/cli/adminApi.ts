import { timingSafeEqual } from "node:crypto";
import type { Server } from "node:http";
import express, { type Request, type Response } from "express";
import type { JsonObject } from "../events/types";
import { errorResponse, FederationError, RemoteError } from "../federation/errors";
import type { MimiProvider } from "../federation/provider";
import { createLogger } from "../logging";

const log = createLogger("admin");

/**
 * A small HTTP API for operators and scripts, on its own loopback listener
 * behind a bearer token: create rooms and act for local users, read a room's
 * linear history. The Matrix bridge uses the same provider methods in-process.
 */
export function createAdminApp(provider: MimiProvider, token: string): express.Express {
  const app = express();
  app.disable("x-powered-by");
  app.use(express.json({ limit: "1mb" }));
  const expected = Buffer.from(`Bearer ${token}`);
  app.use((req, res, next) => {
    const given = Buffer.from(req.headers.authorization ?? "");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      res.status(401).json({ errcode: "M_UNAUTHORIZED", error: "missing or wrong admin token" });
      return;
    }
    next();
  });
  const route = (handler: (req: Request) => Promise<unknown>) => async (req: Request, res: Response) => {
    try {
      res.json((await handler(req)) ?? {});
    } catch (err) {
      // A refusal by the room's hub is the answer to the operator's request: pass it on as such.
      const { status, body } =
        err instanceof RemoteError
          ? { status: err.status, body: { errcode: err.remoteErrcode, error: err.message } }
          : errorResponse(err);
      if (status >= 500) log.error("admin request failed", { path: req.path, error: err });
      res.status(status).json(body);
    }
  };
  const field = (req: Request, name: string): string => {
    const value = (req.body as Record<string, unknown> | undefined)?.[name];
    if (typeof value !== "string") throw new FederationError(400, "M_BAD_JSON", `${name} must be a string`);
    return value;
  };
  const base = "/_mimi/admin/v1";
  app.get(
    `${base}/rooms`,
    route(async () => ({ rooms: provider.rooms.roomIds() })),
  );
  app.post(
    `${base}/rooms`,
    route(async (req) => ({ room_id: await provider.createRoom(field(req, "creator")) })),
  );
  app.post(
    `${base}/rooms/:roomId/send`,
    route(async (req) => {
      const body = req.body as { type?: unknown; content?: unknown; state_key?: unknown };
      if (typeof body.type !== "string")
        throw new FederationError(400, "M_BAD_JSON", "type must be a string");
      if (typeof body.content !== "object" || body.content === null) {
        throw new FederationError(400, "M_BAD_JSON", "content must be an object");
      }
      const stateKey = typeof body.state_key === "string" ? body.state_key : undefined;
      const eventId = await provider.sendEvent(
        String(req.params.roomId),
        field(req, "sender"),
        body.type,
        body.content as JsonObject,
        stateKey,
      );
      return { event_id: eventId };
    }),
  );
  app.post(
    `${base}/rooms/:roomId/invite`,
    route(async (req) => ({
      event_id: await provider.invite(String(req.params.roomId), field(req, "sender"), field(req, "target")),
    })),
  );
  for (const change of ["join", "leave", "knock"] as const) {
    app.post(
      `${base}/rooms/:roomId/${change}`,
      route(async (req) => ({
        event_id: await provider.membership(String(req.params.roomId), field(req, "user"), change),
      })),
    );
  }
  for (const [action, participation] of [
    ["kick", "leave"],
    ["ban", "ban"],
  ] as const) {
    app.post(
      `${base}/rooms/:roomId/${action}`,
      route(async (req) => {
        const reason = (req.body as { reason?: unknown }).reason;
        const content: JsonObject = { participation, ...(typeof reason === "string" ? { reason } : {}) };
        const target = field(req, "target");
        return {
          event_id: await provider.sendEvent(
            String(req.params.roomId),
            field(req, "sender"),
            "m.room.user",
            content,
            target,
          ),
        };
      }),
    );
  }
  app.get(
    `${base}/rooms/:roomId/history`,
    route(async (req) => ({
      events: (await provider.history(String(req.params.roomId))).map((e) => ({
        seq: e.seq,
        event_id: e.eventId,
        ...e.event,
      })),
    })),
  );
  app.get(
    `${base}/users/:userId/invites`,
    route(async (req) => ({ invites: await provider.invites.forUser(String(req.params.userId)) })),
  );
  app.get(
    `${base}/status`,
    route(async () => provider.metricsSnapshot()),
  );
  return app;
}

export async function listenAdmin(app: express.Express, host: string, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host, () => resolve(server));
    server.on("error", reject);
  });
}
