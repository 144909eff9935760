import { isValidUserId } from "../../identifiers";
import {
  defaultClientConfig,
  type AuthenticationService,
  type ClientConfig,
  type Credential,
} from "../tsMls";

/**
 * Whether a user may have a client in a group: the room layer answers true only when the room's
 * participation allows that user (McMillion §Policy Enforcement; LM-04 §Updating Group State).
 */
export type CredentialPolicy = (userId: string, groupId: Uint8Array) => boolean;

const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The MIMI user ID a credential names, or undefined: LM-04 §Device Credentials uses basic
 * credentials (RFC 9420 §5.3.1), and ours carry the user ID in UTF-8 as their identity.
 */
export function credentialUserId(credential: Credential): string | undefined {
  if (credential.credentialType !== "basic") return undefined;
  let text: string;
  try {
    text = fromUtf8.decode(credential.identity);
  } catch {
    return undefined;
  }
  return isValidUserId(text) ? text : undefined;
}

/**
 * The authentication service ts-mls asks about every credential it meets (RFC 9420 §5.3.1): leaves
 * of a tree joined from a Welcome or a GroupInfo, added KeyPackages, committers' leaf nodes,
 * external senders. It accepts a basic credential naming a valid MIMI user ID that the policy
 * allows in this group, and nothing else. Each refusal is recorded so the caller can say why.
 */
export class MimiAuthenticationService implements AuthenticationService {
  private readonly refused: string[] = [];

  constructor(
    private readonly groupId: Uint8Array,
    private readonly policy: CredentialPolicy,
  ) {}

  /** Why credentials were refused since this service was made, oldest first. */
  get refusals(): readonly string[] {
    return this.refused;
  }

  validateCredential(credential: Credential): Promise<boolean> {
    const refusal = this.refusalOf(credential);
    if (refusal !== undefined) this.refused.push(refusal);
    return Promise.resolve(refusal === undefined);
  }

  private refusalOf(credential: Credential): string | undefined {
    if (credential.credentialType !== "basic") {
      return `a ${credential.credentialType} credential (only basic credentials are accepted)`;
    }
    const userId = credentialUserId(credential);
    if (userId === undefined) return "a basic credential whose identity is not a MIMI user ID";
    if (!this.policy(userId, this.groupId)) return `${userId}, whom the room does not allow in the group`;
    return undefined;
  }
}

/** A ts-mls client configuration with the library's defaults and our authentication service. */
export function clientConfigFor(
  groupId: Uint8Array,
  policy: CredentialPolicy,
): { config: ClientConfig; auth: MimiAuthenticationService } {
  const auth = new MimiAuthenticationService(groupId, policy);
  return { config: { ...defaultClientConfig, authService: auth }, auth };
}
