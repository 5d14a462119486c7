/** `/metrics` after real calls: the gateway's counters and histograms and the scheduler's gauges. */
import assert from "node:assert/strict";
import { NGRAM_COMMANDS } from "../../src/samples/ngram/image.ts";
import { createNamespace, putObject, request, startPlatform } from "./helpers.ts";

function value(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  assert.ok(line, `no series ${series} in:\n${text.slice(0, 2000)}`);
  return Number(line.split(" ")[1]);
}

Deno.test({
  name: "/metrics counts calls, cold starts and latencies, and shows pods and GPU memory",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({
      NODE_CONFIG: new URL("../../config/node.gpus.json", import.meta.url).pathname,
    });
    try {
      const put = (body: unknown) => putObject(p.url, body);
      await createNamespace(p.url, "m", "n");
      await put({
        type: "function",
        tenant: "m",
        namespace: "n",
        name: "lm",
        object: {
          image: "inferx/ngram",
          commands: NGRAM_COMMANDS,
          resources: { CPU: 200, Mem: 128, GPU: { Count: 1, vRam: 10_000 } },
          policy: { Obj: { scalein_timeout: 60 } },
        },
      });
      const call = (f: string) =>
        request(`${p.url}/funccall/m/n/${f}/v1/completions`, {
          body: { prompt: "The GPU", max_tokens: 4 },
        });
      assert.equal((await call("lm")).status, 200);
      assert.equal((await call("lm")).status, 200);
      assert.equal((await call("nope")).status, 404);
      const res = await fetch(`${p.url}/metrics`);
      assert.match(res.headers.get("content-type") ?? "", /text\/plain/);
      const text = await res.text();
      assert.equal(value(text, 'inferx_requests_total{function="m/n/lm",code="200"}'), 2);
      // Calls of functions that do not exist share one series: callers cannot grow the label set.
      assert.equal(value(text, 'inferx_requests_total{function="(none)",code="404"}'), 1);
      assert.ok(!text.includes("m/n/nope"));
      assert.equal(value(text, 'inferx_cold_starts_total{function="m/n/lm"}'), 1);
      assert.equal(value(text, 'inferx_time_to_first_byte_seconds_count{function="m/n/lm"}'), 2);
      assert.equal(value(text, 'inferx_request_duration_seconds_count{function="m/n/lm"}'), 2);
      assert.equal(value(text, 'inferx_leased_workers{function="m/n/lm"}'), 1);
      assert.equal(value(text, "inferx_leases_granted"), 1, "the scheduler's count agrees");
      assert.equal(value(text, 'inferx_queue_depth{function="m/n/lm"}'), 0);
      assert.equal(value(text, 'inferx_pods{state="Ready"}'), 1);
      // A state no pod is in reads 0, not no data.
      assert.equal(value(text, 'inferx_pods{state="Standby"}'), 0);
      assert.equal(
        value(text, 'inferx_gpu_vram_used_mb{node="node1",gpu="0"}') +
          value(text, 'inferx_gpu_vram_used_mb{node="node1",gpu="1"}'),
        10_512,
      );
      assert.equal(value(text, 'inferx_gpu_vram_total_mb{node="node1",gpu="0"}'), 81_920);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test("the Grafana dashboard queries only metrics the platform exports", async () => {
  const dash = JSON.parse(
    await Deno.readTextFile(new URL("../../config/grafana/inferx-dashboard.json", import.meta.url)),
  );
  const exported = new Set<string>();
  for (const f of ["../../src/gateway/metrics.ts", "../../src/scheduler/service.ts"]) {
    const src = await Deno.readTextFile(new URL(f, import.meta.url));
    for (const m of src.matchAll(/"(inferx_[a-z_]+)"/g)) exported.add(m[1]);
  }
  assert.ok(exported.size >= 9, [...exported].join(", "));
  const used = new Set<string>();
  for (const p of dash.panels) {
    assert.ok(p.targets.length > 0, p.title);
    for (const t of p.targets) {
      for (
        const m of (t.expr as string).matchAll(/\b(inferx_[a-z_]+?)(?:_bucket|_count|_sum)?\b/g)
      ) used.add(m[1]);
    }
  }
  for (const name of used) {
    assert.ok(exported.has(name), `the dashboard queries ${name}, which nothing exports`);
  }
  assert.ok(used.size >= 9, "the dashboard covers the metrics");
});
