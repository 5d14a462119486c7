/**
 * Leases: which worker a gateway gets, who waits and for how long, what
 * happens to a worker given back, and which leases a gateway still holds.
 *
 * @module
 */
import {
  activeCurrent,
  addLessee,
  type Ctx,
  holds,
  liveCurrent,
  removeLessee,
  terminate,
  unitOf,
} from "./_accounting.ts";
import { scaleOutAdvice } from "./autoscale.ts";
import { failedSoon } from "./backoff.ts";
import { ensureCapacity, heldInTenant } from "./capacity.ts";
import { leaseTarget } from "./funcs.ts";
import { refuseUnschedulable } from "./schedulable.ts";
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
  if (refuseUnschedulable(ctx, f, e.reqId)) return;
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
  const shared = atLimit(ctx, f) && sharable(ctx, f, e.gateway);
  if (shared) return grant(ctx, f, shared, waiter, false);
  f.waiters.push(waiter);
  ensureCapacity(ctx, f);
}

/** Whether `f` may get no more replicas: then gateways share its workers. */
function atLimit(ctx: Ctx, f: CoreFunc): boolean {
  return liveCurrent(ctx.state, f) >= f.policy.maxReplica;
}

/** A Ready worker of `f`'s version leased by others than `gateway`, the least shared first. */
function sharable(ctx: Ctx, f: CoreFunc, gateway: string): CorePod | undefined {
  let best: CorePod | undefined;
  for (const id of f.pods) {
    const p = ctx.state.pods.get(id)!;
    if (
      p.state !== "Ready" || p.version !== f.version || !p.leasedBy || p.reclaiming ||
      holds(p, gateway)
    ) continue;
    if (!best || (p.sharedWith?.length ?? 0) < (best.sharedWith?.length ?? 0)) best = p;
  }
  return best;
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
  addLessee(pod, w.gateway, ctx.now);
  ctx.actions.push({
    type: "leaseGranted",
    reqId: w.reqId,
    gateway: w.gateway,
    podId: pod.id,
    endpoint: pod.endpoint!,
    coldStart,
    resumed,
    version: pod.version,
  });
}

/**
 * A gateway gives a worker back: to the next waiter, idle, parked, or
 * terminated (failed, its version drained, or reclaimed: for another tenant,
 * or above a lowered `maxReplica`) —
 * once no other gateway shares it.
 */
export function onReturn(ctx: Ctx, podId: string, gateway: string, failed: boolean) {
  const pod = ctx.state.pods.get(podId);
  if (!pod || !holds(pod, gateway)) return; // stale or foreign: ignore
  if (failed) {
    // One that failed soon after it came up counts as a failed start (a crash loop).
    if (pod.state === "Ready") failedSoon(ctx, pod, "its gateway found it failed");
    return terminate(ctx, pod, "returned as failed");
  }
  const f = takeBack(ctx, pod, gateway);
  if (f) settleUnleased(ctx, f, pod, false);
}

/**
 * Takes `gateway`'s lease of `pod` back: the pod's function when no other
 * gateway shares it and it is to be settled; undefined when others still
 * use it, or it ended (its version drained, or it was being reclaimed).
 */
function takeBack(ctx: Ctx, pod: CorePod, gateway: string): CoreFunc | undefined {
  if (!removeLessee(pod, gateway)) return undefined; // others still use it
  pod.lastUsed = ctx.now;
  const f = unitOf(ctx.state, pod);
  if (!f) return void terminate(ctx, pod, "old version drained");
  if (pod.reclaiming) {
    const why = pod.reclaiming;
    delete pod.reclaiming;
    return void terminate(ctx, pod, why);
  }
  return f;
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
    if (pod.reclaiming && holds(pod, gateway)) {
      ctx.actions.push({
        type: "reclaimLease",
        gateway,
        podId: pod.id,
        reason: pod.reclaiming,
        repeat: true,
      });
    }
  }
  if (!leases) return;
  const held = new Set(leases);
  for (const id of held) {
    const pod = ctx.state.pods.get(id);
    if (pod && holds(pod, gateway)) continue;
    const f = pod && unitOf(ctx.state, pod);
    // Its function not known yet (a restart loads functions last): decided at a later beat.
    if (pod && !f && !ctx.state.funcs.has(pod.func)) continue;
    if (
      pod && f && pod.state === "Ready" && !pod.reclaiming &&
      (!pod.leasedBy || atLimit(ctx, f))
    ) {
      delete pod.unclaimedUntil; // claimed: its gateway kept it through the restart
      addLessee(pod, gateway, ctx.now); // shared, when another gateway holds it at max_replica
      f.idle.delete(id);
      continue;
    }
    // No longer this gateway's (taken back while it was silent, then parked, given to another
    // or ended): it takes no new call on it, and gives it back when its calls are done.
    ctx.actions.push({
      type: "reclaimLease",
      gateway,
      podId: id,
      reason: "no longer leased to this gateway",
      repeat: true,
    });
  }
  for (const pod of [...ctx.state.pods.values()]) {
    if (!holds(pod, gateway) || held.has(pod.id)) continue;
    if (ctx.now - (pod.leasedAt ?? 0) >= ctx.state.config.leaseSettleMs) {
      onReturn(ctx, pod.id, gateway, false);
    }
  }
}

