import { equal as assertEquals } from "node:assert/strict";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import { SchedulerService } from "../scheduler/service.ts";
import { schedulerContract } from "./scheduler_contract.ts";
import { GrpcSchedulerClient, serveScheduler } from "./scheduler_grpc.ts";
import { InferxError } from "../common/errors.ts";
import { leaderOnly } from "../scheduler/leader.ts";
import type { SchedulerClient } from "./types.ts";

async function inProcess() {
  const store = await openSqliteStore();
  const meta = new StateService(store);
  const sched = new SchedulerService(meta, { tickMs: 50 });
  await sched.start();
  return { store, meta, sched };
}

schedulerContract("SchedulerClient in-process", async () => {
  const { store, meta, sched } = await inProcess();
  return {
    scheduler: sched,
    meta,
    async dispose() {
      sched.stop();
      await store.close();
    },
  };
});

schedulerContract("SchedulerClient over gRPC", async () => {
  const { store, meta, sched } = await inProcess();
  const server = await serveScheduler(sched, "127.0.0.1:0", "s1");
  const client = new GrpcSchedulerClient([`127.0.0.1:${server.port}`]);
  return {
    scheduler: client,
    meta,
    async dispose() {
      client.close();
      await server.stop();
      sched.stop();
      await store.close();
    },
  };
});

Deno.test({
  name: "ConnectScheduler names the serving instance; the client skips an unreachable replica",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { store, sched } = await inProcess();
    const server = await serveScheduler(sched, "127.0.0.1:0", "sched-xyz");
    const client = new GrpcSchedulerClient([`127.0.0.1:1`, `127.0.0.1:${server.port}`]);
    try {
      assertEquals(await client.connect("gw1", []), "sched-xyz");
    } finally {
      client.close();
      await server.stop();
      sched.stop();
      await store.close();
    }
  },
});

Deno.test({
  name:
    "a lease whose deadline passes is the caller's timeout, not a scheduler out of reach to try the next one for",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // Two schedulers that take connections and never answer (stopped, or stuck on their store).
    const hung = [0, 1].map(() => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
    const reached = [0, 0];
    const held: Deno.Conn[] = [];
    const accepting = hung.map(async (l, i) => {
      for await (const c of l) (reached[i]++, held.push(c));
    });
    const client = new GrpcSchedulerClient(hung.map((l) => `127.0.0.1:${l.addr.port}`));
    try {
      const err = await client.leaseWorker({
        tenant: "t",
        namespace: "n",
        func: "f",
        gatewayId: "g",
        timeoutMs: 200,
      }).then(() => undefined, (e) => e);
      assertEquals(err?.code, "timeout", String(err));
      assertEquals(err.message, "No worker lease within 200 ms");
      assertEquals(reached[1], 0, "the second scheduler was not asked with the deadline past");
    } finally {
      client.close();
      for (const c of held) c.close();
      for (const l of hung) l.close();
      await Promise.allSettled(accepting);
    }
  },
});

Deno.test({
  name:
    "the leader's own refusal of a lease is the answer: the client asks another replica only of one that does not lead",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // The leader cannot start a pod (its store out of reach): it says when to try again.
    let asked = 0;
    const refusing: SchedulerClient = {
      leaseWorker: () => {
        asked++;
        return Promise.reject(
          new InferxError(
            "unavailable",
            "Cannot start a worker of t/n/f: the store refused its pod",
            {
              retryable: true,
              details: { retry_after_s: 1, failed_starts: 1 },
            },
          ),
        );
      },
      returnWorker: () => Promise.resolve(),
      refreshGateway: () => Promise.resolve({ reclaim: [], scaleOut: [] }),
      killPod: () => Promise.resolve(),
    };
    const leader = await serveScheduler(refusing, "127.0.0.1:0", "leader");
    const follower = await serveScheduler(
      leaderOnly("follower", () => undefined),
      "127.0.0.1:0",
      "f",
    );
    const at = (s: { port: number }) => `127.0.0.1:${s.port}`;
    const req = { tenant: "t", namespace: "n", func: "f", gatewayId: "g", timeoutMs: 1000 };
    try {
      for (const order of [[leader, follower], [follower, leader]]) {
        const client = new GrpcSchedulerClient(order.map(at));
        try {
          const err = await client.leaseWorker(req).then(() => undefined, (e) => e);
          assertEquals(err?.code, "unavailable");
          assertEquals(err.message, "Cannot start a worker of t/n/f: the store refused its pod");
          assertEquals(err.details?.retry_after_s, 1);
        } finally {
          client.close();
        }
      }
      assertEquals(asked, 2, "the leader was asked once in each order");
    } finally {
      await leader.stop();
      await follower.stop();
    }
  },
});
