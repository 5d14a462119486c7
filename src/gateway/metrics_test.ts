import assert from "node:assert/strict";
import type { FuncCache } from "./func_cache.ts";
import { GatewayMetrics, MAX_VERSION_SERIES } from "./metrics.ts";

const noAgents = { agents: () => [][Symbol.iterator]() } as unknown as FuncCache;

Deno.test("per-version series are labelled by function and version, histograms with their own buckets", async () => {
  const m = new GatewayMetrics(noAgents);
  const v = m.of("t/n/f").version(2);
  v.request(200);
  v.tokenRate.observe(42);
  v.tokenGap.observe(0.03);
  v.completionTokens += 7;
  const text = await m.registry.metrics();
  const has = (line: string) => assert.ok(text.includes(line), `${line} in:\n${text}`);
  has('inferx_version_requests_total{function="t/n/f",version="2",code="200"} 1');
  has('inferx_completion_tokens_total{function="t/n/f",version="2"} 7');
  has('inferx_output_tokens_per_second_bucket{function="t/n/f",version="2",le="50"} 1');
  has('inferx_output_tokens_per_second_bucket{function="t/n/f",version="2",le="25"} 0');
  has('inferx_inter_token_seconds_bucket{function="t/n/f",version="2",le="0.035"} 1');
  has('inferx_inter_token_seconds_count{function="t/n/f",version="2"} 1');
});

Deno.test("only the newest versions of a function keep series", () => {
  const f = new GatewayMetrics(noAgents).of("t/n/f");
  for (let v = 1; v <= MAX_VERSION_SERIES + 3; v++) f.version(v).request(200);
  assert.equal(f.versions.size, MAX_VERSION_SERIES);
  assert.equal(Math.min(...f.versions.keys()), 4);
});
