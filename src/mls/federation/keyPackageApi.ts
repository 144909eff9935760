import { decodeBase64, encodeUnpaddedBase64 } from "../../events/base64";
import type { JsonObject } from "../../events/types";
import type { FederationClient } from "../../federation/client";
import { FederationError } from "../../federation/errors";
import { isValidUserId, serverNameOf } from "../../identifiers";
import type { Logger } from "../../logging";
import { SUPPORTED_VERSION } from "../clients/suite";
import { MlsError } from "../errors";
import { fieldValue, type BinaryRequest, type BinaryResponse } from "../../federation/ohttp";
import {
  decodeKeyPackageRequestBundle,
  decodeKeyPackageResultBundle,
  encodeKeyPackageRequestBundle,
  type BearerTokens,
  type KeyPackagePool,
  type KeyPackageRequest,
  type KeyPackageResult,
  type KeyPackageService,
} from "../keyPackages";
import { SUPPORTED_CIPHERSUITE } from "../tsMls";
import { KEY_PACKAGE_BUNDLE_MEDIA_TYPE, type OhttpClaims } from "./ohttpClaims";

/** Our MLS federation endpoints (an extension of LM-04, documented in docs/protocol.md §12). */
export const MLS_FEDERATION_PREFIX = "/_matrix/federation/unstable/io.mimi-appservice.mls";
/** The claim endpoint: JSON in the clear, or binary inside an OHTTP request to the gateway. */
export const KEY_PACKAGE_CLAIM_PATH = `${MLS_FEDERATION_PREFIX}/key_packages/claim`;

/**
 * The KeyPackage side of the federation API (McMillion §Key Packages): discovery issues a bearer
 * token for one of our users to the asking server; a claim is a KeyPackageRequestBundle carried as
 * unpadded base64 in JSON, answered by a KeyPackageResponseBundle the same way; or the same bundle
 * as binary content of a request that came through the OHTTP gateway (`onOhttpRequest`).
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
    return { bundle: encodeUnpaddedBase64(await this.claimBundle(new Uint8Array(bytes))) };
  }

  /**
   * The OHTTP gateway's target resource: `POST …/key_packages/claim` with a KeyPackageRequestBundle
   * as its binary content, answered by the KeyPackageResponseBundle. What the gateway decapsulated
   * is all there is: no origin, only the bearer tokens inside.
   */
  async onOhttpRequest(request: BinaryRequest): Promise<BinaryResponse> {
    if (request.path !== KEY_PACKAGE_CLAIM_PATH) {
      throw new FederationError(
        404,
        "M_UNRECOGNIZED",
        `the gateway serves only POST ${KEY_PACKAGE_CLAIM_PATH}`,
      );
    }
    if (request.method !== "POST") {
      throw new FederationError(
        405,
        "M_UNRECOGNIZED",
        `method ${request.method} is not allowed on ${request.path}`,
      );
    }
    const contentType = fieldValue(request.headers, "content-type")?.split(";")[0]!.trim().toLowerCase();
    if (contentType !== KEY_PACKAGE_BUNDLE_MEDIA_TYPE) {
      throw new FederationError(
        415,
        "M_INVALID_PARAM",
        `the content must be ${KEY_PACKAGE_BUNDLE_MEDIA_TYPE}`,
      );
    }
    const answer = await this.claimBundle(request.content);
    return {
      informational: [],
      status: 200,
      headers: [["content-type", KEY_PACKAGE_BUNDLE_MEDIA_TYPE]],
      content: answer,
      trailers: [],
    };
  }

  private async claimBundle(bytes: Uint8Array): Promise<Uint8Array> {
    const answer = await this.options.service.handleKeyPackageBundle(bytes);
    // The service decoded the bundle whole, so it decodes again here; top those pools back up.
    const users = new Set(decodeKeyPackageRequestBundle(bytes).map((r) => r.userId));
    for (const userId of users) {
      if (!isValidUserId(userId) || serverNameOf(userId) !== this.options.serverName) continue;
      void this.options.pool
        .replenish(userId)
        .catch((error: unknown) => this.options.log.warn("cannot replenish KeyPackages", { userId, error }));
    }
    return answer;
  }
}

export interface KeyPackageClientOptions {
  serverName: string;
  client: FederationClient;
  pool: KeyPackagePool;
  now?: () => number;
  /** Claims over OHTTP through our relay. Without it, every claim uses the plain endpoint. */
  ohttp?: OhttpClaims;
  /** With `ohttp`: a server that publishes no OHTTP key configuration is asked with the plain endpoint. */
  plainClaims?: boolean;
  /** Claims for several users of one server go in one KeyPackageRequestBundle (McMillion §Privacy). */
  bundleClaims?: boolean;
}

/** Claims KeyPackages of other servers' users (and of our own, without the network). */
export class KeyPackageClient {
  private readonly tokens = new Map<string, { token: string; expiresAt: number }>();

