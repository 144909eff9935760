/**
 * RFC 9420 §12.4: the path of a Commit is required when it covers no proposal or any proposal of a
 * "path required" type: update, remove, external_init and group_context_extensions.
 */
import {
  ValidationError,
  createConfirmationTag,
  createContentCommitSignature,
  decodeCommit,
  encodeCommit,
  encodeMlsMessage,
  initializeEpoch,
  nextEpochContext,
  protectPublicMessage,
  treeHashRoot,
  type CiphersuiteImpl,
  type ClientState,
  type Commit,
  type MLSMessage,
  type Proposal,
  type UpdatePath,
} from "../../src/mls/tsMls";
import {
  CAPABILITIES_BYTES,
  aliceAndBob,
  basicCredential,
  bytes,
  commit,
  extension,
  member,
  opaque,
  receive,
  suite,
  uint16,
  uint8,
  vector,
  type Member,
} from "./support";

const REQUIRED_CAPABILITIES = 3; // RFC 9420 §17.3
const GROUP_CONTEXT_EXTENSIONS = 7; // RFC 9420 §17.4

// RequiredCapabilities with empty extension_types<V>, proposal_types<V> and credential_types<V> (§11.1).
const requiredCapabilitiesData = bytes(vector([]), vector([]), vector([]));
const groupContextExtensions: Proposal = {
  proposalType: "group_context_extensions",
  groupContextExtensions: {
    extensions: [{ extensionType: "required_capabilities", extensionData: requiredCapabilitiesData }],
  },
};

let cs: CiphersuiteImpl;
let alice: Member;
let aliceState: ClientState;
let bobState: ClientState;

beforeEach(async () => {
  cs = await suite();
  ({ alice, aliceState, bobState } = await aliceAndBob(cs));
});

/** `LeafNode` with leaf_node_source = commit (RFC 9420 §7.2), from the fields of the received one. */
function commitLeafNodeBytes(path: UpdatePath, identity: Uint8Array): Uint8Array {
  const leaf = path.leafNode;
  if (leaf.leafNodeSource !== "commit") throw new Error("expected a commit leaf node");
  return bytes(
    opaque(leaf.hpkePublicKey),
    opaque(leaf.signaturePublicKey),
    basicCredential(identity),
    CAPABILITIES_BYTES,
    uint8(3), // leaf_node_source: commit
    opaque(leaf.parentHash),
    vector([]), // extensions
    opaque(leaf.signature),
  );
}

/** `struct { ProposalOrRef proposals<V>; optional<UpdatePath> path; } Commit`, by hand. */
function gceCommitBytes(path: UpdatePath | undefined, identity: Uint8Array): Uint8Array {
  const proposal = bytes(
    uint8(1), // ProposalOrRefType: proposal
    uint16(GROUP_CONTEXT_EXTENSIONS),
    vector([extension(REQUIRED_CAPABILITIES, requiredCapabilitiesData)]),
  );
  if (path === undefined) return bytes(vector([proposal]), uint8(0));
  const nodes = path.nodes.map((node) =>
    bytes(
      opaque(node.hpkePublicKey),
      vector(node.encryptedPathSecret.map((ct) => bytes(opaque(ct.kemOutput), opaque(ct.ciphertext)))),
    ),
  );
  return bytes(vector([proposal]), uint8(1), commitLeafNodeBytes(path, identity), vector(nodes));
}

function commitOf(message: MLSMessage): Commit {
  if (message.wireformat !== "mls_public_message") throw new Error("expected a public message");
  const content = message.publicMessage.content;
  if (content.contentType !== "commit") throw new Error("expected a commit");
  return content.commit;
}

