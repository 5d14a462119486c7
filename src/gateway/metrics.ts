/**
 * The gateway's Prometheus metrics on a registry of their own: calls by
 * function and status, cold starts and resumes, time to first byte and call
 * duration histograms; queue depth and leased workers are read from the
 * function agents when scraped. The per-call series are plain counters in
 * one object per function, turned into exposition text at scrape time, so
 * counting a call costs no label hashing on the warm path.
 *
 * @module
 */
import { Gauge, type MetricObjectWithValues, type MetricValue, Registry } from "prom-client";
import type { FuncCache } from "./func_cache.ts";
import type { AuditLog } from "../audit/types.ts";

/** Histogram buckets (seconds) of the latency series. */
export const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** A histogram's counts: one per bucket plus one above the last, a sum and a count. */
export class Buckets {
  readonly counts = new Float64Array(BUCKETS.length + 1);
  sum = 0;
  count = 0;

  observe(v: number): void {
    let i = 0;
    while (i < BUCKETS.length && v > BUCKETS[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

/** The series of one function. */
export class FunctionMetrics {
  readonly codes = new Map<number, number>();
  coldStarts = 0;
  resumes = 0;
  readonly ttfb = new Buckets();
  readonly duration = new Buckets();

  /** Counts a call answered with `code`. */
  request(code: number): void {
    this.codes.set(code, (this.codes.get(code) ?? 0) + 1);
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

function histogramValues(
  name: string,
  series: Map<string, FunctionMetrics>,
  pick: (m: FunctionMetrics) => Buckets,
): MetricValue<string>[] {
  const out: MetricValue<string>[] = [];
  for (const [func, m] of series) {
    const b = pick(m);
    let acc = 0;
    for (let i = 0; i < BUCKETS.length; i++) {
      acc += b.counts[i];
      out.push({
        metricName: `${name}_bucket`,
        labels: { function: func, le: BUCKETS[i] },
        value: acc,
      } as MetricValue<string>);
    }
    out.push({
      metricName: `${name}_bucket`,
      labels: { function: func, le: "+Inf" },
      value: b.count,
    } as MetricValue<string>);
    out.push({ metricName: `${name}_sum`, labels: { function: func }, value: b.sum } as never);
    out.push({ metricName: `${name}_count`, labels: { function: func }, value: b.count } as never);
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

  constructor(cache: FuncCache, audit?: AuditLog) {
    const s = this.#series;
    const metric = (name: string, help: string, type: Kind, values: () => MetricValue<string>[]) =>
      this.registry.registerMetric(new LiveMetric(name, help, type, values) as never);
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
    if (audit) {
      const gauge = (
        name: string,
        help: string,
        pick: (s: ReturnType<AuditLog["stats"]>) => number,
        aggregator: "sum" | "min" = "sum",
      ) =>
        new Gauge({
          name,
          help,
          registers: [this.registry],
          aggregator,
          collect() {
            this.set(pick(audit.stats()));
          },
        });
      gauge("inferx_audit_buffered_rows", "Audit rows waiting to be written", (s) => s.buffered);
      gauge("inferx_audit_written_rows", "Audit rows written since start", (s) => s.written);
      gauge(
        "inferx_audit_dropped_rows",
        "Audit rows dropped because the buffer was full",
        (s) => s.dropped,
      );
      gauge(
        "inferx_audit_healthy",
        "1 when the last audit write succeeded (in every gateway of a group)",
        (s) => +s.healthy,
        "min",
      );
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
