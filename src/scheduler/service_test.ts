import assert from "node:assert/strict";
import { decodePod, type NodeInfo } from "../model/cluster.ts";
import { startInformer } from "../rpc/informer.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import { SchedulerService } from "./service.ts";

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
    const store = await openSqliteStore();
    const meta = new StateService(store);
    const nodeRef = (name: string) => ({
      type: "node" as const,
      tenant: "system",
      namespace: "system",
      name,
    });
    for (const n of ["n1", "n2"]) await meta.create({ ...nodeRef(n), object: node(n) });
    await meta.create({
      type: "tenant",
      tenant: "system",
      namespace: "system",
      name: "t",
      object: {},
    });
    await meta.create({
      type: "namespace",
      tenant: "t",
      namespace: "system",
      name: "n",
      object: {},
    });
    await meta.create({
      type: "function",
      tenant: "t",
      namespace: "n",
      name: "f",
      object: { image: "x", commands: ["x"], policy: { Obj: { min_replica: 1 } } },
    });
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
