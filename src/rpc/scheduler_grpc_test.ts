import { equal as assertEquals } from "node:assert/strict";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import { SchedulerService } from "../scheduler/service.ts";
import { schedulerContract } from "./scheduler_contract.ts";
import { GrpcSchedulerClient, serveScheduler } from "./scheduler_grpc.ts";

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
