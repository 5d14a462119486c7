/**
 * A crash loop's back-off: a function version whose pods keep failing to
 * start (or fail soon after they came up) gets no new one for a while, the
 * wait doubling with each failure, as Kubernetes' CrashLoopBackOff does.
 *
 * @module
 */
import { type Ctx, unitOf } from "./_accounting.ts";
import type { CoreFunc, CorePod, LeaseFailure } from "./types.ts";
import { splitOutput } from "../../model/cluster.ts";

/**
 * The wait before starting a pod of a version again after its first failed
 * start; doubled at each failure in a row, up to {@linkcode START_BACKOFF_MAX_MS}.
 */
export const START_BACKOFF_MS = 1000;
export const START_BACKOFF_MAX_MS = 60_000;

/**
 * A pod of its version that has served this long (ms) ends a run of failed
 * starts; one that fails sooner is counted as a failed start (a worker that
 * dies a second after it came up was restarted every second and a half).
 */
export const START_STABLE_MS = 60_000;

/**
 * Counts the failure of ready `pod` as a failed start of its version when it
 * came within {@linkcode START_STABLE_MS} of its coming up (`why`: how it
 * failed): the first of a run is replaced at once, the next waits.
 */
export function failedSoon(ctx: Ctx, pod: CorePod, why: string): void {
  const f = unitOf(ctx.state, pod);
  if (!f || pod.readyAt === undefined || ctx.now - pod.readyAt >= START_STABLE_MS) return;
  const s = Math.round((ctx.now - pod.readyAt) / 1000);
  const { text, output } = splitOutput(why);
  const message = `Worker ${pod.id} of ${pod.func} failed ${s} s after it started: ${text}`;
  startFailed(ctx, f, message, "worker_failed", true, output);
}

/**
 * Counts a failed start of `f`'s pods into its back-off (the run starting
 * over when a pod of it served {@linkcode START_STABLE_MS} since the last
 * failure); returns the wait before the next start. A pod that failed
 * `early`, after it came up, starting a run is replaced at once (one crash
 * is no loop: a call after it starts a worker, as before); the next waits.
 */
export function startFailed(
  ctx: Ctx,
  f: CoreFunc,
  message: string,
  code: LeaseFailure,
  early = false,
  output?: string,
): number {
  const b = f.startBackoff;
  if (code === "unavailable") {
    // A crash loop's wait under way stands as it is, its worker's failure and output with it:
    // callers are told of the loop, not of the outage that came on top of it.
    if (b && !b.transient && ctx.now < b.until) return b.until - ctx.now;
    // The platform's failure (a store or an engine out of reach), not the worker's: no crash
    // loop grows with it (every call during an outage would add one, and the function would wait
    // out a minute's back-off after the outage ended). A second.
    const until = ctx.now + START_BACKOFF_MS;
    f.startBackoff = {
      ...b,
      failures: b?.failures ?? 0,
      until,
      message,
      code,
      output,
      transient: true,
    };
    return until - ctx.now;
  }
  const stable = b?.upSince !== undefined && ctx.now - b.upSince >= START_STABLE_MS;
  const failures = b && !stable ? b.failures + 1 : 1;
  // 1 s after the first failure, then 2, 4, ...; a run whose first worker was replaced at once
  // waits 1 s after its second.
  const freeFirst = failures === 1 ? early : b!.freeFirst === true;
  const waitMs = early && failures === 1
    ? 0
    : Math.min(START_BACKOFF_MAX_MS, START_BACKOFF_MS * 2 ** (failures - (freeFirst ? 2 : 1)));
  f.startBackoff = {
    failures,
    until: ctx.now + waitMs,
    message,
    code,
    output,
    ...(freeFirst ? { freeFirst } : {}),
  };
  return waitMs;
}

/** The failed starts in a row that `f`'s back-off counts, for callers; none for the platform's. */
export function failedStarts(f: CoreFunc): number | undefined {
  const b = f.startBackoff;
  return b && !b.transient ? b.failures : undefined;
}
