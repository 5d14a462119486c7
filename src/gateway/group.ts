/**
 * Gateways that share one port (`GATEWAY_WORKERS`): each member is a whole
 * gateway of its own — listener, function agents, leases — and the kernel
 * spreads connections over them (SO_REUSEPORT). So that `/metrics` counts the
 * group and not whichever member a scrape reached, every member serves its
 * own series as JSON on a private loopback port, and the member that answers
 * `/metrics` adds them up (prom-client's aggregation: sums, and the lowest
 * value for health gauges). A sum of counters must never go down, or
 * Prometheus takes it for a reset and counts everything again: a member that
 * does not answer in time counts with its last answer, and one that
 * restarted (its counters back at 0) with what it had counted before.
 *
 * @module
 */
import { AggregatorRegistry, type Registry } from "prom-client";
import { logger } from "../common/log.ts";

/** This process's place in its group. */
export interface GatewayGroup {
  /** Its index in `ports`. */
  index: number;
  /** Every member's private metrics port, on 127.0.0.1. */
  ports: number[];
}

const log = logger("gateway", "group");

/** Serves `registry` as JSON at `http://127.0.0.1:{port}/metrics.json` for the other members. */
export function serveMemberMetrics(registry: Registry, port: number): { close(): Promise<void> } {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port, onListen() {} },
    async (req) =>
      new URL(req.url).pathname === "/metrics.json"
        ? Response.json(await registry.getMetricsAsJSON())
        : new Response(null, { status: 404 }),
  );
  return { close: () => server.shutdown() };
}

/** A registry's series as prom-client gives them in JSON. */
export type MetricsJson = Awaited<ReturnType<Registry["getMetricsAsJSON"]>>;

/** Series whose values only grow while their process lives. */
const CUMULATIVE = new Set(["counter", "histogram"]);

/** One other member's series as last seen, its counters carried over its restarts. */
class MemberSeries {
  /** Its last answer, corrected: what counts for it while it does not answer. */
  last?: MetricsJson;
  #raw = new Map<string, number>();
  #carried = new Map<string, number>();

  /** Takes a new answer; returns it with what the member counted before its restarts added. */
  take(metrics: MetricsJson): MetricsJson {
    this.last = metrics.map((m) => {
      if (!CUMULATIVE.has(String(m.type))) return m;
      return {
        ...m,
        values: m.values.map((v) => {
          // A histogram's values carry their series' name (`_bucket`, `_sum`, `_count`).
          const name = (v as { metricName?: string }).metricName ?? m.name;
          const key = `${name}\0${JSON.stringify(v.labels)}`;
          const before = this.#raw.get(key);
          let carried = this.#carried.get(key) ?? 0;
          if (before !== undefined && v.value < before) this.#carried.set(key, carried += before);
          this.#raw.set(key, v.value);
          return carried ? { ...v, value: v.value + carried } : v;
        }),
      };
    }) as MetricsJson;
    return this.last;
  }
}

/** The group's metrics as one member sees them, scrape after scrape. */
export class GroupMetrics {
  readonly #group: GatewayGroup;
  readonly #members = new Map<number, MemberSeries>();
  readonly #fetch: (port: number) => Promise<MetricsJson>;

  constructor(group: GatewayGroup, fetchMember?: (port: number) => Promise<MetricsJson>) {
    this.#group = group;
    this.#fetch = fetchMember ?? (async (port) => {
      const res = await fetch(`http://127.0.0.1:${port}/metrics.json`, {
        signal: AbortSignal.timeout(1000),
      });
      if (!res.ok) throw new Error(`status ${res.status}`);
      return await res.json();
    });
  }

  /**
   * This member's series and every other member's: as they answer within a
   * second, else as they last answered (none before its first answer).
   */
  async registry(local: Registry): Promise<Registry> {
    const all = [await local.getMetricsAsJSON()];
    const others = this.#group.ports.filter((_, i) => i !== this.#group.index);
    const answers = await Promise.allSettled(others.map((port) => this.#fetch(port)));
    for (const [i, a] of answers.entries()) {
      const port = others[i];
      let member = this.#members.get(port);
      if (!member) this.#members.set(port, member = new MemberSeries());
      if (a.status === "fulfilled") all.push(member.take(a.value));
      else {
        log.warn("Gateway member on port {port} did not give its metrics: {error}", {
          port,
          error: String(a.reason),
        });
        if (member.last) all.push(member.last);
      }
    }
    return AggregatorRegistry.aggregate(all);
  }
}
