/**
 * CRIU, driven through its command line: find a `criu` that works on this
 * kernel, check it, dump a process tree to a directory (optionally leaving it
 * running) and restore it, optionally inside a pod's network namespace and
 * with the files it had open reattached to fresh descriptors.
 *
 * The binary is run as a child process rather than through `libcriu`: a dump
 * then never blocks the agent's event loop (nothing shared stalls while a
 * worker is frozen and written out), each call gets its own options, log and
 * namespace, and any CRIU release can be used, including one provisioned
 * into a private prefix and started through its own loader.
 *
 * @module
 */
import { REPO_ROOT } from "../common/config.ts";
import { InferxError } from "../common/errors.ts";
import { procState } from "../ffi/libc.ts";
import { joinLines } from "./cgroup.ts";

/** How to run one `criu`. */
export interface CriuBinary {
  /** The command line that runs it (a loader line for a provisioned prefix). */
  argv: string[];
  /** The criu executable itself. */
  path: string;
  /** Where it was found: `INFERX_CRIU`, the provisioned prefix, or the system. */
  source: "INFERX_CRIU" | "provisioned" | "system";
}

const LIBDIR = "usr/lib/x86_64-linux-gnu";

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * A CRIU unpacked into `prefix` (`{prefix}/usr/sbin/criu` with the libc of
 * the same release): run through that release's loader and libraries.
 */
export function provisionedBinary(
  prefix: string,
  source: CriuBinary["source"] = "provisioned",
): CriuBinary | undefined {
  const criu = `${prefix}/usr/sbin/criu`;
  const loader = `${prefix}/${LIBDIR}/ld-linux-x86-64.so.2`;
  if (!isFile(criu) || !isFile(loader)) return undefined;
  return { argv: [loader, "--library-path", `${prefix}/${LIBDIR}`, criu], path: criu, source };
}

/** Options for {@linkcode locateCriu}. */
export interface LocateOptions {
  /** `INFERX_CRIU`: a criu binary, or a prefix CRIU was unpacked into. @default the env var */
  env?: string;
  /** The provisioned prefix. @default `{repo}/.criu` */
  prefix?: string;
  /** System binaries tried last. @default /usr/sbin/criu, /usr/local/sbin/criu */
  system?: string[];
}

/**
 * Finds CRIU: `INFERX_CRIU` (a binary, or a prefix), else the prefix
 * `deno task criu` provisions, else the system's. Undefined when none exists.
 */
export function locateCriu(options: LocateOptions = {}): CriuBinary | undefined {
  const env = options.env ?? Deno.env.get("INFERX_CRIU");
  if (env) {
    const inPrefix = provisionedBinary(env, "INFERX_CRIU") ??
      provisionedBinary(env.replace(/\/usr\/sbin\/criu$/, ""), "INFERX_CRIU");
    if (inPrefix) return inPrefix;
    return { argv: [env], path: env, source: "INFERX_CRIU" };
  }
  const provisioned = provisionedBinary(options.prefix ?? `${REPO_ROOT}/.criu`);
  if (provisioned) return provisioned;
  for (const p of options.system ?? ["/usr/sbin/criu", "/usr/local/sbin/criu"]) {
    if (isFile(p)) return { argv: [p], path: p, source: "system" };
  }
  return undefined;
}

/**
 * The error lines of a CRIU log (without the ones CRIU survives), or its
 * last lines when no other says Error.
 */
export function logReason(log: string): string {
  // CRIU logs a failed attempt to raise its own fd limit as an error and goes on: never the reason.
  const lines = log.split("\n").map((l) => l.trim())
    .filter((l) => l && !/RLIMIT_NOFILE for self/.test(l));
  const errors = lines.filter((l) => /\bError\b/.test(l)).map((l) =>
    l.replace(/^\(\s*\d+\.\d+\)\s*(\d+:\s*)?/, "")
  );
  return (errors.length ? errors : lines.slice(-3)).join("; ") || "no log";
}

/** A file a process held open when it was dumped. */
export interface OpenFile {
  /** The path as the kernel shows it (absolute). */
  path: string;
  /** Its `open()` flags, from `/proc/{pid}/fdinfo`. */
  flags: number;
  /**
   * A file open read-only, as it was at the dump (its size, modification
   * time and inode): a restore refuses one that changed since.
   */
  was?: FileStamp;
}

