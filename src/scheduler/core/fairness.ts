/**
 * Fair sharing of a full pool between tenants, by weight (`tenant.spec.weight`,
 * default 1): weighted max-min fairness on each tenant's dominant share (the
 * largest of its share of the cluster's CPU, memory and GPU memory, as in
 * DRF). The pool is shared among the tenants *in the running*: those with a
 * pod that serves (not parked) or a lease waiting. While there is room
 * nothing here applies: any tenant may use it. Once calls wait because the
 * pool is full:
 *
 * - waiting leases are served tenant by tenant, the tenant holding least per
 *   unit of weight first; within a tenant by the function's `priority`
 *   (`high`, `normal`, `batch`), then oldest first;
 * - an idle or parked pod of another tenant is evicted only when that tenant
 *   holds more per weight than the requesting tenant will with its new pod;
 *   a parked pod also when the requesting tenant stays within its fair share
 *   (parked pods are a cache: a tenant that only has parked pods is not in
 *   the running, and keeps them only while nobody within its share needs
 *   the room);
 * - a tenant that stays within its fair share even with its new pod may
 *   reclaim a *leased* worker from a tenant above its share: the gateway
 *   holding it takes no new calls on it and gives it back when its calls are
 *   done, and the pod is then terminated to make room — after
 *   `reclaimGraceMs` whether its calls are done or not.
 *
 * So a tenant's burst can take whatever is free, but cannot starve a tenant
 * that stays within its share.
 *
 * @module
 */
import { type Ctx, heldMemMB, lessees, terminate } from "./_accounting.ts";
import { tenantOf } from "./quota.ts";
import type { CoreFunc, CorePod, CoreState, PodDemand, Priority } from "./types.ts";

/** Order of priorities within a tenant: lower first. */
export const PRIORITY_RANK: Readonly<Record<Priority, number>> = { high: 0, normal: 1, batch: 2 };

/** The cluster's resources, over the ready nodes. */
export interface Totals {
  cpu: number;
  memMB: number;
  vramMB: number;
}

/** What fairness decides by: each tenant's dominant share of the pool, and the weights. */
export interface FairView {
  totals: Totals;
  /** What each tenant's pods hold, each resource summed over them. */
  held: Map<string, Totals>;
  /**
   * Each tenant's dominant share of the pool (0..1): the largest of its
   * shares of the CPU, the memory and the GPU memory.
   */
  usage: Map<string, number>;
  /** The tenants in the running: with a pod that serves (not parked) or a lease waiting. */
  active: ReadonlySet<string>;
  weights: ReadonlyMap<string, number>;
}

/** The resources of the ready nodes. */
export function clusterTotals(state: CoreState): Totals {
  const t: Totals = { cpu: 0, memMB: 0, vramMB: 0 };
  for (const n of state.nodeList) {
    if (!n.ready) continue;
    t.cpu += n.cpuTotal;
    t.memMB += n.memTotalMB;
    t.vramMB += n.gpuSummary.totalMB;
  }
  return t;
}

const part = (used: number, total: number) => (total > 0 ? used / total : 0);

/** The dominant share of pool `t` that `held` and `extra` together are. */
function dominant(t: Totals, held?: Totals, extra?: Totals): number {
  return Math.max(
    part((held?.cpu ?? 0) + (extra?.cpu ?? 0), t.cpu),
    part((held?.memMB ?? 0) + (extra?.memMB ?? 0), t.memMB),
    part((held?.vramMB ?? 0) + (extra?.vramMB ?? 0), t.vramMB),
  );
}

/** What a new pod with `d` would hold. */
export function demandAmounts(d: PodDemand): Totals {
  return { cpu: d.cpu, memMB: d.memMB, vramMB: d.gpuCount * d.vramMB };
}

/** The dominant share of the pool a new pod with `d` would hold. */
export function demandShare(d: PodDemand, t: Totals): number {
  return dominant(t, demandAmounts(d));
}

/** A tenant's weight. */
export function weightOf(weights: ReadonlyMap<string, number>, tenant: string): number {
  return weights.get(tenant) ?? 1;
}

/** Sets a tenant's weight (1 removes the entry). */
export function setTenantWeight(state: CoreState, tenant: string, weight: number) {
  if (weight === 1 || !(weight > 0)) state.weights.delete(tenant);
  else state.weights.set(tenant, weight);
}

/** Each tenant's dominant share now, and the weight of the tenants in the running. */
export function fairView(state: CoreState): FairView {
  const totals = clusterTotals(state);
  const held = new Map<string, Totals>();
  const active = new Set<string>();
  for (const p of state.pods.values()) {
    if (p.state === "Terminating") continue;
    const t = tenantOf(p.func);
    let h = held.get(t);
    if (!h) held.set(t, h = { cpu: 0, memMB: 0, vramMB: 0 });
    // What its node still spends on it (a parked pod: what its tier keeps).
    if (p.held.cpu) h.cpu += p.cpu;
    h.memMB += heldMemMB(p);
    if (p.held.vram) h.vramMB += p.gpus.length * p.vramChargeMB;
    if (p.state !== "Standby") active.add(t);
  }
  for (const id of state.starved) active.add(tenantOf(id));
  const usage = new Map<string, number>();
  for (const [t, h] of held) usage.set(t, dominant(totals, h));
  return { totals, held, usage, active, weights: state.weights };
}

