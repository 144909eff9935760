import { MlsError } from "../errors";

/**
 * The TLS presentation language as RFC 9420 §2.1 uses it: big-endian integers, and `<V>` vectors
 * prefixed with their length in bytes as a variable-length integer (§2.1.2): the top two bits of
 * the first byte give the prefix's size (00: 1 byte, 01: 2, 10: 4; 11 is invalid), the rest is
 * the length. A length written in more bytes than it needs is refused: one value, one encoding.
 */
export class TlsReader {
  private offset = 0;

  constructor(private readonly bytes: Uint8Array) {}

  get position(): number {
    return this.offset;
  }

  get remaining(): number {
    return this.bytes.length - this.offset;
  }

  uint8(field: string): number {
    return this.take(1, field)[0]!;
  }

  uint16(field: string): number {
    const [high, low] = this.take(2, field);
    return (high! << 8) | low!;
  }

  uint32(field: string): number {
    const b = this.take(4, field);
    return ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
  }

  /** A `<V>` length prefix. */
  length(field: string): number {
    const first = this.take(1, field)[0]!;
    const prefix = first >> 6;
    if (prefix === 3)
      throw malformed(`${field}.length`, `${field}: the length prefix 0b11 is invalid (RFC 9420 §2.1.2)`);
    let value = first & 0x3f;
    const extra = prefix === 0 ? 0 : prefix === 1 ? 1 : 3;
    for (const byte of this.take(extra, field)) value = value * 256 + byte;
    const minimal = value < 0x40 ? 0 : value < 0x4000 ? 1 : 3;
    if (extra !== minimal)
      throw malformed(`${field}.length`, `${field}: a length not written in its shortest form`);
    return value;
  }

  /** `opaque field<V>`; a length over `maxLength` is refused M_TOO_LARGE before anything is read. */
  opaque(field: string, maxLength: number): Uint8Array {
    const length = this.length(field);
    if (length > maxLength) {
      throw new MlsError(
        "M_TOO_LARGE",
        `${field}.too_large`,
        `${field} is ${length} bytes, at most ${maxLength} allowed`,
      );
    }
    return this.take(length, field);
  }

  /** The contents of a `<V>` vector of structures, as a reader of their own. */
  vector(field: string, maxLength: number): TlsReader {
    return new TlsReader(this.opaque(field, maxLength));
  }

  /** The bytes from `start` to the current position. */
  slice(start: number): Uint8Array {
    return this.bytes.subarray(start, this.offset);
  }

  /** The rest of the input, for a decoder that reports how much it used (`skip` it after). */
  rest(): Uint8Array {
    return this.bytes.subarray(this.offset);
  }

  skip(count: number, field: string): void {
    this.take(count, field);
  }

  /** Refuses bytes left over. */
  end(what: string): void {
    if (this.remaining !== 0) {
      throw malformed("trailing", `${this.remaining} bytes left over after ${what}`);
    }
  }

  private take(count: number, field: string): Uint8Array {
    if (count > this.remaining) {
      throw malformed(
        `${field}.truncated`,
        `${field}: ${count} bytes needed, ${this.remaining} left (truncated input)`,
      );
    }
    const out = this.bytes.subarray(this.offset, this.offset + count);
    this.offset += count;
    return out;
  }
}

export class TlsWriter {
  private readonly parts: Uint8Array[] = [];

  uint8(value: number): this {
    this.parts.push(Uint8Array.of(value));
    return this;
  }

  uint16(value: number): this {
    this.parts.push(Uint8Array.of(value >> 8, value & 0xff));
    return this;
  }

  uint32(value: number): this {
    this.parts.push(Uint8Array.of(value >>> 24, (value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff));
    return this;
  }

  raw(bytes: Uint8Array): this {
    this.parts.push(bytes);
    return this;
  }

  /** `opaque <V>`: the shortest length prefix, then the bytes. */
  opaque(bytes: Uint8Array): this {
    const n = bytes.length;
    if (n < 0x40) this.uint8(n);
    else if (n < 0x4000) this.uint16(0x4000 | n);
    else if (n < 0x40000000) this.uint32((0x80000000 | n) >>> 0);
    else throw new RangeError("a vector of 2^30 bytes or more cannot be encoded (RFC 9420 §2.1.2)");
    return this.raw(bytes);
  }

  bytes(): Uint8Array {
    return new Uint8Array(Buffer.concat(this.parts));
  }
}

function malformed(rule: string, message: string): MlsError {
  return new MlsError("IO.MIMI_APPSERVICE.MLS_MALFORMED", rule, message);
}
