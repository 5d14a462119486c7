/**
 * Process runtime: runs a pod's `commands` as a child process on this host
 * with the platform's env. `deno` as the first command means the Deno binary
 * running the agent.
 *
 * With pod networks (root, `ip`, `nsenter`, `unshare`), each worker runs in
 * a network namespace of its own, reached through a veth pair, and in a PID
 * namespace of its own: it listens on its spec's port on every address of
 * its namespace. That namespace's init is `tini` when the node has it (it
 * reaps the processes the worker leaves behind, as Docker's `--init` does,
 * and passes signals on to the worker's process group), else the worker
 * itself, which then collects the zombies of whatever it started and did
 * not wait for. Such a worker can be
 * snapshotted with CRIU while it runs, and any number of copies restored
 * from the snapshot side by side, each into a fresh pair of namespaces.
 * Without them, workers share the host's network on a free port of the host
 * address.
 *
 * A worker with GPUs gets the network namespace but shares the node's PID
 * namespace: the CUDA driver finds its process in `/proc` by the PID it has,
 * and in a PID namespace of its own that PID (1) names another process in
 * the node's `/proc` (`cuInit` fails with 304, seen on an H200; a `/proc` of
 * its own needs a mount namespace, which CRIU cannot dump here). So it is
 * not snapshotted (a copy could not be restored beside it); parked in a
 * file, its own pod resumes from the image with the PIDs it had.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { freePort } from "../common/net.ts";
import { logger } from "../common/log.ts";
import { LogRing } from "./log_ring.ts";
import type { LibCuda } from "../ffi/libcuda.ts";
import { groupAlive, procState, punchHole, reapIfOrphanedToUs, signalName } from "../ffi/libc.ts";
import { type StandbyTier, withOutput } from "../model/cluster.ts";
import {
  Criu,
  CriuKilled,
  type InheritedFile,
  type OpenFile,
  openFiles,
  processTree,
  sweepCriuOutput,
} from "./criu.ts";
import type { PodCgroup, PodCgroups } from "./cgroup.ts";
import type { PodNet, PodNetworks } from "./pod_net.ts";
import { waitForProbe } from "./probe.ts";
import { dropPrivileges, type WorkerUser } from "./worker_user.ts";
import { fenceCommands, fenceInterface, POD_HOST_ENDS } from "./worker_fence.ts";
import {
  type AdoptedPod,
  platformEnv,
  type PodRuntime,
  PodSetupFailed,
  type PodSpec,
  type RunningPod,
  type SnapshotTaken,
} from "./runtime.ts";
import { privateDir } from "../common/private_dir.ts";

const log = logger("nodeagent", "runtime");

/** Options for {@linkcode ProcessRuntime}. */
export interface ProcessRuntimeOptions {
  /** Working directory of workers. @default the current directory */
  workDir?: string;
  /** Address workers listen on and are reached at (without pod networks). @default "127.0.0.1" */
  host?: string;
  /** Probe interval (ms). @default 25 */
  probeIntervalMs?: number;
  /** Called when a started pod's process ends without being stopped. */
  onExit?(podId: string, why: string): void;
  /**
   * Marks this runtime's workers (env `INFERX_SCOPE`) so a restarted agent
   * can find the ones it left behind. @default "default"
   */
  scope?: string;
  /** The CUDA driver; with its checkpoint API the host-memory tier is offered. */
  cuda?: LibCuda;
  /** How long to wait for a worker's CUDA calls to drain before a checkpoint (ms). @default 10000 */
  cudaLockTimeoutMs?: number;
  /**
   * CRIU, when it passed its check: the file tier is offered (and snapshots,
   * with pod networks), and workers write their output to a file (a pipe to
   * the agent could not be dumped).
   */
  criu?: Criu;
  /** A network and PID namespace per pod; needed for snapshots. */
  podNetworks?: PodNetworks;
  /** Where file-tier images, worker output files and restore logs go. @default `{workDir}/snapshots` */
  snapshotDir?: string;
  /** Worker output to `{snapshotDir}/{pod}.log` instead of pipes. @default whether `criu` is set */
  outputToFile?: boolean;
  /** A worker's output file gives back the blocks read into its log ring past this. @default LOG_FILE_MAX */
  outputFileMaxBytes?: number;
  /** CPU niceness of CRIU while it snapshots a worker, so serving pods keep the CPU. @default 10 */
  snapshotNice?: number;
  /** A control group per pod: its memory limit and CPU weight (`cgroup.ts`). */
  cgroups?: PodCgroups;
  /**
   * The init run above each worker in a PID namespace of its own: it reaps
   * orphans and passes signals on; false for none (the worker is its
   * namespace's init). @default `tini` of the agent's PATH, when it is there
   */
  init?: string | false;
  /**
   * The user workers run as, through `setpriv` (`worker_user.ts`), the
   * agent being root. @default the agent's own user
   */
  workerUser?: WorkerUser;
  /**
   * Fences pod pairs' host ends off the node; why it could not.
   * @default {@linkcode fenceInterface}
   */
  fence?: (name: string) => Promise<string[]>;
}

/** What a dump directory says about the process in it (`inferx.json`). */
export interface ImageMeta {
  /** Files it held open, reattached on restore. */
  files: OpenFile[];
  /** Its output file at the dump; a restored copy writes to its own instead. */
  logFile?: string;
  port: number;
  /** Dumped from its own namespaces (network, and PID unless `ownPids` is false). */
  namespaced: boolean;
  /**
   * Dumped as the init of a PID namespace of its own: restorable any number
   * of times, side by side. False for GPU workers (parked in a file: their
   * own pod resumes from it, with the PIDs it had). Absent in older images:
   * as `namespaced`.
   */
  ownPids?: boolean;
  /** It led its own session, so CRIU dumped it without `--shell-job`. */
  ownSession?: boolean;
  /** Dumped from below an init of its namespace (tini): the image's first process is that init. */
  init?: boolean;
  /** Its GPU memory was checkpointed into host memory before the dump. */
  gpu: boolean;
  /** The GPUs it used, by index. */
  gpus: number[];
  /**
   * The size of each file CRIU wrote (by its path in the directory), checked
   * before a restore: a truncated or missing file is found at once rather
   * than by CRIU reading it (which can spin until its time limit). Absent in
   * older images, and when it could not be written.
   */
  images?: Record<string, number>;
}

interface Child {
  /** The process as spawned; undefined once dumped to a file or restored by CRIU. */
  proc?: Deno.ChildProcess;
  /** The worker itself, or the init of its PID namespace when one runs above it (`worker`). */
  pid: number;
  /**
   * The worker, when an init (tini) runs above it as its namespace's first
   * process (`pid`): its process group is the one signals go to.
   */
  worker?: number;
  port: number;
  net?: PodNet;
  /** Started under setsid: it leads its own session. */
  ownSession?: boolean;
  /** The init of a PID namespace of its own (pod networks, no GPU). */
  ownPids?: boolean;
  logFile?: string;
  logs: LogRing;
  stopping: boolean;
  paused: boolean;
  /** The tier it is parked in, when parked. */
  tier?: StandbyTier;
  /** Whether its GPU memory was checkpointed before a dump to file. */
  gpu?: boolean;
  /** Set while CRIU dumps it: its end is the dump's doing, not a crash. */
  dumping?: boolean;
  /** How it ended while being dumped, if it did. */
  endedDumping?: string;
  gpus: number[];
  exited: Promise<string>;
  /**
   * Set while its start or restore is under way: an exit then is that
   * start's failure (it stops the pod and says why), told by no one else.
   */
  settling?: Promise<void>;
  /** Settles once an exit nobody asked for was told (`#watchExit`). */
  told?: Promise<void>;
  /** Follows its output file into `logs`. */
  follow?: Follower;
  /** The last of its park, resume and snapshot operations, which run one after another. */
  ops?: Promise<void>;
  /** Its control group (made at its start, removed at its end; kept while parked in a file). */
  cgroup?: PodCgroup;
  /** Its memory limit (MB), as its exit says when the limit killed it. */
  memMB: number;
  /**
   * Its GPU slices' memory (MB), which its host memory holds too while the
   * driver keeps it there (checkpointed): its limit is raised by as much then.
   */
  gpuMemMB: number;
}

