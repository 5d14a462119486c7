/**
 * Scaling on the signals that matter for model servers, beside the gateway's
 * own `wait_ratio`: how long calls wait in a gateway's queue
 * (`scaleout_policy.queue_ms`) and how many tokens its in-flight calls asked
 * for per worker (`scaleout_policy.inflight_tokens`). Gateways report these
 * in their heartbeats; the core answers a gateway under pressure with advice
 * to lease more workers of that function version.
 *
 * @module
 */
import { activeCurrent, type Ctx, liveCurrent } from "./_accounting.ts";
import { leaseTarget } from "./funcs.ts";
import type { CorePolicy, GatewayLoad } from "./types.ts";
import { workersForTokens } from "../../model/versions.ts";

/**
 * How many more workers one gateway's load calls for: one when a queued call
 * has waited `queueMs`; enough for `inflightTokens` per worker, but no more
 * than one a call (a call runs on one worker: one asking for a million tokens
 * would otherwise have started `max_replica` of them, all but one idle).
 */
export function extraWorkers(
  policy: Pick<CorePolicy, "queueMs" | "inflightTokens">,
  load: Pick<GatewayLoad, "queued" | "waitMs" | "inflight" | "inflightTokens" | "workers">,
): number {
  let n = 0;
  if (policy.queueMs !== undefined && load.queued > 0 && load.waitMs >= policy.queueMs) n = 1;
  if (policy.inflightTokens !== undefined && load.inflightTokens > 0) {
    const want = workersForTokens(
      load.inflightTokens,
      policy.inflightTokens,
      load.inflight + load.queued,
    );
    n = Math.max(n, want - load.workers);
  }
  return n;
}

/**
 * A gateway reported `load`: advises it to lease the workers its load calls
 * for, within `maxReplica` (idle pods count: they are leased at once). No
 * advice while a lease of that version already waits for a pod.
 */
export function scaleOutAdvice(ctx: Ctx, gateway: string, load: readonly GatewayLoad[]) {
  for (const l of load) {
    const f = leaseTarget(ctx.state.units.get(l.func), l.version);
    if (!f || f.version !== l.version || f.waiters.length > 0) continue;
    const want = extraWorkers(f.policy, l);
    if (want <= 0) continue;
    // Idle pods are leased at once, parked ones resumed: room as much as pods not yet made.
    const live = liveCurrent(ctx.state, f);
    const room = f.idle.size + (live - activeCurrent(ctx.state, f)) +
      Math.max(0, f.policy.maxReplica - live);
    const workers = Math.min(want, room);
    if (workers > 0) {
      ctx.actions.push({ type: "scaleOut", gateway, func: f.func, version: f.version, workers });
    }
  }
}
