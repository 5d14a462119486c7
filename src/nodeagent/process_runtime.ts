/**
 * Process runtime: runs a pod's `commands` as a child process on this host,
 * on a free port of the host address, with the platform's env. `deno` as the
 * first command means the Deno binary running the agent.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { freePort, waitForProbe } from "../common/net.ts";
import { LogRing } from "./log_ring.ts";
import type { LibCuda } from "../ffi/libcuda.ts";
import type { LibCriu } from "../ffi/criu.ts";
import type { StandbyTier } from "../model/cluster.ts";
import {
  type AdoptedPod,
  platformEnv,
  type PodRuntime,
  type PodSpec,
  type RunningPod,
} from "./runtime.ts";

/** Options for {@linkcode ProcessRuntime}. */
export interface ProcessRuntimeOptions {
  /** Working directory of workers. @default the current directory */
  workDir?: string;
  /** Address workers listen on and are reached at. @default "127.0.0.1" */
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
   * CRIU, when it passed its check: the file tier is offered, and workers
   * write their output to a file (a pipe to the agent could not be dumped).
   */
  criu?: LibCriu;
  /** Where file-tier images and worker output files go. @default `{workDir}/snapshots` */
  snapshotDir?: string;
  /** Worker output to `{snapshotDir}/{pod}.log` instead of pipes. @default whether `criu` is set */
  outputToFile?: boolean;
}

interface Child {
  /** The process as spawned; undefined once dumped to a file or restored by CRIU. */
  proc?: Deno.ChildProcess;
  pid: number;
  logs: LogRing;
  stopping: boolean;
  paused: boolean;
  /** The tier it is parked in, when parked. */
  tier?: StandbyTier;
  /** Whether its GPU memory was checkpointed before a dump to file. */
  gpu?: boolean;
  /** Set while CRIU dumps it: its end is the dump's doing, not a crash. */
  dumping?: boolean;
  exited: Promise<string>;
  /** Stops following its output file. */
  unfollow?: () => void;
}

