import { MlsError } from "../errors";
import { CodecError, decodeMlsMessage, type Decoder, type MLSMessage } from "../tsMls";

export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

export function fromBase64(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, "base64"));
}

export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** Decodes `bytes` as exactly one `what`: ts-mls neither refuses bytes left over nor always throws. */
export function decodeWhole<T>(decoder: Decoder<T>, bytes: Uint8Array, what: string): T {
  let decoded: [T, number] | undefined;
  try {
    decoded = decoder(bytes, 0);
  } catch (err) {
    if (!(err instanceof CodecError) && !(err instanceof RangeError)) throw err;
    decoded = undefined;
  }
  if (decoded === undefined) {
    throw new MlsError("IO.MIMI_APPSERVICE.MLS_MALFORMED", "decode", `the bytes do not decode as ${what}`);
  }
  if (decoded[1] !== bytes.length) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decode.trailing",
      `${bytes.length - decoded[1]} bytes left over after ${what}`,
    );
  }
  return decoded[0];
}

type WireformatName = MLSMessage["wireformat"];
export type MlsMessageOf<W extends WireformatName> = Extract<MLSMessage, { wireformat: W }>;

/** An MLSMessage (RFC 9420 §6) of the given wire format, decoded strictly. */
export function decodeMlsMessageOf<W extends WireformatName>(
  bytes: Uint8Array,
  wireformat: W,
): MlsMessageOf<W> {
  const message = decodeWhole(decodeMlsMessage, bytes, "an MLSMessage");
  if (message.wireformat !== wireformat) {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decode.wireformat",
      `expected an MLSMessage of wire format ${wireformat}, got ${message.wireformat}`,
    );
  }
  if (message.version !== "mls10") {
    throw new MlsError(
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "decode.version",
      `MLS version ${message.version}`,
    );
  }
  return message as MlsMessageOf<W>;
}
