/**
 * The `NodeAgent` role: one node's agent with its pod runtime.
 *
 * @module
 */
import type { NodeInfo } from "../model/cluster.ts";
import type { MetaClient } from "../rpc/types.ts";
import { NodeAgent, type NodeAgentOptions } from "./agent.ts";
import { ProcessRuntime } from "./process_runtime.ts";

export { NodeAgent } from "./agent.ts";
export { ProcessRuntime } from "./process_runtime.ts";

/** Configuration of the node agent role. */
export interface NodeAgentConfig extends NodeAgentOptions {
  meta: MetaClient;
  node: NodeInfo;
  /** Working directory of process workers. */
  workDir?: string;
  /** Identifies this agent's workers across restarts (node name and data directory). */
  scope?: string;
}

/** A running node agent. */
export interface NodeAgentHandle {
  agent: NodeAgent;
  stop(): Promise<void>;
}

/** Starts a node agent with the process runtime. */
export async function start(config: NodeAgentConfig): Promise<NodeAgentHandle> {
  const exits: { agent?: NodeAgent } = {};
  const runtime = new ProcessRuntime({
    workDir: config.workDir,
    host: config.node.address,
    scope: config.scope ?? config.node.name,
    onExit: (podId, why) => exits.agent?.podExited(podId, why),
  });
  const agent = exits.agent = new NodeAgent(config.meta, runtime, config.node, config);
  await agent.start();
  return { agent, stop: () => agent.stop() };
}
