import assert from "node:assert/strict";
import { type ClusterSpec, h100Nodes, POLICIES, type SimPolicy, simulate } from "./engine.ts";
import { gpusNeeded } from "./report.ts";
import { generateTrace, type SimFunction, type Trace } from "./trace.ts";

function fn(id: string, vramMB: number): SimFunction {
  return {
    id,
    vramMB,
    memMB: 1000,
    cpu: 1000,
    coldStartMs: 5000,
    serviceMs: 100,
    firstByteMs: 20,
    restoreMs: { paused: 20, host_memory: 400, file: 3000 },
  };
}

function trace(functions: SimFunction[], calls: [number, number][]): Trace {
  return {
    functions,
    times: Float64Array.from(calls.map((c) => c[0])),
    func: Uint32Array.from(calls.map((c) => c[1])),
    durationMs: Math.max(...calls.map((c) => c[0])) + 1000,
  };
}

const oneGpu: ClusterSpec = {
  nodes: 1,
  gpusPerNode: 1,
  gpuVramMB: 80_000,
  contextOverheadMB: 0,
  cpuPerNode: 64_000,
  memPerNodeMB: 512_000,
};
const near = (actual: number, want: number) =>
  assert.ok(Math.abs(actual - want) <= want * 0.011 + 1, `${actual} vs ${want}`);

Deno.test("simulate(): the first call waits for a cold start, a call within the keep-alive is warm", () => {
  const r = simulate(trace([fn("a", 10_000)], [[0, 0], [60_000, 0]]), oneGpu, POLICIES.packed);
  assert.equal(r.served, 2);
  assert.equal(r.coldStarts, 1);
  assert.equal(r.podStarts, 1);
  near(r.ttfbP99Ms, 5000 + 20); // the cold one: start-up plus first byte
  near(r.ttfbP50Ms, 20); // the warm one
});

Deno.test("simulate(): under the full policy an idle worker is parked and a later call restores it", () => {
  const r = simulate(trace([fn("a", 10_000)], [[0, 0], [600_000, 0]]), oneGpu, POLICIES.full);
  assert.equal(r.coldStarts, 1);
  assert.equal(r.restores, 1);
  assert.equal(r.parks, 2, "parked after each call's keep-alive");
  assert.equal(r.podStarts, 1);
  near(r.ttfbP50Ms, 400 + 20); // restored from host memory
});

Deno.test("simulate(): dedicated GPUs refuse what packing serves on the same GPU", () => {
  const t = trace([fn("a", 30_000), fn("b", 30_000)], [[0, 0], [1000, 1]]);
  const dedicated = simulate(t, oneGpu, POLICIES.dedicated);
  assert.equal(dedicated.served, 1);
  assert.equal(dedicated.rejected, 1, "b waits for a's GPU past the 30 s queue timeout");
  const packed = simulate(t, oneGpu, POLICIES.packed);
  assert.equal(packed.served, 2);
  assert.equal(packed.rejected, 0);
});

Deno.test("simulate(): evicts a parked model to place another when the GPU is full", () => {
  const t = trace([fn("a", 50_000), fn("b", 50_000)], [[0, 0], [600_000, 1]]);
  const paused: SimPolicy = { ...POLICIES.full, tiers: ["paused"], standbyTier: "paused" };
  const r = simulate(t, oneGpu, paused);
  assert.equal(r.served, 2);
  assert.equal(r.evictions, 1, "a, parked in the paused tier, still held the GPU");
});

Deno.test("simulate() is deterministic and conserves requests: each served or refused", () => {
  const t = generateTrace({ functions: 60, seed: 11, durationMs: 2 * 3_600_000 });
  for (const policy of Object.values(POLICIES)) {
    for (const nodes of [1, 4]) {
      const a = simulate(t, h100Nodes(nodes), policy);
      const b = simulate(t, h100Nodes(nodes), policy);
      assert.deepEqual(
        { ...a, wallMs: 0 },
        { ...b, wallMs: 0 },
        `${policy.name} on ${nodes} nodes`,
      );
      assert.equal(a.served + a.rejected, a.requests, `${policy.name} on ${nodes} nodes`);
    }
  }
});

Deno.test("gpusNeeded() finds the smallest cluster that meets the objective", () => {
  const t = trace([fn("a", 70_000), fn("b", 70_000), fn("c", 70_000)], [[0, 0], [10, 1], [20, 2]]);
  const one = (n: number): ClusterSpec => ({ ...oneGpu, nodes: n });
  // Every call is a cold start here (5 s): the objective is capacity, no refusals.
  const objective = { ttfbP99Ms: 10_000, maxRejected: 0 };
  const found = gpusNeeded(t, POLICIES.packed, one, { maxNodes: 8, objective });
  assert.ok(found.met);
  assert.equal(found.result.gpus, 3, "three 70 GB models need three GPUs");
  assert.equal(found.result.rejected, 0);
});

Deno.test("simulate(): a node's first start pays for its snapshot, a later cold start there restores it while that is faster", () => {
  const policy: SimPolicy = { ...POLICIES.snapshot, tiers: [], standbyPerNode: 0 };
  const fast = { ...fn("a", 10_000), snapshot: { restoreMs: 400, dumpMs: 300 } };
  const r = simulate(trace([fast], [[0, 0], [600_000, 0]]), oneGpu, policy);
  assert.equal(r.podStarts, 2);
  assert.equal(r.snapshotStarts, 1);
  near(r.ttfbP99Ms, 5000 + 300 + 20); // fresh, then the dump, then the first byte
  near(r.ttfbP50Ms, 400 + 20); // restored
  // A restore that turns out slower than a fresh start is tried once, then not again.
  const slow = { ...fn("b", 10_000), snapshot: { restoreMs: 6000, dumpMs: 300 } };
  const s = simulate(trace([slow], [[0, 0], [600_000, 0], [1_200_000, 0]]), oneGpu, policy);
  assert.equal(s.snapshotStarts, 1);
  assert.equal(s.podStarts, 3);
});

Deno.test("simulate(): calls counted as cold starts are those a started worker takes at once, not later warm ones", () => {
  const slow = { ...fn("a", 10_000), serviceMs: 10_000 };
  // 40 calls at once wait for workers to start; 100 later ones, one a second, find them warm.
  const calls: [number, number][] = [];
  for (let i = 0; i < 40; i++) calls.push([i, 0]);
  for (let i = 0; i < 100; i++) calls.push([200_000 + i * 1000, 0]);
  for (const seed of [1, 2, 3]) {
    const r = simulate(trace([slow], calls), h100Nodes(1), POLICIES.packed, { seed });
    assert.equal(r.served, 140);
    assert.ok(r.coldStarts <= r.podStarts * POLICIES.packed.parallel, `${r.coldStarts} cold`);
    assert.ok(r.coldStarts <= 40, `seed ${seed}: ${r.coldStarts} of 40 waiting calls counted cold`);
  }
});
