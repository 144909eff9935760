export { formatAuthorizationHeader, parseAuthorizationHeader, type XMatrixAuth } from "./authorizationHeader";
export {
  signRequest,
  verifyRequest,
  type RequestKeySource,
  type RequestToSign,
  type RequestToVerify,
} from "./requestAuth";
