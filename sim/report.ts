/**
 * The comparison: GPUs each policy needs to meet the objective, found by
 * bisection on the node count, and the report (table, SVG chart, markdown).
 *
 * @module
 */
import {
  type ClusterSpec,
  type SimOptions,
  type SimPolicy,
  type SimResult,
  simulate,
} from "./engine.ts";
import type { Trace, TraceStats } from "./trace.ts";

/** What "enough GPUs" means. */
export interface Objective {
  /** p99 time to first byte at most this (ms). @default 2000 */
  ttfbP99Ms: number;
  /** At most this share of requests refused. @default 0.001 */
  maxRejected: number;
}

/** The default objective: p99 TTFB at most 2 s, at most 0.1% refused. */
export const DEFAULT_OBJECTIVE: Objective = { ttfbP99Ms: 2000, maxRejected: 0.001 };

/** Whether a run meets the objective. */
export function meets(r: SimResult, o: Objective): boolean {
  return r.ttfbP99Ms <= o.ttfbP99Ms && r.rejected <= o.maxRejected * r.requests;
}

/** The smallest cluster (in nodes) whose run meets `objective`, and that run. */
export function gpusNeeded(
  trace: Trace,
  policy: SimPolicy,
  cluster: (nodes: number) => ClusterSpec,
  options: {
    maxNodes: number;
    objective?: Objective;
    sim?: SimOptions;
    log?: (r: SimResult) => void;
  },
): { result: SimResult; met: boolean; runs: number } {
  const objective = options.objective ?? DEFAULT_OBJECTIVE;
  let runs = 0;
  const run = (n: number) => {
    runs++;
    const r = simulate(trace, cluster(n), policy, options.sim);
    options.log?.(r);
    return r;
  };
  let hi = options.maxNodes;
  let best = run(hi);
  if (!meets(best, objective)) return { result: best, met: false, runs };
  let lo = 0; // lo fails (0 nodes serve nothing), hi meets
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    const r = run(mid);
    if (meets(r, objective)) (hi = mid, best = r);
    else lo = mid;
  }
  return { result: best, met: true, runs };
}

const pct = (x: number, digits = 1) => `${(100 * x).toFixed(digits)}%`;
const ms = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${Math.round(x)} ms`);

/** The comparison as a markdown table. */
export function table(rows: { result: SimResult; met: boolean }[]): string {
  const head =
    "| policy | GPUs needed | p99 TTFB | refused | p50 / p99 latency | cold starts | restores | vRAM held | vRAM models need | evictions | pod starts | from snapshots |\n" +
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";
  const lines = rows.map(({ result: r, met }) =>
    `| ${r.policy} | ${met ? r.gpus : `> ${r.gpus}`} | ${ms(r.ttfbP99Ms)} | ${r.rejected} | ${
      ms(r.latencyP50Ms)
    } / ${ms(r.latencyP99Ms)} | ${pct(r.coldFraction, 2)} | ${
      pct(r.restores / Math.max(1, r.served), 2)
    } | ${pct(r.vramUtilization)} | ${
      pct(r.modelVramUtilization)
    } | ${r.evictions} | ${r.podStarts} | ${r.snapshotStarts} |`
  );
  return [head, ...lines].join("\n");
}

/** A bar chart of GPUs needed and vRAM utilization per policy, as SVG. */
export function chart(rows: { result: SimResult; met: boolean }[], title: string): string {
  const w = 640, h = 320, left = 60, bottom = 260, barW = 70;
  const maxG = Math.max(...rows.map((r) => r.result.gpus), 1);
  const step = (w - left - 40) / rows.length;
  const bars = rows.map(({ result: r }, i) => {
    const x = left + i * step + 20;
    const gh = (r.gpus / maxG) * 200;
    const uh = r.modelVramUtilization * 200;
    return `<rect x="${x}" y="${bottom - gh}" width="${barW}" height="${gh}" fill="#4e79a7"/>` +
      `<text x="${x + barW / 2}" y="${
        bottom - gh - 6
      }" text-anchor="middle" font-size="13">${r.gpus} GPUs</text>` +
      `<rect x="${x + barW + 6}" y="${bottom - uh}" width="${
        barW / 2
      }" height="${uh}" fill="#f28e2b"/>` +
      `<text x="${x + barW + 6 + barW / 4}" y="${
        bottom - uh - 6
      }" text-anchor="middle" font-size="11">${pct(r.modelVramUtilization, 0)}</text>` +
      `<text x="${x + barW / 2 + 20}" y="${
        bottom + 20
      }" text-anchor="middle" font-size="14">${r.policy}</text>`;
  }).join("\n  ");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif">
  <rect width="${w}" height="${h}" fill="white"/>
  <text x="${w / 2}" y="24" text-anchor="middle" font-size="15">${title}</text>
  <line x1="${left}" y1="${bottom}" x2="${w - 20}" y2="${bottom}" stroke="black"/>
  ${bars}
  <rect x="${left}" y="${h - 24}" width="12" height="12" fill="#4e79a7"/><text x="${
    left + 18
  }" y="${h - 14}" font-size="12">GPUs needed</text>
  <rect x="${left + 140}" y="${h - 24}" width="12" height="12" fill="#f28e2b"/><text x="${
    left + 158
  }" y="${h - 14}" font-size="12">share of vRAM the models need (time-weighted)</text>
</svg>
`;
}

/** The markdown report. */
export function markdown(input: {
  rows: { result: SimResult; met: boolean; runs: number }[];
  policies: SimPolicy[];
  stats: TraceStats;
  source: string;
  objective: Objective;
  wallS: number;
  command: string;
}): string {
  const s = input.stats;
  return `# Simulation: GPUs needed per design

Generated by \`${input.command}\` in ${input.wallS.toFixed(0)} s. The simulator replays the trace
through the real scheduler core (\`src/scheduler/core\`) on a virtual clock.

## Trace

${input.source}: ${s.functions} functions, ${s.invocations.toLocaleString("en")} invocations.
${pct(s.atMostHourly)} of functions are invoked at most once an hour, ${
    pct(s.atMostMinutely)
  } at most
once a minute; ${pct(s.topShareFor996)} of functions make 99.6% of the invocations; mean rates span
${s.rateOrders.toFixed(1)} orders of magnitude; the median coefficient of variation of
inter-arrival times (functions with 50+ calls) is ${s.medianCv.toFixed(2)}.

## Objective

The fewest 8-GPU nodes (80 GB H100s, 2 TiB of host memory and 128 cores each, as DGX H100 and the
clouds' 8-GPU machines have) at which p99 time to first byte (of the calls served) is at most
${ms(input.objective.ttfbP99Ms)} and at most ${pct(input.objective.maxRejected, 1)} of requests are
refused (queue timeout 30 s). A pod parked in host memory holds its GPU memory's copy there.

## Result

${table(input.rows)}

"refused": calls that waited out the queue timeout. "vRAM held" is what pods reserve (a whole GPU each for dedicated); "vRAM models need" is the
share of the cluster's vRAM the models on the GPUs actually use, time-weighted.

![GPUs needed and vRAM the models need](chart.svg)

## Policies

${input.policies.map((p) => `- **${p.name}**: ${p.description}.`).join("\n")}

Each policy's figures come from its run at the GPU count it needs
(${input.rows.map((r) => `${r.result.policy}: ${r.runs} runs`).join(", ")}).
`;
}
