import { decodeBase64, encodeUnpaddedBase64 } from "../../events/base64";
import type { JsonObject } from "../../events/types";
import type { FederationClient } from "../../federation/client";
import { FederationError } from "../../federation/errors";
import { isValidUserId, serverNameOf } from "../../identifiers";
import type { Logger } from "../../logging";
import { SUPPORTED_VERSION } from "../clients/suite";
import { MlsError } from "../errors";
import {
  decodeKeyPackageRequestBundle,
  decodeKeyPackageResultBundle,
  encodeKeyPackageRequestBundle,
  type BearerTokens,
  type KeyPackagePool,
  type KeyPackageService,
} from "../keyPackages";
import { SUPPORTED_CIPHERSUITE } from "../tsMls";

/** Our MLS federation endpoints (an extension of LM-04, documented in docs/protocol.md §12). */
export const MLS_FEDERATION_PREFIX = "/_matrix/federation/unstable/io.mimi-appservice.mls";

/**
 * The KeyPackage side of the federation API (McMillion §Key Packages): discovery issues a bearer
 * token for one of our users to the asking server; a claim is a KeyPackageRequestBundle carried as
 * unpadded base64 in JSON, answered by a KeyPackageResponseBundle the same way (the byte-level
 * service below it is what OHTTP will wrap).
 */
export class KeyPackageApi {
  constructor(
    private readonly options: {
      serverName: string;
      pool: KeyPackagePool;
      tokens: BearerTokens;
      service: KeyPackageService;
      log: Logger;
    },
  ) {}

  /** `POST …/key_packages/discover` `{user_id}` -> `{user_id, bearer_token, expires_ts}`. */
  async onDiscover(origin: string, body: unknown): Promise<JsonObject> {
    const userId = field(body, "user_id");
    if (!isValidUserId(userId))
      throw new FederationError(400, "M_INVALID_PARAM", "user_id is not a valid user ID");
    if (serverNameOf(userId) !== this.options.serverName) {
      throw new FederationError(404, "M_NOT_FOUND", `${userId} is not a user of ${this.options.serverName}`);
    }
    // The user's hosted client and its KeyPackages exist from the first discovery on.
    await this.options.pool.replenish(userId);
    const issued = await this.options.tokens.issue(userId, origin);
    return { user_id: userId, bearer_token: issued.token, expires_ts: issued.expiresAt };
  }

  /** `POST …/key_packages/claim` `{bundle}` -> `{bundle}`; each request's refusal is in its result. */
  async onClaim(_origin: string, body: unknown): Promise<JsonObject> {
    const bytes = decodeBase64(field(body, "bundle"));
    if (bytes === undefined) throw new FederationError(400, "M_BAD_JSON", "bundle must be unpadded base64");
    const answer = await this.options.service.handleKeyPackageBundle(new Uint8Array(bytes));
    // The service decoded the bundle whole, so it decodes again here; top those pools back up.
    const users = new Set(decodeKeyPackageRequestBundle(new Uint8Array(bytes)).map((r) => r.userId));
    for (const userId of users) {
      if (!isValidUserId(userId) || serverNameOf(userId) !== this.options.serverName) continue;
      void this.options.pool
        .replenish(userId)
        .catch((error: unknown) => this.options.log.warn("cannot replenish KeyPackages", { userId, error }));
    }
    return { bundle: encodeUnpaddedBase64(answer) };
  }
}

/** Claims KeyPackages of other servers' users (and of our own, without the network). */
export class KeyPackageClient {
  private readonly tokens = new Map<string, { token: string; expiresAt: number }>();

  constructor(
    private readonly options: {
      serverName: string;
      client: FederationClient;
      pool: KeyPackagePool;
      now?: () => number;
    },
  ) {}

  /** One KeyPackage of `userId`'s client, claimed for an Add (RFC 9420 §10, McMillion §Key Packages). */
  async claim(userId: string): Promise<Uint8Array> {
    const server = serverNameOf(userId);
    if (server === this.options.serverName) {
      await this.options.pool.replenish(userId);
      return (await this.options.pool.claim(userId, SUPPORTED_VERSION, SUPPORTED_CIPHERSUITE)).keyPackage;
    }
    const now = (this.options.now ?? Date.now)();
    let token = this.tokens.get(userId);
    if (token === undefined || token.expiresAt <= now) {
      const answer = await this.options.client.request<JsonObject>(
        server,
        "POST",
        `${MLS_FEDERATION_PREFIX}/key_packages/discover`,
        { user_id: userId },
      );
      if (typeof answer.bearer_token !== "string" || typeof answer.expires_ts !== "number") {
        throw new MlsError(
          "M_UNKNOWN",
          "discover.answer",
          `${server} answered discovery without a bearer token`,
        );
      }
      token = { token: answer.bearer_token, expiresAt: answer.expires_ts };
      this.tokens.set(userId, token);
    }
    const bundle = encodeKeyPackageRequestBundle([
      {
        userId,
        bearerToken: new TextEncoder().encode(token.token),
        version: SUPPORTED_VERSION,
        cipherSuite: SUPPORTED_CIPHERSUITE,
      },
    ]);
    const answer = await this.options.client.request<JsonObject>(
      server,
      "POST",
      `${MLS_FEDERATION_PREFIX}/key_packages/claim`,
      { bundle: encodeUnpaddedBase64(bundle) },
    );
    const bytes = typeof answer.bundle === "string" ? decodeBase64(answer.bundle) : undefined;
    if (bytes === undefined) {
      throw new MlsError(
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        "claim.answer",
        `${server} answered a claim without a bundle`,
      );
    }
    const [result] = decodeKeyPackageResultBundle(new Uint8Array(bytes));
    if (result === undefined) {
      throw new MlsError("IO.MIMI_APPSERVICE.MLS_MALFORMED", "claim.answer", `${server} answered no result`);
    }
    if (result.kind === "error") {
      if (result.errcode === "M_FORBIDDEN" || result.errcode === "M_UNKNOWN_TOKEN")
        this.tokens.delete(userId);
      throw new MlsError(
        "M_NOT_FOUND",
        "claim.refused",
        `${server} refused the claim: ${result.errcode}: ${result.error}`,
      );
    }
    return result.keyPackage;
  }
}

function field(body: unknown, name: string): string {
  const value =
    typeof body === "object" && body !== null && !Array.isArray(body)
      ? (body as Record<string, unknown>)[name]
      : undefined;
  if (typeof value !== "string") throw new FederationError(400, "M_BAD_JSON", `${name} must be a string`);
  return value;
}
