/**
 * CRIU's cache of what it found out about the kernel (its "kerndat": which
 * system calls, socket options and memory features there are).
 *
 * Every `criu dump` and `criu restore` first probes the kernel for these
 * unless it can read them from `/run/criu.kdat`, which takes tens of
 * milliseconds a run (35–40 ms measured on a 2-core VM: a quarter of the
 * PyTorch worker's restore). CRIU writes that file only when `/run` is a
 * tmpfs, so that it is gone after a reboot into another kernel, and it writes
 * it through `/run/criu.kdat.tmp` opened exclusively: a run killed between
 * the two leaves that file behind, and no later run keeps a cache until it
 * goes.
 *
 * {@linkcode prepareCriuCache}, at a node agent's start:
 *
 * - removes a `criu.kdat.tmp` older than {@linkcode STALE_TMP_MS} (a live run
 *   holds it for microseconds);
 * - on a `/run` that is a tmpfs, leaves the rest to CRIU;
 * - on one that is not, makes the cache the way CRIU does, by running
 *   `criu check` in a mount namespace of its own with a tmpfs on `/run`, and
 *   puts the file it wrote in place: CRIU reads the cache from any file
 *   system. A note beside it (`criu.kdat.inferx`) names the boot and the
 *   CRIU it was made for; an agent of another boot or CRIU makes it again.
 *   `criu check` then says whether CRIU takes it.
 *
 * Dumps and restores themselves cannot run in such a namespace: CRIU must
 * share its mount namespace with the processes it dumps and restores.
 */

import { dirname } from "node:path";
import type { CheckResult } from "./criu.ts";

/** Where CRIU, run as root, keeps its kernel cache (fixed when CRIU is built). */
export const KDAT_FILE = "/run/criu.kdat";

/** How old a `criu.kdat.tmp` must be to be taken for one a killed CRIU left. */
export const STALE_TMP_MS = 60_000;

/** What makes and checks the cache: a {@linkcode Criu} in the agent. */
export interface CacheMaker {
  /** Runs `criu check` in a mount namespace with a tmpfs on `/run` and copies the cache to `dest`. */
  makeKernelCache(dest: string): Promise<CheckResult>;
  /** Whether a `criu check` run loads its kernel cache from the file. */
  loadsKernelCache(): Promise<boolean>;
}

/** How CRIU's kernel cache stands on this node. */
export interface CriuCacheState {
  /**
   * `tmpfs`: `/run` is a tmpfs, CRIU keeps the cache itself; `seeded`: it is
   * not, and the agent made the cache; `off`: every CRIU run probes the
   * kernel again (`reason` says why).
   */
  state: "tmpfs" | "seeded" | "off";
  reason?: string;
  /** A `criu.kdat.tmp` a killed CRIU had left was removed. */
  staleRemoved?: boolean;
}

export interface CacheOptions {
  /** `INFERX_CRIU_CACHE=off`: leave a `/run` that is not a tmpfs without a cache. @default true */
  seed?: boolean;
  /** The CRIU the cache is for (its version and path), written in the note beside it. */
  criu: string;
  /** The cache's path; CRIU reads {@linkcode KDAT_FILE} alone, tests use another. */
  file?: string;
  /** `/proc/self/mountinfo`'s text. @default read */
  mountinfo?: string;
  /** This boot's id. @default `/proc/sys/kernel/random/boot_id` */
  bootId?: string;
  /** @default Date.now() */
  now?: number;
}

/** The note written beside a seeded cache. */
interface SeedNote {
  bootId: string;
  criu: string;
}

/**
 * The file system type of the mount that holds `path`, from the text of a
 * `/proc/PID/mountinfo` (the last of mounts stacked on one point is the one
 * seen); undefined when no line parses.
 */
export function fsTypeOf(path: string, mountinfo: string): string | undefined {
  let best: { point: string; type: string } | undefined;
  for (const line of mountinfo.split("\n")) {
    const dash = line.indexOf(" - ");
    if (dash < 0) continue;
    const point = unescapeMount(line.slice(0, dash).split(" ")[4] ?? "");
    const type = line.slice(dash + 3).split(" ")[0];
    if (!point.startsWith("/") || !type) continue;
    const holds = point === "/" || path === point || path.startsWith(`${point}/`);
    if (holds && (!best || point.length >= best.point.length)) best = { point, type };
  }
  return best?.type;
}