/** What tells a file's content changed: its size, modification time and inode. */
export interface FileStamp {
  size: number;
  mtimeMs: number;
  ino: number;
}

/**
 * A descriptor handed to a restore in place of a dumped file: CRIU uses it
 * instead of reopening (and size-checking) `key`, the path as dumped.
 */
export interface InheritedFile {
  key: string;
  /** What to open for it. */
  path: string;
  flags: number;
  /** What a file open read-only was at the dump; the restore refuses it changed. */
  was?: FileStamp;
}

/** How `now` differs from `was`, or undefined when it does not. */
function stampChange(was: FileStamp, now: FileStamp): string | undefined {
  if (now.ino !== was.ino) return "replaced by another file";
  if (now.size !== was.size) return `${was.size} bytes then, ${now.size} now`;
  if (now.mtimeMs !== was.mtimeMs) return "modified, its size the same";
  return undefined;
}

function stampOf(st: Deno.FileInfo): FileStamp | undefined {
  // A directory's modification time moves with what is made in it: only files are stamped.
  if (!st.isFile || st.ino === null || !st.mtime) return undefined;
  return { size: st.size, mtimeMs: st.mtime.getTime(), ino: st.ino };
}

const O_ACCMODE = 0o3;
const O_WRONLY = 0o1;
const O_RDWR = 0o2;
const O_APPEND = 0o2000;

/** The bash redirection that opens a file the way `flags` did, without truncating it. */
export function redirection(flags: number): "<" | ">>" | "<>" {
  const mode = flags & O_ACCMODE;
  if (mode === 0) return "<";
  if (mode === O_WRONLY && flags & O_APPEND) return ">>";
  return "<>";
}

/**
 * What the shell that runs CRIU does first (`lines`, each taking its
 * arguments from `args` with `shift`), in bash where a descriptor past 9
 * is opened (sh's redirections take one digit).
 */
export interface ShellSetup {
  lines: string[];
  args: string[];
  bash?: boolean;
}

/**
 * A restore's setup, in the shell that runs CRIU rather than in a shell
 * each (each exec about a millisecond): it joins the control group whose
 * `cgroup.procs` files are `procs` (exit 125 when it cannot), then opens
 * each file handed over on descriptor 100, 101... as `--inherit-fd` names it.
 */
export function restoreSetup(procs: string[], inherit: InheritedFile[]): ShellSetup {
  return {
    lines: [
      ...joinLines(procs),
      ...inherit.map((f, i) => `exec ${100 + i}${redirection(f.flags)}"$1"; shift`),
    ],
    args: [...procs, ...inherit.map((f) => f.path)],
    bash: inherit.length > 0,
  };
}

/** Options for {@linkcode Criu.dump}. */
export interface DumpOptions {
  /** Leave the process running after the dump (a snapshot) instead of ending it. */
  leaveRunning?: boolean;
  /** Run CRIU inside this network namespace (`/run/netns/...`): the worker's own. */
  netns?: string;
  /** The process is not a session leader (started without a namespace of its own). */
  shellJob?: boolean;
  /** CPU niceness of CRIU itself. @default 0 */
  nice?: number;
  /** Give up (and kill CRIU) after this long (ms). @default 120000 */
  timeoutMs?: number;
}

/** Options for {@linkcode Criu.restore}. */
export interface RestoreOptions {
  /** Where the restore's log and pid file go (the image directory stays untouched). */
  workDir: string;
  /** Restore into this network namespace (`/run/netns/...`). */
  netns?: string;
  /** Descriptors to hand over in place of dumped files. */
  inherit?: InheritedFile[];
  /**
   * The `cgroup.procs` files of a control group to put CRIU in
   * (`PodCgroup.procsFiles`): the processes it restores are its children,
   * and start there.
   */
  cgroup?: string[];
  /** The process was dumped with `shellJob`. */
  shellJob?: boolean;
  /** Give up (and kill CRIU) after this long (ms). @default 60000 */
  timeoutMs?: number;
}

/** What a `criu check` said. */
export type CheckResult = { ok: true } | { ok: false; reason: string };

