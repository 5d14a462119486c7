import assert from "node:assert/strict";
import { fairnessTraces, runFairness } from "./fairness.ts";

Deno.test("the fair-sharing case: a burst 10x its share leaves the steady tenant's p99 TTFB within 20% of alone", () => {
  const r = runFairness();
  const alone = r.alone.tenants.steady;
  const fair = r.fair.tenants.steady;
  const unfair = r.unfair.tenants.steady;
  assert.ok(
    r.burstRate / r.shareRate > 9.5,
    `the burst is ${r.burstRate / r.shareRate}x its share`,
  );
  assert.equal(alone.rejected, 0);
  assert.equal(fair.rejected, 0, "with fair sharing no steady call is refused");
  assert.ok(
    fair.ttfbP99Ms <= 1.2 * alone.ttfbP99Ms,
    `steady p99 ${fair.ttfbP99Ms} ms with the burst, ${alone.ttfbP99Ms} ms alone`,
  );
  assert.ok(r.fair.reclaims > 0, "leases were reclaimed from the burst");
  // Without fair sharing the same burst starves the steady tenant: the case shows a difference.
  assert.ok(
    unfair.rejected > 0.1 * unfair.requests,
    `${unfair.rejected} of ${unfair.requests} refused`,
  );
  assert.equal(r.unfair.reclaims, 0);
  // The burst still gets at least its share.
  const burstS = (r.burstToMs - r.burstFromMs) / 1000;
  assert.ok(r.fair.tenants.burst.served / burstS >= r.shareRate, "the burst is served its share");
});

Deno.test("fairnessTraces() is seeded: the same options give the same calls", () => {
  const a = fairnessTraces({
    seed: 3,
    durationMs: 120_000,
    burstFromMs: 10_000,
    burstToMs: 60_000,
  });
  const b = fairnessTraces({
    seed: 3,
    durationMs: 120_000,
    burstFromMs: 10_000,
    burstToMs: 60_000,
  });
  assert.deepEqual(a.shared.times, b.shared.times);
  assert.ok(a.shared.times.length > a.alone.times.length);
  assert.ok(a.shared.times.every((t, i) => i === 0 || a.shared.times[i - 1] <= t), "sorted");
});
