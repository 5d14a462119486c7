/**
 * CRIU's cache of what it found out about the kernel (its "kerndat": which
 * system calls, socket options and memory features there are, and the
 * physical page of the kernel's zero page).
 *
 * Every `criu dump` and `criu restore` first probes the kernel for these
 * unless it can read them from `/run/criu.kdat`, which takes tens of
 * milliseconds a run (28–53 ms a restore measured on a 2-core VM). CRIU reads
 * that file from any file system but keeps one only on a tmpfs, so that it is
 * gone after a reboot: some of it (the zero page's frame, device numbers) may
 * change with any reboot, and a dump that trusted a stale zero page frame
 * could leave pages out. It writes the file through `/run/criu.kdat.tmp`,
 * opened exclusively; where `/run` is not a tmpfs, a run that probed the
 * kernel then removes `criu.kdat` and leaves `criu.kdat.tmp` behind, and
 * while that file is there no run writes or removes the cache. On a tmpfs, a
 * run killed mid-write leaves it too, and no run keeps a cache until it goes.
 *
 * At a node agent's start, {@linkcode dropStaleCriuCache} runs before any
 * CRIU does:
 *
 * - on a tmpfs, it removes a `criu.kdat.tmp` older than {@linkcode STALE_TMP_MS}
 *   (a live run holds it for microseconds);
 * - elsewhere, it removes a cache that no note of this agent's
 *   (`criu.kdat.inferx`) says was made in this boot.
 *
 * Then {@linkcode prepareCriuCache}, where `/run` is not a tmpfs, makes the
 * cache the way CRIU does, by running `criu check` in a mount namespace of
 * its own with a tmpfs on `/run`, puts the file it wrote in place with the
 * note beside it (the boot and the CRIU it is for), keeps `criu.kdat.tmp`
 * there so that no run removes it, and checks that `criu check` loads it.
 *
 * Dumps and restores themselves cannot run in such a namespace: CRIU must
 * share its mount namespace with the processes it dumps and restores.
 */

import { dirname } from "node:path";
import { type Mount, parseMountinfo } from "./mounts.ts";
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
  /** This boot's id; empty: it cannot be told. @default `/proc/sys/kernel/random/boot_id` */
  bootId?: string;
  /** Now, for the age of a `criu.kdat.tmp`. @default Date.now() */
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
  let best: Mount | undefined;
  for (const m of parseMountinfo(mountinfo)) {
    if (!m.point.startsWith("/")) continue;
    const holds = m.point === "/" || path === m.point || path.startsWith(`${m.point}/`);
    if (holds && (!best || m.point.length >= best.point.length)) best = m;
  }
  return best?.fstype;
}

/** Where the cache lies, and what is known of the machine. */
interface Where {
  file: string;
  note: string;
  dir: string;
  /** The file system type of `dir`; undefined when no mount holds it. */
  type?: string;
}

async function where(file = KDAT_FILE, mountinfo?: string): Promise<Where | string> {
  try {
    mountinfo ??= await Deno.readTextFile("/proc/self/mountinfo");
  } catch (err) {
    return `cannot read the mounts: ${(err as Error).message}`;
  }
  const dir = dirname(file);
  return { file, note: `${file}.inferx`, dir, type: fsTypeOf(dir, mountinfo) };
}

async function readBootId(bootId?: string): Promise<string> {
  return bootId ?? (await Deno.readTextFile("/proc/sys/kernel/random/boot_id")).trim();
}

/**
 * Removes what CRIU must not read (see the module's note), before any CRIU
 * runs: a stale `criu.kdat.tmp` on a tmpfs; elsewhere a cache not made in
 * this boot by this agent (one without its note only when `seed` is on: it is
 * otherwise not the agent's to remove), or any of its own, guard included,
 * when `seed` is off or the boot cannot be told. Says what it removed; never
 * throws.
 */
export async function dropStaleCriuCache(
  options: Omit<CacheOptions, "criu"> = {},
): Promise<string | undefined> {
  const file = options.file ?? KDAT_FILE;
  const w = await where(file, options.mountinfo);
  if (typeof w !== "string" && w.type === "tmpfs") {
    const tmp = `${file}.tmp`;
    const st = await Deno.lstat(tmp).catch(() => undefined);
    const now = options.now ?? Date.now();
    if (!st?.isFile || !st.mtime || now - st.mtime.getTime() < STALE_TMP_MS) return undefined;
    const gone = await Deno.remove(tmp).then(() => true, () => false);
    return gone ? `${tmp}, left by a CRIU killed while it wrote its kernel cache` : undefined;
  }
  // Not a tmpfs, or not known to be one.
  const note = await readNote(`${file}.inferx`);
  const there = await Deno.lstat(file).then(() => true, () => false);
  if (!there && !note) return undefined;
  const bootId = (await readBootId(options.bootId).catch(() => "")) || undefined;
  let why: string | undefined;
  let unguard = false;
  if (options.seed === false) {
    if (note) [why, unguard] = ["made by this agent, and INFERX_CRIU_CACHE=off", true];
  } else if (typeof w === "string" || bootId === undefined) {
    [why, unguard] = ["this boot cannot be told", note !== undefined];
  } else if (!note) why = "of unknown making";
  else if (note.bootId !== bootId) why = "made in an earlier boot";
  if (!why) return undefined;
  await Deno.remove(file).catch(() => {});
  await Deno.remove(`${file}.inferx`).catch(() => {});
  if (unguard) await Deno.remove(`${file}.tmp`).catch(() => {});
  return `${file}, ${why}`;
}

