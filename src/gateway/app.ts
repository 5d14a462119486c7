/**
 * The gateway's HTTP API as a Hono app built by {@linkcode createGatewayApp}:
 * middleware and the route modules of `routes/`, mounted with `app.route()`.
 * Every error is a JSON body with a clear message; status codes come from
 * `httpStatus()` in one place. Test it with `app.request()`; the raw listener
 * (`server.ts`) serves it on a socket, taking calls of functions on its own
 * warm path with the same steps.
 *
 * @module
 */
import { BodyBudget } from "./http1/body.ts";
import { JsonProbe } from "./json_probe.ts";
import { Hono } from "hono";
import { Registry } from "prom-client";
import { InferxError, NotFoundError, toInferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import type { AuditLog } from "../audit/types.ts";
import type { NodeInfo } from "../model/cluster.ts";
import type { MetaClient, NodeAgentClient, SchedulerClient } from "../rpc/types.ts";
import { Authenticator } from "./auth.ts";
import type { FuncCache } from "./func_cache.ts";
import { HttpPool } from "./http_pool.ts";
import { DEFAULT_READ_AHEAD_BYTES, ReadAheadBudget, type SpillOptions } from "./read_ahead.ts";
import { GatewayMetrics } from "./metrics.ts";
import { authenticate } from "./middleware/authenticate.ts";
import { errorAnswer, isOpenaiPath } from "./middleware/errors.ts";
import { observe } from "./middleware/observe.ts";
import { apikeyRoutes } from "./routes/apikeys.ts";
import { auditRoutes } from "./routes/audit.ts";
import { funccallRoutes } from "./routes/funccall.ts";
import { metricsRoutes } from "./routes/metrics.ts";
import { objectRoutes } from "./routes/objects.ts";
import { OPENAI_CALL_PATHS, openaiRoutes } from "./routes/openai.ts";
import { rolloutRoutes } from "./routes/rollout.ts";
import { uiRoutes } from "./routes/ui.ts";
import type { GatewayEnv, RouteDeps } from "./types.ts";
import { type GatewayGroup, GroupMetrics } from "./group.ts";
import type { Cidr } from "../common/cidr.ts";
import { callPaths } from "./calls/accept.ts";
import { CallbackSender } from "./calls/callback.ts";
import { CallQueue, type CallQueueOptions } from "./calls/queue.ts";
import { callRoutes } from "./routes/calls.ts";

const log = logger("gateway");

/** The default of `bodyBufferBytes`. */
export const DEFAULT_BODY_BUFFER_BYTES = 256 * 1024 * 1024;

/** What the gateway app needs. */
export interface GatewayDeps {
  meta: MetaClient;
  cache: FuncCache;
  /** Largest request body (bytes). @default 16 MiB */
  bodyLimit?: number;
  /**
   * The most bytes of request bodies held while they arrive, all requests
   * together (src/gateway/http1/body.ts). @default 256 MiB
   */
  bodyBufferBytes?: number;
  /** The client of a node's agent (for pod logs), or undefined when it has none. */
  nodeAgent?: (node: NodeInfo) => NodeAgentClient | undefined;
  /** Keep-alive connections to workers. @default a new pool */
  upstream?: HttpPool;
  /**
   * The most bytes of streamed answers held read ahead of slow callers, all
   * calls together (src/gateway/read_ahead.ts); 0: none. @default 64 MiB
   */
  readAheadBytes?: number;
  /** Where, and how much, answers read ahead go on disk past memory; none: memory only. */
  spill?: SpillOptions;
  /** The gateway's metrics. @default new metrics on a registry of their own */
  metrics?: GatewayMetrics;
  /** More registries served at `/metrics` (the scheduler's, in `All`). */
  extraRegistries?: Registry[];
  /** Who may do what. @default auth off: every caller is the administrator */
  auth?: Authenticator;
  /** Where request rows go; none: no request audit. */
  audit?: AuditLog;
  /** This gateway's id, for audit rows. @default "gateway" */
  gatewayId?: string;
  /** The gateways sharing this one's port (`GATEWAY_WORKERS`). */
  group?: GatewayGroup;
  /** The scheduler, for terminating pods; none: pods cannot be terminated here. */
  scheduler?: SchedulerClient;
  /** Asynchronous calls: the queue's settings and the ranges callbacks may reach anyway. */
  calls?: Partial<Omit<CallQueueOptions, "gatewayId" | "callbacks">> & {
    callbackAllow?: readonly Cidr[];
  };
}

/** The dependencies with their defaults, as the routes and the raw listener see them. */
export function resolveDeps(deps: GatewayDeps): RouteDeps {
  const readAhead = new ReadAheadBudget(
    deps.readAheadBytes ?? DEFAULT_READ_AHEAD_BYTES,
    deps.spill,
  );
  const metrics = deps.metrics ?? new GatewayMetrics(deps.cache, deps.audit, readAhead);
  const pool = deps.upstream ?? new HttpPool();
  const gatewayId = deps.gatewayId ?? "gateway";
  const { callbackAllow, ...queueOptions } = deps.calls ?? {};
  const jsonProbe = new JsonProbe();
  const calls = new CallQueue({
    meta: deps.meta,
    cache: deps.cache,
    pool,
    observe: { metrics, audit: deps.audit, gatewayId },
    probe: jsonProbe,
  }, {
    ...queueOptions,
    gatewayId,
    callbacks: new CallbackSender({ allow: callbackAllow }),
  });
  const registry = Registry.merge([metrics.registry, ...(deps.extraRegistries ?? [])]);
  return {
    meta: deps.meta,
    cache: deps.cache,
    pool,
    readAhead,
    auth: deps.auth ?? new Authenticator({}),
    metrics,
    registry,
    audit: deps.audit,
    gatewayId,
    bodyLimit: deps.bodyLimit ?? 16 * 1024 * 1024,
    jsonProbe,
    bodyBudget: new BodyBudget(deps.bodyBufferBytes ?? DEFAULT_BODY_BUFFER_BYTES),
    nodeAgent: deps.nodeAgent,
    group: deps.group,
    groupMetrics: deps.group &&
      new GroupMetrics(deps.group, registry, undefined, (f) => deps.cache.has(f)),
    scheduler: deps.scheduler,
    calls,
  };
}

/**
 * The methods routes take at a path (`:param` one segment, `*` the rest),
 * for a 405 with `Allow` rather than a 404 when only the method is wrong;
 * middleware and catch-alls (method `ALL`) do not count. `HEAD` comes with
 * `GET`.
 */
export function routeMethods(
  routes: readonly { method: string; path: string }[],
): (path: string) => string[] {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const compiled = routes.filter((r) => r.method !== "ALL").map((r) => ({
    method: r.method,
    re: new RegExp(
      `^${
        r.path.split("/").map((seg) =>
          seg === "*" ? ".*" : seg.startsWith(":") ? "[^/]+" : escape(seg)
        ).join("/")
      }$`,
    ),
  }));
  return (path) => {
    const out = new Set<string>();
    for (const r of compiled) {
      if (!r.re.test(path)) continue;
      out.add(r.method);
      if (r.method === "GET") out.add("HEAD");
    }
    return [...out];
  };
}

/** Builds the gateway's Hono app. */
export function createGatewayApp(deps: GatewayDeps | RouteDeps): Hono<GatewayEnv> {
  const d = "pool" in deps ? deps : resolveDeps(deps);
  const app = new Hono<GatewayEnv>();
  app.onError((err, c) => {
    const e = toInferxError(err);
    if (e.code === "internal") log.error("Request failed: {error}", { error: String(err) });
    const a = errorAnswer(e, isOpenaiPath(c.req.path));
    return c.body(a.body, a.status as 400, Object.fromEntries(a.headers));
  });
  // The methods the routes take at a path, from the routes as mounted (known once all are).
  let allowedAt: ((path: string) => string[]) | undefined;
  app.notFound((c) => {
    allowedAt ??= routeMethods(app.routes);
    const allow = allowedAt(c.req.path);
    if (allow.length) {
      throw new InferxError(
        "method_not_allowed",
        `${c.req.method} is not allowed on ${c.req.path}: it takes ${allow.join(", ")}`,
        { details: { allow } },
      );
    }
    throw new NotFoundError(`No route for ${c.req.method} ${c.req.path}`);
  });
  // The gateway's own answers (keys, secrets, objects, logs, errors) are kept by no cache and
  // never sniffed; a worker's carry its own caching and get nosniff where they are forwarded.
  app.use("*", async (c, next) => {
    await next();
    if (c.req.path.startsWith("/funccall/") || OPENAI_CALL_PATHS.has(c.req.path)) return;
    const h = c.res.headers;
    if (!h.has("cache-control")) h.set("cache-control", "no-store");
    if (!h.has("x-content-type-options")) h.set("x-content-type-options", "nosniff");
  });
  app.get("/health", (c) => c.json({ status: "ok", gateway: d.gatewayId }));

  // Calls are recorded whatever happens to them, authentication failures included.
  const record = observe({
    metrics: d.metrics,
    audit: d.audit,
    gatewayId: d.gatewayId,
    cache: d.cache,
  });
  app.use("/funccall/*", record);
  for (const path of OPENAI_CALL_PATHS) app.use(path, record);
  app.use("*", authenticate(d.auth));
  const branch = callPaths(d);
  app.use("/funccall/*", branch);
  for (const path of OPENAI_CALL_PATHS) app.use(path, branch);

  app.route("/funccall", funccallRoutes(d));
  app.route("/v1", openaiRoutes(d));
  app.route("/", objectRoutes(d));
  app.route("/apikeys", apikeyRoutes(d));
  app.route("/audit", auditRoutes(d));
  app.route("/rollout", rolloutRoutes(d));
  app.route("/calls", callRoutes(d));
  app.route("/", metricsRoutes(d));
  app.route("/ui", uiRoutes(d));
  return app;
}
