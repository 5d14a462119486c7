import assert from "node:assert/strict";
import { OUTPUT_TAIL, type PodState, type StandbyTier } from "../../model/cluster.ts";
import { recoveredState } from "./pods.ts";
import { START_STABLE_MS, startFailed } from "./backoff.ts";
import type { Ctx } from "./_accounting.ts";
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
import type { CoreAction, CorePod, CorePodState, PodRecord } from "./types.ts";

const record = (
  pod: Omit<CorePod, "state">,
  desired: PodRecord["desired"],
  state: PodState,
  more: Partial<PodRecord> = {},
): PodRecord => ({
  id: pod.id,
  func: pod.func,
  version: pod.version,
  node: pod.node,
  cpu: pod.cpu,
  memMB: pod.memMB,
  gpus: pod.gpus,
  desired,
  state,
  ...more,
});

Deno.test("step() rebuilds accounting from pod records after a restart", () => {
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
    { type: "podRecord", pod: record(pod, "Running", "Ready", { endpoint: "e" }) },
    {
      type: "funcUpdate",
      func: funcReport("t/n/f", { gpuCount: 1, vramMB: 1000 }, { minReplica: 1 }),
    },
  );
  assert.deepEqual(acts, []);
  assert.deepEqual(again.state.nodes.get("n1")!.gpus, before);
});

Deno.test("recoveredState() reads what a pod record stands for after a restart", () => {
  const cases: [
    PodRecord["desired"],
    PodState,
    StandbyTier | undefined,
    CorePodState | undefined,
  ][] = [
    ["Running", "Creating", undefined, "Creating"],
    ["Running", "Resuming", undefined, "Creating"],
    ["Running", "Ready", undefined, "Ready"],
    ["Standby", "Standby", "paused", "Standby"],
    ["Standby", "Standby", undefined, "Creating"],
    ["Standby", "Ready", undefined, "Ready"],
    // A park or a resume under way when the scheduler stopped: counted as decided.
    ["Standby", "Ready", "host_memory", "Standby"],
    ["Running", "Standby", "host_memory", "Resuming"],
    ["Running", "Standby", "file", "Resuming"],
    ["Terminated", "Ready", undefined, "Terminating"],
    ["Running", "Failed", undefined, undefined],
    ["Terminated", "Terminated", undefined, undefined],
  ];
  const base = { id: "p", func: "t/n/f", version: 1, node: "n1", cpu: 1, memMB: 1, gpus: [] };
  for (const [desired, state, tier, want] of cases) {
    assert.equal(
      recoveredState({ ...base, desired, state, tier }),
      want,
      `desired ${desired}, state ${state}, tier ${tier}`,
    );
  }
});

Deno.test("step() recovers an unknown pod from its record, or asks to end it", () => {
  // [case, desired, state, node, actions]
  const cases: [string, PodRecord["desired"], PodState, string, CoreAction[]][] = [
    ["failed while nobody scheduled", "Running", "Failed", "n1", [
      { type: "terminatePod", podId: "x-1", reason: "its record says Failed" },
    ]],
    ["failed and already ended", "Terminated", "Failed", "n1", []],
    // No agent will ever act on it: its record goes.
    ["on a node nobody knows", "Running", "Ready", "n9", [
      { type: "terminatePod", podId: "x-1", reason: "node n9 is unknown", orphan: true },
    ]],
    ["being terminated", "Terminated", "Ready", "n1", [
      { type: "terminatePod", podId: "x-1", reason: "terminating before restart" },
    ]],
    ["ready and idle", "Running", "Ready", "n1", []],
    ["still starting", "Running", "Creating", "n1", []],
  ];
  for (const [what, desired, state, node, want] of cases) {
    const d = new CoreDriver();
    d.run(
      { type: "nodeUpdate", node: nodeReport("n1") },
      { type: "funcUpdate", func: funcReport("t/n/f", {}, { maxReplica: 2 }) },
    );
    const pod = { id: "x-1", func: "t/n/f", version: 1, node, cpu: 100, memMB: 64, gpus: [] };
    const acts = d.run({ type: "podRecord", pod: { ...pod, desired, state, endpoint: "e" } });
    assert.deepEqual(acts, want, what);
    const kept = d.state.pods.get("x-1");
    if (want.length === 0 && state !== "Failed") {
      assert.equal(d.state.nodes.get("n1")!.cpuUsed, 100, `${what}: its CPU is charged`);
      assert.equal(kept?.state, state === "Ready" ? "Ready" : "Creating", what);
    }
  }
});

/** A driver with one pod of t/n/f brought to `state`, on a GPU node with the paused tier. */
function podIn(state: "Creating" | "Terminating" | "Standby" | "Resuming") {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: gpuNode("n1", ["paused"]) },
    { type: "funcUpdate", func: gpuFunc("t/n/f", "paused") },
  );
  const pod = created(d.run(lease("r1")))[0];
  if (state === "Terminating") d.run({ type: "killPod", podId: pod.id });
  if (state === "Standby" || state === "Resuming") {
    d.run(
      { type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" },
      { type: "return", podId: pod.id, gateway: "g1" },
    );
  }
  if (state === "Resuming") d.run(lease("r2"));
  const core = d.state.pods.get(pod.id)!;
  assert.equal(core.state, state);
  return { d, pod: core };
}

