import { createHash, timingSafeEqual } from "node:crypto";
import { sendJson } from "../util/httpJson";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { MimiError, type ErrorCode } from "../errors";
import type { JsonObject } from "../events/types";
import { httpStatusFor, isErrorCode } from "../federation/errors";
import { IdentifierError, parseRoomId, parseServerName, parseUserId } from "../identifiers";
import { createLogger, type LogLevel } from "../logging";
import type { InviteInfo, ReceivedMessage, RoomInfo, RoomsApi } from "../provider/roomsApiTypes";

const log = createLogger("admin");
const ADMIN_JSON = "application/json; charset=utf-8";

export const ADMIN_BASE_PATH = "/_mimi/admin/v1";
/** Largest request body read: 1 MiB. */
export const MAX_ADMIN_BODY_BYTES = 1024 * 1024;
// LM-04 §Events: an event type MUST NOT exceed 255 characters.
const MAX_EVENT_TYPE_LENGTH = 255;
const TXN_ID = /^[A-Za-z0-9._~-]{1,255}$/;
const HISTORY_MAX_LIMIT = 1000;
const HISTORY_DEFAULT_LIMIT = 100;
const MAX_WAIT_MS = 30_000;
const DEAD_LETTERS_MAX_LIMIT = 1000;
const DEAD_LETTERS_DEFAULT_LIMIT = 100;

/** What operators see of the provider beyond its rooms: counters, and deliveries that gave up. */
export interface OperatorApi {
  status(): Promise<Record<string, unknown>>;
  deadLetters(destination: string | undefined, limit: number): Promise<unknown[]>;
  /** Puts a destination's dead letters back in its queue; answers how many. */
  retryDeadLetters(destination: string): Promise<number>;
  /** The KeyPackage bearer tokens issued for a local user (McMillion §Key Packages). */
  keyPackageTokens(userId: string): Promise<unknown[]>;
  /** Revokes one of them (by ID) or all; answers how many were revoked. */
  revokeKeyPackageTokens(userId: string, tokenId: string | undefined): Promise<number>;
}

export interface AdminDeps {
  rooms: RoomsApi;
  operator: OperatorApi;
  token: string;
  /** Told of each error answer (e.g. to count them); must not throw. */
  onError?: (errcode: string, status: number) => void;
}

/** A request the admin API refuses before calling anything. */
class AdminRequestError extends MimiError {
  constructor(
    readonly status: number,
    errcode: ErrorCode,
    message: string,
    readonly details: { field?: string; rule?: string; headers?: Record<string, string> } = {},
  ) {
    super(errcode, message);
  }
}

const notJson = (message: string) => new AdminRequestError(400, "M_NOT_JSON", message);

const badJson = (field: string, message: string) =>
  new AdminRequestError(400, "M_BAD_JSON", `${field} ${message}`, { field });

const invalidParam = (field: string, message: string, rule?: string) =>
  new AdminRequestError(400, "M_INVALID_PARAM", `${field}: ${message}`, {
    field,
    ...(rule === undefined ? {} : { rule }),
  });

function identifier<T>(field: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof IdentifierError) {
      throw new AdminRequestError(400, "M_INVALID_PARAM", `${field}: ${err.message}`, {
        field,
        rule: err.rule,
      });
    }
    throw err;
  }
}

function hasControlCharacter(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || c === 0xffff) return true;
  }
  return false;
}

type ParamCheck = (value: string, field: string) => string;

const PARAM_CHECKS: Record<string, ParamCheck> = {
  roomId: (v, f) => identifier(f, () => parseRoomId(v)).raw,
  userId: (v, f) => identifier(f, () => parseUserId(v)).raw,
  destination: (v, f) => identifier(f, () => parseServerName(v)).raw,
  txnId: (v, f) => {
    if (!TXN_ID.test(v)) {
      throw invalidParam(
        f,
        'must be 1 to 255 characters from A-Z, a-z, 0-9, ".", "_", "~" and "-"',
        "txn_id.format",
      );
    }
    return v;
  },
  eventType: (v, f) => {
    if (v.length > MAX_EVENT_TYPE_LENGTH) {
      throw invalidParam(f, `must be at most ${MAX_EVENT_TYPE_LENGTH} characters`, "event_type.too_long");
    }
    if (hasControlCharacter(v)) {
      throw invalidParam(f, "must not hold control characters or U+FFFF", "event_type.chars");
    }
    return v;
  },
};

