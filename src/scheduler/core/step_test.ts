import assert from "node:assert/strict";
import { CoreDriver, funcReport, nodeReport } from "./testing.ts";
import type { StandbyTier } from "../../model/cluster.ts";
import { chooseTier } from "./step.ts";
import type { CoreAction } from "./types.ts";

const kinds = (acts: CoreAction[]) => acts.map((a) => a.type);
const created = (acts: CoreAction[]) =>
  acts.flatMap((a) => (a.type === "createPod" ? [a.pod] : []));
const lease = (reqId: string, func = "t/n/f", gateway = "g1", deadline = 30_000) => ({
  type: "lease" as const,
  reqId,
  func,
  gateway,
  deadline,
});

Deno.test("step() cold-starts a pod for the first lease and grants it when ready", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f"),
  });
  const a1 = d.run(lease("r1"));
  assert.deepEqual(kinds(a1), ["createPod"]);
  const pod = created(a1)[0];
  assert.equal(pod.node, "n1");
  const a2 = d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "127.0.0.1:9" });
  assert.deepEqual(a2, [{
    type: "leaseGranted",
    reqId: "r1",
    podId: pod.id,
    endpoint: "127.0.0.1:9",
    coldStart: true,
    resumed: false,
    version: 1,
  }]);
});

Deno.test("step() terminates a returned pod above min_replica (scale to zero)", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f"),
  });
  const pod = created(d.run(lease("r1")))[0];
  d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  const acts = d.run({ type: "return", podId: pod.id, gateway: "g1" });
  assert.deepEqual(kinds(acts), ["terminatePod"]);
  d.run({ type: "podStatus", podId: pod.id, state: "Terminated" });
  assert.equal(d.state.pods.size, 0);
  assert.equal(d.state.nodes.get("n1")!.cpuUsed, 0);
});

Deno.test("step() keeps min_replica pods and reuses an idle one without a cold start", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  const acts = d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, { minReplica: 1 }) });
  const pod = created(acts)[0];
  assert.ok(pod);
  assert.deepEqual(d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" }), []);
  const grant = d.run(lease("r1"));
  assert.deepEqual(kinds(grant), ["leaseGranted"]);
  assert.equal(grant[0].type === "leaseGranted" && grant[0].coldStart, false);
  assert.deepEqual(d.run({ type: "return", podId: pod.id, gateway: "g1" }), []);
  d.now = 60_000;
  assert.deepEqual(d.run({ type: "tick" }), []);
});

Deno.test("step() never exceeds max_replica and hands a returned pod to the next waiter", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { maxReplica: 1 }),
  });
  const pod = created(d.run(lease("r1")))[0];
  assert.deepEqual(d.run(lease("r2", "t/n/f", "g2")), []);
  const ready = d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  assert.deepEqual(ready.map((a) => a.type === "leaseGranted" && a.reqId), ["r1"]);
  const back = d.run({ type: "return", podId: pod.id, gateway: "g1" });
  assert.deepEqual(back, [{
    type: "leaseGranted",
    reqId: "r2",
    podId: pod.id,
    endpoint: "e",
    coldStart: false,
    resumed: false,
    version: 1,
  }]);
});

Deno.test("step() places a multi-GPU function on GPUs with room and charges each", () => {
  const d = new CoreDriver();
  d.run({
    type: "nodeUpdate",
    node: nodeReport("n1", { gpuCount: 4, vramMB: 24_000, contextOverheadMB: 500 }),
  }, {
    type: "funcUpdate",
    func: funcReport("t/n/big", { gpuCount: 2, vramMB: 20_000 }),
  });
  const pod = created(d.run(lease("r1", "t/n/big")))[0];
  assert.deepEqual(pod.gpus, [{ index: 0, vramMB: 20_000 }, { index: 1, vramMB: 20_000 }]);
  const gpus = d.state.nodes.get("n1")!.gpus.map((g) => g.vramUsedMB);
  assert.deepEqual(gpus, [20_500, 20_500, 0, 0]);
});

