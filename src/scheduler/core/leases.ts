/**
 * Leases: which worker a gateway gets, who waits and for how long, what
 * happens to a worker given back, and which leases a gateway still holds.
 *
 * @module
 */
import { activeCurrent, type Ctx, terminate, unitOf } from "./_accounting.ts";
import { scaleOutAdvice } from "./autoscale.ts";
import { ensureCapacity } from "./capacity.ts";
import { leaseTarget } from "./funcs.ts";
import { retire } from "./standby.ts";
import type { CoreFunc, CorePod, GatewayLoad, Waiter } from "./types.ts";

/**
 * A gateway asks for a worker of a function version: an idle one at once,
 * else it waits while capacity is found.
 */
export function onLease(
  ctx: Ctx,
  e: { reqId: string; func: string; gateway: string; deadline: number; version?: number },
) {
  ctx.state.gateways.set(e.gateway, ctx.now);
  const f = leaseTarget(ctx.state.units.get(e.func), e.version);
  if (!f) {
    ctx.actions.push({
      type: "leaseFailed",
      reqId: e.reqId,
      code: "not_found",
      message: `Cannot lease worker for ${e.func}: function does not exist`,
    });
    return;
  }
  const waiter: Waiter = {
    reqId: e.reqId,
    gateway: e.gateway,
    deadline: e.deadline,
    since: ctx.now,
  };
  for (const podId of f.idle) {
    grant(ctx, f, ctx.state.pods.get(podId)!, waiter, false);
    return;
  }
  f.waiters.push(waiter);
  ensureCapacity(ctx, f);
}

/** The requester gave up: it waits no more. */
export function onCancelLease(ctx: Ctx, funcId: string, reqId: string) {
  for (const f of ctx.state.units.get(funcId) ?? []) {
    f.waiters = f.waiters.filter((w) => w.reqId !== reqId);
  }
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

/**
 * A gateway gives a worker back: to the next waiter, idle, parked, or
 * terminated (failed, its version drained, or reclaimed for another tenant).
 */
export function onReturn(ctx: Ctx, podId: string, gateway: string, failed: boolean) {
  const pod = ctx.state.pods.get(podId);
  if (!pod || pod.leasedBy !== gateway) return; // stale or foreign: ignore
  pod.leasedBy = undefined;
  pod.lastUsed = ctx.now;
  const f = unitOf(ctx.state, pod);
  if (failed) return terminate(ctx, pod, "returned as failed");
  if (!f) return terminate(ctx, pod, "old version drained");
  if (pod.reclaiming) {
    pod.reclaiming = false;
    return terminate(ctx, pod, "reclaimed for a tenant below its fair share");
  }
  settleUnleased(ctx, f, pod, false);
}

/**
 * A gateway's heartbeat keeps its leases. When it lists the pods it holds,
 * claims those nobody else holds (after a scheduler restart the core knows
 * no leases), and takes back settled leases it no longer lists. When it
 * reports its load, the core may advise it to lease more (autoscale.ts).
 * Leases being reclaimed from it are asked for again (level-triggered: a
 * lost answer loses nothing).
 */
export function onGatewayHeartbeat(
  ctx: Ctx,
  gateway: string,
  leases?: string[],
  load?: GatewayLoad[],
) {
  ctx.state.gateways.set(gateway, ctx.now);
  if (load) scaleOutAdvice(ctx, gateway, load);
  for (const pod of ctx.state.pods.values()) {
    if (pod.reclaiming && pod.leasedBy === gateway) {
      ctx.actions.push({
        type: "reclaimLease",
        gateway,
        podId: pod.id,
        reason: "reclaimed for a tenant below its fair share",
        repeat: true,
      });
    }
  }
  if (!leases) return;
  const held = new Set(leases);
  for (const id of held) {
    const pod = ctx.state.pods.get(id);
    if (!pod || pod.state !== "Ready" || (pod.leasedBy && pod.leasedBy !== gateway)) continue;
    if (pod.leasedBy === gateway) continue;
    pod.leasedBy = gateway;
    pod.leasedAt = ctx.now;
    unitOf(ctx.state, pod)?.idle.delete(id);
  }
  for (const pod of [...ctx.state.pods.values()]) {
    if (pod.leasedBy !== gateway || held.has(pod.id)) continue;
    if (ctx.now - (pod.leasedAt ?? 0) >= ctx.state.config.leaseSettleMs) {
      onReturn(ctx, pod.id, gateway, false);
    }
  }
}

/** A Ready pod without a lease: hand it to a waiter, scale it in, or keep it idle. */
export function settleUnleased(
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

/** Answers the waiters whose deadline has come with a timeout that says why. */
export function expireWaiters(ctx: Ctx) {
  const { state, now } = ctx;
  for (const f of state.funcs.values()) {
    if (!f.waiters.length || f.waiters[0].deadline > now) continue;
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

/** A gateway silent for `gatewayTimeoutMs` loses its leases. */
export function reclaimSilentGateways(ctx: Ctx) {
  const { state, now } = ctx;
  for (const [gw, seen] of state.gateways) {
    if (now - seen < state.config.gatewayTimeoutMs) continue;
    state.gateways.delete(gw);
    for (const pod of state.pods.values()) {
      if (pod.leasedBy === gw) onReturn(ctx, pod.id, gw, false);
    }
  }
}
