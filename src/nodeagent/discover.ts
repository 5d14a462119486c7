/**
 * What a node really has: GPUs from the CUDA driver (else those node.json
 * declares), whether the driver's checkpoint API is there, and whether CRIU
 * passes its check, each with the reason when not.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import { criuCapability } from "../ffi/criu.ts";
import { openLibCuda } from "../ffi/libcuda.ts";
import type { NodeInfo } from "../model/cluster.ts";

/** Runs the CRIU capability check, logging into `criuDir` or a temporary directory. */
export async function checkCriu(criuDir?: string): Promise<NonNullable<NodeInfo["criu"]>> {
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
