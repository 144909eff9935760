export * from "./hostedClient";
export {
  clientConfigFor,
  credentialUserId,
  MimiAuthenticationService,
  type CredentialPolicy,
} from "./authService";
export {
  HOSTED_CAPABILITIES,
  LAST_RESORT_EXTENSION,
  basicCredential,
  ensureClientIdentity,
  generateClientKeyPackage,
  loadClientIdentity,
  newClientIdentity,
  clientIdentityOps,
  requireClientIdentity,
  type ClientIdentity,
} from "./identity";
export { SUPPORTED_ALGORITHM, SUPPORTED_VERSION, loadSuite, suiteForAlgorithm } from "./suite";
