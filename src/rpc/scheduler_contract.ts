/**
 * The contract every `SchedulerClient` implementation passes, in-process and
 * over gRPC. The test plays the node agent: it marks the pods the scheduler
 * writes as ready.
 *
 * @module
 */
import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { createTestFunction, fixtureTests, until } from "../common/testing.ts";
import { decodePod, type NodeInfo, OUTPUT_TAIL } from "../model/cluster.ts";
import { startInformer } from "./informer.ts";
import { type MetaClient, type SchedulerClient, WORKER_OUTPUT } from "./types.ts";

/** A scheduler over `meta` (an empty store) and how to dispose of both. */
export interface SchedulerFixture {
  scheduler: SchedulerClient;
  meta: MetaClient;
  dispose(): Promise<void>;
}

const NODE: NodeInfo = {
  name: "n1",
  address: "127.0.0.1",
  cpuMillis: 4000,
  memMB: 8192,
  gpus: [],
  contextOverheadMB: 0,
  standbyTiers: [],
  runtime: "process",
  ready: true,
  heartbeat: 0,
};

async function seed(meta: MetaClient, spec?: Record<string, unknown>) {
  await meta.create({
    type: "node",
    tenant: "system",
    namespace: "system",
    name: "n1",
    object: { ...NODE, heartbeat: Date.now() },
  });
  await createTestFunction(meta, spec);
}

/** Marks every new pod Ready at a fake endpoint, as a node agent would. */
async function fakeAgent(meta: MetaClient) {
  return await startInformer(meta, "pod", {
    upsert(rec) {
      const pod = decodePod(rec.value);
      if (pod.state !== "Creating" || pod.desired !== "Running") return;
      meta.update({
        ...rec,
        object: { ...pod, state: "Ready", endpoint: `127.0.0.1:${9000 + rec.revision}` },
        revision: rec.revision,
      })
        .catch(() => {});
    },
    remove() {},
  });
}

const req = (func = "f", timeoutMs = 5000) => ({
  tenant: "t",
  namespace: "n",
  func,
  gatewayId: "gw1",
  timeoutMs,
});

