import assert from "node:assert/strict";
import { refreshGpuSummary } from "./placement.ts";
import { schedulability } from "./schedulable.ts";
import {
  CoreDriver,
  coreNode,
  created,
  funcReport,
  kinds,
  lease,
  nodeReport,
  podDemand,
} from "./testing.ts";
import type { CoreAction, CoreNode, PodDemand } from "./types.ts";

const demand = podDemand;

/** A 16-core, 64 GB node with `gpus` H100s of 80 GB, `used` of each taken. */
const node = (name: string, gpus = 0, o: Partial<CoreNode> & { used?: number } = {}) => {
  const n = coreNode({
    name,
    cpuTotal: 16_000,
    memTotalMB: 65_536,
    gpus: Array.from({ length: gpus }, (_, index) => ({
      index,
      type: "H100",
      vramTotalMB: 80_000,
      vramUsedMB: o.used ?? 0,
      contexts: o.used ? 1 : 0,
    })),
    ...o,
  });
  refreshGpuSummary(n);
  return n;
};

Deno.test("schedulability() checks every node's capacity, not its free resources", () => {
  const full = node("full", 1, { cpuUsed: 16_000, memUsedMB: 65_536, used: 80_000 });
  const cases: [string, CoreNode[], PodDemand, string, string, RegExp?][] = [
    // [what, nodes, demand, status, reason, message]
    ["no node at all waits", [], demand(), "Unknown", "NoNodes"],
    ["a CPU pod on an empty node", [node("n1")], demand(), "True", "Fits"],
    [
      "a node whose resources are all taken can still hold it later",
      [full],
      demand({
        gpuCount: 1,
        vramMB: 80_000,
      }),
      "True",
      "Fits",
    ],
    [
      "a node that is not ready still counts",
      [node("n1", 0, { ready: false })],
      demand(),
      "True",
      "Fits",
    ],
    [
      "CPU beyond the largest node",
      [node("n1"), node("n2", 0, { cpuTotal: 32_000 })],
      demand({ cpu: 64_000 }),
      "False",
      "InsufficientCPU",
      /64000 millicores of CPU wanted, the largest node has 32000/,
    ],
    [
      "memory beyond the largest node",
      [node("n1")],
      demand({ memMB: 100_000 }),
      "False",
      "InsufficientMemory",
      /100000 MB of memory wanted, the largest node has 65536/,
    ],
    [
      "a GPU type no node has",
      [node("n1", 2), node("n2")],
      demand({ gpuType: "A100", gpuCount: 1, vramMB: 1000 }),
      "False",
      "GPUTypeUnavailable",
      /1 GPU of type A100 wanted, no node has one \(GPU types in the cluster: H100\)/,
    ],
    [
      "more GPUs than any node has",
      [node("n1", 2)],
      demand({ gpuCount: 4, vramMB: 1000 }),
      "False",
      "GPUTypeUnavailable",
      /4 GPUs of one type wanted, no node has that many/,
    ],
    [
      "vRAM beyond the largest GPU",
      [node("n1", 1)],
      demand({ gpuCount: 1, vramMB: 90_000 }),
      "False",
      "InsufficientVRAM",
      /90000 MB of vRAM per GPU wanted on 1 GPU .*the largest GPU has 80000 MB/,
    ],
    [
      // One H100 of 80 GB and two A100s of 40: no pair of one type has 50 GB each.
      "vRAM beyond what any pair of one type has, on mixed GPUs",
      [
        node("n1", 0, {
          gpus: [["H100", 80_000], ["A100", 40_000], ["A100", 40_000]].map(([type, mb], index) => ({
            index,
            type: type as string,
            vramTotalMB: mb as number,
            vramUsedMB: 0,
            contexts: 0,
          })),
        }),
      ],
      demand({ gpuCount: 2, vramMB: 50_000 }),
      "False",
      "InsufficientVRAM",
      /on 2 GPUs .*the most any 2 GPUs of one type on a node have is 40000 MB each/,
    ],
    [
      "a whole GPU plus the context overhead",
      [node("n1", 1, { contextOverheadMB: 500 })],
      demand({ gpuCount: 1, vramMB: 80_000 }),
      "False",
      "InsufficientVRAM",
    ],
    [
      "one node that fits among many that do not",
      [node("n1"), node("n2"), node("n3", 1)],
      demand({ gpuCount: 1, vramMB: 1000 }),
      "True",
      "Fits",
    ],
    [
      "the reason most nodes give, every reason in the message",
      [node("a"), node("b"), node("c", 1, { cpuTotal: 500 })],
      demand({ gpuCount: 1, vramMB: 1000 }),
      "False",
      "GPUTypeUnavailable",
      /no node has one .*; 1000 millicores of CPU wanted.* \(2 gpu_type_unavailable, 1 insufficient_cpu\)/,
    ],
  ];
  for (const [what, nodes, d, status, reason, message] of cases) {
    const s = schedulability(nodes, d);
    assert.equal(s.status, status, what);
    assert.equal(s.reason, reason, what);
    if (message) assert.match(s.message, message, what);
  }
  assert.equal(full.cpuUsed, 16_000, "the nodes themselves are left as they were");
  assert.equal(full.gpus[0].vramUsedMB, 80_000);
});

