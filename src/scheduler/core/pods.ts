/**
 * Pods as their node agents report them: a pod became ready, failed or is
 * gone; and pod records from the store, which rebuild the view after a
 * restart and say again what a lost write had asked for.
 *
 * @module
 */
import {
  addPod,
  ALL_HELD,
  type Ctx,
  releasePod,
  setHeld,
  terminate,
  unitOf,
} from "./_accounting.ts";
import { retryStarved } from "./capacity.ts";
import { settleUnleased } from "./leases.ts";
import { copyingHolds, learnReadyTime, parkDone, TIER_HOLDS } from "./standby.ts";
import { failedSoon, failedStarts, startFailed } from "./backoff.ts";
import type { CorePod, CorePodState, PodRecord } from "./types.ts";
import { splitOutput } from "../../model/cluster.ts";

/** A pod's agent reports it Ready, Failed or gone (Standby: a park the core decided is done). */
export function onPodStatus(
  ctx: Ctx,
  podId: string,
  status: "Ready" | "Standby" | "Failed" | "Terminated",
  endpoint?: string,
  error?: string,
  start: {
    startedFrom?: "fresh" | "snapshot";
    snapshotMs?: number;
    resumeMs?: number | null;
    code?: "unavailable";
    fromNode?: boolean;
  } = {},
) {
  const { state } = ctx;
  const pod = state.pods.get(podId);
  if (!pod) return;
  if (status === "Standby") {
    if (parkDone(ctx, pod)) retryStarved(ctx);
    return;
  }
  const f = unitOf(state, pod);
  if (status === "Ready") {
    if (pod.state !== "Creating" && pod.state !== "Resuming") return;
    const resumed = pod.state === "Resuming";
    if (resumed) setHeld(state, pod, ALL_HELD); // its GPU memory back on the GPU
    if (f) learnReadyTime(f, pod, ctx.now, start);
    pod.state = "Ready";
    pod.tier = undefined;
    delete pod.resumeFrom;
    delete pod.resumeUntimed;
    pod.endpoint = endpoint ?? pod.endpoint;
    pod.lastUsed = ctx.now;
    // A resume is no start: a worker that served before it was parked is no crash loop's if it
    // dies soon after (its fresh start's time holds).
    if (!resumed || pod.readyAt === undefined) pod.readyAt = ctx.now;
    if (!f) return terminate(ctx, pod, "old version drained");
    // It starts: a crash loop's run ends once it has served START_STABLE_MS.
    if (f.startBackoff) f.startBackoff.upSince ??= ctx.now;
    return settleUnleased(ctx, f, pod, !resumed, resumed);
  }
  const wasCreating = pod.state === "Creating";
  if (status === "Failed" && pod.state === "Ready") failedSoon(ctx, pod, error ?? "unknown error");
  if (status === "Failed") terminate(ctx, pod, "failed");
  releasePod(state, pod);
  if (status === "Failed" && wasCreating && f) {
    const code = start.code ?? "worker_failed";
    const { text, output } = splitOutput(error ?? "unknown error");
    const message = code !== "unavailable"
      ? `Worker ${podId} of ${pod.func} failed to start: ${text}`
      : start.fromNode
      ? `Cannot start a worker of ${pod.func}: ${text}`
      : `Cannot start a worker of ${pod.func}: the store refused its pod (${text})`;
    const waitMs = startFailed(ctx, f, message, code, false, output);
    for (const w of f.waiters) {
      ctx.actions.push({
        type: "leaseFailed",
        reqId: w.reqId,
        code,
        message,
        retryAfterS: Math.ceil(waitMs / 1000),
        failures: failedStarts(f),
        output,
      });
    }
    f.waiters = [];
    state.starved.delete(f.id);
  }
  retryStarved(ctx);
}

/**
 * The store refused the write that resumes `podId`: the pod is parked still,
 * and its function's waiting calls fail at once with `unavailable`, as when
 * the store refuses a new pod's record, and the same back-off follows (calls
 * meanwhile fail at once; none waits out its deadline for a resume that was
 * never asked of the node). Its agent may not have finished parking it (the
 * resume came first): it is taken for parking again, and keeps what a copy
 * holds until its agent or its record says it is parked.
 */
