/**
 * `RUN_SERVICE=NodeAgent`: this node's pods, followed through the state
 * service over gRPC, and `NodeAgentService` for their logs.
 *
 * @module
 */
import type { Config } from "../common/config.ts";
import { logger } from "../common/log.ts";
import * as nodeagent from "../nodeagent/mod.ts";
import { GrpcMetaClient } from "../rpc/meta_grpc.ts";
import { serveNodeAgent } from "../rpc/nodeagent_grpc.ts";
import { nodeAgentConfig, type RoleHandle } from "./_shared.ts";

/** Starts this node's agent. */
export async function start(config: Config): Promise<RoleHandle> {
  const meta = new GrpcMetaClient(config.cluster.statesvcAddr);
  const settings = await nodeAgentConfig(config, meta);
  const agent = await nodeagent.start(settings);
  const bind = config.cluster.bindHost;
  const server = await serveNodeAgent(agent.agent, `${bind}:${config.node.port}`);
  await agent.agent.setAgentAddr(`${settings.node.address}:${server.port}`);
  logger("nodeagent").info("NodeAgentService of {node} on {host}:{port}", {
    node: settings.node.name,
    host: bind,
    port: server.port,
  });
  return {
    async stop() {
      await server.stop();
      await agent.stop();
      meta.close();
    },
  };
}
