/**
 * The system calls a process makes, by thread and by call, counted by the
 * kernel's syscall tracepoints through `perf stat` (exact counts, and
 * next to no cost to the process: `strace`, or `perf trace`, which hands
 * every call to user space, slow it by half and more). `bench/gateway.ts`
 * runs it on each proxy under load (`GATEWAY_SYSCALLS=1`) and prints the
 * calls each makes a request: the kernel's share of a proxy's CPU is
 * mostly these.
 *
 * Run alone: `deno run -A bench/syscalls.ts PID [seconds]`.
 *
 * @module
 */

/** Calls by thread (`name-tid`), then by system call (`other`: those not named in {@linkcode CALLS}). */
export type SyscallCounts = Map<string, Map<string, number>>;

/** The calls counted one by one: those a proxy's threads make on their way. */
export const CALLS = [
  "read",
  "write",
  "readv",
  "writev",
  "recvfrom",
  "sendto",
  "recvmsg",
  "sendmsg",
  "epoll_wait",
  "epoll_pwait",
  "epoll_ctl",
  "futex",
  "accept4",
  "getsockopt",
  "setsockopt",
  "pread64",
  "pwrite64",
  "mmap",
  "munmap",
  "madvise",
  "mprotect",
  "ioctl",
  "sched_yield",
  "clock_nanosleep",
];

/** Counts the system calls of every thread of `pid` for `seconds`. */
export async function traceSyscalls(pid: number, seconds: number): Promise<SyscallCounts> {
  const known = CALLS.filter((c) => {
    try {
      Deno.statSync(`/sys/kernel/tracing/events/syscalls/sys_enter_${c}`);
      return true;
    } catch {
      return false;
    }
  });
  const events = ["raw_syscalls:sys_enter", ...known.map((c) => `syscalls:sys_enter_${c}`)];
  const out = await new Deno.Command("perf", {
    args: [
      "stat",
      "--per-thread",
      "-x",
      ",",
      "-e",
      events.join(","),
      "-p",
      String(pid),
      "--",
      "sleep",
      String(seconds),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`perf stat failed: ${text.slice(-500)}`);
  return parseStat(text);
}

/**
 * Reads `perf stat --per-thread -x,`'s lines (`thread-tid,count,,event,...`):
 * each thread's calls by kind, and `other` for what the total
 * (`raw_syscalls:sys_enter`) has beyond them. Threads that ran no call
 * (`<not counted>`) are left out.
 */
export function parseStat(text: string): SyscallCounts {
  const out: SyscallCounts = new Map();
  const totals = new Map<string, number>();
  for (const line of text.split("\n")) {
    const [thread, count, , event] = line.split(",");
    if (!event || !/^\d+$/.test(count)) continue;
    const n = Number(count);
    if (event === "raw_syscalls:sys_enter") {
      totals.set(thread, n);
      continue;
    }
    const call = /^syscalls:sys_enter_(.+)$/.exec(event)?.[1];
    if (!call) continue;
    const calls = out.get(thread) ?? new Map<string, number>();
    calls.set(call, n);
    out.set(thread, calls);
  }
  for (const [thread, total] of totals) {
    const calls = out.get(thread) ?? new Map<string, number>();
    const named = [...calls.values()].reduce((a, b) => a + b, 0);
    if (total > named) calls.set("other", total - named);
    out.set(thread, calls);
  }
  return out;
}

/**
 * Lines for `counts` over `requests` requests: each thread with any call
 * (its name without its id, threads of one name together), its calls a
 * request, and its calls of each kind a request, most first, down to
 * `least` a request.
 */
export function syscallLines(counts: SyscallCounts, requests: number, least = 0.05): string[] {
  const byName = new Map<string, Map<string, number>>();
  for (const [thread, calls] of counts) {
    const name = thread.replace(/-\d+$/, "");
    const into = byName.get(name) ?? new Map<string, number>();
    for (const [call, n] of calls) into.set(call, (into.get(call) ?? 0) + n);
    byName.set(name, into);
  }
  const lines: string[] = [];
  const rows = [...byName].map(([name, calls]) => {
    const total = [...calls.values()].reduce((a, b) => a + b, 0);
    return { name, calls, total };
  }).filter((r) => r.total > 0).sort((a, b) => b.total - a.total);
  for (const { name, calls, total } of rows) {
    const each = [...calls].sort((a, b) => b[1] - a[1])
      .filter(([, n]) => n / requests >= least)
      .map(([call, n]) => `${call} ${(n / requests).toFixed(2)}`);
    lines.push(`${name}: ${(total / requests).toFixed(2)} a request (${each.join(", ")})`);
  }
  return lines;
}

if (import.meta.main) {
  const pid = Number(Deno.args[0]);
  const seconds = Number(Deno.args[1] ?? 5);
  if (!(pid > 0)) {
    console.error("Usage: deno run -A bench/syscalls.ts PID [seconds]");
    Deno.exit(2);
  }
  const counts = await traceSyscalls(pid, seconds);
  for (const [thread, calls] of counts) {
    const total = [...calls.values()].reduce((a, b) => a + b, 0);
    console.log(`${thread}: ${total} calls in ${seconds} s`);
    for (const [call, n] of [...calls].sort((a, b) => b[1] - a[1])) console.log(`  ${call} ${n}`);
  }
}