export function onResumeRefused(ctx: Ctx, podId: string, error: string) {
  const { state } = ctx;
  const pod = state.pods.get(podId);
  if (!pod || pod.state !== "Resuming") return;
  pod.state = "Standby";
  pod.since = ctx.now;
  pod.parkingSince = ctx.now; // what it holds: a resume's, as a park's, `copyingHolds`
  const f = unitOf(state, pod);
  if (!f) return retryStarved(ctx);
  const message = `Cannot resume worker ${podId} of ${pod.func}: the store refused it (${error})`;
  const waitMs = startFailed(ctx, f, message, "unavailable");
  for (const w of f.waiters) {
    ctx.actions.push({
      type: "leaseFailed",
      reqId: w.reqId,
      code: "unavailable",
      message,
      retryAfterS: Math.ceil(waitMs / 1000),
      failures: failedStarts(f),
    });
  }
  f.waiters = [];
  state.starved.delete(f.id);
  retryStarved(ctx);
}

/** Terminates a pod on request. */
export function onKillPod(ctx: Ctx, podId: string) {
  const pod = ctx.state.pods.get(podId);
  if (pod) terminate(ctx, pod, "killed by request");
}

/**
 * A pod record as the store has it. A pod the core knows: the agent's report
 * (Ready, Failed) is taken, and a desired state the core decided but the
 * record lacks (a write that was lost) is asked for again. A pod the core
 * does not know (after a restart): its accounting is rebuilt from the record.
 */
export function onPodRecord(ctx: Ctx, r: PodRecord) {
  const known = ctx.state.pods.get(r.id);
  if (!known) return recoverPod(ctx, r);
  if (r.revision !== undefined) {
    // Read before one already seen (a re-list that lagged the watch): nothing it says is news.
    if (known.seenRevision !== undefined && r.revision < known.seenRevision) return;
    known.seenRevision = r.revision;
  }
  if (known.state === "Terminating" && r.desired !== "Terminated") {
    ctx.actions.push({
      type: "terminatePod",
      podId: r.id,
      reason: "asked again: a write was lost",
    });
  } else if (known.state === "Standby" && r.desired !== "Standby") {
    ctx.actions.push({ type: "parkPod", podId: r.id, tier: known.tier! });
  } else if (known.state === "Resuming" && r.desired === "Standby") {
    ctx.actions.push({ type: "resumePod", podId: r.id, tier: known.tier! });
  } else if (known.parkingSince !== undefined && r.state === "Standby") {
    onPodStatus(ctx, r.id, "Standby");
  } else if (
    r.state === "Ready" && (known.state === "Creating" || (known.state === "Resuming" &&
      resumeReported(known, r)))
  ) {
    onPodStatus(ctx, r.id, "Ready", r.endpoint, undefined, r);
  } else if (r.state === "Failed") {
    onPodStatus(ctx, r.id, "Failed", undefined, r.error, { code: r.failCode, fromNode: true });
  }
}

/**
 * Whether Ready record `r` of Resuming pod `pod` is its agent's report of the
 * resume: that report clears the tier (a record still naming one is from
 * before the park: resumed before its agent reported it parked, its worker
 * still being dumped), and it is newer than what was seen when the resume
 * was decided (a record read before the park, delivered late by a re-list,
 * lacks the tier too).
 */
function resumeReported(pod: CorePod, r: PodRecord): boolean {
  return r.tier === undefined &&
    (r.revision === undefined || pod.resumeFrom === undefined || r.revision > pod.resumeFrom);
}

/**
 * The core state a pod record stands for, or undefined for a pod that is
 * over. The core counts a park or a resume from its decision, the agent's
 * record only once done: a Ready pod asked to park is parked (never handed
 * out while its agent freezes it), a parked pod asked to run is resuming
 * (it holds what its restore fills).
 */
export function recoveredState(r: PodRecord): CorePodState | undefined {
  if (r.state === "Failed" || r.state === "Terminated") return undefined;
  if (r.desired === "Terminated") return "Terminating";
  if (r.tier && r.desired === "Standby" && (r.state === "Ready" || r.state === "Standby")) {
    return "Standby";
  }
  // Ready with a tier still named: asked to run before its park was reported (a resume's Ready
  // clears the tier), so its worker may still be being parked: resuming.
  if (
    r.tier && r.desired === "Running" &&
    (r.state === "Standby" || r.state === "Resuming" || r.state === "Ready")
  ) {
    return "Resuming";
  }
  if (r.state === "Ready") return "Ready";
  return "Creating";
}