/** The memory (MB) of a pod's GPU slices, all together. */
const gpuMemOf = (spec: PodSpec) => spec.gpus.reduce((sum, g) => sum + g.vramMB, 0);

/** What sets a pod's memory limit: its group, its own limit and its GPU slices' memory. */
type Limits = Pick<Child, "cgroup" | "memMB" | "gpuMemMB">;

/** Whether `pid` has a handler of its own for SIGTERM (`SigCgt` in its status); a gone one has. */
async function handlesSigterm(pid: number): Promise<boolean> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`).catch(() => "");
  const caught = status.match(/^SigCgt:\s*([0-9a-f]+)$/m)?.[1];
  return caught === undefined || (BigInt(`0x${caught}`) & (1n << 14n)) !== 0n; // SIGTERM is 15
}

/** Sends `sig` to `pid`, ignoring a process already gone. */
function signal(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(pid, sig);
  } catch {
    // already gone
  }
}

/**
 * Ends a worker and whatever it started: the whole process group of one that
 * leads its own session (helpers, `--workers` children), else the process.
 */
function signalWorker(child: Child, sig: Deno.Signal): void {
  signal(child.ownSession ? -groupOf(child) : child.pid, sig);
}

/** The process group of a worker that leads its own (below its namespace's init, when one runs). */
function groupOf(child: Child): number {
  return child.worker ?? child.pid;
}

const toolPaths = new Map<string, string>();

/**
 * Where the agent's own `PATH` finds `name` (`nsenter`, `setsid`, `env`...):
 * the helpers that start a worker are run by their paths, whatever `PATH` the
 * function gives its worker (a virtualenv's `bin`). `name` itself when not
 * found (the spawn then says so).
 */
function toolPath(name: string): string {
  let found = toolPaths.get(name);
  if (found) return found;
  found = findTool(name) ?? name;
  toolPaths.set(name, found);
  return found;
}

/** The agent's own `PATH`, where its helpers are found. */
function toolSearchPath(): string {
  return Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin";
}

/**
 * `command` run by the last helper before the worker, after `setpriv` where
 * there is one: a shell that reads from its standard input (a pipe the agent
 * writes {@linkcode workerEnvScript} to, then closes) one line that runs `env
 * -i` with the worker's environment, then `command`. No helper runs with the
 * function's variables (its `LD_PRELOAD` or `PATH` would run its code as the
 * agent, root), and they are in no process's arguments, which any local user
 * may read (`/proc/PID/cmdline`). (`env` takes the words with `=` before the
 * command as variables: a command whose path has one goes through a shell.)
 */
export function withWorkerEnv(command: string[]): string[] {
  const run = command[0].includes("=") ? ["/bin/sh", "-c", 'exec "$0" "$@"', ...command] : command;
  return ["/bin/sh", "-s", "--", ...run];
}

/** What the shell of {@linkcode withWorkerEnv} reads: `env -i` with `env` and its arguments, its input none. */
export function workerEnvScript(env: Record<string, string>): Uint8Array {
  const words = Object.entries(env).map(([k, v]) => shellQuote(`${k}=${v}`)).join(" ");
  return new TextEncoder().encode(
    `exec ${shellQuote(toolPath("env"))} -i -- ${words} "$@" </dev/null\n`,
  );
}

/** `s` as one word of a POSIX shell, whatever it holds (NUL aside). */
const shellQuote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;

/** The path of the executable `name` in the agent's `PATH`, when it is there. */
export function findTool(name: string): string | undefined {
  for (const dir of toolSearchPath().split(":")) {
    try {
      const info = Deno.statSync(`${dir}/${name}`);
      if (info.isFile && (info.mode ?? 0o111) & 0o111) return `${dir}/${name}`;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Whether `setsid` (util-linux) is here, to start a worker in its own session and group. */
let setsidHere: boolean | undefined;
function hasSetsid(): boolean {
  if (setsidHere === undefined) {
    try {
      setsidHere =
        new Deno.Command("setsid", { args: ["--version"], stdout: "null", stderr: "null" })
          .outputSync().success;
    } catch {
      setsidHere = false;
    }
  }
  return setsidHere;
}

/** Whether `pid` is a live process (not gone, not a zombie). */
async function pidAlive(pid: number): Promise<boolean> {
  const s = await procState(pid);
  return s !== undefined && s.state !== "Z";
}

/**
 * Resolves when no process, not even a zombie, holds `pid` (reaping it when
 * it was handed to this process); throws after `timeoutMs`.
 */
export async function pidFreed(pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let liveSince: number | undefined;
  for (let s; (s = await procState(pid));) {
    if (await reapIfOrphanedToUs(pid) !== undefined) continue;
    // A live process there past a moment is not the one that was dumped (killed after its
    // dump, it ends at once and waits only to be reaped): another took its PID meanwhile.
    if (s.state !== "Z") {
      liveSince ??= Date.now();
      if (Date.now() - liveSince > LIVE_HOLDER_MS) {
        const comm = await Deno.readTextFile(`/proc/${pid}/comm`).catch(() => "?");
        throw new Error(`PID ${pid} is taken by another process (${comm.trim()})`);
      }
    } else liveSince = undefined;
    if (Date.now() > deadline) throw new Error(`PID ${pid} is still taken (an unreaped process)`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** How long a live process may hold a dumped worker's PID before it is taken for another's. */
const LIVE_HOLDER_MS = 1000;

/**
 * Resolves when `pid` is gone (or a zombie, reaped when it was handed to
 * this process): for restored workers, which are not children Deno spawned.
 */
async function pidExited(pid: number): Promise<string> {
  while (await pidAlive(pid)) await new Promise((r) => setTimeout(r, 100));
  // How it ended, when it was handed to this process (a subreaper); else none can tell.
  return await reapIfOrphanedToUs(pid) ?? "exited (how, none can tell: not a child of the agent)";
}

/** How a restored worker ended (`pid`: its namespace's init, tini when `init`). */
async function restoredExit(pid: number, init: boolean): Promise<string> {
  const why = await pidExited(pid);
  return init ? initSaid(why) : why;
}

/**
 * How a worker ended, `why`, told as its memory limit's doing when the
 * kernel killed a process of its group for it (an exit by SIGKILL, or one
 * nobody could tell of).
 */
async function limitSaid(
  why: Promise<string>,
  cgroup: PodCgroup | undefined,
  memMB: number,
): Promise<string> {
  const w = await why;
  if (!cgroup || !/SIGKILL|none can tell/.test(w) || await cgroup.oomKills() === 0) return w;
  return `killed by its memory limit (${memMB} MB; resources.Mem)`;
}

/**
 * The worker below an init (tini) of its PID namespace: the process that is
 * 2 there (tini's first and only fork; a process the worker left behind is
 * tini's child too, once orphaned, and comes first in a restored tree's
 * list). Undefined when none is seen: the init ended first (a command that
 * could not run; its exit tells why), or forked none within `timeoutMs`
 * (signals then go to the init, which passes them on).
 */
async function workerBelow(init: number, timeoutMs = 5000): Promise<number | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (await pidAlive(init) && Date.now() <= deadline) {
    const kids = await Deno.readTextFile(`/proc/${init}/task/${init}/children`).catch(() => "");
    for (const kid of kids.trim().split(/\s+/).filter(Boolean)) {
      const status = await Deno.readTextFile(`/proc/${kid}/status`).catch(() => "");
      if (status.match(/^NSpid:.*\s(\d+)$/m)?.[1] === "2") return Number(kid);
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  return undefined;
}

/**
 * How a worker below an init (tini) ended, from the init's own end: tini
 * exits with 128 + the signal that ended the worker, as a shell does (a
 * worker that exits with such a code itself reads the same: the code is
 * given too).
 */
function initSaid(why: string): string {
  const code = Number(why.match(/^exit code (\d+)$/)?.[1]);
  if (!(code > 128 && code < 160)) return why;
  return `killed by ${signalName(code - 128)} (exit code ${code} of its init)`;
}

/**
 * The only child of `pid`, once it has one (`unshare --fork` makes the worker
 * its child); undefined when `pid` ended first (its child, a command that
 * could not run under tini, say, ended at once: its exit tells why).
 */
async function childOf(pid: number, timeoutMs = 5000): Promise<number | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const kids = await Deno.readTextFile(`/proc/${pid}/task/${pid}/children`).catch(() => "");
    const first = kids.trim().split(/\s+/).filter(Boolean)[0];
    if (first) return Number(first);
    if (!await pidAlive(pid)) return undefined;
    if (Date.now() > deadline) throw new Error(`process ${pid} started no worker`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Once this much of a worker's output file has been read into its ring, the
 * blocks read are given back (a hole punched at the file's start: the worker
 * appends, so it writes on at the end and loses nothing): a chatty worker
 * fills no disk. Where holes cannot be punched, the file is emptied instead.
 */
const LOG_FILE_MAX = 8 * 1024 * 1024;
/**
 * The most of the file read in one pass: its ring keeps the last 200 lines
 * (of 4 KiB at most), so a worker writing faster than this is read has only
 * its latest output read, the rest passed over (and said so in the ring).
 */
const LOG_READ_MAX = 1024 * 1024;
/**
 * A file's size (holes included) past which it is emptied rather than
 * punched further: ext4 takes files of 16 TiB at most, which a worker
 * writing 100 MB/s reaches in two days.
 */
const LOG_HOLE_MAX = 2 ** 40;
/**
 * Disk a worker's output file may hold past what its kept bytes need before
 * what lies past its end is given back: a worker can allocate blocks there
 * through its descriptor (`fallocate` with `FALLOC_FL_KEEP_SIZE`) without
 * the size growing, which alone would bound it (a file system's own
 * allocation ahead, XFS's say, stays well below this).
 */
const LOG_ALLOC_SLACK = 64 * 1024 * 1024;

/** Follows a worker's output file into its ring. */
interface Follower {
  /** Stops following (a {@linkcode catchUp} still reads). */
  stop(): void;
  /** Reads what the file holds now into the ring (the ring lags a pass otherwise). */
  catchUp(): Promise<void>;
  /** Where the file's kept bytes begin: before it, a hole (blocks given back, read as zeros). */
  keptFrom(): number;
}

/**
 * Appends what is written to `path` to `ring`; gives back the blocks read
 * once they pass `maxBytes` (or empties the file where it cannot), while
 * `mayTrim()` (not while the worker's image is being written or kept). Each
 * pass reads what the file held when it began (its last `readMax` bytes at
 * most), every 200 ms, or every 10 ms while behind: a worker that never
 * stops writing is neither chased nor lets the file grow past what it writes
 * in a few passes.
 */
function followFile(
  path: string,
  ring: LogRing,
  mayTrim: () => boolean = () => true,
  maxBytes = LOG_FILE_MAX,
  readMax = LOG_READ_MAX,
): Follower {
  let stopped = false;
  let offset = 0;
  /** The file's bytes before this are a hole: read, and their blocks given back. */
  let punched = 0;
  let dec = new TextDecoder();
  /** When the log last said that disk allocated outside the kept bytes was given back. */
  let allocSaidAt = -Infinity;
  const buf = new Uint8Array(64 * 1024);
  const skip = (bytes: number) => {
    ring.push(`\n[${bytes} bytes of output not read: written faster than they are followed]\n`);
    dec = new TextDecoder();
  };
  /** One pass; whether it found the worker writing fast (the file filled, or read in part). */
  const pass = async (): Promise<boolean> => {
    let behind = false;
    try {
      using f = await Deno.open(path, { read: true, write: true });
      /** Reads the file up to what it holds now (its last `readMax` bytes at most). */
      const readOn = async () => {
        const size = (await f.stat()).size;
        if (size < offset) offset = punched = 0; // emptied
        if (size - offset > readMax) {
          skip(size - readMax - offset);
          offset = size - readMax;
          behind = true;
        }
        await f.seek(offset, Deno.SeekMode.Start);
        while (offset < size) {
          const n = await f.read(buf.subarray(0, Math.min(buf.length, size - offset)));
          if (n === null || n === 0) break;
          offset += n;
          ring.push(dec.decode(buf.subarray(0, n), { stream: true }));
        }
      };
      await readOn();
      const st = await f.stat();
      const allocated = st.blocks === null ? 0 : st.blocks * 512;
      if (allocated > st.size - punched + maxBytes + LOG_ALLOC_SLACK && mayTrim()) {
        // Blocks allocated past its end, or back in the hole before what it keeps: truncated
        // to its size (what it holds is kept) and the hole punched again, they go back (a
        // worker writing in that moment may lose those bytes: only such a worker).
        await f.truncate(st.size);
        if (punched > 0) await punchHole(path, 0, punched);
        const back = allocated - ((await f.stat()).blocks ?? 0) * 512;
        const now = Date.now();
        if (back > 0 && now - allocSaidAt > 60_000) {
          allocSaidAt = now;
          ring.push(
            `\n[${back} bytes of disk allocated outside the output's kept bytes given back]\n`,
          );
        }
      }
      if (offset - punched > maxBytes && mayTrim()) {
        behind = true;
        // Whole blocks of what was read, up to where this pass's read ended.
        const upTo = offset - offset % 4096;
        if (offset < LOG_HOLE_MAX && await punchHole(path, punched, upTo)) {
          punched = upTo;
        } else {
          // What came during this pass's read is read too before the file is emptied: a
          // worker's last lines (its crash, say) must not go with it; only what is written in
          // the moment between that read and the emptying is lost.
          await readOn();
          const unread = (await f.stat()).size - offset;
          await f.truncate(0);
          offset = punched = 0;
          if (unread > 0) skip(unread);
        }
      }
    } catch {
      // not there yet, or gone
    }
    return behind;
  };
  /** Passes run one at a time: the loop's and those asked for. */
  let last = Promise.resolve(false);
  const next = () => last = last.then(pass, pass);
  (async () => {
    while (!stopped) {
      const behind = await next();
      await new Promise((r) => setTimeout(r, behind ? 10 : 200));
    }
  })();
  return {
    stop: () => stopped = true,
    catchUp: async () => {
      await next();
    },
    keptFrom: () => punched,
  };
}