  constructor(private readonly options: KeyPackageClientOptions) {}

  /** Whether `claimMany` puts users of one server in one request. */
  get bundlesClaims(): boolean {
    return this.options.bundleClaims === true;
  }

  /** One KeyPackage of `userId`'s client, claimed for an Add (RFC 9420 §10, McMillion §Key Packages). */
  async claim(userId: string): Promise<Uint8Array> {
    const result = (await this.claimMany([userId])).get(userId)!;
    if (result instanceof Error) throw result;
    return result;
  }

  /**
   * One KeyPackage for each user, or the error that kept it: users of one server in one request
   * with `bundleClaims` (that server then learns they are claimed together), else one request each.
   */
  async claimMany(userIds: readonly string[]): Promise<Map<string, Uint8Array | Error>> {
    const results = new Map<string, Uint8Array | Error>();
    const byServer = new Map<string, string[]>();
    for (const userId of new Set(userIds)) {
      const server = serverNameOf(userId);
      if (server === this.options.serverName) {
        try {
          await this.options.pool.replenish(userId);
          results.set(
            userId,
            (await this.options.pool.claim(userId, SUPPORTED_VERSION, SUPPORTED_CIPHERSUITE)).keyPackage,
          );
        } catch (err) {
          results.set(userId, err as Error);
        }
        continue;
      }
      byServer.set(server, [...(byServer.get(server) ?? []), userId]);
    }
    await Promise.all(
      [...byServer].flatMap(([server, users]) =>
        (this.bundlesClaims ? [users] : users.map((user) => [user])).map((group) =>
          this.claimGroup(server, group, results),
        ),
      ),
    );
    return results;
  }

  private async claimGroup(
    server: string,
    users: string[],
    results: Map<string, Uint8Array | Error>,
  ): Promise<void> {
    const requests: { userId: string; request: KeyPackageRequest }[] = [];
    for (const userId of users) {
      try {
        const token = await this.tokenFor(server, userId);
        requests.push({
          userId,
          request: {
            userId,
            bearerToken: new TextEncoder().encode(token),
            version: SUPPORTED_VERSION,
            cipherSuite: SUPPORTED_CIPHERSUITE,
          },
        });
      } catch (err) {
        results.set(userId, err as Error);
      }
    }
    if (requests.length === 0) return;
    let decoded: KeyPackageResult[];
    try {
      const answer = await this.send(server, encodeKeyPackageRequestBundle(requests.map((r) => r.request)));
      decoded = decodeKeyPackageResultBundle(answer);
      if (decoded.length !== requests.length) {
        throw new MlsError(
          "IO.MIMI_APPSERVICE.MLS_MALFORMED",
          "claim.answer",
          `${server} answered ${decoded.length} results to ${requests.length} requests`,
        );
      }
    } catch (err) {
      for (const { userId } of requests) results.set(userId, err as Error);
      return;
    }
    requests.forEach(({ userId }, i) => {
      const result = decoded[i]!;
      if (result.kind === "key_package") {
        results.set(userId, result.keyPackage);
        return;
      }
      if (result.errcode === "M_FORBIDDEN" || result.errcode === "M_UNKNOWN_TOKEN")
        this.tokens.delete(userId);
      results.set(
        userId,
        new MlsError(
          "M_NOT_FOUND",
          "claim.refused",
          `${server} refused the claim: ${result.errcode}: ${result.error}`,
        ),
      );
    });
  }

  /** The bearer token for `userId`, from discovery (McMillion §Key Packages), cached until it expires. */
  private async tokenFor(server: string, userId: string): Promise<string> {
    const now = (this.options.now ?? Date.now)();
    const cached = this.tokens.get(userId);
    if (cached !== undefined && cached.expiresAt > now) return cached.token;
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
    this.tokens.set(userId, { token: answer.bearer_token, expiresAt: answer.expires_ts });
    return answer.bearer_token;
  }

  /** Over OHTTP when the server publishes a key configuration; in the clear only if allowed. */
  private async send(server: string, bundle: Uint8Array): Promise<Uint8Array> {
    const ohttp = this.options.ohttp;
    if (ohttp !== undefined) {
      if (await ohttp.available(server)) return ohttp.claimBundle(server, bundle);
      if (this.options.plainClaims !== true) {
        throw new MlsError(
          "M_NOT_FOUND",
          "claim.no_ohttp",
          `${ohttp.unavailableReason(server)}, and plain claims are off (mls.plain_claims)`,
        );
      }
    }
    const answer = await this.options.client.request<JsonObject>(server, "POST", KEY_PACKAGE_CLAIM_PATH, {
      bundle: encodeUnpaddedBase64(bundle),
    });
    const bytes = typeof answer.bundle === "string" ? decodeBase64(answer.bundle) : undefined;
    if (bytes === undefined) {
      throw new MlsError(
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        "claim.answer",
        `${server} answered a claim without a bundle`,
      );
    }
    return new Uint8Array(bytes);
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