/**
 * What CRIU's restore log says once it has given up. It may then wait on for
 * what it restored to end — a page file damaged in place left it waiting on
 * a process that never would until its time limit — so the run is killed
 * {@linkcode GIVEN_UP_GRACE_MS} after.
 */
const RESTORE_FAILED = /Restoring FAILED|Killing processes because of failure on restore/;
const GIVEN_UP_GRACE_MS = 2000;

/** Signals an operator or the kernel's OOM killer ends a process with, not CRIU's own faults. */
const FROM_OUTSIDE: ReadonlySet<Deno.Signal> = new Set(["SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"]);

/**
 * A CRIU run ended from outside (the OOM killer, an operator) before it
 * finished: nothing said about the worker, so a dump is tried again later, as
 * one cut off by its time limit is. (A CRIU that crashed, SIGSEGV say, is
 * said as its log says, and its dump's failure kept.)
 */
export class CriuKilled extends InferxError {
  constructor(what: string, readonly signal: Deno.Signal) {
    super("unavailable", `${what}: CRIU was killed (${signal}) before it finished`, {
      retryable: true,
    });
    this.name = "CriuKilled";
  }
}

/** How the temporary files of CRIU's output begin (then the agent's PID and a dash). */
const OUTPUT_PREFIX = "inferx-criu-";

/**
 * Removes the temporary files of CRIU's output that a process which has
 * since ended left behind (killed while CRIU ran).
 */
export async function sweepCriuOutput(): Promise<void> {
  const tmp = Deno.env.get("TMPDIR") || "/tmp";
  try {
    for await (const e of Deno.readDir(tmp)) {
      const pid = e.name.startsWith(OUTPUT_PREFIX)
        ? Number(e.name.slice(OUTPUT_PREFIX.length).split("-")[0])
        : NaN;
      // A zombie ran: killed, it stays in /proc until reaped (this host's init took 2 s).
      if (!(pid > 0) || ((await procState(pid))?.state ?? "Z") !== "Z") continue;
      await Deno.remove(`${tmp}/${e.name}`).catch(() => {});
    }
  } catch {
    // no temporary folder to read
  }
}

/** One CRIU binary. */
export class Criu {
  readonly binary: CriuBinary;

  /** Run before each dump and restore (the agent keeps CRIU's kernel cache: `criu_cache.ts`). */
  beforeRun?: () => Promise<void>;

  constructor(binary: CriuBinary) {
    this.binary = binary;
  }

