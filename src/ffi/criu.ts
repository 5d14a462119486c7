/**
 * CRIU through `libcriu.so.2` (Debian's `criu` package): check the kernel's
 * support, dump a process tree to a directory, restore it. Every call logs
 * into its directory; a failure carries the log's error lines as its
 * reason. A missing library is an absent capability, never a crash.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";

const CRIU = {
  criu_init_opts: { parameters: [], result: "i32" },
  criu_set_work_dir_fd: { parameters: ["i32"], result: "void" },
  criu_set_images_dir_fd: { parameters: ["i32"], result: "void" },
  criu_set_log_file: { parameters: ["buffer"], result: "i32" },
  criu_set_log_level: { parameters: ["i32"], result: "void" },
  criu_set_pid: { parameters: ["i32"], result: "void" },
  criu_set_leave_running: { parameters: ["bool"], result: "void" },
  criu_set_shell_job: { parameters: ["bool"], result: "void" },
  criu_check: { parameters: [], result: "i32" },
  criu_dump: { parameters: [], result: "i32" },
  criu_restore: { parameters: [], result: "i32" },
  // Not in every libcriu: without them a worker with open connections cannot be dumped.
  criu_set_tcp_established: { parameters: ["bool"], result: "void", optional: true },
  criu_set_tcp_close: { parameters: ["bool"], result: "void", optional: true },
} as const;

const LIBC = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

const O_RDONLY = 0;
const O_DIRECTORY = 0o200000;

const cstr = (s: string) => new TextEncoder().encode(`${s}\0`);

/** What opening libcriu gave: the library, or why there is none. */
export type CriuOpenResult = { criu: LibCriu; reason?: undefined } | {
  criu?: undefined;
  reason: string;
};

/** Opens `libcriu.so.2` (env `INFERX_LIBCRIU` overrides). Never throws. */
export function openLibCriu(
  path = Deno.env.get("INFERX_LIBCRIU") ?? "libcriu.so.2",
): CriuOpenResult {
  try {
    const libc = Deno.dlopen("libc.so.6", LIBC);
    try {
      return { criu: new LibCriu(Deno.dlopen(path, CRIU), libc) };
    } catch (err) {
      libc.close();
      return { reason: `Cannot load ${path}: ${(err as Error).message}` };
    }
  } catch (err) {
    return { reason: `Cannot load libc.so.6: ${(err as Error).message}` };
  }
}

/** The error lines of a CRIU log, or its last lines when none says Error. */
export function logReason(log: string): string {
  const lines = log.split("\n").map((l) => l.trim()).filter(Boolean);
  const errors = lines.filter((l) => /\bError\b/.test(l)).map((l) =>
    l.replace(/^\(\d+\.\d+\)\s*/, "")
  );
  return (errors.length ? errors : lines.slice(-3)).join("; ") || "no log";
}

/** CRIU, loaded. */
export class LibCriu {
  #lib: Deno.DynamicLibrary<typeof CRIU>;
  #libc: Deno.DynamicLibrary<typeof LIBC>;

  constructor(lib: Deno.DynamicLibrary<typeof CRIU>, libc: Deno.DynamicLibrary<typeof LIBC>) {
    this.#lib = lib;
    this.#libc = libc;
  }

  /** Opens `dir` as a directory fd for libcriu. */
  #dirFd(dir: string): number {
    const fd = this.#libc.symbols.open(cstr(dir), O_RDONLY | O_DIRECTORY);
    if (fd < 0) throw new InferxError("invalid", `Cannot open directory ${dir} for CRIU`);
    return fd;
  }

  /** Runs one libcriu call with fresh options, logging into `dir/log`. */
  async #run(
    what: string,
    dir: string,
    setup: (s: Deno.DynamicLibrary<typeof CRIU>["symbols"]) => void,
    call: () => number,
  ): Promise<{ result: number; log: string }> {
    await Deno.mkdir(dir, { recursive: true });
    const s = this.#lib.symbols;
    if (s.criu_init_opts() < 0) {
      throw new InferxError("internal", `Cannot ${what}: criu_init_opts failed`);
    }
    const fd = this.#dirFd(dir);
    try {
      s.criu_set_work_dir_fd(fd);
      s.criu_set_log_level(4);
      s.criu_set_log_file(cstr(`${what}.log`));
      setup(s);
      const result = call();
      const log = await Deno.readTextFile(`${dir}/${what}.log`).catch(() => "");
      return { result, log };
    } finally {
      this.#libc.symbols.close(fd);
    }
  }

  /** Whether this kernel supports checkpoint and restore; when not, why. */
  async check(dir: string): Promise<{ ok: true } | { ok: false; reason: string }> {
    const { result, log } = await this.#run(
      "check",
      dir,
      () => {},
      () => this.#lib.symbols.criu_check(),
    );
    if (result === 0) return { ok: true };
    return { ok: false, reason: log.trim() ? logReason(log) : `criu_check returned ${result}` };
  }

  /**
   * Dumps the process tree of `pid` into `dir`; the process stops unless
   * `leaveRunning`. `tcpEstablished` dumps open TCP connections too (a
   * worker with kept-alive clients has some).
   */
  async dump(
    pid: number,
    dir: string,
    options: { leaveRunning?: boolean; tcpEstablished?: boolean } = {},
  ): Promise<void> {
    const { result, log } = await this.#run("dump", dir, (s) => {
      s.criu_set_pid(pid);
      s.criu_set_images_dir_fd(this.#dirFd(dir));
      s.criu_set_leave_running(options.leaveRunning ?? false);
      s.criu_set_shell_job(true);
      if (options.tcpEstablished) s.criu_set_tcp_established?.(true);
    }, () => this.#lib.symbols.criu_dump());
    if (result < 0) {
      throw new InferxError("internal", `Cannot dump process ${pid}: ${logReason(log)}`);
    }
  }

  /**
   * Restores the process tree dumped in `dir`; returns its pid. `tcpClose`
   * restores dumped connections closed (their peers have moved on).
   */
  async restore(dir: string, options: { tcpClose?: boolean } = {}): Promise<number> {
    const { result, log } = await this.#run("restore", dir, (s) => {
      s.criu_set_images_dir_fd(this.#dirFd(dir));
      s.criu_set_shell_job(true);
      if (options.tcpClose) s.criu_set_tcp_close?.(true);
    }, () => this.#lib.symbols.criu_restore());
    if (result < 0) {
      throw new InferxError("internal", `Cannot restore from ${dir}: ${logReason(log)}`);
    }
    return result;
  }

  /** Unloads the libraries. */
  close(): void {
    this.#lib.close();
    this.#libc.close();
  }
}

/** The error lines `criu check` prints (the binary libcriu runs). */
async function cliCheckErrors(): Promise<string> {
  try {
    const out = await new Deno.Command("criu", {
      args: ["check"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return logReason(new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout));
  } catch (err) {
    return `cannot run criu: ${(err as Error).message}`;
  }
}

/** Whether the file standby tier can work on this node, and if not, why. */
export async function criuCapability(
  dir: string,
): Promise<{ available: boolean; reason?: string }> {
  const { criu, reason } = openLibCriu();
  if (!criu) return { available: false, reason };
  try {
    const r = await criu.check(dir);
    if (r.ok) return { available: true };
    // libcriu's service fails kernel-feature detection before it opens its
    // log; the same binary's own check prints why.
    const detail = /Error/.test(r.reason) ? r.reason : `${r.reason}; ${await cliCheckErrors()}`;
    return { available: false, reason: `criu check failed: ${detail}` };
  } catch (err) {
    return { available: false, reason: (err as Error).message };
  } finally {
    criu.close();
  }
}