/** Registers the cases as Deno tests named `${name}: ...`. */
export function schedulerContract(name: string, open: () => Promise<SchedulerFixture>): void {
  const t = fixtureTests(name, open);

  t("leaseWorker() cold-starts a pod, returnWorker() scales it in", async ({ scheduler, meta }) => {
    await seed(meta);
    const agent = await fakeAgent(meta);
    const lease = await scheduler.leaseWorker(req());
    assert.equal(lease.coldStart, true);
    assert.match(lease.endpoint, /^127\.0\.0\.1:\d+$/);
    assert.equal(lease.version, 1);
    await scheduler.refreshGateway("gw1", [lease.podId]);
    await scheduler.returnWorker({ podId: lease.podId, gatewayId: "gw1" });
    const deadline = Date.now() + 5000;
    while (true) {
      const { items } = await meta.list("pod");
      if (items.every((r) => decodePod(r.value).desired === "Terminated")) break;
      assert.ok(Date.now() < deadline, "the returned pod was not terminated");
      await new Promise((r) => setTimeout(r, 20));
    }
    agent.stop();
  });

  t(
    "a canary's leases go to the version asked for; heartbeats carry load and are answered with advice",
    async ({ scheduler, meta }) => {
      const policy = {
        Obj: { canary_percent: 50, max_replica: 2, scaleout_policy: { queue_ms: 100 } },
      };
      await seed(meta, { policy });
      const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
      const v1 = (await meta.get(ref))!;
      await meta.update({
        ...ref,
        object: { image: "y", commands: ["y"], policy },
        revision: v1.revision,
      });
      const agent = await fakeAgent(meta);
      // The scheduler learns of version 2 through its watch: until then a lease gets version 1.
      const leaseOf = async (version: number) => {
        for (const deadline = Date.now() + 5000;;) {
          const lease = await scheduler.leaseWorker({ ...req("f", 3000), version });
          if (lease.version === version) return lease;
          await scheduler.returnWorker({ podId: lease.podId, gatewayId: "gw1" });
          assert.ok(Date.now() < deadline, `no lease of version ${version}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      assert.equal((await leaseOf(2)).version, 2);
      assert.equal((await leaseOf(1)).version, 1, "the stable version serves its share");
      const load = (waitMs: number) => [{
        tenant: "t",
        namespace: "n",
        func: "f",
        version: 2,
        queued: 3,
        waitMs,
        inflight: 1,
        inflightTokens: 0,
        workers: 1,
      }];
      assert.deepEqual(await scheduler.refreshGateway("gw1", undefined, load(10)), {
        reclaim: [],
        scaleOut: [],
        rates: [],
        gateways: 1,
      });
      assert.deepEqual(await scheduler.refreshGateway("gw1", undefined, load(500)), {
        reclaim: [],
        scaleOut: [{ tenant: "t", namespace: "n", func: "f", version: 2, workers: 1 }],
        rates: [],
        gateways: 1,
      });
      agent.stop();
    },
  );

  t(
    "refreshGateway() shares a tenant's call rate between the gateways by the calls each was asked",
    async ({ scheduler, meta }) => {
      await seed(meta);
      const tenant = (await meta.get({
        type: "tenant",
        tenant: "system",
        namespace: "system",
        name: "t",
      }))!;
      await meta.update({
        ...tenant,
        object: { spec: { quota: { max_calls_per_s: 10, max_call_burst: 20 } } },
        revision: tenant.revision,
      });
      const beat = async (gw: string, calls: number) =>
        (await scheduler.refreshGateway(gw, [], [], calls ? [{ tenant: "t", calls }] : []))
          .rates ?? [];
      // One gateway: the whole rate, once the scheduler has read the quota.
      await until("the quota read", async () => (await beat("gw1", 0)).length === 1);
      assert.deepEqual(await beat("gw1", 0), [{ tenant: "t", perS: 10, burst: 20 }]);
      // A second gateway asked 30 calls takes almost all of it; the first, asked none, a floor:
      // each gateway's weight is its calls and a twentieth of the calls' mean (here 0.75).
      const near = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-9, `${a} vs ${b}`);
      const [second] = await beat("gw2", 30);
      near(second.perS, 10 * 30.75 / 31.5);
      near(second.burst, 20 * 30.75 / 31.5);
      // The first now asked 10: the shares follow the calls (11 : 31, floor 1).
      const [first] = await beat("gw1", 10);
      near(first.perS, 10 * 11 / 42);
      // Idle again: its floor; a burst share is one call at least.
      const [idle] = await beat("gw1", 0);
      near(idle.perS, 10 * 0.75 / 31.5);
      assert.equal(idle.burst, 1);
      // A gateway heard for the first time counts as asked the others' mean (0 and 30): 15, of 45
      // asked in all (floor 0.75 each), a third.
      const fresh = await scheduler.refreshGateway("gw3", [], [], []);
      assert.equal(fresh.gateways, 3);
      near(fresh.rates![0].perS, 10 * 15.75 / 47.25);
    },
  );

  t(
    "leaseWorker() with onProgress reports the pod starting, then answers the lease",
    async ({ scheduler, meta }) => {
      await seed(meta);
      const stages: string[] = [];
      const p = scheduler.leaseWorker(req(), undefined, (s) => stages.push(s));
      // The pod is created but no node agent marks it ready yet.
      const deadline = Date.now() + 5000;
      while (!stages.includes("starting")) {
        assert.ok(Date.now() < deadline, `no "starting" stage (got ${stages.join(", ")})`);
        await new Promise((r) => setTimeout(r, 20));
      }
      const agent = await fakeAgent(meta);
      const lease = await p;
      assert.equal(lease.coldStart, true);
      assert.deepEqual(stages, ["starting"]);
      agent.stop();
    },
  );

  for (const progress of [false, true]) {
    t(
      `a failed start reaches the caller at once, its worker's output apart, non-ASCII too${
        progress ? " (with onProgress)" : ""
      }`,
      async ({ scheduler, meta }) => {
        await seed(meta);
        const output = "█████ 100% loaded\nError: ✗ no weights";
        const failing = await startInformer(meta, "pod", {
          upsert(rec) {
            const pod = decodePod(rec.value);
            if (pod.state !== "Creating" || pod.desired !== "Running") return;
            meta.update({
              ...rec,
              object: { ...pod, state: "Failed", error: `exit code 3${OUTPUT_TAIL}${output}` },
              revision: rec.revision,
            }).catch(() => {});
          },
          remove() {},
        });
        const t0 = Date.now();
        await assert.rejects(
          scheduler.leaseWorker(req("f", 20_000), undefined, progress ? () => {} : undefined),
          (err: unknown) => {
            assert.ok(err instanceof InferxError, String(err));
            assert.equal(err.code, "worker_failed", err.message);
            assert.match(err.message, /failed to start: exit code 3$/);
            assert.equal(err.details?.[WORKER_OUTPUT], output);
            return true;
          },
        );
        assert.ok(Date.now() - t0 < 10_000, "at once, not at the lease's deadline");
        failing.stop();
      },
    );
  }

  t("leaseWorker() refuses an unknown function with not_found", async ({ scheduler, meta }) => {
    await seed(meta);
    await assert.rejects(scheduler.leaseWorker(req("nope")), (err: unknown) => {
      assert.ok(err instanceof InferxError);
      assert.equal(err.code, "not_found");
      assert.match(err.message, /t\/n\/nope/);
      return true;
    });
  });

  t(
    "leaseWorker() times out with the timeout code when no worker gets ready",
    async ({ scheduler, meta }) => {
      await seed(meta);
      await assert.rejects(scheduler.leaseWorker(req("f", 300)), (err: unknown) => {
        assert.ok(err instanceof InferxError);
        assert.equal(err.code, "timeout");
        return true;
      });
    },
  );

  t("an aborted leaseWorker() is withdrawn", async ({ scheduler, meta }) => {
    await seed(meta);
    const abort = new AbortController();
    const p = scheduler.leaseWorker(req("f", 10_000), abort.signal);
    setTimeout(() => abort.abort(new Error("gone")), 100);
    await assert.rejects(p);
  });

  t("killPod() terminates a pod", async ({ scheduler, meta }) => {
    await seed(meta);
    const agent = await fakeAgent(meta);
    const lease = await scheduler.leaseWorker(req());
    await scheduler.killPod(lease.podId);
    const deadline = Date.now() + 5000;
    while (true) {
      const { items } = await meta.list("pod");
      const pod = items.map((r) => decodePod(r.value)).find((p) => p.id === lease.podId);
      if (pod?.desired === "Terminated") break;
      assert.ok(Date.now() < deadline, "killPod did not terminate the pod");
      await new Promise((r) => setTimeout(r, 20));
    }
    agent.stop();
  });
}
