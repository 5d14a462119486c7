/**
 * Placement as small plugins: each `Filter` says whether a pod fits on a
 * node (with a reason code when it does not), each `Score` rates a fitting
 * node from 0 to 100. `place()` runs them over the nodes. What to evict when
 * nothing fits is decided apart, in `eviction.ts`, as kube-scheduler keeps
 * preemption apart from its filter and score plugins.
 *
 * @module
 */
import type { GpuSlice } from "../../model/cluster.ts";
import type { CoreGpu, CoreNode, PodDemand } from "./types.ts";

/** Says whether a pod with `demand` fits `node`: null, or a reason code. */
export interface Filter {
  name: string;
  filter(node: CoreNode, demand: PodDemand): string | null;
}

/** Rates a fitting node from 0 (worst) to 100 (best). */
export interface Score {
  name: string;
  weight: number;
  score(node: CoreNode, demand: PodDemand): number;
}

/** Whether a GPU's type satisfies the demand ("Any" matches every GPU). */
export function gpuTypeMatches(gpuType: string, wanted: string): boolean {
  return wanted === "Any" || wanted === "" || gpuType === wanted;
}

/** vRAM (MB) a pod costs on each of its GPUs: its slice plus the context overhead. */
export function vramCharge(node: CoreNode, demand: PodDemand): number {
  return demand.gpuCount === 0 ? 0 : demand.vramMB + node.contextOverheadMB;
}

/** Recomputes `node.gpuSummary`; call after changing any GPU's figures. */
export function refreshGpuSummary(node: CoreNode): void {
  let type: string | null = node.gpus.length ? node.gpus[0].type : null;
  let used = 0;
  let total = 0;
  const free: number[] = [];
  for (const g of node.gpus) {
    if (g.type !== type) type = null;
    used += g.vramUsedMB;
    total += g.vramTotalMB;
    free.push(g.vramTotalMB - g.vramUsedMB);
  }
  free.sort((a, b) => b - a);
  node.gpuSummary = { type, freeDesc: free, usedMB: used, totalMB: total };
}

/** Whether the summary answers for this demand (every GPU matches the type). */
function summaryApplies(node: CoreNode, d: PodDemand): boolean {
  const t = node.gpuSummary.type;
  return t !== null && gpuTypeMatches(t, d.gpuType);
}

/**
 * The node's GPUs a pod may take together: those of the type it names, or,
 * for a pod of several GPUs of any type, those of one type (a tensor-parallel
 * worker on unlike GPUs runs at the slowest's pace, or not at all) — one
 * group per type then.
 */
export function gpuGroups(node: CoreNode, d: PodDemand): CoreGpu[][] {
  const matching = node.gpus.filter((g) => gpuTypeMatches(g.type, d.gpuType));
  if (d.gpuCount <= 1 || (d.gpuType !== "Any" && d.gpuType !== "")) return [matching];
  const byType = new Map<string, CoreGpu[]>();
  for (const g of matching) byType.set(g.type, [...byType.get(g.type) ?? [], g]);
  return [...byType.values()];
}

/** Filter: the node is ready. */
export function nodeReady(node: CoreNode): string | null {
  return node.ready ? null : "node_not_ready";
}

/** Filter: free CPU and memory cover the demand. */
export function cpuMemFit(node: CoreNode, d: PodDemand): string | null {
  if (node.cpuTotal - node.cpuUsed < d.cpu) return "insufficient_cpu";
  if (node.memTotalMB - node.memUsedMB < d.memMB) return "insufficient_memory";
  return null;
}

/** Filter: the node has enough GPUs of the wanted type, free or not. */
export function gpuTypeFit(node: CoreNode, d: PodDemand): string | null {
  if (d.gpuCount === 0) return null;
  if (summaryApplies(node, d)) {
    return node.gpus.length >= d.gpuCount ? null : "gpu_type_unavailable";
  }
  return gpuGroups(node, d).some((g) => g.length >= d.gpuCount) ? null : "gpu_type_unavailable";
}

