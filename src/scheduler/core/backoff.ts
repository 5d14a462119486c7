/**
 * A crash loop's back-off: a function version whose pods keep failing to
 * start (or fail soon after they came up) gets no new one for a while, the
 * wait doubling with each failure, as Kubernetes' CrashLoopBackOff does.
 *
 * @module
 */
import type { Ctx } from "./_accounting.ts";
import type { CoreFunc, CorePod, LeaseFailure } from "./types.ts";

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

/** Whether ready `pod` failed within {@linkcode START_STABLE_MS} of coming up. */
export function failedEarly(ctx: Ctx, pod: CorePod): boolean {
  return pod.readyAt !== undefined && ctx.now - pod.readyAt < START_STABLE_MS;
}

/** Why a pod that failed soon after it came up counts as a failed start. */
export function earlyMessage(ctx: Ctx, pod: CorePod, why: string): string {
  const s = Math.round((ctx.now - pod.readyAt!) / 1000);
  return `Worker ${pod.id} of ${pod.func} failed ${s} s after it started: ${why}`;
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
): number {
  const b = f.startBackoff;
  const stable = b?.upSince !== undefined && ctx.now - b.upSince >= START_STABLE_MS;
  const failures = b && !stable ? b.failures + 1 : 1;
  const waitMs = early && failures === 1
    ? 0
    : Math.min(START_BACKOFF_MAX_MS, START_BACKOFF_MS * 2 ** (failures - 1));
  f.startBackoff = { failures, until: ctx.now + waitMs, message, code };
  return waitMs;
}
