import { join } from "node:path";
import {
  HOSTED_CAPABILITIES,
  MimiAuthenticationService,
  SUPPORTED_ALGORITHM,
  commitAccepted,
  createCommit,
  createHostedGroup,
  ensureClientIdentity,
  joinByExternalCommit,
  joinFromWelcome,
  loadSuite,
  processCommit,
  type CredentialPolicy,
  type HostedGroup,
} from "../../src/mls/clients";
import { MlsError } from "../../src/mls/errors";
import { KeyPackagePool } from "../../src/mls/keyPackages";
import {
  SUPPORTED_CIPHERSUITE,
  defaultLifetime,
  encodeKeyPackage,
  generateKeyPackage,
  type Credential,
} from "../../src/mls/tsMls";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore } from "../support/store";

const ROOM = "!auth:a.example";
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";
const DAVE = "@dave:d.example";
const utf8 = new TextEncoder();

async function expectMlsError(promise: Promise<unknown>, errcode: string): Promise<MlsError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MlsError);
  expect((err as MlsError).errcode).toBe(errcode);
  return err as MlsError;
}

describe("the authentication service (never accept-all)", () => {
  const groupId = utf8.encode(ROOM);
  const asked: [string, string][] = [];
  const policy: CredentialPolicy = (userId, group) => {
    asked.push([userId, new TextDecoder().decode(group)]);
    return userId === ALICE;
  };
  const basic = (identity: Uint8Array): Credential => ({ credentialType: "basic", identity });

  test.each<[string, Credential, boolean]>([
    ["a basic credential of an allowed user", basic(utf8.encode(ALICE)), true],
    ["a basic credential of a user the room refuses", basic(utf8.encode(BOB)), false],
    ["an x509 credential", { credentialType: "x509", certificates: [Uint8Array.of(0x30, 0x00)] }, false],
    ["an identity that is not UTF-8", basic(Uint8Array.of(0x40, 0xff, 0xfe)), false],
    ["an identity that is not a MIMI user ID", basic(utf8.encode("alice")), false],
    ["an identity with an upper-case localpart", basic(utf8.encode("@Alice:a.example")), false],
  ])("%s", async (_name, credential, accepted) => {
    const service = new MimiAuthenticationService(groupId, policy);
    expect(await service.validateCredential(credential)).toBe(accepted);
    expect(service.refusals).toHaveLength(accepted ? 0 : 1);
  });

  test("the policy is asked with the user ID and the group", async () => {
    asked.length = 0;
    await new MimiAuthenticationService(groupId, policy).validateCredential(basic(utf8.encode(BOB)));
    expect(asked).toEqual([[BOB, ROOM]]);
  });
});

