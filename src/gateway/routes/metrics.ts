/**
 * `GET /metrics`: Prometheus text (needs a cluster-wide read grant, or the
 * metrics key, when auth is on); the whole group's when gateways share the
 * port.
 *
 * @module
 */
import { Hono } from "hono";
import { authorize } from "../auth.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";

/** `/metrics`, mounted at `/`. (`/health` is answered before authentication, in app.ts.) */
export function metricsRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.get("/metrics", async (c) => {
    // A cluster-wide read grant, or the scrape credential, good for nothing else.
    if (!c.var.principal.metrics) authorize(c.var.principal, "read");
    const registry = deps.groupMetrics ? await deps.groupMetrics.registry() : deps.registry;
    return c.body(await registry.metrics(), 200, { "content-type": registry.contentType });
  });
  return app;
}
