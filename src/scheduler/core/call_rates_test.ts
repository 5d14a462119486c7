import assert from "node:assert/strict";
import { CallRates } from "./call_rates.ts";

Deno.test("ten gateways, one asked at the rate: the nine idle hold a twentieth of it, not a third", () => {
  const rates = new CallRates(10_000);
  rates.setQuota("t", { max_calls_per_s: 1 });
  for (let g = 1; g < 10; g++) rates.heartbeat(`gw${g}`, [], 0);
  const [busy] = rates.heartbeat("gw0", [{ tenant: "t", calls: 2 }], 0).shares;
  // Weights: its 2 calls and a floor of a twentieth of the mean (0.01) each.
  assert.ok(Math.abs(busy.perS - 2.01 / 2.1) < 1e-9, JSON.stringify(busy));
  assert.ok(busy.perS > 0.95);
  // All idle: alike.
  const [idle] = rates.heartbeat("gw0", [], 0).shares;
  assert.ok(Math.abs(idle.perS - 0.1) < 1e-9, JSON.stringify(idle));
  assert.equal(idle.burst, 1);
});

Deno.test("a gateway not heard for the timeout drops out of the shares; a quota without a rate has none", () => {
  const clock = { now: 0 };
  const rates = new CallRates(3000);
  rates.setQuota("t", { max_calls_per_s: 10, max_call_burst: 10 });
  rates.setQuota("u", { max_replica: 2 });
  rates.heartbeat("a", [{ tenant: "t", calls: 10 }], clock.now);
  clock.now = 2000;
  const both = rates.heartbeat("b", [{ tenant: "t", calls: 10 }], clock.now);
  assert.equal(both.gateways, 2);
  assert.ok(Math.abs(both.shares[0].perS - 5) < 1e-9);
  assert.deepEqual(both.shares.map((s) => s.tenant), ["t"], "u has no rate");
  clock.now = 5500; // a: silent since 0
  const alone = rates.heartbeat("b", [{ tenant: "t", calls: 10 }], clock.now);
  assert.equal(alone.gateways, 1);
  assert.deepEqual(alone.shares, [{ tenant: "t", perS: 10, burst: 10 }]);
  // The rate taken away (or the tenant gone): no share.
  rates.setQuota("t", undefined);
  assert.deepEqual(rates.heartbeat("b", [], clock.now).shares, []);
  // Bad figures from a peer count for nothing.
  rates.setQuota("t", { max_calls_per_s: 10 });
  const odd = rates.heartbeat(
    "b",
    [{ tenant: "t", calls: -5 }, { tenant: "t", calls: NaN }],
    clock.now,
  );
  assert.deepEqual(odd.shares, [{ tenant: "t", perS: 10, burst: 10 }]);
});