/** A commit of the GCE proposal without a path, signed, tagged and confirmed as Alice would send it. */
async function pathlessGceCommit(): Promise<MLSMessage> {
  const wireformat = "mls_public_message";
  const proposals = [{ proposalOrRefType: "proposal" as const, proposal: groupContextExtensions }];
  const { framedContent, signature } = await createContentCommitSignature(
    aliceState.groupContext,
    wireformat,
    { proposals, path: undefined },
    { senderType: "member", leafIndex: aliceState.privatePath.leafIndex },
    new Uint8Array(),
    aliceState.signaturePrivateKey,
    cs.signature,
  );
  if (groupContextExtensions.proposalType !== "group_context_extensions") throw new Error("unreachable");
  const nextContext = await nextEpochContext(
    { ...aliceState.groupContext, extensions: groupContextExtensions.groupContextExtensions.extensions },
    wireformat,
    framedContent,
    signature,
    await treeHashRoot(aliceState.ratchetTree, cs.hash),
    aliceState.confirmationTag,
    cs.hash,
  );
  const zeroes = new Uint8Array(cs.kdf.size);
  const epoch = await initializeEpoch(aliceState.keySchedule.initSecret, zeroes, nextContext, zeroes, cs.kdf);
  const confirmationTag = await createConfirmationTag(
    epoch.keySchedule.confirmationKey,
    nextContext.confirmedTranscriptHash,
    cs.hash,
  );
  const publicMessage = await protectPublicMessage(
    aliceState.keySchedule.membershipKey,
    aliceState.groupContext,
    { wireformat, content: framedContent, auth: { contentType: "commit", signature, confirmationTag } },
    cs,
  );
  return { version: "mls10", wireformat, publicMessage };
}

describe("a GroupContextExtensions commit carries a path (RFC 9420 §12.4)", () => {
  it("is encoded with the path present, byte for byte as the hand-built Commit", async () => {
    const { message } = await commit(cs, aliceState, [groupContextExtensions]);
    const sent = commitOf(message);
    expect(sent.path).toBeDefined();
    const expected = gceCommitBytes(sent.path, alice.identity);
    expect(Buffer.from(encodeCommit(sent))).toEqual(Buffer.from(expected));
    // ... and those bytes are on the wire, inside the PublicMessage.
    expect(Buffer.from(encodeMlsMessage(message)).indexOf(Buffer.from(expected))).toBeGreaterThan(0);
    // Decoding the hand-built bytes gives the commit back (the sender's copy has local fields besides).
    const decoded = decodeCommit(expected, 0);
    expect(decoded?.[1]).toBe(expected.length);
    expect(sent).toMatchObject(decoded![0]);
  });

  it("is applied by the other member, who gets the new extensions and the same epoch", async () => {
    const { committer, message } = await commit(cs, aliceState, [groupContextExtensions]);
    // The path secrets are encrypted under the provisional GroupContext, with the new extensions (§12.4.1).
    expect(commitOf(message).path).toBeDefined();
    const bobAfter = await receive(cs, bobState, message);
    expect(bobAfter.groupContext).toEqual(committer.groupContext);
    expect(bobAfter.groupContext.extensions).toEqual([
      { extensionType: "required_capabilities", extensionData: requiredCapabilitiesData },
    ]);
  });

  it("is refused without a path, even when signed and confirmed correctly", async () => {
    const message = await pathlessGceCommit();
    // The hand-built pathless Commit is what was signed: proposals, then optional absent (0).
    expect(Buffer.from(encodeCommit(commitOf(message)))).toEqual(
      Buffer.from(gceCommitBytes(undefined, alice.identity)),
    );
    await expect(receive(cs, bobState, message)).rejects.toThrow(ValidationError);
  });

  it("is still not required of an Add-only commit (add does not require a path)", async () => {
    const carol = await member(cs, "@carol:c.example");
    const { message } = await commit(cs, aliceState, [
      { proposalType: "add", add: { keyPackage: carol.keyPackage } },
    ]);
    expect(commitOf(message).path).toBeUndefined();
    await expect(receive(cs, bobState, message)).resolves.toBeDefined();
  });
});
