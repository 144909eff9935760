import { join } from "node:path";
import { MlsError } from "../../src/mls/errors";
import {
  BearerTokens,
  KEY_PACKAGE_LIMITS,
  KeyPackagePool,
  KeyPackageService,
  decodeKeyPackageRequest,
  decodeKeyPackageRequestBundle,
  decodeKeyPackageResponse,
  decodeKeyPackageResultBundle,
  encodeKeyPackageRequest,
  encodeKeyPackageRequestBundle,
  encodeKeyPackageResultBundle,
} from "../../src/mls/keyPackages";
import { SUPPORTED_CIPHERSUITE } from "../../src/mls/tsMls";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore, TEST_STORE_NAME } from "../support/store";

const BOB = "@bob:b.example";
const utf8 = new TextEncoder();

// ---- the TLS presentation language, written out by hand (RFC 9420 §2.1) ----

function bytes(...parts: (Uint8Array | number[])[]): Uint8Array {
  return new Uint8Array(parts.flatMap((part) => [...part]));
}

/** RFC 9420 §2.1.2, shortest form. */
function varint(length: number): number[] {
  if (length < 0x40) return [length];
  if (length < 0x4000) return [0x40 | (length >> 8), length & 0xff];
  return [0x80 | (length >>> 24), (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff];
}

const opaque = (data: Uint8Array | number[]) => bytes(varint(data.length), data);
const uint16 = (value: number) => [value >> 8, value & 0xff];
const uint32 = (value: number) => [value >>> 24, (value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff];

function requestBytes(userId: Uint8Array, token: Uint8Array, version = 1, suite = 1): Uint8Array {
  return bytes(opaque(userId), opaque(token), uint16(version), uint16(suite));
}

function expectRefused(run: () => unknown, errcode: string, rule: string): void {
  let err: unknown;
  try {
    run();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(MlsError);
  expect([(err as MlsError).errcode, (err as MlsError).rule]).toEqual([errcode, rule]);
}

const TOKEN = new Uint8Array(70).fill(0x61);

describe("KeyPackageRequest (McMillion §Key Packages)", () => {
  test("hand-built bytes decode, and encode back byte for byte", () => {
    const wire = bytes(
      [0x0e],
      utf8.encode(BOB), // opaque user_id<V>: 14 bytes, a one-byte length
      [0x40, 0x46],
      TOKEN, // opaque bearer_token<V>: 70 bytes, a two-byte length
      [0x00, 0x01], // ProtocolVersion mls10
      [0x00, 0x01], // CipherSuite MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
    );
    const request = decodeKeyPackageRequest(wire);
    expect(request).toEqual({
      userId: BOB,
      bearerToken: TOKEN,
      version: "mls10",
      cipherSuite: SUPPORTED_CIPHERSUITE,
    });
    expect(encodeKeyPackageRequest(request)).toEqual(wire);
  });

  test("a bundle is a vector of requests", () => {
    const first = requestBytes(utf8.encode(BOB), TOKEN);
    const second = requestBytes(utf8.encode("@carol:c.example"), Uint8Array.of(1, 2, 3));
    const wire = bytes(varint(first.length + second.length), first, second);
    const requests = decodeKeyPackageRequestBundle(wire);
    expect(requests.map((r) => r.userId)).toEqual([BOB, "@carol:c.example"]);
    expect(encodeKeyPackageRequestBundle(requests)).toEqual(wire);
  });

  const valid = requestBytes(utf8.encode(BOB), TOKEN);
  test.each<[string, Uint8Array, string, string]>([
    [
      "truncated",
      valid.subarray(0, valid.length - 1),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "cipher_suite.truncated",
    ],
    ["empty", new Uint8Array(), "IO.MIMI_APPSERVICE.MLS_MALFORMED", "user_id.truncated"],
    ["a trailing byte", bytes(valid, [0]), "IO.MIMI_APPSERVICE.MLS_MALFORMED", "trailing"],
    [
      "a length longer than the input",
      bytes([0x20], utf8.encode(BOB)),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "user_id.truncated",
    ],
    [
      "a length not in its shortest form",
      bytes([0x40, 0x0e], utf8.encode(BOB), opaque(TOKEN), uint16(1), uint16(1)),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "user_id.length",
    ],
    [
      "the invalid 0b11 length prefix",
      bytes([0xc0, 0, 0, 0, 0, 0, 0, 14]),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "user_id.length",
    ],
    [
      "a user ID over 255 bytes",
      requestBytes(utf8.encode(`@${"b".repeat(300)}:b.example`), TOKEN),
      "M_TOO_LARGE",
      "user_id.too_large",
    ],
    [
      "a token over 256 bytes",
      requestBytes(utf8.encode(BOB), new Uint8Array(257)),
      "M_TOO_LARGE",
      "bearer_token.too_large",
    ],
    [
      "an input over 64 KiB",
      requestBytes(utf8.encode(BOB), new Uint8Array(KEY_PACKAGE_LIMITS.maxInputBytes)),
      "M_TOO_LARGE",
      "request.too_large",
    ],
    [
      "a user ID that is not UTF-8",
      requestBytes(Uint8Array.of(0x40, 0xff), TOKEN),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "user_id.utf8",
    ],
    [
      "a user ID that is no MIMI user ID",
      requestBytes(utf8.encode("bob"), TOKEN),
      "M_INVALID_PARAM",
      "request.user_id",
    ],
    [
      "an unknown version",
      requestBytes(utf8.encode(BOB), TOKEN, 2),
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "request.version",
    ],
    [
      "an unknown cipher suite",
      requestBytes(utf8.encode(BOB), TOKEN, 1, 0x9999),
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "request.cipher_suite",
    ],
  ])("refused: %s", (_name, wire, errcode, rule) => {
    expectRefused(() => decodeKeyPackageRequest(wire), errcode, rule);
  });

  test("bundles: empty, too many requests, a bad request anywhere in it", () => {
    expectRefused(
      () => decodeKeyPackageRequestBundle(bytes([0])),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "bundle.empty",
    );
    const many = Array.from({ length: KEY_PACKAGE_LIMITS.maxBundleRequests + 1 }, () => valid);
    const manyBytes = bytes(...many);
    expectRefused(
      () => decodeKeyPackageRequestBundle(bytes(varint(manyBytes.length), manyBytes)),
      "M_TOO_LARGE",
      "bundle.too_many",
    );
    const withBadLast = bytes(valid, valid.subarray(0, 5));
    expectRefused(
      () => decodeKeyPackageRequestBundle(bytes(varint(withBadLast.length), withBadLast)),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "user_id.truncated",
    );
    expectRefused(
      () => decodeKeyPackageRequestBundle(bytes(varint(valid.length), valid, [7])),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "trailing",
    );
  });
});

describe(`KeyPackageResponse and the result bundle, and the service on a real ${TEST_STORE_NAME}`, () => {
  let dir: string;
  let store: KvStore;
  let pool: KeyPackagePool;
  let tokens: BearerTokens;
  let service: KeyPackageService;

  beforeEach(async () => {
    dir = tempDir("mls-codec");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    pool = new KeyPackagePool(store);
    tokens = new BearerTokens(store);
    service = new KeyPackageService(pool, tokens);
    await pool.replenish(BOB);
  });

  afterEach(async () => {
    await store.close();
    removeDir(dir);
  });

  test("a response is the KeyPackage's encoding; results are typed and in order", async () => {
    const { keyPackage } = await pool.claim(BOB, "mls10", SUPPORTED_CIPHERSUITE);
    expect(decodeKeyPackageResponse(keyPackage).encoded).toEqual(keyPackage);
    expectRefused(
      () => decodeKeyPackageResponse(bytes(keyPackage, [0])),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "trailing",
    );
    expectRefused(
      () => decodeKeyPackageResponse(keyPackage.subarray(0, keyPackage.length - 1)),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "key_package",
    );

    const results = bytes(
      [0x01],
      keyPackage, // key_package(1), KeyPackageResponse
      [0x02],
      opaque(utf8.encode("M_LIMIT_EXCEEDED")),
      opaque(utf8.encode("slow down")),
      uint32(1500), // error(2), KeyPackageError
      [0x02],
      opaque(utf8.encode("M_UNKNOWN_TOKEN")),
      opaque(utf8.encode("unknown")),
      uint32(0),
    );
    const wire = bytes(varint(results.length), results);
    const decoded = decodeKeyPackageResultBundle(wire);
    expect(decoded).toEqual([
      { kind: "key_package", keyPackage },
      { kind: "error", errcode: "M_LIMIT_EXCEEDED", error: "slow down", retryAfterMs: 1500 },
      { kind: "error", errcode: "M_UNKNOWN_TOKEN", error: "unknown", retryAfterMs: undefined },
    ]);
    expect(encodeKeyPackageResultBundle(decoded)).toEqual(wire);
    expectRefused(
      () => decodeKeyPackageResultBundle(bytes([1], [0x03])),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "result_type",
    );
  });

  test("refused inputs claim nothing, and a request that decodes is served", async () => {
    const { token } = await tokens.issue(BOB, "c.example");
    const good = requestBytes(utf8.encode(BOB), utf8.encode(token));
    const refusedInputs: [Uint8Array, string][] = [
      [good.subarray(0, good.length - 2), "IO.MIMI_APPSERVICE.MLS_MALFORMED"],
      [bytes(good, [0]), "IO.MIMI_APPSERVICE.MLS_MALFORMED"],
      [requestBytes(utf8.encode(BOB), utf8.encode(token), 1, 0x9999), "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED"],
      [requestBytes(utf8.encode(BOB), utf8.encode(token), 1, 2), "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED"],
      [bytes(good, new Uint8Array(KEY_PACKAGE_LIMITS.maxInputBytes)), "M_TOO_LARGE"],
    ];
    for (const [wire, errcode] of refusedInputs) {
      const err = await service.handleKeyPackageRequest(wire).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as MlsError).errcode).toBe(errcode);
    }
    const badBundle = bytes(varint(good.length + 3), good, [1, 2, 3]);
    await expect(service.handleKeyPackageBundle(badBundle)).rejects.toBeInstanceOf(MlsError);
    expect((await pool.status(BOB)).oneTime).toBe(20);

    const served = decodeKeyPackageResponse(await service.handleKeyPackageRequest(good));
    expect(served.keyPackage.cipherSuite).toBe(SUPPORTED_CIPHERSUITE);
    expect((await pool.status(BOB)).oneTime).toBe(19);
  });
});
