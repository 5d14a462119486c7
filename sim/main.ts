/**
 * `deno task sim`: how many GPUs each design needs for a trace.
 *
 * Flags: `--functions N` (1000), `--hours H` (24), `--seed S` (7),
 * `--csv FILE` (an Azure per-minute invocation-count CSV instead of the
 * generator), `--max-nodes N` (128), `--out DIR` (sim/results). The report
 * ends with the fair-sharing case (`sim/fairness.ts`, a few seconds).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { h100Nodes, POLICIES, type SimResult } from "./engine.ts";
import { fairnessMarkdown, runFairness } from "./fairness.ts";
import { chart, DEFAULT_OBJECTIVE, gpusNeeded, markdown, table } from "./report.ts";
import { generateTrace, loadAzureCsv, traceStats } from "./trace.ts";

const OPTIONS = {
  functions: { type: "string", default: "1000" },
  hours: { type: "string", default: "24" },
  seed: { type: "string", default: "7" },
  csv: { type: "string" },
  "max-nodes": { type: "string", default: "128" },
  out: { type: "string", default: new URL("./results", import.meta.url).pathname },
} as const;

/** The flags; an unknown or malformed one is said without a stack. */
function parsed() {
  try {
    return parseArgs({ args: Deno.args, options: OPTIONS });
  } catch (err) {
    console.error(`deno task sim: ${(err as Error).message}`);
    Deno.exit(2);
  }
}

const { values } = parsed();

/** Exits with `message` (a wrong flag, a file that cannot be read): no stack, status 2. */
function fail(message: string): never {
  console.error(`deno task sim: ${message}`);
  Deno.exit(2);
}

/** Flag `name`'s value as a number in [min, max] (a whole one when `whole`), or exits saying why. */
function flag(name: keyof typeof values, min: number, max: number, whole: boolean): number {
  const raw = String(values[name]);
  const n = /^\s*[0-9.]+\s*$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= min && n <= max) || (whole && !Number.isInteger(n))) {
    fail(`--${name} "${raw}": ${whole ? "a whole number" : "a number"} from ${min} to ${max}`);
  }
  return n;
}

const seed = flag("seed", 0, 2 ** 32 - 1, true);
const maxNodes = flag("max-nodes", 1, 100_000, true);
const functions = values.csv ? 0 : flag("functions", 1, 65_536, true);
const hours = values.csv ? 0 : flag("hours", 0.01, 38_000, false);
const t0 = performance.now();
let trace;
try {
  trace = values.csv
    ? loadAzureCsv(await Deno.readTextFile(values.csv), seed)
    : generateTrace({ functions, durationMs: hours * 3_600_000, seed });
} catch (err) {
  fail(
    err instanceof Deno.errors.NotFound
      ? `--csv ${values.csv}: no such file`
      : (err as Error).message,
  );
}
if (!trace.times.length) fail("the trace has no calls: nothing to size a cluster for");
const source = values.csv
  ? `Azure-format CSV ${values.csv}`
  : `Generated (seed ${seed}, ${values.hours} h, Azure Functions 2019 shape)`;
const stats = traceStats(trace);
console.log(`${source}: ${stats.functions} functions, ${stats.invocations} invocations`);

const policies = [POLICIES.dedicated, POLICIES.packed, POLICIES.full, POLICIES.snapshot];
const rows = policies.map((p) => {
  const found = gpusNeeded(trace, p, h100Nodes, {
    maxNodes,
    log: (r: SimResult) =>
      console.log(
        `  ${p.name} on ${r.gpus} GPUs: p99 TTFB ${
          Math.round(r.ttfbP99Ms)
        } ms, ${r.rejected} refused (${(r.wallMs / 1000).toFixed(1)} s)`,
      ),
  });
  return found;
});
console.log("\n" + table(rows));
const fairness = runFairness({ seed });
const command = `deno task sim ${Deno.args.join(" ")}`.trim();
const fairnessText = fairnessMarkdown(fairness, command);
console.log("\n" + fairnessText);
const wallS = (performance.now() - t0) / 1000;
console.log(`\nsimulated in ${wallS.toFixed(0)} s`);

await Deno.mkdir(values.out, { recursive: true });
await Deno.writeTextFile(`${values.out}/chart.svg`, chart(rows, `GPUs needed: ${source}`));
await Deno.writeTextFile(
  `${values.out}/report.md`,
  markdown({
    rows,
    policies,
    stats,
    source,
    objective: DEFAULT_OBJECTIVE,
    wallS,
    command,
  }) + "\n" + fairnessText,
);
console.log(`wrote ${values.out}/report.md and chart.svg`);
