/**
 * MLS as users meet it: (1) a member's hosted client processing one commit in groups of 100 and
 * 1,000 members; (2) application-message latency, encrypt at the hub's user -> hub -> decrypt at
 * two followers' users, and messages per second through one hub with MLS on against the same run
 * with plain events. Three providers in this process, real HTTP on 127.0.0.1, LevelDB with fsync.
 * BENCH_MLS_MEMBER_SIZES (default 100,1000), BENCH_MLS_MESSAGES (default 300) set the sizes.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../src/config/config";
import {
  commitAccepted,
  createCommit,
  createHostedGroup,
  joinFromWelcome,
  newClientIdentity,
  processCommit,
  type HostedGroup,
} from "../src/mls/clients";
import { generateClientKeyPackage } from "../src/mls/clients/identity";
import { SUPPORTED_ALGORITHM, loadSuite } from "../src/mls/clients/suite";
import { SUPPORTED_CIPHERSUITE, encodeKeyPackage } from "../src/mls/tsMls";
import { MimiProvider } from "../src/provider/provider";
import { freePort } from "../src/util/freePort";
import { ADMIN_TOKEN, startProviders, stopProviders, type BenchProvider } from "./providerProcess";
import { fmt, median, percentile, removeDir, tempDir } from "./util";

const allow = () => true;

/** A member (not the committer) processing commits in a group of `members`. */
export async function memberProcessing(
  members: number,
  commits: number,
): Promise<{ medianMs: number; p99Ms: number }> {
  const cs = await loadSuite(SUPPORTED_CIPHERSUITE);
  const roomId = `!bench${members}:a.example`;
  const creatorId = await newClientIdentity("@creator:a.example", cs);
  const memberId = await newClientIdentity("@member:b.example", cs);
  let creator = (
    await createHostedGroup({
      identity: creatorId,
      roomId,
      encryptionAlgorithm: SUPPORTED_ALGORITHM,
      policy: allow,
    })
  ).group;
  // The member joins a group of two, then everyone else is added in one commit both process.
  const memberKp = await generateClientKeyPackage(memberId, cs, { now: Date.now(), lifetimeMs: 86_400_000 });
  const add = await createCommit(creator, { add: [encodeKeyPackage(memberKp.publicPackage)] });
  creator = commitAccepted(add.group, "$c1").group;
  let member: HostedGroup = (
    await joinFromWelcome({
      userId: "@member:b.example",
      roomId,
      welcome: add.welcome!,
      commitEventId: "$c1",
      keys: { keyPackage: memberKp.publicPackage, privatePackage: memberKp.privatePackage, consumeOps: [] },
      policy: allow,
    })
  ).group;
  const others: Uint8Array[] = [];
  for (let i = 2; i < members; i++) {
    const identity = await newClientIdentity(`@user${i}:c.example`, cs);
    const kp = await generateClientKeyPackage(identity, cs, { now: Date.now(), lifetimeMs: 86_400_000 });
    others.push(encodeKeyPackage(kp.publicPackage));
  }
  const bulk = await createCommit(creator, { add: others });
  creator = commitAccepted(bulk.group, "$c2").group;
  member = (await processCommit(member, bulk.commit, "$c2")).group;
  const samples: number[] = [];
  for (let i = 0; i < commits; i++) {
    const next = await createCommit(creator, {});
    creator = commitAccepted(next.group, `$e${i}`).group;
    const start = performance.now();
    member = (await processCommit(member, next.commit, `$e${i}`)).group;
    samples.push(performance.now() - start);
  }
  const sorted = [...samples].sort((a, b) => a - b);
  return { medianMs: median(samples), p99Ms: percentile(sorted, 99) };
}

const NAMES = ["a.example", "b.example", "c.example"] as const;
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";

