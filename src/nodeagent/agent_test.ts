import assert from "node:assert/strict";
import { ConflictError, InferxError } from "../common/errors.ts";
import { testPod, until } from "../common/testing.ts";
import { decodePod, type NodeInfo, type PodInfo } from "../model/cluster.ts";
import type { MetaClient, MetaRecord, ObjectInput } from "../rpc/types.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import { NodeAgent } from "./agent.ts";
import { objectKey } from "../model/keys.ts";
import { type PodRuntime, PodSetupFailed, type RunningPod } from "./runtime.ts";
import type { SnapshotManager } from "./snapshots.ts";

const node: NodeInfo = {
  name: "n1",
  address: "127.0.0.1",
  cpuMillis: 1000,
  memMB: 1024,
  gpus: [],
  contextOverheadMB: 0,
  standbyTiers: [],
  runtime: "fake",
  ready: true,
  heartbeat: 0,
};

const runtime: PodRuntime = {
  name: "fake",
  standbyTiers: [],
  park: () => Promise.resolve(),
  resume: () => Promise.resolve(),
  start: () => Promise.reject(new Error("not used")),
  stop: () => Promise.resolve(),
  logs: () => Promise.resolve(""),
  recover: () => Promise.resolve({ adopted: [], removed: 0 }),
};

/** A pod as a fake runtime starts it: at once, on 127.0.0.1:9, never exiting unless `more` says. */
const startedPod = (podId: string, more: Partial<RunningPod> = {}): Promise<RunningPod> =>
  Promise.resolve({
    podId,
    endpoint: "127.0.0.1:9",
    exited: new Promise<string>(() => {}),
    ...more,
  });

/** A runtime whose pods start at once and never exit, each step told in `calls`. */
function recordingRuntime(calls: string[]): PodRuntime {
  return {
    ...runtime,
    standbyTiers: ["paused"],
    start: (spec) => (calls.push(`start ${spec.podId}`), startedPod(spec.podId)),
    park: (id, tier) => (calls.push(`park ${id} ${tier}`), Promise.resolve()),
    resume: (id) => (calls.push(`resume ${id}`), Promise.resolve()),
    stop: (id) => (calls.push(`stop ${id}`), Promise.resolve()),
  };
}

/** Pod `p1`'s record in `meta`: read it, and change what it asks for as a scheduler does. */
function podRecord(meta: MetaClient) {
  const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
  const current = async () => {
    const rec = await meta.get(ref);
    return rec && decodePod(rec.value);
  };
  const ask = async (change: Partial<PodInfo>) => {
    const rec = (await meta.get(ref))!;
    await meta.update({
      ...ref,
      object: { ...decodePod(rec.value), ...change },
      revision: rec.revision,
    });
  };
  return { ref, current, ask };
}

/** A started agent of node `n1` on `runtime`, its store, and pod `p1`'s record there. */
async function agentWith(runtime: PodRuntime, heartbeatMs = 60_000) {
  const store = await openSqliteStore();
  const meta = new StateService(store);
  const agent = new NodeAgent(meta, runtime, node, { heartbeatMs });
  await agent.start();
  return { store, meta, agent, ...podRecord(meta) };
}

/** A store holding the node's record, whose updates fail with `failures` in turn. */
function nodeStore(failures: Error[]) {
  let record: MetaRecord = {
    type: "node",
    tenant: "system",
    namespace: "system",
    name: "n1",
    revision: 1,
    value: JSON.stringify(node),
  };
  const updates: ObjectInput[] = [];
  const meta = {
    get: () => Promise.resolve(record),
    update(input: ObjectInput) {
      updates.push(input);
      const fail = failures.shift();
      if (fail) return Promise.reject(fail);
      record = { ...record, revision: record.revision + 1, value: JSON.stringify(input.object) };
      return Promise.resolve(record);
    },
  } as unknown as MetaClient;
  return { meta, updates, record: () => record };
}

Deno.test("NodeAgent reports a node write that lost every race as failed, not as written", async () => {
  const conflicts = Array.from({ length: 20 }, () => new ConflictError("moved"));
  const { meta, record } = nodeStore(conflicts);
  const agent = new NodeAgent(meta, runtime, node);
  await assert.rejects(agent.setAgentAddr("127.0.0.1:1233"), (e) => e instanceof ConflictError);
  assert.equal(record().revision, 1, "nothing was written");
});