Deno.test("step() takes a known pod's record: reports from its agent, and asks again for what a lost write asked", () => {
  // [case, core state, record desired, record state, action kinds, core state after]
  const cases: [
    string,
    "Creating" | "Terminating" | "Standby" | "Resuming",
    PodRecord["desired"],
    PodState,
    CoreAction["type"][],
    CorePodState | undefined,
  ][] = [
    ["a lost terminate", "Terminating", "Running", "Ready", ["terminatePod"], "Terminating"],
    ["a terminate written", "Terminating", "Terminated", "Ready", [], "Terminating"],
    ["a lost park", "Standby", "Running", "Ready", ["parkPod"], "Standby"],
    ["a park written", "Standby", "Standby", "Standby", [], "Standby"],
    ["a lost resume", "Resuming", "Standby", "Standby", ["resumePod"], "Resuming"],
    ["a resume done", "Resuming", "Running", "Ready", ["leaseGranted"], "Ready"],
    ["a start done", "Creating", "Running", "Ready", ["leaseGranted"], "Ready"],
    ["a start failed", "Creating", "Running", "Failed", ["terminatePod", "leaseFailed"], undefined],
    ["still starting", "Creating", "Running", "Creating", [], "Creating"],
  ];
  for (const [what, core, desired, state, want, after] of cases) {
    const { d, pod } = podIn(core);
    const acts = d.run({
      type: "podRecord",
      pod: record(pod, desired, state, { endpoint: "e", error: "exit 1" }),
    });
    assert.deepEqual(kinds(acts), want, what);
    assert.equal(d.state.pods.get(pod.id)?.state, after, what);
    const park = acts.find((a) => a.type === "parkPod" || a.type === "resumePod");
    if (park) assert.equal("tier" in park && park.tier, "paused", `${what}: the tier`);
  }
});

Deno.test("a Ready pod recovered on a node that missed its heartbeats is lost with it, not handed out, and keeps its charge", () => {
  const d = new CoreDriver();
  d.now = 100_000;
  d.run(
    { type: "nodeUpdate", node: nodeReport("dead", { heartbeat: 1_000 }) },
    { type: "nodeUpdate", node: nodeReport("n2", { heartbeat: 100_000 }) },
    { type: "nodesListed" },
  );
  assert.equal(d.state.nodes.get("dead")!.ready, false);
  const recovered = d.run({
    type: "podRecord",
    pod: {
      id: "x-1",
      func: "t/n/f",
      version: 1,
      node: "dead",
      cpu: 1000,
      memMB: 1024,
      gpus: [],
      desired: "Running",
      state: "Ready",
      endpoint: "10.0.0.9:80",
    },
  });
  assert.deepEqual(
    recovered.map((a) => a.type === "terminatePod" && a.podId),
    ["x-1"],
  );
  // Ending, and charged to its node until the node says it is gone (it may run on there).
  assert.equal(d.state.pods.get("x-1")!.state, "Terminating");
  assert.equal(d.state.nodes.get("dead")!.cpuUsed, 1000);
  // min_replica is met by a new pod on the live node, and a lease waits for it.
  const made = d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, { minReplica: 1 }) });
  assert.deepEqual(created(made).map((p) => p.node), ["n2"]);
  assert.ok(!d.run(lease("r1")).some((a) => a.type === "leaseGranted"));
  d.run({ type: "podStatus", podId: "x-1", state: "Terminated" });
  assert.equal(d.state.nodes.get("dead")!.cpuUsed, 0);
});

