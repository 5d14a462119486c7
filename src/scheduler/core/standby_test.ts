import assert from "node:assert/strict";
import type { StandbyTier } from "../../model/cluster.ts";
import { chooseTier, PARK_REPORT_WAIT_MS, SLOWER_SEEN_MS } from "./standby.ts";
import {
  CoreDriver,
  created,
  funcReport,
  gpuFunc,
  gpuNode,
  kinds,
  lease,
  nodeReport,
} from "./testing.ts";

Deno.test("chooseTier() takes the deepest tier the node has, up to the wanted one", () => {
  const cases: [StandbyTier, StandbyTier[], StandbyTier | undefined][] = [
    ["file", ["paused", "host_memory", "file"], "file"],
    ["file", ["paused", "host_memory"], "host_memory"],
    ["host_memory", ["paused"], "paused"],
    ["paused", ["host_memory", "file"], undefined],
    ["host_memory", [], undefined],
  ];
  for (const [wanted, available, want] of cases) {
    assert.equal(chooseTier(wanted, available), want, `${wanted} on ${available}`);
  }
});

Deno.test("step() parks a scaled-in pod in host memory, freeing its GPU, and resumes it before any cold start", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused", "host_memory"]) }, {
    type: "funcUpdate",
    func: gpuFunc("t/n/f", "host_memory"),
  });
  const pod = created(d.run(lease("r1")))[0].id;
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
  const parked = d.run({ type: "return", podId: pod, gateway: "g1" });
  assert.deepEqual(parked, [{ type: "parkPod", podId: pod, tier: "host_memory" }]);
  const n = d.state.nodes.get("n1")!;
  assert.equal(n.gpus[0].vramUsedMB, 0, "host-memory tier frees the GPU");
  assert.equal(n.cpuUsed, 0);
  assert.equal(
    n.memUsedMB,
    1024 + 30_000,
    "its memory stays charged, and its GPU memory moved there",
  );
  const again = d.run(lease("r2"));
  assert.deepEqual(again, [{ type: "resumePod", podId: pod, tier: "host_memory" }]);
  assert.equal(n.gpus[0].vramUsedMB, 30_000);
  assert.equal(n.memUsedMB, 1024 + 30_000, "the copy is in host memory until it is restored");
  const granted = d.run({ type: "podStatus", podId: pod, state: "Ready" });
  assert.deepEqual(granted, [{
    type: "leaseGranted",
    reqId: "r2",
    gateway: "g1",
    podId: pod,
    endpoint: "e",
    coldStart: false,
    resumed: true,
    version: 1,
  }]);
  assert.equal(n.memUsedMB, 1024, "back on the GPU: its own memory only");
});

Deno.test("a GPU pod is parked in host memory only where the node has memory for its GPU memory", () => {
  for (
    const [tiers, want] of [[["paused", "host_memory"], "parkPod"], [
      ["host_memory"],
      "terminatePod",
    ]] as const
  ) {
    const d = new CoreDriver();
    const node = gpuNode("n1", [...tiers]);
    d.run({ type: "nodeUpdate", node: { ...node, memMB: 16_384 } }, {
      type: "funcUpdate",
      func: gpuFunc("t/n/f", "host_memory"),
    });
    const pod = created(d.run(lease("r1")))[0].id;
    d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
    const out = d.run({ type: "return", podId: pod, gateway: "g1" });
    assert.deepEqual(kinds(out), [want], tiers.join());
    if (want === "parkPod") {
      assert.deepEqual(
        out,
        [{ type: "parkPod", podId: pod, tier: "paused" }],
        "paused: it stays on the GPU",
      );
    }
    assert.ok(d.state.nodes.get("n1")!.memUsedMB <= 16_384, "never more than the node has");
  }
});

Deno.test("a GPU pod resumed from a file is charged its GPU memory's copy in host memory until Ready; a node without that memory does not resume it", () => {
  for (const room of [true, false]) {
    const d = new CoreDriver();
    const node = gpuNode("n1", ["file"]);
    d.run({ type: "nodeUpdate", node }, { type: "funcUpdate", func: gpuFunc("t/n/f", "file") });
    const pod = created(d.run(lease("r1")))[0].id;
    d.now = 60_000; // a minute to start: a restore from a file is expected to be faster
    d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
    assert.deepEqual(d.run({ type: "return", podId: pod, gateway: "g1" }), [
      { type: "parkPod", podId: pod, tier: "file" },
    ]);
    d.run({ type: "podStatus", podId: pod, state: "Standby" });
    const n = d.state.nodes.get("n1")!;
    assert.equal(n.memUsedMB, 0, "parked in a file, it holds no memory");
    // The node's memory shrinks (taken by others) below what the restore copies through.
    if (!room) d.run({ type: "nodeUpdate", node: { ...node, memMB: 20_000 } });
    const acts = d.run(lease("r2"));
    if (!room) {
      assert.deepEqual(kinds(acts), ["terminatePod", "createPod"], "dropped, started fresh");
      assert.ok(n.memUsedMB <= 20_000);
      continue;
    }
    assert.deepEqual(acts, [{ type: "resumePod", podId: pod, tier: "file" }]);
    assert.equal(
      n.memUsedMB,
      1024 + 30_000,
      "its memory, and its GPU memory's copy while restored",
    );
    d.run({ type: "podStatus", podId: pod, state: "Ready" });
    assert.equal(n.memUsedMB, 1024, "back on the GPU");
  }
});

