/**
 * Internals every decision shares: the context of one step, and the
 * bookkeeping of what each pod holds on its node. Nothing here decides.
 *
 * @module
 */
import { refreshGpuSummary, vramCharge } from "./placement.ts";
import type {
  CoreAction,
  CoreFunc,
  CoreNode,
  CorePod,
  CoreState,
  Held,
  PodPlacement,
} from "./types.ts";

/** One step in progress: the state, the time, and the actions so far. */
export interface Ctx {
  state: CoreState;
  now: number;
  actions: CoreAction[];
}

/** A running pod holds all it was given. */
export const ALL_HELD: Held = { cpu: true, mem: true, vram: true };
const NONE_HELD: Held = { cpu: false, mem: false, vram: false };

/**
 * The serving version (see {@linkcode CoreFunc}) a pod belongs to, or
 * undefined when its version no longer serves (it drains) or its function is
 * gone.
 */
export function unitOf(
  state: CoreState,
  pod: { func: string; version: number },
): CoreFunc | undefined {
  const f = state.funcs.get(pod.func);
  if (!f || f.version === pod.version) return f;
  return state.funcs.get(`${pod.func}@${pod.version}`);
}

/**
 * Pods of `f`'s function, any version, that serve or are about to: a
 * replica its waiters may wait for (one of another version ends or is given
 * back, and frees its room).
 */
export function activeAnyVersion(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const p of state.pods.values()) {
    if (p.func === f.func && p.state !== "Terminating" && p.state !== "Standby") n++;
  }
  return n;
}

/** Pods of the current version that serve or are about to: for `minReplica` and scale-in. */
export function activeCurrent(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.version === f.version && p.state !== "Terminating" && p.state !== "Standby") n++;
  }
  return n;
}

/** Replicas of the current version, parked ones included: for `maxReplica`. */
export function liveCurrent(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.version === f.version && p.state !== "Terminating") n++;
  }
  return n;
}

/** Pods of the current version on their way to Ready: started or resuming. */
export function creatingCurrent(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.version === f.version && (p.state === "Creating" || p.state === "Resuming")) n++;
  }
  return n;
}

/**
 * Ready pods of the current version rebuilt after a restart that no gateway
 * has claimed yet: each goes to a waiting call at the grace's end
 * (`settleUnclaimed`) unless its gateway claims it first.
 */
export function unclaimedCurrent(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (
      p.version === f.version && p.state === "Ready" && !p.leasedBy &&
      p.unclaimedUntil !== undefined
    ) n++;
  }
  return n;
}

/** Whether `gateway` holds a lease on `pod`, alone or shared. */
export function holds(pod: CorePod, gateway: string): boolean {
  return pod.leasedBy === gateway || (pod.sharedWith?.includes(gateway) ?? false);
}

/** Makes `gateway` a lessee of `pod` (the first one holds `leasedBy`, others share). */
export function addLessee(pod: CorePod, gateway: string, now: number): void {
  if (!pod.leasedBy) pod.leasedBy = gateway;
  else if (!holds(pod, gateway)) (pod.sharedWith ??= []).push(gateway);
  pod.leasedAt = now;
}

/** Takes `gateway`'s lease off `pod`; true when no lessee is left. */
export function removeLessee(pod: CorePod, gateway: string): boolean {
  if (pod.leasedBy === gateway) pod.leasedBy = pod.sharedWith?.shift();
  else if (pod.sharedWith) pod.sharedWith = pod.sharedWith.filter((g) => g !== gateway);
  if (!pod.sharedWith?.length) pod.sharedWith = undefined;
  return pod.leasedBy === undefined;
}

/** Every gateway holding a lease on `pod`. */
export function lessees(pod: CorePod): string[] {
  return pod.leasedBy ? [pod.leasedBy, ...(pod.sharedWith ?? [])] : [];
}

