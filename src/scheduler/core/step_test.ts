import assert from "node:assert/strict";
import { CoreDriver, created, funcReport, kinds, lease, nodeReport } from "./testing.ts";
import type { CoreAction } from "./types.ts";

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
    gateway: "g1",
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
  assert.deepEqual(d.run(lease("r2")), [], "the same gateway waits for the one replica");
  const ready = d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  assert.deepEqual(ready.map((a) => a.type === "leaseGranted" && a.reqId), ["r1"]);
  const back = d.run({ type: "return", podId: pod.id, gateway: "g1" });
  assert.deepEqual(back, [{
    type: "leaseGranted",
    reqId: "r2",
    gateway: "g1",
    podId: pod.id,
    endpoint: "e",
    coldStart: false,
    resumed: false,
    version: 1,
  }]);
});

Deno.test("step() shares a function's workers between gateways once it is at max_replica", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { maxReplica: 1 }),
  });
  const pod = created(d.run(lease("r1", "t/n/f", "g1")))[0];
  assert.deepEqual(d.run(lease("r2", "t/n/f", "g2")), [], "nothing Ready yet: g2 waits");
  const ready = d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  assert.deepEqual(
    ready.map((a) => a.type === "leaseGranted" && [a.reqId, a.gateway, a.coldStart]),
    [["r1", "g1", true], ["r2", "g2", true]],
    "both gateways get the one worker rather than one waiting on the other",
  );
  const third = d.run(lease("r3", "t/n/f", "g3"));
  assert.deepEqual(
    third.map((a) => a.type === "leaseGranted" && [a.gateway, a.coldStart]),
    [["g3", false]],
  );
  assert.deepEqual(d.state.pods.get(pod.id)!.sharedWith, ["g2", "g3"]);
  assert.deepEqual(d.run({ type: "return", podId: pod.id, gateway: "g1" }), [], "g2, g3 keep it");
  assert.equal(d.state.pods.get(pod.id)!.leasedBy, "g2");
  d.run({ type: "return", podId: pod.id, gateway: "g2" });
  const last = d.run({ type: "return", podId: pod.id, gateway: "g3" });
  assert.deepEqual(kinds(last), ["terminatePod"], "the last return scales it in");
});

Deno.test("step() gives a silent gateway's share back and leaves the others theirs", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { maxReplica: 1 }),
  });
  const pod = created(d.run(lease("r1", "t/n/f", "g1")))[0];
  d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  d.run(lease("r2", "t/n/f", "g2"));
  d.now = 6_000;
  d.run({ type: "gatewayHeartbeat", gateway: "g2", leases: [pod.id] });
  d.now = 10_000; // g1 silent for the default 10 s
  d.run({ type: "tick" });
  const p = d.state.pods.get(pod.id)!;
  assert.equal(p.leasedBy, "g2", "g1 went silent: its share is gone, g2 keeps the worker");
  assert.equal(p.sharedWith, undefined);
  assert.equal(p.state, "Ready");
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
  // The only GPU is held by another function's min_replica pod: nothing to evict.
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 1, vramMB: 2000 }) },
    {
      type: "funcUpdate",
      func: funcReport("t/n/big", { gpuCount: 1, vramMB: 1500 }, { minReplica: 1 }),
    },
    { type: "funcUpdate", func: funcReport("t/n/f", { gpuCount: 1, vramMB: 1000 }) },
  );
  assert.deepEqual(d.run(lease("r1", "t/n/f", "g1", 500)), []);
  d.now = 499;
  assert.deepEqual(d.run({ type: "tick" }), []);
  d.now = 500;
  const acts = d.run({ type: "tick" });
  assert.equal(acts.length, 1);
  const a = acts[0];
  assert.ok(a.type === "leaseFailed" && a.code === "timeout");
  assert.match(a.message, /insufficient_vram/);
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
  // Its gateway may yet beat again: the worker waits for it a while before it idles.
  assert.ok(!d.state.funcs.get("t/n/f")!.idle.has(pod));
  d.now = 15_000;
  d.run({ type: "tick" });
  assert.ok(d.state.funcs.get("t/n/f")!.idle.has(pod));
});

Deno.test("step() neither parks nor scales in a silent gateway's worker at once, and gives it back when that gateway beats again", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { maxReplica: 1, standbyPerNode: 1 }),
  });
  const pod = created(d.run(lease("r1", "t/n/f", "g1")))[0].id;
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
  assert.equal(d.state.pods.get(pod)!.leasedBy, "g1");
  // g1 stalls (a call under way on the worker) past the gateway timeout.
  d.now = 10_000;
  const taken = d.run({ type: "tick" });
  assert.deepEqual(kinds(taken), [], "not parked, not ended under its call");
  // Meanwhile another gateway's lease waits rather than take the worker.
  d.now = 11_000;
  assert.deepEqual(kinds(d.run(lease("r2", "t/n/f", "g2"))), []);
  // g1 beats again, listing its lease: the worker is its again, as it was.
  d.now = 12_000;
  d.run({ type: "gatewayHeartbeat", gateway: "g1", leases: [pod] });
  const p = d.state.pods.get(pod)!;
  assert.equal(p.leasedBy, "g1");
  assert.equal(p.state, "Ready");
  assert.equal(p.unclaimedUntil, undefined);
  // g1 gives it back when its call is done: g2's waiting lease gets it.
  const back = d.run({ type: "return", podId: pod, gateway: "g1" });
  assert.ok(back.some((a) => a.type === "leaseGranted" && a.reqId === "r2"), JSON.stringify(back));
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