Deno.test("a park or a resume under way at a restart: the parking pod is not handed out, the resuming one keeps its GPU memory", () => {
  const d = new CoreDriver("s2");
  d.run({
    type: "nodeUpdate",
    node: gpuNode("n1", ["paused", "host_memory"]),
  });
  const base = { node: "n1", cpu: 1000, memMB: 1024, version: 1 };
  const parking: PodRecord = {
    ...base,
    id: "old-1",
    func: "t/n/a",
    gpus: [{ index: 0, vramMB: 30_000 }],
    desired: "Standby",
    state: "Ready",
    tier: "host_memory",
    endpoint: "e1",
  };
  const resuming: PodRecord = {
    ...base,
    id: "old-2",
    func: "t/n/b",
    gpus: [{ index: 0, vramMB: 40_000 }],
    desired: "Running",
    state: "Standby",
    tier: "host_memory",
    endpoint: "e2",
  };
  d.run(
    { type: "podRecord", pod: parking },
    { type: "podRecord", pod: resuming },
    {
      type: "funcUpdate",
      func: funcReport("t/n/a", { gpuCount: 1, vramMB: 30_000 }, { standbyTier: "host_memory" }),
    },
    {
      type: "funcUpdate",
      func: funcReport("t/n/b", { gpuCount: 1, vramMB: 40_000 }, { standbyTier: "host_memory" }),
    },
    { type: "funcUpdate", func: funcReport("t/n/c", { gpuCount: 1, vramMB: 50_000 }) },
  );
  assert.equal(d.state.pods.get("old-1")!.state, "Standby");
  assert.equal(d.state.pods.get("old-2")!.state, "Resuming");
  // A lease for a is not granted the pod being frozen (it resumes it once parked).
  const a = d.run(lease("r1", "t/n/a"));
  assert.ok(!a.some((x) => x.type === "leaseGranted" && x.podId === "old-1"), JSON.stringify(a));
  // c (50 GB) does not fit beside b's 40 GB being restored on the 80 GB GPU.
  const c = d.run(lease("r2", "t/n/c"));
  assert.deepEqual(created(c), [], "no pod placed into the memory a restore fills");
  // The resume done: b is up, not parked again.
  const done = d.run({ type: "podRecord", pod: { ...resuming, state: "Ready", tier: undefined } });
  assert.ok(!done.some((x) => x.type === "parkPod"), JSON.stringify(done));
  assert.equal(d.state.pods.get("old-2")!.state, "Ready");
});

Deno.test("after a restart, a parked pod being terminated is charged what its tier holds, not all it had", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["host_memory"]) });
  d.run({
    type: "podRecord",
    pod: {
      id: "old-1",
      func: "t/n/f",
      version: 1,
      node: "n1",
      cpu: 3000,
      memMB: 1024,
      gpus: [{ index: 0, vramMB: 40_000 }],
      desired: "Terminated",
      state: "Standby",
      tier: "host_memory",
    },
  });
  const n = d.state.nodes.get("n1")!;
  // Parked in host memory it holds memory only (its own and its GPU memory's copy): its CPU
  // and its slice of the GPU are free.
  assert.deepEqual([n.cpuUsed, n.memUsedMB, n.gpus[0].vramUsedMB], [0, 1024 + 40_000, 0]);
  d.run({ type: "podStatus", podId: "old-1", state: "Terminated" });
  assert.deepEqual([n.cpuUsed, n.memUsedMB, n.gpus[0].vramUsedMB], [0, 0, 0]);
});

/** A scheduler just restarted: it rebuilt Ready pod `old-1` of t/n/f (at most `maxReplica`) from its record. */
function restartedWithReadyPod(maxReplica: number): CoreDriver {
  const d = new CoreDriver("s2");
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1") },
    {
      type: "podRecord",
      pod: {
        id: "old-1",
        func: "t/n/f",
        version: 1,
        node: "n1",
        cpu: 500,
        memMB: 1024,
        gpus: [],
        desired: "Running",
        state: "Ready",
        endpoint: "e1",
      },
    },
    { type: "funcUpdate", func: funcReport("t/n/f", {}, { maxReplica }) },
  );
  return d;
}

Deno.test("after a restart, a Ready pod waits for the gateways' heartbeats before it is handed out or parked", () => {
  const setup = () => restartedWithReadyPod(1);
  // A gateway still serving a call on it claims it with its next heartbeat.
  const d = setup();
  d.now = 1000;
  const other = d.run(lease("r1", "t/n/f", "g2"));
  assert.ok(!other.some((a) => a.type === "leaseGranted"), "not handed to another gateway");
  assert.ok(
    !d.run({ type: "tick" }).some((a) => a.type === "parkPod" || a.type === "terminatePod"),
  );
  d.run({ type: "gatewayHeartbeat", gateway: "g1", leases: ["old-1"] });
  assert.equal(d.state.pods.get("old-1")!.leasedBy, "g1");
  // Nobody claims it: after the grace it is unleased, here handed to the waiting call.
  const e = setup();
  e.run(lease("r1", "t/n/f", "g2"));
  e.now = 6000;
  const granted = e.run({ type: "tick" });
  assert.ok(
    granted.some((a) => a.type === "leaseGranted" && a.podId === "old-1" && a.gateway === "g2"),
    JSON.stringify(granted),
  );
});

Deno.test("after a restart, a call waits for a Ready pod no gateway has claimed yet rather than start another", () => {
  const setup = () => restartedWithReadyPod(2);
  // Nobody claims it: the call gets it after the grace, and no second pod was started.
  const d = setup();
  d.now = 1000;
  assert.deepEqual(created(d.run(lease("r1", "t/n/f", "g2"))), []);
  assert.deepEqual(created(d.run({ type: "tick" })), []);
  d.now = 6000;
  const granted = d.run({ type: "tick" });
  assert.ok(
    granted.some((a) => a.type === "leaseGranted" && a.podId === "old-1" && a.gateway === "g2"),
    JSON.stringify(granted),
  );
  assert.deepEqual(created(granted), []);
  // Its gateway claims it in the grace: the waiting call gets a pod of its own then.
  const e = setup();
  e.now = 1000;
  assert.deepEqual(created(e.run(lease("r1", "t/n/f", "g2"))), []);
  e.run({ type: "gatewayHeartbeat", gateway: "g1", leases: ["old-1"] });
  e.now = 1500;
  assert.equal(created(e.run({ type: "tick" })).length, 1);
});

