/**
 * The `PodRuntime` interface a node agent drives: start a worker, learn when
 * it is ready or has died, stop it, read its output. Implementations: the
 * process runtime (here) and Docker.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import type { GpuSlice, PodTemplate, StandbyTier } from "../model/cluster.ts";

/**
 * The most processes and threads one worker may have, in either runtime
 * (Docker's `--pids-limit`; `pids.max` of a process-runtime worker's group).
 */
export const WORKER_PIDS_LIMIT = 4096;

/** Everything a runtime needs to start one pod. */
export interface PodSpec {
  podId: string;
  /** `tenant/namespace/name` of the function. */
  func: string;
  funcVersion: number;
  template: PodTemplate;
  cpuMillis: number;
  memMB: number;
  gpus: GpuSlice[];
}

/** A started pod. */
export interface RunningPod {
  podId: string;
  /** `host:port` the worker answers on. */
  endpoint: string;
  /** Resolves when the process ends, with a description of how. */
  exited: Promise<string>;
  /**
   * Whether its worker lives now, read from the system at once (a process
   * that just ended is told before `exited`, which may wait on its output to
   * settle). Absent: the agent gives `exited` a turn of the event loop.
   */
  alive?(): Promise<boolean>;
}

/** A snapshot a runtime took. */
export interface SnapshotTaken {
  /** Size of the image on disk. */
  bytes: number;
  /** How long the dump took (ms). */
  dumpMs: number;
}

/** Starts, stops and reads pods on one node. */
export interface PodRuntime {
  readonly name: string;
  /** The standby tiers this runtime can park pods in. */
  readonly standbyTiers: readonly StandbyTier[];
  /** Parks a running pod in `tier` (one of `standbyTiers`). */
  park(podId: string, tier: StandbyTier): Promise<void>;
  /** Brings a parked pod back; resolves once it serves again. */
  resume(podId: string): Promise<void>;
  /**
   * Whether the pod's worker is paused now (by anyone: `docker pause` from
   * outside too), where the runtime can tell.
   */
  isPaused?(podId: string): Promise<boolean>;
  /**
   * How a parked pod's worker ended, when it did while parked (killed from
   * outside: its stopped init cannot reap it, nor tell its end); undefined
   * while it is there, or the pod is not parked with its process kept.
   */
  endedWhileParked?(podId: string): Promise<string | undefined>;
  /** Starts the pod and resolves once it answers its probe; rejects with the log tail. */
  start(spec: PodSpec): Promise<RunningPod>;
  /** Stops the pod: SIGTERM, then SIGKILL after `graceMs`. */
  stop(podId: string, graceMs?: number): Promise<void>;
  /** Whether this runtime can snapshot running pods and start pods from snapshots. */
  readonly snapshots?: boolean;
  /** Dumps a running pod into `dir`, leaving it running. */
  snapshot?(podId: string, dir: string): Promise<SnapshotTaken>;
  /** Why a pod of this spec cannot be snapshotted, or undefined when it can. */
  snapshotRefusal?(spec: { gpus: readonly unknown[] }): string | undefined;
  /**
   * Anonymous memory a running pod's processes take (bytes): what a dump of
   * it writes, roughly (the pages of files it maps are not dumped).
   */
  footprintBytes?(podId: string): Promise<number>;
  /** Starts a pod by restoring the snapshot in `dir`; resolves once it answers its probe. */
  restore?(spec: PodSpec, dir: string): Promise<RunningPod>;
  /** The last `lines` lines of the pod's output. */
  logs(podId: string, lines?: number): Promise<string>;
  /** Lets an adopted pod go without stopping it: not this agent's after all (`legacy`). */
  forget?(podId: string): void;
  /**
   * After an agent restart: takes over the workers this runtime can still
   * manage and removes the rest. Returns the adopted pods' ids and how many
   * were removed.
   */
  recover(): Promise<{ adopted: AdoptedPod[]; removed: number }>;
  /**
   * Removes workers an earlier removal could not (the engine did not
   * answer), so that none keeps running unowned until the agent restarts.
   * The agent calls it with every heartbeat.
   */
  sweep?(): Promise<void>;
}

/** A worker a restarted agent took over. */
export interface AdoptedPod {
  podId: string;
  endpoint: string;
  paused: boolean;
  /**
   * Marked as an earlier version marked workers, which another installation
   * on the same host may still do: the agent's own only if its store knows it.
   */
  legacy?: boolean;
}

/** A device list as `CUDA_VISIBLE_DEVICES` or `NVIDIA_VISIBLE_DEVICES` gives it; none: all. */
function deviceList(value: string | undefined): string[] | undefined {
  const v = value?.trim();
  if (!v || v === "all" || v === "none" || v === "void") return undefined;
  return v.split(",").map((d) => d.trim());
}

/**
 * How a process beside the agent names the GPU the agent's driver numbers
 * `index`: an agent started with `CUDA_VISIBLE_DEVICES` (say `2,3`) sees
 * only those, numbered from 0, and a worker, whose environment is its own,
 * must be given `2`, not `0`. For `host` (a container the host's engine
 * starts), also through the agent's own container's `NVIDIA_VISIBLE_DEVICES`.
 */
export function gpuId(
  index: number,
  host = false,
  env: Record<string, string | undefined> = Deno.env.toObject(),
): string {
  let id = deviceList(env.CUDA_VISIBLE_DEVICES)?.[index] ?? String(index);
  const outer = host ? deviceList(env.NVIDIA_VISIBLE_DEVICES) : undefined;
  if (outer && /^\d+$/.test(id)) id = outer[Number(id)] ?? id;
  return id;
}

/** The environment every worker gets from the platform, runtime-independent. */
export function platformEnv(spec: PodSpec): Record<string, string> {
  const devices = spec.gpus.map((g) => gpuId(g.index)).join(",");
  return {
    INFERX_POD_ID: spec.podId,
    INFERX_FUNCTION: spec.func,
    INFERX_FUNCTION_VERSION: String(spec.funcVersion),
    INFERX_CPU_MILLIS: String(spec.cpuMillis),
    INFERX_MEM_MB: String(spec.memMB),
    INFERX_VRAM_MB: String(spec.gpus[0]?.vramMB ?? 0),
    // Numbers as the node's discovery read them (libcuda.ts sets the order there).
    CUDA_DEVICE_ORDER: Deno.env.get("CUDA_DEVICE_ORDER") ?? "PCI_BUS_ID",
    CUDA_VISIBLE_DEVICES: devices,
    NVIDIA_VISIBLE_DEVICES: devices || "none",
  };
}

/**
 * The node could not give a pod what it needs before its worker ran (its
 * network, its control group): says nothing of a snapshot it was to be
 * restored from, which is kept.
 */
export class PodSetupFailed extends InferxError {
  constructor(message: string, cause: unknown) {
    super("worker_failed", message, { cause });
    this.name = "PodSetupFailed";
  }
}
