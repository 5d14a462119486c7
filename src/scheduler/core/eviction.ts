/**
 * Eviction, apart from placement as kube-scheduler keeps preemption apart
 * from its filter and score plugins: when no node fits a pod, which parked
 * and idle pods to give up, on which node, so that it does.
 *
 * @module
 */
import { gpuTypeFit, gpuTypeMatches, nodeReady, vramCharge } from "./placement.ts";
import type { CoreNode, CorePod, CoreState, PodDemand } from "./types.ts";

/** Idle pods to evict on one node so that a pod fits, or nothing needed. */
export interface EvictionPlan {
  node: CoreNode;
  victims: CorePod[];
}

/**
 * Finds the node where evicting the fewest idle pods makes `demand` fit.
 * Victims are idle (Ready, unleased) pods of other functions, or of old
 * versions, least recently used first, never taking a function below its
 * `minReplica`. Pods already terminating count as freed, so a plan with no
 * victims means: wait for them. Undefined when no eviction can help.
 */
export function planEviction(
  state: CoreState,
  funcId: string,
  demand: PodDemand,
): EvictionPlan | undefined {
  let best: EvictionPlan | undefined;
  // Active pods per function, counted only for functions that own candidates.
  const live = new Map<string, number>();
  const liveOf = (id: string) => {
    let n = live.get(id);
    if (n === undefined) {
      n = 0;
      for (const podId of state.funcs.get(id)?.pods ?? []) {
        const st = state.pods.get(podId)?.state;
        if (st !== "Terminating" && st !== "Standby") n++;
      }
      live.set(id, n);
    }
    return n;
  };
  for (const node of state.nodeList) {
    if (nodeReady(node) !== null || gpuTypeFit(node, demand) !== null) continue;
    const candidates: CorePod[] = [];
    const freed: CorePod[] = [];
    for (const id of node.pods) {
      const p = state.pods.get(id)!;
      if (p.state === "Terminating") freed.push(p);
      else if (p.state === "Standby") candidates.push(p);
      else if (p.state === "Ready" && !p.leasedBy) {
        const f = state.funcs.get(p.func);
        if (p.func !== funcId || (f && p.version !== f.version)) candidates.push(p);
      }
    }
    // Parked pods go first (they serve nobody), then idle ones, least recently used first.
    candidates.sort((a, b) =>
      Number(b.state === "Standby") - Number(a.state === "Standby") || a.lastUsed - b.lastUsed
    );
    const budget = new Map<string, number>();
    const victims: CorePod[] = [];
    let fits = fitsAfterFreeing(node, demand, freed);
    for (const p of candidates) {
      if (fits) break;
      if (best && victims.length >= best.victims.length) break;
      const f = state.funcs.get(p.func);
      const left = budget.get(p.func) ?? liveOf(p.func);
      if (p.state !== "Standby") {
        if (f && p.version === f.version && left <= f.policy.minReplica) continue;
        budget.set(p.func, left - 1);
      }
      victims.push(p);
      fits = fitsAfterFreeing(node, demand, [...freed, ...victims]);
    }
    if (fits && (!best || victims.length < best.victims.length)) {
      best = { node, victims };
      if (victims.length === 0) break;
    }
  }
  return best;
}

function fitsAfterFreeing(node: CoreNode, d: PodDemand, freed: readonly CorePod[]): boolean {
  let cpu = node.cpuTotal - node.cpuUsed;
  let mem = node.memTotalMB - node.memUsedMB;
  const vram = new Map<number, number>();
  for (const g of node.gpus) vram.set(g.index, g.vramTotalMB - g.vramUsedMB);
  for (const p of freed) {
    if (p.held.cpu) cpu += p.cpu;
    if (p.held.mem) mem += p.memMB;
    if (p.held.vram) {
      for (const s of p.gpus) vram.set(s.index, vram.get(s.index)! + p.vramChargeMB);
    }
  }
  if (cpu < d.cpu || mem < d.memMB) return false;
  if (d.gpuCount === 0) return true;
  const need = vramCharge(node, d);
  let n = 0;
  for (const g of node.gpus) {
    if (gpuTypeMatches(g.type, d.gpuType) && vram.get(g.index)! >= need) n++;
  }
  return n >= d.gpuCount;
}
