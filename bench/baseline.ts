import { execFileSync } from "node:child_process";
import { existsSync, lstatSync, rmSync, symlinkSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./util";

export const ROOT = join(__dirname, "..");
export const DEFAULT_BASELINE = "b289045";

export interface Baseline {
  rev: string;
  /** The full commit the revision resolved to. */
  commit: string;
  dir: string;
  remove(): void;
}

function git(args: string[]): string {
  return execFileSync("git", args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
}

/**
 * A detached worktree of `rev` in a temp folder, using this checkout's
 * node_modules through a symlink (the dependencies are the same).
 */
export function addBaseline(rev: string): Baseline {
  let commit: string;
  try {
    commit = git(["rev-parse", "--verify", `${rev}^{commit}`]);
  } catch {
    throw new Error(`BENCH_BASELINE=${rev} is not a commit of this repository`);
  }
  const dir = tempDir("bench-baseline");
  git(["worktree", "add", "--detach", dir, commit]);
  const modules = join(dir, "node_modules");
  symlinkSync(join(ROOT, "node_modules"), modules, "dir");
  let removed = false;
  const baseline: Baseline = {
    rev,
    commit,
    dir,
    remove() {
      if (removed) return;
      removed = true;
      live.delete(baseline);
      // The link goes first so that nothing below can reach the real node_modules.
      if (existsSync(modules) && lstatSync(modules).isSymbolicLink()) unlinkSync(modules);
      try {
        git(["worktree", "remove", "--force", dir]);
      } catch (err) {
        console.error(`could not remove the baseline worktree ${dir}: ${(err as Error).message}`);
      }
      rmSync(dir, { recursive: true, force: true });
      try {
        git(["worktree", "prune"]);
      } catch {
        // Only bookkeeping of worktrees already deleted.
      }
    },
  };
  live.add(baseline);
  return baseline;
}

const live = new Set<Baseline>();

/** Removes every baseline worktree still there (for an interrupted run). */
export function removeAllBaselines(): void {
  for (const baseline of [...live]) baseline.remove();
}
