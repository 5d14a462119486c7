import assert from "node:assert/strict";
import {
  binPack,
  cpuMemFit,
  feasibleTarget,
  gpuTypeFit,
  nodeReady,
  pickGpus,
  place,
  vramFit,
} from "./placement.ts";
import {
  CoreDriver,
  coreNode,
  created,
  funcReport,
  gpuPodRecord,
  lease,
  nodeReport,
  podDemand,
} from "./testing.ts";
import type { CoreGpu, PodDemand } from "./types.ts";

const gpu = (index: number, usedMB = 0, type = "H100", totalMB = 80_000): CoreGpu => ({
  index,
  type,
  vramTotalMB: totalMB,
  vramUsedMB: usedMB,
  contexts: usedMB ? 1 : 0,
});
const demand = podDemand;

Deno.test("nodeReady() refuses nodes that are not ready", () => {
  assert.equal(nodeReady(coreNode()), null);
  assert.equal(nodeReady(coreNode({ ready: false })), "node_not_ready");
});

const cpuMemCases: [string, Parameters<typeof coreNode>[0], Partial<PodDemand>, string | null][] = [
  ["fits", {}, {}, null],
  ["exactly fills CPU", { cpuUsed: 7000 }, {}, null],
  ["lacks CPU", { cpuUsed: 7500 }, {}, "insufficient_cpu"],
  ["lacks memory", { memUsedMB: 32_000 }, {}, "insufficient_memory"],
];
for (const [title, node, d, want] of cpuMemCases) {
  Deno.test(`cpuMemFit() ${title}`, () => assert.equal(cpuMemFit(coreNode(node), demand(d)), want));
}

const vramCases: [string, CoreGpu[], number, Partial<PodDemand>, string | null][] = [
  ["ignores pods without GPUs", [], 0, {}, null],
  ["fits a slice on a free GPU", [gpu(0)], 0, { gpuCount: 1, vramMB: 8000 }, null],
  ["fits beside another slice", [gpu(0, 70_000)], 0, { gpuCount: 1, vramMB: 10_000 }, null],
  [
    "counts the context overhead",
    [gpu(0, 70_000)],
    500,
    { gpuCount: 1, vramMB: 10_000 },
    "insufficient_vram",
  ],
  [
    "needs Count GPUs with room",
    [gpu(0), gpu(1, 75_000)],
    0,
    { gpuCount: 2, vramMB: 8000 },
    "insufficient_vram",
  ],
  ["takes two free GPUs", [gpu(0), gpu(1)], 0, { gpuCount: 2, vramMB: 8000 }, null],
  [
    "skips GPUs of another type",
    [gpu(0, 0, "A100")],
    0,
    { gpuCount: 1, vramMB: 8000, gpuType: "H100" },
    "insufficient_vram",
  ],
];
for (const [title, gpus, overhead, d, want] of vramCases) {
  Deno.test(`vramFit() ${title}`, () => {
    assert.equal(vramFit(coreNode({ gpus, contextOverheadMB: overhead }), demand(d)), want);
  });
}

Deno.test("gpuTypeFit() wants enough GPUs of the type, Any matching all (several of one type)", () => {
  const n = coreNode({ gpus: [gpu(0, 0, "A100"), gpu(1, 0, "H100")] });
  assert.equal(gpuTypeFit(n, demand({ gpuCount: 1, gpuType: "H100", vramMB: 1 })), null);
  assert.equal(gpuTypeFit(n, demand({ gpuCount: 1, gpuType: "Any", vramMB: 1 })), null);
  assert.equal(
    gpuTypeFit(n, demand({ gpuCount: 2, gpuType: "Any", vramMB: 1 })),
    "gpu_type_unavailable",
    "an A100 and an H100 are not two GPUs of one type",
  );
  assert.equal(
    gpuTypeFit(n, demand({ gpuCount: 2, gpuType: "H100", vramMB: 1 })),
    "gpu_type_unavailable",
  );
});

Deno.test("binPack() scores fuller nodes higher", () => {
  const d = demand({ gpuCount: 1, vramMB: 10_000 });
  const empty = binPack(coreNode({ gpus: [gpu(0)] }), d);
  const half = binPack(coreNode({ gpus: [gpu(0, 40_000)] }), d);
  assert.ok(half > empty);
  assert.equal(half, 62.5);
});

Deno.test("pickGpus() takes the best-fitting GPUs", () => {
  const n = coreNode({ gpus: [gpu(0), gpu(1, 60_000), gpu(2, 75_000)] });
  assert.deepEqual(pickGpus(n, demand({ gpuCount: 1, vramMB: 10_000 })), [
    { index: 1, vramMB: 10_000 },
  ]);
  assert.deepEqual(pickGpus(n, demand({ gpuCount: 2, vramMB: 10_000 })), [
    { index: 0, vramMB: 10_000 },
    { index: 1, vramMB: 10_000 },
  ]);
  assert.equal(pickGpus(n, demand({ gpuCount: 3, vramMB: 10_000 })), undefined);
});

