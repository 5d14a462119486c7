import assert from "node:assert/strict";
import { type InferxError, InferxError as InferxErrorClass } from "../common/errors.ts";
import { createTestFunction, ManualClock, testPod, until } from "../common/testing.ts";
import { decodePod, type NodeInfo } from "../model/cluster.ts";
import { startInformer } from "../rpc/informer.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import type { MetaClient } from "../rpc/types.ts";
import { leaseStage, SchedulerService } from "./service.ts";
import { Registry } from "prom-client";
import { CoreDriver, created, gpuFunc, gpuNode, lease } from "./core/testing.ts";

/** A test of the service: its watches and timers outlive the test's last await. */
const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

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

const nodeRef = (name: string) => ({
  type: "node" as const,
  tenant: "system",
  namespace: "system",
  name,
});

/** A lease of the test function t/n/f for gateway g, waiting at most `timeoutMs`. */
const leaseF = (sched: SchedulerService, timeoutMs: number, signal?: AbortSignal) =>
  sched.leaseWorker({ tenant: "t", namespace: "n", func: "f", gatewayId: "g", timeoutMs }, signal);

/** Plays the node agents: every pod placed becomes Ready. */
function readyAgents(meta: StateService) {
  return startInformer(meta, "pod", {
    upsert(rec) {
      const p = decodePod(rec.value);
      if (p.state === "Creating" && p.desired === "Running") {
        meta.update({
          ...rec,
          object: { ...p, state: "Ready", endpoint: "127.0.0.1:1" },
          revision: rec.revision,
        }).catch(() => {});
      }
    },
    remove() {},
  });
}

/** Writes each node's heartbeat every 100 ms, its clock `skewMs` off; returns the stop. */
function heartbeats(meta: StateService, nodes: Record<string, number>): () => void {
  const beat = setInterval(async () => {
    for (const [n, skewMs] of Object.entries(nodes)) {
      const cur = await meta.get(nodeRef(n));
      await meta.update({
        ...nodeRef(n),
        object: { ...node(n), heartbeat: Date.now() + skewMs },
        revision: cur!.revision,
      }).catch(() => {});
    }
  }, 100);
  return () => clearInterval(beat);
}

t(
  "SchedulerService marks a node without heartbeats not ready and replaces its pods elsewhere",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    for (const n of ["n1", "n2"]) await meta.create({ ...nodeRef(n), object: node(n) });
    await createTestFunction(meta, { policy: { Obj: { min_replica: 1 } } });
    const agent = await readyAgents(meta);
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
    const stopBeats = heartbeats(meta, { [other]: 0 }); // only the other node keeps beating
    try {
      const deadline = Date.now() + 5000;
      while ((await podsOn(other)).length === 0 || (await podsOn(first)).length !== 0) {
        assert.ok(Date.now() < deadline, "the pod was not replaced on the live node");
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(sched.snapshot().nodes.find((n) => n.name === first)?.ready, false);
    } finally {
      stopBeats();
      agent.stop();
      sched.stop();
      await store.close();
    }
  },
);