describe("credentials the room refuses, through real ts-mls", () => {
  let dir: string;
  let store: KvStore;
  let pool: KeyPackagePool;
  /** Each provider's view of who is joined: the policy each user's client is given. */
  const joinedAt = new Map<string, Set<string>>();
  const policyOf =
    (userId: string): CredentialPolicy =>
    (member) =>
      joinedAt.get(userId)?.has(member) ?? false;

  async function identity(userId: string) {
    const { identity: id, ops } = await ensureClientIdentity(
      store,
      userId,
      await loadSuite(SUPPORTED_CIPHERSUITE),
    );
    await store.commit(ops);
    return id;
  }

  async function claim(userId: string): Promise<Uint8Array> {
    await pool.replenish(userId);
    return (await pool.claim(userId, "mls10", SUPPORTED_CIPHERSUITE)).keyPackage;
  }

  /** Alice's new group of the room (epoch 0). */
  async function aliceCreates() {
    return createHostedGroup({
      identity: await identity(ALICE),
      roomId: ROOM,
      encryptionAlgorithm: SUPPORTED_ALGORITHM,
      policy: policyOf(ALICE),
    });
  }

  /** Bob joins from the Welcome of the commit `$c1`, with his own provider's room policy. */
  function bobJoins(welcome: Uint8Array, keys: Awaited<ReturnType<KeyPackagePool["keysForWelcome"]>>) {
    return joinFromWelcome({
      userId: BOB,
      roomId: ROOM,
      welcome,
      commitEventId: "$c1",
      keys,
      policy: policyOf(BOB),
    });
  }

  /** Alice's group at epoch 1, Bob added from a Welcome. */
  async function aliceAndBob(): Promise<{ alice: HostedGroup; bob: HostedGroup }> {
    const created = await aliceCreates();
    const adding = await createCommit(created.group, { add: [await claim(BOB)] });
    const alice = commitAccepted(adding.group, "$c1").group;
    const keys = await pool.keysForWelcome(adding.welcome!);
    const bob = (await bobJoins(adding.welcome!, keys)).group;
    return { alice, bob };
  }

  beforeEach(async () => {
    dir = tempDir("mls-auth");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    pool = new KeyPackagePool(store);
    joinedAt.clear();
    joinedAt.set(ALICE, new Set([ALICE, BOB]));
    joinedAt.set(BOB, new Set([ALICE, BOB]));
  });

  afterEach(async () => {
    await store.close();
    removeDir(dir);
  });

  test("an Add of a user the room does not allow is refused, and nothing changes", async () => {
    const { alice } = await aliceAndBob();
    const err = await expectMlsError(
      createCommit(alice, { add: [await claim(CAROL)] }),
      "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
    );
    expect(err.message).toContain(CAROL);
    expect(alice.pending).toBeUndefined();
    expect(alice.state!.groupContext.epoch).toBe(1n);
  });

  test("an Add whose basic credential names no MIMI user is refused", async () => {
    const { alice } = await aliceAndBob();
    const cs = await loadSuite(SUPPORTED_CIPHERSUITE);
    const { publicPackage } = await generateKeyPackage(
      { credentialType: "basic", identity: utf8.encode("carol") },
      HOSTED_CAPABILITIES,
      defaultLifetime,
      [],
      cs,
    );
    await expectMlsError(
      createCommit(alice, { add: [encodeKeyPackage(publicPackage)] }),
      "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
    );
  });

  test("a Welcome into a group with a member the joiner's room does not allow is refused", async () => {
    joinedAt.get(ALICE)!.add(CAROL);
    const created = await aliceCreates();
    const adding = await createCommit(created.group, { add: [await claim(BOB), await claim(CAROL)] });
    const keys = await pool.keysForWelcome(adding.welcome!);
    expect(keys.userId).toBe(BOB);
    // At Bob's provider Carol is not joined to the room: the tree she is in is refused.
    await expectMlsError(bobJoins(adding.welcome!, keys), "IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    // The refused join consumed nothing: the KeyPackage's keys are still there.
    expect((await pool.keysForWelcome(adding.welcome!)).ref).toBe(keys.ref);
  });

  test("a received commit adding a user the receiver's room does not allow is refused", async () => {
    const { alice, bob } = await aliceAndBob();
    joinedAt.get(ALICE)!.add(CAROL);
    const adding = await createCommit(alice, { add: [await claim(CAROL)] });
    await expectMlsError(processCommit(bob, adding.commit, "$c2"), "IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(bob.state!.groupContext.epoch).toBe(1n);
  });

  test("an external commit by a user the members' room does not allow is refused", async () => {
    const { alice } = await aliceAndBob();
    const second = await createCommit(alice);
    const aliceAt2 = commitAccepted(second.group, "$c2").group;
    const external = await joinByExternalCommit({
      identity: await identity(DAVE),
      roomId: ROOM,
      groupInfo: second.groupInfo,
      policy: () => true,
    });
    await expectMlsError(processCommit(aliceAt2, external.commit, "$c3"), "IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    // Dave's own client refuses to join a group whose members its room does not allow.
    await expectMlsError(
      joinByExternalCommit({
        identity: await identity(DAVE),
        roomId: ROOM,
        groupInfo: second.groupInfo,
        policy: policyOf(DAVE),
      }),
      "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
    );
  });
});