/** Filter: enough GPUs of the wanted type have the slice plus overhead free. */
export function vramFit(node: CoreNode, d: PodDemand): string | null {
  if (d.gpuCount === 0) return null;
  const need = vramCharge(node, d);
  if (summaryApplies(node, d)) {
    const free = node.gpuSummary.freeDesc;
    return free.length >= d.gpuCount && free[d.gpuCount - 1] >= need ? null : "insufficient_vram";
  }
  const fit = (group: CoreGpu[]) =>
    group.filter((g) => g.vramTotalMB - g.vramUsedMB >= need).length >= d.gpuCount;
  return gpuGroups(node, d).some(fit) ? null : "insufficient_vram";
}

/** Score: prefer the fullest node after placement (bin-packing). */
export function binPack(node: CoreNode, d: PodDemand): number {
  if (d.gpuCount > 0) {
    let used = node.gpuSummary.usedMB;
    let total = node.gpuSummary.totalMB;
    if (!summaryApplies(node, d)) {
      used = total = 0;
      for (const g of node.gpus) {
        if (!gpuTypeMatches(g.type, d.gpuType)) continue;
        used += g.vramUsedMB;
        total += g.vramTotalMB;
      }
    }
    return total === 0
      ? 0
      : Math.min(100, (100 * (used + vramCharge(node, d) * d.gpuCount)) / total);
  }
  const cpu = (node.cpuUsed + d.cpu) / node.cpuTotal;
  const mem = (node.memUsedMB + d.memMB) / node.memTotalMB;
  return Math.min(100, 50 * (cpu + mem));
}

/**
 * Score: prefer the node whose GPUs the pod would fill most (the GPUs
 * {@linkcode pickGpus} would give it there), so that a partly used GPU that
 * fits is used before an empty one is opened elsewhere: the whole node's fill
 * alone (BinPack) opened empty GPUs a later whole-GPU pod needed.
 */
export function gpuFit(node: CoreNode, d: PodDemand): number {
  if (d.gpuCount === 0) return 0;
  const charge0 = vramCharge(node, d);
  const size = node.gpus[0]?.vramTotalMB;
  if (summaryApplies(node, d) && node.gpus.every((g) => g.vramTotalMB === size)) {
    // One type and size: the free vRAM of each GPU, largest first, is all it takes.
    const free = node.gpuSummary.freeDesc;
    let last = -1;
    for (let i = 0; i < free.length && free[i] >= charge0; i++) last = i;
    if (last + 1 < d.gpuCount) return 0;
    const per = size;
    let used = 0;
    for (let i = last - d.gpuCount + 1; i <= last; i++) used += per - free[i] + charge0;
    return Math.min(100, (100 * used) / (per * d.gpuCount));
  }
  const slices = pickGpus(node, d);
  if (!slices?.length) return 0;
  const charge = vramCharge(node, d);
  let fill = 0;
  for (const s of slices) {
    const g = node.gpus.find((g) => g.index === s.index)!;
    fill += (g.vramUsedMB + charge) / g.vramTotalMB;
  }
  return Math.min(100, (100 * fill) / slices.length);
}

/** Score: prefer nodes without GPUs for pods that need none, keeping GPU nodes free. */
export function gpuAvoidance(node: CoreNode, d: PodDemand): number {
  return d.gpuCount === 0 && node.gpus.length > 0 ? 0 : 100;
}

/** The default filters, cheapest first. */
export const DEFAULT_FILTERS: readonly Filter[] = [
  { name: "NodeReady", filter: nodeReady },
  { name: "CpuMemFit", filter: cpuMemFit },
  { name: "GpuTypeFit", filter: gpuTypeFit },
  { name: "VramFit", filter: vramFit },
];

/** The default scores. */
export const DEFAULT_SCORES: readonly Score[] = [
  { name: "BinPack", weight: 2, score: binPack },
  { name: "GpuFit", weight: 2, score: gpuFit },
  { name: "GpuAvoidance", weight: 1, score: gpuAvoidance },
];