/**
 * The fair share of the pool `tenant` is due among the tenants in the
 * running, itself and `requester` (a tenant asking now) included.
 */
export function fairShare(v: FairView, tenant: string, requester?: string): number {
  let total = 0;
  for (const t of v.active) total += weightOf(v.weights, t);
  for (const t of new Set([tenant, requester ?? tenant])) {
    if (!v.active.has(t)) total += weightOf(v.weights, t);
  }
  return weightOf(v.weights, tenant) / total;
}

/** `tenant`'s dominant share with `extra` more (a new pod's amounts). */
function shareWith(v: FairView, tenant: string, extra?: Totals): number {
  return extra ? dominant(v.totals, v.held.get(tenant), extra) : v.usage.get(tenant) ?? 0;
}

/** What `tenant` holds per unit of weight, with `extra` more. */
function perWeight(v: FairView, tenant: string, extra?: Totals): number {
  return shareWith(v, tenant, extra) / weightOf(v.weights, tenant);
}

/**
 * Whether an idle or `parked` pod of tenant `victim` may be evicted to make
 * room for a pod holding `cost` (its amounts) of tenant `requester`:
 * always within a tenant; across tenants when the victim's tenant holds more
 * per weight than the requester will with its new pod, or, for a parked
 * pod, when the requester stays within its fair share with it.
 */
export function mayEvict(
  v: FairView,
  requester: string,
  victim: string,
  cost: Totals,
  parked = false,
): boolean {
  if (requester === victim || perWeight(v, victim) > perWeight(v, requester, cost)) return true;
  return parked && withinShare(v, requester, cost);
}

const EPS = 1e-9;

/** Whether `tenant` stays within its fair share with `cost` more. */
function withinShare(v: FairView, tenant: string, cost: Totals): boolean {
  return shareWith(v, tenant, cost) <= fairShare(v, tenant) + EPS;
}

/**
 * Whether `requester`, still within its fair share with a new pod costing
 * `cost` (its amounts), may reclaim a leased worker of tenant `victim`, which holds more
 * than its own fair share.
 */
export function mayReclaim(v: FairView, requester: string, victim: string, cost: Totals): boolean {
  if (requester === victim) return false;
  return withinShare(v, requester, cost) &&
    (v.usage.get(victim) ?? 0) > fairShare(v, victim, requester) + EPS;
}

/**
 * The order in which waiting function versions are served: the tenant
 * holding least per weight first, then the function's priority; otherwise
 * as given (the order they began to wait in). Sorts `units` in place.
 */
export function fairOrder(v: FairView, units: CoreFunc[]): CoreFunc[] {
  const key = (f: CoreFunc) => perWeight(v, tenantOf(f.func));
  return units.sort((a, b) => key(a) - key(b) || priorityRank(a) - priorityRank(b));
}

/** A function version's priority as a rank (lower first). */
export const priorityRank = (f: CoreFunc): number => PRIORITY_RANK[f.policy.priority ?? "normal"];

/** Whether waiting `units` span tenants or priorities, so that their order matters. */
export function needsOrder(units: readonly CoreFunc[]): boolean {
  for (const f of units) {
    if (
      tenantOf(f.func) !== tenantOf(units[0].func) || priorityRank(f) !== priorityRank(units[0])
    ) {
      return true;
    }
  }
  return false;
}

/**
 * Asks the gateways holding `pod` (one, or several sharing it) to give it
 * back, for `reason`; it serves no new lease meanwhile, and ends once back.
 * `forced` (a reclaim for fair share): it ends `reclaimGraceMs` later
 * whether given back or not ({@linkcode endOverdueReclaims}).
 */
export function reclaim(ctx: Ctx, pod: CorePod, reason: string, forced = false) {
  if (pod.reclaiming || !pod.leasedBy) return;
  pod.reclaiming = reason;
  if (forced) pod.reclaimDeadline = ctx.now + ctx.state.config.reclaimGraceMs;
  for (const gateway of lessees(pod)) {
    ctx.actions.push({ type: "reclaimLease", gateway, podId: pod.id, reason });
  }
}

/**
 * Ends the pods reclaimed for fair share whose gateways still hold them past
 * their deadline: their calls are cut (the tenant above its share decides
 * how long its calls last, and would otherwise hold the pool for as long).
 */
export function endOverdueReclaims(ctx: Ctx) {
  for (const pod of ctx.state.pods.values()) {
    if (pod.reclaimDeadline === undefined || pod.reclaimDeadline > ctx.now) continue;
    delete pod.reclaimDeadline;
    if (!pod.reclaiming || pod.state === "Terminating") continue;
    const why = `${pod.reclaiming}; its calls did not end within ${
      Math.round(ctx.state.config.reclaimGraceMs / 1000)
    } s of the reclaim`;
    delete pod.reclaiming;
    terminate(ctx, pod, why);
  }
}
