/**
 * The calls of the C library the node agent needs through FFI: reaping a
 * process that became its child without being spawned by it, making it a
 * child subreaper (for tests), and giving back the blocks of a file's start
 * that was read (a hole punched into a worker's output file).
 *
 * A worker CRIU restores with `--restore-detached` is handed to the nearest
 * subreaper or to init once CRIU exits. Where the agent is init (PID 1 of a
 * container) or a subreaper, such workers become its children, and Deno
 * reaps only the processes it spawned: each would stay a zombie, and a
 * worker restored outside a PID namespace of its own (a GPU worker) needs
 * its old PID back.
 *
 * @module
 */

const SYMBOLS = {
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32", nonblocking: true },
} as const;

const WNOHANG = 1;
const PR_SET_CHILD_SUBREAPER = 36;
const O_WRONLY = 1;
const O_CLOEXEC = 0o2000000;
const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null | undefined;

function libc(): Deno.DynamicLibrary<typeof SYMBOLS> | null {
  if (lib === undefined) {
    try {
      lib = Deno.dlopen("libc.so.6", SYMBOLS);
    } catch {
      lib = null; // not glibc Linux: nothing to reap through
    }
  }
  return lib;
}

/** State and parent of `pid` from `/proc/PID/stat`, or undefined when there is no such process. */
export async function procState(
  pid: number,
): Promise<{ state: string; ppid: number; pgrp: number } | undefined> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: f[0], ppid: Number(f[1]), pgrp: Number(f[2]) };
  } catch {
    return undefined;
  }
}

/** Whether a live process (not a zombie) is in process group `pgid`: a scan of `/proc`. */
export async function groupAlive(pgid: number): Promise<boolean> {
  for await (const e of Deno.readDir("/proc")) {
    if (!e.isDirectory || !/^\d+$/.test(e.name)) continue;
    const s = await procState(Number(e.name));
    if (s && s.pgrp === pgid && s.state !== "Z") return true;
  }
  return false;
}

/**
 * Reaps `pid` if it is a zombie child of this process (one Deno did not
 * spawn: spawned ones Deno reaps itself). Returns how it ended
 * (`exit code N`, `killed by SIGKILL`) when it did, else undefined.
 */
export async function reapIfOrphanedToUs(pid: number): Promise<string | undefined> {
  const s = await procState(pid);
  if (!s || s.state !== "Z" || s.ppid !== Deno.pid) return undefined;
  const c = libc();
  const status = new Int32Array(1);
  if (c === null || c.symbols.waitpid(pid, status, WNOHANG) !== pid) return undefined;
  // The wait status: a signal in its low 7 bits, else the exit code above them.
  const signal = status[0] & 0x7f;
  if (signal === 0) return `exit code ${(status[0] >> 8) & 0xff}`;
  return `killed by ${signalName(signal)}`;
}

/** A signal's name by its number (`SIGKILL`), or `signal N` for one not named here. */
export function signalName(signal: number): string {
  return Object.entries(SIGNALS).find(([, n]) => n === signal)?.[0] ?? `signal ${signal}`;
}

/** Signal numbers on Linux (x86-64 and arm64 share these). */
const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
};

/** Makes this process a child subreaper (`prctl`); false where it cannot. */
export function becomeSubreaper(): boolean {
  const c = libc();
  return c !== null && c.symbols.prctl(PR_SET_CHILD_SUBREAPER, 1n, 0n, 0n, 0n) === 0;
}

/**
 * Gives the filesystem back the blocks of bytes `from` to `to` of the file at
 * `path` (`fallocate` with `FALLOC_FL_PUNCH_HOLE`): they read as zeros after,
 * the file keeps its size, and a process appending to it meanwhile loses
 * nothing. False where it cannot (no such call, a filesystem without holes).
 */
export async function punchHole(path: string, from: number, to: number): Promise<boolean> {
  const c = libc();
  if (c === null || to <= from) return c !== null;
  const fd = c.symbols.open(new TextEncoder().encode(`${path}\0`), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  try {
    const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    return await c.symbols.fallocate(fd, mode, BigInt(from), BigInt(to - from)) === 0;
  } finally {
    c.symbols.close(fd);
  }
}
