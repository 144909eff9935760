import { decodeRequest, decodeResponse } from "../../../src/federation/ohttp/bhttp";
import {
  decapsulateResponse,
  encapsulateRequest,
  encapsulateResponse,
  importGatewayKey,
  openRequest,
  parseEncapsulatedRequest,
} from "../../../src/federation/ohttp/encapsulation";
import {
  AEAD_AES_128_GCM,
  AEAD_CHACHA20_POLY1305,
  decodeKeyConfig,
  decodeKeyConfigList,
  encodeKeyConfig,
  encodeKeyConfigList,
  KDF_HKDF_SHA256,
} from "../../../src/federation/ohttp/keyConfig";

/** RFC 9458 Appendix A, every value as printed there. */
const A = {
  gatewaySecretKey: "3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a",
  keyConfig: "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003",
  request: "00034745540568747470730b6578616d706c652e636f6d012f",
  ephemeralSecretKey: "bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73",
  ephemeralPublicKey: "4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472",
  encapsulatedRequest:
    "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad1" +
    "9dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e796" +
    "5e7d86b83dd440b2c0185204b4d63525",
  response: "0140c8",
  secret: "62d87a6ba569ee81014c2641f52bea36",
  responseNonce: "c789e7151fcba46158ca84b04464910d",
  encapsulatedResponse: "c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd",
};

const hex = (text: string) => new Uint8Array(Buffer.from(text, "hex"));
const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");

describe("RFC 9458 Appendix A, byte for byte", () => {
  it("builds the key configuration from the gateway's secret key", async () => {
    const key = await importGatewayKey(1, hex(A.gatewaySecretKey), [
      { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_128_GCM },
      { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_CHACHA20_POLY1305 },
    ]);
    expect(toHex(encodeKeyConfig(key.config))).toBe(A.keyConfig);
    expect(decodeKeyConfig(hex(A.keyConfig))).toEqual(key.config);
    // application/ohttp-keys (RFC 9458 §3.2): the same configuration behind its 16-bit length.
    const list = encodeKeyConfigList([key.config]);
    expect(toHex(list)).toBe("002d" + A.keyConfig);
    expect(decodeKeyConfigList(list)).toEqual([key.config]);
  });

  it("encapsulates the request with the appendix's ephemeral key into its Encapsulated Request", async () => {
    const { encapsulated, context } = await encapsulateRequest(
      decodeKeyConfig(hex(A.keyConfig)),
      hex(A.request),
      {
        ephemeral: { privateKey: hex(A.ephemeralSecretKey), publicKey: hex(A.ephemeralPublicKey) },
      },
    );
    expect(toHex(encapsulated)).toBe(A.encapsulatedRequest);
    expect(toHex(context.enc)).toBe(A.ephemeralPublicKey);
    expect(toHex(context.secret)).toBe(A.secret);
  });

  it("the gateway opens that request, and its response with the appendix's nonce is the Encapsulated Response", async () => {
    const key = await importGatewayKey(1, hex(A.gatewaySecretKey));
    const parsed = parseEncapsulatedRequest(hex(A.encapsulatedRequest));
    expect(parsed).toMatchObject({ keyId: 1, kemId: 0x20, kdfId: 1, aeadId: 1 });
    const { request, context } = await openRequest(key, parsed);
    expect(toHex(request)).toBe(A.request);
    expect(toHex(context.secret)).toBe(A.secret);
    const response = encapsulateResponse(context, hex(A.response), hex(A.responseNonce));
    expect(toHex(response)).toBe(A.encapsulatedResponse);
    // And the client opens the appendix's Encapsulated Response.
    expect(toHex(decapsulateResponse(context, hex(A.encapsulatedResponse)))).toBe(A.response);
  });

  it("the same exchange with the other AEADs: ChaCha20-Poly1305 (offered) and AES-256-GCM (refused, not offered)", async () => {
    const key = await importGatewayKey(1, hex(A.gatewaySecretKey));
    const chacha = { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_CHACHA20_POLY1305 };
    const { encapsulated, context } = await encapsulateRequest(key.config, hex(A.request), {
      algorithm: chacha,
    });
    expect(toHex(encapsulated.subarray(0, 7))).toBe("01002000010003");
    const opened = await openRequest(key, parseEncapsulatedRequest(encapsulated));
    expect(toHex(opened.request)).toBe(A.request);
    expect(opened.context.secret).toHaveLength(32);
    const response = encapsulateResponse(opened.context, hex(A.response));
    expect(toHex(decapsulateResponse(context, response))).toBe(A.response);
    const aes256 = await encapsulateRequest(
      { ...key.config, algorithms: [{ kdfId: KDF_HKDF_SHA256, aeadId: 0x0002 }] },
      hex(A.request),
    );
    await expect(openRequest(key, parseEncapsulatedRequest(aes256.encapsulated))).rejects.toMatchObject({
      errcode: "IO.MIMI_APPSERVICE.OHTTP_KEY",
    });
  });

  it("the binary HTTP messages inside are the appendix's GET https://example.com/ and 200", () => {
    expect(decodeRequest(hex(A.request))).toEqual({
      method: "GET",
      scheme: "https",
      authority: "example.com",
      path: "/",
      headers: [],
      content: new Uint8Array(0),
      trailers: [],
    });
    expect(decodeResponse(hex(A.response))).toMatchObject({ status: 200, informational: [], headers: [] });
  });
});
