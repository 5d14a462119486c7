/**
 * What a node really has: GPUs from the CUDA driver (else those node.json
 * declares), whether the driver's checkpoint API is there, and whether CRIU
 * passes its check, each with the reason when not.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import { type CriuCapability, criuCapability } from "./criu.ts";
import { openLibCuda } from "../ffi/libcuda.ts";
import type { NodeInfo } from "../model/cluster.ts";

/**
 * The least vRAM (MB) a pod's CUDA context is charged on GPUs the driver
 * reports, whatever node.json says: a context always costs memory beyond the
 * pod's slice (the PyTorch sample worker held 708 MB beyond its tensors on
 * an H200, driver 580), and a slice of a whole GPU must not fit.
 */
export const DRIVER_CONTEXT_MIN_MB = 1024;

/** Where the kernel says its transparent huge page mode. */
export const HUGE_PAGE_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled";

/**
 * The kernel's transparent huge page mode (`always`, `madvise` or `never`:
 * the bracketed word of {@linkcode HUGE_PAGE_MODE_FILE}), or undefined where
 * it cannot be read. It decides how a restore fills memory: CRIU maps a
 * worker's memory and reads its image into it before it restores the
 * worker's own `madvise()` flags, so only under `always` are those pages
 * huge; otherwise each 4 KiB page is a fault of its own.
 */
export function hugePageMode(file = HUGE_PAGE_MODE_FILE): string | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch {
    return undefined;
  }
  return text.match(/\[(\w+)\]/)?.[1];
}

/** A short GPU type from the driver's name: "NVIDIA H100 80GB HBM3" -> "H100". */
export function gpuType(name: string): string {
  const m = name.match(/\b(B200|H200|H100|A100|A10G|A10|L40S|L40|L4|T4|V100|RTX ?\w+)\b/i);
  return m ? m[1].toUpperCase().replace(" ", "") : name;
}

/**
 * Fills in what the node really has: GPUs from the CUDA driver (else those
 * node.json declares; a context on the driver's GPUs is charged at least
 * {@linkcode DRIVER_CONTEXT_MIN_MB}), and whether the driver's checkpoint API
 * and CRIU work here, with the reason when not.
 */
export async function discover(
  node: NodeInfo,
  criu?: CriuCapability,
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
        out.contextOverheadMB = Math.max(node.contextOverheadMB, DRIVER_CONTEXT_MIN_MB);
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
  out.criu = criu ?? await criuCapability();
  logger("nodeagent").info(
    "Node {node}: {gpus} GPU(s) ({source}); CUDA driver: {driver}; CRIU: {criu}",
    {
      node: node.name,
      gpus: out.gpus.length,
      source: cuda && out.gpus !== node.gpus ? "libcuda" : "node.json",
      driver: out.gpuDriver.available
        ? `version ${out.gpuDriver.driverVersion}`
        : out.gpuDriver.reason,
      criu: out.criu.available
        ? `${out.criu.version} (${out.criu.source}, ${out.criu.path})`
        : out.criu.reason,
    },
  );
  return out;
}
