/**
 * Process runtime: runs a pod's `commands` as a child process on this host,
 * on a free port of the host address, with the platform's env. `deno` as the
 * first command means the Deno binary running the agent.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { LogRing } from "./log_ring.ts";
import type { LibCuda } from "../ffi/libcuda.ts";
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
}

interface Child {
  proc: Deno.ChildProcess;
  logs: LogRing;
  stopping: boolean;
  paused: boolean;
  /** The tier it is parked in, when parked. */
  tier?: StandbyTier;
  exited: Promise<string>;
}

/** Finds a free TCP port on `host`. */
export function freePort(host = "127.0.0.1"): number {
  const l = Deno.listen({ hostname: host, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Waits until `url` answers 2xx, `died` settles, or `timeoutMs` passes. */
export async function waitForProbe(
  url: string,
  died: Promise<string>,
  options: { timeoutMs: number; intervalMs?: number },
): Promise<void> {
  let dead: string | undefined;
  died.then((why) => dead = why);
  const deadline = Date.now() + options.timeoutMs;
  while (true) {
    if (dead !== undefined) throw new Error(`worker exited before it was ready (${dead})`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      throw new Error(`worker did not answer ${url} within ${options.timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 25));
  }
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
    this.standbyTiers = options.cuda?.hasCheckpointApi ? ["paused", "host_memory"] : ["paused"];
  }

  /** The worker process of a pod, for tier operations and tests. */
  pidOf(podId: string): number | undefined {
    return this.#children.get(podId)?.proc.pid;
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
    let proc: Deno.ChildProcess;
    try {
      proc = new Deno.Command(cmd === "deno" ? Deno.execPath() : cmd, {
        args,
        env,
        clearEnv: true,
        cwd: this.#options.workDir,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
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
    const pumps = Promise.all([pump(proc.stdout), pump(proc.stderr)]).catch(() => {});
    const child: Child = {
      proc,
      logs,
      stopping: false,
      paused: false,
      exited: proc.status.then(async (s) => {
        await pumps;
        return s.signal ? `killed by ${s.signal}` : `exit code ${s.code}`;
      }),
    };
    this.#children.set(spec.podId, child);
    child.exited.then((why) => {
      if (this.#children.get(spec.podId) !== child) return;
      this.#children.delete(spec.podId);
      if (!child.stopping) {
        this.#options.onExit?.(spec.podId, `${why}; last output:\n${logs.tail()}`);
      }
    });
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

  async stop(podId: string, graceMs = 5000): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) return;
    child.stopping = true;
    try {
      child.proc.kill("SIGTERM");
      // A stopped process only sees SIGTERM once continued.
      if (child.paused) child.proc.kill("SIGCONT");
    } catch {
      // already gone
    }
    const timer = setTimeout(() => {
      try {
        child.proc.kill("SIGKILL");
      } catch {
        // already gone
      }
    }, graceMs);
    await child.exited;
    clearTimeout(timer);
    this.#children.delete(podId);
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
    if (tier === "host_memory") {
      const cuda = this.#options.cuda!;
      const pid = child.proc.pid;
      cuda.lock(pid, this.#options.cudaLockTimeoutMs ?? 10_000);
      try {
        cuda.checkpoint(pid);
      } catch (err) {
        cuda.unlock(pid);
        return Promise.reject(err);
      }
    } else {
      child.proc.kill("SIGSTOP");
      child.paused = true;
    }
    child.tier = tier;
    return Promise.resolve();
  }

  resume(podId: string): Promise<void> {
    const child = this.#children.get(podId);
    if (!child) {
      return Promise.reject(
        new InferxError("not_found", `Cannot resume pod ${podId}: it is not running`),
      );
    }
    if (child.tier === "host_memory") {
      const cuda = this.#options.cuda!;
      cuda.restore(child.proc.pid);
      cuda.unlock(child.proc.pid);
    } else {
      child.proc.kill("SIGCONT");
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
