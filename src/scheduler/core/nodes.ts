/**
 * Nodes: what each offers, whether it is ready (reported so, and heard from
 * within `nodeTimeoutMs`), and what becomes of the pods of a node that is
 * lost.
 *
 * @module
 */
import { type Ctx, releasePod, terminate } from "./_accounting.ts";
import { retryStarved } from "./capacity.ts";
import { refreshGpuSummary } from "./placement.ts";
import { capacityChanged, updateAllSchedulable } from "./schedulable.ts";
import type { CoreNode, CoreState, NodeReport } from "./types.ts";

/**
 * Whether a node's last heartbeat (ms) is recent enough at `now`, its
 * silence counted from no earlier than `state.heardFrom`; a node with no
 * known heartbeat never goes stale.
 */
export function heartbeatFresh(state: CoreState, heartbeat: number | undefined, now: number) {
  return heartbeat === undefined ||
    now - Math.max(heartbeat, state.heardFrom ?? -Infinity) < state.config.nodeTimeoutMs;
}

/** A node registered or heartbeat: takes its figures, and loses its pods if it is not ready. */
export function onNodeUpdate(ctx: Ctx, r: NodeReport) {
  const { state } = ctx;
  let node = state.nodes.get(r.name);
  const joined = !node;
  const resized = joined || capacityChanged(node!, r);
  if (!node) {
    node = {
      name: r.name,
      ready: r.ready,
      cpuTotal: r.cpuMillis,
      memTotalMB: r.memMB,
      cpuUsed: 0,
      memUsedMB: 0,
      gpus: [],
      contextOverheadMB: r.contextOverheadMB,
      standbyTiers: r.standbyTiers,
      pods: new Set(),
      gpuSummary: { type: null, freeDesc: [], usedMB: 0, totalMB: 0 },
    };
    state.nodes.set(r.name, node);
    state.nodeList.push(node);
  }
  const wasReady = node.ready;
  // Silence is judged at the tick, against the other nodes (expireSilentNodes), and nodes listed
  // at a start together: a stale heartbeat here does not make a ready node not ready. A node
  // not ready comes back with a fresh one.
  const fresh = heartbeatFresh(state, r.heartbeat, ctx.now) || (!joined && wasReady) ||
    state.allSilent !== false;
  node.ready = r.ready && fresh;
  node.heartbeat = r.heartbeat;
  node.cpuTotal = r.cpuMillis;
  node.memTotalMB = r.memMB;
  node.contextOverheadMB = r.contextOverheadMB;
  node.standbyTiers = r.standbyTiers;
  const used = new Map(node.gpus.map((g) => [g.index, g]));
  const sameGpus = r.gpus.length === used.size && r.gpus.every((g) => used.has(g.index));
  node.gpus = r.gpus.map((g) => ({
    index: g.index,
    type: g.type,
    vramTotalMB: g.vramMB,
    vramUsedMB: used.get(g.index)?.vramUsedMB ?? 0,
    contexts: used.get(g.index)?.contexts ?? 0,
  }));
  // A GPU that left the report (its discovery failed once) and came back still holds
  // what its pods hold: counted again from them.
  if (!sameGpus) recountGpus(state, node);
  refreshGpuSummary(node);
  if (wasReady && !node.ready) {
    const why = r.ready ? "missed its heartbeats" : "is not ready";
    loseNodePods(ctx, node, `node ${node.name} ${why}`);
  }
  if (resized) updateAllSchedulable(ctx, joined);
  retryStarved(ctx);
}

/** Each GPU's charge, counted from the pods on its node that hold GPU memory. */
function recountGpus(state: CoreState, node: CoreNode) {
  for (const g of node.gpus) {
    g.vramUsedMB = 0;
    g.contexts = 0;
  }
  for (const id of node.pods) {
    const pod = state.pods.get(id);
    if (!pod?.held.vram) continue;
    for (const s of pod.gpus) {
      const g = node.gpus.find((g) => g.index === s.index);
      if (!g) continue;
      g.vramUsedMB += pod.vramChargeMB;
      g.contexts++;
    }
  }
}

/** A node's record is gone: so are its pods. */
export function onNodeRemove(ctx: Ctx, name: string) {
  const node = ctx.state.nodes.get(name);
  if (!node) return;
  loseNodePods(ctx, node, `node ${name} was removed`, true);
  ctx.state.nodes.delete(name);
  ctx.state.nodeList = ctx.state.nodeList.filter((n) => n !== node);
  updateAllSchedulable(ctx);
  retryStarved(ctx);
}

/**
 * Ready nodes whose heartbeat has grown older than `nodeTimeoutMs` stop being
 * ready, when another node was heard well after (half that time or more).
 * Heartbeats reach the scheduler through the store: when it stops carrying
 * them (full, out of reach, its watch stalled), every node falls silent at
 * once, their last heartbeats within one heartbeat's interval of each other,
 * and the fault is taken to be between them and the scheduler, as
 * Kubernetes' node controller takes a full disruption: no pod is moved, and
 * pods keep serving the gateways that hold their leases. When a node is heard
 * again, every node's silence counts afresh from then (the others'
 * heartbeats land over the next seconds, each at its own phase). This needs
 * `nodeTimeoutMs` at least twice the agents' heartbeat interval (2 s).
 */
export function expireSilentNodes(ctx: Ctx) {
  const { state } = ctx;
  let known = 0;
  let heard = false;
  let latest = -Infinity;
  for (const n of state.nodeList) {
    if (n.heartbeat === undefined) continue;
    known++;
    if (heartbeatFresh(state, n.heartbeat, ctx.now)) heard = true;
    if (n.heartbeat > latest) latest = n.heartbeat;
  }
  if (known > 0 && !heard) {
    state.allSilent = true;
    return;
  }
  if (state.allSilent) {
    state.allSilent = false;
    state.heardFrom = ctx.now;
    return;
  }
  state.allSilent = false;
  let lost = false;
  for (const node of state.nodeList) {
    if (!node.ready || heartbeatFresh(state, node.heartbeat, ctx.now)) continue;
    // Silent alone only when another node was heard well after it went quiet.
    if (latest - node.heartbeat! < state.config.nodeTimeoutMs / 2) continue;
    node.ready = false;
    loseNodePods(ctx, node, `node ${node.name} missed its heartbeats`);
    lost = true;
  }
  if (lost) retryStarved(ctx);
}

/**
 * Pods on a lost node are replaced. They keep their charge until the node
 * says they are gone, as every terminated pod does: a node that was only
 * silent (its agent stalled, its network cut off) still runs them, and must
 * get nothing placed into what they hold if it comes back first. A node
 * whose record is gone (`removed`) takes its pods' accounting with it.
 */
function loseNodePods(ctx: Ctx, node: CoreNode, reason: string, removed = false) {
  for (const id of [...node.pods]) {
    const pod = ctx.state.pods.get(id)!;
    terminate(ctx, pod, reason);
    if (removed) releasePod(ctx.state, pod);
  }
  for (const f of ctx.state.funcs.values()) {
    if (f.waiters.length || f.policy.minReplica) ctx.state.starved.add(f.id);
  }
}