function recoverPod(ctx: Ctx, r: PodRecord) {
  const { state } = ctx;
  const recovered = recoveredState(r);
  if (!recovered) {
    // Over: make sure its record goes.
    if (r.desired !== "Terminated") {
      ctx.actions.push({ type: "terminatePod", podId: r.id, reason: `its record says ${r.state}` });
    }
    return;
  }
  const node = state.nodes.get(r.node);
  if (!node) {
    ctx.actions.push({
      type: "terminatePod",
      podId: r.id,
      reason: `node ${r.node} is unknown`,
      orphan: true,
    });
    return;
  }
  // Lost with its node (as when a node goes silent): not handed out, not counted, replaced;
  // charged until its node says it is gone, as a pod lost while this scheduler ran (nodes.ts).
  const lost = !node.ready;
  const podState = lost ? "Terminating" : recovered;
  const charge = r.gpus.length ? r.gpus[0].vramMB + node.contextOverheadMB : 0;
  // Parked by its record's report (being terminated, too); asked to park and not yet
  // reported: it holds all still (and what its park's copy takes).
  const parked = r.state === "Standby" && r.tier !== undefined &&
    (podState === "Standby" || podState === "Terminating");
  const parking = podState === "Standby" && !parked && r.tier !== undefined;
  const placement = {
    id: r.id,
    func: r.func,
    version: r.version,
    node: r.node,
    cpu: r.cpu,
    memMB: r.memMB,
    gpus: r.gpus,
  };
  const pod = addPod(
    state,
    placement,
    podState,
    charge,
    ctx.now,
    parked
      ? TIER_HOLDS[r.tier!]
      : parking || podState === "Resuming"
      ? copyingHolds(r, r.tier!)
      : ALL_HELD,
  );
  pod.endpoint = r.endpoint;
  pod.seenRevision = r.revision;
  if (podState === "Standby" || podState === "Resuming") pod.tier = r.tier;
  if (podState === "Standby" && !parked) pod.parkingSince = ctx.now;
  // Its resume's Ready is a record newer than this one; when it began is not known.
  if (podState === "Resuming") (pod.resumeFrom = r.revision, pod.resumeUntimed = true);
  const f = unitOf(state, r);
  if (podState === "Terminating") {
    const reason = lost ? `node ${r.node} missed its heartbeats` : "terminating before restart";
    ctx.actions.push({ type: "terminatePod", podId: r.id, reason });
  } else if (!f && state.funcs.has(r.func)) {
    terminate(ctx, pod, "old version drained");
  } else if (podState === "Ready" && state.config.recoveryGraceMs > 0) {
    // A gateway may be using it: it waits for the gateways' heartbeats (settleUnclaimed).
    pod.unclaimedUntil = ctx.now + state.config.recoveryGraceMs;
  } else if (f && podState === "Ready") settleUnleased(ctx, f, pod, true);
  // A pod whose function is not known yet waits for it (restart order is
  // nodes, pods, functions); the tick collects it if the function never comes.
}

/**
 * Ready pods rebuilt after a restart that no gateway claimed within the
 * grace: unleased now (handed to a waiter, or idle).
 */
export function settleUnclaimed(ctx: Ctx) {
  for (const pod of ctx.state.pods.values()) {
    if (pod.unclaimedUntil === undefined || pod.unclaimedUntil > ctx.now) continue;
    delete pod.unclaimedUntil;
    const f = unitOf(ctx.state, pod);
    if (pod.state !== "Ready" || pod.leasedBy || !f) continue;
    pod.lastUsed = ctx.now;
    // A warm worker for a waiting call; else idle until scale-in's timeout, as one returned.
    if (f.waiters.length) settleUnleased(ctx, f, pod, false);
    else f.idle.add(pod.id);
  }
}

/** Pods whose function no longer exists are terminated. */
export function collectOrphans(ctx: Ctx) {
  for (const pod of ctx.state.pods.values()) {
    if (!ctx.state.funcs.has(pod.func)) terminate(ctx, pod, "function no longer exists");
  }
}
