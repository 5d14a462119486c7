/**
 * The discrete-event simulator: replays a trace through the real scheduler
 * core (`step()` on a virtual clock, no timers), with a gateway model per
 * function (queue, leased workers with `parallel` slots, scale-out on
 * queueing, return after the keep-alive, a reclaimed worker given back once
 * its calls end) and a node model (start-up, restore per standby tier,
 * termination). Functions may belong to tenants, with weights; figures are
 * also kept per tenant.
 *
 * @module
 */
import type { StandbyTier } from "../src/model/cluster.ts";
import { newCoreState, step } from "../src/scheduler/core/step.ts";
import type { CoreAction, CoreState } from "../src/scheduler/core/types.ts";
import { rng, type SimFunction, type Trace } from "./trace.ts";

/** How a design runs functions: what the simulated platform does. */
export interface SimPolicy {
  name: string;
  /** What the policy stands for, for the report. */
  description: string;
  /** Whether a pod takes whole GPUs (dedicated) or its model's vRAM (packed). */
  wholeGpu: boolean;
  /** Standby tiers the nodes offer; empty: parked pods are not kept. */
  tiers: StandbyTier[];
  /** The tier functions ask for. */
  standbyTier: StandbyTier;
  standbyPerNode: number;
  /** Whether nodes snapshot a function's first pod and restore later cold starts from it. */
  snapshots?: boolean;
  /** Seconds a worker idles before it is given back. */
  keepAliveS: number;
  /** Requests one worker serves at once. */
  parallel: number;
  maxReplica: number;
}

/** The simulated cluster. */
export interface ClusterSpec {
  nodes: number;
  gpusPerNode: number;
  gpuVramMB: number;
  contextOverheadMB: number;
  cpuPerNode: number;
  memPerNodeMB: number;
}

/** Options for {@linkcode simulate}. */
export interface SimOptions {
  /** Longest wait in a queue before a request is refused (ms). @default 30000 */
  queueTimeoutMs?: number;
  /** Period of the scheduler's tick (ms). @default 5000 */
  tickMs?: number;
  /** Seed of service-time draws. @default 1 */
  seed?: number;
  /** Share a full pool between tenants by weight (the core's fairness). @default true */
  fairShare?: boolean;
  /** Tenant weights (default 1 each). */
  weights?: Record<string, number>;
}

/** What one tenant's calls saw. */
export interface TenantResult {
  requests: number;
  served: number;
  rejected: number;
  ttfbP50Ms: number;
  ttfbP99Ms: number;
  coldStarts: number;
}

/** Latency quantiles from a log-bucketed histogram (1% resolution). */
export class Histogram {
  #counts = new Float64Array(1500);
  count = 0;
  static readonly #ratio = Math.log(1.01);