async function startThree(): Promise<{ providers: MimiProvider[]; dirs: string[] }> {
  const ports = await Promise.all(NAMES.map(() => freePort()));
  const dirs = NAMES.map((name) => tempDir(name.replace(/\W/g, "-")));
  const providers: MimiProvider[] = [];
  for (const [i, name] of NAMES.entries()) {
    mkdirSync(join(dirs[i]!, "data"), { recursive: true });
    const config = parseConfig(
      [
        `server_name: ${name}`,
        "federation:",
        "  bind_address: 127.0.0.1",
        `  port: ${ports[i]}`,
        "  well_known: false",
        "  static_routes:",
        ...NAMES.map((n, j) => `    ${n}: http://127.0.0.1:${ports[j]}`),
        "database: { durability: fsync }",
        "limits: { local_sends_per_second: 1000000, local_send_burst: 1000000 }",
        "logging: { level: error }",
      ].join("\n"),
      dirs[i]!,
    );
    providers.push(await MimiProvider.start(config));
  }
  return { providers, dirs };
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** One admin API call to a provider process; a non-2xx answer throws. */
async function admin<T>(p: BenchProvider, method: string, path: string, body?: unknown): Promise<T> {
  const response = await fetch(`http://127.0.0.1:${p.adminPort}/_mimi/admin/v1${path}`, {
    method,
    headers: {
      Authorization: `Bearer ${ADMIN_TOKEN}`,
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const json = (await response.json()) as T;
  if (!response.ok)
    throw new Error(`${p.serverName} ${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

interface Received {
  seq: number;
  event_id: string;
  status: string;
}

/** Follows one user's inbox by long polls; resolves waiters for event IDs as they are decrypted. */
class InboxWatcher {
  private from = 1;
  private stopped = false;
  readonly seen = new Map<string, number>();
  private readonly waiters = new Map<string, () => void>();

  constructor(
    private readonly p: BenchProvider,
    private readonly roomId: string,
    private readonly user: string,
  ) {
    void this.loop();
  }

  private async loop(): Promise<void> {
    const room = encodeURIComponent(this.roomId);
    const user = encodeURIComponent(this.user);
    while (!this.stopped) {
      const { messages } = await admin<{ messages: Received[] }>(
        this.p,
        "GET",
        `/rooms/${room}/messages?user=${user}&from=${this.from}&limit=1000&wait_ms=1000`,
      ).catch(() => ({ messages: [] as Received[] }));
      const now = performance.now();
      for (const m of messages) {
        this.from = Math.max(this.from, m.seq + 1);
        if (m.status !== "decrypted") continue;
        this.seen.set(m.event_id, now);
        this.waiters.get(m.event_id)?.();
      }
    }
  }

  arrived(eventId: string): Promise<number> {
    const at = this.seen.get(eventId);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve) => this.waiters.set(eventId, () => resolve(this.seen.get(eventId)!)));
  }

  stop(): void {
    this.stopped = true;
  }
}

/** The same measurements with the three providers as separate processes (compiled code, admin API). */
async function messagesAcrossProcesses(count: number): Promise<void> {
  const root = join(__dirname, "..", "..", "..");
  const main = join(root, ".tmp", "bench-dist", "src", "cli", "main.js");
  const providers = await startProviders(root, [...NAMES], [main]);
  try {
    const [a, b, c] = providers as [BenchProvider, BenchProvider, BenchProvider];
    let txn = 0;
    const txnId = () => `mp-${++txn}`;
    const { room_id: roomId } = await admin<{ room_id: string }>(a, "PUT", `/createRoom/${txnId()}`, {
      creator: ALICE,
    });
    const room = encodeURIComponent(roomId);
    for (const [p, user] of [
      [b, BOB],
      [c, CAROL],
    ] as const) {
      await admin(a, "PUT", `/rooms/${room}/invite/${txnId()}`, { sender: ALICE, target: user });
      await until(
        async () =>
          (await admin<{ invites: unknown[] }>(p, "GET", `/users/${encodeURIComponent(user)}/invites`))
            .invites.length > 0,
      );
      await admin(p, "PUT", `/rooms/${room}/join/${txnId()}`, { user });
    }
    await until(async () => {
      const views = await Promise.all(
        [
          [a, ALICE],
          [b, BOB],
          [c, CAROL],
        ].map(([p, user]) =>
          admin<{ epoch: string; members: string[] }>(
            p as BenchProvider,
            "GET",
            `/rooms/${room}/mls?user=${encodeURIComponent(user as string)}`,
          ).catch(() => undefined),
        ),
      );
      return views.every((v) => v?.members.length === 3 && v.epoch === views[0]!.epoch);
    });
    const watchers = [new InboxWatcher(b, roomId, BOB), new InboxWatcher(c, roomId, CAROL)];
    const send = async (i: number) =>
      (
        await admin<{ event_id: string }>(a, "PUT", `/rooms/${room}/messages/${txnId()}`, {
          sender: ALICE,
          content: { body: `m${i}` },
        })
      ).event_id;
    const latencies: number[] = [];
    for (let i = 0; i < Math.min(count, 200); i++) {
      const start = performance.now();
      const eventId = await send(i);
      const at = await Promise.all(watchers.map((w) => w.arrived(eventId)));
      latencies.push(Math.max(...at) - start);
    }
    const sorted = [...latencies].sort((x, y) => x - y);
    const window = 50;
    const start = performance.now();
    const ids: string[] = [];
    for (let i = 0; i < count; i += window) {
      ids.push(
        ...(await Promise.all(Array.from({ length: Math.min(window, count - i) }, (_, j) => send(i + j)))),
      );
    }
    await Promise.all(ids.flatMap((id) => watchers.map((w) => w.arrived(id))));
    const rate = (count * 1000) / (performance.now() - start);
    watchers.forEach((w) => w.stop());
    console.log(
      `separate processes (admin API, compiled): latency p50 ${fmt(percentile(sorted, 50), 1)} ms, ` +
        `p99 ${fmt(percentile(sorted, 99), 1)} ms; throughput ${fmt(rate)} msg/s (decrypted at both)`,
    );
  } finally {
    await stopProviders(providers);
  }
}

export async function mlsMessagesSection(): Promise<void> {
  console.log("\n== A member's hosted client processing one commit (empty commit with an UpdatePath) ==");
  for (const members of (process.env.BENCH_MLS_MEMBER_SIZES ?? "100,1000").split(",").map(Number)) {
    const figures = await memberProcessing(members, members >= 1000 ? 5 : 9);
    console.log(
      `${String(members).padStart(5)} members: median ${fmt(figures.medianMs, 1)} ms, p99 ${fmt(figures.p99Ms, 1)} ms`,
    );
  }

  const count = Number(process.env.BENCH_MLS_MESSAGES ?? 300);
  const { providers, dirs } = await startThree();
  try {
    const [a, b, c] = providers as [MimiProvider, MimiProvider, MimiProvider];
    let txn = 0;
    const txnId = () => `bench-${++txn}`;
    const { roomId } = await a.rooms.createRoom({ creator: ALICE, txnId: txnId() });
    for (const [p, user] of [
      [b, BOB],
      [c, CAROL],
    ] as const) {
      await a.rooms.invite({ roomId, sender: ALICE, target: user, txnId: txnId() });
      await until(async () => (await p.rooms.listInvites(user)).length > 0);
      await p.rooms.changeOwnParticipation({ roomId, user, change: "join", txnId: txnId() });
    }
    await until(async () => {
      const views = await Promise.all([
        a.rooms.clientGroup(roomId, ALICE),
        b.rooms.clientGroup(roomId, BOB),
        c.rooms.clientGroup(roomId, CAROL),
      ]);
      return views.every((v) => v?.members.length === 3 && v.epoch === views[0]!.epoch);
    });
    const arrivals = new Map<string, number[]>();
    for (const p of [b, c]) {
      p.mls.onMessage((_room, _user, message) => {
        if (message.status !== "decrypted") return;
        const list = arrivals.get(message.eventId) ?? [];
        list.push(performance.now());
        arrivals.set(message.eventId, list);
      });
    }
    const send = (i: number) =>
      a.rooms.sendMessage({
        roomId,
        sender: ALICE,
        type: "m.room.message",
        content: { body: `m${i}` },
        txnId: txnId(),
      });

    console.log(
      `\n== Application messages, encrypt at a.example -> hub -> decrypt at b.example and c.example ==`,
    );
    const latencies: number[] = [];
    for (let i = 0; i < Math.min(count, 200); i++) {
      const start = performance.now();
      const { eventId } = await send(i);
      await until(() => (arrivals.get(eventId)?.length ?? 0) >= 2);
      latencies.push(Math.max(...arrivals.get(eventId)!) - start);
    }
    const plainLatencies: number[] = [];
    for (let i = 0; i < latencies.length; i++) {
      const start = performance.now();
      await a.rooms.send({
        roomId,
        sender: ALICE,
        type: "org.example.message",
        content: { body: `q${i}` },
        txnId: txnId(),
      });
      const head = a.rooms.roomInfo(roomId)!.headSeq;
      await until(() => [b, c].every((p) => (p.rooms.roomInfo(roomId)?.headSeq ?? 0) >= head));
      plainLatencies.push(performance.now() - start);
    }
    const sorted = [...latencies].sort((x, y) => x - y);
    const plainSorted = [...plainLatencies].sort((x, y) => x - y);
    console.log(
      `latency, one message at a time (${latencies.length}): MLS p50 ${fmt(percentile(sorted, 50), 1)} ms, p99 ${fmt(percentile(sorted, 99), 1)} ms (to decrypted at both); ` +
        `plain p50 ${fmt(percentile(plainSorted, 50), 1)} ms, p99 ${fmt(percentile(plainSorted, 99), 1)} ms (to applied at both)`,
    );

    const window = 50;
    const throughput = async (
      sendOne: (i: number) => Promise<{ eventId: string }>,
      arrived: (ids: string[]) => Promise<boolean>,
    ) => {
      const start = performance.now();
      const ids: string[] = [];
      for (let i = 0; i < count; i += window) {
        const batch = await Promise.all(
          Array.from({ length: Math.min(window, count - i) }, (_, j) => sendOne(i + j)),
        );
        ids.push(...batch.map((r) => r.eventId));
      }
      await until(() => arrived(ids));
      return (count * 1000) / (performance.now() - start);
    };
    const mlsRate = await throughput(send, async (ids) =>
      ids.every((id) => (arrivals.get(id)?.length ?? 0) >= 2),
    );
    const plainRate = await throughput(
      (i) =>
        a.rooms.send({
          roomId,
          sender: ALICE,
          type: "org.example.message",
          content: { body: `p${i}` },
          txnId: txnId(),
        }),
      async () => {
        const head = a.rooms.roomInfo(roomId)!.headSeq;
        return [b, c].every((p) => (p.rooms.roomInfo(roomId)?.headSeq ?? 0) >= head);
      },
    );
    console.log(
      `throughput, ${count} messages in windows of ${window}, until both followers have them: ` +
        `MLS ${fmt(mlsRate)} msg/s (decrypted), plain ${fmt(plainRate)} events/s (applied); cost of encryption ${fmt(plainRate / mlsRate, 2)}x`,
    );
  } finally {
    await Promise.all(providers.map((p) => p.stop()));
    dirs.forEach(removeDir);
  }
  if (existsSync(join(__dirname, "..", "src", "cli", "main.js"))) await messagesAcrossProcesses(count);
  else console.log("separate processes: run through `npm run bench -- mls` (it compiles the provider first)");
}
