/**
 * Schedulability: whether any node of the cluster could ever hold one pod of
 * a function. The placement filters run against every node's capacity (as if
 * the node were empty and ready), not its free resources: a function that
 * fails them everywhere (GPU type absent, vRAM, CPU or memory beyond the
 * largest node) would wait out its queue timeout for nothing. Its lease
 * requests are refused at once with `unschedulable`, and the shell records
 * the decision as the function's `Schedulable` condition. A node that fits
 * joining clears it. A registered node that is not ready still counts (it
 * may come back); with no node at all the answer is `Unknown` and calls wait.
 *
 * Decided when a function's demand changes and when a node joins, leaves or
 * changes what it has; never on the lease path, which reads the last answer.
 *
 * @module
 */
import type { Ctx } from "./_accounting.ts";
import {
  DEFAULT_FILTERS,
  describeReasons,
  type Filter,
  gpuGroups,
  gpuTypeMatches,
  refreshGpuSummary,
} from "./placement.ts";
import type { CoreFunc, CoreNode, PodDemand, Schedulability } from "./types.ts";

/** Condition reasons for the placement filters' reason codes. */
export const REASONS: Readonly<Record<string, string>> = {
  insufficient_cpu: "InsufficientCPU",
  insufficient_memory: "InsufficientMemory",
  gpu_type_unavailable: "GPUTypeUnavailable",
  insufficient_vram: "InsufficientVRAM",
};

const FITS: Schedulability = {
  status: "True",
  reason: "Fits",
  message: "At least one node can hold a pod",
};
const NO_NODES: Schedulability = {
  status: "Unknown",
  reason: "NoNodes",
  message: "No node has registered yet: calls wait for one",
};

/** `node` as it would be with nothing placed on it, and ready. */
export function capacityView(node: CoreNode): CoreNode {
  const view: CoreNode = {
    ...node,
    ready: true,
    cpuUsed: 0,
    memUsedMB: 0,
    gpus: node.gpus.map((g) => ({ ...g, vramUsedMB: 0, contexts: 0 })),
  };
  refreshGpuSummary(view);
  return view;
}

/** Options for {@linkcode schedulability}. */
export interface SchedulabilityOptions {
  /** @default DEFAULT_FILTERS */
  filters?: readonly Filter[];
}

/**
 * Whether any of `nodes` could hold a pod with `demand` if it were empty.
 *
 * @example
 * ```ts
 * const s = schedulability(state.nodeList, { cpu: 500, memMB: 512, gpuType: "A100", gpuCount: 1, vramMB: 8000 });
 * if (s.status === "False") console.log(s.reason, s.message);
 * ```
 */
export function schedulability(
  nodes: readonly CoreNode[],
  demand: PodDemand,
  options: SchedulabilityOptions = {},
): Schedulability {
  if (nodes.length === 0) return NO_NODES;
  const filters = options.filters ?? DEFAULT_FILTERS;
  const fails = (node: CoreNode) => {
    for (const f of filters) {
      const r = f.filter(node, demand);
      if (r !== null) return r;
    }
    return null;
  };
  const reasons: Record<string, number> = {};
  for (const node of nodes) {
    // What fits in the free resources of a ready node fits its capacity too.
    const reason = fails(node) === null ? null : fails(capacityView(node));
    if (reason === null) return FITS;
    reasons[reason] = (reasons[reason] ?? 0) + 1;
  }
  const top = Object.entries(reasons).sort((a, b) => b[1] - a[1])[0][0];
  const details = Object.keys(reasons).map((r) => explain(r, nodes, demand));
  return {
    status: "False",
    reason: REASONS[top] ?? "Unschedulable",
    message: `No node could ever hold a pod: ${details.join("; ")} (${describeReasons(reasons)})`,
  };
}

