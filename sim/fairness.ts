/**
 * The fair-sharing case: two tenants of equal weight on one GPU pool. The
 * *steady* tenant's calls need well under its half of the pool, but come and
 * go: each of its functions takes calls for a minute, then none for two (its
 * worker goes back after the keep-alive), so it needs fresh workers while
 * the burst runs. The *burst* tenant offers ten times what its half can
 * serve. The case runs the steady
 * tenant alone, then both with fair sharing off and on, and compares the
 * steady tenant's time to first byte: with fair sharing its p99 should stay
 * within 20% of running alone.
 *
 * @module
 */
import { type ClusterSpec, h100Nodes, type SimPolicy, type SimResult, simulate } from "./engine.ts";
import { rng, type SimFunction, type Trace } from "./trace.ts";

/** The knobs of the case. */
export interface FairnessOptions {
  /** Simulated time (ms). @default 10 min */
  durationMs?: number;
  /** When the burst starts and ends (ms). @default 1 min to 9 min */
  burstFromMs?: number;
  burstToMs?: number;
  /** Functions of each tenant. @default 6 steady, 8 burst */
  steadyFunctions?: number;
  burstFunctions?: number;
  /** Calls per second of each steady function while it is on. @default 10 */
  steadyRate?: number;
  /** Each steady function is on this long (ms) in every period, phases spread. @default 1 min */
  steadyOnMs?: number;
  /** @default 3 min */
  steadyPeriodMs?: number;
  /** The burst as a multiple of what the burst tenant's fair share serves. @default 10 */
  burstFactor?: number;
  /** @default 7 */
  seed?: number;
}

/** The pool: 2 nodes of 8 H100s; each model takes 38 GB, so 32 workers fit. */
export const FAIRNESS_CLUSTER: ClusterSpec = h100Nodes(2);

/** How both tenants' functions run: packed, no standby, 60 s keep-alive, 4 calls per worker. */
export const FAIRNESS_POLICY: SimPolicy = {
  name: "fair",
  description: "packed, 60 s keep-alive, no standby, 4 concurrent calls per worker",
  wholeGpu: false,
  tiers: [],
  standbyTier: "paused",
  standbyPerNode: 0,
  keepAliveS: 60,
  parallel: 4,
  maxReplica: 20,
};

const MODEL: Omit<SimFunction, "id" | "tenant"> = {
  vramMB: 38_000,
  memMB: 8_000,
  cpu: 4_000,
  coldStartMs: 5_000,
  serviceMs: 200,
  firstByteMs: 30,
  restoreMs: { paused: 20, host_memory: 2_000, file: 20_000 },
};

/** Workers the pool holds. */
function slots(c: ClusterSpec): number {
  const perGpu = Math.floor(c.gpuVramMB / (MODEL.vramMB + c.contextOverheadMB));
  return c.nodes * c.gpusPerNode * perGpu;
}

/** Adds Poisson arrivals of `rate` per second in [from, to) for function `f` to `out`. */
function poisson(
  out: [number, number][],
  rand: () => number,
  rate: number,
  [from, to]: [number, number],
  f: number,
) {
  const gap = () => -Math.log(Math.max(rand(), 1e-12)) / rate * 1000;
  for (let t = from + gap(); t < to; t += gap()) out.push([t, f]);
}

function toTrace(functions: SimFunction[], calls: [number, number][], durationMs: number): Trace {
  calls.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  return {
    functions,
    times: Float64Array.from(calls.map((c) => c[0])),
    func: Uint32Array.from(calls.map((c) => c[1])),
    durationMs,
  };
}

/** The two traces of the case: the steady tenant alone, and both tenants. */
export function fairnessTraces(o: FairnessOptions = {}): { alone: Trace; shared: Trace } {
  const durationMs = o.durationMs ?? 600_000;
  const from = o.burstFromMs ?? 60_000;
  const to = o.burstToMs ?? 540_000;
  const steadyN = o.steadyFunctions ?? 6;
  const burstN = o.burstFunctions ?? 8;
  const rand = rng(o.seed ?? 7);
  const steady: SimFunction[] = Array.from(
    { length: steadyN },
    (_, i) => ({ ...MODEL, id: `s${i}`, tenant: "steady" }),
  );
  const burst: SimFunction[] = Array.from(
    { length: burstN },
    (_, i) => ({ ...MODEL, id: `b${i}`, tenant: "burst" }),
  );
  const steadyCalls: [number, number][] = [];
  const period = o.steadyPeriodMs ?? 180_000;
  const on = o.steadyOnMs ?? 60_000;
  for (let f = 0; f < steadyN; f++) {
    const phase = (f * period) / steadyN;
    for (let t = phase - period; t < durationMs; t += period) {
      const window: [number, number] = [Math.max(0, t), Math.min(durationMs, t + on)];
      if (window[0] < window[1]) poisson(steadyCalls, rand, o.steadyRate ?? 10, window, f);
    }
  }
  // The burst tenant's fair share: half the workers, each serving `parallel` calls at a time.
  const shareRate = (slots(FAIRNESS_CLUSTER) / 2) * FAIRNESS_POLICY.parallel * 1000 /
    MODEL.serviceMs;
  const perFunction = (o.burstFactor ?? 10) * shareRate / burstN;
  const burstCalls: [number, number][] = [];
  for (let f = 0; f < burstN; f++) {
    poisson(burstCalls, rand, perFunction, [from, to], steadyN + f);
  }
  return {
    alone: toTrace(steady, [...steadyCalls], durationMs),
    shared: toTrace([...steady, ...burst], steadyCalls.concat(burstCalls), durationMs),
  };
}

