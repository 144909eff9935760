/**
 * KeyPackage claims over Oblivious HTTP (RFC 9458) against the plain claim, in one run: b.example's
 * client claims KeyPackages of c.example's users, (1) one at a time, plain and over OHTTP
 * interleaved (latency p50 and p99, and their ratio); (2) many at once through b's one relay
 * (claims per second), beside the same with plain claims; (3) the OHTTP work alone, in process.
 * Two providers in this process, real HTTP on 127.0.0.1, LevelDB (BENCH_OHTTP_DURABILITY, default
 * fsync). A bearer token allows 10 claims an hour, so each user of c is claimed from 5 times.
 * BENCH_OHTTP_CLAIMS (default 200 per path) and BENCH_OHTTP_FLOOD (default 400) set the sizes.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../src/config/config";
import { FederationClient } from "../src/federation/client";
import { ServerResolver } from "../src/federation/discovery";
import {
  decapsulateResponse,
  decodeRequest,
  decodeResponse,
  encapsulateRequest,
  encapsulateResponse,
  encodeRequest,
  encodeResponse,
  generateX25519KeyPair,
  importGatewayKey,
  openRequest,
  parseEncapsulatedRequest,
} from "../src/federation/ohttp";
import { KeyPackageClient } from "../src/mls/federation/keyPackageApi";
import type { KeyPackagePool } from "../src/mls/keyPackages";
import { MimiProvider } from "../src/provider/provider";
import { freePort } from "../src/util/freePort";
import { fmt, percentile, removeDir, runWindow, tempDir } from "./util";

const CLAIMS_PER_USER = 4;

async function startPair(dir: string): Promise<{ b: MimiProvider; c: MimiProvider; ports: number[] }> {
  const names = ["b.example", "c.example"];
  const ports = await Promise.all(names.map(() => freePort()));
  const durability = process.env.BENCH_OHTTP_DURABILITY ?? "fsync";
  const providers: MimiProvider[] = [];
  for (const [i, name] of names.entries()) {
    mkdirSync(join(dir, name), { recursive: true });
    const lines = [
      `server_name: ${name}`,
      "federation:",
      "  bind_address: 127.0.0.1",
      `  port: ${ports[i]}`,
      "  well_known: false",
      "  static_routes:",
      ...names.map((n, j) => `    ${n}: http://127.0.0.1:${ports[j]}`),
      `database: { durability: ${durability} }`,
      "logging: { level: error }",
      "limits: { federation_requests_per_second: 1000000, federation_request_burst: 1000000 }",
      "ohttp: { relay_requests_per_second: 1000000, relay_burst: 1000000 }",
      "mls: { hosted_clients: false }",
    ];
    providers.push(await MimiProvider.start(parseConfig(lines.join("\n"), join(dir, name))));
  }
  return { b: providers[0]!, c: providers[1]!, ports };
}

/** Users of c, each discovered (and claimed once) by `claims` first, so only claims are timed. */
async function warmUsers(claims: KeyPackageClient, label: string, count: number): Promise<string[]> {
  const users = Array.from({ length: count }, (_, i) => `@${label}${i}:c.example`);
  await runWindow(users.length, 8, Number.POSITIVE_INFINITY, (i) => claims.claim(users[i]!));
  return users;
}

function stats(ms: number[]): { p50: number; p99: number } {
  const sorted = [...ms].sort((x, y) => x - y);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

/** The OHTTP work of one claim, alone: encapsulate, open, answer, open the answer (one KeyPackage's size). */
async function cryptoAlone(rounds: number): Promise<{ p50: number; p99: number }> {
  const key = await importGatewayKey(1, generateX25519KeyPair().privateKey);
  const request = encodeRequest(
    {
      method: "POST",
      scheme: "https",
      authority: "c.example",
      path: "/claim",
      headers: [["content-type", "application/octet-stream"]],
      content: new Uint8Array(300),
      trailers: [],
    },
    { padToMultipleOf: 1024 },
  );
  const response = encodeResponse(
    { informational: [], status: 200, headers: [], content: new Uint8Array(600), trailers: [] },
    { padToMultipleOf: 1024 },
  );
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const start = performance.now();
    const sealed = await encapsulateRequest(key.config, request);
    const opened = await openRequest(key, parseEncapsulatedRequest(sealed.encapsulated));
    decodeRequest(opened.request);
    decodeResponse(decapsulateResponse(sealed.context, encapsulateResponse(opened.context, response)));
    times.push(performance.now() - start);
  }
  return stats(times.slice(Math.floor(rounds / 10)));
}