/**
 * Makes `dir` (private) and `logFile` in it, and writes a block beside it:
 * a worker whose output cannot be written (a full or read-only file system)
 * fails at its first line with nothing to say why, so the start fails here,
 * saying it.
 */
async function outputWritable(dir: string, logFile: string): Promise<void> {
  const probe = `${logFile}.probe`;
  try {
    privateDir(dir);
    await Deno.writeFile(logFile, new Uint8Array(), { append: true });
    await Deno.writeFile(probe, new Uint8Array(4096));
  } catch (err) {
    throw new InferxError(
      "worker_failed",
      `Cannot write the worker's output to ${logFile}: ${(err as Error).message}`,
    );
  } finally {
    await Deno.remove(probe).catch(() => {});
  }
}

/** Whether a worker's output file may be emptied: not while its image is written or kept. */
const mayTrimLog = (child: { dumping?: boolean; tier?: StandbyTier }) =>
  !child.dumping && child.tier !== "file";

/** Bytes under `dir`. */
export async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for (const size of (await fileSizes(dir)).values()) n += size;
  return n;
}

/** The size of every file under `dir`, by its path below it. */
async function fileSizes(dir: string, under = ""): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const e of Deno.readDir(`${dir}${under}`)) {
    const rel = `${under}/${e.name}`;
    if (e.isDirectory) { for (const [p, n] of await fileSizes(dir, rel)) out.set(p, n); }
    else if (e.isFile) out.set(rel.slice(1), (await Deno.stat(`${dir}${rel}`)).size);
  }
  return out;
}

/** Files of a dump directory that are not CRIU's image: their sizes are not recorded. */
const NOT_IMAGE = new Set(["inferx.json", "inferx.json.tmp", "dump.log"]);

/**
 * Records the size of each image file in `meta` (`images`), written over
 * `inferx.json` through a rename: a failed write leaves the one without sizes.
 */
