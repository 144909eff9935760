import { timingSafeEqual } from "node:crypto";
import { isValidServerName } from "../../identifiers";
import { FederationError } from "../errors";
import type { RateLimiter } from "../rateLimit";
import { MEDIA_OHTTP_RESPONSE } from "./keyConfig";

/** A binary answer of the federation listener. */
export interface RawAnswer {
  status: number;
  contentType: string;
  body: Uint8Array;
  headers?: Record<string, string>;
}

/** What the relay gets back from a gateway, whatever its status. */
export interface GatewayAnswer {
  status: number;
  contentType: string | undefined;
  body: Uint8Array;
}

export interface RelayOptions {
  serverName: string;
  /** The secret our own clients present (`Authorization: Bearer …`); the relay serves no one else. */
  clientToken: string;
  /** The relay's own rate limit, one bucket per target server. */
  limiter: RateLimiter;
  /** Whether a server can be reached at all (with `.well-known` off: it has a static route). */
  canRoute(serverName: string): boolean;
  /** Sends the Encapsulated Request to the server's gateway; rejects when the server cannot be resolved or reached. */
  forward(target: string, body: Uint8Array): Promise<GatewayAnswer>;
}

/** Content types a gateway's answer may carry through the relay: the encapsulated response, or an error. */
const PASSED_TYPES = new Set([MEDIA_OHTTP_RESPONSE, "application/problem+json", "application/json"]);

/**
 * The Oblivious Relay Resource (RFC 9458 §2, §7.2), for this provider's own clients: it forwards
 * an Encapsulated Request, unread, to the gateway of the server named in the path, and returns
 * the gateway's answer. It learns the target server, the time and the sizes; not the target user,
 * the token or the KeyPackages, which are inside. The forwarded request is built anew: the body,
 * its Content-Type and the relay's own X-Matrix signature, nothing of the client's request (its
 * Authorization included); the answer keeps only the status, Content-Type and body.
 */
export class OhttpRelay {
  private readonly token: Buffer;

  constructor(private readonly options: RelayOptions) {
    this.token = Buffer.from(options.clientToken);
  }

  async handle(target: string, authorization: string | undefined, body: Uint8Array): Promise<RawAnswer> {
    this.authenticate(authorization);
    if (!isValidServerName(target)) {
      throw new FederationError(400, "M_INVALID_PARAM", `${JSON.stringify(target)} is not a server name`);
    }
    if (target === this.options.serverName) {
      throw new FederationError(400, "M_INVALID_PARAM", "the relay does not relay to its own gateway");
    }
    if (!this.options.canRoute(target)) {
      throw new FederationError(404, "M_NOT_FOUND", `no route to ${target}: the relay cannot resolve it`);
    }
    this.options.limiter.check(target);
    let answer: GatewayAnswer;
    try {
      answer = await this.options.forward(target, body);
    } catch (err) {
      // A refusal of ours (no route) keeps its status; anything else is the gateway's failure.
      if (err instanceof FederationError) throw err;
      throw new FederationError(
        502,
        "M_UNKNOWN",
        `the gateway of ${target} failed: ${(err as Error).message}`,
      );
    }
    const contentType = answer.contentType?.split(";")[0]!.trim().toLowerCase();
    if (
      contentType === undefined ||
      !PASSED_TYPES.has(contentType) ||
      (answer.status === 200) !== (contentType === MEDIA_OHTTP_RESPONSE)
    ) {
      throw new FederationError(
        502,
        "M_UNKNOWN",
        `the gateway of ${target} answered ${answer.status} ${contentType ?? "without a Content-Type"}`,
      );
    }
    return { status: answer.status, contentType, body: answer.body };
  }

  private authenticate(authorization: string | undefined): void {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? "");
    if (match === null)
      throw new FederationError(401, "M_MISSING_TOKEN", "the relay serves this provider's own clients only");
    const given = Buffer.from(match[1]!);
    if (given.length !== this.token.length || !timingSafeEqual(given, this.token)) {
      throw new FederationError(401, "M_UNKNOWN_TOKEN", "the relay serves this provider's own clients only");
    }
  }
}
