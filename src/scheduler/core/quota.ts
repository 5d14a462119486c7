/**
 * Tenant quotas: whether one more replica of a function stays within its
 * tenant's `max_replica` and `max_gpu`, and which pod of the same tenant to
 * give up to make room.
 *
 * @module
 */
import { activeCurrent, type Ctx, terminate } from "./_accounting.ts";
import { retire, willHold } from "./standby.ts";
import type { CoreFunc, CorePod, CoreState, TenantLimits } from "./types.ts";

/** The tenant of a function or pod id `tenant/namespace/name`. */
export const tenantOf = (funcId: string): string => funcId.slice(0, funcId.indexOf("/"));

/** The `tenant/namespace/` a function id starts with. */
const namespacePrefix = (funcId: string): string =>
  funcId.slice(0, funcId.indexOf("/", funcId.indexOf("/") + 1) + 1);

/**
 * `ids` (functions of `funcId`'s tenant) as a refusal of `funcId` may name
 * them: those of its own namespace by name, the others only counted. Its
 * caller may call that namespace and may be kept out of the tenant's others
 * (a namespace's key), whose function names are not its to learn.
 */
export function namedForCaller(funcId: string, ids: readonly string[]): string[] {
  const own = namespacePrefix(funcId);
  const named = ids.filter((id) => id.startsWith(own));
  const others = ids.length - named.length;
  if (others) named.push(`${others} function${others > 1 ? "s" : ""} of its other namespaces`);
  return named;
}

/** Sets a tenant's limits; no limit at all removes the entry. */
export function setTenantLimits(state: CoreState, tenant: string, limits: TenantLimits) {
  if (limits.maxGpu === undefined && limits.maxReplica === undefined) state.quotas.delete(tenant);
  else state.quotas.set(tenant, { ...limits });
}

/** Which of a tenant's limits one more replica would break, and a message saying so. */
export interface QuotaBlock {
  limit: "max_replica" | "max_gpu";
  /** The limit's value. */
  quota: number;
  message: string;
}

/**
 * Why one more replica of `f` (resuming `parked`, when there is one) would
 * break its tenant's quota, or undefined when it would not.
 */
export function quotaBlock(
  state: CoreState,
  f: CoreFunc,
  parked?: CorePod,
): QuotaBlock | undefined {
  const tenant = tenantOf(f.id);
  const q = state.quotas.get(tenant);
  if (!q) return undefined;
  let replicas = 0;
  let gpus = 0;
  for (const pod of state.pods.values()) {
    if (pod.state === "Terminating" || tenantOf(pod.func) !== tenant) continue;
    if (pod.state !== "Standby") replicas++;
    // A pod being parked counts as what its tier keeps: it leaves service for that.
    if (willHold(pod).vram) gpus += pod.gpus.length;
  }
  // Resuming a pod still being parked: counted above as what its tier keeps, so as that.
  const moreGpus = parked ? (willHold(parked).vram ? 0 : parked.gpus.length) : f.demand.gpuCount;
  if (q.maxReplica !== undefined && replicas + 1 > q.maxReplica) {
    return {
      limit: "max_replica",
      quota: q.maxReplica,
      message: `tenant ${tenant} is at its max_replica quota (${q.maxReplica} running` +
        `${keptByMinimum(state, f.func, tenant)})`,
    };
  }
  if (q.maxGpu !== undefined && moreGpus > 0 && gpus + moreGpus > q.maxGpu) {
    return {
      limit: "max_gpu",
      quota: q.maxGpu,
      message:
        `tenant ${tenant} would exceed its max_gpu quota (${gpus} of ${q.maxGpu} GPU(s) held, ${moreGpus} more needed)`,
    };
  }
  return undefined;
}

/**
 * How many of a tenant's replicas its functions' `min_replica` keeps, and
 * whose (the first three by count of those in `funcId`'s namespace, the
 * rest counted: {@linkcode namedForCaller}), for the refusal of `funcId`: a
 * tenant whose minimums fill its `max_replica` has no room for its other
 * functions, and nothing to free for them; empty when no minimum keeps one.
 */
function keptByMinimum(state: CoreState, funcId: string, tenant: string): string {
  const own = namespacePrefix(funcId);
  const kept: [string, number][] = [];
  let elsewhere = 0;
  let total = 0;
  for (const g of state.funcs.values()) {
    if (tenantOf(g.id) !== tenant || g.policy.minReplica === 0) continue;
    const n = Math.min(activeCurrent(state, g), g.policy.minReplica);
    if (n === 0) continue;
    total += n;
    if (g.id.startsWith(own)) kept.push([g.id, n]);
    else elsewhere += n;
  }
  if (!total) return "";
  kept.sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1));
  const whose = kept.slice(0, 3).map(([id, n]) => `${id} ${n}`);
  if (kept.length > 3) whose.push(`${kept.length - 3} more`);
  if (elsewhere) whose.push(`${elsewhere} by functions of its other namespaces`);
  return `; min_replica keeps ${total} of them: ${whose.join(", ")}`;
}

/**
 * Makes room within a tenant's quota where `block` says it is short: retires
 * the least recently used idle pod of another function of the same tenant
 * that is above its `minReplica` (for `max_gpu`, one holding GPUs), else,
 * for `max_gpu` only, terminates a parked pod that kept its GPU memory (a
 * parked pod is no replica: ending one frees nothing for `max_replica`).
 * Whether it freed something.
 */
export function freeTenantPod(ctx: Ctx, f: CoreFunc, block: QuotaBlock): boolean {
  const tenant = tenantOf(f.id);
  const gpu = block.limit === "max_gpu";
  let victim: CorePod | undefined;
  let owner: CoreFunc | undefined;
  for (const g of ctx.state.funcs.values()) {
    if (g === f || tenantOf(g.id) !== tenant || g.idle.size === 0) continue;
    if (activeCurrent(ctx.state, g) <= g.policy.minReplica) continue;
    for (const id of g.idle) {
      const p = ctx.state.pods.get(id)!;
      if (gpu && !(p.held.vram && p.gpus.length)) continue;
      if (!victim || p.lastUsed < victim.lastUsed) (victim = p, owner = g);
    }
  }
  if (victim && owner) {
    // For max_gpu, not parked in a tier that keeps its GPU memory (that would free nothing, and
    // the next idle pod would be parked too, and the next).
    retire(
      ctx,
      owner,
      victim,
      `freed for ${f.id} within the tenant's quota`,
      gpu ? "vram" : undefined,
    );
    return true;
  }
  if (!gpu) return false;
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
