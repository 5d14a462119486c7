/**
 * Invocation traces for the simulator: a seeded generator reproducing the
 * published shape of the Azure Functions 2019 trace, and a loader for its
 * per-minute invocation-count CSVs (`HashOwner,HashApp,HashFunction,Trigger,1,...,1440`).
 *
 * @module
 */
import { rng } from "../src/common/random.ts";

/** What the simulator knows of one function. */
export interface SimFunction {
  id: string;
  /** GPU memory the model needs (MB). */
  vramMB: number;
  /** Host memory (MB). */
  memMB: number;
  /** Millicores. */
  cpu: number;
  /** Start to ready: process start plus loading the weights (ms). */
  coldStartMs: number;
  /** Mean time to serve one request (ms). */
  serviceMs: number;
  /** Time to the first byte once a worker takes the request (ms). */
  firstByteMs: number;
  /** Restore time from each standby tier (ms). */
  restoreMs: { paused: number; host_memory: number; file: number };
  /**
   * Snapshot cold starts: a start restored from the node's snapshot (ms),
   * and the one-time cost of taking the snapshot after a node's first
   * fresh start of the function (ms). None: the function is not snapshotted.
   */
  snapshot?: { restoreMs: number; dumpMs: number };
  /** The mean invocation rate the trace was drawn with (per minute), when known. */
  ratePerMin?: number;
  /** The tenant it belongs to. @default "sim" */
  tenant?: string;
}

/** A trace: functions and invocation times, sorted by time. */
export interface Trace {
  functions: SimFunction[];
  /** Invocation times (ms from the start). */
  times: Float64Array;
  /** Index into `functions` of each invocation. */
  func: Uint32Array;
  durationMs: number;
}

export { rng };

