import Ajv, { type ErrorObject, type ValidateFunction } from "ajv";
import { MimiError } from "../errors";
import type { JsonObject } from "../events/types";

/** A peer answered 2xx with a body that does not have the shape the protocol gives it. */
export class PeerAnswerError extends MimiError {
  constructor(
    readonly destination: string,
    readonly what: string,
    reason: string,
  ) {
    super("M_BAD_JSON", `${destination} answered ${what} with an invalid body: ${reason}`);
  }
}

const ajv = new Ajv({ allErrors: false, strict: true, strictRequired: false });

const errorResult = {
  type: "object",
  required: ["errcode"],
  properties: { errcode: { type: "string", maxLength: 255 }, error: { type: "string" } },
} as const;

const pduResults = {
  type: "object",
  maxProperties: 100,
  additionalProperties: {
    type: "object",
    properties: {
      event_id: { type: "string", maxLength: 255 },
      errcode: { type: "string", maxLength: 255 },
      error: { type: "string" },
    },
  },
} as const;

export interface SendAnswer {
  pdus?: Record<string, { event_id?: string; errcode?: string; error?: string }>;
  failed_pdus?: Record<string, { errcode?: string; error?: string }>;
}

/** LM-04 §`PUT /send/:txnId`: `failed_pdus` (and our `pdus`) map event IDs to results. */
export const SEND_ANSWER = ajv.compile<SendAnswer>({
  type: "object",
  properties: { pdus: pduResults, failed_pdus: pduResults },
});

const eventObject = { type: "object", required: ["room_id", "type", "sender"] } as const;

export interface MakeAnswer {
  event: JsonObject;
  room_version: string;
}

/** LM-04 §make_join / make_leave / make_knock: a template and the room version. */
export const MAKE_ANSWER = ajv.compile<MakeAnswer>({
  type: "object",
  required: ["event", "room_version"],
  properties: {
    event: {
      type: "object",
      required: ["room_id", "type", "sender", "state_key", "content"],
      properties: { content: { type: "object" } },
    },
    room_version: { type: "string", minLength: 1, maxLength: 255 },
  },
});

export interface SendJoinAnswer {
  event: JsonObject;
  state: JsonObject[];
  auth_chain: JsonObject[];
}

export const SEND_JOIN_ANSWER = ajv.compile<SendJoinAnswer>({
  type: "object",
  required: ["event", "state", "auth_chain"],
  properties: {
    event: eventObject,
    state: { type: "array", items: { type: "object" } },
    auth_chain: { type: "array", items: { type: "object" } },
  },
});

export interface EventIdAnswer {
  event_id?: string;
}

/** send_leave, relayed invites: `{}` or `{event_id}`. */
export const EVENT_ID_ANSWER = ajv.compile<EventIdAnswer>({
  type: "object",
  properties: { event_id: { type: "string", minLength: 1, maxLength: 255 } },
});

export interface BackfillAnswer {
  pdus: JsonObject[];
}

export const BACKFILL_ANSWER = ajv.compile<BackfillAnswer>({
  type: "object",
  required: ["pdus"],
  properties: { pdus: { type: "array", items: { type: "object" } } },
});

export const ERROR_RESULT = ajv.compile<{ errcode: string; error?: string }>(errorResult);

function describe(errors: ErrorObject[] | null | undefined): string {
  const first = errors?.[0];
  if (first === undefined) return "unexpected shape";
  const where = first.instancePath === "" ? "the body" : first.instancePath.slice(1).replace(/\//g, ".");
  return `${where} ${first.message ?? "is invalid"}`;
}

/** Returns the answer if it fits the schema, else throws a PeerAnswerError naming the field. */
export function checkAnswer<T>(
  validate: ValidateFunction<T>,
  value: unknown,
  destination: string,
  what: string,
): T {
  if (!validate(value)) throw new PeerAnswerError(destination, what, describe(validate.errors));
  return value;
}
