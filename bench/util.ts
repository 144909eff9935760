import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const liveDirs = new Set<string>();

export function tempDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `mimi-${label}-`));
  liveDirs.add(dir);
  return dir;
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  liveDirs.delete(dir);
}

/** Removes every folder tempDir made that is still there (for an interrupted run). */
export function removeAllTempDirs(): void {
  for (const dir of [...liveDirs]) removeDir(dir);
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, index)]!;
}

export function fmt(n: number, digits = 0): string {
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function median(values: number[]): number {
  return percentile(
    [...values].sort((x, y) => x - y),
    50,
  );
}

export interface WindowRun {
  completed: number;
  seconds: number;
}

/**
 * Calls `submit(0..count-1)` with up to `window` calls in flight; stops
 * issuing new calls once `deadline` (a performance.now() value) has passed.
 */
export async function runWindow(
  count: number,
  window: number,
  deadline: number,
  submit: (i: number) => Promise<unknown>,
): Promise<WindowRun> {
  const start = performance.now();
  const inFlight = new Set<Promise<unknown>>();
  let completed = 0;
  let failure: unknown;
  for (let i = 0; i < count && failure === undefined && performance.now() < deadline; i++) {
    const p: Promise<unknown> = submit(i)
      .then(
        () => void completed++,
        (err: unknown) => void (failure ??= err),
      )
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= window) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  if (failure !== undefined) throw failure;
  return { completed, seconds: (performance.now() - start) / 1000 };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
