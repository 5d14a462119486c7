/**
 * Functions: a new or changed definition (its version drains the pods of
 * older ones), and a removed one (its pods go, its waiters are refused).
 *
 * @module
 */
import { type Ctx, terminate } from "./_accounting.ts";
import { ensureCapacity } from "./capacity.ts";
import { updateSchedulable } from "./schedulable.ts";
import type { FuncReport, PodDemand } from "./types.ts";

/** A function was created or changed. */
export function onFuncUpdate(ctx: Ctx, r: FuncReport) {
  const { state } = ctx;
  let f = state.funcs.get(r.id);
  if (!f) {
    f = {
      ...r,
      pods: new Set(),
      idle: new Set(),
      waiters: [],
      restoreMs: {},
      snapshotNodes: new Set(),
    };
    state.funcs.set(r.id, f);
    // Pods synced before their function (restart order) now belong to it.
    for (const p of state.pods.values()) {
      if (p.func !== r.id) continue;
      f.pods.add(p.id);
      if (p.state === "Ready" && !p.leasedBy && p.version === r.version) f.idle.add(p.id);
    }
  }
  const changed = f.version !== r.version;
  if (changed) f.snapshotNodes.clear(); // they were of the old version
  const decide = !f.schedulable || !sameDemand(f.demand, r.demand);
  f.version = r.version;
  f.demand = r.demand;
  f.policy = r.policy;
  if (decide) updateSchedulable(ctx, f);
  if (changed) {
    for (const id of [...f.pods]) {
      const p = state.pods.get(id)!;
      if (p.version !== f.version && !p.leasedBy) terminate(ctx, p, "old version drained");
    }
  }
  ensureCapacity(ctx, f);
}

/** A function was removed. */
export function onFuncRemove(ctx: Ctx, id: string) {
  const f = ctx.state.funcs.get(id);
  if (!f) return;
  for (const podId of f.pods) terminate(ctx, ctx.state.pods.get(podId)!, "function removed");
  for (const w of f.waiters) {
    ctx.actions.push({
      type: "leaseFailed",
      reqId: w.reqId,
      code: "not_found",
      message: `Cannot lease worker for ${id}: function was removed`,
    });
  }
  ctx.state.funcs.delete(id);
  ctx.state.starved.delete(id);
}

function sameDemand(a: PodDemand, b: PodDemand): boolean {
  return a.cpu === b.cpu && a.memMB === b.memMB && a.gpuType === b.gpuType &&
    a.gpuCount === b.gpuCount && a.vramMB === b.vramMB;
}