const conditions = (acts: CoreAction[]) =>
  acts.flatMap((a) => a.type === "funcCondition" ? [a.condition.status] : []);
const refused = (acts: CoreAction[]) =>
  acts.flatMap((a) => a.type === "leaseFailed" ? [[a.reqId, a.code, a.message]] : []);

Deno.test("step() refuses leases of a function no node could hold at once, and says so once", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  const a100 = funcReport("t/n/f", { gpuType: "A100", gpuCount: 1, vramMB: 1000 });
  const acts = d.run({ type: "funcUpdate", func: a100 });
  assert.deepEqual(acts, [{
    type: "funcCondition",
    func: "t/n/f",
    version: 1,
    condition: {
      status: "False",
      reason: "GPUTypeUnavailable",
      message:
        "No node could ever hold a pod: 1 GPU of type A100 wanted, no node has one (GPU types in the cluster: none) (1 gpu_type_unavailable)",
    },
  }]);
  const [[reqId, code, message]] = refused(d.run(lease("r1")));
  assert.deepEqual([reqId, code], ["r1", "unschedulable"]);
  assert.match(message, /^Cannot lease worker for t\/n\/f: No node could ever hold a pod: 1 GPU/);
  assert.equal(d.state.funcs.get("t/n/f")!.waiters.length, 0, "nothing waits");
  // Heartbeats that change nothing, and a policy change, decide nothing again.
  d.now = 1000;
  assert.deepEqual(d.run({ type: "nodeUpdate", node: nodeReport("n1", { heartbeat: 1000 }) }), []);
  assert.deepEqual(
    d.run({ type: "funcUpdate", func: { ...a100, policy: { ...a100.policy, maxReplica: 4 } } }),
    [],
  );
});

Deno.test("step() clears the condition when a node that fits joins, then places pods there", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("cpu1") });
  const f = funcReport("t/n/f", { gpuType: "A100", gpuCount: 1, vramMB: 1000 }, { minReplica: 1 });
  assert.deepEqual(conditions(d.run({ type: "funcUpdate", func: f })), ["False"]);
  assert.equal(d.state.pods.size, 0, "no pod started, nothing evicted for it");
  const joined = d.run({
    type: "nodeUpdate",
    node: nodeReport("gpu1", { gpuCount: 1, gpuType: "A100" }),
  });
  assert.deepEqual(conditions(joined), ["True"]);
  assert.deepEqual(created(joined).map((p) => p.node), ["gpu1"], "its min_replica pod starts");
  assert.deepEqual(kinds(d.run(lease("r1"))), [], "a lease now waits for that pod");
});

Deno.test("step() refuses the waiters of a function when the only node that fits leaves", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("cpu1") },
    { type: "nodeUpdate", node: nodeReport("gpu1", { gpuCount: 1, vramMB: 2000 }) },
    { type: "funcUpdate", func: funcReport("t/n/f", { gpuCount: 1, vramMB: 1000 }) },
  );
  assert.equal(created(d.run(lease("r1"))).length, 1, "a pod starts on gpu1");
  const gone = d.run({ type: "nodeRemove", name: "gpu1" });
  assert.deepEqual(conditions(gone), ["False"]);
  assert.deepEqual(refused(gone).map(([r, c]) => [r, c]), [["r1", "unschedulable"]]);
  // The node agent shrinks instead: a report with less vRAM decides again.
  const d2 = new CoreDriver();
  d2.run(
    { type: "nodeUpdate", node: nodeReport("gpu1", { gpuCount: 1, vramMB: 2000 }) },
    { type: "funcUpdate", func: funcReport("t/n/f", { gpuCount: 1, vramMB: 1000 }) },
  );
  const shrunk = d2.run({
    type: "nodeUpdate",
    node: nodeReport("gpu1", { gpuCount: 1, vramMB: 500 }),
  });
  assert.deepEqual(conditions(shrunk), ["False"]);
});

Deno.test("step() decides again when a function's demand changes", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  assert.deepEqual(conditions(d.run({ type: "funcUpdate", func: funcReport("t/n/f") })), []);
  const big = funcReport("t/n/f", { cpu: 999_000 }, {}, 2);
  assert.deepEqual(conditions(d.run({ type: "funcUpdate", func: big })), ["False"]);
  const fits = funcReport("t/n/f", { cpu: 500 }, {}, 3);
  assert.deepEqual(conditions(d.run({ type: "funcUpdate", func: fits })), ["True"]);
});