Deno.test("a version whose pods keep failing to start backs off, doubling, and calls meanwhile fail at once", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  const startsIn = (acts: CoreAction[]) => created(acts).map((p) => p.id);
  let [pod] = startsIn(
    d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, { minReplica: 1 }) }),
  );
  const fail = () => d.run({ type: "podStatus", podId: pod, state: "Failed", error: "exit 3" });
  // Without it, every failure started the next pod at once: one every ~250 ms, for ever.
  for (const [i, waitMs] of [1000, 2000, 4000, 8000].entries()) {
    assert.deepEqual(startsIn(fail()), [], "not at once");
    d.now += waitMs - 1;
    assert.deepEqual(startsIn(d.run({ type: "tick" })), [], `not before ${waitMs} ms`);
    // A call meanwhile fails at once with why, not after its whole deadline.
    const refused = d.run(lease(`r${waitMs}`));
    const failed = refused.find((a) => a.type === "leaseFailed");
    assert.ok(failed?.type === "leaseFailed", JSON.stringify(refused));
    assert.equal(failed.code, "worker_failed");
    assert.match(
      failed.message,
      /failed to start: exit 3 \(\d+ failed start\(s\) in a row; the next in 1 s\)/,
    );
    // Said to the caller as `Retry-After` too (it said 5 s whatever the back-off).
    assert.equal(failed.retryAfterS, 1);
    // And how many failed in a row: the back-off left cannot tell a crash loop (1 s left of 8).
    assert.equal(failed.failures, i + 1);
    d.now += 1;
    [pod] = startsIn(d.run({ type: "tick" }));
    assert.ok(pod, `started again after ${waitMs} ms`);
  }
  // One that comes up and fails a second later goes on with the run: it was no good start.
  const backoff = () => d.state.funcs.get("t/n/f")!.startBackoff;
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
  d.now += 1000;
  assert.deepEqual(
    startsIn(d.run({ type: "podStatus", podId: pod, state: "Failed", error: "boom" })),
    [],
  );
  assert.equal(backoff()?.failures, 5, "it restarted every 1.5 s, for ever");
  assert.match(backoff()!.message, /failed 1 s after it started: boom/);
  d.now += 16_000;
  [pod] = startsIn(d.run({ type: "tick" }));
  assert.ok(pod, "started again after 16 s");
  // One that serves START_STABLE_MS ends the run: the next failure waits 1 s again.
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
  d.now += START_STABLE_MS;
  d.run({ type: "podStatus", podId: pod, state: "Failed", error: "crashed" });
  assert.ok(!backoff() || d.now >= backoff()!.until, "a crash after a minute's service is none");
  [pod] = startsIn(d.run({ type: "tick" }));
  assert.ok(pod, "replaced at once");
  d.run({ type: "podStatus", podId: pod, state: "Failed", error: "exit 3" });
  assert.equal(backoff()?.failures, 1, "a new run");
});

Deno.test("a pod its gateway gives back as failed soon after it came up counts as a failed start", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f") });
  const [pod] = created(d.run(lease("r1")));
  d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  d.now += 2000;
  d.run({ type: "return", podId: pod.id, gateway: "g1", failed: true });
  const b = () => d.state.funcs.get("t/n/f")!.startBackoff;
  assert.equal(b()?.failures, 1);
  assert.match(b()!.message, /failed 2 s after it started: its gateway found it failed/);
  // One crash is no loop: the next call starts a worker at once.
  const [next] = created(d.run(lease("r2")));
  assert.ok(next, "replaced at once");
  d.run({ type: "podStatus", podId: next.id, state: "Ready", endpoint: "e" });
  d.now += 1000;
  d.run({ type: "return", podId: next.id, gateway: "g1", failed: true });
  assert.equal(b()?.failures, 2);
  // The second in a row waits: a call meanwhile is told why, at once (no pod serves).
  const refused = d.run(lease("r3")).find((a) => a.type === "leaseFailed");
  assert.ok(refused?.type === "leaseFailed", "refused");
  assert.match(
    refused.message,
    /failed 1 s after it started.*\(2 failed start\(s\) in a row; the next in 1 s\)/,
  );
  // Then 2 s, 4, ... as for any run of failed starts (the first of this one cost no wait).
  d.now += 1000;
  const [third] = created(d.run(lease("r4")));
  d.run({ type: "podStatus", podId: third.id, state: "Ready", endpoint: "e" });
  d.now += 1000;
  d.run({ type: "return", podId: third.id, gateway: "g1", failed: true });
  assert.equal(b()!.until - d.now, 2000);
});

