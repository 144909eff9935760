import {
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  type BinaryRequest,
} from "../../../src/federation/ohttp/bhttp";

const hex = (text: string) => new Uint8Array(Buffer.from(text.replace(/\s+/g, ""), "hex"));
const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");
const utf8 = (text: string) => new Uint8Array(Buffer.from(text, "utf8"));

/** RFC 9292 §5.1, Figure 8: the known-length encoding of the example request (Figure 7). */
const FIGURE_8 = `
  00034745 54056874 74707300 0a2f6865 6c6c6f2e 74787440 6c0a7573 65722d61
  67656e74 34637572 6c2f372e 31362e33 206c6962 6375726c 2f372e31 362e3320
  4f70656e 53534c2f 302e392e 376c207a 6c69622f 312e322e 3304686f 73740f77
  77772e65 78616d70 6c652e63 6f6d0f61 63636570 742d6c61 6e677561 67650665
  6e2c206d 690000`;

/** Figure 9: the same request, indeterminate-length. */
const FIGURE_9 = `
  02034745 54056874 74707300 0a2f6865 6c6c6f2e 7478740a 75736572 2d616765
  6e743463 75726c2f 372e3136 2e33206c 69626375 726c2f37 2e31362e 33204f70
  656e5353 4c2f302e 392e376c 207a6c69 622f312e 322e3304 686f7374 0f777777
  2e657861 6d706c65 2e636f6d 0f616363 6570742d 6c616e67 75616765 06656e2c
  206d6900 0000`;

/** Figure 11: the example response with interim responses, indeterminate-length. */
const FIGURE_11 = `
  03406607 72756e6e 696e670a 22736c65 65702031 35220040 67046c69 6e6b233c
  2f737479 6c652e63 73733e3b 2072656c 3d707265 6c6f6164 3b206173 3d737479
  6c65046c 696e6b24 3c2f7363 72697074 2e6a733e 3b207265 6c3d7072 656c6f61
  643b2061 733d7363 72697074 0040c804 64617465 1d4d6f6e 2c203237 204a756c
  20323030 39203132 3a32383a 35332047 4d540673 65727665 72064170 61636865
  0d6c6173 742d6d6f 64696669 65641d57 65642c20 3232204a 756c2032 30303920
  31393a31 353a3536 20474d54 04657461 67142233 34616133 38372d64 2d313536
  38656230 30220d61 63636570 742d7261 6e676573 05627974 65730e63 6f6e7465
  6e742d6c 656e6774 68023531 04766172 790f4163 63657074 2d456e63 6f64696e
  670c636f 6e74656e 742d7479 70650a74 6578742f 706c6169 6e003348 656c6c6f
  20576f72 6c642120 4d792063 6f6e7465 6e742069 6e636c75 64657320 61207472
  61696c69 6e672043 524c462e 0d0a0000`;

/** Figure 13: a chunked response with a trailer, known-length. */
const FIGURE_13 = `
  0140c800 1d546869 7320636f 6e74656e 7420636f 6e746169 6e732043 524c462e
  0d0a0d07 74726169 6c657204 74657874`;

const EXAMPLE_REQUEST: BinaryRequest = {
  method: "GET",
  scheme: "https",
  authority: "",
  path: "/hello.txt",
  headers: [
    ["user-agent", "curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"],
    ["host", "www.example.com"],
    ["accept-language", "en, mi"],
  ],
  content: new Uint8Array(0),
  trailers: [],
};

