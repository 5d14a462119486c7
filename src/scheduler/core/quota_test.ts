import assert from "node:assert/strict";
import type { StandbyTier } from "../../model/cluster.ts";
import { CoreDriver, funcReport, gpuNode, gpuPodRecord, kinds, nodeReport } from "./testing.ts";
import type { CoreAction } from "./types.ts";

const created = (acts: CoreAction[]) =>
  acts.flatMap((a) => (a.type === "createPod" ? [a.pod] : []));
const failed = (acts: CoreAction[]) => acts.flatMap((a) => (a.type === "leaseFailed" ? [a] : []));
const lease = (reqId: string, func: string) => ({
  type: "lease" as const,
  reqId,
  func,
  gateway: "g1",
  deadline: 30_000,
});

function cluster() {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 4 }) },
    { type: "funcUpdate", func: funcReport("a/n/f", {}, { maxReplica: 4 }) },
    { type: "funcUpdate", func: funcReport("a/n/g", {}, { maxReplica: 4 }) },
    { type: "funcUpdate", func: funcReport("a/n/gpu", { gpuCount: 2, vramMB: 1000 }) },
    { type: "funcUpdate", func: funcReport("b/n/f", {}, { maxReplica: 4 }) },
  );
  return d;
}

Deno.test("quota: max_replica refuses a function with nothing running, with the limit named", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 1 } });
  const p = created(d.run(lease("r1", "a/n/f")))[0];
  d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  const acts = d.run(lease("r2", "a/n/g"));
  assert.equal(created(acts).length, 0);
  assert.deepEqual(failed(acts).map((f) => [f.reqId, f.code]), [["r2", "quota_exceeded"]]);
  assert.match(failed(acts)[0].message, /tenant a is at its max_replica quota \(1 running\)/);
  assert.deepEqual(failed(acts)[0].quota, { limit: "max_replica", quota: 1 });
  // Another tenant is not limited by it.
  assert.equal(created(d.run(lease("r3", "b/n/f"))).length, 1);
});

Deno.test("quota: a refusal says when the functions' min_replica keeps the tenant's replicas", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 2 } });
  const pods = created(
    d.run({ type: "funcUpdate", func: funcReport("a/n/f", {}, { maxReplica: 4, minReplica: 2 }) }),
  );
  assert.equal(pods.length, 2);
  for (const p of pods) d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  const acts = d.run(lease("r1", "a/n/g"));
  assert.equal(created(acts).length, 0, "a pod kept by min_replica is not freed");
  assert.equal(
    failed(acts)[0].message,
    "Cannot lease worker for a/n/g: tenant a is at its max_replica quota (2 running; " +
      "min_replica keeps 2 of them: a/n/f 2)",
  );
});

Deno.test("quota: a refusal names the functions min_replica keeps in its own namespace only", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 3 } });
  for (const [func, min] of [["a/n/f", 1], ["a/dev/secret", 2]] as const) {
    const acts = d.run({
      type: "funcUpdate",
      func: funcReport(func, {}, { maxReplica: 4, minReplica: min }),
    });
    for (const p of created(acts)) {
      d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
    }
  }
  const acts = d.run(lease("r1", "a/n/g"));
  assert.equal(created(acts).length, 0);
  // A key of a/n may be kept out of a/dev: its function is counted, not named.
  assert.equal(
    failed(acts)[0].message,
    "Cannot lease worker for a/n/g: tenant a is at its max_replica quota (3 running; " +
      "min_replica keeps 3 of them: a/n/f 1, 2 by functions of its other namespaces)",
  );
});

Deno.test("quota: a busy function's own waiters queue instead of failing", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 1 } });
  const p = created(d.run(lease("r1", "a/n/f")))[0];
  d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  const acts = d.run(lease("r2", "a/n/f"));
  assert.deepEqual(acts, [], "r2 waits for f's one replica");
  const back = d.run({ type: "return", podId: p.id, gateway: "g1" });
  assert.deepEqual(back.map((a) => a.type), ["leaseGranted"]);
});

Deno.test("quota: at the quota, a new version's waiters wait for the old version's busy pod", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 1 } });
  const p = created(d.run(lease("r1", "a/n/f")))[0];
  d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  d.run({ type: "funcUpdate", func: funcReport("a/n/f", {}, { maxReplica: 4 }, 2) });
  // Version 2 has no replica yet, but version 1's one ends once given back.
  assert.deepEqual(d.run(lease("r2", "a/n/f")), [], "r2 waits");
  const back = d.run({ type: "return", podId: p.id, gateway: "g1" });
  assert.deepEqual(back.map((a) => a.type), ["terminatePod"], "drained, its room not yet free");
  const gone = d.run({ type: "podStatus", podId: p.id, state: "Terminated" });
  assert.deepEqual(created(gone).map((q) => q.version), [2], "r2's pod, of version 2");
  assert.deepEqual(failed(gone), []);
});

