/**
 * Functions: a new or changed definition, and a removed one. A function is
 * scheduled as its serving versions (see `CoreFunc`): the newest, plus the
 * older ones a traffic split keeps serving, each with its own pods, idle
 * pods and waiters. Pods of a version that no longer serves drain: idle ones
 * go at once, leased ones when their gateway gives them back.
 *
 * @module
 */
import { type Ctx, terminate, unitOf } from "./_accounting.ts";
import { ensureCapacity, trimToMax } from "./capacity.ts";
import { updateSchedulable } from "./schedulable.ts";
import { trimParked } from "./standby.ts";
import type { CoreFunc, FuncReport, PodDemand } from "./types.ts";

/** The id of version `version` of function `func`: its own id when it is the newest. */
export function unitId(func: string, version: number, newest: boolean): string {
  return newest ? func : `${func}@${version}`;
}

/** A function was created or changed. */
export function onFuncUpdate(ctx: Ctx, r: FuncReport) {
  const { state } = ctx;
  const wanted: { version: number; demand: PodDemand }[] = [
    { version: r.version, demand: r.demand },
    ...(r.older ?? []).filter((o) => o.version !== r.version),
  ];
  // The versions that serve now, taken out to be put back under their new ids.
  const before = state.units.get(r.id);
  const had = new Map<number, CoreFunc>();
  for (const u of before ?? []) {
    had.set(u.version, u);
    state.funcs.delete(u.id);
    state.starved.delete(u.id);
  }
  const units: CoreFunc[] = [];
  for (const [i, w] of wanted.entries()) {
    const id = unitId(r.id, w.version, i === 0);
    let u = had.get(w.version);
    had.delete(w.version);
    // What this version needed when last decided: its own, or (a new newest version) the
    // function's, whose Schedulable condition it carries on.
    const head = i === 0 ? before?.[0] : undefined;
    const decided = u ?? head;
    const prevDemand = decided?.demand;
    if (!u) {
      u = {
        id,
        func: r.id,
        version: w.version,
        demand: w.demand,
        policy: r.policy,
        pods: new Set(),
        idle: new Set(),
        waiters: [],
        restoreMs: {},
        snapshotNodes: new Set(),
        schedulable: head?.schedulable,
      };
      // Pods synced before their function (restart order) now belong to it.
      for (const p of state.pods.values()) {
        if (p.func !== r.id || p.version !== w.version) continue;
        u.pods.add(p.id);
        if (p.state === "Ready" && !p.leasedBy && p.unclaimedUntil === undefined) u.idle.add(p.id);
      }
    }
    // A version keeps its snapshots; it is decided again when what it needs changed.
    const decide = !u.schedulable || !prevDemand || !sameDemand(prevDemand, w.demand);
    u.id = id;
    u.demand = w.demand;
    // The newest version a split gives no calls keeps no pods warm for them.
    u.policy = i === 0 && r.newestTakesNone ? { ...r.policy, minReplica: 0 } : r.policy;
    state.funcs.set(id, u);
    units.push(u);
    if (decide) updateSchedulable(ctx, u);
  }
  state.units.set(r.id, units);
  if (!before) {
    // Pods synced before their function whose version no longer serves.
    for (const p of [...state.pods.values()]) {
      if (p.func === r.id && !p.leasedBy && !unitOf(state, p)) {
        terminate(ctx, p, "old version drained");
      }
    }
  }
  for (const old of had.values()) {
    for (const podId of old.pods) {
      const p = state.pods.get(podId)!;
      if (!p.leasedBy) terminate(ctx, p, "old version drained");
    }
    // Its waiters are served by the newest version instead.
    units[0].waiters.push(...old.waiters);
  }
  for (const u of units) {
    trimToMax(ctx, u); // a lowered max_replica holds for the pods it has
    trimParked(ctx, u); // and a lowered standby_per_node for those parked
    ensureCapacity(ctx, u);
  }
}

/** A function was removed: every version's pods go, their waiters are refused. */
export function onFuncRemove(ctx: Ctx, id: string) {
  const units = ctx.state.units.get(id);
  if (!units) return;
  for (const f of units) {
    for (const podId of f.pods) terminate(ctx, ctx.state.pods.get(podId)!, "function removed");
    for (const w of f.waiters) {
      ctx.actions.push({
        type: "leaseFailed",
        reqId: w.reqId,
        code: "not_found",
        message: `Cannot lease worker for ${id}: function was removed`,
      });
    }
    ctx.state.funcs.delete(f.id);
    ctx.state.starved.delete(f.id);
  }
  ctx.state.units.delete(id);
}

/**
 * The serving version a lease for `version` of `func` goes to: that version
 * when it serves, else the newest; undefined when the function is unknown.
 */
export function leaseTarget(
  units: readonly CoreFunc[] | undefined,
  version?: number,
): CoreFunc | undefined {
  if (!units?.length) return undefined;
  if (version === undefined) return units[0];
  return units.find((u) => u.version === version) ?? units[0];
}

function sameDemand(a: PodDemand, b: PodDemand): boolean {
  return a.cpu === b.cpu && a.memMB === b.memMB && a.gpuType === b.gpuType &&
    a.gpuCount === b.gpuCount && a.vramMB === b.vramMB;
}