  /** Records a value in ms (values under 1 ms share the first bucket). */
  add(ms: number): void {
    const b = ms <= 1
      ? 0
      : Math.min(this.#counts.length - 1, Math.ceil(Math.log(ms) / Histogram.#ratio));
    this.#counts[b]++;
    this.count++;
  }

  /** The value at quantile `q` (0..1), to within 1%. */
  quantile(q: number): number {
    if (this.count === 0) return 0;
    const target = q * this.count;
    let acc = 0;
    for (let b = 0; b < this.#counts.length; b++) {
      acc += this.#counts[b];
      if (acc >= target) return b === 0 ? 1 : Math.exp(b * Histogram.#ratio);
    }
    return Infinity;
  }
}

/** The outcome of one run. */
export interface SimResult {
  policy: string;
  gpus: number;
  requests: number;
  served: number;
  /** Refused: queue timeout, or the lease failed. */
  rejected: number;
  /** Served requests that waited for a worker started for them. */
  coldStarts: number;
  /** Served requests that waited for a worker resumed from standby. */
  restores: number;
  /** Pods started by restoring their node's snapshot. */
  snapshotStarts: number;
  coldFraction: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  ttfbP50Ms: number;
  ttfbP99Ms: number;
  /** Time-weighted share of the cluster's vRAM held by pods (reserved, whole GPUs for dedicated). */
  vramUtilization: number;
  /** Time-weighted share of the cluster's vRAM the models on the GPUs need. */
  modelVramUtilization: number;
  evictions: number;
  parks: number;
  podStarts: number;
  /** Wall-clock time of the run (ms). */
  wallMs: number;
  /** Leases the core took back from a tenant above its share for one within it. */
  reclaims: number;
  /** Figures per tenant. */
  tenants: Record<string, TenantResult>;
}

const COMPLETE = 1;
const POD_READY = 2;
const POD_GONE = 3;
const IDLE_CHECK = 4;
const TICK = 5;
const POD_PARKED = 6;

/** A min-heap of events ordered by time, then insertion. */
class EventHeap {
  #t: number[] = [];
  #seq: number[] = [];
  #kind: number[] = [];
  #a: number[] = [];
  #b: number[] = [];
  #n = 0;
  #counter = 0;

  get size(): number {
    return this.#n;
  }

  push(t: number, kind: number, a: number, b = 0): void {
    let i = this.#n++;
    const seq = this.#counter++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.#t[p] < t || (this.#t[p] === t && this.#seq[p] < seq)) break;
      this.#set(i, this.#t[p], this.#seq[p], this.#kind[p], this.#a[p], this.#b[p]);
      i = p;
    }
    this.#set(i, t, seq, kind, a, b);
  }

  #set(i: number, t: number, seq: number, kind: number, a: number, b: number) {
    this.#t[i] = t;
    this.#seq[i] = seq;
    this.#kind[i] = kind;
    this.#a[i] = a;
    this.#b[i] = b;
  }

  peekTime(): number {
    return this.#n ? this.#t[0] : Infinity;
  }

