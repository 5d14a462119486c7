/**
 * Cluster objects written by the platform itself: nodes (by node agents) and
 * pods (desired state by the scheduler, status by node agents).
 *
 * @module
 */
import { z } from "zod";
import { isValidName } from "./keys.ts";

/** Pod states (DESIGN.md "Pod states"). */
export const POD_STATES = [
  "Init",
  "Creating",
  "Ready",
  "Standby",
  "Resuming",
  "Terminating",
  "Terminated",
  "Failed",
] as const;
/** One of {@linkcode POD_STATES}. */
export type PodState = typeof POD_STATES[number];

/** Standby tiers a node may support. */
export const STANDBY_TIERS = ["paused", "host_memory", "file"] as const;
/** One of {@linkcode STANDBY_TIERS}. */
export type StandbyTier = typeof STANDBY_TIERS[number];

/** One GPU of a node. */
export const GpuSchema = z.object({
  index: z.int().min(0),
  type: z.string().min(1),
  vramMB: z.int().min(1),
  uuid: z.string().optional(),
});
/** One GPU of a node. */
export type Gpu = z.infer<typeof GpuSchema>;

/**
 * A node's name: a host name's letters, digits, `.`, `_` and `-`, 1 to 253
 * characters, starting and ending with a letter or digit (it is one segment
 * of its key in the store, and part of its workers' scope).
 */
export const NODE_NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;
/** What a node name must be, for errors. */
export const NODE_NAME_RULE =
  "is not a node name (letters, digits, '.', '_' and '-', starting and ending with a letter or digit, at most 253)";

/**
 * A node as its agent registers it. Its name is checked against
 * {@linkcode NODE_NAME_RE} where it is written (the configuration, the state
 * service), not where it is read: a node an earlier release registered under
 * another name still lists.
 */
export const NodeInfoSchema = z.object({
  name: z.string().min(1),
  /** Host the node's workers are reached on (127.0.0.1 for a single host). */
  address: z.string().min(1),
  cpuMillis: z.int().min(1),
  memMB: z.int().min(1),
  gpus: z.array(GpuSchema).default([]),
  /** vRAM (MB) each CUDA context costs beyond the pod's slice. */
  contextOverheadMB: z.int().min(0).default(0),
  standbyTiers: z.array(z.enum(STANDBY_TIERS)).default([]),
  runtime: z.string().default("process"),
  /** `host:port` of the agent's `NodeAgentService`, when it serves one. */
  agentAddr: z.string().optional(),
  /** What the CUDA driver offers here, or why it is absent. */
  gpuDriver: z.object({
    available: z.boolean(),
    reason: z.string().optional(),
    driverVersion: z.int().optional(),
    checkpointApi: z.boolean().optional(),
  }).optional(),
  /** Whether CRIU can checkpoint processes here, which one, or why not. */
  criu: z.object({
    available: z.boolean(),
    reason: z.string().optional(),
    version: z.string().optional(),
    /** The criu executable. */
    path: z.string().optional(),
    /** Where it was found: `INFERX_CRIU`, `provisioned` (`deno task criu`), `system`. */
    source: z.string().optional(),
    /**
     * CRIU's kernel cache (`/run/criu.kdat`): `tmpfs` (CRIU keeps it),
     * `seeded` (the agent made it: `/run` is not a tmpfs) or `off` (every
     * dump and restore probes the kernel first; `kernelCacheReason` says why).
     */
    kernelCache: z.string().optional(),
    kernelCacheReason: z.string().optional(),
  }).optional(),
  /**
   * Whether moving a process into a pod's control group, at every start of a
   * pod of the process runtime, waits for the kernel's RCU grace period:
   * `node` (a cgroup hierarchy of the node's is mounted with
   * `favordynmods`) and `mounted` (the agent's is) say it does not; `off`
   * that it does, `reason` why (`src/nodeagent/favor_dynmods.ts`).
   */
  favorDynmods: z.object({
    state: z.string(),
    reason: z.string().optional(),
    mountPoint: z.string().optional(),
  }).optional(),
  /**
   * Whether pods start from snapshots here, or why not; the snapshots this
   * node holds and the disk they take.
   */
  snapshots: z.object({
    available: z.boolean(),
    reason: z.string().optional(),
    /** `INFERX_SNAPSHOT_DISK_MB`. */
    diskBudgetMB: z.number().optional(),
    /**
     * The kernel's transparent huge page mode (`always`, `madvise`,
     * `never`): restores fill memory in huge pages only under `always`.
     */
    hugePages: z.string().optional(),
    diskUsedMB: z.number().optional(),
    items: z.array(z.object({
      func: z.string(),
      version: z.int(),
      state: z.string(),
      sizeMB: z.number().optional(),
      /** How long its dump took (ms). */
      dumpMs: z.number().optional(),
      lastUsedAt: z.number().optional(),
      /** Why it failed (CRIU's reason). */
      error: z.string().optional(),
    })).default([]),
  }).optional(),
  ready: z.boolean().default(true),
  /** Milliseconds since the epoch of the last heartbeat. */
  heartbeat: z.number().default(0),
});
/** A node as its agent registers it. */
export type NodeInfo = z.infer<typeof NodeInfoSchema>;

/** GPUs assigned to a pod: index on the node and vRAM slice in MB. */
export const GpuSliceSchema = z.object({ index: z.int().min(0), vramMB: z.int().min(0) });
/** GPUs assigned to a pod. */
export type GpuSlice = z.infer<typeof GpuSliceSchema>;

