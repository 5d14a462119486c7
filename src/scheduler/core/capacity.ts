/**
 * Capacity: how many pods each function needs (its waiting leases and
 * `minReplica`, never above `maxReplica`), where they come from (standby,
 * a fresh start, or room made by eviction), and which idle ones to give up.
 *
 * @module
 */
import {
  activeAnyVersion,
  activeCurrent,
  createPod,
  creatingCurrent,
  type Ctx,
  liveCurrent,
  terminate,
  unclaimedCurrent,
  unitOf,
} from "./_accounting.ts";
import { type EvictionOptions, planEviction } from "./eviction.ts";
import {
  demandAmounts,
  fairOrder,
  type FairView,
  fairView,
  mayEvict,
  mayReclaim,
  needsOrder,
  priorityRank,
  reclaim,
} from "./fairness.ts";
import { failedStarts } from "./backoff.ts";
import { describeReasons } from "./placement.ts";
import { planStart } from "./snapshot.ts";
import { freeTenantPod, namedForCaller, quotaBlock, tenantOf } from "./quota.ts";
import { canResume, parkedPod, restoreOrStart, retire, willHold } from "./standby.ts";
import type { CoreFunc, CorePod, CoreState } from "./types.ts";

/**
 * Finds pods for waiting leases and `minReplica`: resumes parked pods first,
 * then creates pods, evicting idle and parked pods of others if needed.
 */
export function ensureCapacity(ctx: Ctx, f: CoreFunc) {
  const { state } = ctx;
  if (f.schedulable?.status === "False") return; // no node could ever hold it: evict nothing
  // Its pods keep failing to start: none starts until the back-off ends (a parked one may resume).
  const backoff = f.startBackoff && ctx.now < f.startBackoff.until ? f.startBackoff : undefined;
  let live = liveCurrent(state, f);
  // Pods on their way count for waiters: those starting or resuming, and those rebuilt after a
  // restart and not claimed yet (a call waits out the grace for one: the next tick after a claim
  // starts its own).
  let need = Math.max(
    f.waiters.length - creatingCurrent(state, f) - unclaimedCurrent(state, f),
    f.policy.minReplica - activeCurrent(state, f),
  );
  while (need > 0) {
    const parked = parkedPod(state, f);
    // Backing off with nothing parked it can resume now: nothing to do (room freed for a start
    // or a resume that will not come would go unused).
    if (backoff && (!parked || !canResume(state, parked))) return backingOff(ctx, f, backoff);
    const quota = quotaBlock(state, f, parked);
    if (quota) {
      if (freeTenantPod(ctx, f, quota)) continue;
      f.lastUnschedulable = quota.message;
      f.noNodeFits = false;
      f.freeing = false;
      state.starved.add(f.id);
      // Nothing of this function runs, of any version, nothing can be freed: waiting would
      // only time out. (A pod of another version draining, or serving its share, ends or is
      // given back, and its room goes to these.)
      if (activeAnyVersion(state, f) === 0) {
        for (const w of f.waiters.splice(0)) {
          ctx.actions.push({
            type: "leaseFailed",
            reqId: w.reqId,
            code: "quota_exceeded",
            message: `Cannot lease worker for ${f.id}: ${quota.message}`,
            quota: { limit: quota.limit, quota: quota.quota },
          });
        }
      }
      return;
    }
    if (parked) {
      const revival = restoreOrStart(ctx, f, parked, live, !backoff);
      if (revival !== "dropped") {
        if (revival === "started") live++;
        need--;
        continue;
      }
      // Its node has no room to take it back: start fresh elsewhere instead.
      live--;
    }
    if (backoff) return backingOff(ctx, f, backoff);
    if (live >= f.policy.maxReplica) break;
    const start = planStart(state.nodeList, f, state.config.snapshotStart);
    const r = start.result;
    if (r.ok) {
      createPod(ctx, f, r.node, r.gpus, start.fromSnapshot);
      live++;
      need--;
      continue;
    }
    const plan = planEviction(state, f.id, f.demand, { ...fairRules(state, f), now: ctx.now });
    if (plan) {
      let reclaimed = 0;
      for (const v of plan.victims) {
        if (!v.leasedBy) terminate(ctx, v, `evicted for ${f.id}`);
        else if (lowerInTenant(state, f, v)) {
          // Its own tenant's: given back once its calls end, with no deadline on them.
          reclaim(ctx, v, `reclaimed for ${f.id}, of higher priority in its tenant`);
          reclaimed++;
        } else {
          reclaim(ctx, v, `reclaimed for ${f.id}, whose tenant is below its fair share`, true);
          reclaimed++;
        }
      }
      // No victims: what it waits for is on its way out already (evicted, or reclaimed).
      f.noNodeFits = false;
      f.freeing = true;
      f.lastUnschedulable = plan.victims.length === 0
        ? `waiting for pods on ${plan.node.name} being ended or reclaimed from their gateways`
        : `waiting for ${plan.victims.length} evicted pod(s) on ${plan.node.name}` +
          (reclaimed ? ` (${reclaimed} reclaimed from their gateways)` : "");
    } else {
      f.lastUnschedulable = `no node fits (${describeReasons(r.reasons)})`;
      f.noNodeFits = true;
      f.freeing = false;
    }
    state.starved.add(f.id);
    return;
  }
  // Placed, or waiting on pods it has: an earlier failure's reason no longer holds.
  f.lastUnschedulable = undefined;
  f.noNodeFits = false;
  f.freeing = false;
  state.starved.delete(f.id);
}

