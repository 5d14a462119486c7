import assert from "node:assert/strict";
import { CoreDriver, created, funcReport, kinds, lease, nodeReport } from "./testing.ts";
import type { CoreAction, FuncReport, PodPlacement } from "./types.ts";

const demand = { cpu: 1000, memMB: 1024, gpuType: "Any", gpuCount: 0, vramMB: 0 };

/** Version `v` of `t/n/f` as newest, older versions `older` serving too. */
function versions(v: number, older: number[] = [], policy = {}): FuncReport {
  return {
    ...funcReport("t/n/f", {}, { maxReplica: 4, ...policy }, v),
    older: older.map((version) => ({ version, demand: { ...demand, cpu: 500 } })),
  };
}

/** A driver with one node and `t/n/f` at `report`, its created pods made ready. */
function setup(report: FuncReport) {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  const pods: PodPlacement[] = [];
  /** Makes the pods `acts` create ready; returns `acts` and what that did. */
  const ready = (acts: CoreAction[]) => {
    const out = [...acts];
    for (const p of created(acts)) {
      pods.push(p);
      out.push(...d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: `e-${p.id}` }));
    }
    return out;
  };
  ready(d.run({ type: "funcUpdate", func: report }));
  return { d, pods, ready };
}

const granted = (acts: CoreAction[]) =>
  acts.flatMap((a) => (a.type === "leaseGranted" ? [[a.reqId, a.version]] : []));

Deno.test("a traffic split keeps pods for every serving version, min_replica each, with their own demand", () => {
  const { d, pods } = setup(versions(2, [1], { minReplica: 1 }));
  assert.deepEqual(pods.map((p) => [p.version, p.cpu]).sort(), [[1, 500], [2, 1000]]);
  assert.deepEqual([...d.state.funcs.keys()].sort(), ["t/n/f", "t/n/f@1"]);
  assert.deepEqual(d.state.units.get("t/n/f")!.map((u) => u.version), [2, 1]);
});

Deno.test("leases name the version they route to; a version that does not serve gets the newest", () => {
  const { d, ready } = setup(versions(2, [1]));
  const cases: [string, number | undefined, number][] = [
    ["r1", 1, 1],
    ["r2", 2, 2],
    ["r3", undefined, 2],
    ["r4", 7, 2],
  ];
  for (const [reqId, version, want] of cases) {
    const acts = ready(d.run({ ...lease(reqId), gateway: `g-${reqId}`, version }));
    assert.deepEqual(granted(acts), [[reqId, want]], `lease for version ${version}`);
    const podId = acts.find((a) => a.type === "leaseGranted")!;
    assert.equal(podId.type === "leaseGranted" && podId.version, want);
  }
});

Deno.test("the split changes: versions leaving it drain, versions staying keep their pods", () => {
  // Table: [from (newest, older), to (newest, older), versions whose pods are terminated].
  const cases: [string, [number, number[]], [number, number[]], number[]][] = [
    ["promote: the older version drains", [2, [1]], [2, []], [1]],
    ["rollback: the newest drains, the older one is the function's again", [2, [1]], [1, []], [2]],
    ["a new canary over the stable one: the former canary drains", [2, [1]], [3, [1]], [2]],
    ["a new canary over the former canary", [2, [1]], [3, [2]], [1]],
    ["nothing changes", [2, [1]], [2, [1]], []],
  ];
  for (const [name, [fromV, fromOld], [toV, toOld], drained] of cases) {
    const { d, pods, ready } = setup(versions(fromV, fromOld, { minReplica: 1 }));
    const acts = ready(
      d.run({ type: "funcUpdate", func: versions(toV, toOld, { minReplica: 1 }) }),
    );
    const terminated = acts.flatMap((a) => (a.type === "terminatePod" ? [a.podId] : []));
    assert.deepEqual(
      pods.filter((p) => terminated.includes(p.id)).map((p) => p.version).sort(),
      drained,
      name,
    );
    // Every version serving afterwards has its min_replica pod, without starting a kept one again.
    const live = [...d.state.pods.values()].filter((p) => p.state !== "Terminating");
    assert.deepEqual(
      [...new Set(live.map((p) => p.version))].sort(),
      [toV, ...toOld].sort(),
      name,
    );
    assert.equal(live.length, 1 + toOld.length, `${name}: one pod per serving version`);
  }
});

