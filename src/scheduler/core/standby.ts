/**
 * Standby: where a pod that leaves service is parked (which tier, or none),
 * what a parked pod still holds on its node, and whether a pod the function
 * needs comes back from standby or starts fresh.
 *
 * @module
 */
import type { StandbyTier } from "../../model/cluster.ts";
import {
  ALL_HELD,
  clearLessees,
  createPod,
  type Ctx,
  gpuMemMB,
  heldMemMB,
  liveCurrent,
  setHeld,
  terminate,
} from "./_accounting.ts";
import { quotaBlock } from "./quota.ts";
import { planStart } from "./snapshot.ts";
import type { CoreFunc, CorePod, CoreState, Held } from "./types.ts";

/** What a pod parked in each tier still holds on its node. */
export const TIER_HOLDS: Record<StandbyTier, Held> = {
  paused: { cpu: false, mem: true, vram: true },
  host_memory: { cpu: false, mem: true, vram: false, gpuInMem: true },
  file: { cpu: false, mem: false, vram: false },
};

const TIER_DEPTH: readonly StandbyTier[] = ["paused", "host_memory", "file"];

/** The deepest tier up to `wanted` that `available` offers, or undefined. */
export function chooseTier(
  wanted: StandbyTier,
  available: readonly StandbyTier[],
): StandbyTier | undefined {
  for (let i = TIER_DEPTH.indexOf(wanted); i >= 0; i--) {
    if (available.includes(TIER_DEPTH[i])) return TIER_DEPTH[i];
  }
  return undefined;
}

/**
 * A pod leaves service: parked in a standby tier when policy and node allow,
 * else terminated. `freeing`: it leaves to give that back, so a tier that
 * keeps it is no use (terminated instead).
 */
export function retire(
  ctx: Ctx,
  f: CoreFunc,
  pod: CorePod,
  reason: string,
  freeing?: keyof Held,
) {
  const node = ctx.state.nodes.get(pod.node);
  let tier = node && f.policy.standbyPerNode > 0
    ? chooseTier(f.policy.standbyTier ?? "paused", node.standbyTiers)
    : undefined;
  if (tier && freeing && TIER_HOLDS[tier][freeing]) tier = undefined;
  // Its GPU memory would move into host memory: only where the node has that much to spare
  // (a pod whose GPU memory stays on the GPU, paused, needs none).
  const free = node ? node.memTotalMB - node.memUsedMB : 0;
  if (tier && COPIES_GPU_MEMORY.has(tier) && node && pod.gpus.length && free < gpuMemMB(pod)) {
    tier = chooseTier("paused", node.standbyTiers);
    if (freeing === "vram") tier = undefined;
  }
  // A parked pod is still a replica: none kept above a (lowered) maxReplica.
  if (tier && liveCurrent(ctx.state, f) > f.policy.maxReplica) tier = undefined;
  // Not parked where resumes were seen slower than fresh starts: it would hold its node's
  // standby room, and memory or disk, for a resume that is not chosen.
  if (tier && resumeSeenSlower(f, tier, ctx.now)) tier = undefined;
  if (tier) {
    const parked = parkedByNode(ctx.state, f).get(pod.node)?.length ?? 0;
    if (parked < f.policy.standbyPerNode) {
      f.idle.delete(pod.id);
      clearLessees(pod);
      pod.state = "Standby";
      pod.tier = tier;
      pod.lastUsed = ctx.now;
      pod.parkingSince = ctx.now; // it holds all until its agent reports it parked (parkDone)
      setHeld(ctx.state, pod, copyingHolds(pod, tier));
      ctx.actions.push({ type: "parkPod", podId: pod.id, tier });
      return;
    }
  }
  terminate(ctx, pod, reason);
}

/**
 * The tiers whose park first moves a GPU worker's GPU memory into its host
 * memory (the file tier then writes it all to disk).
 */
const COPIES_GPU_MEMORY: ReadonlySet<StandbyTier> = new Set(["host_memory", "file"]);

/**
 * What a pod holds while its GPU memory is copied through host memory: being
 * parked in `tier` (until its agent reports the park done) or resumed from it
 * (until it is Ready again; from a file, the dump is read back into host
 * memory first): all it holds running, and the host memory its GPU memory
 * takes, from the start of the copy to its end.
 */
export function copyingHolds(pod: Pick<CorePod, "gpus">, tier: StandbyTier): Held {
  return COPIES_GPU_MEMORY.has(tier) && pod.gpus.length
    ? { ...ALL_HELD, gpuInMem: true }
    : ALL_HELD;
}

/**
 * The parked pods of `f`'s function, by node: of every version that serves
 * (`standby_per_node` is the function's, however many versions a split keeps).
 */
