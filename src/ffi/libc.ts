/**
 * The two calls of the C library the node agent needs through FFI: reaping
 * a process that became its child without being spawned by it, and making
 * it a child subreaper (for tests).
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
} as const;

const WNOHANG = 1;
const PR_SET_CHILD_SUBREAPER = 36;

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
  const name = Object.entries(SIGNALS).find(([, n]) => n === signal)?.[0];
  return `killed by ${name ?? `signal ${signal}`}`;
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