/**
 * Chooses `count` GPUs for a pod on `node`: best fit (least free vRAM that
 * still holds the charge), ties by index. Returns undefined if they do not fit.
 */
export function pickGpus(node: CoreNode, d: PodDemand): GpuSlice[] | undefined {
  if (d.gpuCount === 0) return [];
  const need = vramCharge(node, d);
  const free = (g: CoreGpu) => g.vramTotalMB - g.vramUsedMB;
  let best: CoreGpu[] | undefined;
  let bestFree = Infinity;
  for (const group of gpuGroups(node, d)) {
    const fits = group.filter((g) => free(g) >= need);
    if (fits.length < d.gpuCount) continue;
    fits.sort((a, b) => free(a) - free(b) || a.index - b.index);
    const chosen = fits.slice(0, d.gpuCount);
    const left = chosen.reduce((n, g) => n + free(g), 0);
    if (left < bestFree) (best = chosen, bestFree = left);
  }
  return best?.map((g) => ({ index: g.index, vramMB: d.vramMB })).sort((a, b) => a.index - b.index);
}

/** Where a pod goes, or why it cannot go anywhere. */
export type PlaceResult =
  | { ok: true; node: CoreNode; gpus: GpuSlice[] }
  | { ok: false; reasons: Record<string, number> };

/** Options for {@linkcode place}. */
export interface PlaceOptions {
  /** @default DEFAULT_FILTERS */
  filters?: readonly Filter[];
  /** @default DEFAULT_SCORES */
  scores?: readonly Score[];
  /**
   * Stop looking once this many nodes fit, as kube-scheduler's
   * `percentageOfNodesToScore` does; nodes are scanned in order, so the
   * front of the list fills first. @default feasibleTarget(nodes.length)
   */
  enoughFeasible?: number;
}

/**
 * How many fitting nodes are enough to choose from: every node up to 1,000
 * nodes, then 1,000 or 10% of the nodes, whichever is larger.
 */
export function feasibleTarget(nodeCount: number): number {
  return nodeCount <= 1000 ? nodeCount : Math.max(1000, Math.ceil(nodeCount / 10));
}

/**
 * Places one pod: filters nodes in order until enough fit, scores those,
 * takes the highest score (first in node order on ties).
 *
 * @example
 * ```ts
 * const r = place(state.nodeList, { cpu: 500, memMB: 512, gpuType: "Any", gpuCount: 1, vramMB: 8000 });
 * if (r.ok) console.log(r.node.name, r.gpus);
 * ```
 */
export function place(
  nodes: readonly CoreNode[],
  demand: PodDemand,
  options: PlaceOptions = {},
): PlaceResult {
  const filters = options.filters ?? DEFAULT_FILTERS;
  const scores = options.scores ?? DEFAULT_SCORES;
  const enough = options.enoughFeasible ?? feasibleTarget(nodes.length);
  let best: CoreNode | undefined;
  let bestScore = -1;
  let feasible = 0;
  let reasons: Record<string, number> | undefined;
  outer: for (let i = 0; i < nodes.length && feasible < enough; i++) {
    const node = nodes[i];
    for (let f = 0; f < filters.length; f++) {
      const reason = filters[f].filter(node, demand);
      if (reason !== null) {
        reasons ??= {};
        reasons[reason] = (reasons[reason] ?? 0) + 1;
        continue outer;
      }
    }
    feasible++;
    let s = 0;
    for (let k = 0; k < scores.length; k++) s += scores[k].weight * scores[k].score(node, demand);
    if (s > bestScore) {
      bestScore = s;
      best = node;
    }
  }
  if (!best) return { ok: false, reasons: reasons ?? { no_nodes: 1 } };
  return { ok: true, node: best, gpus: pickGpus(best, demand)! };
}

/** Formats placement reasons for an error message: "2 insufficient_vram, 1 node_not_ready". */
export function describeReasons(reasons: Record<string, number>): string {
  return Object.entries(reasons).sort((a, b) => b[1] - a[1]).map(([r, n]) => `${n} ${r}`)
    .join(", ");
}
