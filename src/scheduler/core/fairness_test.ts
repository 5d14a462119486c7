import assert from "node:assert/strict";
import {
  demandShare,
  fairOrder,
  fairShare,
  type FairView,
  fairView,
  mayEvict,
  mayReclaim,
} from "./fairness.ts";
import { CoreDriver, created, funcReport, gpuNode, kinds, lease, nodeReport } from "./testing.ts";
import type { StandbyTier } from "../../model/cluster.ts";
import type { CoreAction, CoreFunc, Priority } from "./types.ts";

/** A view of tenants holding `usage` (shares of one resource) with `weights`. */
function view(usage: Record<string, number>, weights: Record<string, number> = {}): FairView {
  return {
    totals: { cpu: 1, memMB: 1, vramMB: 1 },
    held: new Map(Object.entries(usage).map(([t, u]) => [t, { cpu: u, memMB: 0, vramMB: 0 }])),
    usage: new Map(Object.entries(usage)),
    active: new Set(Object.keys(usage)),
    weights: new Map(Object.entries(weights)),
  };
}

Deno.test("fairShare() divides the pool by weight among the tenants in the running", () => {
  const cases: [string, Record<string, number>, Record<string, number>, string, number][] = [
    ["two equal tenants", { a: 0.9, b: 0.1 }, {}, "b", 0.5],
    ["weights 3:1", { a: 0.5, b: 0.5 }, { a: 3 }, "a", 0.75],
    ["a newcomer counts itself in", { a: 1 }, {}, "b", 0.5],
    ["alone", { a: 0.2 }, {}, "a", 1],
  ];
  for (const [name, usage, weights, tenant, want] of cases) {
    assert.equal(fairShare(view(usage, weights), tenant), want, name);
  }
});

Deno.test("mayEvict() and mayReclaim() take only from tenants holding more than their due", () => {
  // [case, usage, weights, requester, victim, cost, may evict, may reclaim]
  const cases: [
    string,
    Record<string, number>,
    Record<string, number>,
    string,
    string,
    number,
    boolean,
    boolean,
  ][] = [
    ["a tenant with nothing from one holding all", { a: 1 }, {}, "b", "a", 0.25, true, true],
    ["within a tenant: always evict, never reclaim", { a: 1 }, {}, "a", "a", 0.25, true, false],
    [
      "the larger holder cannot take from the smaller",
      { a: 0.75, b: 0.25 },
      {},
      "a",
      "b",
      0.25,
      false,
      false,
    ],
    ["equal after the move: no", { a: 0.5, b: 0.25 }, {}, "b", "a", 0.25, false, false],
    [
      "evict, but the requester would pass its share: no reclaim",
      { a: 0.7, b: 0.3 },
      {},
      "b",
      "a",
      0.25,
      true,
      false,
    ],
    [
      "weight 3 makes 0.6 less than its due",
      { a: 0.6, b: 0.4 },
      { a: 3 },
      "a",
      "b",
      0.1,
      true,
      true,
    ],
    [
      "the victim within its share keeps its leases",
      { a: 0.3, b: 0.3 },
      {},
      "c",
      "a",
      0.2,
      true,
      false,
    ],
  ];
  for (const [name, usage, weights, req, victim, cost, evict, reclaim] of cases) {
    const v = view(usage, weights);
    const amounts = { cpu: cost, memMB: 0, vramMB: 0 };
    assert.equal(mayEvict(v, req, victim, amounts), evict, `${name}: evict`);
    assert.equal(mayReclaim(v, req, victim, amounts), reclaim, `${name}: reclaim`);
  }
});

Deno.test("fairOrder() serves the tenant holding least per weight, then priority, then the oldest", () => {
  const unit = (id: string, priority: Priority, since: number) =>
    ({ id, func: id, policy: { priority }, waiters: [{ since }] }) as unknown as CoreFunc;
  const units = [
    unit("a/n/batch", "batch", 1),
    unit("a/n/high", "high", 5),
    unit("b/n/old", "normal", 2),
    unit("b/n/new", "normal", 3),
  ];
  const order = (v: FairView) => fairOrder(v, [...units]).map((u) => u.id);
  assert.deepEqual(order(view({ a: 0.3, b: 0.6 })), [
    "a/n/high",
    "a/n/batch",
    "b/n/old",
    "b/n/new",
  ]);
  assert.deepEqual(
    order(view({ a: 0.3, b: 0.6 }, { b: 4 })),
    ["b/n/old", "b/n/new", "a/n/high", "a/n/batch"],
    "b's weight makes its 0.6 less per weight than a's 0.3",
  );
});