Deno.test("NodeAgent does not retry a node write that failed for another reason than a conflict", async () => {
  const down = new InferxError("unavailable", "Cannot reach the state service");
  const { meta, updates, record } = nodeStore([down]);
  const agent = new NodeAgent(meta, runtime, node);
  await assert.rejects(agent.setAgentAddr("127.0.0.1:1233"), (e) => e === down);
  assert.equal(updates.length, 1);
  assert.equal(record().revision, 1);
});

Deno.test("NodeAgent writes its node again after a conflict", async () => {
  const { meta, updates, record } = nodeStore([new ConflictError("moved")]);
  const agent = new NodeAgent(meta, runtime, node);
  await agent.setAgentAddr("127.0.0.1:1233");
  assert.equal(updates.length, 2);
  assert.equal(JSON.parse(record().value).agentAddr, "127.0.0.1:1233");
});

Deno.test({
  name:
    "NodeAgent starts, parks, resumes and stops its node's pods as their records ask, reporting each step",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const calls: string[] = [];
    const fake = recordingRuntime(calls);
    const { store, meta, agent, ref, current, ask } = await agentWith(fake);
    try {
      await meta.create({ ...ref, object: testPod("p1", "n1") });
      await meta.create({ ...ref, name: "p2", object: testPod("p2", "n2") });
      await until("p1 ready", async () => (await current())?.state === "Ready");
      assert.equal((await current())?.endpoint, "127.0.0.1:9");
      await ask({ desired: "Standby", standbyTier: "paused" });
      await until("p1 parked", async () => (await current())?.state === "Standby");
      await ask({ desired: "Running" });
      await until("p1 back", async () => (await current())?.state === "Ready");
      await ask({ desired: "Terminated" });
      await until("p1's record gone", async () => (await current()) === undefined);
      assert.deepEqual(calls.filter((c) => !c.startsWith("stop")), [
        "start p1",
        "park p1 paused",
        "resume p1",
      ]);
      assert.ok(calls.includes("stop p1"));
      assert.ok(!calls.some((c) => c.includes("p2")), "a pod of another node is left alone");
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name:
    "NodeAgent stops a pod whose park or resume failed before it reports it Failed (its worker may run on); stopped itself meanwhile, it deletes the record",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    for (const test of ["park", "resume", "stop during"] as const) {
      const step = test === "resume" ? "resume" : "park";
      const calls: string[] = [];
      const fake: PodRuntime = {
        ...recordingRuntime(calls),
        // The driver refused: the worker runs on, with what it held (a GPU slice).
        [step]: async (id: string) => {
          calls.push(`${step} ${id}`);
          await new Promise((r) => setTimeout(r, 5));
          throw new Error("CUDA_ERROR_NOT_SUPPORTED");
        },
        stop: async (id: string) => {
          calls.push(`stop ${id}`);
          await new Promise((r) => setTimeout(r, 100));
          calls.push(`stopped ${id}`);
        },
      };
      const { store, meta, agent, ref, current, ask } = await agentWith(fake);
      try {
        await meta.create({ ...ref, object: testPod("p1", "n1") });
        await until("p1 ready", async () => (await current())?.state === "Ready");
        await ask({ desired: "Standby", standbyTier: "paused" });
        if (test === "stop during") {
          // The agent's own stop while the failed park's stop is under way: as any stop of it.
          await until("its worker being stopped", () => calls.includes("stop p1"));
          await agent.stop();
          await new Promise((r) => setTimeout(r, 150)); // a late Failed report would land by now
          assert.equal(await current(), undefined, "the record deleted");
          continue;
        }
        if (step === "resume") {
          await until("p1 parked", async () => (await current())?.state === "Standby");
          await ask({ desired: "Running" });
        }
        await until("p1 failed", async () => (await current())?.state === "Failed");
        assert.match((await current())?.error ?? "", new RegExp(`Cannot ${step}: CUDA_ERROR`));
        assert.ok(calls.includes("stopped p1"), `${step}: stopped first (${calls.join(", ")})`);
      } finally {
        await agent.stop();
        await store.close();
      }
    }
  },
});