/** Readies CRIU's kernel cache (see the module's note); never throws. */
export async function prepareCriuCache(
  maker: CacheMaker,
  options: CacheOptions,
): Promise<CriuCacheState> {
  const w = await where(options.file, options.mountinfo);
  if (typeof w === "string") return { state: "off", reason: w };
  if (w.type === "tmpfs") return { state: "tmpfs" };
  const notTmpfs = `${w.dir} is ${w.type ? `${w.type}, not a tmpfs` : "on no mount found"}`;
  if (options.seed === false) {
    return { state: "off", reason: `${notTmpfs}, and INFERX_CRIU_CACHE=off` };
  }
  let bootId: string;
  try {
    bootId = await readBootId(options.bootId);
  } catch (err) {
    return { state: "off", reason: `cannot read the boot id: ${(err as Error).message}` };
  }
  const want: SeedNote = { bootId, criu: options.criu };
  const why = await seededFor(w, want) ? await guard(w) : await seed(maker, w, want);
  return why ? { state: "off", reason: `${notTmpfs}; ${why}` } : { state: "seeded" };
}

async function readNote(note: string): Promise<SeedNote | undefined> {
  try {
    const n = JSON.parse(await Deno.readTextFile(note));
    return typeof n?.bootId === "string" && typeof n?.criu === "string" ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Keeps `criu.kdat.tmp` beside the cache: a CRIU run that probes the kernel
 * (or, CRIU 4.2, finds a feature the cache lacks) would otherwise remove the
 * cache where it may not keep one. Undefined, or why it cannot.
 */
async function guard(w: Where): Promise<string | undefined> {
  try {
    await Deno.writeFile(`${w.file}.tmp`, new Uint8Array(), { createNew: true, mode: 0o600 });
  } catch (err) {
    if (!(err instanceof Deno.errors.AlreadyExists)) {
      return `cannot keep ${w.file}.tmp, without which CRIU removes the cache: ${
        (err as Error).message
      }`;
    }
  }
  return undefined;
}

/** Whether the cache is there, made for this boot and CRIU. */
async function seededFor(w: Where, want: SeedNote): Promise<boolean> {
  const size = (await Deno.stat(w.file).catch(() => undefined))?.size ?? 0;
  const had = await readNote(w.note);
  return size > 0 && had?.bootId === want.bootId && had.criu === want.criu;
}

/** Makes the cache and puts it in place; undefined, or why not. */
async function seed(maker: CacheMaker, w: Where, want: SeedNote): Promise<string | undefined> {
  let made: string | undefined;
  try {
    made = await Deno.makeTempFile({ prefix: "inferx-criu-kdat-" });
    const run = await maker.makeKernelCache(made);
    if (!run.ok) return `making it failed: ${run.reason}`;
    const bytes = await Deno.readFile(made);
    if (!bytes.length) return "making it failed: CRIU wrote an empty cache";
    // The guard first: a cache put in place without it may be removed by the next CRIU run.
    const unguarded = await guard(w);
    if (unguarded) return unguarded;
    // Written beside it and renamed: a CRIU starting meanwhile reads the old file or the new.
    const part = `${w.file}.inferx-${Deno.pid}`;
    await Deno.writeFile(part, bytes, { mode: 0o600 });
    await Deno.rename(part, w.file);
    await Deno.writeTextFile(w.note, JSON.stringify(want) + "\n", { mode: 0o600 });
  } catch (err) {
    return `cannot put it in place: ${(err as Error).message}`;
  } finally {
    if (made) await Deno.remove(made).catch(() => {});
  }
  if (w.file !== KDAT_FILE) return undefined; // CRIU reads its own path alone
  const loads = await maker.loadsKernelCache();
  if (loads && (await Deno.stat(w.file).catch(() => undefined))) return undefined;
  await Deno.remove(w.file).catch(() => {});
  await Deno.remove(w.note).catch(() => {});
  return loads ? "CRIU removed the cache made for it" : "CRIU did not load the cache made for it";
}

/**
 * What a node agent runs before each dump and restore where it seeded the
 * cache: a CRIU of another build on the node removes the cache as it loads
 * it (its size or build stamp differ), so it is made again when gone. One
 * `stat` a run; `said` hears of each remaking and of a failure.
 */
export function keepCriuCache(
  maker: CacheMaker,
  options: CacheOptions,
  said: (s: CriuCacheState) => void,
): () => Promise<void> {
  let running: Promise<void> | undefined;
  const file = options.file ?? KDAT_FILE;
  const run = async () => {
    if (await Deno.stat(file).then((st) => st.size > 0, () => false)) return;
    said(await prepareCriuCache(maker, options));
  };
  // Runs that come while one looks share it.
  return () => running ??= run().finally(() => running = undefined);
}
