import { isErrorCode } from "../../federation/errors";
import type { HttpTransport } from "../../federation/client/http";
import type { OhttpKeys } from "../../federation/keys";
import {
  MAX_ENCAPSULATED_RESPONSE_BYTES,
  MEDIA_OHTTP_REQUEST,
  MEDIA_OHTTP_RESPONSE,
  OHTTP_PAD_TO,
  PROBLEM_DATE,
  PROBLEM_OHTTP_KEY,
  chooseAlgorithm,
  decapsulateResponse,
  decodeResponse,
  encapsulateRequest,
  encodeRequest,
  fieldValue,
  parseHttpDate,
} from "../../federation/ohttp";
import { MlsError } from "../errors";

/** The inner request's media type: a KeyPackageRequestBundle, and the answer's KeyPackageResponseBundle. */
export const KEY_PACKAGE_BUNDLE_MEDIA_TYPE = "application/octet-stream";

/** What the claims need of the key ring: the OHTTP key configurations pinned per server. */
export interface OhttpKeySource {
  ensureOhttpKeys(serverName: string, refresh?: boolean): Promise<void>;
  ohttpKeys(serverName: string): OhttpKeys | undefined;
  lastFetchError(serverName: string): string | undefined;
  lastOhttpError(serverName: string): string | undefined;
}

export interface OhttpClaimsOptions {
  keys: OhttpKeySource;
  /** Our relay's resource for `target` (`…/ohttp/relay/<target>`), and the token it asks of our clients. */
  relay: { url(target: string): URL; token: string };
  transport: HttpTransport;
  /** The inner request's path at the target (the claim endpoint). */
  claimPath: string;
  now?: () => number;
  timeoutMs?: number;
}

/**
 * A hosted client's KeyPackage claims over Oblivious HTTP (RFC 9458; McMillion §Privacy): the
 * KeyPackageRequestBundle goes, as binary HTTP (RFC 9292) encapsulated for the target's gateway,
 * to our own relay over HTTP, which forwards it unread. Only the target's server name is in the
 * clear. One retry each when the gateway refuses the pinned key configuration (it rotated: the
 * configuration is fetched again) or our Date (our clock is corrected by the gateway's, §6.5.2).
 */
export class OhttpClaims {
  private readonly now: () => number;
  /** Per server: how far its gateway's clock is ahead of ours, learnt from a date refusal. */
  private readonly clockOffset = new Map<string, number>();

  constructor(private readonly options: OhttpClaimsOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Whether `server` publishes a key configuration we can use (fetched with its keys if needed). */
  async available(server: string): Promise<boolean> {
    await this.options.keys.ensureOhttpKeys(server);
    return this.usableConfig(server) !== undefined;
  }

  /** Why `available` said no. */
  unavailableReason(server: string): string {
    const keys = this.options.keys;
    const detail = keys.lastOhttpError(server) ?? keys.lastFetchError(server);
    return `${server} publishes no usable OHTTP key configuration${detail === undefined ? "" : ` (${detail})`}`;
  }

  /** Sends one KeyPackageRequestBundle to `server` through our relay; answers its KeyPackageResponseBundle. */
  async claimBundle(server: string, bundle: Uint8Array): Promise<Uint8Array> {
    let keyRetried = false;
    let dateRetried = false;
    while (true) {
      await this.options.keys.ensureOhttpKeys(server);
      const config = this.usableConfig(server);
      if (config === undefined)
        throw new MlsError("M_NOT_FOUND", "ohttp.no_key_config", this.unavailableReason(server));
      const inner = encodeRequest(
        {
          method: "POST",
          scheme: "https",
          authority: server,
          path: this.options.claimPath,
          headers: [
            ["content-type", KEY_PACKAGE_BUNDLE_MEDIA_TYPE],
            ["date", new Date(this.now() + (this.clockOffset.get(server) ?? 0)).toUTCString()],
          ],
          content: bundle,
          trailers: [],
        },
        { padToMultipleOf: OHTTP_PAD_TO },
      );
      const { encapsulated, context } = await encapsulateRequest(config, inner);
      const answer = await this.options.transport(
        this.options.relay.url(server),
        {
          method: "POST",
          headers: {
            "Content-Type": MEDIA_OHTTP_REQUEST,
            Accept: MEDIA_OHTTP_RESPONSE,
            Authorization: `Bearer ${this.options.relay.token}`,
          },
          body: encapsulated,
        },
        {
          destination: server,
          timeoutMs: this.options.timeoutMs ?? 30_000,
          maxBytes: MAX_ENCAPSULATED_RESPONSE_BYTES,
        },
      );
      const contentType = answer.headers.get("content-type")?.split(";")[0]!.trim().toLowerCase();
      if (answer.status !== 200 || contentType !== MEDIA_OHTTP_RESPONSE) {
        const error = jsonError(answer.bytes);
        if (answer.status === 400 && error.type === PROBLEM_OHTTP_KEY && !keyRetried) {
          // RFC 9458 §5.3: the gateway no longer accepts the pinned configuration.
          keyRetried = true;
          await this.options.keys.ensureOhttpKeys(server, true);
          continue;
        }
        throw refusal(server, answer.status, error, "the relay or gateway");
      }
      const response = decodeResponse(decapsulateResponse(context, answer.bytes));
      if (response.status === 200) return response.content;
      const error = jsonError(response.content);
      const gatewayDate = parseHttpDate(fieldValue(response.headers, "date") ?? "");
      if (
        response.status === 400 &&
        error.type === PROBLEM_DATE &&
        !dateRetried &&
        !Number.isNaN(gatewayDate)
      ) {
        dateRetried = true;
        this.clockOffset.set(server, gatewayDate - this.now());
        continue;
      }
      throw refusal(server, response.status, error, "the claim endpoint");
    }
  }

  private usableConfig(server: string) {
    return this.options.keys
      .ohttpKeys(server)
      ?.configs.find((config) => chooseAlgorithm(config) !== undefined);
  }
}

interface ErrorJson {
  type?: string;
  errcode?: string;
  error?: string;
}

function jsonError(bytes: Uint8Array): ErrorJson {
  try {
    const value = JSON.parse(Buffer.from(bytes).toString("utf8")) as unknown;
    return typeof value === "object" && value !== null ? (value as ErrorJson) : {};
  } catch {
    return {};
  }
}

function refusal(server: string, status: number, error: ErrorJson, who: string): MlsError {
  const errcode = error.errcode !== undefined && isErrorCode(error.errcode) ? error.errcode : "M_UNKNOWN";
  return new MlsError(
    errcode,
    "ohttp.refused",
    `${who} of ${server} answered ${status} ${error.errcode ?? ""}${error.error === undefined ? "" : `: ${error.error}`}`,
  );
}
