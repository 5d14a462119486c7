/**
 * Load and CPU measurement for the proxy benchmarks: `wrk` (Debian's) POSTing
 * one JSON body over keep-alive connections, and the CPU a process spent over
 * the run, from `/proc/PID/stat` (utime + stime, it and its threads).
 * wrk runs one thread, or `WRK_THREADS` (on a machine with cores to spare,
 * so that the load generator is not what limits several gateway workers).
 *
 * @module
 */

/** What one wrk run measured. */
export interface WrkResult {
  requests: number;
  rps: number;
  /** Latency percentiles (ms). */
  p50: number;
  p99: number;
  /** Non-2xx answers and socket errors. */
  errors: number;
}

const WRK_THREADS = Math.max(1, Number(Deno.env.get("WRK_THREADS") ?? 1));

/** Whether a command is on PATH. */
export async function hasCommand(name: string): Promise<boolean> {
  const r = await new Deno.Command("sh", { args: ["-c", `command -v ${name}`], stdout: "null" })
    .output();
  return r.success;
}

/** Options for {@linkcode wrk}. */
export interface WrkOptions {
  seconds: number;
  connections: number;
  body: string;
  headers?: Record<string, string>;
}

/** Runs `wrk` against `url` with a POST of `body`. */
export async function wrk(url: string, opts: WrkOptions): Promise<WrkResult> {
  const script = await Deno.makeTempFile({ suffix: ".lua" });
  const lua = (s: string) => JSON.stringify(s); // a JSON string is a valid Lua string literal here
  const lines = [
    `wrk.method = "POST"`,
    `wrk.body = ${lua(opts.body)}`,
    `wrk.headers["content-type"] = "application/json"`,
    ...Object.entries(opts.headers ?? {}).map(([k, v]) => `wrk.headers[${lua(k)}] = ${lua(v)}`),
  ];
  await Deno.writeTextFile(script, lines.join("\n") + "\n");
  try {
    const out = await new Deno.Command("wrk", {
      args: [
        `-t${WRK_THREADS}`,
        `-c${opts.connections}`,
        `-d${opts.seconds}s`,
        "--latency",
        "-s",
        script,
        url,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) throw new Error(`wrk failed: ${new TextDecoder().decode(out.stderr)}`);
    return parseWrk(text);
  } finally {
    await Deno.remove(script);
  }
}

/** Parses wrk's `--latency` report. */
export function parseWrk(text: string): WrkResult {
  const ms = (v: string, unit: string) =>
    Number(v) * ({ us: 0.001, ms: 1, s: 1000, m: 60_000 }[unit] ?? NaN);
  const pct = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, "m").exec(text);
    if (!m) throw new Error(`wrk output has no ${p}% latency:\n${text}`);
    return ms(m[1], m[2]);
  };
  const reqs = /(\d+) requests in/.exec(text);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(text);
  if (!reqs || !rps) throw new Error(`Cannot read wrk output:\n${text}`);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const sockErrors = sock ? sock.slice(1).reduce((n, v) => n + Number(v), 0) : 0;
  return {
    requests: Number(reqs[1]),
    rps: Number(rps[1]),
    p50: pct("50"),
    p99: pct("99"),
    errors: (non2xx ? Number(non2xx[1]) : 0) + sockErrors,
  };
}

const TICK_S = 0.01; // USER_HZ is 100 on Linux

/** The user and system CPU seconds in a `/proc/.../stat` line (its fields 14 and 15). */
function statTimes(stat: string): { user: number; sys: number } {
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(f[11]) * TICK_S, sys: Number(f[12]) * TICK_S };
}

/** CPU seconds `pid` has used so far, in user space and in the kernel; NaN when it is gone. */
export async function cpuTimes(pid: number): Promise<{ user: number; sys: number }> {
  try {
    return statTimes(await Deno.readTextFile(`/proc/${pid}/stat`));
  } catch {
    return { user: NaN, sys: NaN };
  }
}

/**
 * CPU seconds the threads of `pids` have used so far, by kind: the main
 * thread, web workers (`worker-N`: the audit's SQLite), V8's platform threads
 * (`V8 DefaultWorker`: GC helpers, compilers) and the rest (the runtime's I/O and
 * blocking threads). Threads that ended in between are not counted.
 */
export async function threadCpu(pids: number[]): Promise<Record<ThreadKind, number>> {
  const out: Record<ThreadKind, number> = { main: 0, workers: 0, v8: 0, other: 0 };
  for (const pid of pids) {
    let tids: string[] = [];
    try {
      tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name);
    } catch {
      continue;
    }
    for (const tid of tids) {
      try {
        const stat = await Deno.readTextFile(`/proc/${pid}/task/${tid}/stat`);
        const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        const kind: ThreadKind = tid === String(pid)
          ? "main"
          : comm.startsWith("worker-")
          ? "workers"
          : comm.startsWith("V8 ")
          ? "v8"
          : "other";
        const t = statTimes(stat);
        out[kind] += t.user + t.sys;
      } catch {
        // the thread ended
      }
    }
  }
  return out;
}

/**
 * How the main threads of `pids` were scheduled so far, summed: seconds on a
 * core and seconds runnable but waiting for one (`/proc/.../schedstat`), and
 * how often they were preempted (`nonvoluntary_ctxt_switches`). A thread that
 * waits for a core is as unavailable to its work as one that runs: the two
 * together say how occupied it was. Processes that are gone count nothing.
 */
