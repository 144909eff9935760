import { getCiphersuiteImpl, getCiphersuiteFromName } from "ts-mls";

describe("toolchain", () => {
  it("loads the ESM-only ts-mls under Jest", async () => {
    const impl = await getCiphersuiteImpl(
      getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"),
    );
    expect(impl.name).toBe("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519");
  });
});