Deno.test("a worker that dies soon after a resume, long after its start, is no failed start", () => {
  const { d, pod } = podIn("Resuming");
  // It came up a minute and more before it was parked and resumed.
  d.now += 70_000;
  d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  d.now += 1000;
  d.run({ type: "return", podId: pod.id, gateway: "g1", failed: true });
  assert.equal(d.state.funcs.get("t/n/f")!.startBackoff, undefined, "no crash loop begun");
  // One that dies soon after its fresh start still counts.
  const [next] = created(d.run(lease("r3")));
  d.run({ type: "podStatus", podId: next.id, state: "Ready", endpoint: "e" });
  d.now += 1000;
  d.run({ type: "return", podId: next.id, gateway: "g1", failed: true });
  assert.equal(d.state.funcs.get("t/n/f")!.startBackoff?.failures, 1);
});

Deno.test("a start the store refused fails its calls as unavailable, in the start and its back-off", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f") });
  const [pod] = created(d.run(lease("r1")));
  const space = "etcdserver: mvcc: database space exceeded";
  const acts = d.run({
    type: "podStatus",
    podId: pod.id,
    state: "Failed",
    error: space,
    code: "unavailable",
  });
  const failed = acts.find((a) => a.type === "leaseFailed");
  // It said worker_failed: the worker never existed, the store was full.
  assert.ok(failed?.type === "leaseFailed", JSON.stringify(acts));
  assert.equal(failed.code, "unavailable");
  assert.match(
    failed.message,
    /Cannot start a worker of t\/n\/f: the store refused its pod \(etcdserver: mvcc/,
  );
  assert.equal(failed.retryAfterS, 1);
  assert.equal(failed.failures, undefined, "no failed start of the worker's");
  const later = d.run(lease("r2")).find((a) => a.type === "leaseFailed");
  assert.ok(later?.type === "leaseFailed");
  assert.equal(later.code, "unavailable", "the back-off says the same");
  assert.match(later.message, /\(the next try in 1 s\)$/);
});

Deno.test("an engine out of reach at every start of an outage grows no crash loop: a second's wait, then a start", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f") });
  const engine = "Cannot start pod p: the Docker engine on /var/run/docker.sock is out of reach";
  for (let i = 0; i < 6; i++) {
    const [pod] = created(d.run(lease(`r${i}`)));
    assert.ok(pod, `start ${i} asked`);
    // As its node reports it: the record Failed with failCode unavailable.
    const failed = d.run({
      type: "podRecord",
      pod: record(d.state.pods.get(pod.id)!, "Running", "Failed", {
        error: engine,
        failCode: "unavailable",
      }),
    }).find((a) => a.type === "leaseFailed");
    assert.ok(failed?.type === "leaseFailed");
    assert.equal(failed.code, "unavailable");
    assert.equal(failed.message, `Cannot start a worker of t/n/f: ${engine}`);
    assert.equal(failed.retryAfterS, 1, `after failure ${i + 1}`);
    d.now += 1000;
  }
  // The engine back: the next call starts a worker at once, as before the outage.
  const b = d.state.funcs.get("t/n/f")!.startBackoff!;
  assert.equal(b.failures, 0);
  assert.ok(created(d.run(lease("r9")))[0], "started");
});

Deno.test("an engine out of reach during a crash loop's wait leaves the loop as it is", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f") });
  // Three failed starts in a row: the next in 4 s.
  for (let i = 0; i < 3; i++) {
    const [pod] = created(d.run(lease(`r${i}`)));
    d.run({ type: "podStatus", podId: pod.id, state: "Failed", error: "exit code 3" });
    d.now = d.state.funcs.get("t/n/f")!.startBackoff!.until;
  }
  const [pod] = created(d.run(lease("r3")));
  d.run({ type: "podStatus", podId: pod.id, state: "Failed", error: "exit code 3" });
  const f = d.state.funcs.get("t/n/f")!;
  const before = structuredClone(f.startBackoff!);
  assert.equal(before.failures, 4);
  d.now += 1000;
  // A start of it the engine could not make meanwhile (a pod placed before the wait): the
  // loop's failures, wait and message stand.
  const waited = startFailed(
    { now: d.now } as unknown as Ctx,
    f,
    "Cannot start a worker of t/n/f: the Docker engine on /x.sock is out of reach",
    "unavailable",
  );
  assert.equal(waited, before.until - d.now);
  assert.deepEqual(f.startBackoff, before, "the loop as it was");
  const refused = d.run(lease("r4")).find((a) => a.type === "leaseFailed");
  assert.ok(refused?.type === "leaseFailed");
  assert.equal(refused.code, "worker_failed");
  assert.equal(refused.failures, 4);
  assert.match(refused.message, /exit code 3.*\(4 failed start\(s\) in a row/);
});

/** A node with the paused tier, and t/n/f parked there 1 s after its last call (at most `maxReplica`). */
function pausedTier(maxReplica: number): CoreDriver {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { standbyTiers: ["paused"] }) });
  d.run({
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { maxReplica, standbyTier: "paused", scaleinTimeoutS: 1 }),
  });
  return d;
}

