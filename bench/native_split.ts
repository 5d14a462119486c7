/**
 * Where one thread's time goes, by the kind of code it ran: the kernel
 * (system calls, the network stack), the runtime's native code (the
 * executable and its C libraries: V8's C++ runtime and collector, Deno's
 * ops and event loop), and generated code (JavaScript, WebAssembly, V8's
 * builtins and stubs). A V8 CPU profile cannot tell these apart: it charges
 * a runtime call and a system call alike to the JavaScript that made it.
 * `perf record -g` samples the thread with its stack; the runtime's native
 * samples are also charged to the innermost JavaScript function on their
 * stack (the one that called into the runtime), which perf names when the
 * process runs with V8's `--perf-basic-prof`.
 *
 * Run: `deno run -A bench/native_split.ts PID [seconds] [rows]` (3, 15)
 * samples the main thread of PID; `bench/gateway.ts` does it for each proxy
 * under load with `GATEWAY_PERF=1`. Needs `perf` (Debian's `linux-perf`).
 *
 * @module
 */

/** Samples of one thread by the kind of code they were in. */
export interface NativeSplit {
  samples: number;
  kernel: number;
  native: number;
  generated: number;
  /** Native samples by the innermost JavaScript function on their stack. */
  nativeBy: Map<string, number>;
}

/** Native samples with no JavaScript on the stack: the event loop, op completions, timers. */
export const NO_JS = "(no JavaScript on the stack: the event loop)";

/** One frame of `perf script -F ip,sym,dso`: `<ip> <symbol> (<dso>)`. */
const FRAME = /^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$/;

/**
 * Splits `perf script -F ip,sym,dso` output (samples with call chains,
 * blank-line separated, innermost frame first). A frame is the kernel's
 * when its object is `[kernel.kallsyms]`, native when it is a file (the
 * executable, a shared library, the vDSO) and generated otherwise (a
 * `perf-PID.map` of JIT code, or unknown memory).
 */
export function splitPerfScript(text: string): NativeSplit {
  const out: NativeSplit = {
    samples: 0,
    kernel: 0,
    native: 0,
    generated: 0,
    nativeBy: new Map(),
  };
  for (const block of text.split(/\n\s*\n/)) {
    const frames = block.split("\n").map((l) => FRAME.exec(l)).filter((m) => m !== null);
    if (!frames.length) continue;
    out.samples++;
    const kind = frameKind(frames[0][2]);
    out[kind]++;
    if (kind !== "native") continue;
    const js = frames.find((f) => frameKind(f[2]) === "generated" && f[1].startsWith("JS:"));
    const name = js ? jsName(js[1]) : NO_JS;
    out.nativeBy.set(name, (out.nativeBy.get(name) ?? 0) + 1);
  }
  return out;
}

function frameKind(dso: string): "kernel" | "native" | "generated" {
  if (dso.startsWith("[kernel")) return "kernel";
  if (dso === "[vdso]") return "native";
  return dso.startsWith("/") && !/\/perf-\d+\.map$/.test(dso) ? "native" : "generated";
}

/** `JS:*'call file:///repo/src/x.ts:34:22` → `call src/x.ts:34`, relative to the working directory. */
function jsName(sym: string): string {
  const m = /^JS:[*~+^]?'?(\S*)\s+(\S+?)(?::(\d+):\d+)?$/.exec(sym);
  if (!m) return sym.slice(3);
  const where = m[2].replace(`file://${Deno.cwd()}/`, "").replace(/^.*node_modules\/\.deno\//, "");
  return `${m[1] || "(anonymous)"} ${where}${m[3] ? `:${m[3]}` : ""}`;
}

/**
 * Samples the main thread of `pid` (its thread id is its pid) for `seconds`
 * with `perf record -g` and splits what it ran.
 */
export async function recordThread(pid: number, seconds: number): Promise<NativeSplit> {
  const data = await Deno.makeTempFile({ suffix: ".perf" });
  try {
    const rec = await new Deno.Command("perf", {
      args: [
        "record",
        "-q",
        "-g",
        "-F",
        "999",
        "-t",
        String(pid),
        "-o",
        data,
        "--",
        "sleep",
        String(seconds),
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!rec.success) {
      throw new Error(`perf record failed: ${new TextDecoder().decode(rec.stderr)}`);
    }
    const script = await new Deno.Command("perf", {
      args: ["script", "-i", data, "-F", "ip,sym,dso"],
      stdout: "piped",
      stderr: "null",
    }).output();
    return splitPerfScript(new TextDecoder().decode(script.stdout));
  } finally {
    await Deno.remove(data).catch(() => {});
  }
}

/** One line: the three kinds as shares, and as µs a request when the thread's µs a request is known. */
export function splitLine(s: NativeSplit, usPerRequest?: number): string {
  const part = (n: number) => {
    const share = n / Math.max(1, s.samples);
    return usPerRequest === undefined
      ? `${(share * 100).toFixed(1)}%`
      : `${(share * usPerRequest).toFixed(1)} µs (${(share * 100).toFixed(1)}%)`;
  };
  return `kernel ${part(s.kernel)}, runtime native ${part(s.native)}, ` +
    `generated code (JS, wasm, builtins) ${part(s.generated)}; ${s.samples} samples`;
}

/** The JavaScript functions whose calls into the runtime took the most native samples. */
export function topCallers(s: NativeSplit, rows: number): string[] {
  return [...s.nativeBy].sort((a, b) => b[1] - a[1]).slice(0, rows).map(([name, n]) =>
    `${(n / Math.max(1, s.samples) * 100).toFixed(1)}% ${name}`
  );
}

if (import.meta.main) {
  const pid = Number(Deno.args[0]);
  if (!Number.isInteger(pid) || pid <= 0) {
    console.error("usage: deno run -A bench/native_split.ts PID [seconds] [rows]");
    Deno.exit(2);
  }
  const s = await recordThread(pid, Number(Deno.args[1] ?? 3));
  console.log(splitLine(s));
  console.log("native time by the JavaScript that called into the runtime (share of all samples):");
  for (const line of topCallers(s, Number(Deno.args[2] ?? 15))) console.log(`  ${line}`);
}
