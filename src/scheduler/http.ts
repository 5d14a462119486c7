/**
 * The scheduler's HTTP face, a small Hono app: `/health` (with whether this
 * replica leads), `/state` (the leader's accounting) and `/metrics`
 * (Prometheus text). With auth on, `/state` and `/metrics` need the
 * administrator's key (`INFERX_ADMIN_APIKEY`: they name every tenant's
 * functions, pods and leases), and are closed to all else when auth is on
 * by OIDC alone; `/metrics` also takes `INFERX_METRICS_KEY`, a scraper's
 * credential good for nothing else. `/health` stays open for probes.
 *
 * @module
 */
import { Hono } from "hono";
import type { Registry } from "prom-client";
import { AdminKey, credential } from "../common/credential.ts";
import { errorBody, httpStatus, InferxError, NotFoundError } from "../common/errors.ts";
import type { SchedulerService } from "./service.ts";

/** What {@linkcode createSchedulerApp} serves. */
export interface SchedulerAppDeps {
  /** This replica's id. */
  id: string;
  /** The service while this replica leads, else undefined. */
  leader(): SchedulerService | undefined;
  /** The metrics to serve. */
  registry: Registry;
  /** The administrator's key: `/state` and `/metrics` need it when set. */
  adminApiKey?: string;
  /** A credential for `/metrics` alone (`INFERX_METRICS_KEY`). */
  metricsKey?: string;
  /** Auth is on (an admin key, or OIDC): without the key, `/state` and `/metrics` are closed. */
  authEnabled?: boolean;
}

/** Builds the app; serve it with `Deno.serve(..., app.fetch)` or test it with `app.request()`. */
export function createSchedulerApp(deps: SchedulerAppDeps): Hono {
  const app = new Hono();
  app.get("/health", (c) => c.json({ status: "ok", id: deps.id, leader: !!deps.leader() }));
  const admin = deps.adminApiKey ? new AdminKey(deps.adminApiKey) : undefined;
  const scraper = deps.metricsKey ? new AdminKey(deps.metricsKey) : undefined;
  if (admin || deps.authEnabled) {
    app.use(async (c, next) => {
      if (c.req.path === "/health") return await next();
      const cred = credential(c.req.raw.headers);
      // The scrape credential: /metrics, nothing else.
      if (cred !== undefined && c.req.path === "/metrics" && scraper?.matches(cred)) {
        return await next();
      }
      if (!admin) {
        throw new InferxError(
          "unauthenticated",
          `${c.req.path} needs the admin key, and this scheduler has none (INFERX_ADMIN_APIKEY): auth is on by OIDC alone`,
        );
      }
      if (cred === undefined) {
        throw new InferxError(
          "unauthenticated",
          `Credentials required for ${c.req.path}: send Authorization: Bearer <admin key>`,
        );
      }
      if (!admin?.matches(cred)) {
        throw new InferxError("unauthenticated", "Invalid credentials: not the admin key");
      }
      await next();
    });
  }
  app.get("/state", (c) => {
    const leader = deps.leader();
    if (!leader) throw new InferxError("unavailable", `Scheduler ${deps.id} is not the leader`);
    return c.json({ id: deps.id, ...leader.snapshot() });
  });
  app.get(
    "/metrics",
    async (c) =>
      c.body(await deps.registry.metrics(), 200, { "content-type": deps.registry.contentType }),
  );
  app.notFound((c) => {
    throw new NotFoundError(`No route for ${c.req.path}`);
  });
  app.onError((err, c) => {
    const e = err instanceof InferxError
      ? err
      : new InferxError("internal", `Internal error: ${err.message}`);
    const status = httpStatus(e.code);
    const challenge = status === 401 ? { "www-authenticate": 'Bearer realm="inferx"' } : undefined;
    return c.json(errorBody(e), status as 500, challenge);
  });
  return app;
}
