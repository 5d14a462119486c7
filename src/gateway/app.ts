/**
 * The gateway's HTTP API as a Hono app built by {@linkcode createGatewayApp}:
 * `/funccall/{tenant}/{namespace}/{function}/{path}` proxies to a leased
 * worker; `/object(s)` manage objects through the state service; `/nodes` and
 * `/pods` are read-only views. Every error is a JSON body with a clear
 * message; status codes come from `httpStatus()` in one place.
 *
 * @module
 */
import { Hono } from "hono";
import type { Context } from "hono";
import {
  errorBody,
  httpStatus,
  InferxError,
  NotFoundError,
  toInferxError,
  ValidationError,
} from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { decodeNode, decodePod, type NodeInfo } from "../model/cluster.ts";
import { isUserType, type UserType } from "../model/keys.ts";
import { decodeStoredUserObject, userObjectToJson } from "../model/schemas.ts";
import type { MetaClient, MetaRecord, NodeAgentClient } from "../rpc/types.ts";
import type { FuncCache } from "./func_cache.ts";
import type { Slot } from "./func_agent.ts";
import { HttpPool } from "./http_pool.ts";
import { GatewayMetrics } from "./metrics.ts";
import { Registry } from "prom-client";
import {
  forwardHeaders,
  limitStream,
  onBodyDone,
  readLimited,
  sendUpstream,
  tooLarge,
  UpstreamUnreachable,
} from "./proxy.ts";

const log = logger("gateway");

/** What the gateway app needs. */
export interface GatewayDeps {
  meta: MetaClient;
  cache: FuncCache;
  /** Largest request body (bytes). @default 16 MiB */
  bodyLimit?: number;
  /** The client of a node's agent (for pod logs), or undefined when it has none. */
  nodeAgent?: (node: NodeInfo) => NodeAgentClient | undefined;
  /** Keep-alive connections to workers. @default a new pool */
  upstream?: HttpPool;
  /** The gateway's metrics. @default new metrics on a registry of their own */
  metrics?: GatewayMetrics;
  /** More registries served at `/metrics` (the scheduler's, in `All`). */
  extraRegistries?: Registry[];
}

const RETRY_STATUSES = new Set([502, 503, 504]);
const MAX_ATTEMPTS = 3;

