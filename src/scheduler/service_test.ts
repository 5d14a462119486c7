import assert from "node:assert/strict";
import { createTestFunction, ManualClock } from "../common/testing.ts";
import { decodePod, type NodeInfo } from "../model/cluster.ts";
import { startInformer } from "../rpc/informer.ts";
import { openEmbeddedStore } from "../store/embedded.ts";
import { StateService } from "../statesvc/service.ts";
import { leaseStage, SchedulerService } from "./service.ts";
import { CoreDriver, created, gpuFunc, gpuNode, lease } from "./core/testing.ts";

const node = (name: string): NodeInfo => ({
  name,
  address: "127.0.0.1",
  cpuMillis: 1000,
  memMB: 4096,
  gpus: [],
  contextOverheadMB: 0,
  standbyTiers: [],
  runtime: "process",
  ready: true,
  heartbeat: Date.now(),
});

Deno.test({
  name:
    "SchedulerService marks a node without heartbeats not ready and replaces its pods elsewhere",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const store = await openEmbeddedStore();
    const meta = new StateService(store);
    const nodeRef = (name: string) => ({
      type: "node" as const,
      tenant: "system",
      namespace: "system",
      name,
    });
    for (const n of ["n1", "n2"]) await meta.create({ ...nodeRef(n), object: node(n) });
    await createTestFunction(meta, { policy: { Obj: { min_replica: 1 } } });
    // Plays both node agents: pods become Ready.
    const agent = await startInformer(meta, "pod", {
      upsert(rec) {
        const p = decodePod(rec.value);
        if (p.state === "Creating" && p.desired === "Running") {
          meta.update({
            ...rec,
            object: { ...p, state: "Ready", endpoint: "127.0.0.1:1" },
            revision: rec.revision,
          })
            .catch(() => {});
        }
      },
      remove() {},
    });
    const sched = new SchedulerService(meta, { tickMs: 50, nodeTimeoutMs: 400 });
    await sched.start();
    const podsOn = async (n: string) =>
      (await meta.list("pod")).items.map((r) => decodePod(r.value)).filter((p) =>
        p.node === n && p.desired === "Running"
      );
    let first = "";
    for (let i = 0; i < 100 && !first; i++) {
      await new Promise((r) => setTimeout(r, 20));
      first = (await podsOn("n1")).length ? "n1" : (await podsOn("n2")).length ? "n2" : "";
    }
    assert.ok(first, "a min_replica pod was placed");
    const other = first === "n1" ? "n2" : "n1";
    // Only the other node keeps its heartbeat.
    const beat = setInterval(async () => {
      const cur = await meta.get(nodeRef(other));
      await meta.update({
        ...nodeRef(other),
        object: { ...node(other), heartbeat: Date.now() },
        revision: cur!.revision,
      })
        .catch(() => {});
    }, 100);
    try {
      const deadline = Date.now() + 5000;
      while ((await podsOn(other)).length === 0 || (await podsOn(first)).length !== 0) {
        assert.ok(Date.now() < deadline, "the pod was not replaced on the live node");
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(sched.snapshot().nodes.find((n) => n.name === first)?.ready, false);
    } finally {
      clearInterval(beat);
      agent.stop();
      sched.stop();
      await store.close();
    }
  },
});

Deno.test({
  name: "SchedulerService reads the injected clock and ticks on the injected ticker",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const clock = new ManualClock();
    const store = await openEmbeddedStore();
    const meta = new StateService(store);
    const sys = { tenant: "system", namespace: "system" };
    await meta.create({
      type: "node",
      ...sys,
      name: "n1",
      object: { ...node("n1"), heartbeat: clock.now() },
    });
    // Wants a GPU the node lacks: a lease can only wait.
    await createTestFunction(meta, { resources: { GPU: { Type: "Any", Count: 1, vRam: 1 } } });
    const sched = new SchedulerService(meta, {
      clock,
      ticker: clock,
      tickMs: 100,
      nodeTimeoutMs: 10_000,
    });
    await sched.start();
    try {
      let answer = "pending";
      sched.leaseWorker({ tenant: "t", namespace: "n", func: "f", gatewayId: "g", timeoutMs: 5000 })
        .then(() => answer = "granted", (e) => answer = e.code);
      await new Promise((r) => setTimeout(r, 50));
      clock.advance(4999);
      await new Promise((r) => setTimeout(r, 0));
      assert.equal(answer, "pending", "no answer before the deadline on the injected clock");
      clock.advance(2);
      await new Promise((r) => setTimeout(r, 0));
      assert.equal(answer, "timeout");
      assert.equal(sched.snapshot().nodes[0].ready, true);
      clock.advance(5000);
      assert.equal(sched.snapshot().nodes[0].ready, false, "the node missed its heartbeats");
    } finally {
      sched.stop();
      await store.close();
    }
  },
});

Deno.test("leaseStage() says what a waiting lease waits for: placing, a pod starting, a pod restoring", () => {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: gpuNode("n1", ["paused", "host_memory"]) }, {
    type: "funcUpdate",
    func: gpuFunc("t/n/f", "host_memory"),
  });
  assert.equal(leaseStage(d.state, "t/n/f"), "placing", "no pod yet");
  assert.equal(leaseStage(d.state, "t/n/nope"), "placing");
  const pod = created(d.run(lease("r1")))[0].id;
  assert.equal(leaseStage(d.state, "t/n/f"), "starting");
  d.run({ type: "podStatus", podId: pod, state: "Ready", endpoint: "e" });
  d.run({ type: "return", podId: pod, gateway: "g1" }); // parked
  d.run(lease("r2")); // resumes it
  assert.equal(leaseStage(d.state, "t/n/f"), "restoring");
});