t("SchedulerService reads the injected clock and ticks on the injected ticker", async () => {
  const clock = new ManualClock();
  const store = await openSqliteStore();
  const meta = new StateService(store);
  const sys = { tenant: "system", namespace: "system" };
  await meta.create({
    type: "node",
    ...sys,
    name: "n1",
    object: { ...node("n1"), heartbeat: clock.now() },
  });
  // Another function's min_replica pod holds most of the node's CPU: a lease can only wait.
  await createTestFunction(meta, { resources: { CPU: 600 } });
  await meta.create({
    type: "function",
    tenant: "t",
    namespace: "n",
    name: "hog",
    object: { image: "x", resources: { CPU: 600 }, policy: { Obj: { min_replica: 1 } } },
  });
  const sched = new SchedulerService(meta, {
    clock,
    ticker: clock,
    tickMs: 100,
    nodeTimeoutMs: 10_000,
  });
  await sched.start();
  try {
    let answer = "pending";
    leaseF(sched, 5000)
      .then(() => answer = "granted", (e) => answer = e.code);
    await new Promise((r) => setTimeout(r, 50));
    clock.advance(4999);
    await new Promise((r) => setTimeout(r, 0));
    assert.equal(answer, "pending", "no answer before the deadline on the injected clock");
    clock.advance(2);
    await new Promise((r) => setTimeout(r, 0));
    assert.equal(answer, "timeout");
    assert.equal(sched.snapshot().nodes[0].ready, true);
    // Another node is heard, n1 is not: n1's silence is its own.
    const n2 = { type: "node" as const, ...sys, name: "n2" };
    await meta.create({ ...n2, object: { ...node("n2"), heartbeat: clock.now() } });
    await until("n2 seen", () => sched.snapshot().nodes.length === 2);
    const n1 = () => sched.snapshot().nodes.find((n) => n.name === "n1")!;
    for (let i = 0; i < 6 && n1().ready; i++) {
      clock.advance(2000);
      const rec = await meta.get(n2);
      await meta.update({
        ...n2,
        object: { ...node("n2"), heartbeat: clock.now() },
        revision: rec!.revision,
      });
      await new Promise((r) => setTimeout(r, 20)); // its watch brings it
      clock.advance(1);
    }
    assert.equal(n1().ready, false, "the node missed its heartbeats");
  } finally {
    sched.stop();
    await store.close();
  }
});

t(
  "SchedulerService refuses leases of a function no node could hold at once, records why in the function, and clears it when a node that fits joins",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    await meta.create({ ...nodeRef("n1"), object: node("n1") });
    await createTestFunction(meta, { resources: { GPU: { Type: "A100", Count: 1, vRam: 1000 } } });
    const fnRef = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
    const before = JSON.parse((await meta.get(fnRef))!.value);
    const sched = new SchedulerService(meta, { tickMs: 50 });
    await sched.start();
    const stored = async () => JSON.parse((await meta.get(fnRef))!.value);
    try {
      await assert.rejects(
        leaseF(sched, 60_000),
        (err: InferxError) => {
          assert.equal(err.code, "unschedulable");
          assert.match(err.message, /1 GPU of type A100 wanted, no node has one/);
          return true;
        },
      );
      await sched.conditionsWritten();
      const after = await stored();
      const [cond] = after.object.status.conditions;
      assert.deepEqual([cond.type, cond.status, cond.reason], [
        "Schedulable",
        "False",
        "GPUTypeUnavailable",
      ]);
      assert.ok(Date.parse(cond.lastTransitionTime) > 0);
      assert.equal(after.version, before.version, "a status write is not a new version");
      // A restarted scheduler decides the same and writes nothing more.
      const rev = (await meta.get(fnRef))!.revision;
      const again = new SchedulerService(meta, { tickMs: 50 });
      await again.start();
      await again.conditionsWritten();
      again.stop();
      assert.equal((await meta.get(fnRef))!.revision, rev);
      // A node with an A100 joins: the condition clears by itself.
      await meta.create({
        ...nodeRef("n2"),
        object: { ...node("n2"), gpus: [{ index: 0, type: "A100", vramMB: 40_000 }] },
      });
      await until("the condition cleared", async () => {
        await sched.conditionsWritten();
        return (await stored()).object.status.conditions[0].status === "True";
      });
      assert.equal((await stored()).object.status.conditions[0].reason, "Fits");
      let placed = "";
      leaseF(sched, 100)
        .catch(() => {});
      await until("a pod placed on n2", async () => {
        const pods = (await meta.list("pod")).items.map((r) => decodePod(r.value));
        placed = pods[0]?.node ?? "";
        return placed !== "";
      });
      assert.equal(placed, "n2");
    } finally {
      sched.stop();
      await store.close();
    }
  },
);

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