async function recordImages(dir: string, meta: ImageMeta): Promise<void> {
  const images: Record<string, number> = {};
  for (const [p, n] of await fileSizes(dir)) if (!NOT_IMAGE.has(p)) images[p] = n;
  try {
    await Deno.writeTextFile(`${dir}/${META}.tmp`, JSON.stringify({ ...meta, images }));
    await Deno.rename(`${dir}/${META}.tmp`, `${dir}/${META}`);
    meta.images = images;
  } catch (err) {
    await Deno.remove(`${dir}/${META}.tmp`).catch(() => {});
    log.warn("Cannot record the image sizes in {dir}; it is restored unchecked: {error}", {
      dir,
      error: String(err),
    });
  }
}

/**
 * Throws `worker_failed` when a file of the image in `dir` is missing or of
 * another size than when it was dumped.
 */
async function checkImages(dir: string, meta: ImageMeta, podId: string): Promise<void> {
  for (const [p, size] of Object.entries(meta.images ?? {})) {
    const now = await Deno.stat(`${dir}/${p}`).then((s) => s.size, () => undefined);
    if (now === size) continue;
    throw new InferxError(
      "worker_failed",
      `Cannot restore pod ${podId}: its image in ${dir} is damaged: ${p} ${
        now === undefined ? "is gone" : `has ${now} bytes`
      }, ${size} when it was dumped`,
    );
  }
}

const META = "inferx.json";