  /** Removes the first event into `out` ([t, kind, a, b]). */
  pop(out: number[]): void {
    out[0] = this.#t[0];
    out[1] = this.#kind[0];
    out[2] = this.#a[0];
    out[3] = this.#b[0];
    const last = --this.#n;
    const t = this.#t[last], seq = this.#seq[last], kind = this.#kind[last];
    const a = this.#a[last], b = this.#b[last];
    let i = 0;
    while (true) {
      let c = 2 * i + 1;
      if (c >= last) break;
      if (
        c + 1 < last &&
        (this.#t[c + 1] < this.#t[c] ||
          (this.#t[c + 1] === this.#t[c] && this.#seq[c + 1] < this.#seq[c]))
      ) c++;
      if (t < this.#t[c] || (t === this.#t[c] && seq < this.#seq[c])) break;
      this.#set(i, this.#t[c], this.#seq[c], this.#kind[c], this.#a[c], this.#b[c]);
      i = c;
    }
    this.#set(i, t, seq, kind, a, b);
  }
}

interface Worker {
  id: number;
  podId: string;
  func: number;
  busy: number;
  idleSince: number;
  /** Requests still to be served that waited for this worker's cold start / restore. */
  coldLeft: number;
  restoredLeft: number;
  gone: boolean;
  /** The core asked for it back: no new requests, returned once idle. */
  reclaimed: boolean;
}

interface Agent {
  workers: Worker[];
  /** Queued request indexes (FIFO from `head`). */
  queue: number[];
  head: number;
  leasing: boolean;
}

/** Runs `trace` on `cluster` under `policy`. Deterministic for the same inputs. */
export function simulate(
  trace: Trace,
  cluster: ClusterSpec,
  policy: SimPolicy,
  options: SimOptions = {},
): SimResult {
  const wall0 = performance.now();
  const queueTimeoutMs = options.queueTimeoutMs ?? 30_000;
  const tickMs = options.tickMs ?? 5_000;
  const rand = rng(options.seed ?? 1);
  const core: CoreState = newCoreState({
    podIdPrefix: "sim",
    gatewayTimeoutMs: Number.MAX_SAFE_INTEGER,
    fairShare: options.fairShare ?? true,
  });
  const funcs = trace.functions;
  const tenantOf = (i: number) => funcs[i].tenant ?? "sim";
  const fid = (i: number) => `${tenantOf(i)}/ns/${funcs[i].id}`;
  for (const [tenant, weight] of Object.entries(options.weights ?? {})) {
    step(core, { type: "tenantWeight", tenant, weight }, 0);
  }
  interface TenantAcc {
    requests: number;
    served: number;
    rejected: number;
    coldStarts: number;
    ttfb: Histogram;
  }
  const byTenant = new Map<string, TenantAcc>();
  const tenantAcc = funcs.map((_, i) => {
    const t = tenantOf(i);
    let acc = byTenant.get(t);
    if (!acc) {
      byTenant.set(
        t,
        acc = { requests: 0, served: 0, rejected: 0, coldStarts: 0, ttfb: new Histogram() },
      );
    }
    return acc;
  });
  let reclaims = 0;
  const funcOf = new Map<string, number>();
  let now = 0;

  const heap = new EventHeap();
  const agents: Agent[] = funcs.map(() => ({ workers: [], queue: [], head: 0, leasing: false }));
  const workers: Worker[] = [];
  const podFunc = new Map<string, number>();
  const podWorker = new Map<string, Worker>();
  const leaseFunc = new Map<string, number>();
  let leaseSeq = 0;

  const latency = new Histogram();
  const ttfb = new Histogram();
  let served = 0, rejected = 0, coldStarts = 0, restores = 0;
  let evictions = 0, parks = 0, podStarts = 0, snapshotStarts = 0;
  /** Nodes holding a snapshot, per function. */
  const snapshotAt = funcs.map(() => new Set<string>());
  /** Until when each node is taking a snapshot (the start it follows included). */
  const dumpingUntil = new Map<string, number>();
  /** How each starting pod comes up: its node, whether restored, the dump it waits for. */
  const starting = new Map<string, { node: string; fromSnapshot: boolean; dumpMs: number }>();
  let vramIntegral = 0;
  let modelIntegral = 0;
  const totalVram = cluster.nodes * cluster.gpusPerNode * cluster.gpuVramMB;

  const apply = (actions: CoreAction[]) => {
    for (const a of actions) {
      switch (a.type) {
        case "createPod": {
          const f = funcOf.get(a.pod.func)!;
          podFunc.set(a.pod.id, f);
          podStarts++;
          const snap = policy.snapshots ? funcs[f].snapshot : undefined;
          const fromSnapshot = snap !== undefined && a.pod.fromSnapshot === true;
          // A node's first fresh start of the function also takes its snapshot, unless the node
          // is taking another one (its agent dumps one at a time, and starts the pod unsnapshotted).
          const dumping = (dumpingUntil.get(a.pod.node) ?? 0) > now;
          const dumpMs = snap && !fromSnapshot && !dumping && !snapshotAt[f].has(a.pod.node)
            ? snap.dumpMs
            : 0;
          if (dumpMs) dumpingUntil.set(a.pod.node, now + funcs[f].coldStartMs + dumpMs);
          if (fromSnapshot) snapshotStarts++;
          starting.set(a.pod.id, { node: a.pod.node, fromSnapshot, dumpMs });
          const took = fromSnapshot ? snap!.restoreMs : funcs[f].coldStartMs + dumpMs;
          heap.push(now + took, POD_READY, podIndex(a.pod.id));
          break;
        }
        case "resumePod": {
          const f = podFunc.get(a.podId)!;
          heap.push(now + funcs[f].restoreMs[a.tier], POD_READY, podIndex(a.podId));
          break;
        }
        case "parkPod":
          parks++;
          // Its node reports it parked; what the tier gives back is free from then on.
          heap.push(now, POD_PARKED, podIndex(a.podId));
          break;
        case "terminatePod":
          if (a.reason.startsWith("evicted")) evictions++;
          heap.push(now, POD_GONE, podIndex(a.podId));
          break;
        case "leaseGranted": {
          const f = leaseFunc.get(a.reqId)!;
          leaseFunc.delete(a.reqId);
          const agent = agents[f];
          agent.leasing = false;
          const w: Worker = {
            id: workers.length,
            podId: a.podId,
            func: f,
            busy: 0,
            idleSince: now,
            // As the gateway counts them (func_agent.ts): the calls this worker takes at once.
            coldLeft: a.coldStart ? Math.min(queued(agent), policy.parallel) : 0,
            restoredLeft: a.resumed ? Math.min(queued(agent), policy.parallel) : 0,
            gone: false,
            reclaimed: false,
          };
          workers.push(w);
          agent.workers.push(w);
          podWorker.set(a.podId, w);
          drain(f);
          if (w.busy === 0) idle(w);
          scaleOut(f);
          break;
        }
        case "leaseFailed": {
          const f = leaseFunc.get(a.reqId)!;
          leaseFunc.delete(a.reqId);
          const agent = agents[f];
          agent.leasing = false;
          for (let q = agent.head; q < agent.queue.length; q++) reject(agent.queue[q]);
          agent.queue = [];
          agent.head = 0;
          break;
        }
        case "reclaimLease": {
          // The gateway takes no new request on it and gives it back once idle.
          const w = podWorker.get(a.podId);
          if (!w || w.gone || w.reclaimed) break;
          reclaims++;
          w.reclaimed = true;
          if (w.busy === 0) giveBack(w);
          break;
        }
      }
    }
  };

  const reject = (i: number) => {
    rejected++;
    tenantAcc[trace.func[i]].rejected++;
  };

  const giveBack = (w: Worker) => {
    w.gone = true;
    podWorker.delete(w.podId);
    const a = agents[w.func];
    a.workers.splice(a.workers.indexOf(w), 1);
    apply(step(core, { type: "return", podId: w.podId, gateway: "sim" }, now).actions);
    if (queued(a) > 0) scaleOut(w.func);
  };

  // Pod ids are "sim-<base36 seq>"; the heap carries numbers.
  const podIndex = (id: string) => parseInt(id.slice(4), 36);
  const podId = (n: number) => `sim-${n.toString(36)}`;
  const queued = (a: Agent) => a.queue.length - a.head;

  const freeWorker = (a: Agent): Worker | undefined => {
    let best: Worker | undefined;
    for (const w of a.workers) {
      if (!w.reclaimed && w.busy < policy.parallel && (!best || w.busy < best.busy)) best = w;
    }
    return best;
  };

  const start = (i: number, w: Worker) => {
    w.busy++;
    const f = funcs[w.func];
    const acc = tenantAcc[w.func];
    if (w.coldLeft > 0) (w.coldLeft--, coldStarts++, acc.coldStarts++);
    else if (w.restoredLeft > 0) (w.restoredLeft--, restores++);
    const firstByte = now - trace.times[i] + f.firstByteMs;
    ttfb.add(firstByte);
    acc.ttfb.add(firstByte);
    const service = -Math.log(Math.max(rand(), 1e-12)) * f.serviceMs;
    heap.push(now + service, COMPLETE, i, w.id);
  };

  const drain = (f: number) => {
    const a = agents[f];
    while (a.head < a.queue.length) {
      const i = a.queue[a.head];
      if (now - trace.times[i] > queueTimeoutMs) {
        a.head++;
        reject(i);
        continue;
      }
      const w = freeWorker(a);
      if (!w) break;
      a.head++;
      start(i, w);
    }
    if (a.head > 1024 && a.head * 2 > a.queue.length) {
      a.queue = a.queue.slice(a.head);
      a.head = 0;
    }
  };

  const scaleOut = (f: number) => {
    const a = agents[f];
    if (a.leasing || queued(a) === 0) return;
    let serving = 0;
    for (const w of a.workers) if (!w.reclaimed) serving++;
    if (serving >= policy.maxReplica) return;
    a.leasing = true;
    const reqId = `l${leaseSeq++}`;
    leaseFunc.set(reqId, f);
    apply(
      step(core, {
        type: "lease",
        reqId,
        func: fid(f),
        gateway: "sim",
        deadline: now + queueTimeoutMs,
      }, now).actions,
    );
  };

  const idle = (w: Worker) => {
    w.idleSince = now;
    heap.push(now + policy.keepAliveS * 1000, IDLE_CHECK, w.id, now);
  };

  // The cluster and the functions.
  for (let n = 0; n < cluster.nodes; n++) {
    step(core, {
      type: "nodeUpdate",
      node: {
        name: `node${n}`,
        ready: true,
        cpuMillis: cluster.cpuPerNode,
        memMB: cluster.memPerNodeMB,
        gpus: Array.from({ length: cluster.gpusPerNode }, (_, index) => ({
          index,
          type: "H100",
          vramMB: cluster.gpuVramMB,
        })),
        contextOverheadMB: cluster.contextOverheadMB,
        standbyTiers: policy.tiers,
      },
    }, 0);
  }
  for (let i = 0; i < funcs.length; i++) {
    funcOf.set(fid(i), i);
    step(core, {
      type: "funcUpdate",
      func: {
        id: fid(i),
        version: 1,
        demand: {
          cpu: funcs[i].cpu,
          memMB: funcs[i].memMB,
          gpuType: "Any",
          gpuCount: 1,
          vramMB: policy.wholeGpu ? cluster.gpuVramMB - cluster.contextOverheadMB : funcs[i].vramMB,
        },
        policy: {
          minReplica: 0,
          maxReplica: policy.maxReplica,
          standbyPerNode: policy.standbyPerNode,
          scaleinTimeoutS: 0,
          standbyTier: policy.standbyTier,
        },
      },
    }, 0);
  }

  heap.push(0, TICK, 0);
  const ev = [0, 0, 0, 0];
  let next = 0;
  const arrivals = trace.times.length;
  while (next < arrivals || heap.size > 0) {
    // Arrivals come from the sorted trace; everything else from the heap.
    if (next < arrivals && trace.times[next] <= heap.peekTime()) {
      now = trace.times[next];
      const i = next++;
      const f = trace.func[i];
      tenantAcc[f].requests++;
      const a = agents[f];
      const w = queued(a) === 0 ? freeWorker(a) : undefined;
      if (w) start(i, w);
      else {
        a.queue.push(i);
        scaleOut(f);
      }
      continue;
    }
    heap.pop(ev);
    now = ev[0];
    switch (ev[1]) {
      case COMPLETE: {
        const i = ev[2];
        const w = workers[ev[3]];
        served++;
        tenantAcc[w.func].served++;
        latency.add(now - trace.times[i]);
        w.busy--;
        if (w.reclaimed) {
          if (w.busy === 0) giveBack(w);
          break;
        }
        drain(w.func);
        if (w.busy === 0) idle(w);
        break;
      }
      case POD_READY: {
        const id = podId(ev[2]);
        const how = starting.get(id);
        starting.delete(id);
        apply(
          step(core, {
            type: "podStatus",
            podId: id,
            state: "Ready",
            endpoint: "sim",
            startedFrom: how?.fromSnapshot ? "snapshot" : "fresh",
            snapshotMs: how?.dumpMs,
          }, now).actions,
        );
        const f = podFunc.get(id);
        if (how && how.dumpMs > 0 && f !== undefined && !snapshotAt[f].has(how.node)) {
          snapshotAt[f].add(how.node);
          apply(
            step(
              core,
              { type: "snapshot", func: fid(f), version: 1, node: how.node, ready: true },
              now,
            )
              .actions,
          );
        }
        break;
      }
      case POD_GONE:
        apply(
          step(core, { type: "podStatus", podId: podId(ev[2]), state: "Terminated" }, now).actions,
        );
        break;
      case POD_PARKED:
        apply(
          step(core, { type: "podStatus", podId: podId(ev[2]), state: "Standby" }, now).actions,
        );
        break;
      case IDLE_CHECK: {
        const w = workers[ev[2]];
        if (w.gone || w.busy > 0 || w.idleSince !== ev[3]) break;
        giveBack(w);
        break;
      }
      case TICK: {
        let used = 0;
        for (const n of core.nodeList) for (const g of n.gpus) used += g.vramUsedMB;
        vramIntegral += used * tickMs;
        let model = 0;
        for (const p of core.pods.values()) {
          if (p.held.vram) model += funcs[podFunc.get(p.id)!].vramMB;
        }
        modelIntegral += model * tickMs;
        apply(step(core, { type: "tick" }, now).actions);
        for (let f = 0; f < agents.length; f++) if (queued(agents[f]) > 0) drain(f);
        if (next < arrivals || heap.size > 0) heap.push(now + tickMs, TICK, 0);
        break;
      }
    }
    if (now > trace.durationMs + 3_600_000 && next >= arrivals) break;
  }
  for (const a of agents) for (let q = a.head; q < a.queue.length; q++) reject(a.queue[q]);

  const requests = arrivals;
  return {
    policy: policy.name,
    gpus: cluster.nodes * cluster.gpusPerNode,
    requests,
    served,
    rejected,
    coldStarts,
    restores,
    snapshotStarts,
    coldFraction: served ? coldStarts / served : 0,
    latencyP50Ms: latency.quantile(0.5),
    latencyP99Ms: latency.quantile(0.99),
    ttfbP50Ms: ttfb.quantile(0.5),
    ttfbP99Ms: ttfb.quantile(0.99),
    vramUtilization: totalVram ? vramIntegral / (totalVram * Math.max(now, 1)) : 0,
    modelVramUtilization: totalVram ? modelIntegral / (totalVram * Math.max(now, 1)) : 0,
    evictions,
    parks,
    podStarts,
    wallMs: performance.now() - wall0,
    reclaims,
    tenants: Object.fromEntries(
      [...byTenant].map(([t, a]) => [t, {
        requests: a.requests,
        served: a.served,
        rejected: a.rejected,
        ttfbP50Ms: a.ttfb.quantile(0.5),
        ttfbP99Ms: a.ttfb.quantile(0.99),
        coldStarts: a.coldStarts,
      }]),
    ),
  };
}

/** The designs compared. */
export const POLICIES: Record<"dedicated" | "packed" | "full" | "snapshot", SimPolicy> = {
  dedicated: {
    name: "dedicated",
    description:
      "whole GPUs per worker, scale to zero after a 5 min keep-alive (KEDA/Knative style)",
    wholeGpu: true,
    tiers: [],
    standbyTier: "paused",
    standbyPerNode: 0,
    keepAliveS: 300,
    parallel: 8,
    maxReplica: 4,
  },
  packed: {
    name: "packed",
    description: "vRAM slices packed on shared GPUs, 5 min keep-alive, no standby",
    wholeGpu: false,
    tiers: [],
    standbyTier: "paused",
    standbyPerNode: 0,
    keepAliveS: 300,
    parallel: 8,
    maxReplica: 4,
  },
  full: {
    name: "full",
    description:
      "packed, idle workers parked in host memory after 30 s (GPU freed, restore at PCIe speed), LRU eviction",
    wholeGpu: false,
    tiers: ["paused", "host_memory"],
    standbyTier: "host_memory",
    standbyPerNode: 1,
    keepAliveS: 30,
    parallel: 8,
    maxReplica: 4,
  },
  snapshot: {
    name: "snapshot",
    description:
      "full, and each node snapshots a function's first pod (CRIU); later cold starts there restore it when that is faster than starting anew",
    wholeGpu: false,
    tiers: ["paused", "host_memory"],
    standbyTier: "host_memory",
    standbyPerNode: 1,
    snapshots: true,
    keepAliveS: 30,
    parallel: 8,
    maxReplica: 4,
  },
};

/** A node of 8 H100s (80 GB), 128 cores and 2 TiB of memory (a DGX H100, a cloud p5 or ND H100 v5). */
export function h100Nodes(nodes: number): ClusterSpec {
  return {
    nodes,
    gpusPerNode: 8,
    gpuVramMB: 81_920,
    contextOverheadMB: 512,
    cpuPerNode: 128_000,
    memPerNodeMB: 2_097_152,
  };
}

export type { SimFunction };
