/**
 * The scheduler's decisions as one pure function:
 * `step(state, event, now) -> { state, actions }`. No I/O, no clock, no
 * randomness: the shell (and the simulator) feed it events with the time and
 * carry out the actions. For speed the state is owned by the core and updated
 * in place; the same events in the same order give the same actions.
 *
 * @module
 */
import { describeReasons, planEviction, refreshGpuSummary, vramCharge } from "./placement.ts";
import type { StandbyTier } from "../../model/cluster.ts";
import { applySnapshot, planStart } from "./snapshot.ts";
import type {
  CoreAction,
  CoreConfig,
  CoreEvent,
  CoreFunc,
  CoreNode,
  CorePod,
  CoreState,
  FuncReport,
  Held,
  NodeReport,
  PodPlacement,
  Waiter,
} from "./types.ts";

/** What one step produced. */
export interface StepResult {
  state: CoreState;
  actions: CoreAction[];
}

/** A fresh, empty core state. */
export function newCoreState(config: Partial<CoreConfig> = {}): CoreState {
  return {
    config: {
      gatewayTimeoutMs: config.gatewayTimeoutMs ?? 10_000,
      leaseSettleMs: config.leaseSettleMs ?? 5_000,
      podIdPrefix: config.podIdPrefix ?? "pod",
      snapshotStart: config.snapshotStart ?? "auto",
    },
    nodes: new Map(),
    nodeList: [],
    funcs: new Map(),
    pods: new Map(),
    gateways: new Map(),
    starved: new Set(),
    quotas: new Map(),
    podSeq: 0,
  };
}

interface Ctx {
  state: CoreState;
  now: number;
  actions: CoreAction[];
}

/**
 * Applies one event at time `now` (ms) and returns the actions to carry out.
 *
 * @example
 * ```ts
 * let state = newCoreState({ podIdPrefix: "s1" });
 * ({ state } = step(state, { type: "nodeUpdate", node }, 0));
 * const { actions } = step(state, { type: "lease", reqId: "r1", func: "public/demo/f", gateway: "g1", deadline: 30_000 }, 0);
 * ```
 */
export function step(state: CoreState, event: CoreEvent, now: number): StepResult {
  const ctx: Ctx = { state, now, actions: [] };
  switch (event.type) {
    case "lease":
      onLease(ctx, event.reqId, event.func, event.gateway, event.deadline);
      break;
    case "cancelLease": {
      const f = state.funcs.get(event.func);
      if (f) f.waiters = f.waiters.filter((w) => w.reqId !== event.reqId);
      break;
    }
    case "return":
      onReturn(ctx, event.podId, event.gateway, event.failed ?? false);
      break;
    case "podStatus":
      onPodStatus(ctx, event.podId, event.state, event.endpoint, event.error, event);
      break;
    case "podSync":
      onPodSync(ctx, event.pod);
      break;
    case "nodeUpdate":
      onNodeUpdate(ctx, event.node);
      break;
    case "nodeRemove":
      onNodeRemove(ctx, event.name);
      break;
    case "funcUpdate":
      onFuncUpdate(ctx, event.func);
      break;
    case "funcRemove":
      onFuncRemove(ctx, event.id);
      break;
    case "tenantQuota":
      if (event.limits.maxGpu === undefined && event.limits.maxReplica === undefined) {
        state.quotas.delete(event.tenant);
      } else state.quotas.set(event.tenant, { ...event.limits });
      retryStarved(ctx);
      break;
    case "gatewayHeartbeat":
      state.gateways.set(event.gateway, now);
      if (event.leases) syncLeases(ctx, event.gateway, event.leases);
      break;
    case "killPod": {
      const pod = state.pods.get(event.podId);
      if (pod) terminate(ctx, pod, "killed by request");
      break;
    }
    case "snapshot":
      applySnapshot(state, event);
      break;
    case "tick":
      onTick(ctx);
      break;
  }
  return { state, actions: ctx.actions };
}

