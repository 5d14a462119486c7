/**
 * What the dashboard draws, computed from nodes and pods as stored: each
 * GPU as a bar of the vRAM slices its pods hold, parked pods that hold no
 * GPU memory apart, CPU and memory spent per node, and a color per
 * function. Pure functions of their input, tested beside this file.
 *
 * @module
 */
import type { NodeInfo, PodInfo, PodState, StandbyTier } from "../model/cluster.ts";

/** Which of a pod's resources its node still spends on it. */
export interface Holds {
  cpu: boolean;
  mem: boolean;
  vram: boolean;
}

/** Pod states in which a pod holds everything it was given. */
const RUNNING: ReadonlySet<PodState> = new Set([
  "Init",
  "Creating",
  "Ready",
  "Resuming",
  "Terminating",
]);

/**
 * What a pod holds on its node, as the scheduler accounts it: a running pod
 * holds all it was given; a parked one keeps its GPU memory only while
 * paused, its host memory while paused or in host memory, nothing in a file;
 * a terminated or failed pod holds nothing.
 */
export function holds(p: Pick<PodInfo, "state" | "standbyTier">): Holds {
  if (RUNNING.has(p.state)) return { cpu: true, mem: true, vram: true };
  if (p.state !== "Standby") return { cpu: false, mem: false, vram: false };
  const tier = p.standbyTier ?? "file";
  return { cpu: false, mem: tier !== "file", vram: tier === "paused" };
}

/** One pod's share of one GPU. */
export interface Slice {
  pod: string;
  /** `tenant/namespace/name` of its function. */
  func: string;
  state: PodState;
  tier?: StandbyTier;
  /** The pod's own slice (MB). */
  vramMB: number;
  /** The CUDA context each pod costs on top of its slice (MB). */
  overheadMB: number;
  color: string;
}

/** One GPU and the slices on it. */
export interface GpuBar {
  index: number;
  type: string;
  totalMB: number;
  /** Slices plus their context overhead (MB). */
  usedMB: number;
  slices: Slice[];
}

/** A parked pod that holds no GPU memory, shown apart from the bars. */
export interface Parked {
  pod: string;
  func: string;
  tier?: StandbyTier;
  /** vRAM it gets back when it resumes (MB per GPU). */
  vramMB: number;
  gpus: number;
  color: string;
}

/** Used and total of one resource. */
export interface Usage {
  used: number;
  total: number;
}

/** One node as the nodes page draws it. */
export interface NodeView {
  node: NodeInfo;
  gpus: GpuBar[];
  parked: Parked[];
  /** Millicores. */
  cpu: Usage;
  /** MB. */
  mem: Usage;
  /** Pods placed on it, in any state. */
  pods: number;
}

/** `tenant/namespace/name` of a pod's function. */
export function podFunc(p: Pick<PodInfo, "tenant" | "namespace" | "func">): string {
  return `${p.tenant}/${p.namespace}/${p.func}`;
}

/**
 * A stable color per function from the FNV-1a hash of its id: one of 24
 * hues, each in a darker or a lighter shade, so that two functions rarely
 * look alike.
 */
export function funcColor(id: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h >>>= 0;
  const hue = (h % 24) * 15;
  const light = (h >>> 5) % 2 ? 40 : 52;
  return `hsl(${hue} 62% ${light}%)`;
}

/** Nodes sorted by name, each with its GPU bars, parked pods and usage. */
export function nodeViews(nodes: readonly NodeInfo[], pods: readonly PodInfo[]): NodeView[] {
  const byNode = new Map<string, PodInfo[]>();
  for (const p of pods) {
    const list = byNode.get(p.node);
    if (list) list.push(p);
    else byNode.set(p.node, [p]);
  }
  return [...nodes].sort((a, b) => a.name.localeCompare(b.name)).map((node) => {
    const on = (byNode.get(node.name) ?? []).slice().sort((a, b) => a.createdAt - b.createdAt);
    const gpus: GpuBar[] = node.gpus.map((g) => ({
      index: g.index,
      type: g.type,
      totalMB: g.vramMB,
      usedMB: 0,
      slices: [],
    }));
    const parked: Parked[] = [];
    const cpu = { used: 0, total: node.cpuMillis };
    const mem = { used: 0, total: node.memMB };
    for (const p of on) {
      const h = holds(p);
      if (h.cpu) cpu.used += p.cpuMillis;
      if (h.mem) mem.used += p.memMB;
      const func = podFunc(p);
      const color = funcColor(func);
      if (p.state === "Standby" && !h.vram && p.gpus.length) {
        parked.push({
          pod: p.id,
          func,
          tier: p.standbyTier,
          vramMB: p.gpus[0].vramMB,
          gpus: p.gpus.length,
          color,
        });
      }
      if (!h.vram) continue;
      for (const s of p.gpus) {
        const bar = gpus.find((g) => g.index === s.index);
        if (!bar) continue;
        bar.slices.push({
          pod: p.id,
          func,
          state: p.state,
          tier: p.standbyTier,
          vramMB: s.vramMB,
          overheadMB: node.contextOverheadMB,
          color,
        });
        bar.usedMB += s.vramMB + node.contextOverheadMB;
      }
    }
    return { node, gpus, parked, cpu, mem, pods: on.length };
  });
}

/** The share `part` of `whole` as a CSS percentage, clamped to 0–100. */
export function percent(part: number, whole: number): string {
  if (!(whole > 0)) return "0%";
  const p = Math.min(100, Math.max(0, (100 * part) / whole));
  return `${Number(p.toFixed(3))}%`;
}

/** A duration in its largest whole unit: `42s`, `5m`, `3h`, `2d`. */
export function age(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

/** Megabytes as people read them: `512 MB`, `29.3 GB`, `80 GB`, `1536 GB`. */
export function mb(n: number): string {
  if (n < 1024) return `${n} MB`;
  const g = n / 1024;
  return `${Number(g.toFixed(g < 100 ? 1 : 0))} GB`;
}

/** Counts of pods by state, in the order of a pod's life: `2 Ready, 1 Standby`. */
export function stateCounts(pods: readonly Pick<PodInfo, "state">[]): string {
  const order: PodState[] = [
    "Init",
    "Creating",
    "Ready",
    "Resuming",
    "Standby",
    "Terminating",
    "Failed",
    "Terminated",
  ];
  const n = new Map<string, number>();
  for (const p of pods) n.set(p.state, (n.get(p.state) ?? 0) + 1);
  return order.filter((s) => n.has(s)).map((s) => `${n.get(s)} ${s}`).join(", ");
}