describe("binary HTTP (RFC 9292) against its examples", () => {
  it("§5.1: encodes the example request to Figure 8 byte for byte (names lowered, Host not in :authority)", () => {
    const headers = EXAMPLE_REQUEST.headers.map(([name, value]) =>
      name === "user-agent" ? (["User-Agent", value] as const) : ([name, value] as const),
    );
    expect(toHex(encodeRequest({ ...EXAMPLE_REQUEST, headers }))).toBe(toHex(hex(FIGURE_8)));
  });

  it("§5.1: decodes Figure 8, Figure 8 truncated by one and two bytes, and Figure 9 to the same request", () => {
    const figure8 = hex(FIGURE_8);
    for (const bytes of [figure8, figure8.subarray(0, -1), figure8.subarray(0, -2), hex(FIGURE_9)]) {
      expect(decodeRequest(bytes)).toEqual(EXAMPLE_REQUEST);
    }
    const figure9 = hex(FIGURE_9);
    expect(decodeRequest(figure9.subarray(0, -2))).toEqual(EXAMPLE_REQUEST);
  });

  it("§5.2: decodes Figure 11, interim responses 102 and 103 included, and Figure 13 with its trailer", () => {
    const response = decodeResponse(hex(FIGURE_11));
    expect(response.informational).toEqual([
      { status: 102, headers: [["running", '"sleep 15"']] },
      {
        status: 103,
        headers: [
          ["link", "</style.css>; rel=preload; as=style"],
          ["link", "</script.js>; rel=preload; as=script"],
        ],
      },
    ]);
    expect(response.status).toBe(200);
    expect(response.headers).toEqual([
      ["date", "Mon, 27 Jul 2009 12:28:53 GMT"],
      ["server", "Apache"],
      ["last-modified", "Wed, 22 Jul 2009 19:15:56 GMT"],
      ["etag", '"34aa387-d-1568eb00"'],
      ["accept-ranges", "bytes"],
      ["content-length", "51"],
      ["vary", "Accept-Encoding"],
      ["content-type", "text/plain"],
    ]);
    expect(Buffer.from(response.content).toString()).toBe(
      "Hello World! My content includes a trailing CRLF.\r\n",
    );
    expect(response.trailers).toEqual([]);

    const chunked = decodeResponse(hex(FIGURE_13));
    expect(chunked).toEqual({
      informational: [],
      status: 200,
      headers: [],
      content: utf8("This content contains CRLF.\r\n"),
      trailers: [["trailer", "text"]],
    });
    expect(toHex(encodeResponse(chunked))).toBe(toHex(hex(FIGURE_13)));
  });

  it("§3.8: pads with zero bytes and reads a padded message back; non-zero padding is invalid", () => {
    const padded = encodeRequest(EXAMPLE_REQUEST, { padToMultipleOf: 256 });
    expect(padded.length).toBe(256);
    expect(decodeRequest(padded)).toEqual(EXAMPLE_REQUEST);
    padded[255] = 1;
    expect(() => decodeRequest(padded)).toThrow(expect.objectContaining({ rule: "bhttp.padding" }));
  });

  it("refuses invalid messages (§4)", () => {
    const encode = (overrides: Partial<BinaryRequest>) =>
      encodeRequest({ ...EXAMPLE_REQUEST, headers: [], ...overrides });
    const cases: [string, Uint8Array, string][] = [
      ["a response's framing indicator", hex("01 40c8"), "bhttp.framing"],
      ["framing indicator 4", hex("04"), "bhttp.framing"],
      ["cut inside the control data", hex(FIGURE_8).subarray(0, 10), "bhttp.truncated"],
      ["cut inside the header section", hex(FIGURE_8).subarray(0, 40), "bhttp.truncated"],
      // "user-agent" (at offset 26) becomes "User-agent".
      ["an upper-case field name", replaceAt(hex(FIGURE_8), 26, 0x55), "bhttp.field"],
    ];
    // A field section holding ":path" (RFC 9292 §3.6) and one holding "connection" (RFC 9113 §8.2.2).
    const pseudo = encode({});
    cases.push(["a pseudo-field", withHeader(pseudo, ":path", "/"), "bhttp.field"]);
    cases.push(["a connection-specific field", withHeader(pseudo, "connection", "close"), "bhttp.field"]);
    for (const [what, bytes, rule] of cases) {
      let refusal: unknown;
      try {
        decodeRequest(bytes);
      } catch (err) {
        refusal = err;
      }
      expect({ what, refusal }).toEqual({
        what,
        refusal: expect.objectContaining({ rule, errcode: "IO.MIMI_APPSERVICE.OHTTP_MALFORMED" }),
      });
    }
    expect(() => decodeResponse(hex("01 4065"))).toThrow(expect.objectContaining({ rule: "bhttp.status" })); // 101
    expect(() => decodeResponse(hex("01 4258"))).toThrow(expect.objectContaining({ rule: "bhttp.status" })); // 600
    expect(() => encodeRequest({ ...EXAMPLE_REQUEST, headers: [["bad name", "x"]] })).toThrow(RangeError);
  });

  it("keeps the query of the request target, and bytes of any value", () => {
    const request: BinaryRequest = {
      ...EXAMPLE_REQUEST,
      method: "POST",
      authority: "c.example",
      path: "/a/b?x=1&y=%20",
      headers: [["content-type", "application/octet-stream"]],
      content: new Uint8Array([0, 1, 2, 255]),
      trailers: [["x-trailer", "caf\u00e9"]],
    };
    expect(decodeRequest(encodeRequest(request))).toEqual(request);
  });
});

function replaceAt(bytes: Uint8Array, index: number, value: number): Uint8Array {
  const copy = new Uint8Array(bytes);
  copy[index] = value;
  return copy;
}

/** A known-length request without headers, given one raw header line (bypassing the encoder's checks). */
function withHeader(encoded: Uint8Array, name: string, value: string): Uint8Array {
  // framing(1) + 4 length-prefixed control fields, then the empty header section's length byte.
  let at = 1;
  for (let i = 0; i < 4; i++) at += 1 + encoded[at]!;
  const line = Buffer.concat([
    Buffer.of(name.length),
    Buffer.from(name),
    Buffer.of(value.length),
    Buffer.from(value),
  ]);
  return new Uint8Array(
    Buffer.concat([encoded.subarray(0, at), Buffer.of(line.length), line, encoded.subarray(at + 1)]),
  );
}
