/**
 * The gateway's Prometheus metrics (`npm:prom-client`), on a registry of its
 * own: request counts by status, cold starts and resumes, time to first byte
 * and request duration histograms; queue depth and leased workers are read
 * from the function agents when scraped.
 *
 * @module
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { FuncCache } from "./func_cache.ts";
import type { AuditLog } from "../audit/types.ts";

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The series of one function. */
export interface FunctionMetrics {
  ttfb: { observe(v: number): void };
  duration: { observe(v: number): void };
  coldStarts: { inc(): void };
  resumes: { inc(): void };
  /** Counts a call answered with `code`. */
  request(code: number): void;
}

/** Metrics of one gateway. */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: "inferx_requests_total",
    help: "Calls of functions, by function and HTTP status",
    labelNames: ["function", "code"] as const,
    registers: [this.registry],
  });
  readonly coldStarts = new Counter({
    name: "inferx_cold_starts_total",
    help: "Calls that waited for a worker started for them",
    labelNames: ["function"] as const,
    registers: [this.registry],
  });
  readonly resumes = new Counter({
    name: "inferx_resumes_total",
    help: "Calls that waited for a worker resumed from standby for them",
    labelNames: ["function"] as const,
    registers: [this.registry],
  });
  readonly ttfb = new Histogram({
    name: "inferx_time_to_first_byte_seconds",
    help: "From receiving a call to the worker's first byte",
    labelNames: ["function"] as const,
    buckets: BUCKETS,
    registers: [this.registry],
  });
  readonly duration = new Histogram({
    name: "inferx_request_duration_seconds",
    help: "From receiving a call to the end of its answer",
    labelNames: ["function"] as const,
    buckets: BUCKETS,
    registers: [this.registry],
  });

  #children = new Map<string, FunctionMetrics>();

  /** The labelled series of one function, looked up once (label hashing is not free). */
  of(func: string): FunctionMetrics {
    let m = this.#children.get(func);
    if (!m) {
      const l = { function: func };
      const byCode = new Map<number, { inc(): void }>();
      m = {
        ttfb: this.ttfb.labels(l),
        duration: this.duration.labels(l),
        coldStarts: this.coldStarts.labels(l),
        resumes: this.resumes.labels(l),
        request: (code) => {
          let c = byCode.get(code);
          if (!c) {
            byCode.set(code, c = this.requests.labels({ function: func, code: String(code) }));
          }
          c.inc();
        },
      };
      this.#children.set(func, m);
    }
    return m;
  }

  constructor(cache: FuncCache, audit?: AuditLog) {
    if (audit) {
      const gauge = (
        name: string,
        help: string,
        pick: (s: ReturnType<AuditLog["stats"]>) => number,
      ) =>
        new Gauge({
          name,
          help,
          registers: [this.registry],
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
      gauge("inferx_audit_healthy", "1 when the last audit write succeeded", (s) => +s.healthy);
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