/**
 * A Ready pod without a lease: hand it to a waiter (and, when `f` may grow no
 * more, to the waiters of other gateways too), scale it in, or keep it idle.
 */
export function settleUnleased(
  ctx: Ctx,
  f: CoreFunc,
  pod: CorePod,
  coldStart: boolean,
  resumed = false,
) {
  const w = f.waiters.shift();
  if (w) {
    grant(ctx, f, pod, w, coldStart, resumed);
    if (atLimit(ctx, f)) {
      f.waiters = f.waiters.filter((o) =>
        holds(pod, o.gateway) || (grant(ctx, f, pod, o, coldStart, resumed), false)
      );
    }
    return;
  }
  if (!coldStart && !resumed && activeCurrent(ctx.state, f) > f.policy.minReplica) {
    return retire(ctx, f, pod, "scaled in");
  }
  f.idle.add(pod.id);
}

/** Answers the waiters whose deadline has come with a timeout that says why. */
export function expireWaiters(ctx: Ctx) {
  const { state, now } = ctx;
  for (const f of state.funcs.values()) {
    // Waiters queue in arrival order, not by deadline: look at each.
    if (!f.waiters.some((w) => w.deadline <= now)) continue;
    const keep: Waiter[] = [];
    const held = f.noNodeFits ? heldInTenant(state, f, now) : "";
    const why = f.lastUnschedulable ? `; ${f.lastUnschedulable}${held}` : "";
    for (const w of f.waiters) {
      if (w.deadline > now) {
        keep.push(w);
        continue;
      }
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

/**
 * A gateway silent for `gatewayTimeoutMs` loses its leases, and its waiting
 * requests are answered: a worker granted to it later would be leased to no
 * one that heartbeats, and never taken back.
 */
export function reclaimSilentGateways(ctx: Ctx) {
  const { state, now } = ctx;
  const silent = [...state.gateways].filter(([, seen]) =>
    now - seen >= state.config.gatewayTimeoutMs
  ).map(([gw]) => gw);
  // All their waiters are answered before any of their workers comes back: one silent
  // gateway's worker must not go to another silent gateway's waiter, to be taken back at once.
  for (const gw of silent) {
    state.gateways.delete(gw);
    for (const f of state.funcs.values()) {
      if (!f.waiters.some((w) => w.gateway === gw)) continue;
      f.waiters = f.waiters.filter((w) => {
        if (w.gateway !== gw) return true;
        ctx.actions.push({
          type: "leaseFailed",
          reqId: w.reqId,
          code: "timeout",
          message: `Cannot lease worker for ${f.id}: gateway ${gw} stopped sending heartbeats`,
        });
        return false;
      });
    }
  }
  for (const gw of silent) {
    for (const pod of [...state.pods.values()]) {
      if (holds(pod, gw)) onSilentReturn(ctx, pod, gw);
    }
  }
}

/**
 * A silent gateway's lease, taken back. That gateway may be alive with calls
 * under way on the worker (stalled, or cut off from this scheduler alone):
 * it is neither scaled in nor parked at once (frozen under a call, the call
 * would wait out its answer timeout). As a restart's rebuilt pods do, it
 * waits `recoveryGraceMs` for a heartbeat of that gateway to claim it again,
 * then idles as one returned (given to a waiter, or scaled in after its
 * policy's `scalein_timeout`).
 */
function onSilentReturn(ctx: Ctx, pod: CorePod, gateway: string) {
  const f = takeBack(ctx, pod, gateway);
  if (!f) return;
  if (pod.state !== "Ready") return settleUnleased(ctx, f, pod, false); // as any returned
  const grace = ctx.state.config.recoveryGraceMs;
  if (grace > 0) pod.unclaimedUntil = ctx.now + grace;
  else if (f.waiters.length) settleUnleased(ctx, f, pod, false);
  else f.idle.add(pod.id);
}
