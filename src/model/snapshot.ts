/**
 * Snapshots: a function version's worker as CRIU dumped it on one node,
 * which later cold starts of that version on that node restore instead of
 * starting anew. Written by the node that holds the image; read by the
 * scheduler (where a restore is possible) and by whoever lists them.
 *
 * @module
 */
import { z } from "zod";

/** One snapshot, stored at `/registry/snapshot/{tenant}/{namespace}/{name}`. */
export const SnapshotInfoSchema = z.object({
  tenant: z.string(),
  namespace: z.string(),
  func: z.string(),
  funcVersion: z.int().min(0),
  node: z.string(),
  /** `Ready`: restorable. `Failed`: CRIU could not take it; this version starts fresh here. */
  state: z.enum(["Ready", "Failed"]),
  /** The pod it was taken from. */
  sourcePod: z.string(),
  /**
   * SHA-256 of the worker template (image, commands, envs, ...) it was taken
   * with: a function deleted and made again starts at version 1 too, and its
   * pods must not be restored from the old one's image.
   */
  template: z.string().optional(),
  /** Image size on disk. */
  bytes: z.int().min(0).default(0),
  /** How long the dump took (ms). */
  dumpMs: z.number().min(0).default(0),
  createdAt: z.number(),
  /** Last restore (ms since the epoch), for least-recently-used removal. */
  lastUsedAt: z.number().optional(),
  /** Pods restored from it. */
  restores: z.int().min(0).default(0),
  /** Why it failed (CRIU's reason). */
  error: z.string().optional(),
  /**
   * Failed for its size: the node's disk budget (MB) it did not fit. A node
   * started with another budget tries the version again.
   */
  budgetMB: z.number().min(0).optional(),
});
/** One snapshot. */
export type SnapshotInfo = z.infer<typeof SnapshotInfoSchema>;

/** The store name of a function version's snapshot on a node. */
export function snapshotName(func: string, version: number, node: string): string {
  return `${func}.v${version}.${node}`;
}

/** Encodes a snapshot for the store. */
export function encodeSnapshot(s: SnapshotInfo): string {
  return JSON.stringify(s);
}

/** Decodes a snapshot from the store. */
export function decodeSnapshot(value: string): SnapshotInfo {
  return SnapshotInfoSchema.parse(JSON.parse(value));
}