/** Query parameters: a repeated one has every value. */
type Query = Record<string, string | string[]>;

/** A parsed request: path parameters decoded and checked, the body a JSON object ({} without one). */
interface Call {
  params: Record<string, string>;
  query: Query;
  body: Record<string, unknown>;
}

interface Route {
  method: "GET" | "PUT" | "POST";
  pattern: RegExp;
  names: string[];
  /** The top-level fields the JSON body may have; absent for routes without a body. */
  fields?: readonly string[];
  handle(call: Call): Promise<unknown> | unknown;
}

function compile(template: string): { pattern: RegExp; names: string[] } {
  const names: string[] = [];
  const source = template.replace(/:(\w+)/g, (_m, name: string) => {
    names.push(name);
    return "([^/]+)";
  });
  return { pattern: new RegExp(`^${ADMIN_BASE_PATH}${source}$`), names };
}

function requiredString(body: Record<string, unknown>, field: string): string {
  const value = body[field];
  if (value === undefined) throw badJson(field, "is required");
  if (typeof value !== "string") throw badJson(field, "must be a string");
  return value;
}

function optionalString(body: Record<string, unknown>, field: string): string | undefined {
  const value = body[field];
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw badJson(field, "must be a string");
  return value;
}

function userField(body: Record<string, unknown>, field: string): string {
  const value = requiredString(body, field);
  return identifier(field, () => parseUserId(value)).raw;
}

function objectField(body: Record<string, unknown>, field: string): JsonObject {
  const value = body[field];
  if (value === undefined) throw badJson(field, "is required");
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw badJson(field, "must be a JSON object");
  }
  return value as JsonObject;
}

function integerQuery(
  query: Query,
  field: string,
  range: { min: number; max: number; fallback: number },
): number {
  const raw = query[field];
  if (raw === undefined) return range.fallback;
  if (typeof raw !== "string") throw invalidParam(field, "must be given at most once");
  if (!/^(0|[1-9][0-9]{0,14})$/.test(raw) || Number(raw) < range.min || Number(raw) > range.max) {
    throw invalidParam(field, `must be an integer from ${range.min} to ${range.max}`);
  }
  return Number(raw);
}

function optionalServerQuery(query: Query, field: string): string | undefined {
  const raw = query[field];
  if (raw === undefined) return undefined;
  if (typeof raw !== "string") throw invalidParam(field, "must be given at most once");
  return identifier(field, () => parseServerName(raw)).raw;
}

/** `from`, `limit` and `wait_ms` of a paged, long-polled read. */
function pageQuery(query: Query): { fromSeq: number; limit: number; waitMs: number } {
  return {
    fromSeq: integerQuery(query, "from", { min: 1, max: Number.MAX_SAFE_INTEGER, fallback: 1 }),
    limit: integerQuery(query, "limit", { min: 1, max: HISTORY_MAX_LIMIT, fallback: HISTORY_DEFAULT_LIMIT }),
    waitMs: integerQuery(query, "wait_ms", { min: 0, max: MAX_WAIT_MS, fallback: 0 }),
  };
}

function userQuery(query: Query, field: string): string {
  const raw = query[field];
  if (raw === undefined) throw invalidParam(field, "is required");
  if (typeof raw !== "string") throw invalidParam(field, "must be given at most once");
  return identifier(field, () => parseUserId(raw)).raw;
}

function messageJson(message: ReceivedMessage): Record<string, unknown> {
  return {
    seq: message.seq,
    event_id: message.eventId,
    sender: message.sender,
    epoch: message.epoch,
    status: message.status,
    ...(message.type === undefined ? {} : { type: message.type }),
    ...(message.content === undefined ? {} : { content: message.content }),
    ...(message.reason === undefined ? {} : { reason: message.reason }),
  };
}

