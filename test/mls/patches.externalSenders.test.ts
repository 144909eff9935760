/**
 * RFC 9420 §12.1.8.1: the external_senders extension holds `ExternalSender external_senders<V>`,
 * a vector, and an external sender's `sender_index` (§6.1) indexes that vector.
 */
import {
  createGroupInfoWithExternalPub,
  decodeExternalSenders,
  encodeExternalSenders,
  proposeExternal,
  type CiphersuiteImpl,
  type ExternalSender,
} from "../../src/mls/tsMls";
import { basicCredential, bytes, opaque, receive, suite, aliceAndBob, removeProposal } from "./support";

let cs: CiphersuiteImpl;
let first: { sender: ExternalSender; signKey: Uint8Array };
let second: { sender: ExternalSender; signKey: Uint8Array };
let handBuilt: Uint8Array;

async function externalSender(identity: string) {
  const keys = await cs.signature.keygen();
  const sender: ExternalSender = {
    signaturePublicKey: keys.publicKey,
    credential: { credentialType: "basic", identity: new TextEncoder().encode(identity) },
  };
  return { sender, signKey: keys.signKey };
}

/** `struct { SignaturePublicKey signature_key; Credential credential; } ExternalSender` by hand. */
function externalSenderBytes(sender: ExternalSender): Uint8Array {
  if (sender.credential.credentialType !== "basic") throw new Error("basic credentials only");
  return bytes(opaque(sender.signaturePublicKey), basicCredential(sender.credential.identity));
}

beforeAll(async () => {
  cs = await suite();
  first = await externalSender("hub.a.example");
  second = await externalSender("hub.b.example");
  const entries = bytes(externalSenderBytes(first.sender), externalSenderBytes(second.sender));
  // Two entries of 1+32 (key) + 2+1+13 (credential) bytes: 98 bytes, so a 2-byte length prefix.
  expect(entries.length).toBe(98);
  handBuilt = bytes([0x40, 98], entries);
});

describe("external_senders (RFC 9420 §12.1.8.1)", () => {
  it("encodes the extension data as a vector of ExternalSender, byte for byte", () => {
    expect(Buffer.from(encodeExternalSenders([first.sender, second.sender]))).toEqual(Buffer.from(handBuilt));
  });

  it("decodes the hand-built vector", () => {
    const decoded = decodeExternalSenders(handBuilt, 0);
    expect(decoded?.[1]).toBe(handBuilt.length);
    expect(decoded?.[0]).toEqual([first.sender, second.sender]);
  });

  it("accepts a proposal from the second external sender of a hand-built extension, as sender_index 1", async () => {
    const { aliceState } = await aliceAndBob(cs, [
      { extensionType: "external_senders", extensionData: handBuilt },
    ]);
    const groupInfo = await createGroupInfoWithExternalPub(aliceState, [], cs);
    const message = await proposeExternal(
      groupInfo,
      removeProposal(1),
      second.sender.signaturePublicKey,
      second.signKey,
      cs,
    );
    if (message.wireformat !== "mls_public_message") throw new Error("expected a public message");
    expect(message.publicMessage.content.sender).toEqual({ senderType: "external", senderIndex: 1 });

    const afterProposal = await receive(cs, aliceState, message);
    expect(Object.keys(afterProposal.unappliedProposals)).toHaveLength(1);
  });
});
