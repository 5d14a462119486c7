import assert from "node:assert/strict";
import { CoreDriver, coreNode, funcReport, nodeReport } from "./testing.ts";
import { applySnapshot, planStart, snapshotIsFaster } from "./snapshot.ts";
import type { CoreAction, CoreFunc } from "./types.ts";

function func(over: Partial<CoreFunc> = {}): CoreFunc {
  return {
    ...funcReport("t/n/f", { memMB: 512 }),
    func: "t/n/f",
    pods: new Set(),
    idle: new Set(),
    waiters: [],
    restoreMs: {},
    snapshotNodes: new Set(),
    ...over,
  };
}

Deno.test("snapshotIsFaster() weighs the learned restore against the learned fresh start", () => {
  const cases: [string, Partial<CoreFunc>, boolean][] = [
    ["nothing learned yet: restore", {}, true],
    ["fresh start seen, no restore yet: one is tried", { coldStartMs: 300 }, true],
    [
      "fresh start seen, no restore yet, a large memory limit: one is tried all the same",
      { coldStartMs: 1200, demand: { cpu: 100, memMB: 2048, gpuType: "", gpuCount: 0, vramMB: 0 } },
      true,
    ],
    ["both learned, restore faster", { coldStartMs: 4000, snapshotStartMs: 400 }, true],
    ["both learned, fresh faster", { coldStartMs: 90, snapshotStartMs: 150 }, false],
  ];
  for (const [what, over, want] of cases) assert.equal(snapshotIsFaster(func(over)), want, what);
});

Deno.test("planStart() puts the pod on a node holding a snapshot, and restores it, only when that is faster", () => {
  const nodes = [coreNode({ name: "a" }), coreNode({ name: "b" })];
  const cases: [string, Partial<CoreFunc>, string, boolean][] = [
    ["no snapshot anywhere", {}, "a", false],
    ["a snapshot on b, restore faster", { snapshotNodes: new Set(["b"]) }, "b", true],
    [
      "a snapshot on b, fresh faster",
      { snapshotNodes: new Set(["b"]), coldStartMs: 80, snapshotStartMs: 200 },
      "a",
      false,
    ],
  ];
  for (const [what, over, node, fromSnapshot] of cases) {
    const plan = planStart(nodes, func(over));
    assert.ok(plan.result.ok, what);
    assert.equal(plan.result.node.name, node, what);
    assert.equal(plan.fromSnapshot, fromSnapshot, what);
  }
  // `always`: the snapshot serves even when a fresh start was faster.
  const always = planStart(nodes, func(cases[2][1]), "always");
  assert.equal(always.result.ok && always.result.node.name, "b");
  assert.equal(always.fromSnapshot, true);
  // A snapshot on a node the pod does not fit: placed elsewhere, started fresh.
  const full = [coreNode({ name: "a" }), coreNode({ name: "b", memUsedMB: 32_768 })];
  const plan = planStart(full, func({ snapshotNodes: new Set(["b"]) }));
  assert.equal(plan.result.ok && plan.result.node.name, "a");
  assert.equal(plan.fromSnapshot, false);
});

const created = (acts: CoreAction[]) =>
  acts.flatMap((a) => (a.type === "createPod" ? [a.pod] : []));
const lease = (reqId: string) => ({
  type: "lease" as const,
  reqId,
  func: "t/n/f",
  gateway: "g1",
  deadline: 60_000,
});

Deno.test("step() restores from a node's snapshot of the current version and learns how long it took", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1") },
    { type: "nodeUpdate", node: nodeReport("n2") },
    { type: "funcUpdate", func: funcReport("t/n/f", {}, { maxReplica: 2 }) },
  );
  // The first pod starts fresh; its node took a snapshot (2 s of its 5 s) before it was ready.
  const first = created(d.run(lease("r1")))[0];
  assert.equal(first.fromSnapshot, undefined);
  d.now = 5000;
  d.run({ type: "podStatus", podId: first.id, state: "Ready", endpoint: "e1", snapshotMs: 2000 });
  assert.equal(d.state.funcs.get("t/n/f")!.coldStartMs, 3000);
  d.run({ type: "snapshot", func: "t/n/f", version: 1, node: first.node, ready: true });
  // A snapshot of another version does not count.
  d.run({ type: "snapshot", func: "t/n/f", version: 7, node: "n9", ready: true });
  assert.deepEqual([...d.state.funcs.get("t/n/f")!.snapshotNodes], [first.node]);
  const second = created(d.run(lease("r2")))[0];
  assert.equal(second.node, first.node);
  assert.equal(second.fromSnapshot, true);
  d.now = 5300;
  d.run({
    type: "podStatus",
    podId: second.id,
    state: "Ready",
    endpoint: "e2",
    startedFrom: "snapshot",
  });
  assert.equal(d.state.funcs.get("t/n/f")!.snapshotStartMs, 300);
  // A new version forgets the old version's snapshots.
  d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, { maxReplica: 2 }, 2) });
  assert.equal(d.state.funcs.get("t/n/f")!.snapshotNodes.size, 0);
});

Deno.test("applySnapshot() drops a node whose snapshot went", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") }, {
    type: "funcUpdate",
    func: funcReport("t/n/f"),
  });
  applySnapshot(d.state, { func: "t/n/f", version: 1, node: "n1", ready: true });
  applySnapshot(d.state, { func: "t/n/none", version: 1, node: "n1", ready: true });
  assert.equal(d.state.funcs.get("t/n/f")!.snapshotNodes.size, 1);
  applySnapshot(d.state, { func: "t/n/f", version: 1, node: "n1", ready: false });
  assert.equal(d.state.funcs.get("t/n/f")!.snapshotNodes.size, 0);
});
