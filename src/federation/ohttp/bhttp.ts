import { malformed } from "./errors";

/**
 * Binary HTTP messages (RFC 9292), the content of OHTTP requests and responses (RFC 9458 §4).
 * Pure. Encoding writes the known-length form (§3.1) with every section present, optionally padded
 * with zero bytes (§3.8); decoding reads both forms (§3.1, §3.2), truncated messages (§3.8) and
 * padding, and refuses what RFC 9292 §4 calls invalid, including field lines HTTP/2 would find
 * malformed (§3.6, RFC 9113 §8.2).
 */

/** A field line, name in lower case. Values are octets, read and written as Latin-1. */
export type Field = readonly [name: string, value: string];

export interface BinaryRequest {
  method: string;
  scheme: string;
  /** Empty when the request has none (RFC 9292 §3.4). */
  authority: string;
  /** Path and query, as HTTP/2's `:path`. */
  path: string;
  headers: Field[];
  content: Uint8Array;
  trailers: Field[];
}

export interface InformationalResponse {
  status: number;
  headers: Field[];
}

export interface BinaryResponse {
  /** Interim (1xx) responses before the final one (RFC 9292 §3.5.1). */
  informational: InformationalResponse[];
  status: number;
  headers: Field[];
  content: Uint8Array;
  trailers: Field[];
}

export interface EncodeOptions {
  /** Pads with zero bytes (RFC 9292 §3.8) up to the next multiple of this many bytes. */
  padToMultipleOf?: number;
}

export const BHTTP_LIMITS = {
  /** Field lines in one section. */
  maxFields: 256,
} as const;

const FRAMING_KNOWN_REQUEST = 0;
const FRAMING_KNOWN_RESPONSE = 1;
const FRAMING_INDETERMINATE_REQUEST = 2;
const FRAMING_INDETERMINATE_RESPONSE = 3;

/** RFC 9110 §5.6.2 tchar, lower case only (RFC 9113 §8.2.1). */
const FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const METHOD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const SCHEME = /^[A-Za-z][A-Za-z0-9+\-.]*$/;
const VISIBLE = /^[\x21-\x7e]*$/;
/** RFC 9113 §8.2.2: connection-specific fields are malformed in HTTP/2, hence here. */
const CONNECTION_FIELDS = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);

// ---- encoding ----

export function encodeRequest(request: BinaryRequest, options: EncodeOptions = {}): Uint8Array {
  checkControl(request);
  const out = new Writer();
  out.varint(FRAMING_KNOWN_REQUEST);
  out.text(request.method).text(request.scheme).text(request.authority).text(request.path);
  writeKnownLengthRest(out, request.headers, request.content, request.trailers);
  return out.finish(options.padToMultipleOf);
}

export function encodeResponse(response: BinaryResponse, options: EncodeOptions = {}): Uint8Array {
  const out = new Writer();
  out.varint(FRAMING_KNOWN_RESPONSE);
  for (const interim of response.informational) {
    if (!isInformational(interim.status)) throw new RangeError(`${interim.status} is not a 1xx status`);
    out.varint(interim.status);
    out.fieldSection(interim.headers);
  }
  if (!isFinal(response.status)) throw new RangeError(`${response.status} is not a final status (200-599)`);
  out.varint(response.status);
  writeKnownLengthRest(out, response.headers, response.content, response.trailers);
  return out.finish(options.padToMultipleOf);
}

function writeKnownLengthRest(out: Writer, headers: Field[], content: Uint8Array, trailers: Field[]): void {
  out.fieldSection(headers);
  out.varint(content.length).raw(content);
  out.fieldSection(trailers);
}

function checkControl(request: BinaryRequest): void {
  if (!METHOD.test(request.method)) throw new RangeError(`invalid method ${JSON.stringify(request.method)}`);
  if (!SCHEME.test(request.scheme)) throw new RangeError(`invalid scheme ${JSON.stringify(request.scheme)}`);
  if (!VISIBLE.test(request.authority))
    throw new RangeError(`invalid authority ${JSON.stringify(request.authority)}`);
  if (request.path === "" || !VISIBLE.test(request.path))
    throw new RangeError(`invalid path ${JSON.stringify(request.path)}`);
}

class Writer {
  private readonly parts: Uint8Array[] = [];
  private length = 0;

  raw(bytes: Uint8Array): this {
    this.parts.push(bytes);
    this.length += bytes.length;
    return this;
  }