// A node with one 80 GB GPU fits two 40 GB pods: the pool of the scenarios below.
const GPU = { gpuCount: 1, vramMB: 40_000 };

/** Tenants `a` and `b` with functions `a/n/f1`..`f4`, `b/n/g1`..`g3` on one GPU (or `gpus`). */
function pool(
  options: {
    weights?: Record<string, number>;
    fairShare?: boolean;
    tiers?: StandbyTier[];
    gpus?: number;
  } = {},
) {
  const d = new CoreDriver();
  if (options.fairShare === false) d.state.config.fairShare = false;
  const standbyTiers = options.tiers ?? [];
  const gpuCount = options.gpus ?? 1;
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { gpuCount, vramMB: 80_000, standbyTiers }) });
  for (const [tenant, weight] of Object.entries(options.weights ?? {})) {
    d.run({ type: "tenantWeight", tenant, weight });
  }
  for (const id of ["a/n/f1", "a/n/f2", "a/n/f3", "a/n/f4", "b/n/g1", "b/n/g2", "b/n/g3"]) {
    const policy = { maxReplica: 2, standbyPerNode: standbyTiers.length ? 1 : 0 };
    d.run({ type: "funcUpdate", func: funcReport(id, GPU, policy) });
  }
  /** Leases a worker of `func` for gateway `gw`, making its pod ready when one is created. */
  const hold = (reqId: string, func: string, gw = `gw-${reqId}`) => {
    const acts = d.run(lease(reqId, func, gw));
    const out = [...acts];
    for (const p of created(acts)) {
      out.push(...d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: p.id }));
    }
    return out;
  };
  return { d, hold };
}

const grants = (acts: CoreAction[]) =>
  acts.flatMap((a) => (a.type === "leaseGranted" ? [a.reqId] : []));

Deno.test("a burst that holds the whole pool gives a lease back to a tenant within its share", () => {
  const { d, hold } = pool();
  assert.deepEqual(grants(hold("a1", "a/n/f1")), ["a1"]);
  assert.deepEqual(grants(hold("a2", "a/n/f2")), ["a2"]);
  // Tenant a holds the GPU, both workers leased and busy; b asks for one.
  const asked = hold("b1", "b/n/g1");
  const reclaims = asked.filter((a) => a.type === "reclaimLease");
  assert.equal(reclaims.length, 1, JSON.stringify(asked));
  const r = reclaims[0];
  assert.ok(r.type === "reclaimLease" && r.gateway.startsWith("gw-a"));
  const podId = r.type === "reclaimLease" ? r.podId : "";
  // a's next lease cannot have the reclaimed pod, nor take from b.
  assert.deepEqual(grants(hold("a3", "a/n/f1", r.gateway)), []);
  // The gateway's next heartbeat is asked again (a lost answer loses nothing).
  const beat = d.run({ type: "gatewayHeartbeat", gateway: r.gateway });
  assert.deepEqual(beat.map((a) => a.type === "reclaimLease" && [a.podId, a.repeat]), [[
    podId,
    true,
  ]]);
  // Given back: terminated, not handed to a's waiter; once gone, b's pod starts.
  assert.deepEqual(kinds(d.run({ type: "return", podId, gateway: r.gateway })), ["terminatePod"]);
  const gone = d.run({ type: "podStatus", podId, state: "Terminated" });
  const pod = created(gone);
  assert.equal(pod.length, 1);
  assert.equal(pod[0].func, "b/n/g1", "freed room goes to the tenant holding less");
  const ready = d.run({ type: "podStatus", podId: pod[0].id, state: "Ready", endpoint: "e" });
  assert.deepEqual(grants(ready), ["b1"]);
});