Deno.test("step() keeps the GPU charged for the paused tier and parks at most standby_per_node", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused"]) }, {
    type: "funcUpdate",
    func: gpuFunc("t/n/f", "host_memory", { maxReplica: 2 }),
  });
  const [a, b] = created(d.run(lease("r1"), lease("r2"))).map((p) => p.id);
  d.run(
    { type: "podStatus", podId: a, state: "Ready", endpoint: "a" },
    { type: "podStatus", podId: b, state: "Ready", endpoint: "b" },
  );
  assert.deepEqual(d.run({ type: "return", podId: a, gateway: "g1" }), [
    { type: "parkPod", podId: a, tier: "paused" },
  ]);
  assert.equal(d.state.nodes.get("n1")!.gpus[0].vramUsedMB, 60_000, "paused keeps GPU memory");
  assert.deepEqual(kinds(d.run({ type: "return", podId: b, gateway: "g1" })), ["terminatePod"]);
});

Deno.test("step() drops a parked pod whose node has no room to take it back and starts fresh elsewhere", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: gpuNode("n1", ["host_memory"], 40_000) },
    { type: "funcUpdate", func: gpuFunc("t/n/f", "host_memory") },
    { type: "funcUpdate", func: gpuFunc("t/n/g", "host_memory") },
  );
  const p = created(d.run(lease("r1")))[0].id;
  d.run({ type: "podStatus", podId: p, state: "Ready", endpoint: "p" });
  d.run({ type: "return", podId: p, gateway: "g1" }); // parked: GPU free
  const g = created(d.run(lease("r2", "t/n/g")))[0];
  assert.equal(g.node, "n1", "g took the GPU the parked pod left");
  d.run({ type: "nodeUpdate", node: gpuNode("n2", []) });
  const acts = d.run(lease("r3"));
  assert.deepEqual(kinds(acts), ["terminatePod", "createPod"]);
  assert.equal(created(acts)[0].node, "n2");
});

Deno.test("step() starts fresh instead of resuming when the function has started faster than its tier restores", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused", "file"]) }, {
    type: "funcUpdate",
    func: gpuFunc("t/n/small", "file", { maxReplica: 2 }),
  });
  const pod = created(d.run(lease("r1", "t/n/small")))[0].id;
  d.now = 100; // started in 100 ms; a 30 GB restore from file is expected to take ~31 s
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
  assert.equal(d.state.funcs.get("t/n/small")!.coldStartMs, 100);
  assert.deepEqual(d.run({ type: "return", podId: pod, gateway: "g1" }), [
    { type: "parkPod", podId: pod, tier: "file" },
  ]);
  assert.deepEqual(kinds(d.run(lease("r2", "t/n/small"))), ["createPod"]);
});

Deno.test("a worker without GPU memory is resumed from a tier once before a fresh start is preferred", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { standbyTiers: ["file"] }) }, {
    type: "funcUpdate",
    func: funcReport("t/n/cpu", {}, { maxReplica: 3, standbyTier: "file", standbyPerNode: 2 }),
  });
  const [a] = created(d.run(lease("r1", "t/n/cpu")));
  const [b] = created(d.run(lease("r2", "t/n/cpu")));
  d.now = 60; // started in 60 ms, where the prior of a restore from a file is a second
  for (const p of [a, b]) d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  for (const p of [a, b]) d.run({ type: "return", podId: p.id, gateway: "g1" });
  assert.deepEqual([a, b].map((p) => d.state.pods.get(p.id)?.state), ["Standby", "Standby"]);
  const tried = d.run(lease("r3", "t/n/cpu"));
  assert.deepEqual(kinds(tried), ["resumePod"], "tried once");
  const resumed = (tried[0] as { podId: string }).podId;
  const other = resumed === a.id ? b.id : a.id;
  d.now = 125; // restored in 65 ms: slower than the start, learned
  d.run({ type: "podStatus", podId: resumed, state: "Ready" });
  assert.equal(d.state.funcs.get("t/n/cpu")!.restoreMs.file, 65);
  // Then fresh; the pod still parked goes, rather than hold the node's standby room for good.
  const r4 = d.run(lease("r4", "t/n/cpu"));
  assert.deepEqual(kinds(r4), ["createPod", "terminatePod"]);
  assert.equal((r4[1] as { podId: string }).podId, other);
  assert.match((r4[1] as { reason: string }).reason, /resumes from file were seen slower/);
  const [c] = created(r4);
  d.run({ type: "podStatus", podId: c.id, state: "Ready", endpoint: "e" }); // r4's
  // And a worker idle later is not parked there: ended.
  assert.deepEqual(kinds(d.run({ type: "return", podId: resumed, gateway: "g1" })), [
    "terminatePod",
  ]);
  // For a while: then the tier is used again, and a resume measured anew.
  d.now += SLOWER_SEEN_MS;
  assert.deepEqual(kinds(d.run({ type: "return", podId: c.id, gateway: "g1" })), ["parkPod"]);
  assert.deepEqual(kinds(d.run(lease("r5", "t/n/cpu"))), ["resumePod"], "not left parked");
});