/** mountinfo writes a space, tab, newline and backslash in a path as octal escapes. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Readies CRIU's kernel cache (see the module's note); never throws. */
export async function prepareCriuCache(
  maker: CacheMaker,
  options: CacheOptions,
): Promise<CriuCacheState> {
  const file = options.file ?? KDAT_FILE;
  const dir = dirname(file);
  const staleRemoved = await removeStaleTmp(`${file}.tmp`, options.now ?? Date.now());
  const done = (s: CriuCacheState): CriuCacheState => staleRemoved ? { ...s, staleRemoved } : s;
  let mountinfo = options.mountinfo;
  try {
    mountinfo ??= await Deno.readTextFile("/proc/self/mountinfo");
  } catch (err) {
    return done({ state: "off", reason: `cannot read the mounts: ${(err as Error).message}` });
  }
  const type = fsTypeOf(dir, mountinfo);
  if (type === "tmpfs") return done({ state: "tmpfs" });
  const notTmpfs = `${dir} is ${type ? `${type}, not a tmpfs` : "on no mount found"}`;
  if (options.seed === false) {
    return done({ state: "off", reason: `${notTmpfs}, and INFERX_CRIU_CACHE=off` });
  }
  let bootId = options.bootId;
  try {
    bootId ??= (await Deno.readTextFile("/proc/sys/kernel/random/boot_id")).trim();
  } catch (err) {
    return done({ state: "off", reason: `cannot read the boot id: ${(err as Error).message}` });
  }
  const want: SeedNote = { bootId, criu: options.criu };
  const note = `${file}.inferx`;
  if (await seededFor(file, note, want)) return done({ state: "seeded" });
  const why = await seed(maker, file, note, want);
  return done(why ? { state: "off", reason: `${notTmpfs}; ${why}` } : { state: "seeded" });
}

/** Removes `tmp` when it is older than {@linkcode STALE_TMP_MS}; whether it did. */
async function removeStaleTmp(tmp: string, now: number): Promise<boolean> {
  const st = await Deno.lstat(tmp).catch(() => undefined);
  if (!st?.isFile || !st.mtime || now - st.mtime.getTime() < STALE_TMP_MS) return false;
  return await Deno.remove(tmp).then(() => true, () => false);
}

/** Whether `file` is there, made for this boot and CRIU. */
async function seededFor(file: string, note: string, want: SeedNote): Promise<boolean> {
  const size = (await Deno.stat(file).catch(() => undefined))?.size ?? 0;
  if (!size) return false;
  try {
    const had = JSON.parse(await Deno.readTextFile(note)) as SeedNote;
    return had.bootId === want.bootId && had.criu === want.criu;
  } catch {
    return false;
  }
}

/** Makes the cache and puts it in place; undefined, or why not. */
async function seed(
  maker: CacheMaker,
  file: string,
  note: string,
  want: SeedNote,
): Promise<string | undefined> {
  const made = await Deno.makeTempFile({ prefix: "inferx-criu-kdat-" });
  try {
    const run = await maker.makeKernelCache(made);
    if (!run.ok) return `making it failed: ${run.reason}`;
    const bytes = await Deno.readFile(made);
    if (!bytes.length) return "making it failed: CRIU wrote an empty cache";
    // Written beside it and renamed: a CRIU starting meanwhile reads the old file or the new.
    const part = `${file}.inferx-${Deno.pid}`;
    await Deno.writeFile(part, bytes, { mode: 0o600 });
    await Deno.rename(part, file);
    await Deno.writeTextFile(note, JSON.stringify(want) + "\n", { mode: 0o600 });
  } catch (err) {
    return `cannot put it in place: ${(err as Error).message}`;
  } finally {
    await Deno.remove(made).catch(() => {});
  }
  if (file !== KDAT_FILE || await maker.loadsKernelCache()) return undefined;
  await Deno.remove(file).catch(() => {});
  await Deno.remove(note).catch(() => {});
  return "CRIU did not load the cache made for it";
}
