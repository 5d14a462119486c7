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
 * V8's builtins and the interpreter's bytecode handlers run from the
 * executable's own pages (the embedded blob, mapped again near the
 * generated code), so perf puts them in the executable like its C++, at
 * their offset in the file; V8's map names them at their address
 * (`Builtin:...`, `BytecodeHandler:...`), which the process's mappings
 * turn into that offset ({@linkcode builtinOffsets}). With both, they are
 * counted apart, by name.
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
  /** V8's builtins and bytecode handlers (in the executable; named only with the map). */
  builtin: number;
  generated: number;
  /** Native samples by the innermost JavaScript function on their stack. */
  nativeBy: Map<string, number>;
  /** Builtin samples by the builtin or bytecode handler they were in. */
  builtinBy: Map<string, number>;
}

/** Native samples with no JavaScript on the stack: the event loop, op completions, timers. */
export const NO_JS = "(no JavaScript on the stack: the event loop)";

/** One frame of `perf script -F ip,sym,dso`: `<ip> <symbol> (<dso>)`. */
const FRAME = /^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$/;

/**
 * Splits `perf script -F ip,sym,dso` output (samples with call chains,
 * blank-line separated, innermost frame first). A frame is the kernel's
 * when its object is `[kernel.kallsyms]`, native when it is a file (the
 * executable, a shared library, the vDSO) and generated otherwise (a
 * `perf-PID.map` of JIT code, or unknown memory). With `jit`, generated
 * frames are named from it rather than by perf (see {@linkcode JitMap});
 * with `builtins` (file offsets: {@linkcode builtinOffsets}), native frames
 * it names are V8's builtins.
 */
export function splitPerfScript(text: string, jit?: JitMap, builtins?: JitMap): NativeSplit {
  const out: NativeSplit = {
    samples: 0,
    kernel: 0,
    native: 0,
    builtin: 0,
    generated: 0,
    nativeBy: new Map(),
    builtinBy: new Map(),
  };
  for (const block of text.split(/\n\s*\n/)) {
    const frames = [];
    for (const line of block.split("\n")) {
      const m = FRAME.exec(line);
      if (!m) continue;
      let kind: Kind = frameKind(m[3]);
      let sym = m[2];
      const ip = BigInt(`0x${m[1]}`);
      if (kind === "generated" && jit) sym = jit.name(ip) ?? sym;
      const builtin = kind === "native" ? builtins?.name(ip) : undefined;
      if (builtin !== undefined) [kind, sym] = ["builtin", builtin];
      frames.push({ kind, sym });
    }
    if (!frames.length) continue;
    out.samples++;
    const kind = frames[0].kind;
    out[kind]++;
    if (kind === "builtin") {
      out.builtinBy.set(frames[0].sym, (out.builtinBy.get(frames[0].sym) ?? 0) + 1);
    }
    if (kind !== "native") continue;
    const js = frames.find((f) => f.kind === "generated" && f.sym.startsWith("JS:"));
    const name = js ? jsName(js.sym) : NO_JS;
    out.nativeBy.set(name, (out.nativeBy.get(name) ?? 0) + 1);
  }
  return out;
}

/**
 * V8's map of the code it generated (`/tmp/perf-PID.map`, written under
 * `--perf-basic-prof`), read so that an address names the code that was
 * there last. The file only grows: V8 does not say when code is freed, and
 * code made later (say, a hot function optimized under load) can take the
 * addresses of code freed since (say, a library's start-up code). perf then
 * names a sample by either, and has been seen to name the gateway's
 * `#apply` after zod's and protobufjs's start-up functions. Here an entry
 * stands only until a later one overlaps it.
 */
export class JitMap {
  /** Live entries, sorted by start, none overlapping. */
  readonly #starts: bigint[] = [];
  readonly #ends: bigint[] = [];
  readonly #names: string[] = [];