Deno.test("step() answers the waiting requests of a silent gateway: nothing is granted to it later", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f"),
  });
  // g1 asks with a long deadline (a big model's cold start), then goes silent.
  const pod = created(d.run(lease("r1", "t/n/f", "g1", 60_000)))[0];
  d.now = 11_000;
  const gone = d.run({ type: "tick" });
  assert.deepEqual(
    gone.filter((a) => a.type === "leaseFailed").map((a) => a.type === "leaseFailed" && a.reqId),
    ["r1"],
  );
  d.now = 20_000;
  const ready = d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  assert.ok(!ready.some((a) => a.type === "leaseGranted"), "not granted to a gateway gone silent");
  assert.equal(d.state.pods.get(pod.id)?.leasedBy, undefined);
});

Deno.test("step() gives no silent gateway's worker to another gateway found silent in the same tick", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { maxReplica: 3 }),
  });
  const pod = created(d.run(lease("gA-1", "t/n/f", "gA", 60_000)))[0];
  d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  // gB waits for a second pod, still starting; then neither gateway is heard for 10 s.
  assert.deepEqual(kinds(d.run(lease("gB-1", "t/n/f", "gB", 60_000))), ["createPod"]);
  d.now = 10_000;
  const acts = d.run({ type: "tick" });
  assert.ok(!acts.some((a) => a.type === "leaseGranted"), JSON.stringify(acts));
  assert.ok(acts.some((a) => a.type === "leaseFailed" && a.reqId === "gB-1"));
  assert.equal(d.state.pods.get(pod.id)?.leasedBy, undefined);
});

Deno.test("step() expires each waiter at its own deadline, whatever the order they came in", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f"),
  });
  // Both wait for the one pod max_replica allows, which never gets ready.
  assert.deepEqual(kinds(d.run(lease("r1", "t/n/f", "g1", 100_000))), ["createPod"]);
  assert.deepEqual(kinds(d.run(lease("r2", "t/n/f", "g1", 1_000))), []);
  d.now = 5_000;
  const acts = d.run({ type: "gatewayHeartbeat", gateway: "g1" }, { type: "tick" });
  assert.deepEqual(
    acts.filter((a) => a.type === "leaseFailed").map((a) => a.type === "leaseFailed" && a.reqId),
    ["r2"],
  );
});

Deno.test("a gateway whose lease was taken back while it was silent is told so by its next heartbeat", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { minReplica: 1, maxReplica: 2, scaleinTimeoutS: 60 }),
  });
  const pod = [...d.state.pods.keys()][0];
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" }, lease("r1"));
  assert.equal(d.state.pods.get(pod)!.leasedBy, "g1");
  // g1 is silent past the timeout and the grace after it: its lease is taken back, and g2
  // gets the worker.
  d.now = 10_000;
  d.run({ type: "tick" });
  d.now = 15_000;
  d.run({ type: "tick" });
  const g2 = d.run(lease("r2", "t/n/f", "g2"));
  assert.ok(g2.some((a) => a.type === "leaseGranted" && a.podId === pod));
  // g1 comes back listing it: not shared (max_replica is not reached), told to give it up.
  const back = d.run({ type: "gatewayHeartbeat", gateway: "g1", leases: [pod] });
  assert.deepEqual(
    back.filter((a) => a.type === "reclaimLease").map((a) =>
      a.type === "reclaimLease" && a.gateway
    ),
    ["g1"],
  );
  assert.equal(d.state.pods.get(pod)!.leasedBy, "g2");
  assert.equal(d.state.pods.get(pod)!.sharedWith, undefined);
  // A listed worker that is gone altogether: the same.
  const gone = d.run({ type: "gatewayHeartbeat", gateway: "g1", leases: ["p-none"] });
  assert.ok(gone.some((a) => a.type === "reclaimLease" && a.podId === "p-none"));
});

Deno.test("a lease's timeout gives a placement failure's reason only while it holds", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { ready: false }) });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f") });
  const failed = (actions: CoreAction[]) =>
    actions.filter((a) => a.type === "leaseFailed").map((a) => (a as { message: string }).message);
  // The node is not ready: the call times out saying so.
  d.run(lease("r1", "t/n/f", "g1", 1_000));
  d.now = 1_000;
  assert.match(failed(d.run({ type: "tick" }))[0], /no node fits \(1 node_not_ready\)$/);
  // The node is back: the next call's pod is placed, and never gets ready (its agent died).
  d.now = 2_000;
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  assert.equal(created(d.run(lease("r2", "t/n/f", "g1", 5_000))).length, 1);
  d.now = 5_000;
  assert.deepEqual(failed(d.run({ type: "tick" })), [
    "Cannot lease worker for t/n/f: no worker was ready before the deadline",
  ]);
});