Deno.test("quota: an idle pod of the same tenant is retired to make room", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 1 } });
  d.run({ type: "funcUpdate", func: funcReport("a/n/f", {}, { maxReplica: 4, minReplica: 0 }) });
  const p = created(d.run(lease("r1", "a/n/f")))[0];
  d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  // Returned but kept a moment (scale-in timeout): idle, yet a replica.
  d.returnKeptIdle("a/n/f", p.id);
  assert.ok(d.state.funcs.get("a/n/f")!.idle.has(p.id));
  const acts = d.run(lease("r2", "a/n/g"));
  assert.deepEqual(acts.map((a) => a.type), ["terminatePod", "createPod"]);
  assert.match((acts[0] as { reason: string }).reason, /within the tenant's quota/);
});

Deno.test("quota: of the tenant's idle pods, the least recently used is retired to make room", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 2 } });
  const ids: Record<string, string> = {};
  // The least recently used first in the order the functions are looked at, and last: each case.
  for (const [func, at] of [["a/n/f", 100], ["a/n/gpu", 200]] as const) {
    const p = created(d.run(lease(`r-${func}`, func)))[0];
    d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
    d.returnKeptIdle(func, p.id);
    d.state.pods.get(p.id)!.lastUsed = at;
    ids[func] = p.id;
  }
  const acts = d.run(lease("r2", "a/n/g"));
  assert.deepEqual(acts.map((a) => a.type), ["terminatePod", "createPod"]);
  assert.equal((acts[0] as { podId: string }).podId, ids["a/n/f"], "the one used longest ago");
});

Deno.test("quota: parked pods are no replicas: a tenant at max_replica in parked pods alone starts one", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused"]) });
  for (const n of ["a", "b"]) {
    d.run({
      type: "funcUpdate",
      func: funcReport(`t/n/${n}`, { gpuCount: 1, vramMB: 10_000 }, { standbyTier: "paused" }),
    });
  }
  const [p] = created(d.run(lease("ra", "t/n/a")));
  d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  d.run({ type: "return", podId: p.id, gateway: "g1" }); // parked
  assert.equal(d.state.pods.get(p.id)?.state, "Standby");
  d.run({ type: "tenantQuota", tenant: "t", limits: { maxReplica: 1 } });
  const acts = d.run(lease("rb", "t/n/b"));
  assert.equal(created(acts).length, 1, JSON.stringify(acts.map((a) => a.type)));
  assert.equal(failed(acts).length, 0);
});

Deno.test("quota: max_gpu counts GPUs held, and raising the quota lets waiters through", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxGpu: 1 } });
  const acts = d.run(lease("r1", "a/n/gpu"));
  assert.deepEqual(failed(acts).map((f) => f.code), ["quota_exceeded"]);
  assert.match(failed(acts)[0].message, /max_gpu quota \(0 of 1 GPU\(s\) held, 2 more needed\)/);
  // CPU-only functions of the tenant are not held back by max_gpu.
  assert.equal(created(d.run(lease("r2", "a/n/f"))).length, 1);
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxGpu: 2 } });
  assert.equal(created(d.run(lease("r3", "a/n/gpu"))).length, 1);
  d.run({ type: "tenantQuota", tenant: "a", limits: {} });
  assert.equal(d.state.quotas.has("a"), false, "an empty quota is no quota");
});

Deno.test("quota: a paused pod holding its GPU is resumed, not passed over for a fresh one past max_gpu", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: gpuNode("n1", ["paused"]) },
    { type: "nodeUpdate", node: gpuNode("n2", ["paused"]) },
    { type: "tenantQuota", tenant: "t", limits: { maxGpu: 1 } },
    {
      type: "funcUpdate",
      func: funcReport("t/n/f", { gpuCount: 1, vramMB: 30_000 }, {
        standbyTier: "paused",
        maxReplica: 3,
      }),
    },
  );
  const [p1] = created(d.run(lease("r1", "t/n/f")));
  d.run({ type: "podStatus", podId: p1.id, state: "Ready", endpoint: "e" });
  d.run({ type: "return", podId: p1.id, gateway: "g1" });
  assert.equal(d.state.pods.get(p1.id)?.state, "Standby", "parked, its GPU memory kept");
  // Learned: a fresh start is faster than this tier's resume, but a fresh pod needs a second GPU.
  const f = d.state.funcs.get("t/n/f")!;
  f.coldStartMs = 10;
  f.restoreMs.paused = 5_000;
  const acts = d.run(lease("r2", "t/n/f"));
  assert.deepEqual(created(acts), []);
  assert.ok(acts.some((a) => a.type === "resumePod" && a.podId === p1.id));
  let gpus = 0;
  for (const p of d.state.pods.values()) if (p.held.vram) gpus += p.gpus.length;
  assert.equal(gpus, 1);
});