  /** Reads the map's text (`START SIZE NAME` lines, hexadecimal, oldest first). */
  constructor(text: string) {
    for (const line of text.split("\n")) {
      const m = /^([0-9a-f]+) ([0-9a-f]+) (.*)$/i.exec(line);
      if (!m) continue;
      const start = BigInt(`0x${m[1]}`);
      const end = start + BigInt(`0x${m[2]}`);
      if (end === start) continue;
      // Drop what it overlaps: the entries from the last one starting before its end, back
      // to the first one ending after its start.
      const hi = this.#upper(end); // entries [0, hi) start before `end`
      let lo = hi;
      while (lo > 0 && this.#ends[lo - 1] > start) lo--;
      this.#starts.splice(lo, hi - lo, start);
      this.#ends.splice(lo, hi - lo, end);
      this.#names.splice(lo, hi - lo, m[3]);
    }
  }

  /** The number of live entries starting before `at`. */
  #upper(at: bigint): number {
    let [lo, hi] = [0, this.#starts.length];
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#starts[mid] < at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The live entries: start, size, name. */
  *entries(): Generator<[bigint, bigint, string]> {
    for (let i = 0; i < this.#starts.length; i++) {
      yield [this.#starts[i], this.#ends[i] - this.#starts[i], this.#names[i]];
    }
  }

  /** The name of the code last made at `ip`, or undefined where the map has none. */
  name(ip: bigint): string | undefined {
    const i = this.#upper(ip + 1n) - 1;
    return i >= 0 && ip < this.#ends[i] ? this.#names[i] : undefined;
  }
}

type Kind = "kernel" | "native" | "builtin" | "generated";

/** The names V8's map gives the code of its embedded blob. */
const BUILTIN = /^(Builtin|BytecodeHandler):/;

/**
 * The builtins of `jit` at their offsets in the files mapped where they run
 * (`maps`: the process's `/proc/PID/maps`), as perf gives a file's frames.
 */
export function builtinOffsets(jit: JitMap, maps: string): JitMap {
  const files: { start: bigint; end: bigint; offset: bigint }[] = [];
  for (const line of maps.split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) r-xp ([0-9a-f]+) \S+ \d+\s+(\/\S.*)$/.exec(line);
    if (m) {
      files.push({
        start: BigInt(`0x${m[1]}`),
        end: BigInt(`0x${m[2]}`),
        offset: BigInt(`0x${m[3]}`),
      });
    }
  }
  const lines = [];
  for (const [start, size, name] of jit.entries()) {
    if (!BUILTIN.test(name)) continue;
    const f = files.find((f) => f.start <= start && start < f.end);
    if (f) lines.push(`${(start - f.start + f.offset).toString(16)} ${size.toString(16)} ${name}`);
  }
  return new JitMap(lines.join("\n"));
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
    // Read after the samples: the code made during them is in it (absent without --perf-basic-prof).
    const map = await Deno.readTextFile(`/tmp/perf-${pid}.map`).catch(() => undefined);
    const jit = map === undefined ? undefined : new JitMap(map);
    const maps = await Deno.readTextFile(`/proc/${pid}/maps`).catch(() => "");
    return splitPerfScript(
      new TextDecoder().decode(script.stdout),
      jit,
      jit && builtinOffsets(jit, maps),
    );
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
    `V8 builtins and interpreter ${part(s.builtin)}, ` +
    `generated code (JS, wasm) ${part(s.generated)}; ${s.samples} samples`;
}

/** The builtins and bytecode handlers that took the most samples. */
export function topBuiltins(s: NativeSplit, rows: number): string[] {
  return [...s.builtinBy].sort((a, b) => b[1] - a[1]).slice(0, rows).map(([name, n]) =>
    `${(n / Math.max(1, s.samples) * 100).toFixed(1)}% ${name}`
  );
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
  console.log("V8's builtins and bytecode handlers (share of all samples):");
  for (const line of topBuiltins(s, Number(Deno.args[2] ?? 15))) console.log(`  ${line}`);
}
