import assert from "node:assert/strict";
import { fakeWorker, gatewayFixture } from "../testing.ts";

Deno.test({
  name: "/metrics serves the call series as Prometheus text, histograms cumulative",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const f = await gatewayFixture();
    const w = fakeWorker("w");
    f.sched.endpoints.push(w.endpoint);
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
    await f.close();
    await w.close();
  },
});

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
