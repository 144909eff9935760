export * from "./codec";
export { KeyPackagePool, type ClaimedKeyPackage, type KeyPackagePoolOptions, type PoolStatus } from "./pool";
export { KeyPackageService } from "./service";
export { BearerTokens, tokenId, type BearerTokenOptions, type IssuedToken, type TokenRecord } from "./tokens";