/** What a dump directory says about its process, or undefined when it holds no image. */
async function readMeta(dir: string): Promise<ImageMeta | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/${META}`));
  } catch {
    return undefined;
  }
}

/** Runs pods as processes of this host. */
export class ProcessRuntime implements PodRuntime {
  readonly name = "process";
  /**
   * Paused: SIGSTOP keeps the process, its memory and any GPU memory; SIGCONT
   * resumes it. Host memory (when the driver has the checkpoint API): the
   * driver locks the worker's CUDA calls and moves its GPU memory into its
   * host memory, freeing the GPU; restore and unlock bring it back. File
   * (with CRIU): the process is dumped to disk and ends; restore rebuilds it.
   */
  readonly standbyTiers: readonly StandbyTier[];
  /** Whether running pods can be snapshotted and started from snapshots. */
  readonly snapshots: boolean;
  /** The init run above each worker in a PID namespace of its own, when there is one. */
  readonly init: string | undefined;
  #children = new Map<string, Child>();
  #options: ProcessRuntimeOptions;

  constructor(options: ProcessRuntimeOptions = {}) {
    this.#options = options;
    const tiers: StandbyTier[] = ["paused"];
    if (options.cuda?.hasCheckpointApi) tiers.push("host_memory");
    // CRIU cannot dump a worker without privileges: in a PID namespace of its own, its
    // parasite code (which runs as the worker) must mount a /proc there.
    const dumpable = options.criu !== undefined && !options.workerUser;
    if (dumpable) tiers.push("file");
    this.standbyTiers = tiers;
    this.snapshots = dumpable && options.podNetworks !== undefined;
    this.init = options.podNetworks ? (options.init ?? findTool("tini")) || undefined : undefined;
  }

  get #snapshots(): string {
    return this.#options.snapshotDir ?? `${this.#options.workDir ?? Deno.cwd()}/snapshots`;
  }

  /** The worker process of a pod, for tier operations and tests. */
  pidOf(podId: string): number | undefined {
    const c = this.#children.get(podId);
    return c && c.tier !== "file" ? c.worker ?? c.pid : undefined;
  }

  get #scope(): string {
    return this.#options.scope ?? "default";
  }

  /**
   * Worker processes cannot be re-attached (their output pipes died with the
   * old agent), so every process of this scope left behind is killed, and
   * this agent's pod namespaces removed.
   */
  async recover(): Promise<{ adopted: AdoptedPod[]; removed: number }> {
    const removed = await sweepProcessPods({
      scope: this.#scope,
      snapshotDir: this.#snapshots,
      podNetworks: this.#options.podNetworks,
      cgroups: this.#options.cgroups,
    });
    // Namespaces for the next pods, made ahead once the earlier run's are gone.
    this.#options.podNetworks?.fill().catch(() => {});
    return { adopted: [], removed };
  }

  /** The environment of a worker. */
  #env(
    spec: PodSpec,
    host: string,
    port: number,
    logFile?: string,
    user?: WorkerUser,
  ): Record<string, string> {
    return {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: user ? user.home ?? "/" : Deno.env.get("HOME") ?? "/tmp",
      ...Object.fromEntries(spec.template.envs),
      ...platformEnv(spec),
      PORT: String(port),
      HOST: host,
      INFERX_SCOPE: this.#scope,
      ...(logFile ? { INFERX_LOG_FILE: logFile } : {}),
    };
  }

  async start(spec: PodSpec): Promise<RunningPod> {
    const user = this.#options.workerUser;
    const t = spec.template;
    if (t.commands.length === 0) {
      throw new InferxError(
        "worker_failed",
        `Cannot start pod ${spec.podId}: function ${spec.func} has no commands (the process runtime runs commands; image ${t.image} needs the Docker runtime)`,
      );
    }
    const cgroup = await this.#makeCgroup(spec, "start");
    const nets = this.#options.podNetworks;
    const net = nets ? await this.#podNet(nets, spec, cgroup) : undefined;
    // In a namespace of its own the worker takes its spec's port on every address there.
    const port = net ? t.port : freePort(this.#options.host ?? "127.0.0.1");
    const listenHost = net ? "0.0.0.0" : this.#options.host ?? "127.0.0.1";
    const [cmd, ...args] = t.commands;
    const logs = new LogRing();
    // `deno`: the runtime running the platform, unless it is a compiled binary (which runs
    // nothing but itself): then the `deno` of the PATH.
    const bin = cmd === "deno" && !Deno.build.standalone ? Deno.execPath() : cmd;
    // With the file tier, output goes to a file CRIU can dump and restore.
    const toFile = net !== undefined ||
      (this.#options.outputToFile ?? this.#options.criu !== undefined);
    const logFile = toFile ? `${this.#snapshots}/${spec.podId}.log` : undefined;
    if (logFile) await outputWritable(this.#snapshots, logFile);
    const env = this.#env(spec, listenHost, port, logFile, user);
    // The helpers run with the agent's environment, the worker with its own (set by `env -i`, the
    // last of them): a function's `LD_PRELOAD` or `PATH` in the helpers would run its code as
    // the agent (root) before `setpriv` drops to the worker's user.
    const helperEnv = { PATH: toolSearchPath(), ...(logFile ? { INFERX_LOG_FILE: logFile } : {}) };
    // nsenter joins the pod's network namespace; unshare makes a new PID
    // namespace (not for a GPU worker: see the module's doc), whose init is
    // tini when the node has it, else the worker; setsid its own session:
    // CRIU dumps whole sessions, and cannot dump one whose leader it cannot
    // see (a node agent in a container whose session began outside it).
    const ownPids = net !== undefined && spec.gpus.length === 0;
    const init = ownPids ? this.init : undefined;
    // Its user's, when it has one of its own: the last helper drops the agent's privileges
    // (after the shell opened the output file, which stays the agent's).
    const drop = user ? dropPrivileges(toolPath("setpriv"), user) : [];
    // tini's own output goes where the worker's does (a pipe to the agent could not be dumped).
    const redirect = 'exec "$@" >>"$INFERX_LOG_FILE" 2>&1';
    // The worker (below tini, in a PID namespace of its own), as its user, with its environment.
    const worker = [
      ...drop,
      ...withWorkerEnv(init ? [init, "-g", "--", bin, ...args] : [bin, ...args]),
    ];
    const shell = ["/bin/sh", "-c", redirect, "sh", ...worker];
    // The helpers by the agent's PATH; the worker by its own.
    const [nsenter, unshare, setsid] = ["nsenter", "unshare", "setsid"].map(toolPath);
    // Every pod runs in a session of its own from its first process on, its helpers too: in the
    // agent's process group, a helper stopped with its pod (a pause stops all its control
    // group) would be killed by SIGHUP once that group is orphaned (the shell that started the
    // agent exits). In a PID namespace the worker starts another session, inside it, for CRIU.
    const argv = ownPids
      ? [setsid, nsenter, `--net=${net.nsPath}`, "--", unshare, "--pid", "--fork", setsid, ...shell]
      : net
      ? [setsid, nsenter, `--net=${net.nsPath}`, "--", ...shell]
      : logFile && (this.#options.criu || hasSetsid())
      ? [setsid, ...shell]
      : logFile
      ? shell
      : hasSetsid()
      ? [setsid, ...worker] // its own group: stopped with what it starts
      : worker;
    const ownSession = argv[0] === setsid || net !== undefined;
    // The worker joins its control group before it runs: what it starts is counted there too.
    if (cgroup) argv.unshift(...cgroup.joinPrefix);
    let proc: Deno.ChildProcess;
    try {
      proc = new Deno.Command(argv[0], {
        args: argv.slice(1),
        env: helperEnv,
        clearEnv: true,
        cwd: this.#options.workDir,
        stdin: "piped", // the worker's environment, for the last helper (withWorkerEnv)
        stdout: logFile ? "null" : "piped",
        // As a PID namespace's init the worker is unshare's child: what unshare says of its
        // end is heard (the worker's own output goes to its file).
        stderr: logFile && !ownPids ? "null" : "piped",
      }).spawn();
    } catch (err) {
      if (net) await nets!.remove(net);
      await cgroup?.remove();
      throw new InferxError(
        "worker_failed",
        `Cannot start pod ${spec.podId}: ${cmd}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    // Written, then closed: the shell reads to its end (a chain that failed before it: unread).
    const input = proc.stdin.getWriter();
    input.write(workerEnvScript(env)).then(() => input.close()).catch(() => {});
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const text of s.pipeThrough(new TextDecoderStream())) logs.push(text);
    };
    let helperSaid = "";
    const pumps = !logFile
      ? Promise.all([pump(proc.stdout), pump(proc.stderr)]).catch(() => {})
      : ownPids
      ? (async () => {
        for await (const text of proc.stderr.pipeThrough(new TextDecoderStream())) {
          if (helperSaid.length < 4096) helperSaid += text;
        }
      })().catch(() => {})
      : Promise.resolve();
    const child: Child = {
      proc,
      pid: proc.pid,
      port,
      net,
      ownSession,
      ownPids,
      logFile,
      logs,
      stopping: false,
      paused: false,
      gpus: spec.gpus.map((g) => g.index),
      cgroup,
      memMB: spec.memMB,
      gpuMemMB: gpuMemOf(spec),
      exited: limitSaid(
        proc.status.then(async (s) => {
          // Its last output, when the pipes end soon: a process it started may hold them open
          // for as long as it lives, and the worker's exit must be told all the same.
          let timer: ReturnType<typeof setTimeout> | undefined;
          await Promise.race([pumps, new Promise((r) => timer = setTimeout(r, 500))]);
          clearTimeout(timer);
          if (s.signal) return `killed by ${s.signal}`;
          // util-linux 2.38's unshare cannot pass SIGKILL on (the OOM killer's): it exits 1.
          if (s.code === 1 && /sigprocmask unblock failed/.test(helperSaid)) {
            return "killed by SIGKILL";
          }
          if (s.code === 125 && cgroup) return "exit code 125 (cannot join its control group?)";
          return init ? initSaid(`exit code ${s.code}`) : `exit code ${s.code}`;
        }),
        cgroup,
        spec.memMB,
      ),
    };
    if (logFile) {
      child.follow = followFile(
        logFile,
        logs,
        () => mayTrimLog(child),
        this.#options.outputFileMaxBytes,
      );
    }
    this.#children.set(spec.podId, child);
    const settled = settling(child);
    this.#watchExit(spec.podId, child);
    try {
      if (ownPids) {
        const worker = await childOf(proc.pid);
        if (worker === undefined) {
          throw new Error(`worker exited before it was ready (${await child.exited})`);
        }
        child.pid = worker;
      }
      // None seen: its init ended at once, and the probe says how.
      if (init) child.worker = await workerBelow(child.pid);
      await this.#probe(child, spec);
    } catch (err) {
      child.stopping = true;
      signalWorker(child, "SIGKILL");
      await child.exited;
      const tail = await this.#tail(child);
      await this.stop(spec.podId, 1000);
      throw new InferxError("worker_failed", withOutput((err as Error).message, tail));
    } finally {
      settled();
    }
    return this.#running(spec.podId, child);
  }

  /** What the agent holds of a started pod. */
  #running(podId: string, child: Child): RunningPod {
    return {
      podId,
      endpoint: this.#endpoint(child),
      exited: child.exited,
      // Its process (the worker, or its namespace's init) and the worker below an init.
      alive: async () =>
        await pidAlive(child.pid) && (child.worker === undefined || await pidAlive(child.worker)),
    };
  }

  /**
   * The last lines a worker printed. With an output file, the ring is caught
   * up with it first: both then end at the same line, and the longer tail is
   * given (the ring keeps 200 lines, the file's last 64 KiB may hold more,
   * or none when it was just emptied where holes cannot be punched).
   */
  async #tail(child: Child, lines = 20): Promise<string> {
    if (!child.logFile) return child.logs.tail(lines);
    await child.follow?.catchUp();
    const ring = child.logs.tail(lines);
    try {
      using f = await Deno.open(child.logFile, { read: true });
      const size = (await f.stat()).size;
      // Not from the hole at its start (zeros): a punch after that was read leaves zeros too.
      const from = Math.min(size, Math.max(child.follow?.keptFrom() ?? 0, size - 64 * 1024));
      await f.seek(from, Deno.SeekMode.Start);
      const buf = new Uint8Array(size - from);
      let o = 0;
      while (o < buf.length) {
        const n = await f.read(buf.subarray(o));
        if (n === null) break;
        o += n;
      }
      const file = new TextDecoder().decode(buf.subarray(0, o)).replace(/^\0+/, "")
        .replace(/\n$/, "").split("\n")
        .slice(-lines);
      return file.length > ring.split("\n").length ? file.join("\n") : ring;
    } catch {
      return ring;
    }
  }

  /**
   * Ends `child`'s control group: what is left in it is killed (a process its
   * worker started in a session of its own), then the group goes. `stopped`
   * (its pod id): the worker was stopped, so a kill by its memory limit
   * before that (while it answered a call, say) is said here, where nothing
   * else tells it.
   */
  async #endCgroup(child: Child, stopped?: string): Promise<void> {
    const g = child.cgroup;
    if (!g) return;
    if (stopped && await g.oomKills() > 0) {
      log.warn(
        "Pod {pod}: a process of its worker was killed by its memory limit ({mb} MB; resources.Mem)",
        {
          pod: stopped,
          mb: child.memMB,
        },
      );
    }
    await g.killAll();
    await g.remove();
  }

  /** The network namespace of a pod about to start; none made, its control group goes. */
  async #podNet(nets: PodNetworks, spec: PodSpec, cgroup?: PodCgroup): Promise<PodNet> {
    await (this.#fenced ??= this.#fence());
    try {
      return await nets.create(spec.podId);
    } catch (err) {
      await cgroup?.remove();
      throw err;
    }
  }

  /** Once the host ends of pod pairs are fenced off the node (or said not to be). */
  #fenced?: Promise<void>;

  /**
   * Fences the host ends of the pod pairs off the node (`worker_fence.ts`),
   * once, before the first pod: a worker would otherwise reach every
   * listener of the node on `0.0.0.0` through its host end.
   */
  async #fence(): Promise<void> {
    const problems = await (this.#options.fence ?? fenceInterface)(POD_HOST_ENDS);
    if (problems.length) {
      logger("nodeagent").warn(
        "Workers can reach this node's own ports through their pod pairs: {problems}. Fence " +
          "them by hand: {commands}",
        { problems: problems.join("; "), commands: fenceCommands(POD_HOST_ENDS) },
      );
    }
  }

  /** The control group of a pod about to start or be restored (none without cgroups). */
  async #makeCgroup(spec: PodSpec, what: "start" | "restore"): Promise<PodCgroup | undefined> {
    const cgroups = this.#options.cgroups;
    if (!cgroups) return undefined;
    try {
      return await cgroups.create(spec.podId, spec);
    } catch (err) {
      throw new InferxError(
        "worker_failed",
        `Cannot ${what} pod ${spec.podId}: cannot make its control group: ${
          (err as Error).message
        }`,
        { cause: err },
      );
    }
  }

  #endpoint(child: Child): string {
    return `${child.net?.podAddr ?? this.#options.host ?? "127.0.0.1"}:${child.port}`;
  }

  #probe(child: Child, spec: PodSpec): Promise<void> {
    const host = child.net?.podAddr ?? this.#options.host ?? "127.0.0.1";
    return waitForProbe(host, child.port, spec.template.probe, child.exited, {
      timeoutMs: spec.template.startupTimeoutS * 1000,
      intervalMs: this.#options.probeIntervalMs,
      ownNetwork: child.net ? "pod" : undefined,
    });
  }

  /** Reports an exit nobody asked for; forgets the child either way. */
  #watchExit(podId: string, child: Child): void {
    child.told = child.exited.then((why) => {
      if (child.dumping) child.endedDumping = why; // told by the park if its dump failed
      else return this.#reportExit(podId, child, why);
    });
  }

  /** Tells the agent of an exit nobody asked for and forgets the child. */
  async #reportExit(podId: string, child: Child, why: string): Promise<void> {
    // During its start or restore, that start's to tell (a restore that fails is followed by a
    // fresh start under the same id, which an exit told now would orphan).
    await child.settling;
    if (this.#children.get(podId) !== child || child.tier === "file") return;
    if (child.stopping) return; // stop() cleans up
    // What it started goes with it: nothing answers for the pod any more.
    if (child.ownSession && await groupAlive(groupOf(child))) signalWorker(child, "SIGKILL");
    child.follow?.stop();
    this.#children.delete(podId);
    await this.#endCgroup(child);
    // Removed before the exit is told: a pod started again under its id finds its name free.
    if (child.net) await this.#options.podNetworks?.remove(child.net).catch(() => {});
    this.#options.onExit?.(podId, withOutput(why, await this.#tail(child)));
    // Its output was told with its exit: its files here go (the agent only forgets it).
    if (child.logFile) await Deno.remove(child.logFile).catch(() => {});
    await Deno.remove(`${this.#snapshots}/${podId}.restore`, { recursive: true }).catch(() => {});
  }

  async stop(podId: string, graceMs = 5000): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) return;
    // Ended on its own a moment before (a call saw it fail and gave its pod back, which is
    // stopped now): its exit is told as its own, how and its last output with it (the report
    // waits for its output, up to 500 ms, and the stop came first: both were lost).
    if (
      !child.stopping && !child.dumping && child.tier !== "file" && !child.paused &&
      !await pidAlive(child.pid)
    ) {
      await child.told;
      if (this.#children.get(podId) !== child) return;
    }
    child.stopping = true;
    // A park, resume or snapshot under way ends first (a checkpoint or a
    // restore cut off half way leaves a process nobody owns); those queued
    // behind it see `stopping` and give up.
    await child.ops;
    if (child.tier !== "file") {
      signalWorker(child, "SIGTERM");
      // As its PID namespace's init the worker sees only the signals it handles: one with no
      // handler for SIGTERM (the default of Python's, Node's and Deno's servers) would sit out
      // the whole grace period, where SIGTERM's default action ends a process at once.
      if (child.ownPids && child.worker === undefined && !await handlesSigterm(child.pid)) {
        signalWorker(child, "SIGKILL");
      }
      // A stopped process only sees SIGTERM once continued.
      if (child.paused) await this.#signalAll(child, "SIGCONT");
      const deadline = Date.now() + graceMs;
      const timer = setTimeout(() => signalWorker(child, "SIGKILL"), graceMs);
      await child.exited;
      // What it started may outlive it (a helper that ignores SIGTERM): the rest of the
      // grace period for its group, then SIGKILL.
      while (child.ownSession && await groupAlive(groupOf(child)) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      clearTimeout(timer);
      if (child.ownSession && await groupAlive(groupOf(child))) signalWorker(child, "SIGKILL");
    }
    child.follow?.stop();
    this.#children.delete(podId);
    await this.#endCgroup(child, podId);
    if (child.net) await this.#options.podNetworks!.remove(child.net);
    if (child.logFile || this.#options.criu) {
      await Deno.remove(`${this.#snapshots}/${podId}`, { recursive: true }).catch(() => {});
      await Deno.remove(`${this.#snapshots}/${podId}.log`).catch(() => {});
      await Deno.remove(`${this.#snapshots}/${podId}.restore`, { recursive: true }).catch(() => {});
    }
  }

  async park(podId: string, tier: StandbyTier): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) throw new InferxError("not_found", `Cannot park pod ${podId}: it is not running`);
    if (!this.standbyTiers.includes(tier)) {
      throw new InferxError(
        "unsupported",
        `Cannot park pod ${podId} in ${tier}: this node offers ${this.standbyTiers.join(", ")}`,
      );
    }
    return await this.#serial(child, async () => {
      if (tier === "file") return await this.#parkToFile(podId, child);
      // A worker without GPU memory (CPU only, or one that never called CUDA) has nothing
      // for the driver to move: host memory is where it is, stopped as the paused tier is.
      if (tier === "host_memory" && child.gpus.length > 0 && this.#usesGpu(child.pid)) {
        await this.#checkpointGpu(child);
      } else {
        await this.#signalAll(child, "SIGSTOP");
        child.paused = true;
      }
      child.tier = tier;
    });
  }

  /**
   * Stops (SIGSTOP) or continues (SIGCONT) all of a pod: its worker's process
   * group, and every process in its control group, until no new one shows (a
   * process the worker started in a session of its own is in no group of
   * the worker's): a paused pod holds no CPU, so nothing of it may run on.
   */
  async #signalAll(child: Child, sig: "SIGSTOP" | "SIGCONT"): Promise<void> {
    signalWorker(child, sig);
    if (child.worker !== undefined) signal(child.pid, sig); // its namespace's init, in its own group
    if (!child.cgroup) return;
    const done = new Set<number>();
    // A stopped process forks no more: a few passes find the last ones a moment's forks made.
    for (let pass = 0; pass < 10; pass++) {
      const fresh = (await child.cgroup.pids()).filter((pid) => !done.has(pid));
      if (!fresh.length) return;
      for (const pid of fresh) (signal(pid, sig), done.add(pid));
    }
  }

  /**
   * Runs `op` once the pod's earlier park, resume or snapshot has ended: a
   * checkpoint takes seconds on a real GPU (28 s for 60 GB on an H200), and a
   * resume asked for meanwhile must find the pod parked, not half way.
   */
  #serial<T>(child: Child, op: () => Promise<T>): Promise<T> {
    const run = (child.ops ?? Promise.resolve()).then(() => {
      if (child.stopping) throw new InferxError("not_found", "The pod is being stopped");
      return op();
    });
    child.ops = run.then(() => {}, () => {});
    return run;
  }

  /**
   * Tier 2: the driver moves the worker's GPU memory into its host memory,
   * whose limit is raised by as much first (else the copy would meet it).
   */
  async #checkpointGpu(child: Child): Promise<void> {
    const cuda = this.#options.cuda!;
    const pid = child.pid;
    await this.#gpuInHost(child, true);
    let locked = false;
    try {
      await cuda.lock(pid, this.#options.cudaLockTimeoutMs ?? 10_000);
      locked = true;
      await cuda.checkpoint(pid);
    } catch (err) {
      // The driver does not keep a failed checkpoint's process in a good state: its unlock
      // may fail too, and must not hide why the checkpoint did (UVM or IPC memory, say).
      if (locked) await cuda.unlock(pid).catch(() => {});
      await this.#gpuInHost(child, false).catch(() => {});
      throw err;
    }
  }

  /**
   * Sets the pod's memory limit for its GPU memory being in its host memory
   * (`held`: its own limit and its slices' memory) or not (its own).
   */
  async #gpuInHost(child: Limits, held: boolean): Promise<void> {
    if (!child.gpuMemMB) return;
    await child.cgroup?.limitMemory(child.memMB + (held ? child.gpuMemMB : 0));
  }

  /** Whether the driver knows `pid` as a CUDA process. */
  #usesGpu(pid: number): boolean {
    const cuda = this.#options.cuda;
    if (!cuda?.hasCheckpointApi) return false;
    try {
      return cuda.processState(pid) === "running";
    } catch {
      return false; // not a CUDA process
    }
  }

  /** Tier 2 undone: the driver moves the worker's memory back to the GPU; its limit is its own. */
  async #restoreGpu(pid: number, child: Limits): Promise<void> {
    const cuda = this.#options.cuda!;
    await cuda.restore(pid);
    await cuda.unlock(pid);
    await this.#gpuInHost(child, false);
  }

  /**
   * Dumps `child` into `dir` with what a restore needs to know; its GPU
   * memory goes to host memory first (and comes back when it keeps running).
   */
  async #dump(child: Child, dir: string, leaveRunning: boolean): Promise<ImageMeta> {
    const gpu = this.#usesGpu(child.pid);
    const files = await openFiles(await processTree(child.pid));
    const meta: ImageMeta = {
      files,
      logFile: child.logFile,
      port: child.port,
      namespaced: child.net !== undefined,
      ownPids: child.ownPids === true,
      ownSession: child.ownSession,
      init: child.worker !== undefined,
      gpu,
      gpus: child.gpus,
    };
    // Written before CRIU runs: a dump without --leave-running ends the worker, and a write
    // failing after it (a full disk) would lose the worker with its image.
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(`${dir}/${META}`, JSON.stringify(meta));
    if (gpu) await this.#checkpointGpu(child);
    try {
      await this.#options.criu!.dump(child.pid, dir, {
        leaveRunning,
        netns: child.net?.nsPath,
        shellJob: !child.net && !child.ownSession,
        nice: leaveRunning ? this.#options.snapshotNice ?? 10 : 0,
      });
    } finally {
      if (gpu && leaveRunning) await this.#restoreGpu(child.pid, child);
    }
    await recordImages(dir, meta);
    return meta;
  }

  /** Tier 3: tier 2 when the worker uses the GPU, then CRIU dumps the process to disk. */
  async #parkToFile(podId: string, child: Child): Promise<void> {
    child.dumping = true;
    child.endedDumping = undefined; // an earlier park's (which ended the worker it had)
    const dir = `${this.#snapshots}/${podId}`;
    try {
      const meta = await this.#dump(child, dir, false);
      child.gpu = meta.gpu;
    } catch (err) {
      child.dumping = false;
      // A dump that failed after ending the worker: its exit was not told (it came while dumping).
      if (child.endedDumping !== undefined) {
        await this.#reportExit(podId, child, `${child.endedDumping} during a failed dump`);
      } else if (this.#usesGpuCheckpointed(child.pid)) await this.#restoreGpu(child.pid, child);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw new InferxError(
        "unavailable",
        `Cannot park pod ${podId} in file: ${(err as Error).message}`,
      );
    }
    await child.exited; // CRIU ends the process once its image is written
    child.proc = undefined;
    child.tier = "file";
    child.paused = false;
    child.dumping = false;
  }

  /** Whether the driver holds `pid` checkpointed (a dump that failed after tier 2). */
  #usesGpuCheckpointed(pid: number): boolean {
    try {
      return this.#options.cuda?.processState(pid) === "checkpointed";
    } catch {
      return false;
    }
  }

  /**
   * Restores the image in `dir` for pod `podId` into `net` (the host
   * network when none); files it had open are reattached to their current
   * versions, its output to `logFile`.
   */
  async #restore(
    podId: string,
    dir: string,
    net: PodNet | undefined,
    logFile: string | undefined,
    limits: Limits,
  ): Promise<{ pid: number; meta: ImageMeta }> {
    const meta = await readMeta(dir);
    if (!meta) {
      throw new InferxError("worker_failed", `Cannot restore pod ${podId}: no image in ${dir}`);
    }
    await checkImages(dir, meta, podId);
    if (logFile) await outputWritable(this.#snapshots, logFile);
    const inherit: InheritedFile[] = meta.files.map((f) => ({
      key: f.path,
      path: f.path === meta.logFile && logFile ? logFile : f.path,
      flags: f.flags,
      was: f.was,
    }));
    // Its GPU memory comes back in its host memory first (a pod parked in a file with it).
    if (meta.gpu) await this.#gpuInHost(limits, true);
    const pid = await this.#options.criu!.restore(dir, {
      workDir: `${this.#snapshots}/${podId}.restore`,
      netns: net?.nsPath,
      cgroup: limits.cgroup?.procsFiles,
      inherit,
      shellJob: !meta.namespaced && !meta.ownSession,
    });
    if (meta.gpu) {
      try {
        await this.#restoreGpu(pid, limits);
      } catch (err) {
        signal(pid, "SIGKILL");
        throw err;
      }
    }
    return { pid, meta };
  }

  /** Restores a pod parked in a file: CRIU rebuilds the process, then tier 2 in reverse. */
  async #resumeFromFile(podId: string, child: Child): Promise<void> {
    const dir = `${this.#snapshots}/${podId}`;
    let pid: number;
    try {
      // Outside a PID namespace of its own it comes back with the PID it had,
      // which its dumped process holds until its parent reaps it (a restored
      // one's parent is not this process).
      if (!child.ownPids) await pidFreed(child.pid, 10_000);
      ({ pid } = await this.#restore(podId, dir, child.net, child.logFile, child));
    } catch (err) {
      throw new InferxError(
        "worker_failed",
        `Cannot resume pod ${podId} from file: ${(err as Error).message}`,
      );
    }
    const init = child.worker !== undefined;
    child.pid = pid;
    if (init) child.worker = await workerBelow(pid);
    child.tier = undefined;
    child.exited = limitSaid(restoredExit(pid, init), child.cgroup, child.memMB);
    this.#watchExit(podId, child);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  async endedWhileParked(podId: string): Promise<string | undefined> {
    const child = this.#children.get(podId);
    // In the file tier no process is kept: nothing to end.
    if (!child || child.tier === undefined || child.tier === "file" || child.dumping) return;
    const pid = child.worker ?? child.pid;
    const s = await procState(pid);
    if (s === undefined) return "gone while parked (killed from outside?)";
    if (s.state === "Z") return "ended while parked (killed from outside?)";
    return undefined;
  }

  /** Whether the worker is stopped (SIGSTOP) while it is not parked: stopped from outside. */
  async isPaused(podId: string): Promise<boolean> {
    const child = this.#children.get(podId);
    if (!child || child.tier !== undefined || child.dumping) return false;
    return (await procState(groupOf(child)))?.state === "T";
  }

  async resume(podId: string): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) throw new InferxError("not_found", `Cannot resume pod ${podId}: it is not running`);
    return await this.#serial(child, async () => {
      if (child.tier === "file") return await this.#resumeFromFile(podId, child);
      if (child.tier === "host_memory" && !child.paused) await this.#restoreGpu(child.pid, child);
      else {
        await this.#signalAll(child, "SIGCONT");
        child.paused = false;
      }
      child.tier = undefined;
    });
  }

  /**
   * Snapshots a running pod into `dir`, leaving it running: CRIU dumps it
   * (at a low CPU priority) from inside its namespaces.
   */
  async snapshot(podId: string, dir: string): Promise<SnapshotTaken> {
    const child = this.#children.get(podId);
    if (!child) {
      throw new InferxError("not_found", `Cannot snapshot pod ${podId}: it is not running`);
    }
    return await this.#serial(child, () => this.#snapshot(podId, child, dir));
  }

  /** GPU workers: they share the node's PID namespace (see the module's doc). */
  snapshotRefusal(spec: { gpus: readonly unknown[] }): string | undefined {
    if (spec.gpus.length === 0) return undefined;
    return "a GPU worker shares the node's PID namespace, so no copy could be restored beside it";
  }

  async #snapshot(podId: string, child: Child, dir: string): Promise<SnapshotTaken> {
    if (child.tier !== undefined) {
      throw new InferxError("not_found", `Cannot snapshot pod ${podId}: it is not running`);
    }
    if (!this.snapshots || !child.net) {
      throw new InferxError(
        "unsupported",
        `Cannot snapshot pod ${podId}: snapshots need CRIU and pod namespaces`,
      );
    }
    const refusal = this.snapshotRefusal({ gpus: child.gpus });
    if (refusal) throw new InferxError("unsupported", `Cannot snapshot pod ${podId}: ${refusal}`);
    const t0 = performance.now();
    try {
      await this.#dump(child, dir, true);
    } catch (err) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      // The worker died meanwhile (killed, crashed): CRIU failed for that, not for what the
      // worker holds, so nothing says a later dump of its version would fail too.
      const s = await procState(child.pid);
      if (!s || s.state === "Z") {
        throw new InferxError(
          "worker_failed",
          `Cannot snapshot pod ${podId}: the worker exited while it was dumped`,
        );
      }
      if (err instanceof CriuKilled) {
        // Cut off halfway, CRIU may have left its code in the worker or its pod's network
        // locked: not served on (its exit is told as any worker's).
        signalWorker(child, "SIGKILL");
        throw new CriuKilled(
          `Cannot snapshot pod ${podId}, whose worker is ended (CRIU's code or locks may be left in it)`,
          err.signal,
        );
      }
      throw err;
    }
    return { bytes: await dirBytes(dir), dumpMs: performance.now() - t0 };
  }

  /**
   * Starts a pod by restoring the snapshot in `dir` into fresh namespaces;
   * resolves once it answers its probe.
   */
  async restore(spec: PodSpec, dir: string): Promise<RunningPod> {
    if (!this.snapshots) {
      throw new InferxError(
        "unsupported",
        `Cannot restore pod ${spec.podId}: snapshots need CRIU and pod namespaces`,
      );
    }
    const wanted = spec.gpus.map((g) => g.index).join(",");
    const dumped = await readMeta(dir);
    if (dumped && dumped.gpus.join(",") !== wanted) {
      throw new InferxError(
        "unsupported",
        `Cannot restore pod ${spec.podId}: its snapshot uses GPU(s) [${dumped.gpus}], the pod got [${wanted}]`,
      );
    }
    if (dumped?.ownPids === false) {
      throw new InferxError(
        "unsupported",
        `Cannot restore pod ${spec.podId}: its image was dumped from the node's PID namespace (a GPU worker), so a copy would need PIDs that may be taken`,
      );
    }
    let cgroup: PodCgroup | undefined, net: PodNet;
    try {
      cgroup = await this.#makeCgroup(spec, "restore");
      net = await this.#podNet(this.#options.podNetworks!, spec, cgroup);
    } catch (err) {
      // A pod range full a moment, say: the node's, not the image's (it is kept).
      const why = (err as Error).message;
      throw new PodSetupFailed(
        why.startsWith("Cannot restore") ? why : `Cannot restore pod ${spec.podId}: ${why}`,
        err,
      );
    }
    const logFile = `${this.#snapshots}/${spec.podId}.log`;
    let pid: number;
    let meta: ImageMeta;
    try {
      ({ pid, meta } = await this.#restore(spec.podId, dir, net, logFile, {
        cgroup,
        memMB: spec.memMB,
        gpuMemMB: 0, // a GPU worker is never snapshotted
      }));
    } catch (err) {
      await cgroup?.remove();
      await this.#options.podNetworks!.remove(net);
      await Deno.remove(logFile).catch(() => {});
      await Deno.remove(`${this.#snapshots}/${spec.podId}.restore`, { recursive: true })
        .catch(() => {});
      throw err;
    }
    const logs = new LogRing();
    const child: Child = {
      pid,
      worker: meta.init ? await workerBelow(pid) : undefined,
      port: meta.port,
      net,
      logFile,
      logs,
      stopping: false,
      paused: false,
      gpus: meta.gpus,
      ownPids: meta.ownPids ?? meta.namespaced,
      ownSession: true,
      cgroup,
      memMB: spec.memMB,
      gpuMemMB: gpuMemOf(spec),
      exited: limitSaid(restoredExit(pid, meta.init === true), cgroup, spec.memMB),
    };
    child.follow = followFile(
      logFile,
      logs,
      () => mayTrimLog(child),
      this.#options.outputFileMaxBytes,
    );
    this.#children.set(spec.podId, child);
    const settled = settling(child);
    this.#watchExit(spec.podId, child);
    try {
      await this.#probe(child, spec);
    } catch (err) {
      child.stopping = true;
      await this.stop(spec.podId, 1000);
      throw new InferxError(
        "worker_failed",
        `Restored pod ${spec.podId} does not serve: ${(err as Error).message}`,
      );
    } finally {
      settled();
    }
    return this.#running(spec.podId, child);
  }

  /** Resident memory of the pod's process tree (bytes). */
  async footprintBytes(podId: string): Promise<number> {
    const child = this.#children.get(podId);
    if (!child || child.tier === "file") return 0;
    let kb = 0;
    for (const pid of await processTree(child.pid)) {
      const status = await Deno.readTextFile(`/proc/${pid}/status`).catch(() => "");
      // Anonymous memory only: a file it maps (its weights, say) is not dumped.
      kb += Number(status.match(/^RssAnon:\s+(\d+)/m)?.[1] ?? 0);
    }
    return kb * 1024;
  }

  logs(podId: string, lines = 50): Promise<string> {
    const child = this.#children.get(podId);
    return child ? this.#tail(child, lines) : Promise.resolve("");
  }

  /** Pod ids with a live process. */
  running(): string[] {
    return [...this.#children.keys()];
  }
}

