import type { Credential, Extension, FramedContent, FramedContentAuthData } from "ts-mls";
import { decodeMlsMessage } from "ts-mls";
import type { Decoder } from "ts-mls/codec/tlsDecoder.js";
import { mapDecoders } from "ts-mls/codec/tlsDecoder.js";
import { decodeVarLenData, decodeVarLenType } from "ts-mls/codec/variableLength.js";
import { decodeCredential } from "ts-mls/credential.js";
import { encodeFramedContent, encodeFramedContentAuthData } from "ts-mls/framedContent.js";
import { encodePublicMessageInfo } from "ts-mls/publicMessage.js";
import { refuse } from "./errors";

/**
 * Decodes `bytes` as one whole structure. ts-mls decoders return undefined or throw on bad input
 * and ignore trailing bytes; both are refused here as malformed.
 */
export function decodeExactly<T>(decoder: Decoder<T>, bytes: Uint8Array, what: string): T {
  let decoded: [T, number] | undefined;
  try {
    decoded = decoder(bytes, 0);
  } catch {
    decoded = undefined;
  }
  if (decoded === undefined)
    refuse("IO.MIMI_APPSERVICE.MLS_MALFORMED", `${what}.decode`, `the bytes do not decode as ${what}`);
  if (decoded[1] !== bytes.length) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      `${what}.trailing_bytes`,
      `${bytes.length - decoded[1]} bytes follow the ${what}`,
    );
  }
  return decoded[0];
}

/**
 * Decodes and checks that encoding the value again gives the same bytes. RFC 9420 §2.1.2 makes
 * non-minimal length prefixes malformed, and ts-mls accepts them; signatures are checked over
 * re-encodings, so this is what keeps the bytes stored and forwarded equal to the bytes checked.
 */
export function decodeCanonical<T>(
  decoder: Decoder<T>,
  encoder: (value: T) => Uint8Array,
  bytes: Uint8Array,
  what: string,
): T {
  const value = decodeExactly(decoder, bytes, what);
  let again: Uint8Array;
  try {
    again = encoder(value);
  } catch {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      `${what}.decode`,
      `the ${what} holds values that cannot be encoded`,
    );
  }
  if (!bytesEqual(again, bytes)) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      `${what}.canonical`,
      `the ${what} is not in its canonical (minimal) encoding`,
    );
  }
  return value;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/** A map key for a public key. */
export function keyOf(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

export interface ExternalSender {
  signaturePublicKey: Uint8Array;
  credential: Credential;
}

/** RFC 9420 §12.1.8.1: `ExternalSender external_senders<V>`, a vector of {signature_key, credential}. */
const decodeExternalSenders: Decoder<ExternalSender[]> = decodeVarLenType(
  mapDecoders([decodeVarLenData, decodeCredential], (signaturePublicKey, credential) => ({
    signaturePublicKey,
    credential,
  })),
);

/** The group's external senders, from its GroupContext extensions (none without the extension). */
export function externalSendersOf(extensions: Extension[]): ExternalSender[] {
  const extension = extensions.find((e) => e.extensionType === "external_senders");
  if (extension === undefined) return [];
  return decodeExactly(decodeExternalSenders, extension.extensionData, "external_senders");
}

/** The identity a credential presents: the `identity` of a basic credential (LM-04 §Device Credentials). */
export function identityOf(credential: Credential): Uint8Array | undefined {
  return credential.credentialType === "basic" ? credential.identity : undefined;
}

/** A PublicMessage received as an MLSMessage, with the bytes of its FramedContent as received. */
export interface ReceivedPublicMessage {
  content: FramedContent;
  auth: FramedContentAuthData;
  /** `version || wire_format`, the first four bytes of the MLSMessage. */
  header: Uint8Array;
  framedContent: Uint8Array;
}

/**
 * Decodes an MLSMessage that must hold a PublicMessage, checking it is in canonical encoding
 * (see `decodeCanonical`). The FramedContent is encoded once and its bytes are kept: the
 * signature's FramedContentTBS and the confirmed transcript hash input are built from them
 * rather than by encoding the content again (for a commit at 1,000 members, 80 KB of ciphertexts).
 */
export function decodePublicMessageMessage(bytes: Uint8Array, what: string): ReceivedPublicMessage {
  const message = decodeExactly(decodeMlsMessage, bytes, "MLSMessage");
  if (message.wireformat !== "mls_public_message") {
    // LM-04 §MLS Considerations: handshake messages the hub must see are PublicMessages.
    refuse(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      `${what}.wire_format`,
      `a ${what} must be sent as a PublicMessage`,
    );
  }
  const { content, auth } = message.publicMessage;
  let framedContent: Uint8Array;
  let rest: Uint8Array;
  try {
    framedContent = encodeFramedContent(content);
    rest = Buffer.concat([encodeFramedContentAuthData(auth), encodePublicMessageInfo(message.publicMessage)]);
  } catch {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "MLSMessage.decode",
      "the message holds values that cannot be encoded",
    );
  }
  const header = bytes.subarray(0, 4);
  if (
    bytes.length !== 4 + framedContent.length + rest.length ||
    !bytesEqual(bytes.subarray(4, 4 + framedContent.length), framedContent) ||
    !bytesEqual(bytes.subarray(4 + framedContent.length), rest)
  ) {
    refuse(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "MLSMessage.canonical",
      "the message is not in its canonical (minimal) encoding",
    );
  }
  return { content, auth, header, framedContent };
}
