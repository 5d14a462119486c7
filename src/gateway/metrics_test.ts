import assert from "node:assert/strict";
import type { AuditLog, AuditStats } from "../audit/types.ts";
import type { FuncCache } from "./func_cache.ts";
import { GatewayMetrics, MAX_VERSION_SERIES } from "./metrics.ts";

const noAgents = {
  agents: () => [][Symbol.iterator](),
  has: () => true,
  onRemoved() {},
} as unknown as FuncCache;

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

Deno.test("only the versions that answered last keep series", () => {
  const f = new GatewayMetrics(noAgents).of("t/n/f");
  for (let v = 1; v <= MAX_VERSION_SERIES + 3; v++) f.version(v).request(200);
  assert.equal(f.versions.size, MAX_VERSION_SERIES);
  assert.equal(Math.min(...f.versions.keys()), 4);
});

Deno.test("a version still answering keeps its series through any number of updates", () => {
  // A standing canary: the stable version 1 answers half the calls while versions 2..20 come
  // and go as canaries.
  const f = new GatewayMetrics(noAgents).of("t/n/f");
  for (let canary = 2; canary <= 20; canary++) {
    for (let i = 0; i < 3; i++) {
      f.version(1).request(200);
      f.version(canary).request(200);
    }
  }
  assert.equal(f.versions.size, MAX_VERSION_SERIES);
  assert.equal(f.versions.get(1)?.codes.get(200), 19 * 3);
  assert.equal(f.versions.get(20)?.codes.get(200), 3);
  // The canaries gone longest are the ones dropped.
  assert.deepEqual([...f.versions.keys()].sort((a, b) => a - b), [1, 14, 15, 16, 17, 18, 19, 20]);
});

Deno.test("a deleted function's series go with it, scraped or not; the series of unknown names stays", async () => {
  const live = new Set(["t/n/kept", "t/n/gone"]);
  const removed: ((id: string) => void)[] = [];
  const remove = (id: string) => (live.delete(id), removed.forEach((f) => f(id)));
  const cache = {
    agents: () => [][Symbol.iterator](),
    has: (id: string) => live.has(id),
    onRemoved: (f: (id: string) => void) => removed.push(f),
  };
  const m = new GatewayMetrics(cache as unknown as FuncCache);
  for (const f of ["t/n/kept", "t/n/gone", "(none)"]) m.of(f).request(200);
  // Deleted and made again between two scrapes: what the new one answered is all it shows.
  remove("t/n/gone");
  live.add("t/n/gone");
  m.of("t/n/gone").request(503);
  let text = await m.registry.metrics();
  assert.doesNotMatch(text, /function="t\/n\/gone",code="200"/);
  assert.match(text, /inferx_requests_total\{function="t\/n\/gone",code="503"\} 1/);
  assert.match(text, /inferx_requests_total\{function="t\/n\/kept",code="200"\} 1/);
  assert.match(text, /inferx_requests_total\{function="\(none\)",code="200"\} 1/);
  // A call under way when its function went, counted after: its series goes at the next scrape.
  remove("t/n/gone");
  m.of("t/n/gone").request(200);
  await new Promise((r) => setTimeout(r, 1100)); // pruned at most once a second
  text = await m.registry.metrics();
  assert.doesNotMatch(text, /t\/n\/gone/);
});

Deno.test("the process's memory series: resident, heap, buffers and the young generation's pages", async () => {
  const text = await new GatewayMetrics(noAgents).registry.metrics();
  const value = (name: string) => Number(text.match(new RegExp(`^${name} (\\S+)$`, "m"))?.[1]);
  const rss = value("inferx_process_resident_memory_bytes");
  const young = value('inferx_process_young_generation_bytes\\{thread="main"\\}');
  assert.ok(rss > 0, text);
  assert.ok(value("inferx_process_heap_used_bytes") > 0);
  // At least V8's smallest semi-space (256 KiB, 1 MiB by default), and a part of what is resident.
  assert.ok(young >= 256 * 1024 && young < rss, `young ${young}, rss ${rss}`);
  assert.doesNotMatch(text, /thread="audit"/, "no audit, no audit thread");
  // The embedded audit's worker thread has a young generation of its own.
  const stats: AuditStats = {
    backend: "embedded",
    buffered: 0,
    written: 0,
    dropped: 0,
    refusedDropped: 0,
    healthy: true,
    youngGenerationBytes: 3 << 20,
  };
  const audit = { stats: () => stats } as unknown as AuditLog;
  assert.match(
    await new GatewayMetrics(noAgents, audit).registry.metrics(),
    /^inferx_process_young_generation_bytes\{thread="audit"\} 3145728$/m,
  );
});