Deno.test("step() evicts the least recently used idle pod of another function, never below min_replica", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 1, vramMB: 90_000 }) },
    { type: "funcUpdate", func: funcReport("t/n/a", { gpuCount: 1, vramMB: 30_000 }) },
    {
      type: "funcUpdate",
      func: funcReport("t/n/b", { gpuCount: 1, vramMB: 30_000 }, { minReplica: 1 }),
    },
    { type: "funcUpdate", func: funcReport("t/n/c", { gpuCount: 1, vramMB: 30_000 }) },
    { type: "funcUpdate", func: funcReport("t/n/d", { gpuCount: 1, vramMB: 30_000 }) },
  );
  const b = [...d.state.funcs.get("t/n/b")!.pods][0];
  const a = created(d.run(lease("ra", "t/n/a")))[0].id;
  d.now = 10;
  const c = created(d.run(lease("rc", "t/n/c")))[0].id;
  for (const [id, gw] of [[b, ""], [a, "g1"], [c, "g1"]]) {
    d.run({ type: "podStatus", podId: id, state: "Ready", endpoint: id });
    if (gw) d.run({ type: "return", podId: id, gateway: gw });
  }
  // a and c were scaled in on return; bring them back as idle pods that are
  // kept because they became ready without a waiter (the cold-start path).
  d.run({ type: "podStatus", podId: a, state: "Terminated" }, {
    type: "podStatus",
    podId: c,
    state: "Terminated",
  });
  d.now = 100;
  const a2 = created(
    d.run({
      type: "funcUpdate",
      func: funcReport("t/n/a", { gpuCount: 1, vramMB: 30_000 }, { minReplica: 1 }),
    }),
  )[0].id;
  d.run({ type: "podStatus", podId: a2, state: "Ready", endpoint: "a2" });
  d.now = 200;
  const c2 = created(d.run(lease("rc2", "t/n/c")))[0].id;
  d.run({ type: "podStatus", podId: c2, state: "Ready", endpoint: "c2" });
  d.run({ type: "cancelLease", reqId: "x", func: "t/n/c" });
  // GPU full: a2 (min 1), b (min 1), c2 (leased). d must wait: nothing evictable.
  const blocked = d.run(lease("rd", "t/n/d"));
  assert.deepEqual(blocked, []);
  assert.match(d.state.funcs.get("t/n/d")!.lastUnschedulable!, /insufficient_vram/);
  // c2 returned: scaled in (above min 0), which frees room for d once terminated.
  const back = d.run({ type: "return", podId: c2, gateway: "g1" });
  assert.deepEqual(kinds(back), ["terminatePod"]);
  const placed = d.run({ type: "podStatus", podId: c2, state: "Terminated" });
  assert.deepEqual(kinds(placed), ["createPod"]);
});

Deno.test("step() evicts idle pods LRU when the GPU is full", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 1, vramMB: 60_000 }) },
    { type: "funcUpdate", func: funcReport("t/n/old", { gpuCount: 1, vramMB: 30_000 }) },
    { type: "funcUpdate", func: funcReport("t/n/new", { gpuCount: 1, vramMB: 30_000 }) },
    { type: "funcUpdate", func: funcReport("t/n/x", { gpuCount: 1, vramMB: 30_000 }) },
  );
  // Two pods become ready with no waiter left (requests cancelled): idle.
  const old = created(d.run(lease("r1", "t/n/old")))[0].id;
  d.run({ type: "cancelLease", reqId: "r1", func: "t/n/old" });
  d.now = 5;
  d.run({ type: "podStatus", podId: old, state: "Ready", endpoint: "o" });
  const nw = created(d.run(lease("r2", "t/n/new")))[0].id;
  d.run({ type: "cancelLease", reqId: "r2", func: "t/n/new" });
  d.now = 9;
  d.run({ type: "podStatus", podId: nw, state: "Ready", endpoint: "n" });
  const acts = d.run(lease("r3", "t/n/x"));
  assert.deepEqual(acts, [{ type: "terminatePod", podId: old, reason: "evicted for t/n/x" }]);
  assert.deepEqual(d.run(lease("r4", "t/n/x")), [], "waits for the eviction, evicts no more");
  assert.deepEqual(kinds(d.run({ type: "podStatus", podId: old, state: "Terminated" })), [
    "createPod",
  ]);
});