/** What the demand asks beyond the cluster, for one reason code. */
function explain(reason: string, nodes: readonly CoreNode[], d: PodDemand): string {
  const max = (f: (n: CoreNode) => number) => Math.max(...nodes.map(f));
  const matching = (n: CoreNode) => n.gpus.filter((g) => gpuTypeMatches(g.type, d.gpuType));
  const gpus = (n: number) => `${n} GPU${n === 1 ? "" : "s"}`;
  switch (reason) {
    case "insufficient_cpu":
      return `${d.cpu} millicores of CPU wanted, the largest node has ${max((n) => n.cpuTotal)}`;
    case "insufficient_memory":
      return `${d.memMB} MB of memory wanted, the largest node has ${max((n) => n.memTotalMB)}`;
    case "gpu_type_unavailable": {
      const types = [...new Set(nodes.flatMap((n) => n.gpus.map((g) => g.type)))].sort();
      const kind = d.gpuType === "Any" && d.gpuCount > 1 ? "one type" : `type ${d.gpuType}`;
      return `${gpus(d.gpuCount)} of ${kind} wanted, no node has ${
        d.gpuCount === 1 ? "one" : "that many"
      } (GPU types in the cluster: ${types.join(", ") || "none"})`;
    }
    case "insufficient_vram": {
      const kind = d.gpuType === "Any" ? "" : `${d.gpuType} `;
      const wanted = `${d.vramMB} MB of vRAM per GPU wanted on ${gpus(d.gpuCount)} (plus the ` +
        `node's context overhead)`;
      if (d.gpuCount <= 1) {
        const largest = max((n) => Math.max(0, ...matching(n).map((g) => g.vramTotalMB)));
        return `${wanted}, the largest ${kind}GPU has ${largest} MB`;
      }
      // Placed as placement places them: that many GPUs of one type on one node.
      const best = max((n) =>
        Math.max(
          0,
          ...gpuGroups(n, d).filter((g) => g.length >= d.gpuCount).map((g) =>
            g.map((x) => x.vramTotalMB).sort((a, b) => b - a)[d.gpuCount - 1]
          ),
        )
      );
      return `${wanted}, the most any ${d.gpuCount} ${kind}GPUs of one type on a node have is ` +
        `${best} MB each`;
    }
    default:
      return reason;
  }
}

/** Whether two decisions would write the same condition. */
export function sameSchedulability(a: Schedulability | undefined, b: Schedulability): boolean {
  return !!a && a.status === b.status && a.reason === b.reason && a.message === b.message;
}

/**
 * Decides `f`'s schedulability again; when it changed, asks the shell to
 * record it (a first decision only when no node could hold it: the shell
 * clears a stale record itself), refuses the waiters of a function no node
 * could hold, and marks one that became schedulable as starved so
 * `retryStarved` gives it its `minReplica`.
 */
export function updateSchedulable(ctx: Ctx, f: CoreFunc): void {
  const s = schedulability(ctx.state.nodeList, f.demand);
  if (sameSchedulability(f.schedulable, s)) return;
  const was = f.schedulable?.status;
  f.schedulable = s;
  // The function's condition speaks of its newest version (an older one a split keeps has none).
  if ((was !== undefined || s.status === "False") && f.id === f.func) {
    ctx.actions.push({ type: "funcCondition", func: f.func, version: f.version, condition: s });
  }
  if (s.status === "False") {
    for (const w of f.waiters.splice(0)) refuse(ctx, f, w.reqId);
    ctx.state.starved.delete(f.id);
  } else if (was === "False") ctx.state.starved.add(f.id);
}

/**
 * Decides every function again: the nodes changed what they could ever
 * hold. When a node only joined (`grew`), functions some node could already
 * hold stay so and are skipped.
 */
export function updateAllSchedulable(ctx: Ctx, grew = false): void {
  for (const f of ctx.state.funcs.values()) {
    if (!grew || f.schedulable?.status !== "True") updateSchedulable(ctx, f);
  }
}

/**
 * Refuses lease `reqId` at once when no node could ever hold `f`; returns
 * whether it did.
 */
export function refuseUnschedulable(ctx: Ctx, f: CoreFunc, reqId: string): boolean {
  if (f.schedulable?.status !== "False") return false;
  refuse(ctx, f, reqId);
  return true;
}

function refuse(ctx: Ctx, f: CoreFunc, reqId: string) {
  ctx.actions.push({
    type: "leaseFailed",
    reqId,
    code: "unschedulable",
    message: `Cannot lease worker for ${f.id}: ${f.schedulable!.message}`,
  });
}

/** Whether a node report changes what the node could ever hold. */
export function capacityChanged(
  node: CoreNode,
  r: {
    cpuMillis: number;
    memMB: number;
    contextOverheadMB: number;
    gpus: { index: number; type: string; vramMB: number }[];
  },
): boolean {
  if (
    node.cpuTotal !== r.cpuMillis || node.memTotalMB !== r.memMB ||
    node.contextOverheadMB !== r.contextOverheadMB || node.gpus.length !== r.gpus.length
  ) return true;
  return r.gpus.some((g, i) =>
    node.gpus[i].index !== g.index || node.gpus[i].type !== g.type ||
    node.gpus[i].vramTotalMB !== g.vramMB
  );
}