t(
  "SchedulerService asks again for a pod termination whose write was lost (pod records listed again)",
  async () => {
    const store = await openSqliteStore();
    // A state service whose updates fail while `away` is set, as when the store is away.
    let away = false;
    class Flaky extends StateService {
      override update(...args: Parameters<StateService["update"]>) {
        if (away) return Promise.reject(new InferxErrorClass("unavailable", "store away"));
        return super.update(...args);
      }
    }
    const meta = new Flaky(store);
    await meta.create({ ...nodeRef("n1"), object: node("n1") });
    await createTestFunction(meta, { policy: { Obj: { min_replica: 1 } } });
    const sched = new SchedulerService(meta, { tickMs: 50, podResyncMs: 200 });
    await sched.start();
    const record = async (id: string) =>
      (await meta.list("pod")).items.map((r) => decodePod(r.value)).find((p) => p.id === id);
    try {
      let podId = "";
      await until("the min_replica pod", async () => {
        podId = (await meta.list("pod")).items.map((r) => decodePod(r.value))[0]?.id ?? "";
        return podId !== "";
      });
      away = true;
      await sched.killPod(podId);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await record(podId))?.desired, "Running", "the termination's write was lost");
      assert.equal(sched.snapshot().pods.find((p) => p.id === podId)?.state, "Terminating");
      away = false;
      await until(
        "the termination asked again",
        async () => (await record(podId))?.desired === "Terminated",
      );
    } finally {
      sched.stop();
      await store.close();
    }
  },
);

Deno.test("SchedulerService refuses a lease, return or heartbeat without the ids it needs, or with figures out of range", async () => {
  const store = await openSqliteStore();
  const sched = new SchedulerService(new StateService(store));
  const req = { tenant: "t", namespace: "n", func: "f", gatewayId: "g", timeoutMs: 1000 };
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    ["no gateway", () => sched.leaseWorker({ ...req, gatewayId: "" }), /gatewayId is required/],
    ["no function", () => sched.leaseWorker({ ...req, func: "" }), /func is required/],
    ["no time", () => sched.leaseWorker({ ...req, timeoutMs: 0 }), /timeoutMs must be/],
    // Past a timer's reach it fired at once.
    ["for ever", () => sched.leaseWorker({ ...req, timeoutMs: 2 ** 62 }), /from 1 to 86400000/],
    ["a version below 1", () => sched.leaseWorker({ ...req, version: -3 }), /version must be/],
    [
      "a load that is no count",
      () =>
        sched.refreshGateway("g", [], [{
          tenant: "t",
          namespace: "n",
          func: "f",
          version: 1,
          queued: -1,
          waitMs: 0,
          inflight: Number.NaN,
          inflightTokens: 0,
          workers: 0,
        }]),
      /load queued must be a number >= 0/,
    ],
    ["return", () => sched.returnWorker({ podId: "p", gatewayId: "" }), /gatewayId is required/],
    ["heartbeat", () => sched.refreshGateway(""), /gatewayId is required/],
  ];
  for (const [what, call, re] of cases) {
    await assert.rejects(
      call(),
      (e: InferxError) => e.code === "invalid" && re.test(e.message),
      what,
    );
  }
  sched.stop();
  await store.close();
});

Deno.test("SchedulerService forgets a lease whose caller gave up: its deadline call is cancelled", async () => {
  const clock = new ManualClock();
  const store = await openSqliteStore();
  const meta = new StateService(store);
  await createTestFunction(meta);
  const sched = new SchedulerService(meta, { clock, ticker: clock, tickMs: 100 });
  await sched.start();
  try {
    const before = clock.pending;
    const abort = new AbortController();
    const leasing = leaseF(sched, 60_000, abort.signal);
    assert.equal(clock.pending, before + 1, "a call at the lease's deadline");
    abort.abort(new Error("gone"));
    await assert.rejects(leasing, /gone/);
    assert.equal(clock.pending, before, "cancelled with the lease");
  } finally {
    sched.stop();
    await store.close();
  }
});

