/**
 * The gateway's Prometheus metrics on a registry of their own: calls by
 * function and status, cold starts and resumes, time to first byte and call
 * duration histograms; per function version, the calls workers answered and
 * the token figures of OpenAI-style answers (time to first token, gaps
 * between tokens, output tokens per second, prompt and completion tokens);
 * queue depth and leased workers are read from the function agents when
 * scraped. The per-call series are plain counters in one object per function
 * (and one per version inside it, found by number), turned into exposition
 * text at scrape time, so counting a call costs no label hashing on the warm
 * path.
 *
 * @module
 */
import { getHeapSpaceStatistics } from "node:v8";
import { Gauge, type MetricObjectWithValues, type MetricValue, Registry } from "prom-client";
import type { FuncCache } from "./func_cache.ts";
import type { AuditLog } from "../audit/types.ts";
import type { ReadAheadBudget } from "./read_ahead.ts";

/** The metrics label of calls whose function is not known. */
export const UNKNOWN_FUNCTION = "(none)";

/** Histogram buckets (seconds) of the latency series. */
export const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Histogram buckets (seconds) of the gaps between streamed tokens. */
export const TOKEN_GAP_BUCKETS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.02,
  0.035,
  0.05,
  0.075,
  0.1,
  0.15,
  0.25,
  0.5,
  1,
  2.5,
];

/** Histogram buckets of output tokens per second of a call. */
export const TOKEN_RATE_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000];