Deno.test("place() packs onto the fullest fitting node and explains refusals", () => {
  const a = coreNode({ name: "a", gpus: [gpu(0, 10_000)] });
  const b = coreNode({ name: "b", gpus: [gpu(0, 50_000)] });
  const c = coreNode({ name: "c", ready: false, gpus: [gpu(0)] });
  const r = place([a, b, c], demand({ gpuCount: 1, vramMB: 20_000 }));
  assert.ok(r.ok);
  assert.equal(r.node.name, "b");
  const none = place([a, b, c], demand({ gpuCount: 1, vramMB: 75_000 }));
  assert.deepEqual(none, { ok: false, reasons: { insufficient_vram: 2, node_not_ready: 1 } });
});

Deno.test("place() keeps CPU-only pods off GPU nodes when it can", () => {
  const g = coreNode({ name: "gpu", gpus: [gpu(0)], cpuUsed: 4000 });
  const c = coreNode({ name: "cpu" });
  const r = place([g, c], demand());
  assert.ok(r.ok);
  assert.equal(r.node.name, "cpu");
});

Deno.test("place() stops at enoughFeasible fitting nodes and feasibleTarget() scales with size", () => {
  const nodes = ["a", "b", "c"].map((name, i) => coreNode({ name, cpuUsed: i * 1000 }));
  const r = place(nodes, demand(), { enoughFeasible: 2 });
  assert.ok(r.ok);
  assert.equal(r.node.name, "b", "c is fuller but lies past the first two fitting nodes");
  assert.equal(feasibleTarget(500), 500);
  assert.equal(feasibleTarget(10_000), 1000);
  assert.equal(feasibleTarget(50_000), 5000);
});

Deno.test("a pod of several GPUs of any type gets GPUs of one type, never unlike ones", () => {
  const d = new CoreDriver();
  const gpus = (...types: [string, number][]) =>
    types.map(([type, vramMB], index) => ({ index, type, vramMB }));
  d.run(
    {
      type: "nodeUpdate",
      node: nodeReport("mixed", { gpus: gpus(["H100", 80_000], ["A10", 24_000]) }),
    },
    { type: "funcUpdate", func: funcReport("t/n/tp", { gpuCount: 2, vramMB: 20_000 }) },
  );
  assert.deepEqual(created(d.run(lease("r1", "t/n/tp"))), [], "an H100 and an A10: no pod");
  assert.match(d.state.funcs.get("t/n/tp")!.schedulable?.message ?? "", /2 GPUs of one type/);
  d.run({
    type: "nodeUpdate",
    node: nodeReport("mixed", { gpus: gpus(["H100", 80_000], ["A10", 24_000], ["A10", 24_000]) }),
  });
  const [pod] = created(d.run(lease("r2", "t/n/tp")));
  assert.deepEqual(pod?.gpus.map((g) => g.index), [1, 2], "the two A10s");
});

Deno.test("a pod goes onto a partly used GPU that fits rather than open an empty one elsewhere", () => {
  const d = new CoreDriver();
  d.state.config.recoveryGraceMs = 0;
  const two = (n: string) => nodeReport(n, { gpuCount: 2, vramMB: 80_000 });
  const rec = (id: string, node: string, vramMB: number) => gpuPodRecord(id, node, vramMB);
  const fn = (id: string, vramMB: number, minReplica = 0) => ({
    type: "funcUpdate" as const,
    func: funcReport(`t/n/${id}`, { gpuCount: 1, vramMB }, { minReplica }),
  });
  d.run(
    { type: "nodeUpdate", node: two("a") },
    { type: "nodeUpdate", node: two("b") },
    // a's first GPU has 2 GB left, b's 30 GB.
    { type: "podRecord", pod: rec("big", "a", 78_000) },
    { type: "podRecord", pod: rec("mid", "b", 50_000) },
    fn("big", 78_000, 1),
    fn("mid", 50_000, 1),
    fn("small", 25_000),
    fn("whole1", 80_000),
    fn("whole2", 80_000),
  );
  const [small] = created(d.run(lease("r1", "t/n/small")));
  assert.deepEqual([small.node, small.gpus[0].index], ["b", 0]);
  // Both whole-GPU pods still find a GPU.
  assert.equal(created(d.run(lease("r2", "t/n/whole1"), lease("r3", "t/n/whole2"))).length, 2);
});