function withReason<T extends object>(request: T, reason: string | undefined): T & { reason?: string } {
  return reason === undefined ? request : { ...request, reason };
}

function roomInfoJson(info: RoomInfo): Record<string, unknown> {
  return {
    room_id: info.roomId,
    room_version: info.roomVersion,
    hub_server: info.hubServer,
    role: info.role,
    head_seq: info.headSeq,
    head_event_id: info.headEventId,
    participation: info.participation,
    state: info.state.map((s) => ({
      type: s.type,
      state_key: s.stateKey,
      sender: s.sender,
      content: s.content,
    })),
  };
}

function inviteJson(invite: InviteInfo): Record<string, unknown> {
  return {
    room_id: invite.roomId,
    user_id: invite.userId,
    inviter: invite.inviter,
    hub_server: invite.hubServer,
    room_version: invite.roomVersion,
    stripped_state: invite.strippedState,
    received_ts: invite.receivedTs,
  };
}

function routes(rooms: RoomsApi, operator: OperatorApi): Route[] {
  const table: (Omit<Route, "pattern" | "names"> & { path: string })[] = [
    {
      method: "PUT",
      path: "/createRoom/:txnId",
      fields: ["creator", "room_localpart"],
      handle: async ({ params, body }) => {
        const creator = userField(body, "creator");
        const roomLocalpart = optionalString(body, "room_localpart");
        const { roomId } = await rooms.createRoom({
          creator,
          txnId: params.txnId!,
          ...(roomLocalpart === undefined ? {} : { roomLocalpart }),
        });
        return { room_id: roomId };
      },
    },
    {
      method: "PUT",
      path: "/rooms/:roomId/send/:eventType/:txnId",
      fields: ["sender", "content", "state_key"],
      handle: async ({ params, body }) => {
        const sender = userField(body, "sender");
        const content = objectField(body, "content");
        const stateKey = optionalString(body, "state_key");
        const { eventId } = await rooms.send({
          roomId: params.roomId!,
          sender,
          type: params.eventType!,
          content,
          ...(stateKey === undefined ? {} : { stateKey }),
          txnId: params.txnId!,
        });
        return { event_id: eventId };
      },
    },
    {
      method: "PUT",
      path: "/rooms/:roomId/messages/:txnId",
      fields: ["sender", "type", "content"],
      handle: async ({ params, body }) => {
        const { eventId } = await rooms.sendMessage({
          roomId: params.roomId!,
          sender: userField(body, "sender"),
          type: optionalString(body, "type") ?? "m.room.message",
          content: objectField(body, "content"),
          txnId: params.txnId!,
        });
        return { event_id: eventId };
      },
    },
    {
      method: "PUT",
      path: "/rooms/:roomId/invite/:txnId",
      fields: ["sender", "target", "reason"],
      handle: async ({ params, body }) => {
        const request = {
          roomId: params.roomId!,
          sender: userField(body, "sender"),
          target: userField(body, "target"),
          txnId: params.txnId!,
        };
        const { eventId } = await rooms.invite(withReason(request, optionalString(body, "reason")));
        return { event_id: eventId };
      },
    },
    ...(["join", "leave", "knock"] as const).map((change) => ({
      method: "PUT" as const,
      path: `/rooms/:roomId/${change}/:txnId`,
      fields: ["user", "reason"],
      handle: async ({ params, body }: Call) => {
        const request = {
          roomId: params.roomId!,
          user: userField(body, "user"),
          change,
          txnId: params.txnId!,
        };
        const reason = optionalString(body, "reason");
        const { eventId } = await rooms.changeOwnParticipation(withReason(request, reason));
        return { event_id: eventId };
      },
    })),
    ...(
      [
        ["kick", "leave"],
        ["ban", "ban"],
      ] as const
    ).map(([action, change]) => ({
      method: "PUT" as const,
      path: `/rooms/:roomId/${action}/:txnId`,
      fields: ["sender", "target", "reason"],
      handle: async ({ params, body }: Call) => {
        const request = {
          roomId: params.roomId!,
          sender: userField(body, "sender"),
          target: userField(body, "target"),
          change,
          txnId: params.txnId!,
        };
        const reason = optionalString(body, "reason");
        const { eventId } = await rooms.changeParticipationOf(withReason(request, reason));
        return { event_id: eventId };
      },
    })),
    { method: "GET", path: "/rooms", handle: () => ({ rooms: rooms.listRooms() }) },
    {
      method: "GET",
      path: "/rooms/:roomId",
      handle: ({ params }) => {
        const info = rooms.roomInfo(params.roomId!);
        if (info === undefined) {
          throw new AdminRequestError(404, "M_NOT_FOUND", `room ${params.roomId} is not known here`);
        }
        return roomInfoJson(info);
      },
    },
    {
      method: "GET",
      path: "/rooms/:roomId/history",
      handle: async ({ params, query }) => {
        const page = pageQuery(query);
        const { events, nextSeq } = await rooms.history(params.roomId!, page);
        return {
          events: events.map((e) => ({ seq: e.seq, event_id: e.eventId, ...e.event })),
          ...(nextSeq === undefined ? {} : { next_seq: nextSeq }),
        };
      },
    },
    {
      method: "GET",
      path: "/rooms/:roomId/messages",
      handle: async ({ params, query }) => {
        const user = userQuery(query, "user");
        const page = pageQuery(query);
        const messages = await rooms.messages(params.roomId!, user, page);
        return { messages: messages.map(messageJson) };
      },
    },
    {
      method: "GET",
      path: "/rooms/:roomId/mls",
      handle: async ({ params, query }) => {
        const view = await rooms.clientGroup(params.roomId!, userQuery(query, "user"));
        if (view === undefined) {
          throw new AdminRequestError(404, "M_NOT_FOUND", `the user has no MLS client in ${params.roomId}`);
        }
        return { epoch: view.epoch, members: view.members, active: view.active, tree_hash: view.treeHash };
      },
    },
    {
      method: "GET",
      path: "/users/:userId/invites",
      handle: async ({ params }) => ({ invites: (await rooms.listInvites(params.userId!)).map(inviteJson) }),
    },
    { method: "GET", path: "/status", handle: () => operator.status() },
    {
      method: "GET",
      path: "/dead_letters",
      handle: async ({ query }) => {
        const destination = optionalServerQuery(query, "destination");
        const limit = integerQuery(query, "limit", {
          min: 1,
          max: DEAD_LETTERS_MAX_LIMIT,
          fallback: DEAD_LETTERS_DEFAULT_LIMIT,
        });
        return { dead_letters: await operator.deadLetters(destination, limit) };
      },
    },
    {
      method: "GET",
      path: "/users/:userId/key_package_tokens",
      handle: async ({ params }) => ({
        tokens: await operator.keyPackageTokens(identifier("userId", () => parseUserId(params.userId!)).raw),
      }),
    },
    {
      method: "POST",
      path: "/users/:userId/key_package_tokens/revoke",
      fields: ["token_id"],
      handle: async ({ params, body }) => ({
        revoked: await operator.revokeKeyPackageTokens(
          identifier("userId", () => parseUserId(params.userId!)).raw,
          optionalString(body, "token_id"),
        ),
      }),
    },
    {
      method: "POST",
      path: "/dead_letters/:destination/retry",
      handle: async ({ params }) => ({ requeued: await operator.retryDeadLetters(params.destination!) }),
    },
  ];
  return table.map(({ path, ...route }) => ({ ...route, ...compile(path) }));
}

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** Matrix's client-server API: no token is `M_MISSING_TOKEN`, a wrong one `M_UNKNOWN_TOKEN`, both 401. */
function checkToken(header: string | undefined, expectedDigest: Buffer): void {
  const match = header === undefined ? null : /^Bearer +(\S+) *$/i.exec(header);
  if (match === null) {
    throw new AdminRequestError(
      401,
      "M_MISSING_TOKEN",
      "an Authorization: Bearer <token> header is required",
    );
  }
  if (!timingSafeEqual(sha256(match[1]!), expectedDigest)) {
    throw new AdminRequestError(401, "M_UNKNOWN_TOKEN", "the admin token is wrong");
  }
}