t(
  "SchedulerService deletes the record of a pod on a node nobody knows: no agent ever will",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    await meta.create({ ...nodeRef("n1"), object: node("n1") });
    await createTestFunction(meta, {});
    const ghost = {
      type: "pod" as const,
      tenant: "t",
      namespace: "n",
      name: "ghost-1",
    };
    await meta.create({
      ...ghost,
      object: { ...testPod("ghost-1", "gone"), state: "Ready", endpoint: "127.0.0.1:1" },
    });
    const sched = new SchedulerService(meta, { tickMs: 50 });
    await sched.start();
    try {
      await until("the ghost's record deleted", async () => (await meta.get(ghost)) === undefined);
    } finally {
      sched.stop();
      await store.close();
    }
  },
);

t(
  "SchedulerService leases a function its watch has not brought yet, read from the store",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    // A watch that trails the store by 500 ms (a scheduler busy, or just elected).
    const slow = new Proxy(meta, {
      get(target, key) {
        if (key !== "watch") return Reflect.get(target, key).bind(target);
        return (
          type: Parameters<StateService["watch"]>[0],
          o: Parameters<StateService["watch"]>[1],
        ) =>
          target.watch(type, {
            ...o,
            onEvent: (ev) => setTimeout(() => o.onEvent(ev), 500),
          });
      },
    });
    const sched = new SchedulerService(slow, { tickMs: 50 });
    await sched.start();
    try {
      await createTestFunction(meta, {}); // made a moment ago, through another role
      const err = await leaseF(sched, 200).then(() => undefined, (e) => e as InferxError);
      // No node holds it, so it waits and times out: but it is no unknown function.
      assert.notEqual(err?.code, "not_found", err?.message);
    } finally {
      sched.stop();
      await store.close();
    }
  },
);

t(
  "SchedulerService fails a lease as unavailable when the store refuses the pod it would start",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    await meta.create({ ...nodeRef("n1"), object: node("n1") });
    await createTestFunction(meta, {});
    // etcd out of space: every write refused, as the state service says it.
    const full = new Proxy(meta, {
      get(target, key) {
        if (key !== "create") return Reflect.get(target, key).bind(target);
        return (r: Parameters<StateService["create"]>[0]) =>
          r.type === "pod"
            ? Promise.reject(
              new InferxErrorClass("unavailable", "etcdserver: mvcc: database space exceeded"),
            )
            : target.create(r);
      },
    });
    const sched = new SchedulerService(full, { tickMs: 50 });
    await sched.start();
    try {
      const lease = () =>
        leaseF(sched, 5000)
          .then(() => undefined, (e) => e as InferxError);
      const err = await lease();
      assert.equal(err?.code, "unavailable", err?.message);
      assert.match(err!.message, /the store refused its pod \(etcdserver: mvcc: database space/);
      assert.equal(err!.details?.retry_after_s, 1);
      // The store's failure is no failed start of a worker's: no crash loop counted.
      assert.equal(err!.details?.failed_starts, undefined);
      const again = await lease();
      assert.equal(again?.code, "unavailable", "in the back-off too");
      assert.equal(again!.details?.failed_starts, undefined);
      assert.equal(again!.details?.retry_after_s, 1, "a second's wait, not a growing one");
    } finally {
      sched.stop();
      await store.close();
    }
  },
);

/** A store with node n1 (it parks in host memory) and function t/n/f, parked 0.1 s after use. */
async function parkingStore() {
  const store = await openSqliteStore();
  const meta = new StateService(store);
  await meta.create({
    ...nodeRef("n1"),
    object: { ...node("n1"), standbyTiers: ["host_memory"] },
  });
  await createTestFunction(meta, { policy: { Obj: { scalein_timeout: 0.1 } } });
  return { store, meta };
}

/**
 * Plays a node agent that also parks and resumes; a pod of t/n/f made Ready,
 * given back and parked through the scheduler; its id.
 */
