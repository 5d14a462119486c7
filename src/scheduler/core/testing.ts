/**
 * Builders for core tests, the benchmark and the simulator: nodes, functions
 * and a driver that applies events and collects actions.
 *
 * @module
 */
import { refreshGpuSummary } from "./placement.ts";
import { newCoreState, step } from "./step.ts";
import type { StandbyTier } from "../../model/cluster.ts";
import type {
  CoreAction,
  CoreEvent,
  CoreNode,
  CorePolicy,
  CoreState,
  FuncReport,
  NodeReport,
  PodDemand,
  PodPlacement,
  PodRecord,
} from "./types.ts";

/** A node report with `gpus` GPUs of `vramMB` each. */
export function nodeReport(
  name: string,
  options: Partial<NodeReport> & { gpuCount?: number; vramMB?: number; gpuType?: string } = {},
): NodeReport {
  const gpuCount = options.gpuCount ?? 0;
  return {
    name,
    ready: options.ready ?? true,
    heartbeat: options.heartbeat,
    cpuMillis: options.cpuMillis ?? 16_000,
    memMB: options.memMB ?? 65_536,
    gpus: options.gpus ??
      Array.from({ length: gpuCount }, (_, index) => ({
        index,
        type: options.gpuType ?? "H100",
        vramMB: options.vramMB ?? 80_000,
      })),
    contextOverheadMB: options.contextOverheadMB ?? 0,
    standbyTiers: options.standbyTiers ?? [],
  };
}

/** A pod demand: one core, 1 GB, no GPU, unless `d` says otherwise. */
export function podDemand(d: Partial<PodDemand> = {}): PodDemand {
  return { cpu: 1000, memMB: 1024, gpuType: "Any", gpuCount: 0, vramMB: 0, ...d };
}

/** A function report with sensible test defaults. */
export function funcReport(
  id: string,
  demand: Partial<PodDemand> = {},
  policy: Partial<CorePolicy> = {},
  version = 1,
): FuncReport {
  return {
    id,
    version,
    demand: podDemand(demand),
    policy: { minReplica: 0, maxReplica: 1, standbyPerNode: 1, scaleinTimeoutS: 1, ...policy },
  };
}

/** A fake node as the core keeps it, for plugin tests. */
export function coreNode(options: Partial<CoreNode> = {}): CoreNode {
  const node: CoreNode = {
    name: "n1",
    ready: true,
    cpuTotal: 8000,
    memTotalMB: 32_768,
    cpuUsed: 0,
    memUsedMB: 0,
    gpus: [],
    contextOverheadMB: 0,
    standbyTiers: [],
    pods: new Set(),
    gpuSummary: { type: null, freeDesc: [], usedMB: 0, totalMB: 0 },
    ...options,
  };
  refreshGpuSummary(node);
  return node;
}

/**
 * Drives a core state: `run()` applies events at the current `now`. Its
 * agents park pods at once (each `parkPod` is answered with the pod's
 * Standby report, whose actions come after it) unless `confirmParks` is off.
 */
export class CoreDriver {
  state: CoreState;
  now = 0;
  confirmParks = true;
  constructor(podIdPrefix = "p") {
    this.state = newCoreState({ podIdPrefix });
  }
  /** Applies events in order and returns every action they produced. */
  run(...events: CoreEvent[]): CoreAction[] {
    const out: CoreAction[] = [];
    for (const e of events) {
      const acts = step(this.state, e, this.now).actions;
      out.push(...acts);
      for (const a of acts) {
        if (a.type === "parkPod" && this.confirmParks) {
          out.push(...this.run({ type: "podStatus", podId: a.podId, state: "Standby" }));
        }
      }
    }
    return out;
  }

  /**
   * Gives leased pod `podId` of `func` back and keeps it idle (a replica),
   * as a scale-in timeout not yet run out would: `minReplica` held at 1 for
   * the return only.
   */
  returnKeptIdle(func: string, podId: string, gateway = "g1"): void {
    const policy = this.state.funcs.get(func)!.policy;
    const min = policy.minReplica;
    policy.minReplica = 1;
    this.run({ type: "return", podId, gateway });
    policy.minReplica = min;
  }
}

/** The kinds of `acts`, in order. */
export const kinds = (acts: CoreAction[]): CoreAction["type"][] => acts.map((a) => a.type);

/** The pods `acts` create. */
export const created = (acts: CoreAction[]): PodPlacement[] =>
  acts.flatMap((a) => (a.type === "createPod" ? [a.pod] : []));

/** A lease event. */
export const lease = (reqId: string, func = "t/n/f", gateway = "g1", deadline = 30_000): {
  type: "lease";
  reqId: string;
  func: string;
  gateway: string;
  deadline: number;
} => ({ type: "lease", reqId, func, gateway, deadline });

/** A node with one GPU of `vramMB` offering `tiers`. */
export const gpuNode = (name: string, tiers: StandbyTier[], vramMB = 80_000): NodeReport =>
  nodeReport(name, { gpuCount: 1, vramMB, standbyTiers: tiers });

/** A one-GPU, 30 GB function that wants standby `tier`. */
export const gpuFunc = (
  id: string,
  tier: StandbyTier,
  policy: Record<string, number> = {},
): FuncReport => funcReport(id, { gpuCount: 1, vramMB: 30_000 }, { standbyTier: tier, ...policy });

/**
 * The record of pod `id` (of function `t/n/{id}` unless `func` says) on
 * `node`, holding `vramMB` on GPU `index` (0): Ready, or parked in `tier`.
 */
export function gpuPodRecord(
  id: string,
  node: string,
  vramMB: number,
  options: { func?: string; index?: number; tier?: StandbyTier } = {},
): PodRecord {
  const parked = options.tier !== undefined;
  return {
    id,
    func: options.func ?? `t/n/${id}`,
    version: 1,
    node,
    cpu: 1000,
    memMB: 1024,
    gpus: [{ index: options.index ?? 0, vramMB }],
    desired: parked ? "Standby" : "Running",
    state: parked ? "Standby" : "Ready",
    endpoint: id,
    ...(parked ? { tier: options.tier } : {}),
  };
}