// ------------------------------------------------------------------ leases

function onLease(ctx: Ctx, reqId: string, funcId: string, gateway: string, deadline: number) {
  ctx.state.gateways.set(gateway, ctx.now);
  const f = ctx.state.funcs.get(funcId);
  if (!f) {
    ctx.actions.push({
      type: "leaseFailed",
      reqId,
      code: "not_found",
      message: `Cannot lease worker for ${funcId}: function does not exist`,
    });
    return;
  }
  const waiter: Waiter = { reqId, gateway, deadline };
  for (const podId of f.idle) {
    grant(ctx, f, ctx.state.pods.get(podId)!, waiter, false);
    return;
  }
  f.waiters.push(waiter);
  ensureCapacity(ctx, f);
}

function grant(
  ctx: Ctx,
  f: CoreFunc,
  pod: CorePod,
  w: Waiter,
  coldStart: boolean,
  resumed = false,
) {
  f.idle.delete(pod.id);
  pod.leasedBy = w.gateway;
  pod.leasedAt = ctx.now;
  ctx.actions.push({
    type: "leaseGranted",
    reqId: w.reqId,
    podId: pod.id,
    endpoint: pod.endpoint!,
    coldStart,
    resumed,
    version: pod.version,
  });
}

function onReturn(ctx: Ctx, podId: string, gateway: string, failed: boolean) {
  const pod = ctx.state.pods.get(podId);
  if (!pod || pod.leasedBy !== gateway) return; // stale or foreign: ignore
  pod.leasedBy = undefined;
  pod.lastUsed = ctx.now;
  const f = ctx.state.funcs.get(pod.func);
  if (failed) return terminate(ctx, pod, "returned as failed");
  if (!f || pod.version !== f.version) return terminate(ctx, pod, "old version drained");
  settleUnleased(ctx, f, pod, false);
}

/**
 * A gateway's heartbeat lists the pods it holds: claim those nobody else
 * holds (after a scheduler restart the core knows no leases), and take back
 * settled leases it no longer lists.
 */
function syncLeases(ctx: Ctx, gateway: string, leases: string[]) {
  const held = new Set(leases);
  for (const id of held) {
    const pod = ctx.state.pods.get(id);
    if (!pod || pod.state !== "Ready" || (pod.leasedBy && pod.leasedBy !== gateway)) continue;
    if (pod.leasedBy === gateway) continue;
    pod.leasedBy = gateway;
    pod.leasedAt = ctx.now;
    ctx.state.funcs.get(pod.func)?.idle.delete(id);
  }
  for (const pod of [...ctx.state.pods.values()]) {
    if (pod.leasedBy !== gateway || held.has(pod.id)) continue;
    if (ctx.now - (pod.leasedAt ?? 0) >= ctx.state.config.leaseSettleMs) {
      onReturn(ctx, pod.id, gateway, false);
    }
  }
}

/** A Ready pod without a lease: hand it to a waiter, scale it in, or keep it idle. */
function settleUnleased(
  ctx: Ctx,
  f: CoreFunc,
  pod: CorePod,
  coldStart: boolean,
  resumed = false,
) {
  const w = f.waiters.shift();
  if (w) return grant(ctx, f, pod, w, coldStart, resumed);
  if (!coldStart && !resumed && activeCurrent(ctx.state, f) > f.policy.minReplica) {
    return retire(ctx, f, pod, "scaled in");
  }
  f.idle.add(pod.id);
}

// ---------------------------------------------------------------- standby