  /** RFC 9000 §16 variable-length integer, shortest form. */
  varint(value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${value} is not a varint`);
    if (value < 0x40) return this.raw(Uint8Array.of(value));
    if (value < 0x4000) return this.raw(Uint8Array.of(0x40 | (value >> 8), value & 0xff));
    if (value < 0x40000000) {
      return this.raw(
        Uint8Array.of(0x80 | (value >>> 24), (value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff),
      );
    }
    const bytes = new Uint8Array(8);
    let rest = value;
    for (let i = 7; i >= 0; i--) {
      bytes[i] = rest % 256;
      rest = Math.floor(rest / 256);
    }
    bytes[0]! |= 0xc0;
    return this.raw(bytes);
  }

  text(value: string): this {
    const bytes = latin1(value);
    return this.varint(bytes.length).raw(bytes);
  }

  fieldSection(fields: readonly Field[]): this {
    const section = new Writer();
    for (const [name, value] of fields) {
      const lower = name.toLowerCase();
      checkField(lower, value, (message) => new RangeError(message));
      section.text(lower).text(value);
    }
    const bytes = section.finish(undefined);
    return this.varint(bytes.length).raw(bytes);
  }

  finish(padToMultipleOf: number | undefined): Uint8Array {
    let total = this.length;
    if (padToMultipleOf !== undefined && padToMultipleOf > 1) {
      total = Math.ceil(total / padToMultipleOf) * padToMultipleOf;
    }
    const out = new Uint8Array(total);
    let offset = 0;
    for (const part of this.parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }
}

function latin1(value: string): Uint8Array {
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 0xff)
      throw new RangeError(`${JSON.stringify(value)} holds a character above U+00FF`);
  }
  return new Uint8Array(Buffer.from(value, "latin1"));
}

// ---- decoding ----

/** A binary HTTP request, known- or indeterminate-length, truncated or padded; else OHTTP_MALFORMED. */
export function decodeRequest(bytes: Uint8Array): BinaryRequest {
  const reader = new Reader(bytes);
  const framing = reader.varint("framing indicator");
  if (framing !== FRAMING_KNOWN_REQUEST && framing !== FRAMING_INDETERMINATE_REQUEST) {
    throw malformed("bhttp.framing", `framing indicator ${framing} is not a request's (RFC 9292 §3.3)`);
  }
  const known = framing === FRAMING_KNOWN_REQUEST;
  const method = reader.text("method");
  const scheme = reader.text("scheme");
  const authority = reader.text("authority");
  const path = reader.text("path");
  if (!METHOD.test(method)) throw malformed("bhttp.method", "the method is not a token");
  if (!SCHEME.test(scheme)) throw malformed("bhttp.scheme", "the scheme is invalid");
  if (!VISIBLE.test(authority)) throw malformed("bhttp.authority", "the authority holds invalid bytes");
  if (path === "" || !VISIBLE.test(path))
    throw malformed("bhttp.path", "the path is empty or holds invalid bytes");
  const { headers, content, trailers } = readRest(reader, known);
  return { method, scheme, authority, path, headers, content, trailers };
}

/** A binary HTTP response, with its interim responses; else OHTTP_MALFORMED. */
export function decodeResponse(bytes: Uint8Array): BinaryResponse {
  const reader = new Reader(bytes);
  const framing = reader.varint("framing indicator");
  if (framing !== FRAMING_KNOWN_RESPONSE && framing !== FRAMING_INDETERMINATE_RESPONSE) {
    throw malformed("bhttp.framing", `framing indicator ${framing} is not a response's (RFC 9292 §3.3)`);
  }
  const known = framing === FRAMING_KNOWN_RESPONSE;
  const informational: InformationalResponse[] = [];
  let status = reader.varint("status");
  while (isInformational(status)) {
    // RFC 9113 §8.6: HTTP/2 has no 101; RFC 9292 §3.6 takes its rules.
    if (status === 101) throw malformed("bhttp.status", "101 (Switching Protocols) cannot be carried");
    if (informational.length === BHTTP_LIMITS.maxFields)
      throw malformed("bhttp.interim", "too many interim responses");
    informational.push({ status, headers: readSection(reader, known, "interim header") });
    status = reader.varint("status");
  }
  if (!isFinal(status)) throw malformed("bhttp.status", `status ${status} is not a final status (200-599)`);
  const { headers, content, trailers } = readRest(reader, known);
  return { informational, status, headers, content, trailers };
}

