import * as nodeagent from "../nodeagent/mod.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import { nodeAgentContract } from "./nodeagent_contract.ts";
import { GrpcNodeAgentClient, serveNodeAgent } from "./nodeagent_grpc.ts";

async function agentFixture() {
  const store = await openSqliteStore();
  const meta = new StateService(store);
  const handle = await nodeagent.start({
    meta,
    node: {
      name: "n1",
      address: "127.0.0.1",
      cpuMillis: 2000,
      memMB: 1024,
      gpus: [],
      contextOverheadMB: 0,
      standbyTiers: [],
      runtime: "process",
      ready: true,
      heartbeat: 0,
    },
    scope: `contract-${crypto.randomUUID()}`,
  });
  return { store, meta, handle };
}

nodeAgentContract("NodeAgentClient in-process", async () => {
  const { store, meta, handle } = await agentFixture();
  return {
    agent: handle.agent,
    meta,
    async dispose() {
      await handle.stop();
      await store.close();
    },
  };
});

nodeAgentContract("NodeAgentClient over gRPC", async () => {
  const { store, meta, handle } = await agentFixture();
  const server = await serveNodeAgent(handle.agent, "127.0.0.1:0");
  const agent = new GrpcNodeAgentClient(`127.0.0.1:${server.port}`);
  return {
    agent,
    meta,
    async dispose() {
      agent.close();
      await server.stop();
      await handle.stop();
      await store.close();
    },
  };
});
