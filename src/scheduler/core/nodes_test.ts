import assert from "node:assert/strict";
import { heartbeatFresh } from "./nodes.ts";
import { newCoreState } from "./step.ts";
import { CoreDriver, created, funcReport, kinds, nodeReport } from "./testing.ts";
import type { CoreAction } from "./types.ts";

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

Deno.test("heartbeatFresh() holds a heartbeat younger than nodeTimeoutMs, and a node without one", () => {
  const state = newCoreState({ nodeTimeoutMs: 10_000 });
  const cases: [string, number | undefined, number, boolean][] = [
    ["no heartbeat known (the simulator)", undefined, 1e12, true],
    ["just heard", 50_000, 50_000, true],
    ["a millisecond short of the timeout", 50_000, 59_999, true],
    ["at the timeout", 50_000, 60_000, false],
    ["long silent", 50_000, 900_000, false],
  ];
  for (const [what, heartbeat, now, want] of cases) {
    assert.equal(heartbeatFresh(state, heartbeat, now), want, what);
  }
});

Deno.test("step() decides node readiness from the agent's report and its heartbeat's age", () => {
  // [case, reported ready, heartbeat, time of the report, time of a tick, ready then, ready after the tick]
  const cases: [string, boolean, number | undefined, number, number, boolean, boolean][] = [
    ["fresh, ticked before the timeout", true, 1000, 1000, 10_999, true, true],
    ["fresh, ticked at the timeout", true, 1000, 1000, 11_000, true, false],
    // Judged with the others (the next tick, or when all are listed), not as it comes.
    ["already stale when listed (restart)", true, 1000, 11_000, 11_000, true, false],
    ["reported not ready", false, 1000, 1000, 1000, false, false],
    ["no heartbeat known", true, undefined, 1000, 1e9, true, true],
  ];
  for (const [what, ready, heartbeat, at, tickAt, wantThen, wantAfter] of cases) {
    const d = new CoreDriver();
    d.state.config.nodeTimeoutMs = 10_000;
    d.now = at;
    d.run({ type: "nodeUpdate", node: nodeReport("n1", { ready, heartbeat }) });
    assert.equal(d.state.nodes.get("n1")!.ready, wantThen, `${what}: at the report`);
    d.now = tickAt;
    // Another node heard meanwhile: n1's silence is its own.
    d.run({ type: "nodeUpdate", node: nodeReport("n2", { heartbeat: tickAt }) });
    d.run({ type: "tick" });
    assert.equal(d.state.nodes.get("n1")!.ready, wantAfter, `${what}: after the tick`);
  }
});

/** A node's heartbeat as its record brings it. */
const beat = (name: string, heartbeat: number) => ({
  type: "nodeUpdate" as const,
  node: nodeReport(name, { heartbeat }),
});

/** Two nodes heard at 0 and a function's one Ready pod on one of them (`other`: the node without). */
function twoNodesOnePod() {
  const d = new CoreDriver();
  d.run(beat("n1", 0), beat("n2", 0));
  d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, { minReplica: 1 }) });
  const pod = [...d.state.pods.values()][0];
  d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e1" });
  return { d, pod, other: pod.node === "n1" ? "n2" : "n1" };
}

Deno.test("step() moves no pod when every node falls silent at once, and judges each afresh from when one is heard", () => {
  const { d, pod, other } = twoNodesOnePod();
  // Neither heard for a minute (the store full, say): the pod stays where it is.
  d.now = 60_000;
  assert.deepEqual(d.run({ type: "tick" }), []);
  assert.equal(d.state.nodes.get("n1")!.ready, true);
  assert.equal(d.state.nodes.get("n2")!.ready, true);
  assert.equal(d.state.pods.get(pod.id)!.state, "Ready");
  // The store is back: the node without the pod is heard first, the other a second later
  // (each beats at its own phase). Nothing moves meanwhile.
  d.now = 60_100;
  d.run(beat(other, 60_100));
  d.now = 60_250;
  assert.deepEqual(d.run({ type: "tick" }), []);
  d.now = 61_100;
  d.run(beat(pod.node!, 61_100));
  d.now = 61_250;
  assert.deepEqual(d.run({ type: "tick" }), []);
  assert.equal(d.state.nodes.get(pod.node!)!.ready, true);
  // Had the pod's node not come back, its silence would be its own a timeout after that.
  d.run(beat(pod.node!, 0));
  d.now = 70_000;
  d.run(beat(other, 70_000));
  assert.deepEqual(d.run({ type: "tick" }), []);
  d.now = 70_300;
  const acts = d.run({ type: "tick" });
  assert.deepEqual(kinds(acts), ["terminatePod", "createPod"]);
  assert.equal(created(acts)[0].node, other);
});

Deno.test("step() moves no pod of nodes all listed stale by a scheduler that starts, and judges them from when one is heard", () => {
  const d = new CoreDriver();
  d.now = 30_000; // the store's nodes were last heard 30 s ago (a scheduler taking over)
  d.run(beat("n1", 0), beat("n2", 0), { type: "nodesListed" });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, {}) });
  const pod = {
    id: "x-1",
    func: "t/n/f",
    version: 1,
    node: "n1",
    cpu: 100,
    memMB: 64,
    gpus: [],
    desired: "Running" as const,
    state: "Ready" as const,
    endpoint: "10.0.0.9:80",
  };
  assert.deepEqual(kinds(d.run({ type: "podRecord", pod }, { type: "tick" })), []);
  assert.equal(d.state.nodes.get("n1")!.ready, true);
  assert.equal(d.state.nodes.get("n2")!.ready, true);
  assert.equal(d.state.pods.get("x-1")!.state, "Ready");
  // n2 is heard: n1 gets a full timeout from then, and is lost after it.
  d.now = 31_000;
  d.run(beat("n2", 31_000), { type: "tick" });
  d.now = 40_000;
  d.run(beat("n2", 40_000));
  assert.deepEqual(kinds(d.run({ type: "tick" })), []);
  d.now = 41_100;
  d.run(beat("n2", 41_000));
  assert.deepEqual(kinds(d.run({ type: "tick" })), ["terminatePod"]);
  assert.equal(d.state.nodes.get("n1")!.ready, false);
});