/**
 * A version whose pods keep failing to start gets no new one until its
 * back-off ends (a crash loop would start one every few hundred ms). When it
 * has no pod at all that serves or is on its way (a parked one resumed
 * counts), the calls waiting fail at once, with the last failure; else they
 * wait for one of its pods to come free.
 */
function backingOff(ctx: Ctx, f: CoreFunc, b: NonNullable<CoreFunc["startBackoff"]>) {
  if (!f.waiters.length || activeCurrent(ctx.state, f) > 0) return;
  const s = Math.ceil((b.until - ctx.now) / 1000);
  const message = b.transient
    ? `${b.message} (the next try in ${s} s)`
    : `${b.message} (${b.failures} failed start(s) in a row; the next in ${s} s)`;
  for (const w of f.waiters.splice(0)) {
    ctx.actions.push({
      type: "leaseFailed",
      reqId: w.reqId,
      code: b.code,
      message,
      retryAfterS: s,
      failures: failedStarts(f),
      output: b.output,
    });
  }
  ctx.state.starved.delete(f.id);
}

/**
 * Retries function versions whose waiters could not be placed, after
 * resources were freed, in the order they began to wait; with fairness, the
 * tenant holding least per weight first, then by priority (fairness.ts).
 */
export function retryStarved(ctx: Ctx) {
  const { state } = ctx;
  if (state.starved.size === 0) return;
  const units: CoreFunc[] = [];
  for (const id of state.starved) {
    const f = state.funcs.get(id);
    if (f) units.push(f);
    else state.starved.delete(id);
  }
  if (state.config.fairShare && needsOrder(units)) fairOrder(fairView(state), units);
  for (const f of units) ensureCapacity(ctx, f);
}

/**
 * What `f` may take from others when nothing fits: any idle or parked pod
 * without fairness; with it, those of tenants holding more per weight, and
 * leases of tenants above their fair share while `f`'s tenant stays within
 * its own.
 */
function fairRules(state: CoreState, f: CoreFunc): EvictionOptions {
  // Within a tenant, a function of higher priority takes a worker back from one of lower.
  const below = (p: CorePod) => lowerInTenant(state, f, p);
  if (!state.config.fairShare) return { reclaim: below };
  // Computed once, when the first candidate is weighed.
  let view: FairView | undefined;
  return {
    evict(p) {
      const v = lazyView();
      const cost = demandAmounts(f.demand);
      return mayEvict(v, tenantOf(f.func), tenantOf(p.func), cost, p.state === "Standby");
    },
    reclaim(p) {
      if (below(p)) return true;
      const v = lazyView();
      return mayReclaim(v, tenantOf(f.func), tenantOf(p.func), demandAmounts(f.demand));
    },
  };
  function lazyView() {
    return view ??= fairView(state);
  }
}

/**
 * Where the room `f` waits for is held by busy workers of its own tenant's
 * other functions, of its priority or higher (which it does not take back),
 * says whose: the caller's own work fills the nodes, not other tenants'.
 * Weighed when a waiting call times out (a plan over every node's pods).
 */
export function heldInTenant(state: CoreState, f: CoreFunc, now: number): string {
  const own = (p: CorePod) => tenantOf(p.func) === tenantOf(f.func);
  const plan = planEviction(state, f.id, f.demand, { evict: own, reclaim: own, now });
  const keep = (p: CorePod) => p.leasedBy && p.func !== f.func && !lowerInTenant(state, f, p);
  const busy = [...new Set(plan?.victims.filter(keep).map((p) => p.func))].sort();
  if (!busy.length) return "";
  return `; busy workers of its own tenant's ${
    namedForCaller(f.func, busy).join(", ")
  } hold the room it needs (only a function of higher priority takes one back)`;
}

/** Whether `p` serves a function of `f`'s tenant of lower priority than `f`. */
function lowerInTenant(state: CoreState, f: CoreFunc, p: CorePod): boolean {
  if (tenantOf(p.func) !== tenantOf(f.func)) return false;
  const g = unitOf(state, p);
  return g !== undefined && priorityRank(f) < priorityRank(g);
}

/**
 * Every function with `minReplica` or waiting leases gets what it needs; with
 * fairness in the same order as {@linkcode retryStarved} (room freed since the
 * last tick goes to the tenant holding least per weight, not to whichever
 * function was registered first).
 */
export function ensureAll(ctx: Ctx) {
  const { state } = ctx;
  const units: CoreFunc[] = [];
  for (const f of state.funcs.values()) {
    if (f.policy.minReplica > 0 || f.waiters.length > 0) units.push(f);
  }
  if (state.config.fairShare && needsOrder(units)) fairOrder(fairView(state), units);
  for (const f of units) ensureCapacity(ctx, f);
}