Deno.test("a resume the store refused fails its calls as unavailable at once; the pod stays parked, tried again for the next call", () => {
  const d = pausedTier(1);
  const [p] = created(d.run(lease("r1")));
  d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e1" });
  d.run({ type: "return", podId: p.id, gateway: "g1" });
  d.state.pods.get(p.id)!.lastUsed = -10_000;
  d.run({ type: "tick" });
  d.run({ type: "podStatus", podId: p.id, state: "Standby" });
  const parked = structuredClone(d.state.nodes.get("n1")!);
  assert.equal(d.state.pods.get(p.id)?.state, "Standby");
  // A call resumes it; the store refuses the write.
  assert.ok(kinds(d.run(lease("r2"))).includes("resumePod"));
  const acts = d.run({
    type: "resumeRefused",
    podId: p.id,
    error: "Cannot reach the state service",
  });
  const failed = acts.find((a) => a.type === "leaseFailed");
  assert.ok(failed?.type === "leaseFailed", JSON.stringify(acts));
  assert.equal(failed.reqId, "r2");
  assert.equal(failed.code, "unavailable");
  assert.equal(
    failed.message,
    `Cannot resume worker ${p.id} of t/n/f: the store refused it (Cannot reach the state service)`,
  );
  assert.equal(failed.retryAfterS, 1);
  // Parked still: charged what a copy holds until its agent says it is parked (it may have been
  // parking still when the resume came), then as it was parked.
  assert.equal(d.state.pods.get(p.id)?.state, "Standby");
  d.run({ type: "podStatus", podId: p.id, state: "Standby" });
  assert.deepEqual(d.state.nodes.get("n1"), parked);
  // The next call tries the resume again (none waits out its deadline for a write never made).
  assert.ok(kinds(d.run(lease("r3"))).includes("resumePod"));
  assert.equal(d.state.pods.get(p.id)?.state, "Resuming");
});

Deno.test("a failed worker's last output goes apart from the message, in the start, its back-off and a crash soon after", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f") });
  const [pod] = created(d.run(lease("r1")));
  const error = `exit code 1${OUTPUT_TAIL}token=hf_secret\nTraceback`;
  const failed = d.run({ type: "podStatus", podId: pod.id, state: "Failed", error })
    .find((a) => a.type === "leaseFailed");
  assert.ok(failed?.type === "leaseFailed");
  assert.equal(failed.message, `Worker ${pod.id} of t/n/f failed to start: exit code 1`);
  assert.equal(failed.output, "token=hf_secret\nTraceback");
  const later = d.run(lease("r2")).find((a) => a.type === "leaseFailed");
  assert.ok(later?.type === "leaseFailed");
  assert.doesNotMatch(later.message, /hf_secret/);
  assert.match(later.message, /exit code 1 \(1 failed start\(s\) in a row; the next in 1 s\)$/);
  assert.equal(later.output, "token=hf_secret\nTraceback", "the back-off keeps it apart too");
  // One that came up and crashed a second later.
  d.now += 1000;
  const [next] = created(d.run(lease("r3")));
  d.run({ type: "podStatus", podId: next.id, state: "Ready", endpoint: "e" });
  d.now += 1000;
  d.run({ type: "podStatus", podId: next.id, state: "Failed", error: `killed${OUTPUT_TAIL}oom` });
  const b = d.state.funcs.get("t/n/f")!.startBackoff!;
  assert.match(b.message, /failed 1 s after it started: killed$/);
  assert.equal(b.output, "oom");
});

Deno.test("in a start back-off a parked pod is resumed for a call, and a call waits while a pod serves", () => {
  const d = pausedTier(2);
  const [p1] = created(d.run(lease("r1")));
  d.run({ type: "podStatus", podId: p1.id, state: "Ready", endpoint: "e1" });
  // A second pod, for another gateway, fails to start: a back-off of 1 s begins.
  const [p2] = created(d.run(lease("r2", "t/n/f", "g2")));
  d.run({ type: "podStatus", podId: p2.id, state: "Failed", error: "CUDA OOM on n1" });
  assert.ok(d.state.funcs.get("t/n/f")!.startBackoff);
  // p1 serves: a call meanwhile waits for it rather than failing.
  const waits = d.run(lease("r3", "t/n/f", "g3"));
  assert.deepEqual(kinds(waits).filter((k) => k === "leaseFailed" || k === "createPod"), []);
  // p1 comes back, goes to the waiting call, then is parked once idle.
  const back = d.run({ type: "return", podId: p1.id, gateway: "g1" });
  assert.ok(back.some((a) => a.type === "leaseGranted" && a.reqId === "r3"));
  d.run({ type: "return", podId: p1.id, gateway: "g3" });
  d.now += 300;
  d.state.pods.get(p1.id)!.lastUsed = -10_000;
  d.run({ type: "tick" });
  assert.equal(d.state.pods.get(p1.id)?.state, "Standby");
  // Still backing off: a call resumes the parked pod, no new one is started, none fails.
  const acts = d.run(lease("r4"));
  assert.deepEqual(kinds(acts).filter((k) => k !== "leaseGranted"), ["resumePod"]);
});