Deno.test("a worker reclaimed for fair share whose calls go on is ended after the grace period", () => {
  const { d, hold } = pool();
  hold("a1", "a/n/f1");
  hold("a2", "a/n/f2");
  d.now = 1000;
  const r = hold("b1", "b/n/g1").find((a) => a.type === "reclaimLease")!;
  const podId = r.type === "reclaimLease" ? r.podId : "";
  // The gateways keep beating: none of them is taken for gone.
  const tick = () => {
    for (const gateway of ["gw-a1", "gw-a2", "gw-b1"]) d.run({ type: "gatewayHeartbeat", gateway });
    return d.run({ type: "tick" });
  };
  // a's calls on it go on (a tenant decides how long its calls last): kept until the deadline.
  d.now = 1000 + d.state.config.reclaimGraceMs - 1;
  assert.deepEqual(kinds(tick()), []);
  // Before, b waited for as long as a's calls lasted.
  d.now = 1000 + d.state.config.reclaimGraceMs;
  const ended = tick();
  assert.deepEqual(
    ended.map((a) => a.type === "terminatePod" && [a.podId, a.reason]),
    [[
      podId,
      "reclaimed for b/n/g1, whose tenant is below its fair share; its calls did not end within 10 s of the reclaim",
    ]],
  );
  // Its gateway giving it back later changes nothing; once it is gone, b's pod starts.
  assert.deepEqual(kinds(d.run({ type: "return", podId, gateway: r.gateway })), []);
  const pod = created(d.run({ type: "podStatus", podId, state: "Terminated" }));
  assert.deepEqual(pod.map((p) => p.func), ["b/n/g1"]);
  // A reclaim for a lowered max_replica is no preemption: it waits for the calls to end.
  const { d: d2, hold: hold2 } = pool();
  hold2("a1", "a/n/f1");
  hold2("a2", "a/n/f1");
  const f1 = funcReport("a/n/f1", GPU, { maxReplica: 1 });
  const trimmed = d2.run({ type: "funcUpdate", func: f1 });
  assert.deepEqual(kinds(trimmed), ["reclaimLease"]);
  d2.now = 10 * d2.state.config.reclaimGraceMs;
  for (const gateway of ["gw-a1", "gw-a2"]) d2.run({ type: "gatewayHeartbeat", gateway });
  assert.deepEqual(kinds(d2.run({ type: "tick" })), []);
});

Deno.test("without fair sharing a burst keeps the pool and the other tenant waits", () => {
  const { hold } = pool({ fairShare: false });
  hold("a1", "a/n/f1");
  hold("a2", "a/n/f2");
  const asked = hold("b1", "b/n/g1");
  assert.deepEqual(kinds(asked), []);
});

Deno.test("parked pods are a cache: taken by a tenant within its share, kept from one above it", () => {
  // Two GPUs, four 40 GB slots. [case, a's leased functions, b's leased, b's parked, a evicts]
  const cases: [string, string[], string[], string[], boolean][] = [
    ["b has only parked pods: it is not in the running", ["f1"], [], ["g1", "g2", "g3"], true],
    ["b serves: a, above its share with one more, keeps off", ["f1", "f2"], ["g1"], ["g2"], false],
    ["b serves, but a stays within its share", ["f1"], ["g1"], ["g2", "g3"], true],
  ];
  for (const [name, aLeased, bLeased, bParked, evicts] of cases) {
    const { d, hold } = pool({ tiers: ["paused"], gpus: 2 });
    for (const g of bParked) {
      for (const a of hold(`p-${g}`, `b/n/${g}`, "gw")) {
        if (a.type === "leaseGranted") d.run({ type: "return", podId: a.podId, gateway: "gw" });
      }
    }
    for (const g of bLeased) hold(`l-${g}`, `b/n/${g}`);
    for (const f of aLeased) hold(`l-${f}`, `a/n/${f}`);
    const acts = hold("ask", "a/n/f4");
    const took = acts.some((x) => x.type === "terminatePod");
    assert.equal(took, evicts, `${name}: ${JSON.stringify(acts)}`);
  }
});

Deno.test("when both tenants wait, freed room goes by weight, then by priority within a tenant", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 1, vramMB: 80_000 }) });
  const fn = (id: string, priority: Priority) =>
    d.run({
      type: "funcUpdate",
      func: funcReport(id, GPU, { maxReplica: 2, standbyPerNode: 0, priority }),
    });
  fn("a/n/hog", "normal");
  fn("b/n/batch", "batch");
  fn("b/n/high", "high");
  fn("c/n/x", "normal");
  const hog = [
    ...created(d.run(lease("h1", "a/n/hog"))),
    ...created(d.run(lease("h2", "a/n/hog"))),
  ];
  for (const p of hog) d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
  // The pool is full; b's batch function, then b's high one, then c wait.
  d.now = 1;
  d.run(lease("b1", "b/n/batch", "gb"));
  d.now = 2;
  d.run(lease("b2", "b/n/high", "gb"));
  d.run(lease("c1", "c/n/x", "gc"));
  assert.deepEqual([...d.state.starved].sort(), ["b/n/batch", "b/n/high", "c/n/x"]);
  // a's first worker goes (reclaimed or returned): b's high-priority function comes first of b's.
  const order: string[] = [];
  for (const p of hog) {
    d.run({ type: "return", podId: p.id, gateway: "g1" });
    for (const a of d.run({ type: "podStatus", podId: p.id, state: "Terminated" })) {
      if (a.type === "createPod") order.push(a.pod.func);
    }
  }
  assert.equal(order[0], "b/n/high", order.join(", "));
  assert.ok(order.includes("c/n/x") || order.length === 1, order.join(", "));
});