async function parkedPod(meta: MetaClient, sched: SchedulerService): Promise<string> {
  await startInformer(meta, "pod", {
    upsert(rec) {
      const p = decodePod(rec.value);
      const state = p.desired === "Running" && (p.state === "Creating" || p.state === "Standby")
        ? "Ready"
        : p.desired === "Standby" && p.state === "Ready"
        ? "Standby"
        : undefined;
      if (!state) return;
      // A resume takes its agent a moment (the scheduler hears how its write went first).
      setTimeout(() => {
        meta.update({
          ...rec,
          // As an agent's Ready report, the tier cleared.
          object: {
            ...p,
            state,
            endpoint: "127.0.0.1:1",
            standbyTier: state === "Ready" ? undefined : p.standbyTier,
          },
          revision: rec.revision,
        }).catch(() => {});
      }, p.state === "Standby" ? 200 : 0);
    },
    remove() {},
  });
  const lease = await leaseF(sched, 5000);
  await sched.returnWorker({ podId: lease.podId, gatewayId: "g" });
  await until("the pod parked", async () => {
    const rec = (await meta.list("pod")).items.find((r) => r.name === lease.podId);
    return rec !== undefined && decodePod(rec.value).state === "Standby";
  });
  return lease.podId;
}

t(
  "SchedulerService fails a resume's calls at once when the store refuses it, and not when the write went through with its answer lost",
  async () => {
    // "unsent": the state service out of reach, so no write went out and no read comes back.
    for (const mode of ["refused", "lost", "unsent"] as const) {
      const lost = mode === "lost";
      const { store, meta } = await parkingStore();
      let refusing = false;
      const flaky = new Proxy(meta, {
        get(target, key) {
          if (key === "get" && mode === "unsent") {
            return (r: Parameters<StateService["get"]>[0]) =>
              refusing && r.type === "pod"
                ? Promise.reject(
                  // As the gRPC client says it: not sent, so nothing of it done.
                  new InferxErrorClass("unavailable", "No connection established", {
                    details: { not_written: true },
                  }),
                )
                : target.get(r);
          }
          if (key !== "update") return Reflect.get(target, key).bind(target);
          return async (r: Parameters<StateService["update"]>[0]) => {
            const resume = r.type === "pod" &&
              (r.object as { desired?: string }).desired === "Running";
            if (!refusing || !resume) return await target.update(r);
            if (lost) await target.update(r); // written; its answer lost
            if (mode === "unsent") {
              throw new InferxErrorClass("unavailable", "No connection established", {
                details: { not_written: true },
              });
            }
            throw new InferxErrorClass("unavailable", "etcdserver: request timed out");
          };
        },
      }) as unknown as MetaClient;
      const sched = new SchedulerService(flaky, { tickMs: 50 });
      await sched.start();
      try {
        const pod = await parkedPod(meta, sched);
        refusing = true;
        const t0 = performance.now();
        const got = await leaseF(sched, 5000).then((l) => l, (e) => e as InferxError);
        if (!lost) {
          assert.ok(got instanceof InferxErrorClass, `${mode}: ${JSON.stringify(got)}`);
          assert.equal(got.code, "unavailable");
          assert.match(
            got.message,
            new RegExp(`Cannot resume worker ${pod} of t/n/f: the store refused it`),
          );
          assert.ok(performance.now() - t0 < 2000, "at once, not at the deadline");
        } else {
          // Resumed after all (the agent acted on the record): the call gets it.
          assert.ok(!(got instanceof Error), String(got));
          assert.equal((got as { podId: string }).podId, pod);
        }
      } finally {
        sched.stop();
        await store.close();
      }
    }
  },
);

t(
  "SchedulerService serves a worker whose park the store refused: the resume finds it running, not one to wait for",
  async () => {
    const { store, meta } = await parkingStore();
    // The store's disk full: a park's write is refused, nothing of it written.
    let parks = 0;
    const full = new Proxy(meta, {
      get(target, key) {
        if (key !== "update") return Reflect.get(target, key).bind(target);
        return async (r: Parameters<StateService["update"]>[0]) => {
          if (r.type === "pod" && (r.object as { desired?: string }).desired === "Standby") {
            parks++;
            throw new InferxErrorClass("unavailable", "the file system holding it is full", {
              details: { not_written: true },
            });
          }
          return await target.update(r);
        };
      },
    }) as unknown as MetaClient;
    const sched = new SchedulerService(full, { tickMs: 50 });
    await sched.start();
    await readyAgents(meta);
    try {
      const first = await leaseF(sched, 5000);
      await sched.returnWorker({ podId: first.podId, gatewayId: "g" });
      await until("a park asked of the store", () => Promise.resolve(parks > 0));
      // The next call: the worker never stopped, its record still says it runs.
      const t0 = performance.now();
      const again = await leaseF(sched, 5000);
      assert.equal(again.podId, first.podId);
      assert.ok(performance.now() - t0 < 2000, "at once, not at the deadline");
    } finally {
      sched.stop();
      await store.close();
    }
  },
);