/** Builds the gateway's Hono app; test it with `app.request()`. */
export function createGatewayApp(deps: GatewayDeps): Hono {
  const limit = deps.bodyLimit ?? 16 * 1024 * 1024;
  const pool = deps.upstream ?? new HttpPool();
  const metrics = deps.metrics ?? new GatewayMetrics(deps.cache);
  const registry = Registry.merge([metrics.registry, ...(deps.extraRegistries ?? [])]);
  const app = new Hono();

  app.onError((err, c) => {
    const e = toInferxError(err);
    const [, root, t, ns, f] = c.req.path.split("/");
    if (root === "funccall" && f) {
      metrics.requests.inc({ function: `${t}/${ns}/${f}`, code: String(httpStatus(e.code)) });
    }
    if (e.code === "internal") log.error("Request failed: {error}", { error: String(err) });
    return c.json(errorBody(e), httpStatus(e.code) as 400);
  });
  app.notFound((c) =>
    c.json(errorBody(new NotFoundError(`No route for ${c.req.method} ${c.req.path}`)), 404)
  );

  app.get("/health", (c) => c.json({ status: "ok" }));
  app.get(
    "/metrics",
    async (c) => c.body(await registry.metrics(), 200, { "content-type": registry.contentType }),
  );

  const d = { ...deps, metrics };
  app.all("/funccall/:tenant/:namespace/:func/*", (c) => funccall(c, d, limit, pool));
  app.all("/funccall/:tenant/:namespace/:func", (c) => funccall(c, d, limit, pool));

  app.get("/v1/models", (c) =>
    c.json({
      object: "list",
      data: deps.cache.functionIds().map((id) => ({
        id,
        object: "model",
        created: 0,
        owned_by: id.split("/")[0],
      })),
    }));
  app.post("/v1/completions", (c) => openaiCall(c, d, limit, pool, "/v1/completions"));
  app.post("/v1/chat/completions", (c) => openaiCall(c, d, limit, pool, "/v1/chat/completions"));

  app.put("/object/", async (c) => {
    const input = await readObjectInput(c, limit);
    const rec = await deps.meta.create(input);
    return c.json(recordJson(rec), 201);
  });
  app.post("/object/", async (c) => {
    const input = await readObjectInput(c, limit);
    if (input.revision === undefined) {
      throw new ValidationError(
        "Invalid update: revision is required (the revision you read, for compare-and-swap)",
        "revision",
      );
    }
    return c.json(recordJson(await deps.meta.update(input)));
  });
  app.get("/object/:type/:tenant/:namespace/:name", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    const type = userType(c.req.param("type"));
    const rec = await deps.meta.get({ type, tenant, namespace, name });
    if (!rec) throw new NotFoundError(`${type} ${tenant}/${namespace}/${name} does not exist`);
    return c.json(recordJson(rec));
  });
  app.delete("/object/:type/:tenant/:namespace/:name", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    const type = userType(c.req.param("type"));
    const q = c.req.query("revision");
    const revision = q === undefined ? undefined : Number(q);
    if (revision !== undefined && !Number.isInteger(revision)) {
      throw new ValidationError(`Invalid revision "${q}": not an integer`, "revision");
    }
    const at = await deps.meta.delete({ type, tenant, namespace, name }, revision);
    return c.json({ deleted: { type, tenant, namespace, name }, revision: at });
  });
  app.get("/objects/:type/:tenant/:namespace", async (c) => {
    const { tenant, namespace } = c.req.param();
    const type = userType(c.req.param("type"));
    const { items, revision } = await deps.meta.list(type, tenant, namespace);
    return c.json({ items: items.map(recordJson), revision });
  });
  app.get("/objects/:type", async (c) => {
    const type = userType(c.req.param("type"));
    const { items, revision } = await deps.meta.list(type);
    return c.json({ items: items.map(recordJson), revision });
  });
  app.get("/nodes", async (c) => {
    const { items } = await deps.meta.list("node");
    return c.json(items.map((r) => decodeNode(r.value)));
  });
  app.get("/pods/:tenant/:namespace/:func", async (c) => {
    const { tenant, namespace, func } = c.req.param();
    const { items } = await deps.meta.list("pod", tenant, namespace);
    return c.json(items.map((r) => decodePod(r.value)).filter((p) => p.func === func));
  });
  app.get("/pods/:tenant/:namespace/:func/:pod/log", async (c) => {
    const { tenant, namespace, func, pod: podId } = c.req.param();
    const rec = await deps.meta.get({ type: "pod", tenant, namespace, name: podId });
    const pod = rec && decodePod(rec.value);
    if (!pod || pod.func !== func) {
      throw new NotFoundError(`Pod ${podId} of ${tenant}/${namespace}/${func} does not exist`);
    }
    const nodeRec = await deps.meta.get({
      type: "node",
      tenant: "system",
      namespace: "system",
      name: pod.node,
    });
    const agent = nodeRec && deps.nodeAgent?.(decodeNode(nodeRec.value));
    if (!agent) throw new InferxError("unavailable", `Cannot reach the agent of node ${pod.node}`);
    const q = c.req.query("lines");
    const lines = q === undefined ? 50 : Number(q);
    if (!Number.isInteger(lines) || lines < 1 || lines > 10_000) {
      throw new ValidationError(`Invalid lines "${q}": an integer from 1 to 10000`, "lines");
    }
    return c.text(await agent.readPodLog(podId, lines));
  });
  return app;
}

function userType(s: string): UserType {
  if (!isUserType(s)) {
    throw new ValidationError(
      `Invalid type "${s}": must be one of tenant, namespace, function, funcpolicy`,
      "type",
    );
  }
  return s;
}

function recordJson(rec: MetaRecord): Record<string, unknown> {
  return userObjectToJson(decodeStoredUserObject(rec.value, rec.revision));
}

