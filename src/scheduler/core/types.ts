/**
 * Types of the pure scheduler core: its state, the events it consumes and the
 * actions it emits. Nothing here does I/O or reads a clock.
 *
 * @module
 */
import type { GpuSlice, PodState, StandbyTier } from "../../model/cluster.ts";
import type { VersionLoad } from "../../model/versions.ts";

/** One GPU as the core accounts it. */
export interface CoreGpu {
  index: number;
  type: string;
  vramTotalMB: number;
  /** vRAM held by pods on this GPU, context overhead included. */
  vramUsedMB: number;
  /** Pods with a context on this GPU. */
  contexts: number;
}

/** One node as the core accounts it. */
export interface CoreNode {
  name: string;
  /** Reported ready by its agent, and heard from within `nodeTimeoutMs`. */
  ready: boolean;
  /** Time (ms) of the agent's last heartbeat, when known. */
  heartbeat?: number;
  cpuTotal: number;
  memTotalMB: number;
  cpuUsed: number;
  memUsedMB: number;
  gpus: CoreGpu[];
  /** vRAM (MB) every pod context costs beyond its slice. */
  contextOverheadMB: number;
  standbyTiers: StandbyTier[];
  /** Live pods placed on this node. */
  pods: Set<string>;
  /** Derived from `gpus` by `refreshGpuSummary()` after every change. */
  gpuSummary: GpuSummary;
}

/** Per-node GPU figures kept so filters and scores need not scan the GPUs. */
export interface GpuSummary {
  /** The one GPU type of the node, or null when types are mixed or there are none. */
  type: string | null;
  /** Free vRAM (MB) of each GPU, largest first. */
  freeDesc: number[];
  usedMB: number;
  totalMB: number;
}

/** What a function asks of a node for one pod. */
export interface PodDemand {
  cpu: number;
  memMB: number;
  gpuType: string;
  gpuCount: number;
  /** vRAM (MB) per GPU, overhead excluded. */
  vramMB: number;
}

/** The policy fields the core acts on. */
export interface CorePolicy {
  minReplica: number;
  maxReplica: number;
  standbyPerNode: number;
  /** Seconds an unleased pod above `minReplica` stays before termination. */
  scaleinTimeoutS: number;
  /**
   * The deepest standby tier the function wants; a node without it uses the
   * next cheaper one it has. @default "paused"
   */
  standbyTier?: StandbyTier;
  /** Order of this function's waiting leases among its tenant's (fairness.ts). @default "normal" */
  priority?: Priority;
  /** Scale out when a call has waited this long (ms) in a gateway's queue (autoscale.ts). */
  queueMs?: number;
  /** Scale out when the tokens a gateway's in-flight calls asked for exceed this per worker. */
  inflightTokens?: number;
}

/** Priorities of functions within their tenant, first served first. */
export type Priority = "high" | "normal" | "batch";

/** A lease request waiting for a pod. */
export interface Waiter {
  reqId: string;
  gateway: string;
  /** Time (ms) after which the request is answered with a timeout. */
  deadline: number;
  /** When it began to wait (ms), to serve a tenant's oldest first. */
  since: number;
}

/** What a gateway reports of one function version's calls (in its heartbeat). */
export interface GatewayLoad extends VersionLoad {
  /** The function (`tenant/namespace/name`). */
  func: string;
}

/** Whether some node could ever hold a pod, as a Kubernetes condition's fields. */
export interface Schedulability {
  status: "True" | "False" | "Unknown";
  /** CamelCase code: `Fits`, `NoNodes`, `InsufficientCPU`, `GPUTypeUnavailable`, ... */
  reason: string;
  /** What a person reads. */
  message: string;
}

/**
 * One version of a function that serves calls, as the core schedules it: the
 * newest version has the function's id; an older one a traffic split keeps
 * serving has `id@version`. Each has its own pods, idle pods and waiters.
 */