Deno.test("a rolled-back version serves at once from its warm pod, and a drained leased pod goes when returned", () => {
  const { d } = setup(versions(2, [1], { minReplica: 1 }));
  const v2 = [...d.state.pods.values()].find((p) => p.version === 2)!;
  const acts = d.run({ ...lease("r1"), version: 2 });
  assert.deepEqual(granted(acts), [["r1", 2]]);
  d.run({ type: "funcUpdate", func: versions(1, [], { minReplica: 1 }) });
  assert.equal(v2.state, "Ready", "leased: it drains when given back");
  const warm = d.run({ ...lease("r2", "t/n/f", "g2") });
  assert.deepEqual(granted(warm), [["r2", 1]]);
  assert.equal(warm[0].type === "leaseGranted" && warm[0].coldStart, false);
  assert.deepEqual(kinds(d.run({ type: "return", podId: v2.id, gateway: "g1" })), ["terminatePod"]);
});

Deno.test("waiters of a version that stops serving are served by the newest", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  d.run({ type: "funcUpdate", func: versions(2, [1]) });
  const first = d.run({ ...lease("r1"), version: 1 });
  assert.deepEqual(created(first).map((p) => p.version), [1]);
  const acts = d.run({ type: "funcUpdate", func: versions(2, []) });
  assert.deepEqual(kinds(acts), ["terminatePod", "createPod"]);
  const pod = created(acts)[0];
  assert.equal(pod.version, 2);
  const ready = d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  assert.deepEqual(granted(ready), [["r1", 2]]);
});

Deno.test("after a restart, pod records of every serving version find their version", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  const rec = (id: string, version: number) => ({
    type: "podRecord" as const,
    pod: {
      id,
      func: "t/n/f",
      version,
      node: "n1",
      cpu: 500,
      memMB: 1024,
      gpus: [],
      desired: "Running" as const,
      state: "Ready" as const,
      endpoint: `e-${id}`,
    },
  });
  d.run(rec("a", 1), rec("b", 2), rec("c", 3));
  const acts = d.run({ type: "funcUpdate", func: versions(3, [1]) });
  assert.deepEqual(acts, [{ type: "terminatePod", podId: "b", reason: "old version drained" }]);
  assert.deepEqual([...d.state.funcs.get("t/n/f@1")!.pods], ["a"]);
  assert.deepEqual([...d.state.funcs.get("t/n/f")!.pods], ["c"]);
});

Deno.test("removing a function ends every version: pods terminated, waiters refused", () => {
  const { d } = setup(versions(2, [1], { minReplica: 1, maxReplica: 1 }));
  // The same gateway twice: a worker at max_replica is not shared with its own holder.
  d.run({ ...lease("r1"), version: 1 }, { ...lease("r2"), version: 1 });
  const acts = d.run({ type: "funcRemove", id: "t/n/f" });
  assert.deepEqual(kinds(acts).sort(), ["leaseFailed", "terminatePod", "terminatePod"]);
  assert.equal(d.state.funcs.size, 0);
  assert.equal(d.state.units.size, 0);
});