async function readJson(c: Context, limit: number): Promise<unknown> {
  const len = Number(c.req.header("content-length") ?? 0);
  if (len > limit) throw tooLarge(limit);
  const bytes = await readLimited(c.req.raw.body, limit);
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new ValidationError(`Request body is not valid JSON: ${(err as Error).message}`);
  }
}

async function readObjectInput(c: Context, limit: number) {
  const body = await readJson(c, limit);
  if (!body || typeof body !== "object" || Array.isArray(body)) {
    throw new ValidationError("Invalid object envelope: body must be a JSON object");
  }
  const b = body as Record<string, unknown>;
  if (typeof b.type !== "string") {
    throw new ValidationError("Invalid object envelope: type: must be a string", "type");
  }
  const type = userType(b.type);
  for (const f of ["tenant", "namespace", "name"]) {
    if (typeof b[f] !== "string") {
      throw new ValidationError(`Invalid object envelope: ${f}: must be a string`, f);
    }
  }
  if (b.revision !== undefined && !Number.isInteger(b.revision)) {
    throw new ValidationError("Invalid object envelope: revision: must be an integer", "revision");
  }
  return {
    type,
    tenant: b.tenant as string,
    namespace: b.namespace as string,
    name: b.name as string,
    object: b.object,
    revision: b.revision as number | undefined,
  };
}

function timeoutHeader(headers: Headers): number | undefined {
  const raw = headers.get("x-inferx-timeout") ?? undefined;
  if (raw === undefined) return undefined;
  const s = Number(raw);
  if (!Number.isFinite(s) || s <= 0) {
    throw new ValidationError(
      `Invalid X-Inferx-Timeout "${raw}": must be a positive number of seconds`,
      "X-Inferx-Timeout",
    );
  }
  return s * 1000;
}

/** A request body read for proxying: bytes (JSON, replayable) or a stream. */
interface ProxyBody {
  body: Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> | null;
  replayable: boolean;
  /** The parsed body when it is JSON. */
  json?: unknown;
}

async function readBody(req: Request, limit: number): Promise<ProxyBody> {
  if (!req.body || req.method === "GET" || req.method === "HEAD") {
    return { body: null, replayable: true };
  }
  if (Number(req.headers.get("content-length") ?? 0) > limit) throw tooLarge(limit);
  if (!(req.headers.get("content-type") ?? "").includes("json")) {
    return { body: limitStream(req.body, limit), replayable: false };
  }
  const bytes = req.headers.has("content-length")
    ? new Uint8Array(await req.arrayBuffer()) // its size is checked above
    : await readLimited(req.body, limit);
  let json: unknown;
  if (bytes.byteLength) {
    try {
      json = JSON.parse(new TextDecoder().decode(bytes));
    } catch (err) {
      throw new ValidationError(`Request body is not valid JSON: ${(err as Error).message}`);
    }
  }
  return { body: bytes, replayable: true, json };
}

async function funccall(
  c: Context,
  deps: GatewayDeps & { metrics: GatewayMetrics },
  limit: number,
  pool: HttpPool,
): Promise<Response> {
  const t0 = performance.now();
  const { tenant, namespace, func } = c.req.param() as Record<string, string>;
  const req = c.req.raw;
  const url = new URL(req.url);
  const prefix = `/funccall/${tenant}/${namespace}/${func}`;
  const pathAndQuery = (url.pathname.slice(prefix.length) || "/") + url.search;
  if (!deps.cache.agent(tenant, namespace, func)) {
    throw new NotFoundError(`Function ${tenant}/${namespace}/${func} does not exist`);
  }
  const body = await readBody(req, limit);
  return await proxy(deps, pool, req, { tenant, namespace, func }, pathAndQuery, body, t0);
}

/**
 * The OpenAI-style routes: the body's `model` names the function
 * (`tenant/namespace/name`, or a name no other tenant or namespace uses).
 */