export interface CoreFunc {
  /** The function's id for its newest version, `{func}@{version}` for an older one. */
  id: string;
  /** The function (`tenant/namespace/name`). */
  func: string;
  version: number;
  demand: PodDemand;
  policy: CorePolicy;
  /** Live pods of this function, every version. */
  pods: Set<string>;
  /** Ready, unleased pods of the current version, least recently used first. */
  idle: Set<string>;
  /** Lease requests in arrival order. */
  waiters: Waiter[];
  /** Why the last placement failed, for the timeout message. */
  lastUnschedulable?: string;
  /**
   * It failed for want of room: the timeout also says whether its tenant's
   * own busy workers hold it (`heldInTenant`, weighed then, not at every try).
   */
  noNodeFits?: boolean;
  /** It waits for room being freed for it (pods evicted, or reclaimed from their gateways). */
  freeing?: boolean;
  /** Whether some node could ever hold a pod (`schedulable.ts`); unknown before the first decision. */
  schedulable?: Schedulability;
  /** Observed start-up time (ms, moving average); unknown until a pod started. */
  coldStartMs?: number;
  /** Observed restore time per tier (ms, moving average). */
  restoreMs: Partial<Record<StandbyTier, number>>;
  /** When (ms) a restore from each tier was last seen. */
  restoreSeenAt?: Partial<Record<StandbyTier, number>>;
  /** Nodes holding a snapshot of the current version. */
  snapshotNodes: Set<string>;
  /** Observed start time from a snapshot (ms, moving average). */
  snapshotStartMs?: number;
  /**
   * Its pods failed to start this many times in a row, a pod that failed
   * within `START_STABLE_MS` of coming up counted as one (a pod that serves
   * that long, from `upSince`, ends the run): no pod of it starts until
   * `until` (ms), the wait doubling with each failure (a crash loop's
   * back-off), and `message` says why.
   */
  startBackoff?: {
    failures: number;
    until: number;
    message: string;
    code: LeaseFailure;
    /** The last failed worker's last output (see the `leaseFailed` action). */
    output?: string;
    upSince?: number;
    /** The run began with a worker replaced at once (one crash is no loop): its waits come after. */
    freeFirst?: boolean;
    /**
     * The last failure was the platform's (`unavailable`: a store or an
     * engine out of reach), not a worker's: a short fixed wait, no run grown.
     */
    transient?: boolean;
  };
}

/** Core pod states: a subset of the stored pod states. */
export type CorePodState = "Creating" | "Ready" | "Standby" | "Resuming" | "Terminating";

/** Which of a pod's resources the node still spends on it. */
export interface Held {
  cpu: boolean;
  mem: boolean;
  vram: boolean;
  /**
   * Its GPU memory is (or is being) moved into its host memory, the
   * host-memory tier: charged as host memory too, with `mem`.
   */
  gpuInMem?: boolean;
}

/** One pod as the core accounts it: where it was placed, and its state. */
export interface CorePod extends PodPlacement {
  /** vRAM (MB) charged per GPU including the context overhead. */
  vramChargeMB: number;
  state: CorePodState;
  /** What the node still spends on it: all while running, less when parked. */
  held: Held;
  /** The standby tier while Standby or Resuming. */
  tier?: StandbyTier;
  /**
   * When it was asked to park (ms), while not yet reported parked: it holds
   * all it held until its agent says the park is done (a GPU checkpoint
   * takes seconds, and may fail and keep the memory), so nothing is placed
   * into what it still uses.
   */
  parkingSince?: number;
  endpoint?: string;
  /** Gateway holding the lease, when leased (the first of its lessees). */
  leasedBy?: string;
  /**
   * Other gateways sharing the lease: a function at `max_replica` shares its
   * workers between gateways rather than leave one waiting on another.
   */
  sharedWith?: string[];
  /** When the lease was last granted (ms). */
  leasedAt?: number;
  /** Last time (ms) the pod was returned or became ready. */
  lastUsed: number;
  /** When its start or resume began (ms), to learn how long those take. */
  since?: number;
  /**
   * When it came up from a start (ms; a resume keeps it): one that fails
   * soon after was no good start.
   */
  readyAt?: number;
  /**
   * Why its gateway was asked to give it back (fair share, or a lowered
   * `maxReplica`): it serves no new lease, and ends once given back.
   */
  reclaiming?: string;
  /** When (ms) a reclaim for fair share ends the pod though its gateway still holds it. */
  reclaimDeadline?: number;
  /**
   * Rebuilt Ready from its record after a restart: a gateway may hold it
   * unknown to this scheduler, so until a gateway's heartbeat claims it or
   * this time (ms) passes it is neither handed out, parked nor evicted.
   */
  unclaimedUntil?: number;
  /** The newest revision of its record seen: an older one (a re-list read before) is stale. */
  seenRevision?: number;
  /**
   * Resuming: the newest revision of its record seen when the resume was
   * decided. Its agent's Ready is a record newer than that (one read before
   * the park was written, delivered late, also lacks the tier).
   */
  resumeFrom?: number;
  /**
   * Resuming, its wait no restore time: decided while its park was still
   * under way, or rebuilt after a restart mid-resume.
   */
  resumeUntimed?: boolean;
}