function match(all: Route[], method: string, path: string): { route: Route; values: string[] } {
  const allowed: string[] = [];
  for (const route of all) {
    const found = route.pattern.exec(path);
    if (found === null) continue;
    if (route.method === method) return { route, values: found.slice(1) };
    allowed.push(route.method);
  }
  if (allowed.length === 0) {
    throw new AdminRequestError(404, "M_UNRECOGNIZED", `unknown endpoint ${method} ${path}`);
  }
  throw new AdminRequestError(405, "M_UNRECOGNIZED", `method ${method} is not allowed on ${path}`, {
    headers: { Allow: allowed.join(", ") },
  });
}

function decodeParams(route: Route, values: string[]): Record<string, string> {
  const params: Record<string, string> = {};
  route.names.forEach((name, i) => {
    let value: string;
    try {
      value = decodeURIComponent(values[i]!);
    } catch {
      throw invalidParam(name, "is not valid percent-encoded UTF-8");
    }
    params[name] = PARAM_CHECKS[name]!(value, name);
  });
  return params;
}

function readRaw(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const settle = (err: Error | undefined) => {
      if (settled) return;
      settled = true;
      req.off("data", onData).off("end", onEnd).off("error", onError).off("close", onClose);
      if (err === undefined) {
        resolve(Buffer.concat(chunks, size));
      } else {
        // Whatever is left is read and dropped, so the connection can carry the answer.
        req.resume();
        reject(err);
      }
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) settle(tooLarge());
      else chunks.push(chunk);
    };
    const onEnd = () => settle(undefined);
    const onError = () => settle(notJson("the request body could not be read"));
    const onClose = () => settle(notJson("the request body ended early"));
    req.on("data", onData).on("end", onEnd).on("error", onError).on("close", onClose);
  });
}