Deno.test("fairView() counts what each tenant's pods hold, parked ones by what they keep", () => {
  const { d, hold } = pool();
  hold("a1", "a/n/f1");
  const v = fairView(d.state);
  assert.equal(v.usage.get("a"), 0.5, "one 40 GB pod of an 80 GB pool (vRAM is dominant)");
  assert.equal(
    demandShare({ cpu: 0, memMB: 0, gpuType: "Any", gpuCount: 1, vramMB: 40_000 }, v.totals),
    0.5,
  );
  assert.deepEqual([...v.active], ["a"]);
});

Deno.test("a tenant's share is the largest of its CPU, memory and GPU-memory shares (DRF), not a sum over pods", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("cpu1", { cpuMillis: 16_000, memMB: 65_536 }) },
    {
      type: "nodeUpdate",
      node: nodeReport("gpu1", { cpuMillis: 16_000, memMB: 65_536, gpuCount: 1, vramMB: 80_000 }),
    },
    { type: "funcUpdate", func: funcReport("x/n/a", { cpu: 14_400, memMB: 1024 }) },
    {
      type: "funcUpdate",
      func: funcReport("x/n/b", { cpu: 1000, memMB: 1024, gpuCount: 1, vramMB: 40_000 }),
    },
    {
      type: "funcUpdate",
      func: funcReport("y/n/c", { cpu: 1000, memMB: 1024, gpuCount: 1, vramMB: 60_000 }),
    },
  );
  const a = created(d.run(lease("ra", "x/n/a")))[0].id;
  d.run({ type: "podStatus", podId: a, state: "Ready", endpoint: "a" });
  const b = created(d.run(lease("rb", "x/n/b")))[0].id;
  d.run({ type: "cancelLease", func: "x/n/b", reqId: "rb" });
  d.run({ type: "podStatus", podId: b, state: "Ready", endpoint: "b" }); // idle
  const v = fairView(d.state);
  // x: 15.4 of 32 cores (0.48), 2 of 128 GiB, 40 of 80 GB: GPU memory dominates at 0.5.
  assert.ok(Math.abs(v.usage.get("x")! - 0.5) < 1e-9, String(v.usage.get("x")));
  // y's pod would be 0.75: x holds less, so its idle pod is not evicted for y; y waits.
  const acts = d.run(lease("rc", "y/n/c", "g2"));
  assert.deepEqual(kinds(acts), []);
  assert.equal(d.state.pods.get(b)!.state, "Ready");
});

Deno.test("room freed between ticks goes to the tenant holding least, whatever the functions' order", () => {
  for (const xFirst of [true, false]) {
    const d = new CoreDriver();
    d.run({
      type: "nodeUpdate",
      node: gpuNode("n1", ["paused", "host_memory"]),
    });
    const a = funcReport("x/n/a", { gpuCount: 1, vramMB: 40_000 }, { standbyTier: "host_memory" });
    const b = funcReport("x/n/b", { gpuCount: 1, vramMB: 60_000 });
    const c = funcReport("y/n/c", { gpuCount: 1, vramMB: 60_000 });
    for (const f of xFirst ? [a, b, c] : [a, c, b]) d.run({ type: "funcUpdate", func: f });
    const pod = created(d.run(lease("ra", "x/n/a")))[0].id;
    d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
    d.now = 100;
    d.run(lease("rb", "x/n/b", "g1", 60_000));
    d.now = 200;
    d.run(lease("rc", "y/n/c", "g2", 60_000));
    d.now = 1000;
    d.run({ type: "gatewayHeartbeat", gateway: "g2" });
    // Parked in host memory: its GPU freed once its agent reports the park (at once here).
    const placed = created([
      ...d.run({ type: "return", podId: pod, gateway: "g1" }),
      ...d.run({ type: "tick" }),
    ]).map((p) => p.func);
    // x still holds the parked pod's memory; y holds nothing: y first.
    assert.deepEqual(placed, ["y/n/c"], `functions registered ${xFirst ? "x" : "y"} first`);
  }
});