/** Tunables of the core. */
export interface CoreConfig {
  /** A gateway silent for this long (ms) loses its leases. @default 10000 */
  gatewayTimeoutMs: number;
  /** A node whose last heartbeat is this old (ms) is not ready. @default 10000 */
  nodeTimeoutMs: number;
  /**
   * A lease older than this (ms) that a gateway's heartbeat no longer lists
   * is taken as returned (younger ones may still be on their way). @default 5000
   */
  leaseSettleMs: number;
  /**
   * How long (ms) a Ready pod rebuilt after a restart waits for a gateway to
   * claim it before it counts as unleased (gateways list their leases every
   * 2 s). @default 5000
   */
  recoveryGraceMs: number;
  /** Prefix of pod ids this scheduler instance mints. */
  podIdPrefix: string;
  /**
   * Share a full pool between tenants by weight (fairness.ts): waiting leases
   * served lowest share first, evictions and lease reclaims only from tenants
   * above theirs. @default true
   */
  fairShare: boolean;
  /**
   * How long (ms) a gateway may keep a worker reclaimed for another tenant's
   * fair share busy with its calls before the pod is ended all the same
   * (their callers get 503 `worker_failed`): a tenant controls how long its
   * calls last, so without it the tenant within its share would wait
   * without bound. @default 10000
   */
  reclaimGraceMs: number;
  /**
   * When a node's snapshot serves a new pod: `auto`, until both kinds of
   * start were seen, then when restores came up faster than fresh starts;
   * `always`, whenever there is one.
   * @default "auto"
   */
  snapshotStart: "auto" | "always";
}

/** The whole state of the core. The core owns it: `step` updates it in place. */
export interface CoreState {
  config: CoreConfig;
  nodes: Map<string, CoreNode>;
  /** Nodes in a stable order, for placement scans. */
  nodeList: CoreNode[];
  /** Serving versions by id (see {@linkcode CoreFunc}). */
  funcs: Map<string, CoreFunc>;
  /** The serving versions of each function, newest first. */
  units: Map<string, CoreFunc[]>;
  pods: Map<string, CorePod>;
  /** Gateway id to its last heartbeat (ms). */
  gateways: Map<string, number>;
  /** Functions with waiters that could not be placed. */
  starved: Set<string>;
  /** Limits of tenants that have any. */
  quotas: Map<string, TenantLimits>;
  /** Weights of tenants whose weight is not 1. */
  weights: Map<string, number>;
  podSeq: number;
  /**
   * Nodes' silence counts from no earlier than this (ms): the end of the
   * last time every node was silent at once.
   */
  heardFrom?: number;
  /**
   * Every node with a known heartbeat was silent when last judged (a tick);
   * undefined before the first judgement (nodes listed at a start are judged
   * together, not one by one as they come).
   */
  allSilent?: boolean;
}

/** What a tenant may hold at once; undefined: unlimited. */
export interface TenantLimits {
  /** GPUs held by its pods (parked ones that keep their vRAM included). */
  maxGpu?: number;
  /** Pods that run or are about to (parked ones not counted). */
  maxReplica?: number;
}

/** A node as reported by its agent. */
export interface NodeReport {
  name: string;
  ready: boolean;
  /**
   * Time (ms) of the agent's last heartbeat: the node stops being ready once
   * it is `nodeTimeoutMs` old. Without it the node never goes stale.
   */
  heartbeat?: number;
  cpuMillis: number;
  memMB: number;
  gpus: { index: number; type: string; vramMB: number }[];
  contextOverheadMB: number;
  standbyTiers: StandbyTier[];
}

/** A function definition as the core needs it. */
export interface FuncReport {
  id: string;
  /** The newest version. */
  version: number;
  demand: PodDemand;
  policy: CorePolicy;
  /**
   * Older versions that keep serving a share of calls (a traffic split),
   * with what their pods need; pods of versions not named drain.
   */
  older?: { version: number; demand: PodDemand }[];
  /**
   * The split gives the newest version no share of calls (`traffic` leaves it
   * out): it keeps no pods for `min_replica` (a lease for it still starts one).
   */
  newestTakesNone?: boolean;
}

/**
 * A pod as its record in the store says: what the scheduler asked for and
 * what the node agent reported. Rebuilds the view after a restart, and tells
 * the core of reports and of its own writes that were lost.
 */
export interface PodRecord extends PodPlacement {
  /** What the scheduler asked for. */
  desired: "Running" | "Standby" | "Terminated";
  /** What the node agent reported. */
  state: PodState;
  tier?: StandbyTier;
  endpoint?: string;
  /** Why it failed, when it did. */
  error?: string;
  /** `unavailable`: its node could not start it (its engine out of reach), not the worker failed. */
  failCode?: "unavailable";
  /** How a Ready pod started: restored from its node's snapshot, or fresh. */
  startedFrom?: "fresh" | "snapshot";
  /** Time (ms) its node spent taking a snapshot before reporting it Ready. */
  snapshotMs?: number;
  /** The store's revision of the record (per key, rising). */
  revision?: number;
  /** A resume's time as its node measured it; null: the record has none (not learned). */
  resumeMs?: number | null;
}