function parkedByNode(state: CoreState, f: CoreFunc): Map<string, CorePod[]> {
  const byNode = new Map<string, CorePod[]>();
  const seen = new Set<string>();
  const units = state.units.get(f.func) ?? [f];
  const serving = new Set(units.map((u) => u.version));
  for (const unit of units) {
    for (const id of unit.pods) {
      const p = state.pods.get(id)!;
      if (seen.has(id) || p.state !== "Standby" || !serving.has(p.version)) continue;
      seen.add(id);
      const list = byNode.get(p.node) ?? [];
      list.push(p);
      byNode.set(p.node, list);
    }
  }
  return byNode;
}

/**
 * A lowered `standbyPerNode` holds for the pods already parked: those of the
 * function above it on a node end, least recently used first (0: none stays
 * parked).
 */
export function trimParked(ctx: Ctx, f: CoreFunc) {
  const keep = f.policy.standbyPerNode;
  for (const parked of parkedByNode(ctx.state, f).values()) {
    if (parked.length <= keep) continue;
    parked.sort((a, b) => a.lastUsed - b.lastUsed);
    for (const p of parked.slice(0, parked.length - keep)) {
      terminate(ctx, p, `above standby_per_node ${keep}`);
    }
  }
}

/** Its agent reports `pod` parked: what its tier releases is free from now on. */
export function parkDone(ctx: Ctx, pod: CorePod): boolean {
  if (pod.state !== "Standby" || pod.parkingSince === undefined) return false;
  delete pod.parkingSince;
  setHeld(ctx.state, pod, TIER_HOLDS[pod.tier!]);
  return true;
}

/**
 * How long a park may go unreported (ms) before the pod is taken for parked
 * in a tier that keeps all it holds: longer than a file-tier dump may take
 * (120 s), after which it is evicted like any parked pod rather than awaited.
 */
export const PARK_REPORT_WAIT_MS = 150_000;

/** Whether `pod` was asked to park and its report is still to come (not overdue). */
export function parkComing(pod: CorePod, now: number): boolean {
  return pod.parkingSince !== undefined && now - pod.parkingSince < PARK_REPORT_WAIT_MS;
}

/** What `pod` will hold once its park is done (what it holds, when it is not parking). */
export function willHold(pod: CorePod): Held {
  return pod.parkingSince === undefined ? pod.held : TIER_HOLDS[pod.tier!];
}

/** What `pod`, being parked, gives back once its park is done. */
export function releasing(pod: CorePod): Held {
  const keeps = willHold(pod);
  return {
    cpu: pod.held.cpu && !keeps.cpu,
    mem: pod.held.mem && !keeps.mem,
    vram: pod.held.vram && !keeps.vram,
  };
}

/** The parked pod of `f` to resume first: the cheapest tier, then the most recently parked. */
export function parkedPod(state: CoreState, f: CoreFunc): CorePod | undefined {
  let best: CorePod | undefined;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.state !== "Standby" || p.version !== f.version) continue;
    if (
      !best || TIER_DEPTH.indexOf(p.tier!) < TIER_DEPTH.indexOf(best.tier!) ||
      (p.tier === best.tier && p.lastUsed > best.lastUsed)
    ) best = p;
  }
  return best;
}

/**
 * Whether the node can give a parked pod back what it released, and the host
 * memory its restore copies its GPU memory through.
 */
export function canResume(state: CoreState, pod: CorePod): boolean {
  const node = state.nodes.get(pod.node);
  if (!node?.ready) return false;
  if (!pod.held.cpu && node.cpuTotal - node.cpuUsed < pod.cpu) return false;
  // Its memory, and its GPU memory's copy while it is restored (what it holds parked counts).
  const more = heldMemMB(pod, copyingHolds(pod, pod.tier!)) - heldMemMB(pod);
  if (node.memTotalMB - node.memUsedMB < more) return false;
  if (!pod.held.vram) {
    for (const s of pod.gpus) {
      const g = node.gpus.find((g) => g.index === s.index);
      if (!g || g.vramTotalMB - g.vramUsedMB < pod.vramChargeMB) return false;
    }
  }
  return true;
}

/** Restore bandwidth priors (MB/ms) until restores of the tier were seen: PCIe ~10 GB/s, disk ~1 GB/s. */
const RESTORE_PRIOR = {
  paused: () => 20,
  host_memory: (vramMB: number) => 200 + vramMB / 10,
  file: (vramMB: number) => 1000 + vramMB / 1,
};

/** How long resuming `pod` should take (ms): observed for its function and tier, else the prior. */
export function expectedRestoreMs(f: CoreFunc, tier: StandbyTier): number {
  return f.restoreMs[tier] ?? RESTORE_PRIOR[tier](f.demand.vramMB * Math.max(1, f.demand.gpuCount));
}

/**
 * Whether resuming a parked pod beats a fresh start: yes unless a start-up
 * has been seen and was faster than the expected restore. A worker without
 * GPU memory has no size a prior could judge its restore by: one of a tier
 * is tried before a fresh start is preferred (else a pod parked there, a
 * restore never seen, would never be resumed, and hold its node's standby
 * room for ever).
 */