t(
  "SchedulerService measures silences on its own steady clock: a step of the system clock takes no worker from a gateway, a node's clock set back loses it nothing",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    for (const n of ["n1", "n2"]) await meta.create({ ...nodeRef(n), object: node(n) });
    await createTestFunction(meta, {});
    const agent = await readyAgents(meta);
    const realNow = Date.now;
    let step = 0;
    // n1's agent runs on a host whose clock is a minute behind the scheduler's, n2's on time.
    const stopBeats = heartbeats(meta, { n1: -60_000, n2: 0 });
    const sched = new SchedulerService(meta, {
      tickMs: 50,
      nodeTimeoutMs: 1000,
      gatewayTimeoutMs: 1000,
    });
    const registry = new Registry();
    sched.registerMetrics(registry);
    await sched.start();
    try {
      const lease = await leaseF(sched, 5000);
      const hb = setInterval(() => sched.refreshGateway("g", [lease.podId]).catch(() => {}), 100);
      try {
        await new Promise((r) => setTimeout(r, 300));
        // The system clock set a minute ahead (NTP, a VM resumed): nothing fell silent.
        Date.now = () => realNow() + (step = 60_000);
        await new Promise((r) => setTimeout(r, 1500));
      } finally {
        Date.now = realNow;
        clearInterval(hb);
      }
      const pod = sched.snapshot().pods.find((p) => p.id === lease.podId);
      assert.equal(pod?.leasedBy, "g", `still leased after a step of ${step} ms`);
      assert.deepEqual(sched.snapshot().nodes.map((n) => [n.name, n.ready]), [
        ["n1", true],
        ["n2", true],
      ]);
      // Its one pod's start, counted by how it came up.
      const text = await registry.metrics();
      assert.match(text, /^inferx_pod_starts_total\{function="t\/n\/f",from="fresh"\} 1$/m);
      assert.match(text, /^inferx_pod_start_seconds_count\{from="fresh"\} 1$/m);
    } finally {
      stopBeats();
      agent.stop();
      sched.stop();
      await store.close();
    }
  },
);

t(
  "SchedulerService starting judges a node whose heartbeat is an hour old at once: no pod placed on it",
  async () => {
    const store = await openSqliteStore();
    const meta = new StateService(store);
    await meta.create({
      ...nodeRef("dead"),
      object: { ...node("dead"), heartbeat: Date.now() - 3_600_000 },
    });
    await meta.create({ ...nodeRef("live"), object: node("live") });
    await createTestFunction(meta, {});
    const stopBeats = heartbeats(meta, { live: 0 });
    const sched = new SchedulerService(meta, { tickMs: 50, nodeTimeoutMs: 3000 });
    await sched.start();
    try {
      const leases = Array.from(
        { length: 3 },
        () =>
          leaseF(sched, 300)
            .catch(() => {}),
      );
      await new Promise((r) => setTimeout(r, 200));
      const ready = Object.fromEntries(sched.snapshot().nodes.map((n) => [n.name, n.ready]));
      assert.deepEqual(ready, { dead: false, live: true });
      const placed = (await meta.list("pod")).items.map((r) => decodePod(r.value).node);
      assert.ok(placed.length > 0 && placed.every((n) => n === "live"), JSON.stringify(placed));
      await Promise.all(leases);
    } finally {
      stopBeats();
      sched.stop();
      await store.close();
    }
  },
);