/** Inputs of the core. */
export type CoreEvent =
  | {
    type: "lease";
    reqId: string;
    func: string;
    gateway: string;
    deadline: number;
    /** The version the gateway routes this call to; absent or not serving: the newest. */
    version?: number;
  }
  | { type: "cancelLease"; reqId: string; func: string }
  | { type: "return"; podId: string; gateway: string; failed?: boolean }
  | {
    type: "podStatus";
    podId: string;
    /** Ready also ends a resume; Standby confirms a park. */
    state: "Ready" | "Standby" | "Failed" | "Terminated";
    endpoint?: string;
    error?: string;
    /**
     * `unavailable`: the pod never reached a node because the store refused
     * its record (out of space, unreachable), or its node could not start it
     * (`fromNode`: its engine out of reach); the calls waiting are told so
     * rather than that a worker failed, and no crash loop's back-off grows.
     */
    code?: "unavailable";
    /** The failure is its node's report (see `code`), not the store's refusal. */
    fromNode?: boolean;
    /** How a Ready pod started: restored from its node's snapshot, or fresh. */
    startedFrom?: "fresh" | "snapshot";
    /** Time (ms) its node spent taking a snapshot before reporting it Ready. */
    snapshotMs?: number;
  }
  /**
   * The store refused the write that resumes a parked pod (out of space,
   * unreachable): the pod is still parked, and the calls waiting are told so.
   */
  | { type: "resumeRefused"; podId: string; error: string }
  | { type: "podRecord"; pod: PodRecord }
  | { type: "nodeUpdate"; node: NodeReport }
  | { type: "nodeRemove"; name: string }
  | { type: "funcUpdate"; func: FuncReport }
  | { type: "funcRemove"; id: string }
  | { type: "tenantQuota"; tenant: string; limits: TenantLimits }
  | { type: "tenantWeight"; tenant: string; weight: number }
  | {
    type: "gatewayHeartbeat";
    gateway: string;
    /** The pods the gateway holds, when it says (level-triggered lease sync). */
    leases?: string[];
    /** The load of each function version it serves, when it says. */
    load?: GatewayLoad[];
  }
  | { type: "killPod"; podId: string }
  | {
    type: "snapshot";
    func: string;
    version: number;
    node: string;
    /** Whether the node holds a restorable snapshot (false: it is gone). */
    ready: boolean;
  }
  /** Every node of the store has been listed (at a start): they are judged together. */
  | { type: "nodesListed" }
  | { type: "tick" };

/** A pod the shell must create. */
export interface PodPlacement {
  id: string;
  func: string;
  version: number;
  node: string;
  cpu: number;
  memMB: number;
  gpus: GpuSlice[];
  /** Start by restoring the node's snapshot of this version. */
  fromSnapshot?: boolean;
}

/** Outputs of the core, carried out by the shell. */
export type CoreAction =
  | { type: "createPod"; pod: PodPlacement }
  | {
    type: "terminatePod";
    podId: string;
    reason: string;
    /** No node agent will act on it (its node is unknown): its record is deleted instead. */
    orphan?: boolean;
  }
  | { type: "parkPod"; podId: string; tier: StandbyTier }
  | { type: "resumePod"; podId: string; tier: StandbyTier }
  | {
    type: "leaseGranted";
    reqId: string;
    /** The gateway that asked. */
    gateway: string;
    podId: string;
    endpoint: string;
    coldStart: boolean;
    /** The pod came back from a standby tier for this lease. */
    resumed: boolean;
    version: number;
  }
  | {
    type: "leaseFailed";
    reqId: string;
    code: LeaseFailure;
    message: string;
    /** When a new try may succeed (s): a crash loop's back-off. */
    retryAfterS?: number;
    /** A crash loop's failed starts in a row, with `retryAfterS`. */
    failures?: number;
    /**
     * The failed worker's last output, apart from `message`: the gateway shows
     * it only to callers who may read its pods' logs.
     */
    output?: string;
    /** The tenant quota that refused it (`quota_exceeded`): its name and value. */
    quota?: { limit: string; quota: number };
  }
  /**
   * Ask `gateway` to give `podId` back once its calls are done (fair share);
   * `repeat`: asked again in the answer to a heartbeat, not newly decided.
   */
  | { type: "reclaimLease"; gateway: string; podId: string; reason: string; repeat?: boolean }
  /** Advise `gateway` to lease `workers` more workers of a function version. */
  | { type: "scaleOut"; gateway: string; func: string; version: number; workers: number }
  | {
    /** Record whether some node could ever hold a pod of `func` (its `Schedulable` condition). */
    type: "funcCondition";
    func: string;
    /** The function version the decision was made for. */
    version: number;
    condition: Schedulability;
  };

/** Why a lease was refused. */
export type LeaseFailure =
  | "timeout"
  | "worker_failed"
  | "unavailable"
  | "not_found"
  | "unschedulable"
  | "quota_exceeded";