  /**
   * Runs `criu args...` (wrapped by `prefix`), returning its exit status and
   * output. It runs in a process group of its own (`setsid`), which a time
   * limit kills whole: CRIU forks helpers (and the processes it restores
   * start as its children), and one left behind — stopped halfway through a
   * restore, say — must not outlive the limit. Its output goes to a file, not
   * a pipe, so that nothing left holding it keeps the run from ending: a
   * temporary file (on another disk than the images, perhaps, where CRIU can
   * still say that theirs is full) named after this process, which
   * {@linkcode sweepCriuOutput} removes once it has gone.
   * `options.failed`: CRIU's log and what it writes there once it has given
   * up; the run is killed a moment after, as CRIU can stay waiting for what
   * it was restoring to end.
   */
  async #run(
    args: string[],
    options: {
      prefix?: string[];
      setup?: ShellSetup;
      timeoutMs?: number;
      failed?: { log: string; said: RegExp };
    } = {},
  ): Promise<{ ok: boolean; out: string; timedOut?: boolean; killed?: Deno.Signal }> {
    const argv = [...(options.prefix ?? []), ...this.binary.argv, ...args];
    const outFile = await Deno.makeTempFile({ prefix: `${OUTPUT_PREFIX}${Deno.pid}-` });
    const setup = options.setup;
    let timedOut = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let watch: ReturnType<typeof setInterval> | undefined;
    let givenUp: ReturnType<typeof setTimeout> | undefined;
    try {
      // One shell: its output to the file, then what `setup` does, then CRIU (or its prefix).
      const script = ['exec >"$1" 2>&1', "shift", ...(setup?.lines ?? []), 'exec "$@"'].join("; ");
      const shell = setup?.bash ? "bash" : "sh";
      const child = new Deno.Command("setsid", {
        args: [shell, "-c", script, shell, outFile, ...(setup?.args ?? []), ...argv],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      const killGroup = () => {
        try {
          Deno.kill(-child.pid, "SIGKILL");
        } catch {
          // ended meanwhile
        }
      };
      if (options.timeoutMs) {
        timer = setTimeout(() => {
          timedOut = true;
          killGroup();
        }, options.timeoutMs);
      }
      const failed = options.failed;
      if (failed) {
        watch = setInterval(async () => {
          const log = await Deno.readTextFile(failed.log).catch(() => "");
          if (!failed.said.test(log)) return;
          clearInterval(watch);
          givenUp = setTimeout(killGroup, GIVEN_UP_GRACE_MS);
        }, 250);
      }
      const status = await child.status;
      const out = await Deno.readTextFile(outFile).catch(() => "");
      // Ended by a signal this run did not send (its time limit's, or its kill once CRIU gave up).
      const ours = timedOut || givenUp !== undefined;
      const killed = !ours && status.signal !== null && FROM_OUTSIDE.has(status.signal)
        ? status.signal
        : undefined;
      return { ok: status.success, out, timedOut: !status.success && timedOut, killed };
    } catch (err) {
      const out = `Error: cannot run ${argv[0]}: ${(err as Error).message}`;
      return { ok: false, out, timedOut };
    } finally {
      clearTimeout(timer);
      clearInterval(watch);
      clearTimeout(givenUp);
      await Deno.remove(outFile).catch(() => {});
    }
  }

  /** The error of a CRIU run cut off by its time limit: nothing said against trying again. */
  #timedOut(what: string, ms: number): InferxError {
    return new InferxError("timeout", `${what}: CRIU did not finish within ${ms} ms`, {
      retryable: true,
    });
  }

  /** The version CRIU reports, e.g. "4.2.1". */
  async version(): Promise<string> {
    const { out } = await this.#run(["--version"], { timeoutMs: 10_000 });
    const m = out.match(/Version:\s*(\S+)/);
    if (!m) throw new InferxError("unavailable", `Cannot read the version of ${this.binary.path}`);
    return m[1];
  }

  /** Whether this kernel supports checkpoint and restore with this CRIU; when not, why. */
  async check(): Promise<CheckResult> {
    const { ok, out } = await this.#run(["check"], { timeoutMs: 30_000 });
    if (ok) return { ok: true };
    return { ok: false, reason: logReason(out) };
  }

  /**
   * Runs `criu check` in a mount namespace of its own with a tmpfs on `/run`,
   * where CRIU keeps its kernel cache, and copies the cache to `dest`
   * (`criu_cache.ts`). Only the check's cache matters here, not its verdict.
   */
  async makeKernelCache(dest: string): Promise<CheckResult> {
    // The destination is opened before the tmpfs hides what lies under /run (a TMPDIR there).
    const script =
      'exec 3>"$1"; shift; mount -t tmpfs -o size=1m,mode=0755 inferx-criu-cache /run || exit 1; "$@"; cat /run/criu.kdat >&3';
    const { ok, out } = await this.#run(["check"], {
      prefix: ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dest],
      timeoutMs: 30_000,
    });
    return ok ? { ok: true } : { ok: false, reason: logReason(out) };
  }

  /** Whether `criu check` reads its kernel cache (`/run/criu.kdat`) rather than probing. */
  async loadsKernelCache(): Promise<boolean> {
    let log: string | undefined;
    try {
      log = await Deno.makeTempFile({ prefix: `${OUTPUT_PREFIX}${Deno.pid}-` });
      await this.#run(["check", "-v4", "--log-file", log], { timeoutMs: 30_000 });
      return /Loaded kdat cache/.test(await Deno.readTextFile(log).catch(() => ""));
    } catch {
      return false;
    } finally {
      if (log) await Deno.remove(log).catch(() => {});
    }
  }

  /**
   * Dumps the process tree rooted at `pid` into `dir`. A worker started in
   * its own PID namespace is that namespace's init; CRIU then dumps the
   * namespace, and a restore gets a fresh one.
   */
  async dump(pid: number, dir: string, options: DumpOptions = {}): Promise<void> {
    await this.beforeRun?.();
    await Deno.mkdir(dir, { recursive: true });
    const args = [
      "dump",
      "--tree",
      String(pid),
      "--images-dir",
      dir,
      "--log-file",
      "dump.log",
      // Deno and Python hold file locks; connections are recorded, restored closed.
      "--file-locks",
      "--tcp-close",
      // A restore puts it in the control group its pod has then, not the one it was dumped from.
      "--manage-cgroups=ignore",
    ];
    if (options.leaveRunning) args.push("--leave-running");
    if (options.shellJob) args.push("--shell-job");
    const prefix = [
      ...(options.nice ? ["nice", "-n", String(options.nice)] : []),
      ...(options.netns ? ["nsenter", `--net=${options.netns}`, "--"] : []),
    ];
    const timeoutMs = options.timeoutMs ?? 120_000;
    const { ok, out, timedOut, killed } = await this.#run(args, { prefix, timeoutMs });
    if (ok) return;
    if (timedOut) throw this.#timedOut(`Cannot dump process ${pid}`, timeoutMs);
    if (killed) throw new CriuKilled(`Cannot dump process ${pid}`, killed);
    const log = await Deno.readTextFile(`${dir}/dump.log`).catch(() => out);
    throw new InferxError("internal", `Cannot dump process ${pid}: ${logReason(log || out)}`);
  }

  /**
   * Restores the tree dumped in `dir` (detached: it outlives CRIU) and
   * returns the host pid of its root.
   */
  async restore(dir: string, options: RestoreOptions): Promise<number> {
    await this.beforeRun?.();
    await Deno.mkdir(options.workDir, { recursive: true });
    const pidfile = `${options.workDir}/restore.pid`;
    const logFile = `${options.workDir}/restore.log`;
    await Deno.remove(pidfile).catch(() => {});
    const args = [
      "restore",
      "--images-dir",
      dir,
      "--work-dir",
      options.workDir,
      "--log-file",
      logFile,
      "--pidfile",
      pidfile,
      "--restore-detached",
      "--file-locks",
      "--tcp-close",
      // Restored into CRIU's own control group (`cgroup`), which its pod's limits hold.
      "--manage-cgroups=ignore",
    ];
    if (options.shellJob) args.push("--shell-job");
    const inherit = options.inherit ?? [];
    // Reopened, a file gone since the dump would be made again, empty: the worker would come back
    // with its data lost (CRIU itself refuses a missing file it reopens).
    for (const f of inherit) {
      const st = await Deno.stat(f.path).catch(() => undefined);
      if (!st) {
        throw new InferxError(
          "worker_failed",
          `Cannot restore from ${dir}: ${f.path}, which the worker had open, is gone`,
        );
      }
      // One it only read (its weights, say) may be mapped: changed, it would hand the restored
      // worker other bytes than it read, or fault it (SIGBUS) past a shorter end.
      const now = stampOf(st);
      const change = f.was && (now ? stampChange(f.was, now) : "no longer a file");
      if (change) {
        throw new InferxError(
          "worker_failed",
          `Cannot restore from ${dir}: ${f.path}, which the worker had open read-only, changed since the dump (${change})`,
        );
      }
    }
    for (const [i, f] of inherit.entries()) {
      args.push("--inherit-fd", `fd[${100 + i}]:${f.key.replace(/^\//, "")}`);
    }
    const setup = restoreSetup(options.cgroup ?? [], inherit);
    const prefix = options.netns ? ["nsenter", `--net=${options.netns}`, "--"] : [];
    const timeoutMs = options.timeoutMs ?? 60_000;
    const { ok, out, timedOut, killed } = await this.#run(args, {
      prefix,
      setup,
      timeoutMs,
      failed: { log: logFile, said: RESTORE_FAILED },
    });
    const pid = Number((await Deno.readTextFile(pidfile).catch(() => "")).trim());
    if (ok && pid > 0) return pid;
    if (pid > 0) {
      try {
        Deno.kill(pid, "SIGKILL"); // half restored: nobody may use it
      } catch {
        // gone already
      }
    }
    if (timedOut) throw this.#timedOut(`Cannot restore from ${dir}`, timeoutMs);
    if (killed) {
      throw new InferxError(
        "worker_failed",
        `Cannot restore from ${dir}: CRIU was killed (${killed}) before it finished`,
      );
    }
    const log = await Deno.readTextFile(logFile).catch(() => out);
    throw new InferxError("worker_failed", `Cannot restore from ${dir}: ${logReason(log || out)}`);
  }
}