/** A standard normal draw (Box-Muller). */
export function normal(rand: () => number): number {
  const u = Math.max(rand(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

// Shape of the middle band (just above hourly, thinning towards once a minute)
// and the top band (most hot functions warm, few very hot): tuned so the
// generated traces match the published figures (see traceStats and its test).
const MIDDLE_SKEW = 8;
const TOP_SKEW = 3;

/** Options for {@linkcode generateTrace}. */
export interface GenerateOptions {
  functions: number;
  /** @default 24 h */
  durationMs?: number;
  seed: number;
  /**
   * The mean invocation rate of each function (per minute) is drawn from
   * three bands of log10 rate, calibrated on the published shape of the
   * Azure Functions 2019 trace (Shahrad et al., ATC 2020): 45% of functions
   * at most once an hour (10^-5.5 to 10^-1.78, log-uniform), 36% between
   * once an hour and once a minute (skewed towards hourly), 19% above once a
   * minute up to 10^`maxLog10`. Rates span 8 orders of magnitude.
   */
  maxLog10?: number;
  /** Weibull shape of inter-arrival times; below 1 is bursty (CV > 1). @default 0.5 */
  burstiness?: number;
}

/** Draws the per-function model figures (sizes, start and restore times). */
export function drawFunction(id: string, rand: () => number): SimFunction {
  const vramMB = Math.round(
    Math.min(40_000, Math.max(1_000, Math.exp(Math.log(6_000) + 0.8 * normal(rand)))),
  );
  const serviceMs = Math.round(Math.exp(Math.log(50) + rand() * Math.log(20)));
  return {
    id,
    vramMB,
    memMB: 2_000 + Math.round(vramMB / 4),
    cpu: 1_000,
    // Start the process, then read the weights at ~2 GB/s and copy them to the GPU.
    coldStartMs: Math.round(1_500 + vramMB / 2),
    serviceMs,
    firstByteMs: Math.min(serviceMs, 30),
    // Paused: unfreeze. Host memory: copy back over PCIe at ~20 GB/s.
    // File: read the checkpoint at ~2 GB/s, then the PCIe copy.
    restoreMs: {
      paused: 20,
      host_memory: Math.round(150 + vramMB / 20),
      file: Math.round(600 + vramMB / 2 + vramMB / 20),
    },
    snapshot: snapshotCosts(2_000 + Math.round(vramMB / 4), vramMB),
  };
}

/**
 * Snapshot restore and dump times from what `bench/cold_start.ts` measured
 * with CRIU 4.2 on the process runtime (2 vCPUs, kernel 6.18): about 100 ms
 * fixed (namespaces, process tree, probe) plus 0.8 ms per MB of image for a
 * restore (4 KiB page faults bound it near 1.2 GB/s), about 150 ms plus
 * 1 ms per MB for a dump. A GPU worker's image also holds its GPU memory
 * (checkpointed into host memory first), which a restore then copies back
 * over PCIe at ~20 GB/s.
 */
export function snapshotCosts(
  memMB: number,
  vramMB: number,
): { restoreMs: number; dumpMs: number } {
  const imageMB = memMB + vramMB;
  return {
    restoreMs: Math.round(100 + 0.8 * imageMB + vramMB / 20),
    dumpMs: Math.round(150 + imageMB),
  };
}

/** Generates a trace whose shape follows the Azure Functions 2019 trace. */
export function generateTrace(options: GenerateOptions): Trace {
  const rand = rng(options.seed);
  const durationMs = options.durationMs ?? 86_400_000;
  const maxLog10 = options.maxLog10 ?? 2.5;
  const k = options.burstiness ?? 0.5;
  // Mean of Weibull(k, scale 1) is Gamma(1 + 1/k); for k = 0.5 that is 2.
  const weibullMean = gamma(1 + 1 / k);
  const functions: SimFunction[] = [];
  const keys: number[] = [];
  const ticks = ticksPerMs(durationMs);
  const hourly = Math.log10(1 / 60);
  for (let i = 0; i < options.functions; i++) {
    const fn = drawFunction(`f${i}`, rand);
    const band = rand();
    const u = rand();
    const x = band < 0.45
      ? -5.5 + u * (hourly + 5.5)
      : band < 0.81
      ? hourly + 0.3 + (-hourly - 0.3) * u ** MIDDLE_SKEW
      : maxLog10 * u ** TOP_SKEW;
    fn.ratePerMin = 10 ** x;
    functions.push(fn);
    const meanGapMs = 60_000 / 10 ** x;
    const scale = meanGapMs / weibullMean;
    // Start in a random phase of the arrival process.
    let t = -rand() * meanGapMs;
    while (true) {
      t += scale * (-Math.log(Math.max(rand(), 1e-300))) ** (1 / k);
      if (t >= durationMs) break;
      if (t >= 0) keys.push(packKey(t, i, ticks));
    }
  }
  return sortTrace(functions, keys, durationMs, ticks);
}

// Times and function indexes packed in one float, so a native numeric sort
// orders the trace: a time in ticks (a microsecond for traces up to 38 h, ten
// for up to 15 days, and so on), times FUNC_SLOTS, plus the index. The whole
// must stay below 2^53, where every integer is exact: past it the index, in
// the low digits, would be rounded into another function's.
const FUNC_SLOTS = 65_536;

/** Ticks a millisecond for a trace of `durationMs`: the finest whose keys stay exact. */
export function ticksPerMs(durationMs: number): number {
  for (let ticks = 1000; ticks >= 1; ticks /= 10) {
    if (Math.ceil(durationMs * ticks) * FUNC_SLOTS < Number.MAX_SAFE_INTEGER) return ticks;
  }
  throw new Error(
    `Cannot build a trace of ${Math.round(durationMs / 3_600_000)} h: at most ${
      Math.floor(Number.MAX_SAFE_INTEGER / FUNC_SLOTS / 3_600_000)
    } h`,
  );
}

function packKey(tMs: number, func: number, ticks: number): number {
  return Math.floor(tMs * ticks) * FUNC_SLOTS + func;
}

function sortTrace(
  functions: SimFunction[],
  keys: number[],
  durationMs: number,
  ticks: number,
): Trace {
  if (functions.length > FUNC_SLOTS) {
    throw new Error(`Cannot build a trace of ${functions.length} functions: at most ${FUNC_SLOTS}`);
  }
  const sorted = Float64Array.from(keys).sort();
  const times = new Float64Array(sorted.length);
  const func = new Uint32Array(sorted.length);
  for (let i = 0; i < sorted.length; i++) {
    const f = sorted[i] % FUNC_SLOTS;
    func[i] = f;
    times[i] = (sorted[i] - f) / FUNC_SLOTS / ticks;
  }
  return { functions, times, func, durationMs };
}

function gamma(z: number): number {
  // Lanczos approximation, enough for the Weibull mean.
  const g = 7;
  const c = [
    0.99999999999980993,
    676.5203681218851,
    -1259.1392167224028,
    771.32342877765313,
    -176.61502916214059,
    12.507343278686905,
    -0.13857109526572012,
    9.9843695780195716e-6,
    1.5056327351493116e-7,
  ];
  if (z < 0.5) return Math.PI / (Math.sin(Math.PI * z) * gamma(1 - z));
  z -= 1;
  let x = c[0];
  for (let i = 1; i < g + 2; i++) x += c[i] / (z + i);
  const t = z + g + 0.5;
  return Math.sqrt(2 * Math.PI) * t ** (z + 0.5) * Math.exp(-t) * x;
}

/**
 * Loads per-minute invocation counts in the Azure trace's column format:
 * a header `HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440`, then one
 * row per function. Invocations of a minute are spread uniformly in it.
 * Model figures are drawn per function from `seed`.
 */
export function loadAzureCsv(text: string, seed: number): Trace {
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/).filter((l) => l.trim() !== "");
  if (lines.length < 2) throw new Error("Cannot load trace: no rows after the header");
  const header = lines[0].split(",");
  const minutes = header.length - 4;
  const named = ["HashOwner", "HashApp", "HashFunction", "Trigger"];
  // The minutes numbered 1, 2, ... in order: a column left out, or an empty one after a
  // trailing comma, would shift every count after it.
  const bad = named.findIndex((h, i) => header[i] !== h) >= 0 || minutes < 1 ||
    header.slice(4).some((h, m) => h !== String(m + 1));
  if (bad) {
    throw new Error(
      `Cannot load trace: the header must be HashOwner,HashApp,HashFunction,Trigger,1,2,... ` +
        `(minutes numbered from 1, in order; got ${JSON.stringify(lines[0].slice(0, 120))})`,
    );
  }
  const ticks = ticksPerMs(minutes * 60_000);
  const rand = rng(seed);
  const functions: SimFunction[] = [];
  const keys: number[] = [];
  /** Row of each function (owner, app, function), and how many rows named each function. */
  const rows = new Map<string, number>();
  const names = new Map<string, number>();
  for (let row = 1; row < lines.length; row++) {
    const cells = lines[row].split(",");
    const at = `Cannot load trace: row ${row + 1}`;
    if (cells.length !== header.length) {
      throw new Error(`${at} has ${cells.length} columns, not ${header.length}`);
    }
    const whole = cells.slice(0, 3).join(",");
    const before = rows.get(whole);
    if (before !== undefined) {
      throw new Error(`${at} is the function of row ${before} again (${whole})`);
    }
    rows.set(whole, row + 1);
    // The same function hash in another owner's or app's row: a function of its own.
    const seen = names.get(cells[2]) ?? 0;
    names.set(cells[2], seen + 1);
    const idx = functions.length;
    const fn = drawFunction(seen ? `${cells[2]}-${seen + 1}` : cells[2], rand);
    functions.push(fn);
    let total = 0;
    for (let m = 0; m < minutes; m++) {
      const cell = cells[4 + m];
      if (!/^\d{1,9}$/.test(cell)) {
        throw new Error(`${at}, minute ${m + 1}: "${cell}" is not a count (digits only)`);
      }
      const n = Number(cell);
      total += n;
      for (let j = 0; j < n; j++) keys.push(packKey((m + rand()) * 60_000, idx, ticks));
    }
    fn.ratePerMin = total / minutes;
  }
  return sortTrace(functions, keys, minutes * 60_000, ticks);
}

/** Shape statistics of a trace, to compare with the published figures. */
export interface TraceStats {
  invocations: number;
  functions: number;
  /** Fraction of functions invoked at most once an hour on average. */
  atMostHourly: number;
  /** Fraction invoked at most once a minute on average. */
  atMostMinutely: number;
  /** Fraction of functions that make 99.6% of the invocations. */
  topShareFor996: number;
  /** Orders of magnitude between the highest and lowest mean rate of the functions. */
  rateOrders: number;
  /** Median over busy functions of the coefficient of variation of inter-arrival times. */
  medianCv: number;
}

/** Computes {@linkcode TraceStats}. */
export function traceStats(t: Trace): TraceStats {
  const n = t.functions.length;
  const counts = new Float64Array(n);
  for (const f of t.func) counts[f]++;
  const minutes = t.durationMs / 60_000;
  const hours = minutes / 60;
  const atMostHourly = counts.filter((c) => c <= hours).length / n;
  const atMostMinutely = counts.filter((c) => c <= minutes).length / n;
  const sorted = [...counts].sort((a, b) => b - a);
  let acc = 0;
  let k = 0;
  const total = t.func.length;
  while (k < n && acc < 0.996 * total) acc += sorted[k++];
  const rates = t.functions.map((f) => f.ratePerMin ?? 0).filter((r) => r > 0);
  const rateOrders = rates.length ? Math.log10(Math.max(...rates) / Math.min(...rates)) : 0;
  // CV of gaps for functions with at least 50 invocations.
  const last = new Float64Array(n).fill(-1);
  const sum = new Float64Array(n);
  const sum2 = new Float64Array(n);
  const gaps = new Float64Array(n);
  for (let i = 0; i < total; i++) {
    const f = t.func[i];
    if (last[f] >= 0) {
      const g = t.times[i] - last[f];
      sum[f] += g;
      sum2[f] += g * g;
      gaps[f]++;
    }
    last[f] = t.times[i];
  }
  const cvs: number[] = [];
  for (let f = 0; f < n; f++) {
    if (gaps[f] < 50) continue;
    const mean = sum[f] / gaps[f];
    cvs.push(Math.sqrt(Math.max(0, sum2[f] / gaps[f] - mean * mean)) / mean);
  }
  cvs.sort((a, b) => a - b);
  return {
    invocations: total,
    functions: n,
    atMostHourly,
    atMostMinutely,
    topShareFor996: k / n,
    rateOrders,
    medianCv: cvs.length ? cvs[Math.floor(cvs.length / 2)] : 0,
  };
}
