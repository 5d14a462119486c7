import assert from "node:assert/strict";
import { until } from "../../common/testing.ts";
import { addFunction, fakeWorker, type GatewayFixture, gatewayFixture } from "../testing.ts";

/** A test with a gateway and one worker of t/n/f behind it, both closed after it. */
function withWorker(
  name: string,
  fn: (f: GatewayFixture, w: ReturnType<typeof fakeWorker>) => Promise<void>,
) {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const f = await gatewayFixture();
      const w = fakeWorker("w");
      f.sched.endpoints.push(w.endpoint);
      try {
        await fn(f, w);
      } finally {
        await f.close();
        await w.close();
      }
    },
  });
}

withWorker(
  "/metrics serves the call series as Prometheus text, histograms cumulative",
  async (f) => {
    for (let i = 0; i < 3; i++) {
      await (await f.app.request("/funccall/t/n/f/x", { method: "POST", body: "{}" })).text();
    }
    const r = await f.app.request("/metrics");
    assert.match(r.headers.get("content-type") ?? "", /text\/plain/);
    const text = await r.text();
    assert.match(text, /# TYPE inferx_time_to_first_byte_seconds histogram/);
    const buckets = [...text.matchAll(
      /inferx_time_to_first_byte_seconds_bucket\{function="t\/n\/f",le="([^"]+)"\} (\d+)/g,
    )].map((m) => Number(m[2]));
    assert.equal(buckets.length, 15);
    assert.deepEqual(buckets, [...buckets].sort((a, b) => a - b), "cumulative");
    assert.equal(buckets.at(-1), 3);
    assert.match(text, /inferx_request_duration_seconds_count\{function="t\/n\/f"\} 3/);
    assert.match(text, /inferx_leased_workers\{function="t\/n\/f"\} 1/);
    const heap = Number(text.match(/^inferx_process_heap_used_bytes (\d+)$/m)?.[1]);
    const rss = Number(text.match(/^inferx_process_resident_memory_bytes (\d+)$/m)?.[1]);
    assert.ok(heap > 1e6 && rss > heap, `heap ${heap}, resident ${rss}`);
  },
);

Deno.test({
  name: "the metrics key opens /metrics and nothing else",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const f = await gatewayFixture({
      adminKey: "admin-key-0123456789",
      metricsKey: "scrape-key-0123456789",
    });
    try {
      const as = { authorization: "Bearer scrape-key-0123456789" };
      const metrics = await f.app.request("/metrics", { headers: as });
      assert.equal(metrics.status, 200);
      await metrics.body?.cancel();
      const anonymous = await f.app.request("/metrics");
      assert.equal(anonymous.status, 401);
      await anonymous.body?.cancel();
      for (
        const [path, init] of [
          ["/nodes", {}],
          ["/funccall/t/n/f/x", { method: "POST", body: "{}" }],
          ["/apikeys", { method: "POST", body: JSON.stringify({ scope: "read" }) }],
        ] as const
      ) {
        const r = await f.app.request(path, { ...init, headers: as });
        assert.equal(r.status, 403, path);
        await r.body?.cancel();
      }
      // A list shows what it may read: nothing.
      const list = await f.app.request("/objects/function", { headers: as });
      assert.deepEqual((await list.json()).items, []);
    } finally {
      await f.close();
    }
  },
});

withWorker(
  "a function deleted and made again between two scrapes starts its series at 0",
  async (f, w) => {
    const call = async () =>
      await (await f.app.request("/funccall/t/n/f/x", { method: "POST", body: "{}" })).text();
    for (let i = 0; i < 3; i++) await call();
    await f.meta.delete({ type: "function", tenant: "t", namespace: "n", name: "f" });
    await until("the gateway to see it gone", () => !f.cache.has("t/n/f"));
    await addFunction(f, "t", "n", "f");
    f.sched.endpoints.push(w.endpoint); // the new function's worker
    await call();
    const text = await (await f.app.request("/metrics")).text();
    assert.match(text, /^inferx_requests_total\{function="t\/n\/f",code="200"\} 1$/m);
  },
);