/** Whether CRIU can checkpoint processes on this node, which one, and if not, why. */
export interface CriuCapability {
  available: boolean;
  reason?: string;
  version?: string;
  /** The criu executable used. */
  path?: string;
  source?: CriuBinary["source"];
  /** How its kernel cache stands (`criu_cache.ts`), once the agent has readied it. */
  kernelCache?: "tmpfs" | "seeded" | "off";
  kernelCacheReason?: string;
}

/** Runs the check of `binary` (by default the one {@linkcode locateCriu} finds; null: none). */
export async function criuCapability(
  binary: CriuBinary | null = locateCriu() ?? null,
): Promise<CriuCapability> {
  if (!binary) {
    return {
      available: false,
      reason: "No criu found (set INFERX_CRIU, or run `deno task criu` to provision one)",
    };
  }
  const criu = new Criu(binary);
  const where = { path: binary.path, source: binary.source };
  let version: string;
  try {
    version = await criu.version();
  } catch (err) {
    return { available: false, reason: (err as Error).message, ...where };
  }
  if (Deno.uid?.() !== 0) {
    return { available: false, reason: "CRIU needs root", version, ...where };
  }
  const check = await criu.check();
  if (check.ok) return { available: true, version, ...where };
  return {
    available: false,
    reason: `criu check failed: ${check.reason}${
      binary.source === "system" ? " (run `deno task criu` for a newer CRIU)" : ""
    }`,
    version,
    ...where,
  };
}