function readRest(
  reader: Reader,
  known: boolean,
): { headers: Field[]; content: Uint8Array; trailers: Field[] } {
  // RFC 9292 §3.8: a message may end before any section; what is missing is empty.
  const headers = reader.atEnd ? [] : readSection(reader, known, "header");
  let content: Uint8Array = new Uint8Array(0);
  if (!reader.atEnd)
    content = known ? reader.take(reader.varint("content length"), "content") : readChunks(reader);
  const trailers = reader.atEnd ? [] : readSection(reader, known, "trailer");
  reader.padding();
  return { headers, content, trailers };
}

function readSection(reader: Reader, known: boolean, what: string): Field[] {
  const fields: Field[] = [];
  const lines = known
    ? new Reader(reader.take(reader.varint(`${what} section length`), `${what} section`))
    : reader;
  while (true) {
    if (known && lines.atEnd) break;
    const nameLength = lines.varint(`${what} field name length`);
    if (nameLength === 0) {
      if (known) throw malformed("bhttp.field_name", `an empty ${what} field name`);
      break;
    }
    if (fields.length === BHTTP_LIMITS.maxFields)
      throw malformed("bhttp.fields", `more than ${BHTTP_LIMITS.maxFields} ${what} fields`);
    const name = Buffer.from(lines.take(nameLength, `${what} field name`)).toString("latin1");
    const value = lines.text(`${what} field value`);
    checkField(name, value, (message) => malformed("bhttp.field", message));
    fields.push([name, value]);
  }
  return fields;
}

function readChunks(reader: Reader): Uint8Array {
  const chunks: Uint8Array[] = [];
  while (true) {
    const length = reader.varint("chunk length");
    if (length === 0) break;
    chunks.push(reader.take(length, "content chunk"));
  }
  return new Uint8Array(Buffer.concat(chunks));
}

function checkField(name: string, value: string, fail: (message: string) => Error): void {
  if (!FIELD_NAME.test(name)) {
    throw fail(
      name.startsWith(":")
        ? `pseudo-field ${JSON.stringify(name)} in a field section (RFC 9292 §3.6)`
        : `invalid field name ${JSON.stringify(name)} (RFC 9113 §8.2.1)`,
    );
  }
  if (CONNECTION_FIELDS.has(name) || (name === "te" && value !== "trailers")) {
    throw fail(`connection-specific field ${JSON.stringify(name)} (RFC 9113 §8.2.2)`);
  }
  if (/[\0\r\n]/.test(value) || /^[ \t]|[ \t]$/.test(value)) {
    throw fail(`invalid value of field ${JSON.stringify(name)} (RFC 9113 §8.2.1)`);
  }
}

class Reader {
  private offset = 0;

  constructor(private readonly bytes: Uint8Array) {}

  get atEnd(): boolean {
    return this.offset === this.bytes.length;
  }

  take(count: number, field: string): Uint8Array {
    if (count > this.bytes.length - this.offset) {
      throw malformed(
        "bhttp.truncated",
        `${field}: ${count} bytes needed, ${this.bytes.length - this.offset} left`,
      );
    }
    const out = this.bytes.subarray(this.offset, this.offset + count);
    this.offset += count;
    return out;
  }

  /** RFC 9000 §16; any of the four sizes is accepted, values above 2^53 - 1 are refused. */
  varint(field: string): number {
    const first = this.take(1, field)[0]!;
    const size = 1 << (first >> 6);
    let value = first & 0x3f;
    for (const byte of this.take(size - 1, field)) value = value * 256 + byte;
    if (!Number.isSafeInteger(value)) throw malformed("bhttp.varint", `${field} is too large`);
    return value;
  }

  text(field: string): string {
    return Buffer.from(this.take(this.varint(`${field} length`), field)).toString("latin1");
  }

  /** RFC 9292 §3.8: padding is zero bytes; anything else after the message makes it invalid. */
  padding(): void {
    for (let i = this.offset; i < this.bytes.length; i++) {
      if (this.bytes[i] !== 0) throw malformed("bhttp.padding", "non-zero bytes after the message");
    }
    this.offset = this.bytes.length;
  }
}

function isInformational(status: number): boolean {
  return status >= 100 && status <= 199;
}

function isFinal(status: number): boolean {
  return status >= 200 && status <= 599;
}

/** The value of the first field named `name` (lower case), if any. */
export function fieldValue(fields: readonly Field[], name: string): string | undefined {
  return fields.find(([n]) => n === name)?.[1];
}
