import { join } from "node:path";
import {
  commitAccepted,
  commitEventIdForEpoch,
  commitRefused,
  createCommit,
  createHostedGroup,
  decryptMessage,
  encryptMessage,
  ensureClientIdentity,
  joinByExternalCommit,
  joinFromWelcome,
  leavesOf,
  loadHostedGroup,
  loadSuite,
  membersOf,
  processCommit,
  SUPPORTED_ALGORITHM,
  type CredentialPolicy,
  type GroupChange,
  type HostedGroup,
} from "../../src/mls/clients";
import { MlsError } from "../../src/mls/errors";
import { KeyPackagePool } from "../../src/mls/keyPackages";
import { GroupObserver } from "../../src/mls/observer";
import { groupStateKey, groupTreesKey } from "../../src/mls/clients/storeKeys";
import { toBase64, toHex } from "../../src/mls/clients/wire";
import { SUPPORTED_CIPHERSUITE, encodeGroupState } from "../../src/mls/tsMls";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore, TEST_STORE_NAME } from "../support/store";

const ROOM = "!chat:a.example";
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";
const DAVE = "@dave:d.example";

const text = (s: string) => new TextEncoder().encode(s);
const read = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

/** The room's participation as the room layer would answer it: joined users only. */
const joined = new Set<string>();
const policy: CredentialPolicy = (userId, groupId) => joined.has(userId) && read(groupId) === ROOM;

async function expectMlsError(promise: Promise<unknown>, errcode: string, rule?: string): Promise<MlsError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MlsError);
  expect((err as MlsError).errcode).toBe(errcode);
  if (rule !== undefined) expect((err as MlsError).rule).toBe(rule);
  return err as MlsError;
}

