/**
 * RFC 9420 §7.3, leaf node validation: the encryption_key and signature_key of a new leaf are
 * unique among the members of the group.
 */
import {
  ValidationError,
  createGroupInfoWithExternalPubAndRatchetTree,
  joinGroupExternal,
  type CiphersuiteImpl,
  type ClientState,
} from "../../src/mls/tsMls";
import {
  addProposal,
  aliceAndBob,
  alteredKeyPackage,
  commit,
  leafOf,
  member,
  receive,
  suite,
  type Member,
} from "./support";

let cs: CiphersuiteImpl;
let alice: Member;
let aliceState: ClientState;
let bobState: ClientState;

beforeEach(async () => {
  cs = await suite();
  ({ alice, aliceState, bobState } = await aliceAndBob(cs));
});

describe("key uniqueness of new leaves (RFC 9420 §7.3)", () => {
  it("refuses to add a KeyPackage whose encryption key is a member's", async () => {
    const carol = await member(cs, "@carol:c.example");
    const bobsKey = leafOf(aliceState, 1).hpkePublicKey;
    const duplicate = await alteredKeyPackage(cs, carol, { hpkePublicKey: bobsKey });
    await expect(commit(cs, aliceState, [addProposal(duplicate)])).rejects.toThrow(ValidationError);
    // The same member with its own key is added.
    await expect(commit(cs, aliceState, [addProposal(carol.keyPackage)])).resolves.toBeDefined();
  });

  it("refuses two Adds in one commit that share an encryption key", async () => {
    const carol = await member(cs, "@carol:c.example");
    const dave = await member(cs, "@dave:d.example");
    const sharing = await alteredKeyPackage(cs, dave, {
      hpkePublicKey: carol.keyPackage.leafNode.hpkePublicKey,
    });
    await expect(
      commit(cs, aliceState, [addProposal(carol.keyPackage), addProposal(sharing)]),
    ).rejects.toThrow(ValidationError);
    await expect(
      commit(cs, aliceState, [addProposal(carol.keyPackage), addProposal(dave.keyPackage)]),
    ).resolves.toBeDefined();
  });

  it("refuses an external commit whose leaf has a member's signature key", async () => {
    // A second device of Alice's that reuses her signature key pair, joining as a new member.
    const aliceAgain = await member(cs, "@alice:a.example", { signatureKeysOf: alice });
    const groupInfo = await createGroupInfoWithExternalPubAndRatchetTree(aliceState, [], cs);
    const joined = await joinGroupExternal(
      groupInfo,
      aliceAgain.keyPackage,
      aliceAgain.privatePackage,
      false,
      cs,
    );
    const message = {
      version: "mls10" as const,
      wireformat: "mls_public_message" as const,
      publicMessage: joined.publicMessage,
    };
    await expect(receive(cs, bobState, message)).rejects.toThrow(ValidationError);

    // With keys of its own, the same join is accepted.
    const carol = await member(cs, "@carol:c.example");
    const carolJoined = await joinGroupExternal(groupInfo, carol.keyPackage, carol.privatePackage, false, cs);
    await expect(
      receive(cs, bobState, { ...message, publicMessage: carolJoined.publicMessage }),
    ).resolves.toBeDefined();
  });
});
