import { MimiError } from "../../errors";
import { createLogger } from "../../logging";
import { errorResponse, FederationError } from "../errors";
import { decodeRequest, encodeResponse, fieldValue, type BinaryRequest, type BinaryResponse } from "./bhttp";
import { OHTTP_PAD_TO } from "./constants";
import {
  encapsulateResponse,
  keyProblem,
  openRequest,
  parseEncapsulatedRequest,
  type GatewayKey,
} from "./encapsulation";
import { OhttpError, PROBLEM_DATE } from "./errors";
import type { ReplayCache } from "./replayCache";

const log = createLogger("federation.ohttp");

export interface GatewayOptions {
  /** Our server name: the only `:authority` inner requests may name. */
  serverName: string;
  keys: { lookup(keyId: number): GatewayKey | undefined };
  /** Serves a decapsulated request (the Target Resource, here the KeyPackage endpoint). */
  inner(request: BinaryRequest): Promise<BinaryResponse>;
  replay: ReplayCache;
  /** When the gateway started: requests dated before it are refused (the replay cache is in memory). */
  startedAt: number;
  now?: () => number;
}

/**
 * The Oblivious Gateway Resource (RFC 9458 §2, §5, §6). One encapsulated request in, one
 * encapsulated response out; nothing else about the request is used, so the gateway needs no
 * requester identity beyond what the request carries (for KeyPackages, the bearer token).
 *
 * Refused unencrypted, with an OhttpError (RFC 9458 §5.2: errors found before decapsulation):
 * a request too short to parse, a key ID not accepted now or an algorithm it does not offer (the
 * `ohttp-key` problem, §5.3), an `enc` already seen (a replay, §6.5), a ciphertext that does not
 * open. Nothing is served then. Everything found after decapsulation is answered inside an
 * Encapsulated Response: binary HTTP that does not parse, a missing Date or one outside the
 * window (the `date` problem with our Date, §6.5.2), another authority, and the target's answers.
 */
export class OhttpGateway {
  private readonly now: () => number;

  constructor(private readonly options: GatewayOptions) {
    this.now = options.now ?? Date.now;
  }

  async handle(body: Uint8Array): Promise<Uint8Array> {
    const parsed = parseEncapsulatedRequest(body);
    const key = this.options.keys.lookup(parsed.keyId);
    if (key === undefined) throw keyProblem("ohttp.key_id", `key ID ${parsed.keyId} is not known`);
    const replay = this.options.replay;
    // Checked before the costly open, and recorded only once the request opened, so a forged
    // request with a copied `enc` cannot make the genuine one count as a replay.
    if (replay.has(parsed.enc)) throw replayed();
    const { request, context } = await openRequest(key, parsed);
    const recorded = replay.add(parsed.enc);
    if (recorded === "replay") throw replayed();
    if (recorded === "full") {
      throw new FederationError(503, "M_LIMIT_EXCEEDED", "the gateway is busy; retry later", {
        retry_after_ms: replay.retryAfterMs(),
      });
    }
    const response = await this.serve(request);
    return encapsulateResponse(context, encodeResponse(response, { padToMultipleOf: OHTTP_PAD_TO }));
  }

  private async serve(bytes: Uint8Array): Promise<BinaryResponse> {
    let request: BinaryRequest;
    try {
      request = decodeRequest(bytes);
    } catch (err) {
      return errorAnswer(err);
    }
    const dateRefusal = this.checkDate(fieldValue(request.headers, "date"));
    if (dateRefusal !== undefined) return dateRefusal;
    if (request.scheme !== "https" || request.authority !== this.options.serverName) {
      return errorAnswer(
        new FederationError(
          421,
          "M_INVALID_PARAM",
          `this gateway serves https://${this.options.serverName}, not ${request.scheme}://${request.authority}`,
        ),
      );
    }
    // RFC 9458 §5.1: a 100-continue expectation cannot be honoured.
    if (fieldValue(request.headers, "expect") !== undefined) {
      return errorAnswer(
        new OhttpError(400, "IO.MIMI_APPSERVICE.OHTTP_MALFORMED", "ohttp.expect", "Expect is not supported"),
      );
    }
    try {
      return await this.options.inner(request);
    } catch (err) {
      // Logged without the request: only the gateway ever sees what is inside.
      if (!(err instanceof MimiError)) log.error("the target resource failed", { error: err });
      return errorAnswer(err);
    }
  }

  /** RFC 9458 §6.5.1: the Date must be within the window, and not before the gateway started. */
  private checkDate(value: string | undefined): BinaryResponse | undefined {
    const now = this.now();
    const date = value === undefined ? NaN : parseHttpDate(value);
    const window = this.options.replay.windowMs;
    const startedSecond = Math.floor(this.options.startedAt / 1000) * 1000;
    if (!Number.isNaN(date) && Math.abs(date - now) <= window && date >= startedSecond) return undefined;
    const why =
      value === undefined
        ? "the request has no Date"
        : Number.isNaN(date)
          ? "the request's Date is not an HTTP date"
          : `the request's Date is not within ${window / 1000} s of the gateway's clock`;
    const body = {
      type: PROBLEM_DATE,
      title: "date field not within acceptable window",
      errcode: "IO.MIMI_APPSERVICE.OHTTP_DATE",
      error: why,
    };
    return {
      informational: [],
      status: 400,
      headers: [
        ["content-type", "application/problem+json"],
        ["date", new Date(now).toUTCString()],
      ],
      content: new Uint8Array(Buffer.from(JSON.stringify(body))),
      trailers: [],
    };
  }
}

function replayed(): OhttpError {
  return new OhttpError(
    400,
    "IO.MIMI_APPSERVICE.OHTTP_REPLAY",
    "ohttp.replay",
    "this Encapsulated Request was already received",
  );
}

/** An error as the inner response: the errcode's status and this project's JSON error body. */
export function errorAnswer(err: unknown): BinaryResponse {
  const { status, body } = errorResponse(err);
  const contentType = err instanceof OhttpError ? err.contentType : "application/json";
  return {
    informational: [],
    status,
    headers: [["content-type", contentType]],
    content: new Uint8Array(Buffer.from(JSON.stringify(body))),
    trailers: [],
  };
}

const IMF_FIXDATE =
  /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$/;

/** RFC 9110 §5.6.7 IMF-fixdate, the form senders must use; NaN for anything else. */
export function parseHttpDate(value: string): number {
  return IMF_FIXDATE.test(value) ? Date.parse(value) : NaN;
}