/**
 * Brings a version with more replicas than its `maxReplica` (lowered since
 * they started) back to it, cheapest first: parked pods end, then idle ones,
 * then leased ones are reclaimed from their gateways (no new calls on them;
 * they end once given back, their calls done). Pods on their way up are left
 * to come up, and trimmed at a later tick once they have settled.
 */
export function trimToMax(ctx: Ctx, f: CoreFunc) {
  const { state } = ctx;
  const max = f.policy.maxReplica;
  let over = liveCurrent(state, f) - max;
  if (over <= 0) return;
  const current: CorePod[] = [];
  for (const id of f.pods) {
    const p = state.pods.get(id)!;
    if (p.version !== f.version || p.state === "Terminating") continue;
    if (p.reclaiming) over--; // on its way out already
    else current.push(p);
  }
  const why = `above max_replica ${max}`;
  const rank = (p: CorePod) =>
    p.state === "Standby" ? 0 : f.idle.has(p.id) ? 1 : p.leasedBy && p.state === "Ready" ? 2 : 3;
  for (const p of current.sort((a, b) => rank(a) - rank(b))) {
    if (over <= 0) return;
    const r = rank(p);
    if (r === 3) return; // creating or resuming: trimmed once settled
    if (r === 2) reclaim(ctx, p, why);
    else terminate(ctx, p, why);
    over--;
  }
}

/**
 * Brings a tenant with more replicas running than its quota's `max_replica`
 * (lowered since they started) back to it, as {@linkcode trimToMax} does a
 * version: idle pods retire (parked when a tier takes them), then leased ones
 * are reclaimed from their gateways (given back when their calls end).
 */
export function trimTenant(ctx: Ctx, tenant: string) {
  trimTenantGpus(ctx, tenant);
  const { state } = ctx;
  const max = state.quotas.get(tenant)?.maxReplica;
  if (max === undefined) return;
  // Its replicas not on their way out already (ending, parked, or being given back).
  const mine: CorePod[] = [];
  for (const p of state.pods.values()) {
    if (tenantOf(p.func) !== tenant || p.state === "Terminating" || p.state === "Standby") continue;
    if (!p.reclaiming) mine.push(p);
  }
  let over = mine.length - max;
  if (over <= 0) return;
  const why = `above its tenant's max_replica ${max}`;
  const idle = (p: CorePod) => unitOf(state, p)?.idle.has(p.id) === true;
  const rank = (p: CorePod) => (idle(p) ? 0 : p.leasedBy && p.state === "Ready" ? 1 : 2);
  for (const p of mine.sort((a, b) => rank(a) - rank(b) || a.lastUsed - b.lastUsed)) {
    if (over <= 0) return;
    const r = rank(p);
    if (r === 2) return; // creating or resuming: trimmed once settled
    if (r === 1) reclaim(ctx, p, why);
    else retire(ctx, unitOf(state, p)!, p, why);
    over--;
  }
}

/**
 * Brings a tenant holding more GPUs than its quota's `max_gpu` (lowered since
 * its pods started) back to it: parked pods that kept their GPU memory end,
 * then idle pods retire (parked only in a tier that gives the GPU memory
 * back), then leased ones are reclaimed from their gateways (they end when
 * given back).
 */
function trimTenantGpus(ctx: Ctx, tenant: string) {
  const { state } = ctx;
  const max = state.quotas.get(tenant)?.maxGpu;
  if (max === undefined) return;
  // Its GPU pods not on their way out already (ending, or being given back).
  const mine: CorePod[] = [];
  let held = 0;
  for (const p of state.pods.values()) {
    if (tenantOf(p.func) !== tenant || p.state === "Terminating" || p.reclaiming) continue;
    if (!p.gpus.length || !willHold(p).vram) continue;
    mine.push(p);
    held += p.gpus.length;
  }
  if (held <= max) return;
  const why = `above its tenant's max_gpu ${max}`;
  const idle = (p: CorePod) => unitOf(state, p)?.idle.has(p.id) === true;
  const rank = (p: CorePod) =>
    p.state === "Standby" && p.parkingSince === undefined
      ? 0
      : idle(p)
      ? 1
      : p.leasedBy && p.state === "Ready"
      ? 2
      : 3;
  for (const p of mine.sort((a, b) => rank(a) - rank(b) || a.lastUsed - b.lastUsed)) {
    if (held <= max) return;
    const r = rank(p);
    if (r === 3) return; // creating, resuming or being parked: trimmed once settled
    if (r === 0) terminate(ctx, p, why);
    else if (r === 1) retire(ctx, unitOf(state, p)!, p, why, "vram");
    else reclaim(ctx, p, why);
    held -= p.gpus.length;
  }
}

/**
 * Retires idle pods above `minReplica` once unused for `scaleinTimeoutS`,
 * and trims versions above their `maxReplica` and tenants above their quota.
 */
export function scaleIn(ctx: Ctx) {
  const { state, now } = ctx;
  for (const tenant of state.quotas.keys()) trimTenant(ctx, tenant);
  for (const f of state.funcs.values()) {
    trimToMax(ctx, f);
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
}