/** The pids of the process tree rooted at `pid` (threads excluded), root first. */
export async function processTree(pid: number): Promise<number[]> {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const p = out[i];
    let tasks: string[] = [];
    try {
      tasks = [...Deno.readDirSync(`/proc/${p}/task`)].map((e) => e.name);
    } catch {
      continue; // gone
    }
    for (const t of tasks) {
      const children = await Deno.readTextFile(`/proc/${p}/task/${t}/children`).catch(() => "");
      for (const c of children.trim().split(/\s+/).filter(Boolean)) out.push(Number(c));
    }
  }
  return out;
}

/** Regular files (and directories) the processes `pids` hold open, once each. */
export async function openFiles(pids: number[]): Promise<OpenFile[]> {
  const seen = new Map<string, OpenFile>();
  for (const pid of pids) {
    let fds: string[] = [];
    try {
      fds = [...Deno.readDirSync(`/proc/${pid}/fd`)].map((e) => e.name);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let path: string;
      try {
        path = await Deno.readLink(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      // Devices, pseudo-files and deleted files are CRIU's to handle.
      if (
        !path.startsWith("/") || /^\/(dev|proc|sys)\//.test(path) || path.endsWith(" (deleted)")
      ) {
        continue;
      }
      const info = await Deno.readTextFile(`/proc/${pid}/fdinfo/${fd}`).catch(() => "");
      const m = info.match(/^flags:\s*([0-7]+)/m);
      if (!m) continue;
      const flags = parseInt(m[1], 8);
      // One descriptor is handed over for every one of a path: opened read-only and for
      // writing, it is opened for both, and it is no file the worker only reads.
      const had = seen.get(path);
      if (had) {
        if ((had.flags & O_ACCMODE) !== (flags & O_ACCMODE)) {
          seen.set(path, { path, flags: (had.flags & ~O_ACCMODE) | O_RDWR });
        }
        continue;
      }
      // A restore hands CRIU a descriptor for it, which CRIU takes unchecked: what it was is kept.
      const st = (flags & O_ACCMODE) === 0
        ? await Deno.stat(`/proc/${pid}/fd/${fd}`).catch(() => undefined)
        : undefined;
      const was = st && stampOf(st);
      seen.set(path, was ? { path, flags, was } : { path, flags });
    }
  }
  return [...seen.values()];
}
