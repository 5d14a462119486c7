import assert from "node:assert/strict";
import {
  CoreDriver,
  created,
  funcReport,
  gpuFunc,
  gpuNode,
  gpuPodRecord,
  kinds,
  lease,
  nodeReport,
} from "./testing.ts";

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

Deno.test("eviction spares parked pods that hold nothing the new pod needs", () => {
  for (const tier of ["file", "host_memory"] as const) {
    const d = new CoreDriver();
    d.run(
      {
        type: "nodeUpdate",
        node: gpuNode("n1", ["paused", "host_memory", "file"]),
      },
      {
        type: "funcUpdate",
        func: funcReport("t/n/a", { gpuCount: 1, vramMB: 30_000 }, { standbyTier: tier }),
      },
      {
        type: "funcUpdate",
        func: funcReport("t/n/b", { gpuCount: 1, vramMB: 60_000 }, {
          standbyTier: "file",
          standbyPerNode: 0,
          scaleinTimeoutS: 3600,
        }),
      },
      { type: "funcUpdate", func: funcReport("t/n/c", { gpuCount: 1, vramMB: 40_000 }) },
    );
    const a = created(d.run(lease("ra", "t/n/a")))[0].id;
    d.run({ type: "podStatus", podId: a, state: "Ready", endpoint: "a" });
    d.run({ type: "return", podId: a, gateway: "g1" });
    assert.equal(d.state.pods.get(a)!.state, "Standby", tier);
    assert.equal(d.state.pods.get(a)!.held.vram, false, "parked without its GPU memory");
    const b = created(d.run(lease("rb", "t/n/b")))[0].id;
    d.run({ type: "cancelLease", func: "t/n/b", reqId: "rb" }); // comes up idle
    d.run({ type: "podStatus", podId: b, state: "Ready", endpoint: "b" });
    const acts = d.run(lease("rc", "t/n/c"));
    assert.deepEqual(
      acts.flatMap((x) => x.type === "terminatePod" ? [x.podId] : []),
      [b],
      `${tier}: only the idle pod whose GPU memory is needed`,
    );
    assert.equal(d.state.pods.get(a)!.state, "Standby", tier);
  }
});

Deno.test("eviction passes over parked pods that hold nothing, and ends one pod where one is enough", () => {
  const d = new CoreDriver();
  d.state.config.recoveryGraceMs = 0;
  d.state.config.fairShare = false;
  const rec = (id: string, node: string, vramMB: number, parked = false) =>
    gpuPodRecord(id, node, vramMB, parked ? { tier: "file" } : {});
  const f = (id: string, vramMB: number) => ({
    type: "funcUpdate" as const,
    func: funcReport(`t/n/${id}`, { gpuCount: 1, vramMB }, { standbyTier: "file", maxReplica: 1 }),
  });
  d.run(
    { type: "nodeUpdate", node: nodeReport("b", { gpuCount: 1, vramMB: 80_000 }) },
    {
      type: "nodeUpdate",
      node: nodeReport("a", { gpuCount: 1, vramMB: 80_000, standbyTiers: ["file"] }),
    },
    // b: two idle 40 GB pods. a: one idle 80 GB pod and two parked in files (holding nothing).
    { type: "podRecord", pod: rec("b1", "b", 40_000) },
    { type: "podRecord", pod: rec("b2", "b", 40_000) },
    { type: "podRecord", pod: rec("x", "a", 80_000) },
    { type: "podRecord", pod: rec("p1", "a", 1_000, true) },
    { type: "podRecord", pod: rec("p2", "a", 1_000, true) },
    f("b1", 40_000),
    f("b2", 40_000),
    f("x", 80_000),
    f("p1", 1_000),
    f("p2", 1_000),
    f("new", 60_000),
  );
  const ended = d.run(lease("r1", "t/n/new")).flatMap((a) =>
    a.type === "terminatePod" ? [a.podId] : []
  );
  assert.deepEqual(ended, ["x"]);
});
