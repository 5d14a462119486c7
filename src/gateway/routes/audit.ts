/**
 * The audit: `GET /audit/requests` and `GET /audit/pods`, newest first,
 * filtered by `tenant`, `namespace`, `func`, `since` (ms) and `limit`;
 * `GET /audit/stats` for the log's health and the token usage of
 * OpenAI-style calls by function version and by tenant (`since`, default the
 * last hour; `tenant` to see one tenant's, with a grant on that tenant).
 *
 * @module
 */
import { Hono } from "hono";
import { InferxError, NotFoundError, ValidationError } from "../../common/errors.ts";
import { authorize } from "../auth.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";

const HOUR_MS = 3_600_000;

/** The audit routes, mounted at `/audit`. */
export function auditRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.get("/:kind", async (c) => {
    const kind = c.req.param("kind");
    if (kind === "stats") {
      const { tenant, since } = auditQuery(c.req.query());
      authorize(c.var.principal, "read", tenant);
      if (!deps.audit) throw new InferxError("unsupported", "This gateway keeps no audit log");
      // The log's health must show while its backend is down: usage then says why it is missing.
      const usage = await deps.audit.usage({ tenant, since: since ?? Date.now() - HOUR_MS })
        .catch((err: Error) => ({ error: err.message }));
      return c.json({ ...deps.audit.stats(), usage });
    }
    if (kind !== "requests" && kind !== "pods") {
      throw new NotFoundError(
        `No audit of "${kind}": use /audit/requests, /audit/pods or /audit/stats`,
      );
    }
    const q = auditQuery(c.req.query());
    authorize(c.var.principal, "read", q.tenant, q.tenant === undefined ? undefined : q.namespace);
    if (!deps.audit) throw new InferxError("unsupported", "This gateway keeps no audit log");
    const rows = kind === "requests"
      ? await deps.audit.query("requests", q)
      : await deps.audit.query("pods", q);
    return c.json({ items: rows, stats: deps.audit.stats() });
  });
  return app;
}

function auditQuery(query: Record<string, string>) {
  const { tenant, namespace, func, since, limit } = query;
  const num = (raw: string | undefined, field: string, max: number) => {
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0 || n > max) {
      throw new ValidationError(`Invalid ${field} "${raw}": an integer from 0 to ${max}`, field);
    }
    return n;
  };
  if ((namespace || func) && !tenant) {
    throw new ValidationError("Invalid audit query: namespace and func need tenant", "tenant");
  }
  return {
    tenant,
    namespace,
    func,
    since: num(since, "since", Number.MAX_SAFE_INTEGER),
    limit: num(limit, "limit", 10_000) ?? 100,
  };
}