/** The three runs of the case. */
export interface FairnessResult {
  alone: SimResult;
  unfair: SimResult;
  fair: SimResult;
  /** Calls per second the burst tenant offered, and what its fair share serves. */
  burstRate: number;
  shareRate: number;
  /** When the burst ran (ms). */
  burstFromMs: number;
  burstToMs: number;
}

/** Runs the case. */
export function runFairness(o: FairnessOptions = {}): FairnessResult {
  const { alone, shared } = fairnessTraces(o);
  const run = (t: Trace, fairShare: boolean) =>
    simulate(t, FAIRNESS_CLUSTER, FAIRNESS_POLICY, { fairShare, seed: o.seed ?? 7 });
  const shareRate = (slots(FAIRNESS_CLUSTER) / 2) * FAIRNESS_POLICY.parallel * 1000 /
    MODEL.serviceMs;
  const burstMs = (o.burstToMs ?? 540_000) - (o.burstFromMs ?? 60_000);
  let burstCalls = 0;
  const steadyN = o.steadyFunctions ?? 6;
  for (const f of shared.func) if (f >= steadyN) burstCalls++;
  return {
    alone: run(alone, true),
    unfair: run(shared, false),
    fair: run(shared, true),
    burstRate: burstCalls / (burstMs / 1000),
    shareRate,
    burstFromMs: o.burstFromMs ?? 60_000,
    burstToMs: o.burstToMs ?? 540_000,
  };
}

const ms = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${Math.round(x)} ms`);
const pct = (a: number, b: number) => `${(100 * a / Math.max(1, b)).toFixed(2)}%`;

/** The case as a markdown section. */
export function fairnessMarkdown(r: FairnessResult, command: string): string {
  const burstS = (r.burstToMs - r.burstFromMs) / 1000;
  const row = (name: string, x: SimResult) => {
    const s = x.tenants.steady;
    const b = x.tenants.burst;
    return `| ${name} | ${ms(s.ttfbP50Ms)} | ${ms(s.ttfbP99Ms)} | ${
      pct(s.rejected, s.requests)
    } | ${b ? `${Math.round(b.served / burstS)}/s` : "—"} | ${x.reclaims} |`;
  };
  const ratio = r.fair.tenants.steady.ttfbP99Ms / r.alone.tenants.steady.ttfbP99Ms;
  return `## Fair sharing between tenants

Generated by \`${command}\`. Two tenants of equal weight share ${FAIRNESS_CLUSTER.nodes} nodes of
${FAIRNESS_CLUSTER.gpusPerNode} GPUs (${
    slots(FAIRNESS_CLUSTER)
  } workers of a 38 GB model fit; ${FAIRNESS_POLICY.description}). The *steady* tenant's functions take calls for one minute in three (phases spread), well within
its half of the pool, and need fresh workers each time (the keep-alive is shorter than the pause);
the *burst* tenant offers ${Math.round(r.burstRate).toLocaleString("en")} calls/s for 8 minutes, ${
    (r.burstRate / r.shareRate).toFixed(1)
  }x the ${Math.round(r.shareRate)} calls/s its half of the pool serves.

| run | steady p50 TTFB | steady p99 TTFB | steady refused | burst calls served | leases reclaimed |
| --- | ---: | ---: | ---: | ---: | ---: |
${row("steady tenant alone", r.alone)}
${row("both, fair sharing off", r.unfair)}
${row("both, fair sharing on", r.fair)}

With fair sharing the steady tenant's p99 time to first byte is ${
    ratio.toFixed(2)
  }x its p99 alone (objective: within 1.20x); without it the burst keeps every worker it
leases and the steady tenant's new workers wait for the queue timeout. The burst tenant is still
served above its share (${Math.round(r.shareRate)} calls/s) whenever the steady tenant leaves room.
`;
}