export async function ohttpSection(): Promise<void> {
  const perPath = Number(process.env.BENCH_OHTTP_CLAIMS ?? 200);
  const flood = Number(process.env.BENCH_OHTTP_FLOOD ?? 400);
  const dir = tempDir("bench-ohttp");
  const { b, c, ports } = await startPair(dir);
  const client = new FederationClient({
    signingKey: b.signingKey,
    resolver: new ServerResolver({ staticMap: { "c.example": `http://127.0.0.1:${ports[1]}` } }),
  });
  try {
    console.log(
      `\n== KeyPackage claims over OHTTP (RFC 9458) vs plain: b.example's client claims from c.example, ` +
        `HTTP on 127.0.0.1, LevelDB ${process.env.BENCH_OHTTP_DURABILITY ?? "fsync"} ==`,
    );
    const ohttp = b.keyPackageClaims;
    const plain = new KeyPackageClient({
      serverName: "b.example",
      client,
      pool: undefined as unknown as KeyPackagePool,
    });
    const users = Math.ceil(perPath / CLAIMS_PER_USER);
    const [plainUsers, ohttpUsers] = [await warmUsers(plain, "p", users), await warmUsers(ohttp, "o", users)];
    const plainMs: number[] = [];
    const ohttpMs: number[] = [];
    for (let i = 0; i < perPath; i++) {
      for (const [claims, list, times] of [
        [plain, plainUsers, plainMs],
        [ohttp, ohttpUsers, ohttpMs],
      ] as const) {
        const start = performance.now();
        await claims.claim(list[i % list.length]!);
        times.push(performance.now() - start);
      }
    }
    const p = stats(plainMs);
    const o = stats(ohttpMs);
    console.log(`one claim at a time, ${fmt(perPath)} each, interleaved:`);
    console.log(`  plain claim:          p50 ${fmt(p.p50, 2)} ms  p99 ${fmt(p.p99, 2)} ms`);
    console.log(`  over OHTTP (relay b): p50 ${fmt(o.p50, 2)} ms  p99 ${fmt(o.p99, 2)} ms`);
    console.log(`  OHTTP / plain:        p50 ×${fmt(o.p50 / p.p50, 2)}  p99 ×${fmt(o.p99 / p.p99, 2)}`);

    const floodUsers = Math.ceil(flood / CLAIMS_PER_USER);
    for (const [label, claims, prefix] of [
      ["plain claims", plain, "pf"],
      ["through one relay (OHTTP)", ohttp, "of"],
    ] as const) {
      const list = await warmUsers(claims, prefix, floodUsers);
      const run = await runWindow(flood, 16, Number.POSITIVE_INFINITY, (i) =>
        claims.claim(list[i % list.length]!),
      );
      console.log(
        `claims per second, 16 in flight, ${fmt(flood)} claims, ${label}: ${fmt(run.completed / run.seconds)}`,
      );
    }
    const crypto = await cryptoAlone(500);
    console.log(
      `the OHTTP work of one claim alone (HPKE seal/open, response AEAD, binary HTTP; @hpke/core): ` +
        `p50 ${fmt(crypto.p50, 2)} ms  p99 ${fmt(crypto.p99, 2)} ms`,
    );
  } finally {
    client.close();
    await Promise.all([b.stop(), c.stop()]);
    removeDir(dir);
  }
}