Deno.test("step() replaces the pods of a node whose heartbeats stop, and takes it back when they resume", () => {
  const d = new CoreDriver();
  d.run(beat("n1", 0), { type: "funcUpdate", func: funcReport("t/n/f", {}, { minReplica: 1 }) });
  const first = [...d.state.pods.values()][0];
  assert.equal(first.node, "n1");
  d.now = 8000;
  d.run(beat("n2", 8000));
  d.now = 10_000;
  const acts: CoreAction[] = d.run({ type: "tick" });
  assert.deepEqual(acts[0], {
    type: "terminatePod",
    podId: first.id,
    reason: "node n1 missed its heartbeats",
  });
  assert.deepEqual(kinds(acts), ["terminatePod", "createPod"]);
  assert.equal(created(acts)[0].node, "n2");
  assert.equal(d.state.nodes.get("n1")!.ready, false);
  d.run(beat("n1", 10_500));
  assert.equal(d.state.nodes.get("n1")!.ready, true, "its next heartbeat brings it back");
});

Deno.test("step() keeps a silent node's pods charged until it says they are gone, so nothing is placed into what they hold when it comes back", () => {
  const d = new CoreDriver();
  const gpuNode = (heartbeat: number) => ({
    type: "nodeUpdate" as const,
    node: nodeReport("n1", { gpuCount: 1, vramMB: 24_000, heartbeat }),
  });
  d.run(gpuNode(0));
  const first = created(d.run({
    type: "funcUpdate",
    func: funcReport("t/n/f", { gpuCount: 1, vramMB: 20_000 }, { minReplica: 1 }),
  }))[0];
  d.run({ type: "podStatus", podId: first.id, state: "Ready", endpoint: "e1" });
  // Its agent stalls (the worker runs on, holding 20 GB) while a node without GPUs is heard,
  // then is heard before it has acted.
  d.now = 11_000;
  d.run({ type: "nodeUpdate", node: nodeReport("cpu", { heartbeat: 11_000 }) });
  assert.deepEqual(kinds(d.run({ type: "tick" })), ["terminatePod"]);
  d.now = 12_000;
  assert.deepEqual(kinds(d.run(gpuNode(12_000))), [], "no second 20 GB pod on the 24 GB GPU");
  // The informer's resync brings the old pod's record again: charged once, not twice.
  d.run({
    type: "podRecord",
    pod: { ...first, desired: "Terminated", state: "Ready", endpoint: "e1" },
  });
  const gpu = () => d.state.nodes.get("n1")!.gpus[0];
  assert.equal(gpu().vramUsedMB, 20_000);
  // Once the node says it is gone, its replacement takes the GPU.
  const acts = d.run({ type: "podStatus", podId: first.id, state: "Terminated" });
  assert.deepEqual(kinds(acts), ["createPod"]);
  assert.equal(gpu().vramUsedMB, 20_000);
  // A node whose record is removed takes its pods' charges with it.
  d.run({ type: "nodeRemove", name: "n1" });
  assert.equal(d.state.pods.size, 0);
});

Deno.test("step() counts a GPU that left a node's report and came back with what its pods still hold", () => {
  const d = new CoreDriver();
  const withGpu = {
    type: "nodeUpdate" as const,
    node: nodeReport("n1", { gpuCount: 1, vramMB: 24_000 }),
  };
  d.run(withGpu);
  const first = created(d.run({
    type: "funcUpdate",
    func: funcReport("t/n/f", { gpuCount: 1, vramMB: 20_000 }, { minReplica: 1 }),
  }))[0];
  d.run({ type: "podStatus", podId: first.id, state: "Ready", endpoint: "e1" });
  // Its agent restarts and finds no GPU once (discovery failed), then finds it again.
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 0 }) });
  const back = d.run(withGpu);
  const gpu = () => d.state.nodes.get("n1")!.gpus[0];
  assert.equal(gpu().vramUsedMB, 20_000, "the pod on it still holds its slice");
  assert.deepEqual(created(back), []);
  d.run({ type: "podStatus", podId: first.id, state: "Terminated" });
  assert.equal(gpu().vramUsedMB, 0, "given back once, not twice");
});

Deno.test("step() moves no pod when the store stops carrying heartbeats that came at different moments, and does when one node alone stops", () => {
  for (const lone of [false, true]) {
    const { d, pod, other } = twoNodesOnePod();
    // Every 2 s, the pod's node first and the other 1.75 s later; from 17.9 s on the store
    // carries none (or, alone, none of the pod's node's): the pod's node is the first silent.
    const acts: string[] = [];
    for (let t = 250; t <= 40_000; t += 250) {
      d.now = t;
      if (t % 2000 === 0 && t <= 17_900) d.run(beat(pod.node!, t));
      if (t % 2000 === 1750 && (t <= 17_900 || lone)) d.run(beat(other, t));
      acts.push(...kinds(d.run({ type: "tick" })));
    }
    if (lone) {
      assert.deepEqual(acts, ["terminatePod", "createPod"], "the lone silent node");
      assert.equal(d.state.nodes.get(pod.node!)!.ready, false);
    } else {
      assert.deepEqual(acts, [], "every node silent");
      assert.equal(d.state.nodes.get(pod.node!)!.ready, true);
    }
  }
});
