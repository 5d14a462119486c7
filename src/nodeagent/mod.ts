/**
 * The `NodeAgent` role: one node's agent with its pod runtime.
 *
 * @module
 */
import type { NodeInfo } from "../model/cluster.ts";
import type { MetaClient } from "../rpc/types.ts";
import { NodeAgent, type NodeAgentOptions } from "./agent.ts";
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { criuCapability, openLibCriu } from "../ffi/criu.ts";
import { openLibCuda } from "../ffi/libcuda.ts";
import { dockerAvailable, DockerRuntime } from "./docker_runtime.ts";
import { ProcessRuntime } from "./process_runtime.ts";
import type { PodRuntime } from "./runtime.ts";

export { NodeAgent } from "./agent.ts";
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

/** Runs the CRIU capability check, logging into `criuDir` or a temporary directory. */
async function checkCriu(criuDir?: string): Promise<NonNullable<NodeInfo["criu"]>> {
  const dir = criuDir ?? await Deno.makeTempDir({ prefix: "inferx-criu-" });
  try {
    return await criuCapability(dir);
  } finally {
    if (!criuDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A short GPU type from the driver's name: "NVIDIA H100 80GB HBM3" -> "H100". */
export function gpuType(name: string): string {
  const m = name.match(/\b(B200|H200|H100|A100|A10G|A10|L40S|L40|L4|T4|V100|RTX ?\w+)\b/i);
  return m ? m[1].toUpperCase().replace(" ", "") : name;
}

/**
 * Fills in what the node really has: GPUs from the CUDA driver (else those
 * node.json declares), and whether the driver's checkpoint API and CRIU
 * work here, with the reason when not.
 */
export async function discover(
  node: NodeInfo,
  criuDir?: string,
  criu?: NodeInfo["criu"],
): Promise<NodeInfo> {
  const out: NodeInfo = { ...node };
  const { cuda, reason } = openLibCuda();
  if (cuda) {
    try {
      const devices = cuda.devices();
      out.gpuDriver = {
        available: true,
        driverVersion: cuda.driverVersion(),
        checkpointApi: cuda.hasCheckpointApi,
      };
      if (devices.length) {
        out.gpus = devices.map((d) => ({
          index: d.ordinal,
          type: gpuType(d.name),
          vramMB: d.totalMemMB,
          uuid: d.uuid,
        }));
      }
    } catch (err) {
      out.gpuDriver = { available: false, reason: (err as Error).message };
    } finally {
      cuda.close();
    }
  } else out.gpuDriver = { available: false, reason };
  out.criu = criu ?? await checkCriu(criuDir);
  logger("nodeagent").info(
    "Node {node}: {gpus} GPU(s) ({source}); CUDA driver: {driver}; CRIU: {criu}",
    {
      node: node.name,
      gpus: out.gpus.length,
      source: cuda && out.gpus !== node.gpus ? "libcuda" : "node.json",
      driver: out.gpuDriver.available
        ? `version ${out.gpuDriver.driverVersion}`
        : out.gpuDriver.reason,
      criu: out.criu.available ? "available" : out.criu.reason,
    },
  );
  return out;
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