/** What a pod parked in each tier still holds on its node. */
export const TIER_HOLDS: Record<StandbyTier, Held> = {
  paused: { cpu: false, mem: true, vram: true },
  host_memory: { cpu: false, mem: true, vram: false },
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

/** A pod leaves service: parked in a standby tier when policy and node allow, else terminated. */
function retire(ctx: Ctx, f: CoreFunc, pod: CorePod, reason: string) {
  const node = ctx.state.nodes.get(pod.node);
  const tier = node && f.policy.standbyPerNode > 0
    ? chooseTier(f.policy.standbyTier ?? "paused", node.standbyTiers)
    : undefined;
  if (tier) {
    let parked = 0;
    for (const id of f.pods) {
      const p = ctx.state.pods.get(id)!;
      if (p.state === "Standby" && p.node === pod.node && p.version === f.version) parked++;
    }
    if (parked < f.policy.standbyPerNode) {
      f.idle.delete(pod.id);
      pod.leasedBy = undefined;
      pod.state = "Standby";
      pod.tier = tier;
      pod.lastUsed = ctx.now;
      setHeld(ctx.state, pod, TIER_HOLDS[tier]);
      ctx.actions.push({ type: "parkPod", podId: pod.id, tier });
      return;
    }
  }
  terminate(ctx, pod, reason);
}

/** The parked pod of `f` to resume first: the cheapest tier, then the most recently parked. */
function parkedPod(state: CoreState, f: CoreFunc): CorePod | undefined {
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

/** Whether the node can give a parked pod back what it released. */
function canResume(state: CoreState, pod: CorePod): boolean {
  const node = state.nodes.get(pod.node);
  if (!node?.ready) return false;
  if (!pod.held.cpu && node.cpuTotal - node.cpuUsed < pod.cpu) return false;
  if (!pod.held.mem && node.memTotalMB - node.memUsedMB < pod.memMB) return false;
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
 * has been seen and was faster than the expected restore.
 */
export function resumeIsFaster(f: CoreFunc, tier: StandbyTier): boolean {
  return f.coldStartMs === undefined || expectedRestoreMs(f, tier) < f.coldStartMs;
}

const ewma = (old: number | undefined, sample: number) =>
  old === undefined ? sample : 0.7 * old + 0.3 * sample;

function resume(ctx: Ctx, pod: CorePod) {
  setHeld(ctx.state, pod, ALL_HELD);
  pod.state = "Resuming";
  pod.since = ctx.now;
  ctx.actions.push({ type: "resumePod", podId: pod.id, tier: pod.tier! });
}

// -------------------------------------------------------------- capacity

/** Pods of the current version that serve or are about to: for `minReplica` and scale-in. */
function activeCurrent(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.version === f.version && p.state !== "Terminating" && p.state !== "Standby") n++;
  }
  return n;
}

/** Replicas of the current version, parked ones included: for `maxReplica`. */
function liveCurrent(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.version === f.version && p.state !== "Terminating") n++;
  }
  return n;
}

function creatingCurrent(state: CoreState, f: CoreFunc): number {
  let n = 0;
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.version === f.version && (p.state === "Creating" || p.state === "Resuming")) n++;
  }
  return n;
}

/**
 * Finds pods for waiting leases and `minReplica`: resumes parked pods first,
 * then creates pods, evicting idle and parked pods of others if needed.
 */