Deno.test("step() fails waiting leases with the worker's error when it fails to start", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f"),
  });
  const pod = created(d.run(lease("r1"), lease("r2")))[0];
  const acts = d.run({ type: "podStatus", podId: pod.id, state: "Failed", error: "boom: exit 3" });
  assert.deepEqual(kinds(acts), ["terminatePod", "leaseFailed", "leaseFailed"]);
  const f = acts[1];
  assert.ok(
    f.type === "leaseFailed" && f.code === "worker_failed" && /boom: exit 3/.test(f.message),
  );
  assert.equal(d.state.nodes.get("n1")!.cpuUsed, 0);
});

Deno.test("step() drains old-version pods: idle at once, leased on return", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { maxReplica: 2 }),
  });
  const p1 = created(d.run(lease("r1")))[0].id;
  d.run({ type: "podStatus", podId: p1, state: "Ready", endpoint: "e" });
  const upd = d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, { maxReplica: 2 }, 2) });
  assert.deepEqual(upd, []);
  const ret = d.run({ type: "return", podId: p1, gateway: "g1" });
  assert.deepEqual(ret, [{ type: "terminatePod", podId: p1, reason: "old version drained" }]);
  const p2 = created(d.run(lease("r2")))[0];
  assert.equal(p2.version, 2);
});

Deno.test("step() times out a waiter at its deadline, saying why nothing was placed", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", { gpuCount: 1, vramMB: 1000 }),
  });
  assert.deepEqual(d.run(lease("r1", "t/n/f", "g1", 500)), []);
  d.now = 499;
  assert.deepEqual(d.run({ type: "tick" }), []);
  d.now = 500;
  const acts = d.run({ type: "tick" });
  assert.equal(acts.length, 1);
  const a = acts[0];
  assert.ok(a.type === "leaseFailed" && a.code === "timeout");
  assert.match(a.message, /gpu_type_unavailable/);
});

Deno.test("step() reclaims the leases of a silent gateway", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { minReplica: 1 }),
  });
  const pod = [...d.state.pods.keys()][0];
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" }, lease("r1"));
  assert.equal(d.state.pods.get(pod)!.leasedBy, "g1");
  d.now = 10_000;
  d.run({ type: "tick" });
  assert.equal(d.state.pods.get(pod)!.leasedBy, undefined);
  assert.ok(d.state.funcs.get("t/n/f")!.idle.has(pod));
});

Deno.test("step() replaces the pods of a node that stops being ready", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1") },
    { type: "nodeUpdate", node: nodeReport("n2", { cpuMillis: 8000 }) },
    { type: "funcUpdate", func: funcReport("t/n/f", {}, { minReplica: 1 }) },
  );
  const first = [...d.state.pods.values()][0];
  const acts = d.run({ type: "nodeUpdate", node: nodeReport(first.node, { ready: false }) });
  assert.deepEqual(kinds(acts), ["terminatePod", "createPod"]);
  assert.notEqual(created(acts)[0].node, first.node);
});

Deno.test("step() rebuilds accounting from synced pods after a restart", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 1, contextOverheadMB: 300 }) },
    {
      type: "funcUpdate",
      func: funcReport("t/n/f", { gpuCount: 1, vramMB: 1000 }, { minReplica: 1 }),
    },
  );
  const before = structuredClone(d.state.nodes.get("n1")!.gpus);
  const pod = [...d.state.pods.values()][0];
  const again = new CoreDriver("q");
  const acts = again.run(
    { type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 1, contextOverheadMB: 300 }) },
    {
      type: "podSync",
      pod: { ...pod, state: "Ready", endpoint: "e" },
    },
    {
      type: "funcUpdate",
      func: funcReport("t/n/f", { gpuCount: 1, vramMB: 1000 }, { minReplica: 1 }),
    },
  );
  assert.deepEqual(acts, []);
  assert.deepEqual(again.state.nodes.get("n1")!.gpus, before);
});

Deno.test("step() is deterministic: the same events give the same actions", () => {
  const run = () => {
    const d = new CoreDriver();
    const out: CoreAction[] = [];
    out.push(...d.run({ type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 2 }) }));
    for (let i = 0; i < 20; i++) {
      out.push(...d.run({
        type: "funcUpdate",
        func: funcReport(`t/n/f${i}`, { gpuCount: 1, vramMB: 9000 }),
      }));
      out.push(...d.run(lease(`r${i}`, `t/n/f${i}`)));
    }
    return out;
  };
  assert.deepEqual(run(), run());
});