/** Marks `child`'s start or restore under way (`Child.settling`); the function ends it. */
function settling(child: Child): () => void {
  let done!: () => void;
  child.settling = new Promise((r) => done = r);
  return () => (child.settling = undefined, done());
}

/** Pids of processes whose environment has `INFERX_SCOPE=scope` (Linux `/proc`; none elsewhere). */
export async function scopeProcesses(scope: string): Promise<number[]> {
  const marker = new TextEncoder().encode(`\0INFERX_SCOPE=${scope}\0`);
  const pids: number[] = [];
  let entries: AsyncIterable<Deno.DirEntry>;
  try {
    entries = Deno.readDir("/proc");
  } catch {
    return pids;
  }
  try {
    for await (const e of entries) {
      const pid = Number(e.name);
      if (!Number.isInteger(pid) || pid === Deno.pid) continue;
      let env: Uint8Array;
      try {
        env = await Deno.readFile(`/proc/${pid}/environ`);
      } catch {
        continue; // gone, or not ours to read
      }
      const padded = new Uint8Array(env.length + 2);
      padded.set(env, 1);
      if (indexOf(padded, marker) >= 0) pids.push(pid);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return pids;
}

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Ends what process-runtime workers of `scope` left on this node (an agent
 * killed, or one that runs the Docker runtime now): their processes, pod
 * namespaces, control groups and CRIU output, and in `snapshotDir` their
 * output files, restore directories and the images of pods parked in a file,
 * which no pod could resume (pod ids are never used again). Snapshots
 * (`images/`) stay. Returns how many processes it killed.
 */
export async function sweepProcessPods(o: {
  scope: string;
  snapshotDir: string;
  podNetworks?: { sweep(): Promise<unknown> };
  cgroups?: { sweep(): Promise<void> };
}): Promise<number> {
  let removed = 0;
  for (const pid of await scopeProcesses(o.scope)) {
    try {
      Deno.kill(pid, "SIGKILL");
      removed++;
    } catch {
      // exited meanwhile
    }
  }
  await o.podNetworks?.sweep();
  await o.cgroups?.sweep();
  await sweepCriuOutput();
  try {
    for await (const e of Deno.readDir(o.snapshotDir)) {
      const path = `${o.snapshotDir}/${e.name}`;
      const parked = e.isDirectory &&
        await Deno.stat(`${path}/${META}`).then(() => true, () => false);
      if (
        (e.isFile && /\.log(\.probe)?$/.test(e.name)) ||
        (e.isDirectory && e.name.endsWith(".restore")) ||
        parked
      ) {
        await Deno.remove(path, { recursive: true }).catch(() => {});
      }
    }
  } catch {
    // no such directory yet
  }
  return removed;
}