Deno.test({
  name:
    "NodeAgent deletes a pod record again once the store is back, after the first delete failed",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const store = await openSqliteStore();
    const state = new StateService(store);
    let failDeletes = 1;
    // The state service away for a moment: its first delete fails as an unavailable store does.
    const meta = {} as Record<string, unknown>;
    for (const k of Object.getOwnPropertyNames(StateService.prototype)) {
      const v = (state as unknown as Record<string, unknown>)[k];
      if (typeof v === "function" && k !== "constructor") meta[k] = v.bind(state);
    }
    meta.delete = (ref: Parameters<MetaClient["delete"]>[0], revision?: number) => {
      if (failDeletes-- > 0) {
        return Promise.reject(new InferxError("unavailable", "etcd did not answer"));
      }
      return state.delete(ref, revision);
    };
    const fake: PodRuntime = {
      ...runtime,
      start: (spec) => startedPod(spec.podId),
    };
    const agent = new NodeAgent(meta as unknown as MetaClient, fake, node, { heartbeatMs: 50 });
    await agent.start();
    const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
    try {
      await state.create({ ...ref, object: testPod("p1", "n1") });
      await until("p1 ready", async () => {
        const rec = await state.get(ref);
        return rec !== undefined && decodePod(rec.value).state === "Ready";
      });
      const rec = (await state.get(ref))!;
      await state.update({
        ...ref,
        object: { ...decodePod(rec.value), desired: "Terminated" },
        revision: rec.revision,
      });
      await until("the record gone on a later heartbeat", async () => !(await state.get(ref)));
      assert.equal(failDeletes, -1, "the first delete failed, the second went through");
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test("NodeAgent refuses to read a number of log lines that is not one", async () => {
  const { meta } = nodeStore([]);
  const agent = new NodeAgent(meta, runtime, node);
  for (const lines of [0, -5, 1.5, 1e9, NaN]) {
    await assert.rejects(
      agent.readPodLog("p", lines),
      (e: InferxError) => e.code === "invalid" && /Invalid lines/.test(e.message),
      String(lines),
    );
  }
  await assert.rejects(agent.readPodLog("p", 5), (e: InferxError) => e.code === "not_found");
});

Deno.test({
  name: "NodeAgent reports a worker that exits during its sample query Failed, with why, not Ready",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // The worker: answers its probe (the fake runtime's start), then dies on the sample query.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    const hold: { agent?: NodeAgent } = {};
    (async () => {
      for await (const c of listener) {
        await c.read(new Uint8Array(4096));
        hold.agent!.podExited(
          "p1",
          "exit code 1; last output:\nfirst inference: CUDA out of memory",
        );
        c.close();
      }
    })().catch(() => {});
    const fake: PodRuntime = {
      ...runtime,
      start: (spec) =>
        Promise.resolve({
          podId: spec.podId,
          endpoint: `127.0.0.1:${port}`,
          exited: new Promise<string>(() => {}),
        }),
      snapshot: () => Promise.resolve({ bytes: 1, dumpMs: 1 }),
    };
    const snapshots = {
      start: () => Promise.resolve(),
      stop: () => {},
      summary: () => ({}),
      wants: () => true,
      dumping: () => false,
      take: () => Promise.resolve(undefined),
    } as unknown as SnapshotManager;
    const store = await openSqliteStore();
    const meta = new StateService(store);
    const agent = hold.agent = new NodeAgent(meta, fake, node, { heartbeatMs: 60_000, snapshots });
    await agent.start();
    const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
    const pod = testPod("p1", "n1");
    pod.template = { ...pod.template, sampleQuery: { path: "/v1/completions", body: {} } };
    try {
      await meta.create({ ...ref, object: pod });
      await until(
        "p1 failed",
        async () => decodePod((await meta.get(ref))!.value).state === "Failed",
      );
      await new Promise((r) => setTimeout(r, 200)); // a late Ready would have come by now
      const now = decodePod((await meta.get(ref))!.value);
      assert.equal(now.state, "Failed");
      assert.match(now.error ?? "", /Worker exited: exit code 1.*\n.*CUDA out of memory/);
    } finally {
      await agent.stop();
      await store.close();
      listener.close();
    }
  },
});

Deno.test({
  name:
    "NodeAgent reports Ready only a pod whose runtime reads it alive; a dead one waits for its exit",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // Worker p1 is dead by the system's account before its exit is told; p2 lives.
    const told = Promise.withResolvers<string>();
    const fake: PodRuntime = {
      ...runtime,
      start: (spec) =>
        startedPod(spec.podId, {
          ...(spec.podId === "p1" ? { exited: told.promise } : {}),
          alive: () => Promise.resolve(spec.podId !== "p1"),
        }),
    };
    const { store, meta, agent, ref } = await agentWith(fake);
    const ref2 = { ...ref, name: "p2" };
    const state = async (r: typeof ref) => decodePod((await meta.get(r))!.value).state;
    try {
      await meta.create({ ...ref, object: testPod("p1", "n1") });
      await meta.create({ ...ref2, object: testPod("p2", "n1") });
      await until("p2 ready", async () => await state(ref2) === "Ready");
      await new Promise((r) => setTimeout(r, 100));
      assert.notEqual(await state(ref), "Ready", "a dead worker is not reported Ready");
      agent.podExited("p1", "exit code 1");
      told.resolve("exit code 1");
      await until("p1 failed", async () => await state(ref) === "Failed");
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name:
    "NodeAgent: a pod stopped while it is restored keeps its snapshot and starts nothing in its place",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const calls: string[] = [];
    const stopped = Promise.withResolvers<void>();
    const fake: PodRuntime = {
      ...runtime,
      start: (spec) => (calls.push(`start ${spec.podId}`), Promise.reject(new Error("not used"))),
      // The restored worker is probed until the stop ends it.
      restore: async (spec) => {
        calls.push(`restore ${spec.podId}`);
        await stopped.promise;
        throw new InferxError("worker_failed", "worker exited before it was ready");
      },
      stop: (id) => (calls.push(`stop ${id}`), stopped.resolve(), Promise.resolve()),
    };
    const snap = { ref: { name: "f.v1.n1" }, dir: "/nowhere" };
    const snaps = {
      start: () => Promise.resolve(),
      stop: () => {},
      summary: () => ({ diskUsedMB: 0, items: [] }),
      hold: () => snap,
      used: () => (calls.push("used"), Promise.resolve()),
      release: () => calls.push("release"),
      discard: () => (calls.push("discard"), Promise.resolve()),
      wants: () => false,
    } as unknown as SnapshotManager;
    const store = await openSqliteStore();
    const meta = new StateService(store);
    const agent = new NodeAgent(meta, fake, node, { heartbeatMs: 60_000, snapshots: snaps });
    await agent.start();
    const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
    try {
      await meta.create({ ...ref, object: { ...testPod("p1", "n1"), fromSnapshot: true } });
      await until("the restore to begin", () => Promise.resolve(calls.includes("restore p1")));
      const rec = (await meta.get(ref))!;
      await meta.update({
        ...ref,
        object: { ...decodePod(rec.value), desired: "Terminated" },
        revision: rec.revision,
      });
      await until("p1's record gone", async () => !(await meta.get(ref)));
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(calls.filter((c) => c !== "stop p1"), ["restore p1", "release"]);
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

/** The state service with `update` replaced: `update(input, real)` decides. */
function withUpdate(
  state: StateService,
  update: (input: ObjectInput, real: (i: ObjectInput) => Promise<unknown>) => Promise<unknown>,
): MetaClient {
  const meta = {} as Record<string, unknown>;
  for (const k of Object.getOwnPropertyNames(StateService.prototype)) {
    const v = (state as unknown as Record<string, unknown>)[k];
    if (typeof v === "function" && k !== "constructor") meta[k] = v.bind(state);
  }
  meta.update = (input: ObjectInput) => update(input, (i) => state.update(i));
  return meta as unknown as MetaClient;
}

const quiet: PodRuntime = {
  ...runtime,
  standbyTiers: ["paused"],
  start: (spec) =>
    Promise.resolve({ podId: spec.podId, endpoint: "127.0.0.1:9", exited: new Promise(() => {}) }),
};

Deno.test({
  name: "NodeAgent writes a park's or a resume's report again when the store lost it",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const store = await openSqliteStore();
    const state = new StateService(store);
    let fail = 0;
    const meta = withUpdate(state, (input, real) => {
      if (input.type === "pod" && fail > 0) {
        fail--;
        return Promise.reject(new InferxError("unavailable", "etcd did not answer"));
      }
      return real(input);
    });
    const agent = new NodeAgent(meta, quiet, node, { heartbeatMs: 50 });
    await agent.start();
    const { ref, current, ask } = podRecord(state);
    const cur = async () => (await current())!;
    try {
      await state.create({ ...ref, object: testPod("p1", "n1") });
      await until("ready", async () => (await cur()).state === "Ready");
      fail = 1; // the park's Standby report is lost
      await ask({ desired: "Standby", standbyTier: "paused" });
      await until("Standby written again", async () => (await cur()).state === "Standby");
      fail = 1; // the resume's Ready report is lost
      await ask({ desired: "Running" });
      await until("Ready written again", async () => (await cur()).state === "Ready");
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name: "NodeAgent reads past a pod record it cannot decode: the others are followed",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const store = await openSqliteStore();
    const state = new StateService(store);
    // A record a newer writer left: a value this version does not know.
    await store.create(
      objectKey("pod", "t", "n", "pX"),
      JSON.stringify({ ...testPod("pX", "n1"), desired: "Hibernate" }),
    );
    const agent = new NodeAgent(state, quiet, node, { heartbeatMs: 60_000 });
    await agent.start(); // it refused to start
    const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
    try {
      await store.create(
        objectKey("pod", "t", "n", "pY"),
        JSON.stringify({ ...testPod("pY", "n1"), desired: "Hibernate" }),
      );
      await state.create({ ...ref, object: testPod("p1", "n1") });
      await until(
        "p1 ready",
        async () => decodePod((await state.get(ref))!.value).state === "Ready",
      );
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name: "NodeAgent does not report Ready a worker that died while its Ready was written",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const store = await openSqliteStore();
    const state = new StateService(store);
    const hold: { agent?: NodeAgent } = {};
    let first = true;
    const meta = withUpdate(state, async (input, real) => {
      if (input.type === "pod" && (input.object as PodInfo).state === "Ready" && first) {
        first = false;
        // The state service is slow with this write; meanwhile the worker dies.
        hold.agent!.podExited("p1", "exit code 1; last output:\nCUDA out of memory");
        await new Promise((r) => setTimeout(r, 100));
        // Its write lands first: the Ready one is now at a stale revision.
        await new Promise((r) => setTimeout(r, 50));
      }
      return real(input);
    });
    const agent = hold.agent = new NodeAgent(meta, quiet, node, { heartbeatMs: 60_000 });
    await agent.start();
    const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
    try {
      await state.create({ ...ref, object: testPod("p1", "n1") });
      await new Promise((r) => setTimeout(r, 800));
      const c = decodePod((await state.get(ref))!.value);
      assert.equal(c.state, "Failed");
      assert.match(c.error ?? "", /CUDA out of memory/);
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name: "NodeAgent ends a parked pod whose worker ended while parked, rather than list it parked",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const calls: string[] = [];
    let killed = false;
    const fake: PodRuntime = {
      ...recordingRuntime(calls),
      endedWhileParked: () =>
        Promise.resolve(killed ? "ended while parked (killed from outside?)" : undefined),
    };
    const { store, meta, agent, ref, current, ask } = await agentWith(fake, 30);
    try {
      await meta.create({ ...ref, object: testPod("p1", "n1") });
      await until("p1 ready", async () => (await current())?.state === "Ready");
      await ask({ desired: "Standby", standbyTier: "paused" });
      await until("p1 parked", async () => (await current())?.state === "Standby");
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await current())?.state, "Standby", "a worker that is there stays parked");
      killed = true; // kill -9 of the stopped worker, from outside
      await until("p1 failed", async () => (await current())?.state === "Failed");
      assert.match((await current())!.error!, /its worker ended while parked/);
      assert.ok(calls.includes("stop p1"), "what was left of it stopped");
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name: "NodeAgent resumes a worker paused from outside while its pod should serve",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const calls: string[] = [];
    let pausedOutside = false;
    const recording = recordingRuntime(calls);
    const fake: PodRuntime = {
      ...recording,
      resume: (id) => (pausedOutside = false, recording.resume(id)),
      isPaused: () => Promise.resolve(pausedOutside),
    };
    const store = await openSqliteStore();
    const meta = new StateService(store);
    const agent = new NodeAgent(meta, fake, node, { heartbeatMs: 30 });
    await agent.start();
    const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
    try {
      await meta.create({ ...ref, object: testPod("p1", "n1") });
      await until("p1 ready", async () => {
        const rec = await meta.get(ref);
        return rec !== undefined && decodePod(rec.value).state === "Ready";
      });
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(calls, ["start p1"], "a worker that serves is left alone");
      pausedOutside = true; // docker pause, by an operator
      await until("p1 resumed", () => Promise.resolve(calls.includes("resume p1")));
      assert.equal(pausedOutside, false);
      assert.deepEqual(calls, ["start p1", "resume p1"]);
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name: "a node agent asks its runtime with each heartbeat to remove what a failed removal left",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let sweeps = 0;
    const fake: PodRuntime = { ...runtime, sweep: () => (sweeps++, Promise.resolve()) };
    const store = await openSqliteStore();
    const agent = new NodeAgent(new StateService(store), fake, node, { heartbeatMs: 30 });
    await agent.start();
    try {
      await until("swept twice", () => Promise.resolve(sweeps >= 2));
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});

Deno.test({
  name:
    "NodeAgent keeps a snapshot whose pod the node could not set up, and discards one that failed to restore",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    for (
      const [failure, kept] of [
        [new PodSetupFailed("Cannot restore pod p: the pod range is full", undefined), true],
        [new InferxError("worker_failed", "criu restore: bad image"), false],
      ] as const
    ) {
      const calls: string[] = [];
      const fake: PodRuntime = {
        ...recordingRuntime(calls),
        restore: (spec) => (calls.push(`restore ${spec.podId}`), Promise.reject(failure)),
      };
      const snap = { ref: { name: "f.v1.n1" }, dir: "/nowhere" };
      const snaps = {
        start: () => Promise.resolve(),
        stop: () => {},
        summary: () => ({ diskUsedMB: 0, items: [] }),
        hold: () => snap,
        used: () => Promise.resolve(),
        release: () => {},
        discard: () => (calls.push("discard"), Promise.resolve()),
        wants: () => false,
      } as unknown as SnapshotManager;
      const store = await openSqliteStore();
      const meta = new StateService(store);
      const agent = new NodeAgent(meta, fake, node, { heartbeatMs: 60_000, snapshots: snaps });
      await agent.start();
      try {
        await meta.create({
          type: "pod",
          tenant: "t",
          namespace: "n",
          name: "p1",
          object: { ...testPod("p1", "n1"), fromSnapshot: true },
        });
        await until("a fresh start", () => Promise.resolve(calls.includes("start p1")));
        // Before, a range full for a moment threw a good snapshot away.
        assert.deepEqual(
          calls,
          kept ? ["restore p1", "start p1"] : [
            "restore p1",
            "discard",
            "start p1",
          ],
          failure.message,
        );
      } finally {
        await agent.stop();
        await store.close();
      }
    }
  },
});

Deno.test({
  name:
    "NodeAgent reports a start its runtime could not make (its engine out of reach) as unavailable, not a worker's failure",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const fake: PodRuntime = {
      ...runtime,
      start: (spec) =>
        Promise.reject(
          new InferxError(
            "unavailable",
            `Cannot start pod ${spec.podId}: the Docker engine on /x.sock is out of reach (connect ENOENT)`,
          ),
        ),
    };
    const store = await openSqliteStore();
    const meta = new StateService(store);
    const agent = new NodeAgent(meta, fake, node, { heartbeatMs: 60_000 });
    await agent.start();
    const ref = { type: "pod" as const, tenant: "t", namespace: "n", name: "p1" };
    try {
      await meta.create({ ...ref, object: testPod("p1", "n1") });
      await until(
        "p1 failed",
        async () => decodePod((await meta.get(ref))!.value).state === "Failed",
      );
      const now = decodePod((await meta.get(ref))!.value);
      assert.equal(now.failCode, "unavailable");
      assert.match(now.error ?? "", /Docker engine on \/x\.sock is out of reach/);
    } finally {
      await agent.stop();
      await store.close();
    }
  },
});