Deno.test("in a start back-off a call retires no idle pod of another function for the quota: nothing would start", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { gpuCount: 4 }) },
    { type: "funcUpdate", func: funcReport("a/n/f", {}, { maxReplica: 4 }) },
    { type: "funcUpdate", func: funcReport("a/n/g", {}, { maxReplica: 4 }) },
  );
  // f: one pod serving (leased by g1), a second fails to start: back-off.
  const [p1] = created(d.run(lease("r1", "a/n/f", "g1")));
  d.run({ type: "podStatus", podId: p1.id, state: "Ready", endpoint: "e1" });
  const [p2] = created(d.run(lease("r2", "a/n/f", "g2")));
  d.run({ type: "podStatus", podId: p2.id, state: "Failed", error: "CUDA OOM" });
  assert.ok(d.state.funcs.get("a/n/f")!.startBackoff);
  // g: one idle pod, kept (a replica).
  const [q] = created(d.run(lease("rg", "a/n/g", "g1")));
  d.run({ type: "podStatus", podId: q.id, state: "Ready", endpoint: "e2" });
  d.returnKeptIdle("a/n/g", q.id);
  assert.ok(d.state.funcs.get("a/n/g")!.idle.has(q.id));
  // Tenant a at its quota: f's p1 and g's q.
  d.run({ type: "tenantQuota", tenant: "a", limits: { maxReplica: 2 } });
  // A call of f during the back-off: nothing may start, so nothing should be freed for it.
  const acts = d.run(lease("r3", "a/n/f", "g3"));
  assert.equal(created(acts).length, 0);
  assert.deepEqual(
    acts.filter((a) => a.type === "terminatePod" || a.type === "parkPod"),
    [],
    "g's idle pod retired for a start the back-off does not make",
  );
});

Deno.test("in a start back-off a parked pod that cannot resume stays parked, and no idle pod of the tenant is retired for it", () => {
  const d = new CoreDriver();
  d.run(
    { type: "nodeUpdate", node: nodeReport("n1", { cpuMillis: 1000, standbyTiers: ["paused"] }) },
    { type: "funcUpdate", func: funcReport("t/n/f", {}, { standbyTier: "paused" }) },
    { type: "funcUpdate", func: funcReport("t/n/g", {}, {}) },
    { type: "funcUpdate", func: funcReport("t/n/h", {}, {}) },
  );
  const [p] = created(d.run(lease("r1", "t/n/f")));
  d.run({ type: "podStatus", podId: p.id, state: "Ready", endpoint: "e1" });
  d.run({ type: "return", podId: p.id, gateway: "g1" });
  d.now += 5_000;
  d.run({ type: "tick" });
  assert.equal(d.state.pods.get(p.id)?.state, "Standby");
  // g takes the CPU the parked pod gave back on n1 (busy: leased).
  const [q] = created(d.run(lease("rg", "t/n/g")));
  d.run({ type: "podStatus", podId: q.id, state: "Ready", endpoint: "e2" });
  // h: one idle pod on another node.
  d.run({ type: "nodeUpdate", node: nodeReport("n2", { cpuMillis: 4000 }) });
  const [r] = created(d.run(lease("rh", "t/n/h")));
  assert.equal(r.node, "n2");
  d.run({ type: "podStatus", podId: r.id, state: "Ready", endpoint: "e3" });
  d.returnKeptIdle("t/n/h", r.id);
  assert.ok(d.state.funcs.get("t/n/h")!.idle.has(r.id));
  d.run({ type: "tenantQuota", tenant: "t", limits: { maxReplica: 2 } });
  const f = d.state.funcs.get("t/n/f")!;
  f.startBackoff = {
    failures: 1,
    until: d.now + 1000,
    message: "Worker of t/n/f failed to start",
    code: "worker_failed",
  };
  const acts = d.run(lease("r2", "t/n/f"));
  assert.equal(
    d.state.pods.get(p.id)?.state,
    "Standby",
    "not dropped for a start that may not come",
  );
  assert.deepEqual(
    acts.filter((a) => a.type === "terminatePod"),
    [],
    "h's idle pod retired for a resume that is not made",
  );
  assert.ok(acts.some((a) => a.type === "leaseFailed" && a.code === "worker_failed"));
});

