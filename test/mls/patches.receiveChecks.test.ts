/**
 * Checks on received messages: the group_id of a message (RFC 9420 §6), the KeyPackage of an Add
 * (§10.1, §7.3: lifetime, cipher suite, version) and the Remove of an external Commit (§12.2).
 */
import {
  ValidationError,
  acceptAll,
  createGroupInfoWithExternalPubAndRatchetTree,
  defaultClientConfig,
  joinGroupExternal,
  makePskIndex,
  processMessage,
  protect,
  protectPublicMessage,
  signFramedContentApplicationOrProposal,
  type CiphersuiteImpl,
  type ClientState,
  type FramedContentTBSApplicationOrProposal,
  type KeyPackage,
  type LeafNode,
  type MLSMessage,
  type PublicMessage,
} from "../../src/mls/tsMls";
import {
  addProposal,
  aliceAndBob,
  alteredKeyPackage,
  commit,
  join,
  member,
  receive,
  removeProposal,
  suite,
  type Member,
} from "./support";

let cs: CiphersuiteImpl;
let bob: Member;
let aliceState: ClientState;
let bobState: ClientState;
const otherGroupId = new TextEncoder().encode("another group");

beforeEach(async () => {
  cs = await suite();
  ({ bob, aliceState, bobState } = await aliceAndBob(cs));
});

function publicMessage(publicMessage: PublicMessage): MLSMessage {
  return { version: "mls10", wireformat: "mls_public_message", publicMessage };
}

/** Bob's content signed over the group's real GroupContext, whatever its group_id field says. */
async function signedByBob(
  groupId: Uint8Array,
  body: { contentType: "application"; applicationData: Uint8Array },
) {
  const tbs: FramedContentTBSApplicationOrProposal = {
    protocolVersion: "mls10",
    wireformat: "mls_private_message",
    content: {
      ...body,
      groupId,
      epoch: bobState.groupContext.epoch,
      sender: { senderType: "member", leafIndex: bobState.privatePath.leafIndex },
      authenticatedData: new Uint8Array(),
    },
    senderType: "member",
    context: bobState.groupContext,
  };
  return {
    content: tbs.content,
    auth: await signFramedContentApplicationOrProposal(bobState.signaturePrivateKey, tbs, cs),
  };
}

describe("the group_id of a received message (RFC 9420 §6)", () => {
  it("refuses a PublicMessage proposal that names another group", async () => {
    const proposal = removeProposal(0);
    const build = async (groupId: Uint8Array) => {
      const content = {
        groupId,
        epoch: bobState.groupContext.epoch,
        sender: { senderType: "member" as const, leafIndex: bobState.privatePath.leafIndex },
        authenticatedData: new Uint8Array(),
        contentType: "proposal" as const,
        proposal,
      };
      const auth = await signFramedContentApplicationOrProposal(
        bobState.signaturePrivateKey,
        {
          protocolVersion: "mls10",
          wireformat: "mls_public_message",
          content,
          senderType: "member",
          context: bobState.groupContext,
        },
        cs,
      );
      return publicMessage(
        await protectPublicMessage(
          bobState.keySchedule.membershipKey,
          bobState.groupContext,
          { wireformat: "mls_public_message", content, auth },
          cs,
        ),
      );
    };
    // Signed and tagged correctly: accepted with the group's id, refused with another.
    await expect(
      receive(cs, aliceState, await build(aliceState.groupContext.groupId)),
    ).resolves.toBeDefined();
    await expect(receive(cs, aliceState, await build(otherGroupId))).rejects.toThrow(ValidationError);
  });

  it("refuses a PrivateMessage that names another group", async () => {
    const build = async (groupId: Uint8Array) => {
      const { content, auth } = await signedByBob(groupId, {
        contentType: "application",
        applicationData: new TextEncoder().encode("hello"),
      });
      const { privateMessage } = await protect(
        bobState.keySchedule.senderDataSecret,
        new Uint8Array(),
        { ...bobState.groupContext, groupId },
        bobState.secretTree,
        { ...content, auth },
        bobState.privatePath.leafIndex,
        bobState.clientConfig.paddingConfig,
        cs,
      );
      const message: MLSMessage = { version: "mls10", wireformat: "mls_private_message", privateMessage };
      return message;
    };
    const own = await processMessage(
      await build(aliceState.groupContext.groupId),
      aliceState,
      makePskIndex(aliceState, {}),
      acceptAll,
      cs,
    );
    expect(own.kind).toBe("applicationMessage");
    await expect(
      processMessage(await build(otherGroupId), aliceState, makePskIndex(aliceState, {}), acceptAll, cs),
    ).rejects.toThrow(ValidationError);
  });
});

