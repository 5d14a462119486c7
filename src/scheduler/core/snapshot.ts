/**
 * Snapshot cold starts in the core: which nodes hold a snapshot of a
 * function's current version, how long a restore from one is expected to
 * take, and where a new pod goes. A node with a snapshot wins placement, and
 * the pod restores from it, only while restoring is expected to beat a fresh
 * start; both times are learned from the pods that came up.
 *
 * @module
 */
import { unitOf } from "./_accounting.ts";
import { DEFAULT_SCORES, place, type PlaceResult } from "./placement.ts";
import type { CoreFunc, CoreNode, CoreState } from "./types.ts";

/**
 * Whether a restore from a snapshot should beat a fresh start, by the times
 * learned from pods that came up: yes until both were seen, so that a restore
 * is tried once before fresh starts are preferred (a guess from the memory
 * limit, which says little of a process's size, had a function with a large
 * limit never restored at all).
 */
export function snapshotIsFaster(f: CoreFunc): boolean {
  return f.coldStartMs === undefined || f.snapshotStartMs === undefined ||
    f.snapshotStartMs < f.coldStartMs;
}

/** Where a new pod of `f` goes, and whether it restores from the node's snapshot. */
export interface StartPlan {
  result: PlaceResult;
  fromSnapshot: boolean;
}

/** Score weight that makes a snapshot outrank every default score together. */
const SNAPSHOT_WEIGHT = 10;

/**
 * Places a new pod of `f`: with the snapshot-locality score when a restore
 * is expected to be faster, or `always` (a node holding a snapshot of the
 * current version wins among the nodes that fit), by the default scores
 * otherwise.
 */
export function planStart(
  nodes: readonly CoreNode[],
  f: CoreFunc,
  mode: "auto" | "always" = "auto",
): StartPlan {
  if (f.snapshotNodes.size === 0 || (mode === "auto" && !snapshotIsFaster(f))) {
    return { result: place(nodes, f.demand), fromSnapshot: false };
  }
  const result = place(nodes, f.demand, {
    scores: [
      ...DEFAULT_SCORES,
      {
        name: "SnapshotLocality",
        weight: SNAPSHOT_WEIGHT,
        score: (node) => (f.snapshotNodes.has(node.name) ? 100 : 0),
      },
    ],
  });
  return { result, fromSnapshot: result.ok && f.snapshotNodes.has(result.node.name) };
}

/**
 * A node's snapshot of a function version appeared (`ready`) or went.
 * Only snapshots of the versions that serve count.
 */
export function applySnapshot(
  state: CoreState,
  ev: { func: string; version: number; node: string; ready: boolean },
): void {
  const f = unitOf(state, ev);
  if (!f) return;
  if (ev.ready) f.snapshotNodes.add(ev.node);
  else f.snapshotNodes.delete(ev.node);
}