Deno.test("quota: at max_replica, parked pods (no replicas) are kept, not ended for nothing", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused"]) });
  for (const n of ["a", "b", "c", "e"]) {
    d.run({
      type: "funcUpdate",
      func: funcReport(`t/n/${n}`, { gpuCount: 1, vramMB: 10_000 }, { standbyTier: "paused" }),
    });
  }
  const pods: Record<string, string> = {};
  for (const n of ["b", "c", "a"]) {
    const [p] = created(d.run(lease(`r${n}`, `t/n/${n}`)));
    pods[n] = p.id;
    d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
    if (n !== "a") d.run({ type: "return", podId: p.id, gateway: "g1" }); // parked; a stays leased
  }
  d.run({ type: "tenantQuota", tenant: "t", limits: { maxReplica: 1 } });
  for (const f of ["e", "b"]) {
    const acts = d.run(lease(`r${f}2`, `t/n/${f}`));
    assert.deepEqual(acts.map((a) => a.type), ["leaseFailed"], f);
    assert.equal((acts[0] as { code: string }).code, "quota_exceeded");
  }
  assert.deepEqual(
    ["a", "b", "c"].map((n) => d.state.pods.get(pods[n])?.state),
    ["Ready", "Standby", "Standby"],
  );
});

Deno.test("quota: at max_gpu, a parked pod still holding its GPU is ended to make room", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused"]) });
  for (const n of ["b", "e"]) {
    d.run({
      type: "funcUpdate",
      func: funcReport(`t/n/${n}`, { gpuCount: 1, vramMB: 10_000 }, { standbyTier: "paused" }),
    });
  }
  const [b] = created(d.run(lease("rb", "t/n/b")));
  d.run({ type: "podStatus", podId: b.id, state: "Ready", endpoint: "e" });
  d.run({ type: "return", podId: b.id, gateway: "g1" });
  d.run({ type: "tenantQuota", tenant: "t", limits: { maxGpu: 1 } });
  const acts = d.run(lease("re", "t/n/e"));
  assert.deepEqual(acts.map((a) => a.type), ["terminatePod", "createPod"]);
  assert.equal((acts[0] as { podId: string }).podId, b.id);
});

Deno.test("room within max_gpu ends one idle pod, not parks every one in a tier that keeps its GPU", () => {
  for (const tiers of [["paused"], ["host_memory"]] as StandbyTier[][]) {
    const d = new CoreDriver();
    d.confirmParks = false;
    d.state.config.recoveryGraceMs = 0;
    const rec = (id: string, func: string, index: number) =>
      gpuPodRecord(id, "n", 10_000, { func, index });
    const f = (id: string) => ({
      type: "funcUpdate" as const,
      func: funcReport(id, { gpuCount: 1, vramMB: 10_000 }),
    });
    d.run(
      {
        type: "nodeUpdate",
        node: nodeReport("n", { gpuCount: 4, vramMB: 80_000, standbyTiers: tiers }),
      },
      { type: "podRecord", pod: rec("a", "t/n/a", 0) },
      { type: "podRecord", pod: rec("b", "t/n/b", 1) },
      { type: "podRecord", pod: rec("c", "t/n/c", 2) },
      f("t/n/a"),
      f("t/n/b"),
      f("t/n/c"),
      f("t/n/new"),
      { type: "tenantQuota", tenant: "t", limits: { maxGpu: 3 } },
    );
    const acts = kinds(d.run(lease("r1", "t/n/new")));
    const gone = acts.filter((k) => k === "terminatePod" || k === "parkPod");
    assert.equal(gone.length, 1, `${tiers}: ${acts.join(", ")}`);
    assert.ok(acts.includes("createPod"), `${tiers}: ${acts.join(", ")}`);
  }
});

Deno.test("resuming a pod still being parked counts its GPUs against max_gpu", () => {
  const d = new CoreDriver();
  d.confirmParks = false;
  d.run(
    {
      type: "nodeUpdate",
      node: nodeReport("n", { gpuCount: 2, vramMB: 80_000, standbyTiers: ["host_memory"] }),
    },
    {
      type: "funcUpdate",
      func: funcReport("t/n/a", { gpuCount: 1, vramMB: 10_000 }, { standbyTier: "host_memory" }),
    },
    { type: "funcUpdate", func: funcReport("t/n/g", { gpuCount: 1, vramMB: 10_000 }) },
    { type: "tenantQuota", tenant: "t", limits: { maxGpu: 1 } },
  );
  const [a] = created(d.run(lease("r1", "t/n/a")));
  d.run({ type: "podStatus", podId: a.id, state: "Ready", endpoint: "e" });
  d.run({ type: "return", podId: a.id, gateway: "g1" }); // parking in host memory: no GPU then
  assert.equal(created(d.run(lease("r2", "t/n/g"))).length, 1, "its GPU counted as given back");
  const again = kinds(d.run(lease("r3", "t/n/a")));
  assert.ok(!again.includes("resumePod"), `over max_gpu: ${again.join(", ")}`);
});