const tooLarge = () =>
  new AdminRequestError(413, "M_TOO_LARGE", `the request body is larger than ${MAX_ADMIN_BODY_BYTES} bytes`);

async function readJsonObject(
  req: IncomingMessage,
  fields: readonly string[],
): Promise<Record<string, unknown>> {
  const type = req.headers["content-type"];
  if (type === undefined) throw notJson("Content-Type must be application/json (none was given)");
  const [mediaType, ...parameters] = type.split(";").map((part) => part.trim().toLowerCase());
  if (mediaType !== "application/json") {
    throw notJson(`Content-Type must be application/json, not ${JSON.stringify(type)}`);
  }
  const charset = parameters
    .find((p) => p.startsWith("charset="))
    ?.slice("charset=".length)
    .replace(/^"(.*)"$/, "$1");
  if (charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
    throw notJson(`the request body must be UTF-8, not ${JSON.stringify(charset)}`);
  }
  const encoding = req.headers["content-encoding"];
  if (encoding !== undefined && encoding.toLowerCase() !== "identity") {
    throw notJson(`Content-Encoding ${JSON.stringify(encoding)} is not supported`);
  }
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > MAX_ADMIN_BODY_BYTES) throw tooLarge();
  const raw = await readRaw(req, MAX_ADMIN_BODY_BYTES);
  if (raw.length === 0) throw notJson("the request body is empty; a JSON object is required");
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch {
    throw notJson("the request body is not UTF-8 JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new AdminRequestError(400, "M_BAD_JSON", "the request body must be a JSON object");
  }
  const body = value as Record<string, unknown>;
  for (const key of Object.keys(body)) {
    if (!fields.includes(key))
      throw badJson(key, `is not a field of this request (allowed: ${fields.join(", ")})`);
  }
  return body;
}