/** Drops every lease on `pod` (it is parked or ends). */
export function clearLessees(pod: CorePod): void {
  pod.leasedBy = undefined;
  pod.sharedWith = undefined;
}

/** Starts a pod of `f` on `node`: mints its id, charges the node, asks the shell to create it. */
export function createPod(
  ctx: Ctx,
  f: CoreFunc,
  node: CoreNode,
  gpus: PodPlacement["gpus"],
  fromSnapshot = false,
) {
  const id = `${ctx.state.config.podIdPrefix}-${(++ctx.state.podSeq).toString(36)}`;
  const placement: PodPlacement = {
    id,
    func: f.func,
    version: f.version,
    node: node.name,
    cpu: f.demand.cpu,
    memMB: f.demand.memMB,
    gpus,
    ...(fromSnapshot ? { fromSnapshot } : {}),
  };
  addPod(ctx.state, placement, "Creating", vramCharge(node, f.demand), ctx.now).since = ctx.now;
  ctx.actions.push({ type: "createPod", pod: placement });
}

/** Records a pod on its node and function, charging what it holds. */
export function addPod(
  state: CoreState,
  p: PodPlacement,
  podState: CorePod["state"],
  vramChargeMB: number,
  now: number,
  held: Held = ALL_HELD,
): CorePod {
  const node = state.nodes.get(p.node)!;
  const pod: CorePod = {
    ...p,
    vramChargeMB,
    state: podState,
    held: { cpu: false, mem: false, vram: false },
    lastUsed: now,
  };
  state.pods.set(p.id, pod);
  node.pods.add(p.id);
  setHeld(state, pod, held);
  unitOf(state, p)?.pods.add(p.id);
  return pod;
}

/** Charges or releases the difference between what a pod holds and `want`. */
export function setHeld(state: CoreState, pod: CorePod, want: Held) {
  const node = state.nodes.get(pod.node);
  const had = pod.held;
  pod.held = { ...want };
  if (!node) return;
  if (had.cpu !== want.cpu) node.cpuUsed += want.cpu ? pod.cpu : -pod.cpu;
  node.memUsedMB += heldMemMB(pod, want) - heldMemMB(pod, had);
  if (had.vram !== want.vram && pod.gpus.length) {
    for (const s of pod.gpus) {
      const g = node.gpus.find((g) => g.index === s.index);
      if (!g) continue;
      g.vramUsedMB += want.vram ? pod.vramChargeMB : -pod.vramChargeMB;
      g.contexts += want.vram ? 1 : -1;
    }
    refreshGpuSummary(node);
  }
}

/**
 * The host memory (MB) `pod` holds as `held` says: its own, and its GPU
 * memory too while that is kept in host memory (the host-memory tier).
 */
export function heldMemMB(pod: CorePod, held: Held = pod.held): number {
  if (!held.mem) return 0;
  return pod.memMB + (held.gpuInMem ? gpuMemMB(pod) : 0);
}

/** The GPU memory (MB) `pod` may hold, over all its GPUs. */
export function gpuMemMB(pod: CorePod): number {
  return pod.gpus.length * pod.vramChargeMB;
}

/** Forgets a pod that is gone, giving its node back what it held. */
export function releasePod(state: CoreState, pod: CorePod) {
  setHeld(state, pod, NONE_HELD);
  state.pods.delete(pod.id);
  const node = state.nodes.get(pod.node);
  node?.pods.delete(pod.id);
  const f = unitOf(state, pod);
  f?.pods.delete(pod.id);
  f?.idle.delete(pod.id);
}

/** Asks the shell to terminate a pod; it keeps its charge until the node says it is gone. */
export function terminate(ctx: Ctx, pod: CorePod, reason: string) {
  if (pod.state === "Terminating") return;
  pod.state = "Terminating";
  clearLessees(pod);
  unitOf(ctx.state, pod)?.idle.delete(pod.id);
  ctx.actions.push({ type: "terminatePod", podId: pod.id, reason });
}