describe(`hosted clients on a real ${TEST_STORE_NAME}`, () => {
  let dir: string;
  let store: KvStore;
  let pool: KeyPackagePool;

  /** What the room layer does with an operation's result: commit its ops (with the event), keep the group. */
  async function persist<T extends GroupChange>(change: Promise<T> | T): Promise<T> {
    const result = await change;
    await store.commit(result.ops);
    return result;
  }

  async function reopen(): Promise<void> {
    await store.close();
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    pool = new KeyPackagePool(store);
  }

  async function load(userId: string): Promise<HostedGroup> {
    const group = await loadHostedGroup(store, userId, ROOM, policy);
    expect(group).toBeDefined();
    return group!;
  }

  async function identity(userId: string, kv: KvStore = store) {
    const { identity: id, ops } = await ensureClientIdentity(
      kv,
      userId,
      await loadSuite(SUPPORTED_CIPHERSUITE),
    );
    await kv.commit(ops);
    return id;
  }

  /** `userId` creates the room's group (epoch 0), stored. */
  async function createdGroup(userId: string): Promise<HostedGroup> {
    const created = await persist(
      createHostedGroup({
        identity: await identity(userId),
        roomId: ROOM,
        encryptionAlgorithm: SUPPORTED_ALGORITHM,
        policy,
      }),
    );
    return created.group;
  }

  async function claim(userId: string): Promise<Uint8Array> {
    return (await pool.claim(userId, "mls10", SUPPORTED_CIPHERSUITE)).keyPackage;
  }

  async function joinWith(userId: string, welcome: Uint8Array, commitEventId: string): Promise<HostedGroup> {
    const keys = await pool.keysForWelcome(welcome);
    expect(keys.userId).toBe(userId);
    const joinedGroup = await persist(
      joinFromWelcome({ userId, roomId: ROOM, welcome, commitEventId, keys, policy }),
    );
    return joinedGroup.group;
  }

  /** Alice's group with Bob added from a claimed KeyPackage and joined by Welcome ("$c1"). */
  async function aliceWithBob(): Promise<{ alice: HostedGroup; bob: HostedGroup }> {
    joined.add(ALICE).add(BOB);
    await pool.replenish(BOB);
    const created = await createdGroup(ALICE);
    const adding = await persist(createCommit(created, { add: [await claim(BOB)] }));
    const alice = (await persist(commitAccepted(adding.group, "$c1"))).group;
    return { alice, bob: await joinWith(BOB, adding.welcome!, "$c1") };
  }

  beforeEach(async () => {
    dir = tempDir("mls-clients");
    store = await openTestStore(join(dir, "db"), { durability: "os" });
    pool = new KeyPackagePool(store);
    joined.clear();
  });

  afterEach(async () => {
    await store.close();
    removeDir(dir);
  });

  test("create, add from claimed KeyPackages, talk, reopen, remove, external join", async () => {
    joined.add(ALICE).add(BOB).add(CAROL);
    await pool.replenish(BOB);
    await pool.replenish(CAROL);

    // Alice creates the group (epoch 0); her first commit establishes it in the room (epoch 1).
    let alice = await createdGroup(ALICE);
    expect(alice.state!.groupContext.epoch).toBe(0n);
    const first = await persist(createCommit(alice));
    alice = (await persist(commitAccepted(first.group, "$commit1"))).group;
    expect(alice.state!.groupContext.epoch).toBe(1n);
    // The hub's observer starts from the first commit's GroupInfo and checks every later commit.
    let hub = GroupObserver.fromGroupInfo(first.groupInfo);
    const hubAccepts = (commit: { commit: Uint8Array; groupInfo: Uint8Array }) => {
      hub = hub.validateCommit(commit.commit, commit.groupInfo).observer;
      return hub.epoch;
    };

    // She adds Bob and Carol from KeyPackages claimed from their pools.
    const adding = await persist(createCommit(alice, { add: [await claim(BOB), await claim(CAROL)] }));
    expect(adding.welcome).toBeDefined();
    expect(hubAccepts(adding)).toBe(2n);
    alice = (await persist(commitAccepted(adding.group, "$commit2"))).group;
    let bob = await joinWith(BOB, adding.welcome!, "$commit2");
    let carol = await joinWith(CAROL, adding.welcome!, "$commit2");
    expect(bob.state!.groupContext.epoch).toBe(2n);
    expect(membersOf(bob).map((m) => m.userId)).toEqual([ALICE, BOB, CAROL]);
    // A one-time KeyPackage's private keys are gone once its Welcome is used.
    await expectMlsError(pool.keysForWelcome(adding.welcome!), "M_NOT_FOUND", "welcome.keypackage");

    const hello = await persist(encryptMessage(alice, text("hello")));
    alice = hello.group;
    expect(hello.commitEventId).toBe("$commit2");
    const atBob = await persist(decryptMessage(bob, hello.ciphertext));
    bob = atBob.group;
    expect(read(atBob.plaintext)).toBe("hello");
    expect(atBob.senderUserId).toBe(ALICE);
    carol = (await persist(decryptMessage(carol, hello.ciphertext))).group;

    // Restart: everything comes back from the store, secrets included.
    await reopen();
    alice = await load(ALICE);
    bob = await load(BOB);
    carol = await load(CAROL);
    expect(alice.commitEventId).toBe("$commit2");
    const fromBob = await persist(encryptMessage(bob, text("still here")));
    bob = fromBob.group;
    const atAlice = await persist(decryptMessage(alice, fromBob.ciphertext));
    alice = atAlice.group;
    expect([read(atAlice.plaintext), atAlice.senderUserId]).toEqual(["still here", BOB]);
    carol = (await persist(decryptMessage(carol, fromBob.ciphertext))).group;
    // Alice's sending ratchet came back where it was: her next message uses a fresh key, which
    // Bob (who consumed the key of "hello") accepts.
    const again = await persist(encryptMessage(alice, text("and again")));
    alice = again.group;
    const againAtBob = await persist(decryptMessage(bob, again.ciphertext));
    bob = againAtBob.group;
    expect(read(againAtBob.plaintext)).toBe("and again");
    // A message decrypts once: its key is deleted, and that deletion was stored.
    await expectMlsError(
      decryptMessage(await load(CAROL), fromBob.ciphertext),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
    );

    // Carol leaves the room; Alice removes her client.
    joined.delete(CAROL);
    const removing = await persist(createCommit(alice, { remove: leavesOf(alice, CAROL) }));
    expect(hubAccepts(removing)).toBe(3n);
    alice = (await persist(commitAccepted(removing.group, "$commit3"))).group;
    const bobSees = await persist(processCommit(bob, removing.commit, "$commit3"));
    bob = bobSees.group;
    expect([bobSees.epoch, bobSees.removed, bobSees.own]).toEqual([3n, false, false]);
    const carolSees = await persist(processCommit(carol, removing.commit, "$commit3"));
    expect(carolSees.removed).toBe(true);
    carol = carolSees.group;

    const secret = await persist(encryptMessage(alice, text("without carol")));
    alice = secret.group;
    bob = (await persist(decryptMessage(bob, secret.ciphertext))).group;
    await expectMlsError(
      decryptMessage(carol, secret.ciphertext),
      "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
      "decrypt.removed",
    );
    await expectMlsError(encryptMessage(carol, text("hello?")), "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER");

    // Dave joins by external commit from the GroupInfo the last commit published.
    joined.add(DAVE);
    const external = await persist(
      joinByExternalCommit({
        identity: await identity(DAVE),
        roomId: ROOM,
        groupInfo: removing.groupInfo,
        policy,
      }),
    );
    expect(external.group.state).toBeUndefined();
    expect(hubAccepts(external)).toBe(4n);
    await reopen(); // the pending external commit survives a restart too
    let dave = await load(DAVE);
    const daveSees = await persist(processCommit(dave, external.commit, "$commit4"));
    expect(daveSees.own).toBe(true);
    dave = daveSees.group;
    alice = (await persist(processCommit(await load(ALICE), external.commit, "$commit4"))).group;
    bob = (await persist(processCommit(await load(BOB), external.commit, "$commit4"))).group;
    expect(membersOf(alice).map((m) => m.userId)).toEqual(membersOf(dave).map((m) => m.userId));
    expect(membersOf(dave).map((m) => m.userId)).toContain(DAVE);

    const fromDave = await persist(encryptMessage(dave, text("hi, I am dave")));
    expect(fromDave.commitEventId).toBe("$commit4");
    const daveAtBob = await decryptMessage(bob, fromDave.ciphertext);
    expect([read(daveAtBob.plaintext), daveAtBob.senderUserId, daveAtBob.epoch]).toEqual([
      "hi, I am dave",
      DAVE,
      4n,
    ]);

    // Every client recorded which event began each epoch it saw.
    expect(await commitEventIdForEpoch(store, ALICE, ROOM, 1n)).toBe("$commit1");
    expect(await commitEventIdForEpoch(store, BOB, ROOM, 2n)).toBe("$commit2");
    expect(await commitEventIdForEpoch(store, BOB, ROOM, 3n)).toBe("$commit3");
    expect(await commitEventIdForEpoch(store, CAROL, ROOM, 3n)).toBeUndefined();
    expect(await commitEventIdForEpoch(store, DAVE, ROOM, 4n)).toBe("$commit4");
  });

  test("two commits for one epoch: the loser's pending commit is dropped and it follows the winner", async () => {
    let { alice, bob } = await aliceWithBob();

    const fromAlice = await persist(createCommit(alice));
    const fromBob = await persist(createCommit(bob));
    // A client with a commit in flight does not make a second one.
    await expectMlsError(createCommit(fromBob.group), "M_INVALID_PARAM", "commit.pending");

    await reopen();
    bob = await load(BOB);
    expect(bob.pending).toBeDefined();
    // The hub sequenced Alice's commit; Bob's for the same epoch lost.
    alice = (await persist(processCommit(await load(ALICE), fromAlice.commit, "$c2"))).group;
    const bobSees = await persist(processCommit(bob, fromAlice.commit, "$c2"));
    expect([bobSees.own, bobSees.epoch]).toEqual([false, 2n]);
    bob = await load(BOB);
    expect(bob.pending).toBeUndefined();
    expect(bob.state!.groupContext.epoch).toBe(2n);
    // Bob's losing commit, if it ever came back, is for an epoch gone by.
    await expectMlsError(processCommit(alice, fromBob.commit, "$late"), "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH");

    // A refused commit leaves the client where it was, and it can commit again.
    const retry = await persist(createCommit(bob));
    const refused = await persist(commitRefused(retry.group));
    expect(refused.group.pending).toBeUndefined();
    expect((await load(BOB)).pending).toBeUndefined();
    const again = await persist(createCommit(refused.group));
    alice = (await persist(processCommit(alice, again.commit, "$c3"))).group;
    bob = (await persist(commitAccepted(again.group, "$c3"))).group;
    const message = await persist(encryptMessage(bob, text("rebased")));
    expect(read((await decryptMessage(alice, message.ciphertext)).plaintext)).toBe("rebased");
  });

  test("the trees are stored apart from the secrets, written only by what changes them, and past trees come back", async () => {
    let { alice, bob } = await aliceWithBob();
    const treesKey = groupTreesKey(BOB, ROOM);
    // Four commits: Bob keeps the trees of the past epochs to read late messages of them.
    const late: Uint8Array[] = [];
    for (let i = 2; i <= 5; i++) {
      late.push((await persist(encryptMessage(alice, text(`late ${i - 1}`)))).ciphertext);
      const next = await persist(createCommit(alice));
      alice = (await persist(commitAccepted(next.group, `$c${i}`))).group;
      const seen = await persist(processCommit(bob, next.commit, `$c${i}`));
      expect(seen.ops.map((op) => op.key)).toContain(treesKey);
      bob = seen.group;
    }
    expect(bob.state!.historicalReceiverData.size).toBeGreaterThanOrEqual(3);

    // A message changes the secrets only.
    const hello = await encryptMessage(alice, text("hello"));
    expect(hello.ops.map((op) => op.key)).toEqual([groupStateKey(ALICE, ROOM)]);
    const atBob = await persist(decryptMessage(bob, hello.ciphertext));
    expect(atBob.ops.map((op) => op.key)).toEqual([groupStateKey(BOB, ROOM)]);
    bob = atBob.group;
    const record = JSON.parse((await store.get(groupStateKey(BOB, ROOM)))!) as Record<string, unknown>;
    expect(record.format).toBe(2);
    expect(record.state).toBeUndefined();

    // The state read back is the state written, past trees included, byte for byte.
    await reopen();
    const loaded = await load(BOB);
    expect(toHex(encodeGroupState(loaded.state!))).toBe(toHex(encodeGroupState(bob.state!)));
    // The past epochs' trees work: the messages sent before each commit still decrypt.
    let reader = loaded;
    for (const [i, ciphertext] of late.slice(-3).entries()) {
      const read = await decryptMessage(reader, ciphertext);
      expect(new TextDecoder().decode(read.plaintext)).toBe(`late ${i + 2}`);
      reader = read.group;
    }
  });

  test("a state stored whole by an earlier release loads, and its trees are written with the next change", async () => {
    const started = await aliceWithBob();
    let alice = started.alice;
    const bob = started.bob;
    // The record as releases before the split wrote it: the whole state inline, no trees key.
    await store.commit([
      {
        type: "put",
        key: groupStateKey(BOB, ROOM),
        value: JSON.stringify({ state: toBase64(encodeGroupState(bob.state!)), commitEventId: "$c1" }),
      },
      { type: "del", key: groupTreesKey(BOB, ROOM) },
    ]);
    await reopen();
    const old = await load(BOB);
    expect(toHex(encodeGroupState(old.state!))).toBe(toHex(encodeGroupState(bob.state!)));
    const hello = await persist(encryptMessage(alice, text("hello")));
    alice = hello.group;
    // A message does not change the trees, but they are not under their key yet: written now.
    const atBob = await persist(decryptMessage(old, hello.ciphertext));
    expect(atBob.ops.map((op) => op.key)).toEqual([groupStateKey(BOB, ROOM), groupTreesKey(BOB, ROOM)]);
    await reopen();
    const again = await load(BOB);
    expect(toHex(encodeGroupState(again.state!))).toBe(toHex(encodeGroupState(atBob.group.state!)));
    expect(
      read((await decryptMessage(again, (await encryptMessage(alice, text("more"))).ciphertext)).plaintext),
    ).toBe("more");
  });

  test("the room's algorithm must be the supported one", async () => {
    await expectMlsError(
      createHostedGroup({
        identity: await identity(ALICE),
        roomId: ROOM,
        encryptionAlgorithm: "m.mls.v1.dhkemp256-aes128gcm-sha256-p256",
        policy,
      }),
      "IO.MIMI_APPSERVICE.MLS_UNSUPPORTED",
      "suite.algorithm",
    );
  });

  test("malformed and misdirected input is refused with its code", async () => {
    joined.add(ALICE);
    let alice = await createdGroup(ALICE);
    // No commit yet: a message would have no commit_event_id to name.
    await expectMlsError(
      encryptMessage(alice, text("x")),
      "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
      "encrypt.no_commit",
    );
    const first = await persist(createCommit(alice));
    alice = (await persist(commitAccepted(first.group, "$c1"))).group;

    const message = (await encryptMessage(alice, text("x"))).ciphertext;
    await expectMlsError(
      decryptMessage(alice, Uint8Array.of(...message, 0)),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decode.trailing",
    );
    await expectMlsError(decryptMessage(alice, message.subarray(0, 10)), "IO.MIMI_APPSERVICE.MLS_MALFORMED");
    await expectMlsError(
      processCommit(alice, message, "$x"),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
      "decode.wireformat",
    );
    await expectMlsError(
      createCommit(alice, { add: [Uint8Array.of(1, 2, 3)] }),
      "IO.MIMI_APPSERVICE.MLS_MALFORMED",
    );
    // RFC 9420 §12.2: a committer does not remove itself, and a blank leaf is no one to remove.
    await expectMlsError(
      createCommit(alice, { remove: [0] }),
      "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      "commit.create",
    );
    await expectMlsError(
      createCommit(alice, { remove: [5] }),
      "IO.MIMI_APPSERVICE.MLS_BAD_PROPOSAL",
      "commit.create",
    );

    // A commit of another room's group.
    const otherRoom = "!other:a.example";
    const other = await createHostedGroup({
      identity: await identity(ALICE),
      roomId: otherRoom,
      encryptionAlgorithm: SUPPORTED_ALGORITHM,
      policy: () => true,
    });
    const otherCommit = await createCommit(other.group);
    await expectMlsError(
      processCommit(alice, otherCommit.commit, "$y"),
      "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
    );
    await expectMlsError(
      joinByExternalCommit({
        identity: await identity(BOB),
        roomId: ROOM,
        groupInfo: otherCommit.groupInfo,
        policy,
      }),
      "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
    );
  });
});