Deno.test("a GPU pod asked to park in host memory, or resumed from it, is charged the same before and after a restart", () => {
  const start = (d: CoreDriver) =>
    d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused", "host_memory"]) }, {
      type: "funcUpdate",
      func: gpuFunc("t/n/f", "host_memory"),
    });
  const live = new CoreDriver();
  start(live);
  const id = created(live.run(lease("r1")))[0].id;
  live.run({ type: "podStatus", podId: id, state: "Ready", endpoint: "e" });
  assert.deepEqual(kinds(live.run({ type: "return", podId: id, gateway: "g1" })), ["parkPod"]);
  const p = live.state.pods.get(id)!;
  /** A scheduler restarted now, rebuilt from the pod's record. */
  const restarted = (desired: "Standby" | "Running", state: "Ready" | "Standby") => {
    const d = new CoreDriver();
    start(d);
    d.run({
      type: "podRecord",
      pod: {
        id,
        func: "t/n/f",
        version: 1,
        node: "n1",
        cpu: p.cpu,
        memMB: p.memMB,
        gpus: p.gpus,
        desired,
        state,
        tier: "host_memory",
        endpoint: "e",
      },
    });
    return d;
  };
  const used = (d: CoreDriver) => d.state.nodes.get("n1")!.memUsedMB;
  // Restarted before the park was reported.
  assert.equal(used(live), 1024 + 30_000, "its GPU memory's copy, from the start of the park");
  assert.equal(used(restarted("Standby", "Ready")), used(live));
  // Parked, then asked to run again, and restarted before it was Ready.
  live.run({ type: "podStatus", podId: id, state: "Standby" });
  assert.deepEqual(kinds(live.run(lease("r2"))), ["resumePod"]);
  const resuming = restarted("Running", "Standby");
  assert.equal(resuming.state.pods.get(id)!.state, "Resuming");
  assert.equal(used(live), 1024 + 30_000, "resuming: the copy until it is back on the GPU");
  assert.equal(used(resuming), used(live));
});

/**
 * One pod of t/n/f, Ready at record revision 5, parked in `tier` when its
 * call is done (the park reported at once or not, `confirmParks`), then
 * asked to run again for a second call: the driver, the pod, its Ready record.
 */
function resumedPod(tier: StandbyTier, confirmParks: boolean) {
  const d = new CoreDriver();
  d.confirmParks = confirmParks;
  d.run({ type: "nodeUpdate", node: nodeReport("n1", { standbyTiers: [tier] }) }, {
    type: "funcUpdate",
    func: funcReport("t/n/f", {}, { standbyTier: tier, maxReplica: 1 }),
  });
  const [pod] = created(d.run(lease("r1")));
  const ready: PodRecord = { ...pod, desired: "Running", state: "Ready", endpoint: "e" };
  d.run({ type: "podRecord", pod: { ...ready, revision: 5 } });
  const parked = d.run({ type: "return", podId: pod.id, gateway: "g1" });
  assert.ok(kinds(parked).includes("parkPod"), kinds(parked).join());
  assert.deepEqual(kinds(d.run(lease("r2"))), ["resumePod"]);
  return { d, pod, ready };
}

Deno.test("a pod asked to run before its park was reported waits for its agent's Ready, not its own record's", () => {
  // The agent is still parking it (a dump to file: a moment).
  const { d, pod, ready } = resumedPod("file", false);
  // The scheduler's own writes come back: Ready still (the agent reported nothing yet), the
  // tier named. Not a worker back: its worker is being dumped.
  const record: PodRecord = { ...ready, tier: "file" };
  assert.ok(!kinds(d.run({ type: "podRecord", pod: record })).includes("leaseGranted"));
  assert.equal(d.state.pods.get(pod.id)!.state, "Resuming");
  assert.equal(recoveredState(record), "Resuming", "so after a restart too");
  // The agent's report of the resume clears the tier: the call gets it.
  const back = d.run({ type: "podRecord", pod: { ...record, tier: undefined } });
  assert.deepEqual(kinds(back), ["leaseGranted"]);
});

Deno.test("a record read before a park, delivered after the resume (a late re-list), is no resume's Ready", () => {
  const { d, pod, ready } = resumedPod("file", false);
  // The store stalled: the re-list read before the park was written comes now. No tier, as the
  // resume's Ready, but not newer than what was seen when the resume was decided.
  assert.deepEqual(kinds(d.run({ type: "podRecord", pod: { ...ready, revision: 5 } })), []);
  assert.deepEqual(kinds(d.run({ type: "podRecord", pod: { ...ready, revision: 4 } })), []);
  assert.equal(d.state.pods.get(pod.id)!.state, "Resuming");
  // The agent's report, after the park and resume written (6, 7): the call gets it.
  const back = d.run({ type: "podRecord", pod: { ...ready, revision: 8 } });
  assert.deepEqual(kinds(back), ["leaseGranted"]);
  // Its resume waited for its park: no restore time learned from it.
  assert.equal(d.state.funcs.get("t/n/f")!.restoreMs.file, undefined);
});

Deno.test("a resume's time is learned from its node's measure, and not at all from a Ready it did not time", () => {
  for (const [resumeMs, learned] of [[40, 40], [null, undefined]] as const) {
    const { d, pod, ready } = resumedPod("paused", true); // parked (confirmed at once)
    d.now += 5_000; // an agent restarted meanwhile, say: the scheduler waited 5 s
    d.run({ type: "podRecord", pod: { ...ready, revision: 9, resumeMs } });
    assert.equal(d.state.pods.get(pod.id)!.state, "Ready");
    assert.equal(d.state.funcs.get("t/n/f")!.restoreMs.paused, learned, String(resumeMs));
  }
});
