export { formatAuthorizationHeader, parseAuthorizationHeader, type XMatrixAuth } from "./authorizationHeader";
export {
  binaryBodyContent,
  signRequest,
  verifyRequest,
  type RequestKeySource,
  type RequestToSign,
  type RequestToVerify,
} from "./requestAuth";