Deno.test("step() learns leases from gateway heartbeats and takes back settled ones not listed", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { minReplica: 2, maxReplica: 2 }),
  });
  const [p1, p2] = [...d.state.pods.keys()];
  d.run(
    { type: "podStatus", podId: p1, state: "Ready", endpoint: "e1" },
    { type: "podStatus", podId: p2, state: "Ready", endpoint: "e2" },
  );
  // A restarted scheduler knows no leases; the gateway's heartbeat says it holds p1.
  d.run({ type: "gatewayHeartbeat", gateway: "g1", leases: [p1] });
  assert.equal(d.state.pods.get(p1)!.leasedBy, "g1");
  const grant = d.run(lease("r1", "t/n/f", "g2"));
  assert.equal(
    grant[0].type === "leaseGranted" && grant[0].podId,
    p2,
    "p1 is not handed out twice",
  );
  // g2's heartbeat does not list p2 yet: a fresh lease is left alone...
  d.now = 1000;
  assert.deepEqual(d.run({ type: "gatewayHeartbeat", gateway: "g2", leases: [] }), []);
  assert.equal(d.state.pods.get(p2)!.leasedBy, "g2");
  // ...but once settled, a lease the gateway no longer lists comes back.
  d.now = 6000;
  d.run({ type: "gatewayHeartbeat", gateway: "g2", leases: [] });
  assert.equal(d.state.pods.get(p2)!.leasedBy, undefined);
  assert.ok(d.state.funcs.get("t/n/f")!.idle.has(p2));
});

Deno.test("step() kills a pod on request", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { minReplica: 1 }),
  });
  const [p1] = [...d.state.pods.keys()];
  assert.deepEqual(d.run({ type: "killPod", podId: p1 }), [
    { type: "terminatePod", podId: p1, reason: "killed by request" },
  ]);
});

const gpuNode = (name: string, tiers: StandbyTier[], vramMB = 80_000) =>
  nodeReport(name, { gpuCount: 1, vramMB, standbyTiers: tiers });
const gpuFunc = (id: string, tier: StandbyTier, policy: Record<string, number> = {}) =>
  funcReport(id, { gpuCount: 1, vramMB: 30_000 }, { standbyTier: tier, ...policy });

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
  assert.equal(n.memUsedMB, 1024, "its memory stays charged");
  const again = d.run(lease("r2"));
  assert.deepEqual(again, [{ type: "resumePod", podId: pod, tier: "host_memory" }]);
  assert.equal(n.gpus[0].vramUsedMB, 30_000);
  const granted = d.run({ type: "podStatus", podId: pod, state: "Ready" });
  assert.deepEqual(granted, [{
    type: "leaseGranted",
    reqId: "r2",
    podId: pod,
    endpoint: "e",
    coldStart: false,
    resumed: true,
    version: 1,
  }]);
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

Deno.test("step() evicts parked pods before idle ones", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: gpuNode("n1", ["paused"], 60_000) },
    { type: "funcUpdate", func: gpuFunc("t/n/parked", "paused") },
    { type: "funcUpdate", func: gpuFunc("t/n/idle", "paused", { standbyPerNode: 0 }) },
    { type: "funcUpdate", func: gpuFunc("t/n/new", "paused") },
  );
  const p = created(d.run(lease("r1", "t/n/parked")))[0].id;
  d.run({ type: "podStatus", podId: p, state: "Ready", endpoint: "p" });
  d.now = 50;
  d.run({ type: "return", podId: p, gateway: "g1" }); // parked, newer than the idle one
  const i = created(d.run(lease("r2", "t/n/idle")))[0].id;
  d.run({ type: "cancelLease", reqId: "r2", func: "t/n/idle" });
  d.run({ type: "podStatus", podId: i, state: "Ready", endpoint: "i" }); // idle, kept (cold path)
  assert.deepEqual(d.run(lease("r3", "t/n/new")), [
    { type: "terminatePod", podId: p, reason: "evicted for t/n/new" },
  ]);
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