export async function mainThreadSched(pids: number[]): Promise<Sched> {
  const out: Sched = { run: 0, wait: 0, preempted: 0 };
  for (const pid of pids) {
    try {
      const [run, wait] = (await Deno.readTextFile(`/proc/${pid}/task/${pid}/schedstat`))
        .split(" ").map(Number);
      const status = await Deno.readTextFile(`/proc/${pid}/task/${pid}/status`);
      const m = /nonvoluntary_ctxt_switches:\s*(\d+)/.exec(status);
      out.run += run / 1e9;
      out.wait += wait / 1e9;
      out.preempted += m ? Number(m[1]) : 0;
    } catch {
      // gone
    }
  }
  return out;
}

/** What {@linkcode mainThreadSched} reads. */
export interface Sched {
  run: number;
  wait: number;
  preempted: number;
}

/** What {@linkcode threadCpu} groups threads by. */
export type ThreadKind = "main" | "workers" | "v8" | "other";

/** The pids of `pid`'s children (direct). */
export async function childPids(pid: number): Promise<number[]> {
  const out = new Set<number>();
  try {
    // A child is listed under the thread that started it, not always the main one.
    for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
      const text = await Deno.readTextFile(`/proc/${pid}/task/${task.name}/children`)
        .catch(() => "");
      for (const c of text.trim().split(/\s+/).filter(Boolean)) out.add(Number(c));
    }
  } catch {
    // gone
  }
  return [...out];
}

/**
 * Runs `load` and reports, with it, the CPU microseconds per request `pids`
 * spent together, and how many of them in the kernel (system time: the
 * sockets' sends and receives, loopback TCP included).
 */
export async function withCpu<T extends { requests: number }>(
  pids: number[],
  load: () => Promise<T>,
): Promise<T & { cpuUsPerRequest: number; sysUsPerRequest: number }> {
  const sum = async () => {
    const all = await Promise.all(pids.map(cpuTimes));
    return all.reduce((a, b) => ({ user: a.user + b.user, sys: a.sys + b.sys }), {
      user: 0,
      sys: 0,
    });
  };
  const before = await sum();
  const r = await load();
  const after = await sum();
  const per = (s: number) => (s * 1e6) / Math.max(1, r.requests);
  return {
    ...r,
    cpuUsPerRequest: per(after.user + after.sys - before.user - before.sys),
    sysUsPerRequest: per(after.sys - before.sys),
  };
}

/**
 * The process listening on TCP `host:port` in whatever network namespace it
 * is (a pod's, say), found through `/proc`: the socket's inode in a
 * namespace that holds `host` as a local address, then the process with that
 * socket open (the busiest, when several share it). Undefined when none is
 * found (not root, or gone).
 */
export async function listenerPid(host: string, port: number): Promise<number | undefined> {
  const ip = host.split(".").map(Number);
  if (ip.length !== 4 || ip.some((b) => !(b >= 0 && b <= 255))) return undefined;
  // /proc/net/tcp writes an IPv4 address as a little-endian word, the port big-endian.
  const hex = (n: number, w: number) => n.toString(16).toUpperCase().padStart(w, "0");
  const addr = ip.toReversed().map((b) => hex(b, 2)).join("");
  const locals = new Set([`${addr}:${hex(port, 4)}`, `00000000:${hex(port, 4)}`]);
  const pids = [...Deno.readDirSync("/proc")].map((e) => e.name).filter((n) => /^\d+$/.test(n));
  const inodes = new Set<string>();
  const seenNs = new Set<string>();
  for (const pid of pids) {
    try {
      const ns = Deno.readLinkSync(`/proc/${pid}/ns/net`);
      if (seenNs.has(ns)) continue;
      seenNs.add(ns);
      if (!(await Deno.readTextFile(`/proc/${pid}/net/fib_trie`)).includes(` ${host}\n`)) continue;
      for (const line of (await Deno.readTextFile(`/proc/${pid}/net/tcp`)).split("\n").slice(1)) {
        const f = line.trim().split(/\s+/);
        if (f.length > 9 && locals.has(f[1]) && f[3] === "0A" /* LISTEN */) inodes.add(f[9]);
      }
    } catch {
      // gone, or not ours to read
    }
  }
  if (!inodes.size) return undefined;
  // A process that shares the socket with children (a wrapper): the busiest of them serves.
  let best: { pid: number; cpu: number } | undefined;
  for (const pid of pids) {
    try {
      for (const fd of Deno.readDirSync(`/proc/${pid}/fd`)) {
        const target = Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`);
        if (!target.startsWith("socket:[") || !inodes.has(target.slice(8, -1))) continue;
        const t = await cpuTimes(Number(pid));
        if (!best || t.user + t.sys > best.cpu) best = { pid: Number(pid), cpu: t.user + t.sys };
        break;
      }
    } catch {
      // gone, or not ours to read
    }
  }
  return best?.pid;
}

/** CPU seconds the whole machine has spent idle so far (`/proc/stat`: idle and iowait), over all cores. */
export async function machineIdle(): Promise<number> {
  const f = (await Deno.readTextFile("/proc/stat")).split("\n", 1)[0].trim().split(/\s+/);
  return (Number(f[4]) + Number(f[5])) * TICK_S;
}
