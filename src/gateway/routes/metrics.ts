/**
 * Operations: `GET /health` (open, for probes) and `GET /metrics`
 * (Prometheus text; needs a cluster-wide read grant when auth is on).
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
    authorize(c.var.principal, "read");
    return c.body(await deps.registry.metrics(), 200, {
      "content-type": deps.registry.contentType,
    });
  });
  return app;
}