Deno.test("quota: a lowered max_replica holds for the pods running: their leases are reclaimed", () => {
  const d = cluster();
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 4 } });
  const pods: string[] = [];
  for (const r of ["r1", "r2", "r3"]) {
    const p = created(d.run(lease(r, "a/n/f")))[0];
    d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
    pods.push(p.id);
  }
  const acts = d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 1 } });
  // They ran on at 3 where the quota says 1.
  const asked = acts.flatMap((a) => (a.type === "reclaimLease" ? [a] : []));
  assert.equal(asked.length, 2, kinds(acts).join());
  assert.match(asked[0].reason, /above its tenant's max_replica 1/);
  // Nothing more at the next tick: one pod is what the quota allows.
  d.now += 2000;
  d.run({ type: "tick" });
  assert.equal([...d.state.pods.values()].filter((p) => p.reclaiming).length, 2);
  // Given back, they end; another tenant keeps its pods.
  for (const a of asked) d.run({ type: "return", podId: a.podId, gateway: "g1" });
  assert.equal([...d.state.pods.values()].filter((p) => p.state === "Ready").length, 1);
  const b = created(d.run(lease("b1", "b/n/f")))[0];
  d.run({ type: "podStatus", podId: b.id, state: "Ready", endpoint: "e" });
  assert.ok(
    !d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 1 } }).some((a) =>
      a.type === "reclaimLease"
    ),
  );
});

Deno.test("quota: a lowered max_gpu holds for the pods there: parked, then idle, then leased ones go", () => {
  const d = new CoreDriver();
  d.run({
    type: "nodeUpdate",
    node: nodeReport("n", { gpuCount: 4, vramMB: 80_000, standbyTiers: ["paused"] }),
  });
  const pods: Record<string, string> = {};
  for (const n of ["b", "c", "e"]) {
    d.run({
      type: "funcUpdate",
      func: funcReport(`t/n/${n}`, { gpuCount: 1, vramMB: 10_000 }, { standbyTier: "paused" }),
    });
    const [p] = created(d.run(lease(`r${n}`, `t/n/${n}`)));
    pods[n] = p.id;
    d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  }
  d.run({ type: "return", podId: pods.b, gateway: "g1" }); // parked, its GPU memory kept
  d.returnKeptIdle("t/n/c", pods.c); // idle
  assert.equal(d.state.pods.get(pods.b)?.state, "Standby");
  const lower = (maxGpu: number) => d.run({ type: "tenantQuota", tenant: "t", limits: { maxGpu } });
  const ended = (acts: CoreAction[]) =>
    acts.flatMap((a) => (a.type === "terminatePod" ? [a.podId] : []));

  // Three GPUs held where the quota now says two: the parked pod goes first.
  const two = lower(2);
  assert.deepEqual(ended(two), [pods.b], kinds(two).join());
  assert.match((two[0] as { reason: string }).reason, /above its tenant's max_gpu 2/);
  // Then the idle one: ended, not parked in a tier that keeps its GPU memory.
  assert.deepEqual(ended(lower(1)), [pods.c]);
  // Then the leased one, asked back from its gateway; nothing more at the next tick.
  const zero = lower(0);
  assert.deepEqual(
    zero.flatMap((a) => (a.type === "reclaimLease" ? [a.podId] : [])),
    [pods.e],
    kinds(zero).join(),
  );
  d.now += 2000;
  assert.deepEqual(kinds(d.run({ type: "tick" })).filter((k) => k !== "scaleOut"), []);
  assert.deepEqual(ended(d.run({ type: "return", podId: pods.e, gateway: "g1" })), [pods.e]);
  // A quota the pods are within asks nothing.
  const e2 = created(d.run(lease("re2", "t/n/e")));
  assert.equal(e2.length, 0, "no GPU may be held at max_gpu 0");
  d.run({ type: "tenantQuota", tenant: "t", limits: { maxGpu: 1 } });
  const [again] = created(d.run(lease("re3", "t/n/e")));
  d.run({ type: "podStatus", podId: again.id, state: "Ready", endpoint: "e" });
  assert.deepEqual(kinds(lower(1)), []);
});
