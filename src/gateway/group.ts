/**
 * Gateways that share one port (`GATEWAY_WORKERS`): each member is a whole
 * gateway of its own — listener, function agents, leases — and the kernel
 * spreads connections over them (SO_REUSEPORT). So that `/metrics` counts the
 * group and not whichever member a scrape reached, every member serves its
 * own series as JSON on a private loopback port, and the member that answers
 * `/metrics` adds them up (prom-client's aggregation: sums, and the lowest
 * value for health gauges).
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

/**
 * The group's metrics: this member's and every other member's that answers
 * within a second (a member being restarted is left out of that scrape).
 */
export async function groupMetrics(local: Registry, group: GatewayGroup): Promise<Registry> {
  const all = [await local.getMetricsAsJSON()];
  const others = group.ports.filter((_, i) => i !== group.index);
  const answers = await Promise.allSettled(others.map(async (port) => {
    const res = await fetch(`http://127.0.0.1:${port}/metrics.json`, {
      signal: AbortSignal.timeout(1000),
    });
    if (!res.ok) throw new Error(`status ${res.status}`);
    return await res.json();
  }));
  for (const [i, a] of answers.entries()) {
    if (a.status === "fulfilled") all.push(a.value);
    else {log.warn("Gateway member on port {port} did not give its metrics: {error}", {
        port: others[i],
        error: String(a.reason),
      });}
  }
  return AggregatorRegistry.aggregate(all);
}