/** Sends `sig` to `pid`, ignoring a process already gone. */
function signal(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Resolves when `pid` is gone (or a zombie): for processes that are not our children. */
async function pidExited(pid: number): Promise<string> {
  while (true) {
    try {
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return "exited";
    } catch {
      return "exited";
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Appends what is written to `path` to `ring` until the returned function is called. */
function followFile(path: string, ring: LogRing): () => void {
  let stopped = false;
  let offset = 0;
  (async () => {
    const dec = new TextDecoder();
    while (!stopped) {
      try {
        using f = await Deno.open(path, { read: true });
        await f.seek(offset, Deno.SeekMode.Start);
        const buf = new Uint8Array(64 * 1024);
        let n: number | null;
        while ((n = await f.read(buf)) !== null && n > 0) {
          offset += n;
          ring.push(dec.decode(buf.subarray(0, n), { stream: true }));
        }
      } catch {
        // not there yet
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return () => stopped = true;
}

/** Runs pods as processes of this host. */
export class ProcessRuntime implements PodRuntime {
  readonly name = "process";
  /**
   * Paused: SIGSTOP keeps the process, its memory and any GPU memory; SIGCONT
   * resumes it. Host memory (when the driver has the checkpoint API): the
   * driver locks the worker's CUDA calls and moves its GPU memory into its
   * host memory, freeing the GPU; restore and unlock bring it back.
   */
  readonly standbyTiers: readonly StandbyTier[];
  #children = new Map<string, Child>();
  #options: ProcessRuntimeOptions;

  constructor(options: ProcessRuntimeOptions = {}) {
    this.#options = options;
    const tiers: StandbyTier[] = ["paused"];
    if (options.cuda?.hasCheckpointApi) tiers.push("host_memory");
    if (options.criu) tiers.push("file");
    this.standbyTiers = tiers;
  }

  get #snapshots(): string {
    return this.#options.snapshotDir ?? `${this.#options.workDir ?? Deno.cwd()}/snapshots`;
  }

  /** The worker process of a pod, for tier operations and tests. */
  pidOf(podId: string): number | undefined {
    const c = this.#children.get(podId);
    return c && c.tier !== "file" ? c.pid : undefined;
  }

  get #scope(): string {
    return this.#options.scope ?? "default";
  }

  /**
   * Worker processes cannot be re-attached (their output pipes died with the
   * old agent), so every process of this scope left behind is killed.
   */
  async recover(): Promise<{ adopted: AdoptedPod[]; removed: number }> {
    let removed = 0;
    for (const pid of await scopeProcesses(this.#scope)) {
      try {
        Deno.kill(pid, "SIGKILL");
        removed++;
      } catch {
        // exited meanwhile
      }
    }
    return { adopted: [], removed };
  }

  async start(spec: PodSpec): Promise<RunningPod> {
    const t = spec.template;
    if (t.commands.length === 0) {
      throw new InferxError(
        "worker_failed",
        `Cannot start pod ${spec.podId}: function ${spec.func} has no commands (the process runtime runs commands; image ${t.image} needs the Docker runtime)`,
      );
    }
    const host = this.#options.host ?? "127.0.0.1";
    const port = freePort(host);
    const [cmd, ...args] = t.commands;
    const env: Record<string, string> = {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: Deno.env.get("HOME") ?? "/tmp",
      ...Object.fromEntries(t.envs),
      ...platformEnv(spec),
      PORT: String(port),
      HOST: host,
      INFERX_SCOPE: this.#scope,
    };
    const logs = new LogRing();
    const bin = cmd === "deno" ? Deno.execPath() : cmd;
    // With the file tier, output goes to a file CRIU can dump and restore.
    const toFile = this.#options.outputToFile ?? this.#options.criu !== undefined;
    const logFile = toFile ? `${this.#snapshots}/${spec.podId}.log` : undefined;
    if (logFile) await Deno.mkdir(this.#snapshots, { recursive: true });
    let proc: Deno.ChildProcess;
    try {
      proc = new Deno.Command(logFile ? "/bin/sh" : bin, {
        args: logFile ? ["-c", 'exec "$0" "$@" >>"$INFERX_LOG_FILE" 2>&1', bin, ...args] : args,
        env: logFile ? { ...env, INFERX_LOG_FILE: logFile } : env,
        clearEnv: true,
        cwd: this.#options.workDir,
        stdin: "null",
        stdout: logFile ? "null" : "piped",
        stderr: logFile ? "null" : "piped",
      }).spawn();
    } catch (err) {
      throw new InferxError(
        "worker_failed",
        `Cannot start pod ${spec.podId}: ${cmd}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const text of s.pipeThrough(new TextDecoderStream())) logs.push(text);
    };
    const unfollow = logFile ? followFile(logFile, logs) : undefined;
    const pumps = logFile
      ? Promise.resolve()
      : Promise.all([pump(proc.stdout), pump(proc.stderr)]).catch(() => {});
    const child: Child = {
      proc,
      pid: proc.pid,
      logs,
      stopping: false,
      paused: false,
      unfollow,
      exited: proc.status.then(async (s) => {
        await pumps;
        return s.signal ? `killed by ${s.signal}` : `exit code ${s.code}`;
      }),
    };
    this.#children.set(spec.podId, child);
    this.#watchExit(spec.podId, child);
    try {
      await waitForProbe(`http://${host}:${port}${t.probe}`, child.exited, {
        timeoutMs: t.startupTimeoutS * 1000,
        intervalMs: this.#options.probeIntervalMs,
      });
    } catch (err) {
      child.stopping = true;
      await this.stop(spec.podId, 1000);
      await child.exited;
      throw new InferxError(
        "worker_failed",
        `${(err as Error).message}; last output:\n${logs.tail()}`,
      );
    }
    return { podId: spec.podId, endpoint: `${host}:${port}`, exited: child.exited };
  }

  /** Reports an exit nobody asked for; forgets the child either way. */
  #watchExit(podId: string, child: Child): void {
    child.exited.then((why) => {
      if (this.#children.get(podId) !== child || child.dumping) return;
      child.unfollow?.();
      this.#children.delete(podId);
      if (!child.stopping) {
        this.#options.onExit?.(podId, `${why}; last output:\n${child.logs.tail()}`);
      }
    });
  }

  async stop(podId: string, graceMs = 5000): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) return;
    child.stopping = true;
    if (child.tier !== "file") {
      signal(child.pid, "SIGTERM");
      // A stopped process only sees SIGTERM once continued.
      if (child.paused) signal(child.pid, "SIGCONT");
      const timer = setTimeout(() => signal(child.pid, "SIGKILL"), graceMs);
      await child.exited;
      clearTimeout(timer);
    }
    child.unfollow?.();
    this.#children.delete(podId);
    if (this.#options.criu || this.#options.outputToFile) {
      await Deno.remove(`${this.#snapshots}/${podId}`, { recursive: true }).catch(() => {});
      await Deno.remove(`${this.#snapshots}/${podId}.log`).catch(() => {});
    }
  }

  park(podId: string, tier: StandbyTier): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) {
      return Promise.reject(
        new InferxError("not_found", `Cannot park pod ${podId}: it is not running`),
      );
    }
    if (!this.standbyTiers.includes(tier)) {
      return Promise.reject(
        new InferxError(
          "unsupported",
          `Cannot park pod ${podId} in ${tier}: this node offers ${this.standbyTiers.join(", ")}`,
        ),
      );
    }
    if (tier === "file") return this.#parkToFile(podId, child);
    if (tier === "host_memory") {
      try {
        this.#checkpointGpu(child.pid);
      } catch (err) {
        return Promise.reject(err);
      }
    } else {
      signal(child.pid, "SIGSTOP");
      child.paused = true;
    }
    child.tier = tier;
    return Promise.resolve();
  }

  /** Tier 2: the driver moves the worker's GPU memory into its host memory. */
  #checkpointGpu(pid: number): void {
    const cuda = this.#options.cuda!;
    cuda.lock(pid, this.#options.cudaLockTimeoutMs ?? 10_000);
    try {
      cuda.checkpoint(pid);
    } catch (err) {
      cuda.unlock(pid);
      throw err;
    }
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

  #restoreGpu(pid: number): void {
    const cuda = this.#options.cuda!;
    cuda.restore(pid);
    cuda.unlock(pid);
  }

  /** Tier 3: tier 2 when the worker uses the GPU, then CRIU dumps the process to disk. */
  async #parkToFile(podId: string, child: Child): Promise<void> {
    const gpu = this.#usesGpu(child.pid);
    if (gpu) this.#checkpointGpu(child.pid);
    child.dumping = true;
    try {
      await this.#options.criu!.dump(child.pid, `${this.#snapshots}/${podId}`, {
        tcpEstablished: true,
      });
    } catch (err) {
      child.dumping = false;
      if (gpu) this.#restoreGpu(child.pid);
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
    child.gpu = gpu;
  }

  /** Restores a pod parked in a file: CRIU rebuilds the process, then tier 2 in reverse. */
  async #resumeFromFile(podId: string, child: Child): Promise<void> {
    const dir = `${this.#snapshots}/${podId}`;
    let pid: number;
    try {
      pid = await this.#options.criu!.restore(dir, { tcpClose: true });
    } catch (err) {
      throw new InferxError(
        "worker_failed",
        `Cannot resume pod ${podId} from file: ${(err as Error).message}`,
      );
    }
    if (child.gpu) this.#restoreGpu(pid);
    child.pid = pid;
    child.tier = undefined;
    child.exited = pidExited(pid);
    this.#watchExit(podId, child);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  resume(podId: string): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) {
      return Promise.reject(
        new InferxError("not_found", `Cannot resume pod ${podId}: it is not running`),
      );
    }
    if (child.tier === "file") return this.#resumeFromFile(podId, child);
    if (child.tier === "host_memory") {
      try {
        this.#restoreGpu(child.pid);
      } catch (err) {
        return Promise.reject(err);
      }
    } else {
      signal(child.pid, "SIGCONT");
      child.paused = false;
    }
    child.tier = undefined;
    return Promise.resolve();
  }

  logs(podId: string, lines = 50): Promise<string> {
    return Promise.resolve(this.#children.get(podId)?.logs.tail(lines) ?? "");
  }

  /** Pod ids with a live process. */
  running(): string[] {
    return [...this.#children.keys()];
  }
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