async function openaiCall(
  c: Context,
  deps: GatewayDeps & { metrics: GatewayMetrics },
  limit: number,
  pool: HttpPool,
  path: string,
): Promise<Response> {
  const t0 = performance.now();
  const req = c.req.raw;
  if (!(req.headers.get("content-type") ?? "").includes("json")) {
    throw new ValidationError(`${path} takes a JSON body`, "content-type");
  }
  const body = await readBody(req, limit);
  const model = (body.json as { model?: unknown } | undefined)?.model;
  if (typeof model !== "string" || !model) {
    throw new ValidationError(
      "Invalid request: model: the function to call (tenant/namespace/name)",
      "model",
    );
  }
  const target = deps.cache.resolveModel(model);
  if (!target) throw new NotFoundError(`The model ${model} does not exist`);
  return await proxy(deps, pool, req, target, path, body, t0);
}

async function proxy(
  deps: GatewayDeps & { metrics: GatewayMetrics },
  pool: HttpPool,
  req: Request,
  target: { tenant: string; namespace: string; func: string },
  pathAndQuery: string,
  { body, replayable }: ProxyBody,
  t0: number,
): Promise<Response> {
  const agent = deps.cache.agent(target.tenant, target.namespace, target.func);
  if (!agent) {
    throw new NotFoundError(
      `Function ${target.tenant}/${target.namespace}/${target.func} does not exist`,
    );
  }
  const timeoutMs = timeoutHeader(req.headers);
  const headers = forwardHeaders(req.headers);
  let slot: Slot = await agent.acquire(timeoutMs);
  let upstream: Response | undefined;
  for (let attempt = 1;; attempt++) {
    try {
      upstream = await sendUpstream(
        pool,
        slot.worker.endpoint,
        pathAndQuery,
        req.method,
        headers,
        body,
      );
    } catch (err) {
      if (!(err instanceof UpstreamUnreachable)) {
        agent.release(slot);
        throw err;
      }
      log.warn("Worker {pod} of {func} unreachable: {error}", {
        pod: slot.worker.podId,
        func: agent.id,
        error: err.message,
      });
      agent.release(slot, true);
      if (!replayable || attempt >= MAX_ATTEMPTS) throw err;
      slot = await agent.acquire(timeoutMs);
      continue;
    }
    if (RETRY_STATUSES.has(upstream.status) && replayable && attempt < MAX_ATTEMPTS) {
      const other = agent.tryAcquireOther(slot.worker.podId);
      if (other) {
        await upstream.body?.cancel();
        agent.release(slot);
        slot = other;
        continue;
      }
    }
    break;
  }
  const out = forwardHeaders(upstream.headers);
  out.set("x-inferx-cold-start", slot.coldStart ? "1" : "0");
  out.set("x-inferx-resumed", slot.resumed ? "1" : "0");
  const ttfbMs = performance.now() - t0;
  out.set("x-inferx-ttfb-ms", ttfbMs.toFixed(2));
  const m = deps.metrics;
  const fn = { function: agent.id };
  m.requests.inc({ function: agent.id, code: String(upstream.status) });
  m.ttfb.observe(fn, ttfbMs / 1000);
  if (slot.coldStart) m.coldStarts.inc(fn);
  if (slot.resumed) m.resumes.inc(fn);
  const finished = () => m.duration.observe(fn, (performance.now() - t0) / 1000);
  out.set("x-inferx-queue-ms", slot.queuedMs.toFixed(2));
  out.set("x-inferx-pod", slot.worker.podId);
  const held = slot;
  if (Number(upstream.headers.get("content-length") ?? Infinity) <= 1024 * 1024) {
    // A sized answer is already whole (the pool reads those up to 1 MiB): no stream to watch.
    const bytes = new Uint8Array(await upstream.arrayBuffer());
    agent.release(held);
    finished();
    return new Response(bytes, {
      status: upstream.status,
      statusText: upstream.statusText,
      headers: out,
    });
  }
  return new Response(onBodyDone(upstream.body, () => (agent.release(held), finished())), {
    status: upstream.status,
    statusText: upstream.statusText,
    headers: out,
  });
}