Deno.test("step() resumes when the restore is faster, and learns how long restores take", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused"]) }, {
    type: "funcUpdate",
    func: gpuFunc("t/n/f", "paused", { maxReplica: 2 }),
  });
  const pod = created(d.run(lease("r1")))[0].id;
  d.now = 5000;
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
  d.run({ type: "return", podId: pod, gateway: "g1" });
  assert.deepEqual(kinds(d.run(lease("r2"))), ["resumePod"]);
  d.now = 5012;
  d.run({ type: "podStatus", podId: pod, state: "Ready" });
  assert.equal(d.state.funcs.get("t/n/f")!.restoreMs.paused, 12);
});

Deno.test("a pod asked to park keeps its GPU memory until its agent reports it parked: nothing is placed into it before", () => {
  const d = new CoreDriver();
  d.confirmParks = false; // the agent takes its time (a GPU checkpoint: seconds)
  d.run(
    { type: "nodeUpdate", node: gpuNode("n1", ["host_memory"]) },
    { type: "funcUpdate", func: gpuFunc("t/n/a", "host_memory", {}) },
    {
      type: "funcUpdate",
      func: funcReport("t/n/b", { gpuCount: 1, vramMB: 60_000 }, { standbyTier: "host_memory" }),
    },
  );
  const a = created(d.run(lease("ra", "t/n/a")))[0].id;
  d.run({ type: "podStatus", podId: a, state: "Ready", endpoint: "e" });
  assert.deepEqual(kinds(d.run({ type: "return", podId: a, gateway: "g1" })), ["parkPod"]);
  const n = d.state.nodes.get("n1")!;
  assert.equal(n.gpus[0].vramUsedMB, 30_000, "still held while it is parked");
  assert.deepEqual(created(d.run(lease("rb", "t/n/b"))), [], "60 GB does not fit beside it yet");
  const after = d.run({ type: "podStatus", podId: a, state: "Standby" });
  assert.equal(created(after)[0]?.func, "t/n/b", "placed once the park is done");
  assert.equal(n.gpus[0].vramUsedMB, 60_000);
});

Deno.test("a park whose report never comes is taken for parked after a while, and evicted like one", () => {
  const d = new CoreDriver();
  d.confirmParks = false; // its agent restarted and lost the report
  d.run(
    { type: "nodeUpdate", node: gpuNode("n1", ["paused"]) },
    { type: "funcUpdate", func: gpuFunc("t/n/a", "paused") },
    {
      type: "funcUpdate",
      func: funcReport("t/n/b", { gpuCount: 1, vramMB: 60_000 }, { standbyTier: "paused" }),
    },
  );
  const a = created(d.run(lease("ra", "t/n/a")))[0].id;
  d.run({ type: "podStatus", podId: a, state: "Ready", endpoint: "e" });
  d.run({ type: "return", podId: a, gateway: "g1" });
  assert.deepEqual(kinds(d.run(lease("rb", "t/n/b", "g1", 600_000))), [], "waits for the report");
  d.now = PARK_REPORT_WAIT_MS + 1000;
  const acts = d.run({ type: "gatewayHeartbeat", gateway: "g1" }, { type: "tick" });
  assert.ok(
    acts.some((x) => x.type === "terminatePod" && x.podId === a),
    JSON.stringify(acts),
  );
});

Deno.test("a lowered standby_per_node holds for the pods parked already: the least recently used go", () => {
  const d = new CoreDriver();
  const fn = (standbyPerNode: number) =>
    funcReport("t/n/f", {}, { maxReplica: 3, standbyPerNode, standbyTier: "paused" });
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { standbyTiers: ["paused"] }) }, {
    type: "funcUpdate",
    func: fn(3),
  });
  const pods = created(d.run(lease("r1"), lease("r2"), lease("r3"))).map((p) => p.id);
  for (const id of pods) d.run({ type: "podStatus", podId: id, state: "Ready", endpoint: id });
  for (const id of pods) {
    d.now += 10;
    assert.deepEqual(kinds(d.run({ type: "return", podId: id, gateway: "g1" })), ["parkPod"]);
  }
  const one = d.run({ type: "funcUpdate", func: fn(1) });
  assert.deepEqual(
    one.map((a) => a.type === "terminatePod" ? [a.podId, a.reason] : a.type),
    [[pods[0], "above standby_per_node 1"], [pods[1], "above standby_per_node 1"]],
  );
  const none = d.run({ type: "funcUpdate", func: fn(0) });
  assert.deepEqual(none.map((a) => a.type === "terminatePod" ? a.podId : a.type), [pods[2]]);
});
