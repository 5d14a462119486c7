import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import type { TenantQuota } from "../model/schemas.ts";
import { errorAnswer } from "./middleware/errors.ts";
import { CallLimiter } from "./call_limits.ts";

/** A limiter over `quotas` on a clock the test moves. */
function limiter(quotas: Record<string, TenantQuota>) {
  const clock = { now: 1000 };
  const l = new CallLimiter((t) => quotas[t] ?? {}, () => clock.now);
  const target = (tenant: string) => ({ tenant, namespace: "n", func: "f" });
  const admitted = (tenant: string, n: number) => {
    let ok = 0;
    for (let i = 0; i < n; i++) {
      try {
        l.admit(target(tenant));
        ok++;
      } catch (err) {
        if (!(err instanceof InferxError) || err.code !== "quota_exceeded") throw err;
      }
    }
    return ok;
  };
  return { l, clock, target, admitted };
}

Deno.test("a tenant's rate: its burst at once, then the rate, refill by the elapsed time", () => {
  const { clock, admitted } = limiter({ t: { max_calls_per_s: 10, max_call_burst: 5 } });
  assert.equal(admitted("t", 20), 5, "the burst");
  clock.now += 100; // a tenth of a second: one call
  assert.equal(admitted("t", 5), 1);
  clock.now += 1000; // a second: ten, but never more than the burst held
  assert.equal(admitted("t", 20), 5);
  clock.now += 350;
  assert.equal(admitted("t", 20), 3);
});

Deno.test("without max_call_burst, a second's worth (one at least); no rate, no limit", () => {
  const { admitted } = limiter({ a: { max_calls_per_s: 4 }, b: { max_calls_per_s: 0.2 }, c: {} });
  assert.equal(admitted("a", 10), 4);
  assert.equal(admitted("b", 10), 1);
  assert.equal(admitted("c", 1000), 1000);
  assert.equal(admitted("nobody", 1000), 1000);
});

Deno.test("a refusal is a 429 naming the quota, with the wait in seconds and in milliseconds", () => {
  const { l, target } = limiter({ t: { max_calls_per_s: 4, max_call_burst: 1 } });
  l.admit(target("t"));
  const err = (() => {
    try {
      l.admit(target("t"));
    } catch (e) {
      return e as InferxError;
    }
  })()!;
  assert.equal(err.code, "quota_exceeded");
  assert.equal(err.retryable, true);
  assert.equal(
    err.message,
    "Cannot call t/n/f: tenant t is at its max_calls_per_s quota (4 a second, 1 at once): try again in 250 ms",
  );
  assert.deepEqual(err.details, {
    limit: "max_calls_per_s",
    quota: 4,
    retry_after_s: 1,
    retry_after_ms: 250,
  });
  const answer = errorAnswer(err, true);
  assert.equal(answer.status, 429);
  const headers = new Headers(answer.headers);
  assert.equal(headers.get("retry-after"), "1");
  assert.equal(headers.get("retry-after-ms"), "250");
  // It clears by itself: a client may send it again.
  assert.equal(headers.get("x-should-retry"), null);
  assert.equal(JSON.parse(answer.body).error.type, "rate_limit_error");
  assert.equal(JSON.parse(answer.body).error.code, "rate_limit_exceeded", "OpenAI's own code");
  assert.equal(JSON.parse(errorAnswer(err).body).error.code, "quota_exceeded", "elsewhere");
});

Deno.test("callers refused together are told turns one token apart, not one time for all", () => {
  const { l, target } = limiter({ t: { max_calls_per_s: 2, max_call_burst: 1 } });
  l.admit(target("t"));
  const waits: number[] = [];
  for (let i = 0; i < 4; i++) {
    try {
      l.admit(target("t"));
    } catch (e) {
      waits.push((e as InferxError).details?.retry_after_ms as number);
    }
  }
  assert.deepEqual(waits, [500, 1000, 1500, 2000]);
});

Deno.test("demand counts every call asked of a tenant with a rate, refused or not, once", () => {
  const { l, admitted } = limiter({ t: { max_calls_per_s: 1, max_call_burst: 1 }, u: {} });
  admitted("t", 3);
  admitted("u", 3);
  assert.deepEqual(l.demand(), [{ tenant: "t", calls: 3 }]);
  assert.deepEqual(l.demand(), []);
});

Deno.test("the scheduler's share holds until the next advice, never above the quota", () => {
  const quotas: Record<string, TenantQuota> = { t: { max_calls_per_s: 10, max_call_burst: 10 } };
  const { l, clock, admitted } = limiter(quotas);
  l.advise([{ tenant: "t", perS: 2, burst: 2 }]);
  assert.equal(admitted("t", 10), 2, "the share's burst");
  clock.now += 1000;
  assert.equal(admitted("t", 10), 2, "the share's rate");
  // The quota lowered before the scheduler's next share: the quota holds.
  quotas.t = { max_calls_per_s: 1, max_call_burst: 1 };
  clock.now += 5000;
  assert.equal(admitted("t", 10), 1);
  // A small share's refusal advises no longer a wait than the next heartbeat's.
  l.advise([{ tenant: "t", perS: 0.01, burst: 1 }]);
  clock.now += 100_000;
  assert.equal(admitted("t", 2), 1);
  const err = (() => {
    try {
      l.admit({ tenant: "t", namespace: "n", func: "f" });
    } catch (e) {
      return e as InferxError;
    }
  })()!;
  assert.equal(err.details?.retry_after_ms, 2000);
  // An advice without the tenant among three gateways (its quota just set): a third of it.
  quotas.t = { max_calls_per_s: 10, max_call_burst: 10 };
  l.advise([], 3);
  clock.now += 5000;
  assert.equal(admitted("t", 20), 3, "a third of the burst of 10, whole calls");
  clock.now += 300; // a third of 10 a second for 0.3 s: one call
  assert.equal(admitted("t", 20), 1);
  // An advice without the tenant, from one gateway: its whole rate.
  l.advise([]);
  clock.now += 5000;
  assert.equal(admitted("t", 20), 10);
});