/** A histogram's counts: one per bucket plus one above the last, a sum and a count. */
export class Buckets {
  readonly bounds: readonly number[];
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(bounds: readonly number[] = BUCKETS) {
    this.bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(v: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && v > bounds[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

/** Versions of one function that keep metric series (those that answered calls last). */
export const MAX_VERSION_SERIES = 8;

/** The series of one version of a function: calls its workers answered, and their tokens. */
export class VersionMetrics {
  readonly codes = new Map<number, number>();
  readonly ttft = new Buckets();
  readonly tokenGap = new Buckets(TOKEN_GAP_BUCKETS);
  readonly tokenRate = new Buckets(TOKEN_RATE_BUCKETS);
  promptTokens = 0;
  completionTokens = 0;

  /** Counts a call answered with `code`. */
  request(code: number): void {
    this.codes.set(code, (this.codes.get(code) ?? 0) + 1);
  }
}

/** The series of one function. */
export class FunctionMetrics {
  readonly codes = new Map<number, number>();
  /** Answers begun and broken off (their status counted as sent), by why. */
  readonly cut = new Map<string, number>();
  coldStarts = 0;
  resumes = 0;
  readonly ttfb = new Buckets();
  readonly duration = new Buckets();
  /** Per version of the function, the one that answered a call longest ago first. */
  readonly versions = new Map<number, VersionMetrics>();
  /** The version that answered last (the last in `versions`). */
  #recent = 0;

  /** Counts a call answered with `code`. */
  request(code: number): void {
    this.codes.set(code, (this.codes.get(code) ?? 0) + 1);
  }

  /**
   * The series of version `v` (made on first use). Only the
   * {@linkcode MAX_VERSION_SERIES} versions that answered calls last keep
   * series, so that versions over a function's life do not grow the label
   * set without end, while a version still answering (the stable one of a
   * standing canary, however old) keeps its series.
   */
  version(v: number): VersionMetrics {
    let m = this.versions.get(v);
    if (m && v === this.#recent) return m;
    if (m) this.versions.delete(v); // to the end: answered last
    else m = new VersionMetrics();
    this.versions.set(v, m);
    this.#recent = v;
    if (this.versions.size > MAX_VERSION_SERIES) {
      this.versions.delete(this.versions.keys().next().value!);
    }
    return m;
  }
}

type Kind = "counter" | "histogram";

/** A metric whose values are read from the per-function series when scraped. */
class LiveMetric {
  readonly aggregator = "sum" as const;
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: Kind,
    readonly values: () => MetricValue<string>[],
  ) {}

  get(): Promise<Omit<MetricObjectWithValues<MetricValue<string>>, "collect">> {
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: this.type as never,
      aggregator: this.aggregator,
      values: this.values(),
    });
  }
}

type Labels = Record<string, string | number>;

function pushHistogram(out: MetricValue<string>[], name: string, labels: Labels, b: Buckets) {
  let acc = 0;
  for (let i = 0; i < b.bounds.length; i++) {
    acc += b.counts[i];
    out.push({
      metricName: `${name}_bucket`,
      labels: { ...labels, le: b.bounds[i] },
      value: acc,
    } as MetricValue<string>);
  }
  out.push({
    metricName: `${name}_bucket`,
    labels: { ...labels, le: "+Inf" },
    value: b.count,
  } as MetricValue<string>);
  out.push({ metricName: `${name}_sum`, labels, value: b.sum } as never);
  out.push({ metricName: `${name}_count`, labels, value: b.count } as never);
}

function histogramValues(
  name: string,
  series: Map<string, FunctionMetrics>,
  pick: (m: FunctionMetrics) => Buckets,
): MetricValue<string>[] {
  const out: MetricValue<string>[] = [];
  for (const [func, m] of series) pushHistogram(out, name, { function: func }, pick(m));
  return out;
}

/** One value per function version, labelled `function` and `version`. */
function perVersion(
  series: Map<string, FunctionMetrics>,
  each: (labels: Labels, v: VersionMetrics, out: MetricValue<string>[]) => void,
): MetricValue<string>[] {
  const out: MetricValue<string>[] = [];
  for (const [func, m] of series) {
    for (const [version, v] of m.versions) each({ function: func, version }, v, out);
  }
  return out;
}

/** Metrics of one gateway. */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly #series = new Map<string, FunctionMetrics>();

  /** The series of one function (made on first use). */
  of(func: string): FunctionMetrics {
    let m = this.#series.get(func);
    if (!m) this.#series.set(func, m = new FunctionMetrics());
    return m;
  }

  constructor(cache: FuncCache, audit?: AuditLog, readAhead?: ReadAheadBudget) {
    const s = this.#series;
    // A deleted function's series go with it: a caller who may create and delete functions
    // cannot grow them for ever, scraped or not, and one made again under its name starts at 0.
    cache.onRemoved((func) => s.delete(func));
    // Those a call still under way made again after its function went: at the next scrape.
    let prunedAt = -Infinity;
    const prune = () => {
      const now = performance.now();
      if (now - prunedAt < 1000) return;
      prunedAt = now;
      for (const func of s.keys()) {
        if (func !== UNKNOWN_FUNCTION && !cache.has(func)) s.delete(func);
      }
    };
    const metric = (name: string, help: string, type: Kind, values: () => MetricValue<string>[]) =>
      this.registry.registerMetric(
        new LiveMetric(name, help, type, () => (prune(), values())) as never,
      );
    metric(
      "inferx_requests_total",
      "Calls of functions, by function and HTTP status",
      "counter",
      () => {
        const out: MetricValue<string>[] = [];
        for (const [func, m] of s) {
          for (const [code, n] of m.codes) out.push({ labels: { function: func, code }, value: n });
        }
        return out;
      },
    );
    metric(
      "inferx_answers_cut_total",
      "Answers a worker began and did not end (counted in inferx_requests_total by the status they were sent with), by function and why: timeout (answer_timeout), worker_failed",
      "counter",
      () => {
        const out: MetricValue<string>[] = [];
        for (const [func, m] of s) {
          for (const [reason, n] of m.cut) {
            out.push({ labels: { function: func, reason }, value: n });
          }
        }
        return out;
      },
    );
    metric(
      "inferx_cold_starts_total",
      "Calls that waited for a worker started for them",
      "counter",
      () => [...s].map(([func, m]) => ({ labels: { function: func }, value: m.coldStarts })),
    );
    metric(
      "inferx_resumes_total",
      "Calls that waited for a worker resumed from standby for them",
      "counter",
      () => [...s].map(([func, m]) => ({ labels: { function: func }, value: m.resumes })),
    );
    metric(
      "inferx_time_to_first_byte_seconds",
      "From receiving a call to the worker's first byte",
      "histogram",
      () => histogramValues("inferx_time_to_first_byte_seconds", s, (m) => m.ttfb),
    );
    metric(
      "inferx_request_duration_seconds",
      "From receiving a call to the end of its answer",
      "histogram",
      () => histogramValues("inferx_request_duration_seconds", s, (m) => m.duration),
    );
    metric(
      "inferx_version_requests_total",
      "Calls answered by a worker, by function version and HTTP status",
      "counter",
      () =>
        perVersion(s, (labels, v, out) => {
          for (const [code, n] of v.codes) out.push({ labels: { ...labels, code }, value: n });
        }),
    );
    const versionHistogram = (name: string, help: string, pick: (v: VersionMetrics) => Buckets) =>
      metric(
        name,
        help,
        "histogram",
        () => perVersion(s, (labels, v, out) => pushHistogram(out, name, labels, pick(v))),
      );
    versionHistogram(
      "inferx_time_to_first_token_seconds",
      "From receiving an OpenAI-style call to its first token (a whole answer: to the answer)",
      (v) => v.ttft,
    );
    versionHistogram(
      "inferx_inter_token_seconds",
      "Gaps between successive tokens of streamed OpenAI-style answers",
      (v) => v.tokenGap,
    );
    versionHistogram(
      "inferx_output_tokens_per_second",
      "Completion tokens per second of a call's time on its worker",
      (v) => v.tokenRate,
    );
    metric(
      "inferx_prompt_tokens_total",
      "Prompt tokens of OpenAI-style calls, from their usage",
      "counter",
      () => perVersion(s, (labels, v, out) => out.push({ labels, value: v.promptTokens })),
    );
    metric(
      "inferx_completion_tokens_total",
      "Completion tokens of OpenAI-style calls, from their usage or counted from the stream",
      "counter",
      () => perVersion(s, (labels, v, out) => out.push({ labels, value: v.completionTokens })),
    );
    /** A gauge of one value, read when scraped. */
    const gauge = (
      name: string,
      help: string,
      read: () => number,
      aggregator: "sum" | "min" = "sum",
    ) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        aggregator,
        collect() {
          this.set(read());
        },
      });
    if (audit) {
      const stats = () => audit.stats();
      gauge(
        "inferx_audit_buffered_rows",
        "Audit rows waiting to be written",
        () => stats().buffered,
      );
      gauge("inferx_audit_written_rows", "Audit rows written since start", () => stats().written);
      gauge(
        "inferx_audit_dropped_rows",
        "Audit rows dropped because the buffer was full",
        () => stats().dropped,
      );
      gauge(
        "inferx_audit_refused_dropped_rows",
        "Audit rows of calls refused before any function took them (401, 403, or a 404 the gateway gave) not written: they came faster than the audit takes them",
        () => stats().refusedDropped,
      );
      gauge(
        "inferx_audit_healthy",
        "1 when the last audit write succeeded (in every gateway of a group)",
        () => +stats().healthy,
        "min",
      );
    }
    // The process's memory (every role it runs), for soaks and leak hunts.
    for (
      const [name, help, pick] of [
        ["resident_memory", "Resident memory", (m) => m.rss],
        [
          "heap_used",
          "JavaScript heap in use (what the last collection kept, and all made since)",
          (m) => m.heapUsed,
        ],
        ["external_memory", "Buffers held outside the JavaScript heap", (m) => m.external],
      ] as [string, string, (m: Deno.MemoryUsage) => number][]
    ) {
      gauge(
        `inferx_process_${name}_bytes`,
        `${help} in the gateway's process`,
        () => pick(Deno.memoryUsage()),
      );
    }
    new Gauge({
      name: "inferx_process_young_generation_bytes",
      help:
        "Memory a thread's JavaScript engine holds for its young generation (new objects; it grows with the rate they are made, up to a bound, and holds no live objects for long) in the gateway's process: the main thread's, and the embedded audit's worker thread's",
      labelNames: ["thread"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        const main = getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
        this.set({ thread: "main" }, main?.physical_space_size ?? 0);
        const audited = audit?.stats().youngGenerationBytes;
        if (audited !== undefined) this.set({ thread: "audit" }, audited);
      },
    });
    if (readAhead) {
      gauge(
        "inferx_read_ahead_bytes",
        "Bytes of streamed answers read from workers ahead of slow callers, held for them in memory",
        () => readAhead.held,
      );
      if (readAhead.spill) {
        gauge(
          "inferx_read_ahead_spilled_bytes",
          "Bytes of streamed answers read from workers ahead of slow callers, held for them on disk",
          () => readAhead.spilled,
        );
      }
    }
    new Gauge({
      name: "inferx_queue_depth",
      help: "Calls waiting for a worker slot",
      labelNames: ["function"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const a of cache.agents()) this.set({ function: a.id }, a.queued);
      },
    });
    new Gauge({
      name: "inferx_leased_workers",
      help: "Workers this gateway holds",
      labelNames: ["function"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const a of cache.agents()) this.set({ function: a.id }, a.workers.length);
      },
    });
  }
}
