/**
 * The scheduler's decisions as one pure function:
 * `step(state, event, now) -> { state, actions }`. No I/O, no clock, no
 * randomness: the shell (and the simulator) feed it events with the time and
 * carry out the actions. For speed the state is owned by the core and updated
 * in place; the same events in the same order give the same actions.
 *
 * This file only dispatches. Each decision lives in the file named for it:
 *
 * | file          | decides                                                        |
 * | ------------- | -------------------------------------------------------------- |
 * | `leases.ts`   | who gets which worker, who waits, what a returned worker does  |
 * | `capacity.ts` | how many pods a function needs and where they come from        |
 * | `placement.ts`| which node fits a new pod (filter and score plugins)           |
 * | `schedulable.ts`| whether any node could ever hold a pod (its capacity)        |
 * | `eviction.ts` | which pods to give up when no node fits                        |
 * | `standby.ts`  | which tier a retired pod parks in; restore or start fresh      |
 * | `quota.ts`    | whether a tenant may run one more replica                      |
 * | `fairness.ts` | how a full pool is shared between tenants by weight            |
 * | `autoscale.ts`| when a gateway's queue time or in-flight tokens call for more  |
 * | `pods.ts`     | what agents report, and rebuilding from pod records            |
 * | `nodes.ts`    | node readiness (reports and heartbeats), lost nodes            |
 * | `funcs.ts`    | function versions (a traffic split; old ones drain), policies, removal |
 *
 * @module
 */
import type { Ctx } from "./_accounting.ts";
import { ensureAll, retryStarved, scaleIn, trimTenant } from "./capacity.ts";
import { onFuncRemove, onFuncUpdate } from "./funcs.ts";
import {
  expireWaiters,
  onCancelLease,
  onGatewayHeartbeat,
  onLease,
  onReturn,
  reclaimSilentGateways,
} from "./leases.ts";
import { expireSilentNodes, onNodeRemove, onNodeUpdate } from "./nodes.ts";
import {
  collectOrphans,
  onKillPod,
  onPodRecord,
  onPodStatus,
  onResumeRefused,
  settleUnclaimed,
} from "./pods.ts";
import { endOverdueReclaims, setTenantWeight } from "./fairness.ts";
import { setTenantLimits } from "./quota.ts";
import { applySnapshot } from "./snapshot.ts";
import type { CoreAction, CoreConfig, CoreEvent, CoreState } from "./types.ts";

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
      nodeTimeoutMs: config.nodeTimeoutMs ?? 10_000,
      leaseSettleMs: config.leaseSettleMs ?? 5_000,
      recoveryGraceMs: config.recoveryGraceMs ?? 5_000,
      podIdPrefix: config.podIdPrefix ?? "pod",
      fairShare: config.fairShare ?? true,
      reclaimGraceMs: config.reclaimGraceMs ?? 10_000,
      snapshotStart: config.snapshotStart ?? "auto",
    },
    nodes: new Map(),
    nodeList: [],
    funcs: new Map(),
    units: new Map(),
    pods: new Map(),
    gateways: new Map(),
    starved: new Set(),
    quotas: new Map(),
    weights: new Map(),
    podSeq: 0,
  };
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
    // Gateways: leases and heartbeats.
    case "lease":
      onLease(ctx, event);
      break;
    case "cancelLease":
      onCancelLease(ctx, event.func, event.reqId);
      break;
    case "return":
      onReturn(ctx, event.podId, event.gateway, event.failed ?? false);
      break;
    case "gatewayHeartbeat":
      onGatewayHeartbeat(ctx, event.gateway, event.leases, event.load);
      break;
    // Node agents and the store: pods, nodes.
    case "podStatus":
      onPodStatus(ctx, event.podId, event.state, event.endpoint, event.error, event);
      break;
    case "resumeRefused":
      onResumeRefused(ctx, event.podId, event.error);
      break;
    case "podRecord":
      onPodRecord(ctx, event.pod);
      break;
    case "killPod":
      onKillPod(ctx, event.podId);
      break;
    case "nodeUpdate":
      onNodeUpdate(ctx, event.node);
      break;
    case "nodeRemove":
      onNodeRemove(ctx, event.name);
      break;
    // Users: functions and tenant quotas.
    case "funcUpdate":
      onFuncUpdate(ctx, event.func);
      break;
    case "funcRemove":
      onFuncRemove(ctx, event.id);
      break;
    case "tenantQuota":
      setTenantLimits(state, event.tenant, event.limits);
      trimTenant(ctx, event.tenant); // a lowered max_replica holds for the pods it has
      retryStarved(ctx);
      break;
    case "tenantWeight":
      setTenantWeight(state, event.tenant, event.weight);
      retryStarved(ctx);
      break;
    // Time.
    case "snapshot":
      applySnapshot(state, event);
      break;
    case "nodesListed":
      expireSilentNodes(ctx);
      break;
    case "tick":
      onTick(ctx);
      break;
  }
  return { state, actions: ctx.actions };
}

/** What the passing of time decides, in this order. */
function onTick(ctx: Ctx) {
  expireSilentNodes(ctx);
  expireWaiters(ctx);
  reclaimSilentGateways(ctx);
  endOverdueReclaims(ctx);
  settleUnclaimed(ctx);
  scaleIn(ctx);
  collectOrphans(ctx);
  ensureAll(ctx);
}
