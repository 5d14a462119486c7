/**
 * The scheduler's HTTP face, a small Hono app: `/health` (with whether this
 * replica leads), `/state` (the leader's accounting) and `/metrics`
 * (Prometheus text).
 *
 * @module
 */
import { Hono } from "hono";
import type { Registry } from "prom-client";
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
}

/** Builds the app; serve it with `Deno.serve(..., app.fetch)` or test it with `app.request()`. */
export function createSchedulerApp(deps: SchedulerAppDeps): Hono {
  const app = new Hono();
  app.get("/health", (c) => c.json({ status: "ok", id: deps.id, leader: !!deps.leader() }));
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
    return c.json(errorBody(e), httpStatus(e.code) as 500);
  });
  return app;
}