describe("the sender data of a received PrivateMessage (RFC 9420 §6.3.2)", () => {
  it("refuses a leaf_index that names a blank leaf before using any key", async () => {
    // Alice, Bob and Carol; Bob is removed, so leaf 1 is blank inside the tree.
    const carol = await member(cs, "@carol:c.example");
    const added = await commit(cs, aliceState, [addProposal(carol.keyPackage)]);
    const carolState = await join(cs, carol, added.welcome);
    const removed = await commit(cs, added.committer, [removeProposal(1)]);
    const alice = removed.committer;
    const atCarol = await receive(cs, carolState, removed.message);
    expect(alice.ratchetTree[2]).toBeUndefined();
    // Alice frames a message as if from leaf 1 (she can derive its ratchet: she has the tree).
    const content = {
      contentType: "application" as const,
      applicationData: new TextEncoder().encode("from nobody"),
      groupId: alice.groupContext.groupId,
      epoch: alice.groupContext.epoch,
      sender: { senderType: "member" as const, leafIndex: 1 },
      authenticatedData: new Uint8Array(),
    };
    const auth = await signFramedContentApplicationOrProposal(
      alice.signaturePrivateKey,
      {
        protocolVersion: "mls10",
        wireformat: "mls_private_message",
        content,
        senderType: "member",
        context: alice.groupContext,
      },
      cs,
    );
    const { privateMessage } = await protect(
      alice.keySchedule.senderDataSecret,
      new Uint8Array(),
      alice.groupContext,
      alice.secretTree,
      { ...content, auth },
      1,
      alice.clientConfig.paddingConfig,
      cs,
    );
    const message: MLSMessage = { version: "mls10", wireformat: "mls_private_message", privateMessage };
    await expect(processMessage(message, atCarol, makePskIndex(atCarol, {}), acceptAll, cs)).rejects.toThrow(
      "SenderData did not point to a non-blank leaf node",
    );
  });
});

describe("the KeyPackage of a received Add (RFC 9420 §10.1, §7.3)", () => {
  async function untilAfter(seconds: bigint): Promise<void> {
    while (BigInt(Math.floor(Date.now() / 1000)) <= seconds)
      await new Promise((resolve) => setTimeout(resolve, 50));
  }

  it("refuses by default a KeyPackage that has expired when the commit arrives", async () => {
    const now = BigInt(Math.floor(Date.now() / 1000));
    const carol = await member(cs, "@carol:c.example", {
      lifetime: { notBefore: now - 60n, notAfter: now + 1n },
    });
    // Valid when Alice commits...
    const { message } = await commit(cs, aliceState, [addProposal(carol.keyPackage)]);
    // ... expired when Bob receives it, with the default client configuration.
    await untilAfter(now + 1n);
    expect(bobState.clientConfig).toBe(defaultClientConfig);
    await expect(receive(cs, bobState, message)).rejects.toThrow(ValidationError);
  });

  it("refuses a KeyPackage of another cipher suite or protocol version", async () => {
    const carol = await member(cs, "@carol:c.example");
    const wrongSuite: KeyPackage = await alteredKeyPackage(cs, carol, {
      cipherSuite: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
    });
    await expect(commit(cs, aliceState, [addProposal(wrongSuite)])).rejects.toThrow(ValidationError);
    const wrongVersion = { ...carol.keyPackage, version: "mls20" } as unknown as KeyPackage;
    await expect(commit(cs, aliceState, [addProposal(wrongVersion)])).rejects.toThrow(ValidationError);
    await expect(commit(cs, aliceState, [addProposal(carol.keyPackage)])).resolves.toBeDefined();
  });
});

describe("the Remove of an external commit (RFC 9420 §12.2)", () => {
  it("accepts a resync that removes the joiner's own old leaf", async () => {
    const bobAgain = await member(cs, "@bob:b.example", { signatureKeysOf: bob });
    const groupInfo = await createGroupInfoWithExternalPubAndRatchetTree(aliceState, [], cs);
    const joined = await joinGroupExternal(groupInfo, bobAgain.keyPackage, bobAgain.privatePackage, true, cs);
    const aliceAfter = await receive(cs, aliceState, publicMessage(joined.publicMessage));
    expect(aliceAfter.groupContext).toEqual(joined.newState.groupContext);
  });

  it("refuses an external commit that removes another member", async () => {
    const mallory = await member(cs, "@mallory:m.example");
    const groupInfo = await createGroupInfoWithExternalPubAndRatchetTree(aliceState, [], cs);
    // Mallory's client takes Bob's leaf for her own.
    const config = {
      ...defaultClientConfig,
      keyPackageEqualityConfig: {
        ...defaultClientConfig.keyPackageEqualityConfig,
        compareKeyPackageToLeafNode: (_keyPackage: KeyPackage, leaf: LeafNode) =>
          leaf.credential.credentialType === "basic" &&
          new TextDecoder().decode(leaf.credential.identity) === "@bob:b.example",
      },
    };
    const joined = await joinGroupExternal(
      groupInfo,
      mallory.keyPackage,
      mallory.privatePackage,
      true,
      cs,
      undefined,
      config,
    );
    const commitContent = joined.publicMessage.content;
    if (commitContent.contentType !== "commit") throw new Error("expected a commit");
    expect(
      commitContent.commit.proposals.map((p) => p.proposalOrRefType === "proposal" && p.proposal),
    ).toContainEqual(removeProposal(1));
    await expect(receive(cs, aliceState, publicMessage(joined.publicMessage))).rejects.toThrow(
      ValidationError,
    );
  });
});
