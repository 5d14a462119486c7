/**
 * Scheduler core benchmark (DESIGN.md budgets):
 * - lease+return decisions per second with 1,000 nodes x 8 GPUs and 1,000
 *   functions (target: over 100,000/s);
 * - placement time at 10,000 nodes, p50/p99 (target: p99 under 1 ms).
 * Baseline in the same run: a loop that only builds the same events, so the
 * ratio shows the core's cost above event construction.
 *
 * Run: `deno task bench` (or `deno run -A bench/scheduler_core.ts`).
 */
import { place, refreshGpuSummary } from "../src/scheduler/core/placement.ts";
import { newCoreState, step } from "../src/scheduler/core/step.ts";
import { funcReport, nodeReport } from "../src/scheduler/core/testing.ts";
import type { CoreAction, CoreState } from "../src/scheduler/core/types.ts";

/** Adds `count` nodes of 8 x 80 GB GPUs, 128 cores and 1 TB memory. */
function addNodes(s: CoreState, count: number) {
  for (let i = 0; i < count; i++) {
    const node = nodeReport(`n${i}`, {
      gpuCount: 8,
      vramMB: 81_920,
      contextOverheadMB: 500,
      cpuMillis: 128_000,
      memMB: 1_048_576,
    });
    step(s, { type: "nodeUpdate", node }, 0);
  }
}

function leaseReturn(nodes: number, funcs: number, decisions: number) {
  const s = newCoreState({ podIdPrefix: "b" });
  let now = 0;
  addNodes(s, nodes);
  const pods: string[] = [];
  for (let i = 0; i < funcs; i++) {
    const acts = step(s, {
      type: "funcUpdate",
      func: funcReport(`bench/ns/f${i}`, {
        gpuCount: 1,
        vramMB: 4000 + (i % 8) * 2000,
        cpu: 2000,
        memMB: 8192,
      }, { minReplica: 1, maxReplica: 4 }),
    }, now).actions;
    for (const a of acts) if (a.type === "createPod") pods.push(a.pod.id);
  }
  for (const id of pods) {
    step(s, { type: "podStatus", podId: id, state: "Ready", endpoint: id }, now);
  }
  const leased = new Map<string, string>();
  let grants = 0;
  const t0 = performance.now();
  for (let i = 0; i < decisions; i++) {
    now += 0.01;
    const f = `bench/ns/f${i % funcs}`;
    const held = leased.get(f);
    let acts: CoreAction[];
    if (held) {
      acts = step(s, { type: "return", podId: held, gateway: "g" }, now).actions;
      leased.delete(f);
    } else {
      acts =
        step(s, { type: "lease", reqId: `r${i}`, func: f, gateway: "g", deadline: now + 1000 }, now)
          .actions;
      for (const a of acts) if (a.type === "leaseGranted") (leased.set(f, a.podId), grants++);
    }
  }
  const ms = performance.now() - t0;
  return { perSec: decisions / (ms / 1000), grants };
}

function baseline(decisions: number, funcs: number) {
  let sink = 0;
  const t0 = performance.now();
  for (let i = 0; i < decisions; i++) {
    const ev = {
      type: "lease",
      reqId: `r${i}`,
      func: `bench/ns/f${i % funcs}`,
      gateway: "g",
      deadline: i,
    };
    sink += ev.reqId.length;
  }
  const ms = performance.now() - t0;
  return { perSec: decisions / (ms / 1000), sink };
}

function placement(nodes: number, samples: number, enoughFeasible?: number) {
  const s = newCoreState({ podIdPrefix: "p" });
  addNodes(s, nodes);
  // Fill nodes unevenly so filters and scores have work to do.
  for (let i = 0; i < nodes; i++) {
    const n = s.nodeList[i];
    for (const g of n.gpus) g.vramUsedMB = ((i * 7 + g.index * 13) % 10) * 8000;
    n.cpuUsed = (i % 16) * 8000;
    refreshGpuSummary(n);
  }
  const times: number[] = [];
  let placed = 0;
  for (let k = 0; k < samples; k++) {
    const demand = {
      cpu: 4000,
      memMB: 16_384,
      gpuType: "Any",
      gpuCount: 1 + (k % 2),
      vramMB: 10_000 + (k % 5) * 4000,
    };
    const t0 = performance.now();
    const r = place(s.nodeList, demand, { enoughFeasible });
    times.push(performance.now() - t0);
    if (r.ok) placed++;
  }
  times.sort((a, b) => a - b);
  const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
  return { p50: q(0.5), p99: q(0.99), placed };
}

const DECISIONS = 1_000_000;
baseline(DECISIONS, 1000); // warm-up
const base = baseline(DECISIONS, 1000);
leaseReturn(1000, 1000, 100_000); // warm-up
const lr = leaseReturn(1000, 1000, DECISIONS);
placement(10_000, 50); // warm-up
const pl = placement(10_000, 500);
const full = placement(10_000, 500, Infinity);

console.log(
  `scheduler core benchmark (${Deno.build.os}/${Deno.build.arch}, deno ${Deno.version.deno})`,
);
console.log(`baseline event construction:      ${Math.round(base.perSec).toLocaleString("en")} /s`);
console.log(
  `lease+return, 1000 nodes x 8 GPUs: ${
    Math.round(lr.perSec).toLocaleString("en")
  } decisions/s (target > 100,000; ${
    (lr.perSec / 100_000).toFixed(1)
  }x target; core/baseline ratio ${(lr.perSec / base.perSec).toFixed(3)})`,
);
console.log(
  `placement at 10,000 nodes:         p50 ${pl.p50.toFixed(3)} ms, p99 ${
    pl.p99.toFixed(3)
  } ms (target p99 < 1 ms; ${pl.placed}/500 placed)`,
);
console.log(
  `placement at 10,000 nodes, full scan (every node filtered and scored): p50 ${
    full.p50.toFixed(3)
  } ms, p99 ${full.p99.toFixed(3)} ms`,
);