function ensureCapacity(ctx: Ctx, f: CoreFunc) {
  const { state } = ctx;
  let live = liveCurrent(state, f);
  let need = Math.max(
    f.waiters.length - creatingCurrent(state, f),
    f.policy.minReplica - activeCurrent(state, f),
  );
  while (need > 0) {
    const parked = parkedPod(state, f);
    const quota = quotaBlock(state, f, parked);
    if (quota) {
      if (freeTenantPod(ctx, f)) continue;
      f.lastUnschedulable = quota;
      state.starved.add(f.id);
      // Nothing of this function runs, nothing can be freed: waiting would only time out.
      if (activeCurrent(state, f) === 0) {
        for (const w of f.waiters.splice(0)) {
          ctx.actions.push({
            type: "leaseFailed",
            reqId: w.reqId,
            code: "quota_exceeded",
            message: `Cannot lease worker for ${f.id}: ${quota}`,
          });
        }
      }
      return;
    }
    if (parked) {
      const plan = resumeIsFaster(f, parked.tier!) || live >= f.policy.maxReplica
        ? undefined
        : planStart(state.nodeList, f, state.config.snapshotStart);
      const fresh = plan?.result;
      if (fresh?.ok) {
        // Starting anew is faster than this tier's restore: leave the parked pod be.
        createPod(ctx, f, fresh.node, fresh.gpus, plan!.fromSnapshot);
        live++;
        need--;
        continue;
      }
      if (canResume(state, parked)) {
        resume(ctx, parked);
        need--;
        continue;
      }
      // Its node has no room to take it back: start fresh elsewhere instead.
      terminate(ctx, parked, "no room to resume");
      live--;
    }
    if (live >= f.policy.maxReplica) break;
    const start = planStart(state.nodeList, f, state.config.snapshotStart);
    const r = start.result;
    if (r.ok) {
      createPod(ctx, f, r.node, r.gpus, start.fromSnapshot);
      live++;
      need--;
      continue;
    }
    const plan = planEviction(state, f.id, f.demand);
    if (plan) {
      for (const v of plan.victims) terminate(ctx, v, `evicted for ${f.id}`);
      f.lastUnschedulable =
        `waiting for ${plan.victims.length} evicted pod(s) on ${plan.node.name}`;
    } else {
      f.lastUnschedulable = `no node fits (${describeReasons(r.reasons)})`;
    }
    state.starved.add(f.id);
    return;
  }
  state.starved.delete(f.id);
}

// ---------------------------------------------------------------- quotas

const tenantOf = (funcId: string) => funcId.slice(0, funcId.indexOf("/"));

/**
 * Why one more replica of `f` (resuming `parked`, when there is one) would
 * break its tenant's quota, or undefined when it would not.
 */
function quotaBlock(state: CoreState, f: CoreFunc, parked?: CorePod): string | undefined {
  const tenant = tenantOf(f.id);
  const q = state.quotas.get(tenant);
  if (!q) return undefined;
  let replicas = 0;
  let gpus = 0;
  for (const pod of state.pods.values()) {
    if (pod.state === "Terminating" || tenantOf(pod.func) !== tenant) continue;
    if (pod.state !== "Standby") replicas++;
    if (pod.held.vram) gpus += pod.gpus.length;
  }
  const moreGpus = parked ? (parked.held.vram ? 0 : parked.gpus.length) : f.demand.gpuCount;
  if (q.maxReplica !== undefined && replicas + 1 > q.maxReplica) {
    return `tenant ${tenant} is at its max_replica quota (${q.maxReplica} running)`;
  }
  if (q.maxGpu !== undefined && moreGpus > 0 && gpus + moreGpus > q.maxGpu) {
    return `tenant ${tenant} would exceed its max_gpu quota (${gpus} of ${q.maxGpu} GPU(s) held, ${moreGpus} more needed)`;
  }
  return undefined;
}

/**
 * Makes room within a tenant's quota: retires the least recently used idle
 * pod of another function of the same tenant that is above its `minReplica`.
 */
function freeTenantPod(ctx: Ctx, f: CoreFunc): boolean {
  const tenant = tenantOf(f.id);
  let victim: CorePod | undefined;
  let owner: CoreFunc | undefined;
  for (const g of ctx.state.funcs.values()) {
    if (g === f || tenantOf(g.id) !== tenant || g.idle.size === 0) continue;
    if (activeCurrent(ctx.state, g) <= g.policy.minReplica) continue;
    for (const id of g.idle) {
      const p = ctx.state.pods.get(id)!;
      if (!victim || p.lastUsed < victim.lastUsed) (victim = p, owner = g);
    }
  }
  if (victim && owner) {
    retire(ctx, owner, victim, `freed for ${f.id} within the tenant's quota`);
    return true;
  }
  // A parked pod that kept its GPU memory still counts against max_gpu.
  for (const p of ctx.state.pods.values()) {
    if (p.state !== "Standby" || !p.held.vram || !p.gpus.length || tenantOf(p.func) !== tenant) {
      continue;
    }
    if (!victim || p.lastUsed < victim.lastUsed) victim = p;
  }
  if (!victim) return false;
  terminate(ctx, victim, `freed for ${f.id} within the tenant's quota`);
  return true;
}