/** A node with room for two workers of half a core, and a way to register functions on it. */
function twoWorkerNode(fairShare: boolean) {
  const d = new CoreDriver();
  d.state.config.fairShare = fairShare;
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { cpuMillis: 1000, memMB: 4096 }) });
  const fn = (id: string, priority: Priority) =>
    d.run({
      type: "funcUpdate",
      func: funcReport(id, { cpu: 500, memMB: 256 }, {
        maxReplica: 4,
        standbyPerNode: 0,
        priority,
      }),
    });
  return { d, fn };
}

Deno.test("within a tenant, a waiting function of higher priority takes a worker back from a lower one, gracefully", () => {
  for (const fair of [true, false]) {
    const { d, fn } = twoWorkerNode(fair);
    fn("a/n/lo", "batch");
    fn("a/n/hi", "high");
    // The pool is full of the tenant's batch work, its gateway holding both workers.
    for (const r of ["l1", "l2"]) {
      for (const p of created(d.run(lease(r, "a/n/lo", "g1", 120_000)))) {
        d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
      }
    }
    const acts = d.run(lease("h1", "a/n/hi", "g1", 60_000));
    // It waited behind them until its deadline (priority applied only to free room).
    const asked = acts.find((a) => a.type === "reclaimLease");
    assert.ok(asked?.type === "reclaimLease", `${fair}: ${kinds(acts)}`);
    assert.match(asked.reason, /reclaimed for a\/n\/hi, of higher priority in its tenant/);
    assert.equal(d.state.pods.get(asked.podId)!.reclaimDeadline, undefined, "no deadline");
    // Given back when its call ends: a worker of the high function starts in its room.
    const back = d.run(
      { type: "return", podId: asked.podId, gateway: "g1" },
      { type: "podStatus", podId: asked.podId, state: "Terminated" },
    );
    assert.deepEqual(created(back).map((p) => p.func), ["a/n/hi"], `${fair}`);
    // The batch function never takes one back from the high one.
    const lo = d.run(lease("l3", "a/n/lo", "g1", 60_000));
    assert.ok(!lo.some((a) => a.type === "reclaimLease"), kinds(lo).join());
  }
});

Deno.test("a call that times out for want of room says when its own tenant's busy workers of its priority or higher hold it, and whose", () => {
  // [the busy function, its priority, the late one's priority, the names the timeout gives]
  const cases: [string, Priority, Priority, string | undefined][] = [
    ["a/n/busy", "normal", "normal", "a/n/busy"],
    ["a/n/busy", "high", "normal", "a/n/busy"],
    ["b/n/busy", "normal", "normal", undefined], // another tenant's workers: not its own
    ["a/n/busy", "batch", "high", undefined], // lower: taken back as their calls end, not named
    // Another namespace's: counted, not named (the caller may be kept to its own namespace).
    ["a/other/busy", "normal", "normal", "1 function of its other namespaces"],
  ];
  for (const [busy, busyPriority, latePriority, named] of cases) {
    // Fair share off: else tenant a, holding nothing, takes one back from b.
    const { d, fn } = twoWorkerNode(false);
    fn(busy, busyPriority);
    fn("a/n/late", latePriority);
    for (const r of ["l1", "l2"]) {
      for (const p of created(d.run(lease(r, busy, "g1", 120_000)))) {
        d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e" });
      }
    }
    d.run(lease("x1", "a/n/late", "g1", 60_000));
    d.now = 61_000;
    const failed = d.run({ type: "tick" }).find((a) => a.type === "leaseFailed");
    const message = failed?.type === "leaseFailed" ? failed.message : "";
    const label = `${busy} ${busyPriority}, late ${latePriority}`;
    if (named) {
      assert.match(
        message,
        new RegExp(
          `no node fits \\(.*\\); busy workers of its own tenant's ${named} hold the room it needs \\(only a function of higher priority takes one back\\)$`,
        ),
        label,
      );
    } else assert.doesNotMatch(message, /own tenant/, label);
  }
});
