/**
 * RFC 9420 §12.4.3.2: `struct { HPKEPublicKey external_pub; } ExternalPub`, and HPKEPublicKey is
 * `opaque HPKEPublicKey<V>` (§5.1.1): the extension data is the key with its length prefix.
 */
import {
  CodecError,
  createGroupInfoWithExternalPub,
  decodeExternalPub,
  joinGroupExternal,
  signGroupInfo,
  type CiphersuiteImpl,
  type ClientState,
} from "../../src/mls/tsMls";
import { aliceAndBob, bytes, member, receive, suite, type Member } from "./support";

let cs: CiphersuiteImpl;
let alice: Member;
let aliceState: ClientState;
let externalPub: Uint8Array;

beforeAll(async () => {
  cs = await suite();
  ({ alice, aliceState } = await aliceAndBob(cs));
  // The external key pair of the epoch (RFC 9420 §8): derived from external_secret.
  const externalKeyPair = await cs.hpke.deriveKeyPair(aliceState.keySchedule.externalSecret);
  externalPub = await cs.hpke.exportPublicKey(externalKeyPair.publicKey);
  expect(externalPub.length).toBe(32);
});

describe("external_pub (RFC 9420 §12.4.3.2)", () => {
  it("encodes the extension data as opaque<V>: one length byte 0x20, then the X25519 key", async () => {
    const groupInfo = await createGroupInfoWithExternalPub(aliceState, [], cs);
    const extensions = groupInfo.extensions.filter((e) => e.extensionType === "external_pub");
    expect(extensions).toHaveLength(1);
    expect(Buffer.from(extensions[0]!.extensionData)).toEqual(Buffer.from(bytes([0x20], externalPub)));
  });

  it("decodes hand-built extension data, and refuses a bare key or trailing bytes", () => {
    expect(Buffer.from(decodeExternalPub(bytes([0x20], externalPub)))).toEqual(Buffer.from(externalPub));
    // A bare 32-byte key whose first byte reads as a length of 32: one byte short.
    expect(() => decodeExternalPub(new Uint8Array(32).fill(0x20))).toThrow(CodecError);
    expect(() => decodeExternalPub(bytes([0x20], externalPub, [0x00]))).toThrow(CodecError);
  });

  it("lets a joiner commit externally with a GroupInfo carrying the hand-built extension", async () => {
    const groupInfo = await signGroupInfo(
      {
        groupContext: aliceState.groupContext,
        extensions: [{ extensionType: "external_pub", extensionData: bytes([0x20], externalPub) }],
        confirmationTag: aliceState.confirmationTag,
        signer: aliceState.privatePath.leafIndex,
      },
      alice.signaturePrivateKey,
      cs.signature,
    );
    const carol = await member(cs, "@carol:c.example");
    const joined = await joinGroupExternal(
      groupInfo,
      carol.keyPackage,
      carol.privatePackage,
      false,
      cs,
      aliceState.ratchetTree,
    );
    const aliceAfter = await receive(cs, aliceState, {
      version: "mls10",
      wireformat: "mls_public_message",
      publicMessage: joined.publicMessage,
    });
    expect(aliceAfter.groupContext.epoch).toBe(aliceState.groupContext.epoch + 1n);
    expect(aliceAfter.groupContext).toEqual(joined.newState.groupContext);
  });
});