/** What a node agent needs to start a pod: a snapshot of its function's spec. */
export const PodTemplateSchema = z.object({
  image: z.string(),
  commands: z.array(z.string()),
  envs: z.array(z.tuple([z.string(), z.string()])),
  mounts: z.array(z.object({ hostpath: z.string(), mountpath: z.string(), readonly: z.boolean() })),
  port: z.int().min(1).max(65535),
  probe: z.string(),
  startupTimeoutS: z.number().positive(),
  /** The function's `sample_query` as a request: sent once before a snapshot is taken. */
  sampleQuery: z.object({ path: z.string(), body: z.unknown().optional() }).optional(),
  /** `endpoint.restore_hook`: POSTed to once a copy is restored from a snapshot. */
  restoreHook: z.string().optional(),
});
/** What a node agent needs to start a pod. */
export type PodTemplate = z.infer<typeof PodTemplateSchema>;

/**
 * What joins how a worker ended (or failed to start) to the last lines it
 * printed, in the reasons runtimes give: output a worker's readers may see
 * (its pods' logs), which may hold what it printed of its environment.
 */
export const OUTPUT_TAIL = "; last output:\n";

/**
 * `why` a worker ended or failed, with `output`, its last lines, after
 * {@linkcode OUTPUT_TAIL}: in plain text, the terminal's escape sequences
 * (colours, cursor moves) taken out, since a person reads it in an error
 * message, the audit or the dashboard.
 */
export function withOutput(why: string, output: string): string {
  return `${why}${OUTPUT_TAIL}${plainText(output)}`;
}

/** `text` without ANSI escape sequences: CSI (`ESC [ ... m`), OSC (`ESC ] ... BEL`) and the rest. */
export function plainText(text: string): string {
  return text.includes("\x1b")
    // deno-lint-ignore no-control-regex
    ? text.replace(/\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])/g, "")
    : text;
}

/** A runtime's reason split into what happened and the worker's last output (when it has one). */
export function splitOutput(reason: string): { text: string; output?: string } {
  const i = reason.indexOf(OUTPUT_TAIL);
  return i < 0
    ? { text: reason }
    : { text: reason.slice(0, i), output: reason.slice(i + OUTPUT_TAIL.length) };
}

/** A pod: desired state from the scheduler, status from the node agent. */
export const PodInfoSchema = z.object({
  /** A name (lower case, digits, `.-_`): its node agent makes files and directories of it. */
  id: z.string().refine(isValidName, "a pod id is a name: a-z, 0-9, '.', '-', '_'"),
  tenant: z.string(),
  namespace: z.string(),
  func: z.string(),
  funcVersion: z.int().min(0),
  node: z.string(),
  cpuMillis: z.int().min(0),
  memMB: z.int().min(0),
  gpus: z.array(GpuSliceSchema).default([]),
  template: PodTemplateSchema,
  /** Desired: whether the pod should run. Written by the scheduler only. */
  desired: z.enum(["Running", "Standby", "Terminated"]),
  /** Observed state. Written by the node agent (the scheduler writes `Creating` first). */
  state: z.enum(POD_STATES),
  /** `host:port` the worker answers on, once Ready. */
  endpoint: z.string().optional(),
  /** The tier it is parked in, while Standby. */
  standbyTier: z.enum(STANDBY_TIERS).optional(),
  /** Why the pod failed, with the tail of its output. */
  error: z.string().optional(),
  /**
   * Observed: `unavailable` when what failed was the node's means to start
   * it (its Docker engine out of reach), not the worker: no crash loop.
   */
  failCode: z.enum(["unavailable"]).optional(),
  createdAt: z.number(),
  readyAt: z.number().optional(),
  /** Desired: start by restoring its node's snapshot of this function version. */
  fromSnapshot: z.boolean().optional(),
  /** Observed: how it started (`snapshot` only when a restore served). */
  startedFrom: z.enum(["fresh", "snapshot"]).optional(),
  /** What the node noticed while starting it: a snapshot that failed, one not taken, and why. */
  note: z.string().optional(),
  /** Observed: time (ms) its node spent warming and snapshotting it before reporting it Ready. */
  snapshotMs: z.number().min(0).optional(),
  /** Observed: time (ms) its node took to resume it, in the Ready that ended that resume. */
  resumeMs: z.number().min(0).optional(),
});
/** A pod: desired state from the scheduler, status from the node agent. */
export type PodInfo = z.infer<typeof PodInfoSchema>;

/**
 * A function's `sample_query` as the request a node sends a fresh worker
 * before snapshotting it: `path` (with or without a leading slash) and a
 * JSON `body` (POST), or `prompt` alone (an OpenAI completion).
 */
export function sampleRequest(
  q: Record<string, unknown> | undefined,
): PodTemplate["sampleQuery"] {
  if (!q) return undefined;
  const path = typeof q.path === "string" ? q.path : "v1/completions";
  const body = q.body ?? (q.prompt !== undefined ? { prompt: q.prompt, max_tokens: 8 } : undefined);
  return { path: path.startsWith("/") ? path : `/${path}`, body };
}

/** Encodes a node for the store. */
export function encodeNode(n: NodeInfo): string {
  return JSON.stringify(n);
}

/** Decodes a node from the store. */
export function decodeNode(value: string): NodeInfo {
  return NodeInfoSchema.parse(JSON.parse(value));
}

/** Encodes a pod for the store. */
export function encodePod(p: PodInfo): string {
  return JSON.stringify(p);
}

/** Decodes a pod from the store. */
export function decodePod(value: string): PodInfo {
  return PodInfoSchema.parse(JSON.parse(value));
}
