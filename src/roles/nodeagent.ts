/**
 * `RUN_SERVICE=NodeAgent`: this node's pods, followed through the state
 * service over gRPC, and `NodeAgentService` for their logs.
 *
 * @module
 */
import type { Config } from "../common/config.ts";
import { logger } from "../common/log.ts";
import { hostPort, listening } from "../common/net.ts";
import * as nodeagent from "../nodeagent/mod.ts";
import { GrpcMetaClient } from "../rpc/meta_grpc.ts";
import { serveNodeAgent } from "../rpc/nodeagent_grpc.ts";
import { nodeAgentConfig, type RoleHandle, Started, warnOpenPeers } from "./_shared.ts";

/** Starts this node's agent (stopped again if a later step of the start fails). */
export async function start(config: Config): Promise<RoleHandle> {
  const started = new Started();
  const { clusterToken } = config.cluster;
  warnOpenPeers(config, "NODEAGENT_PORT");
  await started.run(async (on) => {
    const meta = on.add(
      new GrpcMetaClient(config.cluster.statesvcAddr, { clusterToken }),
      (m) => m.close(),
    );
    const settings = await nodeAgentConfig(config, meta);
    const agent = on.add(await nodeagent.start(settings), (a) => a.stop());
    const bind = config.cluster.bindHost;
    const server = on.add(
      await listening(
        "NODEAGENT_PORT",
        bind,
        config.node.port,
        () => serveNodeAgent(agent.agent, hostPort(bind, config.node.port), clusterToken),
      ),
      (s) => s.stop(),
    );
    await agent.agent.setAgentAddr(`${settings.node.address}:${server.port}`);
    logger("nodeagent").info("NodeAgentService of {node} on {host}:{port}", {
      node: settings.node.name,
      host: bind,
      port: server.port,
    });
  });
  return { stop: () => started.stop() };
}
