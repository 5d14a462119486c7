/**
 * Eviction, apart from placement as kube-scheduler keeps preemption apart
 * from its filter and score plugins: when no node fits a pod, which parked
 * and idle pods to give up (and which leases to reclaim, when fairness
 * allows), on which node, so that it does.
 *
 * @module
 */
import { heldMemMB, unitOf } from "./_accounting.ts";
import { PRIORITY_RANK } from "./fairness.ts";
import { gpuGroups, gpuTypeFit, nodeReady, vramCharge } from "./placement.ts";
import type { CoreNode, CorePod, CoreState, PodDemand } from "./types.ts";
import { parkComing, releasing } from "./standby.ts";

/** Pods to give up on one node so that a pod fits, or nothing needed. */
export interface EvictionPlan {
  node: CoreNode;
  /** Idle and parked pods to terminate, and leased ones to reclaim (`leasedBy` set). */
  victims: CorePod[];
}

/** Which pods {@linkcode planEviction} may take. */
export interface EvictionOptions {
  /** Whether an idle or parked pod may be evicted (fairness). @default every one */
  evict?: (pod: CorePod) => boolean;
  /** Whether a leased pod may be reclaimed from its gateway (fairness). @default none */
  reclaim?: (pod: CorePod) => boolean;
  /** The core's clock (ms), for parks whose report is overdue. @default 0 */
  now?: number;
}

/** Parked pods go first (they serve nobody), then idle ones, then leased ones. */
const stateRank = (p: CorePod) => (p.state === "Standby" ? 0 : p.leasedBy ? 2 : 1);

/**
 * Finds the node where giving up the fewest pods makes `demand` fit.
 * Victims are parked and idle (Ready, unleased) pods of other function
 * versions (`funcId` is the requesting one), and leased ones `options`
 * allows reclaiming, cheapest first: parked, idle, leased; lower priority
 * first; least recently used first; never taking a function below its
 * `minReplica`; then those the pod fits without are spared (one that holds
 * nothing it needs). Pods already terminating or being reclaimed count as freed,
 * so a plan with no victims means: wait for them. Undefined when no
 * eviction can help.
 */
export function planEviction(
  state: CoreState,
  funcId: string,
  demand: PodDemand,
  options: EvictionOptions = {},
): EvictionPlan | undefined {
  let best: EvictionPlan | undefined;
  const now = options.now ?? 0;
  // Active pods per function, counted only for functions that own candidates.
  const live = new Map<string, number>();
  const liveOf = (id: string) => {
    let n = live.get(id);
    if (n === undefined) {
      n = 0;
      for (const podId of state.funcs.get(id)?.pods ?? []) {
        const p = state.pods.get(podId);
        if (p && p.state !== "Terminating" && p.state !== "Standby" && !p.reclaiming) n++;
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
      if (p.unclaimedUntil !== undefined) continue; // a gateway may be using it
      if (p.state === "Terminating" || p.reclaiming) freed.push(p);
      // Being parked: what its tier releases comes free once its agent has parked it (a
      // report overdue: taken as parked holding all, evicted like any parked pod).
      else if (parkComing(p, now)) freed.push({ ...p, held: releasing(p) });
      else if (p.state === "Standby") {
        // Parked holding nothing (in a file): ending it frees nothing here.
        if (!p.held.cpu && !p.held.mem && !p.held.vram) continue;
        if (!options.evict || options.evict(p)) candidates.push(p);
      } else if (p.state === "Ready" && unitOf(state, p)?.id !== funcId) {
        if (p.leasedBy ? options.reclaim?.(p) : !options.evict || options.evict(p)) {
          candidates.push(p);
        }
      }
    }
    const rank = (p: CorePod) => PRIORITY_RANK[unitOf(state, p)?.policy.priority ?? "normal"];
    candidates.sort((a, b) =>
      stateRank(a) - stateRank(b) || rank(b) - rank(a) || a.lastUsed - b.lastUsed
    );
    const budget = new Map<string, number>();
    const victims: CorePod[] = [];
    let fits = fitsAfterFreeing(node, demand, freed);
    for (const p of candidates) {
      if (fits) break;
      if (best && victims.length >= best.victims.length) break;
      const f = unitOf(state, p);
      if (p.state !== "Standby" && f) {
        const left = budget.get(f.id) ?? liveOf(f.id);
        if (left <= f.policy.minReplica) continue;
        budget.set(f.id, left - 1);
      }
      victims.push(p);
      fits = fitsAfterFreeing(node, demand, [...freed, ...victims]);
    }
    // Taken in order of cost, some may free nothing the pod needs (a parked pod that holds no
    // GPU memory, when GPU memory is short): those are spared, cheapest first.
    if (fits) {
      for (let i = 0; i < victims.length && victims.length > 1;) {
        const without = victims.filter((_, j) => j !== i);
        if (fitsAfterFreeing(node, demand, [...freed, ...without])) victims.splice(i, 1);
        else i++;
      }
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
    mem += heldMemMB(p);
    if (p.held.vram) {
      for (const s of p.gpus) vram.set(s.index, vram.get(s.index)! + p.vramChargeMB);
    }
  }
  if (cpu < d.cpu || mem < d.memMB) return false;
  if (d.gpuCount === 0) return true;
  const need = vramCharge(node, d);
  return gpuGroups(node, d).some((group) =>
    group.filter((g) => vram.get(g.index)! >= need).length >= d.gpuCount
  );
}