export function resumeIsFaster(f: CoreFunc, tier: StandbyTier, now: number): boolean {
  if (f.restoreMs[tier] === undefined && f.demand.vramMB * f.demand.gpuCount === 0) return true;
  // Seen slower, a while ago: one resume is measured anew (the node, or the worker, may have
  // changed), rather than leave the tier unused, and what is parked there, for good.
  const at = f.restoreSeenAt?.[tier];
  if (at !== undefined && now - at >= SLOWER_SEEN_MS) return true;
  return f.coldStartMs === undefined || expectedRestoreMs(f, tier) < f.coldStartMs;
}

/**
 * Whether resumes of `f` from `tier` were seen, within {@linkcode SLOWER_SEEN_MS}
 * of `now`, to take as long as its fresh starts, or longer. Past that the
 * tier is used again, and a resume measured anew (the node, or the worker,
 * may have changed).
 */
function resumeSeenSlower(f: CoreFunc, tier: StandbyTier, now: number): boolean {
  const seen = f.restoreMs[tier];
  const at = f.restoreSeenAt?.[tier];
  return seen !== undefined && f.coldStartMs !== undefined && seen >= f.coldStartMs &&
    at !== undefined && now - at < SLOWER_SEEN_MS;
}

/** How long resumes seen slower than fresh starts keep a tier out of use (ms). */
export const SLOWER_SEEN_MS = 10 * 60_000;

const ewma = (old: number | undefined, sample: number) =>
  old === undefined ? sample : 0.7 * old + 0.3 * sample;

/** A pod of `f` became ready: learns how long its start-up or restore took. */
export function learnReadyTime(
  f: CoreFunc,
  pod: CorePod,
  now: number,
  start: {
    startedFrom?: "fresh" | "snapshot";
    snapshotMs?: number;
    /** A resume's time as its node measured it; null: its node did not (not learned). */
    resumeMs?: number | null;
  } = {},
) {
  if (pod.since === undefined) return;
  const took = now - pod.since;
  if (pod.state === "Resuming") {
    // A resume that waited for its park, or one whose node did not time it (a worker found
    // running by an agent restarted meanwhile), is no restore time.
    if (pod.resumeUntimed || start.resumeMs === null) return;
    f.restoreMs[pod.tier!] = ewma(f.restoreMs[pod.tier!], start.resumeMs ?? took);
    (f.restoreSeenAt ??= {})[pod.tier!] = now;
  } else if (start.startedFrom === "snapshot") f.snapshotStartMs = ewma(f.snapshotStartMs, took);
  // A fresh start that also took the snapshot is learned without the dump.
  else f.coldStartMs = ewma(f.coldStartMs, Math.max(0, took - (start.snapshotMs ?? 0)));
}

/** What {@linkcode restoreOrStart} did for one more replica. */
export type Revival = "started" | "resumed" | "dropped";

/**
 * One more replica of `f` while `parked` waits in standby: starts a fresh pod
 * when that is faster than the tier's restore, `live` is below `maxReplica`
 * and `freshAllowed` (not in a start back-off), else resumes the parked pod;
 * when its node has no room to take it back, drops it (the caller then
 * starts one elsewhere; in a start back-off it asks only when it can resume).
 */
export function restoreOrStart(
  ctx: Ctx,
  f: CoreFunc,
  parked: CorePod,
  live: number,
  freshAllowed = true,
): Revival {
  // A fresh pod needs what the parked one may still hold (its GPUs): only within the quota.
  const plan = !freshAllowed || resumeIsFaster(f, parked.tier!, ctx.now) ||
      live >= f.policy.maxReplica ||
      quotaBlock(ctx.state, f) !== undefined
    ? undefined
    : planStart(ctx.state.nodeList, f, ctx.state.config.snapshotStart);
  const fresh = plan?.result;
  if (fresh?.ok) {
    // Starting anew (or from a snapshot) is faster than this tier's restore. Seen so (not only
    // expected), the parked pod goes, rather than hold its node's standby room for a resume that
    // would not be chosen; expected so, it stays for a call past `maxReplica`.
    createPod(ctx, f, fresh.node, fresh.gpus, plan!.fromSnapshot);
    if (resumeSeenSlower(f, parked.tier!, ctx.now)) {
      terminate(ctx, parked, `resumes from ${parked.tier} were seen slower than fresh starts`);
    }
    return "started";
  }
  if (canResume(ctx.state, parked)) {
    setHeld(ctx.state, parked, copyingHolds(parked, parked.tier!));
    // Its resume waits for its park first: no restore time to learn from.
    parked.resumeUntimed = parked.parkingSince !== undefined;
    parked.resumeFrom = parked.seenRevision;
    delete parked.parkingSince;
    parked.state = "Resuming";
    parked.since = ctx.now;
    ctx.actions.push({ type: "resumePod", podId: parked.id, tier: parked.tier! });
    return "resumed";
  }
  terminate(ctx, parked, "no room to resume");
  return "dropped";
}
