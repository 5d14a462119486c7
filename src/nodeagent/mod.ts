/**
 * The `NodeAgent` role: one node's agent with its pod runtime.
 *
 * @module
 */
import type { NodeInfo } from "../model/cluster.ts";
import type { MetaClient } from "../rpc/types.ts";
import { NodeAgent, type NodeAgentOptions } from "./agent.ts";
import { InferxError } from "../common/errors.ts";
import { openLibCriu } from "../ffi/criu.ts";
import { openLibCuda } from "../ffi/libcuda.ts";
import { checkCriu, discover } from "./discover.ts";
import { dockerAvailable, DockerRuntime } from "./docker_runtime.ts";
import { ProcessRuntime } from "./process_runtime.ts";
import type { PodRuntime } from "./runtime.ts";

export { NodeAgent } from "./agent.ts";
export { discover, gpuType } from "./discover.ts";
export { ProcessRuntime } from "./process_runtime.ts";
export { dockerAvailable, DockerRuntime } from "./docker_runtime.ts";

/** Configuration of the node agent role. */
export interface NodeAgentConfig extends NodeAgentOptions {
  meta: MetaClient;
  node: NodeInfo;
  /** Working directory of process workers. */
  workDir?: string;
  /** Identifies this agent's workers across restarts (node name and data directory). */
  scope?: string;
  /** Where the CRIU capability check writes its log. @default a temporary directory */
  criuDir?: string;
  /** Where file-tier images go (process runtime with CRIU). @default `{workDir}/snapshots` */
  snapshotDir?: string;
}

/** A running node agent. */
export interface NodeAgentHandle {
  agent: NodeAgent;
  /** The runtime in use: `docker` or `process`. */
  runtime: string;
  stop(): Promise<void>;
}

/**
 * Starts a node agent. Its runtime is `node.runtime`: `docker`, `process`,
 * or `auto` (Docker when its socket answers, else processes).
 */
export async function start(config: NodeAgentConfig): Promise<NodeAgentHandle> {
  const exits: { agent?: NodeAgent } = {};
  const onExit = (podId: string, why: string) => exits.agent?.podExited(podId, why);
  const scope = config.scope ?? config.node.name;
  const want = config.node.runtime;
  if (!["auto", "docker", "process"].includes(want)) {
    throw new InferxError("invalid", `Invalid runtime "${want}": auto, docker or process`);
  }
  const docker = want === "docker" || (want === "auto" && await dockerAvailable());
  if (want === "docker" && !await dockerAvailable()) {
    throw new InferxError(
      "unavailable",
      "Cannot use the Docker runtime: no Docker engine answers on /var/run/docker.sock",
    );
  }
  // The driver stays open while the agent runs: the host-memory tier calls it.
  const { cuda } = docker ? { cuda: undefined } : openLibCuda();
  // The file tier (CRIU) is offered by the process runtime when CRIU passes its check.
  const criuCap = await checkCriu(config.criuDir);
  const criu = !docker && criuCap.available ? openLibCriu().criu : undefined;
  const runtime: PodRuntime = docker
    ? new DockerRuntime({ host: config.node.address, scope, onExit })
    : new ProcessRuntime({
      workDir: config.workDir,
      host: config.node.address,
      scope,
      onExit,
      cuda,
      criu,
      snapshotDir: config.snapshotDir,
    });
  const node = {
    ...(await discover(config.node, config.criuDir, criuCap)),
    runtime: runtime.name,
  };
  const agent = exits.agent = new NodeAgent(config.meta, runtime, node, config);
  await agent.start();
  return {
    agent,
    runtime: runtime.name,
    async stop() {
      await agent.stop();
      cuda?.close();
      criu?.close();
    },
  };
}