Deno.test("a lowered max_replica holds for the pods a version has: parked and idle end, leased are asked back", () => {
  const policy = { minReplica: 0, maxReplica: 3, standbyPerNode: 1, scaleinTimeoutS: 1 };
  const { d, ready } = setup(funcReport("t/n/f", {}, policy));
  const acts = [
    ...ready(d.run(lease("r1", "t/n/f", "g1"))),
    ...ready(d.run(lease("r2", "t/n/f", "g1"))),
    ...ready(d.run(lease("r3", "t/n/f", "g2"))),
  ];
  const leased = acts.flatMap((a) => (a.type === "leaseGranted" ? [a.podId] : []));
  assert.equal(leased.length, 3);
  const states = () =>
    [...d.state.pods.values()].filter((p) => p.state !== "Terminating").map((p) => p.state);

  // Under load: every pod leased, none idle. Two are asked back; no new lease goes to them.
  const lowered = d.run({
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { ...policy, maxReplica: 1 }),
  });
  const asked = lowered.flatMap((a) => a.type === "reclaimLease" ? [[a.podId, a.reason]] : []);
  assert.equal(asked.length, 2, JSON.stringify(lowered));
  assert.ok(asked.every(([, why]) => why === "above max_replica 1"));
  // Asked again at the gateway's heartbeat (a lost answer loses nothing).
  const gw = (id: string) => d.state.pods.get(id)!.leasedBy!;
  const beat = d.run({ type: "gatewayHeartbeat", gateway: gw(asked[0][0]) });
  assert.ok(beat.some((a) => a.type === "reclaimLease" && a.podId === asked[0][0]));
  // Given back, they end (not parked: a parked pod is still a replica); the third serves on.
  for (const [podId] of asked) {
    const back = d.run({ type: "return", podId, gateway: gw(podId) });
    assert.deepEqual(
      back.flatMap((a) => (a.type === "terminatePod" ? [[a.podId, a.reason]] : [])),
      [[podId, "above max_replica 1"]],
    );
  }
  assert.deepEqual(states(), ["Ready"]);
  d.now += 500;
  assert.deepEqual(created(d.run({ type: "tick" })), [], "nothing started again");
  assert.deepEqual(states(), ["Ready"]);
});

Deno.test("a lowered max_replica with idle and parked pods keeps one replica in all, parked ones included", () => {
  const policy = { minReplica: 3, maxReplica: 3, standbyPerNode: 1, scaleinTimeoutS: 1 };
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { standbyTiers: ["paused"] }) });
  for (const p of created(d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, policy) }))) {
    d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: `e-${p.id}` });
  }
  const live = () =>
    [...d.state.pods.values()].filter((p) => p.state !== "Terminating").map((p) => p.state);
  assert.deepEqual(live(), ["Ready", "Ready", "Ready"]);
  const acts = d.run({
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { ...policy, minReplica: 1, maxReplica: 1 }),
  });
  assert.deepEqual(kinds(acts).filter((k) => k === "terminatePod").length, 2);
  assert.deepEqual(live(), ["Ready"]);
  // Idle past its scale-in timeout, the one left may park: it is the one replica.
  d.now += 5_000;
  d.run({ type: "tick" });
  assert.equal(live().length, 1);
});

Deno.test("standby_per_node counts the parked pods of every serving version together", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { standbyTiers: ["paused"] }) },
    { type: "funcUpdate", func: versions(3, [1, 2], { standbyPerNode: 1, scaleinTimeoutS: 0 }) },
  );
  const ends: string[][] = [];
  for (const v of [1, 2, 3]) {
    const pod = created(d.run({ ...lease(`r${v}`), version: v }))[0];
    assert.equal(pod.version, v);
    d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: `e${v}` });
    ends.push(kinds(d.run({ type: "return", podId: pod.id, gateway: "g1" })));
  }
  assert.deepEqual(ends, [["parkPod"], ["terminatePod"], ["terminatePod"]]);
  // Lowered to 0: the one parked goes too, whichever version it is of.
  const lowered = d.run({
    type: "funcUpdate",
    func: versions(3, [1, 2], { standbyPerNode: 0, scaleinTimeoutS: 0 }),
  });
  assert.deepEqual(kinds(lowered), ["terminatePod"]);
});

Deno.test("a newest version the split gives no calls keeps no min_replica pods; a lease for it still starts one", () => {
  const { d, pods, ready } = setup({
    ...versions(2, [1], { minReplica: 1 }),
    newestTakesNone: true,
  });
  assert.deepEqual(pods.map((p) => p.version), [1], "the version that takes the calls");
  const acts = ready(d.run({ ...lease("r1"), version: 2 }));
  assert.deepEqual(granted(acts), [["r1", 2]]);
  // Given calls again (the split names it): its min_replica holds.
  const { pods: both } = setup(versions(2, [1], { minReplica: 1 }));
  assert.deepEqual(both.map((p) => p.version).sort(), [1, 2]);
});
