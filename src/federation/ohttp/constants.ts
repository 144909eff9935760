/** Our OHTTP resources (an extension of LM-04; docs/protocol.md §12, KeyPackages over OHTTP). */
export const OHTTP_PREFIX = "/_matrix/federation/unstable/io.mimi-appservice.ohttp";
/** `GET`: the gateway's key configurations, `application/ohttp-keys` (RFC 9458 §3.2). No authentication. */
export const OHTTP_KEYS_PATH = `${OHTTP_PREFIX}/keys`;
/** `POST message/ohttp-req`: the Oblivious Gateway Resource (RFC 9458 §2). */
export const OHTTP_GATEWAY_PATH = `${OHTTP_PREFIX}/gateway`;
/** `POST message/ohttp-req` to `…/relay/<server name>`: the Oblivious Relay Resource for our own clients. */
export const OHTTP_RELAY_PATH = `${OHTTP_PREFIX}/relay`;
/** The field of our signed `GET /_matrix/key/v2/server` answer that carries the key configurations. */
export const OHTTP_KEYS_FIELD = "io.mimi-appservice.ohttp_keys";

/** An Encapsulated Request: a KeyPackageRequestBundle is at most 64 KiB, plus binary HTTP and HPKE. */
export const MAX_ENCAPSULATED_REQUEST_BYTES = 96 * 1024;
/** An Encapsulated Response: 64 KeyPackages with room to spare. */
export const MAX_ENCAPSULATED_RESPONSE_BYTES = 512 * 1024;
/**
 * Binary HTTP messages are padded with zeros to a multiple of this (RFC 9292 §3.8), so that the
 * relay, which sees their sizes, cannot tell target users apart by the length of their user IDs.
 */
export const OHTTP_PAD_TO = 1024;
