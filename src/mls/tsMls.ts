/**
 * The one module that imports ts-mls. ts-mls is pinned to exactly 1.6.4 and patched to RFC 9420 by
 * `patches/ts-mls+1.6.4.patch` (applied by `patch-package` on install; see docs/protocol.md).
 *
 * ts-mls is ESM-only. The project compiles to CommonJS, so this module is loaded with require(esm),
 * unflagged from Node 20.19.0 and 22.12.0 (hence `engines.node`).
 *
 * The deep imports below (`ts-mls/<module>.js`) are internal modules of ts-mls, not its public API:
 * they are re-checked whenever the pin moves.
 */
import { getCiphersuiteFromName, getCiphersuiteImpl, type CiphersuiteImpl } from "ts-mls";
import { MimiError } from "../errors";

export * from "ts-mls";
export { defaultClientConfig } from "ts-mls/clientConfig.js";

// Decoding and encoding the wire structures (RFC 9420 §6, §7, §10, §12).
export { decodePublicMessage } from "ts-mls/publicMessage.js";
export { decodeCommit, encodeCommit } from "ts-mls/commit.js";
export { decodeGroupInfo, encodeGroupInfo } from "ts-mls/groupInfo.js";
export { decodeKeyPackage, encodeKeyPackage } from "ts-mls/keyPackage.js";
export { decodeWelcome } from "ts-mls/welcome.js";
export { decodeNode, decodeRatchetTree, encodeNode, encodeRatchetTree } from "ts-mls/ratchetTree.js";
export { decodeGroupContext, encodeGroupContext } from "ts-mls/groupContext.js";
export { decodeExternalInit } from "ts-mls/proposal.js";
export { decodeExternalSendersExtension } from "ts-mls/externalSender.js";
export { decodeExternalPub, encodeExternalPub } from "ts-mls/createCommit.js";
export { decodeUpdatePath, encodeUpdatePath } from "ts-mls/updatePath.js";
export { encodeFramedContent } from "ts-mls/framedContent.js";
// Decrypts a PrivateMessage and says which leaf sent it; the public processPrivateMessage does not.
export { unprotectPrivateMessage } from "ts-mls/messageProtection.js";
export { decodeCredential, encodeCredential } from "ts-mls/credential.js";
export { encodeParentHashInput } from "ts-mls/parentHash.js";
export { encodeTreeHashInput } from "ts-mls/treeHash.js";
export {
  mapDecoder,
  mapDecoders,
  mapDecoderOption,
  mapDecodersOption,
  flatMapDecoder,
  orDecoder,
  succeedDecoder,
  failDecoder,
} from "ts-mls/codec/tlsDecoder.js";
export {
  encode,
  contramapBufferEncoder,
  contramapBufferEncoders,
  type BufferEncoder,
} from "ts-mls/codec/tlsEncoder.js";
export {
  decodeVarLenData,
  decodeVarLenType,
  varLenDataEncoder,
  varLenTypeEncoder,
} from "ts-mls/codec/variableLength.js";
export { decodeUint8, decodeUint16, decodeUint32, decodeUint64 } from "ts-mls/codec/number.js";

// The public steps of commit validation, for a party that holds no member secret (the hub).
export { findSignaturePublicKey, senderFromExtension } from "ts-mls/publicMessage.js";
export { verifyFramedContentSignature } from "ts-mls/framedContent.js";
export { treeHash, treeHashRoot } from "ts-mls/treeHash.js";
export { verifyParentHashes, calculateParentHash } from "ts-mls/parentHash.js";
export { verifyLeafNodeSignature, verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js";
export {
  applyProposals,
  nextEpochContext,
  validateLeafNodeUpdateOrCommit,
  validateLeafNodeCredentialAndKeyUniqueness,
  validateExternalCommitRemove,
  validateRatchetTree,
} from "ts-mls/clientState.js";
export {
  addLeafNode,
  removeLeafNode,
  updateLeafNode,
  findBlankLeafNodeIndexOrExtend,
  filteredDirectPathAndCopathResolution,
} from "ts-mls/ratchetTree.js";
export { applyUpdatePath } from "ts-mls/updatePath.js";
export { filterNewLeaves } from "ts-mls/createCommit.js";
export { createInterimHash, createConfirmedHash } from "ts-mls/transcriptHash.js";
export { verifyGroupInfoSignature, ratchetTreeFromExtension } from "ts-mls/groupInfo.js";
export { verifyKeyPackage, makeKeyPackageRef } from "ts-mls/keyPackage.js";
export { makeProposalRef } from "ts-mls/authenticatedContent.js";

// Signing and framing steps, for building messages by hand (tests, interoperability checks).
export { signLeafNodeKeyPackage } from "ts-mls/leafNode.js";
export { signKeyPackage } from "ts-mls/keyPackage.js";
export { signGroupInfo } from "ts-mls/groupInfo.js";
export {
  createConfirmationTag,
  createContentCommitSignature,
  signFramedContentApplicationOrProposal,
  type FramedContentTBSApplicationOrProposal,
} from "ts-mls/framedContent.js";
export { protectPublicMessage } from "ts-mls/messageProtectionPublic.js";
export { protect } from "ts-mls/messageProtection.js";
export {
  consumeRatchet,
  createSecretTree,
  decodeSecretTree,
  ratchetToGeneration,
  secretTreeEncoder,
} from "ts-mls/secretTree.js";
export { removeLeaves } from "ts-mls/ratchetTree.js";
export { initializeEpoch } from "ts-mls/keySchedule.js";

export {
  MlsError,
  ValidationError,
  CodecError,
  UsageError,
  DependencyError,
  CryptoVerificationError,
  CryptoError,
  InternalError,
} from "ts-mls/mlsError.js";

/**
 * The one cipher suite that loads with the installed packages: the others need optional peer
 * dependencies of ts-mls (`@noble/curves`, `@hpke/chacha20poly1305`, `@hpke/ml-kem`, ...) that are
 * not installed, and ts-mls throws `DependencyError` for them.
 */
export const SUPPORTED_CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519";

/** A cipher suite this provider cannot run. */
export class UnsupportedCiphersuiteError extends MimiError {
  constructor(readonly ciphersuite: string) {
    super("M_INVALID_PARAM", `unsupported MLS cipher suite ${ciphersuite}`);
  }
}

let supportedImpl: Promise<CiphersuiteImpl> | undefined;

/** The implementation of a cipher suite by its RFC 9420 name; refuses every suite but the supported one. */
export function ciphersuite(name: string): Promise<CiphersuiteImpl> {
  if (name !== SUPPORTED_CIPHERSUITE) {
    return Promise.reject(new UnsupportedCiphersuiteError(name));
  }
  supportedImpl ??= getCiphersuiteImpl(getCiphersuiteFromName(SUPPORTED_CIPHERSUITE));
  return supportedImpl;
}