function createPod(
  ctx: Ctx,
  f: CoreFunc,
  node: CoreNode,
  gpus: PodPlacement["gpus"],
  fromSnapshot = false,
) {
  const id = `${ctx.state.config.podIdPrefix}-${(++ctx.state.podSeq).toString(36)}`;
  const placement: PodPlacement = {
    id,
    func: f.id,
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

function addPod(
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
  state.funcs.get(p.func)?.pods.add(p.id);
  return pod;
}

const ALL_HELD: Held = { cpu: true, mem: true, vram: true };
const NONE_HELD: Held = { cpu: false, mem: false, vram: false };

/** Charges or releases the difference between what a pod holds and `want`. */
function setHeld(state: CoreState, pod: CorePod, want: Held) {
  const node = state.nodes.get(pod.node);
  const had = pod.held;
  pod.held = { ...want };
  if (!node) return;
  if (had.cpu !== want.cpu) node.cpuUsed += want.cpu ? pod.cpu : -pod.cpu;
  if (had.mem !== want.mem) node.memUsedMB += want.mem ? pod.memMB : -pod.memMB;
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

function releasePod(state: CoreState, pod: CorePod) {
  setHeld(state, pod, NONE_HELD);
  state.pods.delete(pod.id);
  const node = state.nodes.get(pod.node);
  node?.pods.delete(pod.id);
  const f = state.funcs.get(pod.func);
  f?.pods.delete(pod.id);
  f?.idle.delete(pod.id);
}

function terminate(ctx: Ctx, pod: CorePod, reason: string) {
  if (pod.state === "Terminating") return;
  pod.state = "Terminating";
  pod.leasedBy = undefined;
  ctx.state.funcs.get(pod.func)?.idle.delete(pod.id);
  ctx.actions.push({ type: "terminatePod", podId: pod.id, reason });
}

/** Retries functions whose waiters could not be placed, after resources were freed. */
function retryStarved(ctx: Ctx) {
  for (const id of [...ctx.state.starved]) {
    const f = ctx.state.funcs.get(id);
    if (f) ensureCapacity(ctx, f);
    else ctx.state.starved.delete(id);
  }
}

// ------------------------------------------------------------------- pods

function onPodStatus(
  ctx: Ctx,
  podId: string,
  status: "Ready" | "Standby" | "Failed" | "Terminated",
  endpoint?: string,
  error?: string,
  start: { startedFrom?: "fresh" | "snapshot"; snapshotMs?: number } = {},
) {
  const { state } = ctx;
  const pod = state.pods.get(podId);
  if (!pod || status === "Standby") return; // a park the core decided is done
  const f = state.funcs.get(pod.func);
  if (status === "Ready") {
    if (pod.state !== "Creating" && pod.state !== "Resuming") return;
    const resumed = pod.state === "Resuming";
    if (f && pod.since !== undefined) {
      const took = ctx.now - pod.since;
      if (resumed) f.restoreMs[pod.tier!] = ewma(f.restoreMs[pod.tier!], took);
      else if (start.startedFrom === "snapshot") f.snapshotStartMs = ewma(f.snapshotStartMs, took);
      // A fresh start that also took the snapshot is learned without the dump.
      else f.coldStartMs = ewma(f.coldStartMs, Math.max(0, took - (start.snapshotMs ?? 0)));
    }
    pod.state = "Ready";
    pod.tier = undefined;
    pod.endpoint = endpoint ?? pod.endpoint;
    pod.lastUsed = ctx.now;
    if (!f || pod.version !== f.version) return terminate(ctx, pod, "old version drained");
    return settleUnleased(ctx, f, pod, !resumed, resumed);
  }
  const wasCreating = pod.state === "Creating";
  if (status === "Failed") terminate(ctx, pod, "failed");
  releasePod(state, pod);
  if (status === "Failed" && wasCreating && f) {
    const message = `Worker ${podId} of ${pod.func} failed to start: ${error ?? "unknown error"}`;
    for (const w of f.waiters) {
      ctx.actions.push({ type: "leaseFailed", reqId: w.reqId, code: "worker_failed", message });
    }
    f.waiters = [];
    state.starved.delete(f.id);
  }
  retryStarved(ctx);
}

function onPodSync(ctx: Ctx, r: import("./types.ts").PodReport) {
  const { state } = ctx;
  const existing = state.pods.get(r.id);
  if (existing) {
    if (existing.state === "Creating" && r.state === "Ready") {
      onPodStatus(ctx, r.id, "Ready", r.endpoint);
    }
    return;
  }
  const node = state.nodes.get(r.node);
  if (!node) {
    ctx.actions.push({ type: "terminatePod", podId: r.id, reason: `node ${r.node} is unknown` });
    return;
  }
  const charge = r.gpus.length ? r.gpus[0].vramMB + node.contextOverheadMB : 0;
  const parked = r.state === "Standby" && r.tier;
  const pod = addPod(state, r, r.state, charge, ctx.now, parked ? TIER_HOLDS[r.tier!] : ALL_HELD);
  pod.endpoint = r.endpoint;
  if (parked) pod.tier = r.tier;
  const f = state.funcs.get(r.func);
  if (r.state === "Terminating") {
    ctx.actions.push({ type: "terminatePod", podId: r.id, reason: "terminating before restart" });
  } else if (f && f.version !== r.version) {
    terminate(ctx, pod, "old version drained");
  } else if (f && r.state === "Ready") settleUnleased(ctx, f, pod, true);
  // A pod whose function is not known yet waits for it (restart order is
  // nodes, pods, functions); the tick collects it if the function never comes.
}

// ------------------------------------------------------------------ nodes

function onNodeUpdate(ctx: Ctx, r: NodeReport) {
  const { state } = ctx;
  let node = state.nodes.get(r.name);
  if (!node) {
    node = {
      name: r.name,
      ready: r.ready,
      cpuTotal: r.cpuMillis,
      memTotalMB: r.memMB,
      cpuUsed: 0,
      memUsedMB: 0,
      gpus: [],
      contextOverheadMB: r.contextOverheadMB,
      standbyTiers: r.standbyTiers,
      pods: new Set(),
      gpuSummary: { type: null, freeDesc: [], usedMB: 0, totalMB: 0 },
    };
    state.nodes.set(r.name, node);
    state.nodeList.push(node);
  }
  const wasReady = node.ready;
  node.ready = r.ready;
  node.cpuTotal = r.cpuMillis;
  node.memTotalMB = r.memMB;
  node.contextOverheadMB = r.contextOverheadMB;
  node.standbyTiers = r.standbyTiers;
  const used = new Map(node.gpus.map((g) => [g.index, g]));
  node.gpus = r.gpus.map((g) => ({
    index: g.index,
    type: g.type,
    vramTotalMB: g.vramMB,
    vramUsedMB: used.get(g.index)?.vramUsedMB ?? 0,
    contexts: used.get(g.index)?.contexts ?? 0,
  }));
  refreshGpuSummary(node);
  if (wasReady && !node.ready) loseNodePods(ctx, node, `node ${node.name} is not ready`);
  retryStarved(ctx);
}

function onNodeRemove(ctx: Ctx, name: string) {
  const node = ctx.state.nodes.get(name);
  if (!node) return;
  loseNodePods(ctx, node, `node ${name} was removed`);
  ctx.state.nodes.delete(name);
  ctx.state.nodeList = ctx.state.nodeList.filter((n) => n !== node);
  retryStarved(ctx);
}

/** Pods on a lost node are gone: free their accounting and replace them. */
function loseNodePods(ctx: Ctx, node: CoreNode, reason: string) {
  for (const id of [...node.pods]) {
    const pod = ctx.state.pods.get(id)!;
    if (pod.state !== "Terminating") ctx.actions.push({ type: "terminatePod", podId: id, reason });
    releasePod(ctx.state, pod);
  }
  for (const f of ctx.state.funcs.values()) {
    if (f.waiters.length || f.policy.minReplica) ctx.state.starved.add(f.id);
  }
}

// -------------------------------------------------------------- functions

function onFuncUpdate(ctx: Ctx, r: FuncReport) {
  const { state } = ctx;
  let f = state.funcs.get(r.id);
  if (!f) {
    f = {
      ...r,
      pods: new Set(),
      idle: new Set(),
      waiters: [],
      restoreMs: {},
      snapshotNodes: new Set(),
    };
    state.funcs.set(r.id, f);
    // Pods synced before their function (restart order) now belong to it.
    for (const p of state.pods.values()) {
      if (p.func !== r.id) continue;
      f.pods.add(p.id);
      if (p.state === "Ready" && !p.leasedBy && p.version === r.version) f.idle.add(p.id);
    }
  }
  const changed = f.version !== r.version;
  if (changed) f.snapshotNodes.clear(); // they were of the old version
  f.version = r.version;
  f.demand = r.demand;
  f.policy = r.policy;
  if (changed) {
    for (const id of [...f.pods]) {
      const p = state.pods.get(id)!;
      if (p.version !== f.version && !p.leasedBy) terminate(ctx, p, "old version drained");
    }
  }
  ensureCapacity(ctx, f);
}

function onFuncRemove(ctx: Ctx, id: string) {
  const f = ctx.state.funcs.get(id);
  if (!f) return;
  for (const podId of f.pods) terminate(ctx, ctx.state.pods.get(podId)!, "function removed");
  for (const w of f.waiters) {
    ctx.actions.push({
      type: "leaseFailed",
      reqId: w.reqId,
      code: "not_found",
      message: `Cannot lease worker for ${id}: function was removed`,
    });
  }
  ctx.state.funcs.delete(id);
  ctx.state.starved.delete(id);
}

// ------------------------------------------------------------------- tick

function onTick(ctx: Ctx) {
  const { state, now } = ctx;
  for (const f of state.funcs.values()) {
    if (f.waiters.length && f.waiters[0].deadline <= now) {
      const keep: Waiter[] = [];
      for (const w of f.waiters) {
        if (w.deadline > now) {
          keep.push(w);
          continue;
        }
        const why = f.lastUnschedulable ? `; ${f.lastUnschedulable}` : "";
        ctx.actions.push({
          type: "leaseFailed",
          reqId: w.reqId,
          code: "timeout",
          message: `Cannot lease worker for ${f.id}: no worker was ready before the deadline${why}`,
        });
      }
      f.waiters = keep;
    }
  }
  for (const [gw, seen] of state.gateways) {
    if (now - seen < state.config.gatewayTimeoutMs) continue;
    state.gateways.delete(gw);
    for (const pod of state.pods.values()) {
      if (pod.leasedBy === gw) onReturn(ctx, pod.id, gw, false);
    }
  }
  for (const f of state.funcs.values()) {
    if (f.idle.size === 0) continue;
    let active = activeCurrent(state, f);
    for (const id of [...f.idle]) {
      if (active <= f.policy.minReplica) break;
      const p = state.pods.get(id)!;
      if (p.lastUsed + f.policy.scaleinTimeoutS * 1000 > now) continue;
      retire(ctx, f, p, "idle past scale-in timeout");
      active--;
    }
  }
  for (const pod of state.pods.values()) {
    if (!state.funcs.has(pod.func)) terminate(ctx, pod, "function no longer exists");
  }
  for (const f of state.funcs.values()) {
    if (f.policy.minReplica > 0 || f.waiters.length > 0) ensureCapacity(ctx, f);
  }
}