interface Answer {
  status: number;
  body: Record<string, unknown>;
  headers: Record<string, string>;
}

function answerFor(err: unknown): Answer {
  if (err instanceof AdminRequestError) {
    const { field, rule, headers = {} } = err.details;
    const body: Record<string, unknown> = { errcode: err.errcode, error: err.message };
    if (field !== undefined) body.field = field;
    if (rule !== undefined) body.rule = rule;
    return { status: err.status, body, headers };
  }
  if (err instanceof MimiError && isErrorCode(err.errcode)) {
    const body: Record<string, unknown> = { errcode: err.errcode, error: err.message };
    const headers: Record<string, string> = {};
    const { rule, retryAfterMs } = err as { rule?: unknown; retryAfterMs?: unknown };
    if (typeof rule === "string") body.rule = rule;
    if (
      err.errcode === "M_LIMIT_EXCEEDED" &&
      Number.isSafeInteger(retryAfterMs) &&
      (retryAfterMs as number) >= 0
    ) {
      body.retry_after_ms = retryAfterMs;
      headers["Retry-After"] = String(Math.ceil((retryAfterMs as number) / 1000));
    }
    return { status: httpStatusFor(err.errcode), body, headers };
  }
  return { status: 500, body: { errcode: "M_UNKNOWN", error: "internal error" }, headers: {} };
}

function logLevelFor(status: number): LogLevel {
  if (status >= 500) return "error";
  return status === 401 ? "warn" : "info";
}

/** Answers `err`; returns the status and errcode it answered. */
function sendError(
  req: IncomingMessage,
  path: string,
  res: ServerResponse,
  err: unknown,
): { status: number; errcode: string } {
  const { status, body, headers } = answerFor(err);
  log[logLevelFor(status)](status >= 500 ? "admin request failed" : "admin request refused", {
    method: req.method,
    path,
    status,
    errcode: body.errcode,
    error: err,
    ...(err instanceof MimiError || !(err instanceof Error) ? {} : { stack: err.stack }),
  });
  const answered = { status, errcode: String(body.errcode) };
  if (res.headersSent) {
    res.destroy();
    return answered;
  }
  sendJson(res, status, body, headers, ADMIN_JSON);
  return answered;
}

function parseQuery(search: string): Query {
  const query: Query = {};
  for (const [name, value] of new URLSearchParams(search)) {
    const seen = query[name];
    query[name] = seen === undefined ? value : Array.isArray(seen) ? [...seen, value] : [seen, value];
  }
  return query;
}

/** A request listener for node:http. */
export type AdminApp = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * A small HTTP API for operators and scripts, on its own loopback listener
 * behind a bearer token, over the rooms API (docs/admin-api.md). The token is
 * checked before the body is read; the body is parsed strictly; nothing is
 * called until the whole request has been checked.
 */
export function createAdminApp(deps: AdminDeps): AdminApp {
  if (deps.token === "") throw new Error("the admin token must not be empty");
  const expectedDigest = sha256(deps.token);
  const table = routes(deps.rooms, deps.operator);
  const serve = async (req: IncomingMessage, res: ServerResponse) => {
    const target = req.url ?? "/";
    const queryAt = target.indexOf("?");
    const path = queryAt === -1 ? target : target.slice(0, queryAt);
    try {
      checkToken(req.headers.authorization, expectedDigest);
      const { route, values } = match(table, req.method ?? "", path);
      const params = decodeParams(route, values);
      const query = queryAt === -1 ? {} : parseQuery(target.slice(queryAt + 1));
      const body = route.fields === undefined ? {} : await readJsonObject(req, route.fields);
      const answer = await route.handle({ params, query, body });
      sendJson(res, 200, answer, {}, ADMIN_JSON);
    } catch (err) {
      const answered = sendError(req, path, res, err);
      deps.onError?.(answered.errcode, answered.status);
    }
  };
  return (req, res) => void serve(req, res);
}

export async function listenAdmin(app: AdminApp, host: string, port: number): Promise<Server> {
  const server = createServer(app);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve(server);
    });
  });
}
