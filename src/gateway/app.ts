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
import { z } from "zod";
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
import { isUserType, isValidName, SYSTEM, type UserType } from "../model/keys.ts";
import { type ApiKeyRecord, ApiKeyRecordSchema, SCOPES } from "../model/apikey.ts";
import { decodeStoredUserObject, userObjectToJson } from "../model/schemas.ts";
import type { MetaClient, MetaRecord, NodeAgentClient } from "../rpc/types.ts";
import type { FuncCache } from "./func_cache.ts";
import type { Slot } from "./func_agent.ts";
import { HttpPool } from "./http_pool.ts";
import { GatewayMetrics } from "./metrics.ts";
import {
  type Action,
  allows,
  Authenticator,
  authorize,
  hashKey,
  mayManageKey,
  newApiKey,
  type Principal,
} from "./auth.ts";
import type { AuditKind, AuditLog, RequestRow } from "../audit/types.ts";
import { Registry } from "prom-client";
import {
  forwardHeaderList,
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
  /** Who may do what. @default auth off: every caller is the administrator */
  auth?: Authenticator;
  /** Where request rows go; none: no request audit. */
  audit?: AuditLog;
  /** This gateway's id, for audit rows. @default "gateway" */
  gatewayId?: string;
}

/** Hono's per-request variables in the gateway. */
type Env = { Variables: { principal: Principal; t0: number } };
type Ctx = Context<Env>;
type Deps = GatewayDeps & { metrics: GatewayMetrics; auth: Authenticator; gatewayId: string };

const RETRY_STATUSES = new Set([502, 503, 504]);
const CREDENTIALS = new Set(["authorization", "x-api-key"]);
const MAX_ATTEMPTS = 3;

/** Builds the gateway's Hono app; test it with `app.request()`. */
export function createGatewayApp(deps: GatewayDeps): Hono<Env> {
  const limit = deps.bodyLimit ?? 16 * 1024 * 1024;
  const pool = deps.upstream ?? new HttpPool();
  const metrics = deps.metrics ?? new GatewayMetrics(deps.cache, deps.audit);
  const registry = Registry.merge([metrics.registry, ...(deps.extraRegistries ?? [])]);
  const auth = deps.auth ?? new Authenticator({});
  const app = new Hono<Env>();

  app.onError((err, c) => {
    const e = toInferxError(err);
    const status = httpStatus(e.code);
    const [, root, t, ns, f] = c.req.path.split("/");
    if (root === "funccall" && f) {
      metrics.of(`${t}/${ns}/${f}`).request(status);
      deps.audit?.request({
        ...requestRow(c, d.gatewayId, { tenant: t, namespace: ns, func: f }),
        status,
        error: e.code,
      });
    }
    if (e.code === "internal") log.error("Request failed: {error}", { error: String(err) });
    const res = c.json(errorBody(e), status as 400);
    if (status === 401) res.headers.set("www-authenticate", 'Bearer realm="inferx"');
    return res;
  });
  app.notFound((c) =>
    c.json(errorBody(new NotFoundError(`No route for ${c.req.method} ${c.req.path}`)), 404)
  );

  app.get("/health", (c) => c.json({ status: "ok" }));
  app.use("*", async (c, next) => {
    c.set("t0", performance.now());
    c.set("principal", await auth.authenticate(c.req.raw.headers));
    await next();
  });
  app.get("/metrics", async (c) => {
    authorize(c.var.principal, "read");
    return c.body(await registry.metrics(), 200, { "content-type": registry.contentType });
  });

  const d: Deps = { ...deps, metrics, auth, gatewayId: deps.gatewayId ?? "gateway" };
  app.all("/funccall/:tenant/:namespace/:func/*", (c) => funccall(c, d, limit, pool));
  app.all("/funccall/:tenant/:namespace/:func", (c) => funccall(c, d, limit, pool));

  app.get("/v1/models", (c) => {
    const p = c.var.principal;
    return c.json({
      object: "list",
      data: deps.cache.functionIds().filter((id) => {
        const [t, ns] = id.split("/");
        return allows(p, "inference", t, ns);
      }).map((id) => ({
        id,
        object: "model",
        created: 0,
        owned_by: id.split("/")[0],
      })),
    });
  });
  app.post("/v1/completions", (c) => openaiCall(c, d, limit, pool, "/v1/completions"));
  app.post("/v1/chat/completions", (c) => openaiCall(c, d, limit, pool, "/v1/chat/completions"));

  app.put("/object/", async (c) => {
    const input = await readObjectInput(c, limit);
    authorizeObject(c.var.principal, "write", input);
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
    authorizeObject(c.var.principal, "write", input);
    return c.json(recordJson(await deps.meta.update(input)));
  });
  app.get("/object/:type/:tenant/:namespace/:name", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    const type = userType(c.req.param("type"));
    authorizeObject(c.var.principal, "read", { type, tenant, namespace, name });
    const rec = await deps.meta.get({ type, tenant, namespace, name });
    if (!rec) throw new NotFoundError(`${type} ${tenant}/${namespace}/${name} does not exist`);
    return c.json(recordJson(rec));
  });
  app.delete("/object/:type/:tenant/:namespace/:name", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    const type = userType(c.req.param("type"));
    authorizeObject(c.var.principal, "write", { type, tenant, namespace, name });
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
    const p = c.var.principal;
    if (type === "function" || type === "funcpolicy") authorize(p, "read", tenant, namespace);
    else if (
      !p.grants.some((g) => g.scope !== "inference" && (g.tenant ?? tenant) === tenant)
    ) {
      // Namespaces (and tenants) of a tenant: whoever reads anything in it sees what it may.
      authorize(p, "read", tenant);
    }
    const { items, revision } = await deps.meta.list(type, tenant, namespace);
    return c.json({ items: items.filter((r) => mayRead(p, r)).map(recordJson), revision });
  });
  app.get("/objects/:type", async (c) => {
    const type = userType(c.req.param("type"));
    const p = c.var.principal;
    if (p.anonymous) authorize(p, "read");
    const { items, revision } = await deps.meta.list(type);
    return c.json({ items: items.filter((r) => mayRead(p, r)).map(recordJson), revision });
  });
  app.get("/nodes", async (c) => {
    authorize(c.var.principal, "read");
    const { items } = await deps.meta.list("node");
    return c.json(items.map((r) => decodeNode(r.value)));
  });
  app.get("/pods/:tenant/:namespace/:func", async (c) => {
    const { tenant, namespace, func } = c.req.param();
    authorize(c.var.principal, "read", tenant, namespace);
    const { items } = await deps.meta.list("pod", tenant, namespace);
    return c.json(items.map((r) => decodePod(r.value)).filter((p) => p.func === func));
  });
  app.get("/pods/:tenant/:namespace/:func/:pod/log", async (c) => {
    const { tenant, namespace, func, pod: podId } = c.req.param();
    authorize(c.var.principal, "read", tenant, namespace);
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

  app.post("/apikeys", async (c) => {
    const p = c.var.principal;
    const req = KeyRequestSchema.safeParse(await readJson(c, limit));
    if (!req.success) {
      const issue = req.error.issues[0];
      const field = issue.path.join(".");
      throw new ValidationError(`Invalid API key request: ${field}: ${issue.message}`, field);
    }
    const { scope, tenant, namespace, name, expires_in_s } = req.data;
    checkKeyManager(p, { scope, tenant, namespace });
    if (tenant !== undefined) {
      const ref = namespace === undefined
        ? { type: "tenant" as const, tenant: SYSTEM, namespace: SYSTEM, name: tenant }
        : { type: "namespace" as const, tenant, namespace: SYSTEM, name: namespace };
      if (!await deps.meta.get(ref)) {
        throw new NotFoundError(
          `Cannot create API key: ${ref.type} ${tenant}${
            namespace ? `/${namespace}` : ""
          } does not exist`,
        );
      }
    }
    const { id, key } = newApiKey();
    const now = Date.now();
    const rec: ApiKeyRecord = ApiKeyRecordSchema.parse({
      id,
      name,
      hash: hashKey(key),
      scope,
      tenant,
      namespace,
      expiresAt: expires_in_s === undefined ? undefined : now + Math.round(expires_in_s * 1000),
      createdAt: now,
      createdBy: p.id,
    });
    await deps.meta.create({
      type: "apikey",
      tenant: SYSTEM,
      namespace: SYSTEM,
      name: id,
      object: rec,
    });
    auth.upsertKey(rec); // usable at once here; the watch brings it to other gateways
    log.info("API key {id} ({scope}) created by {by}", { id, scope, by: p.id });
    return c.json({ ...keyJson(rec), key }, 201);
  });
  app.get("/apikeys", async (c) => {
    const p = c.var.principal;
    if (p.anonymous) authorize(p, "write");
    if (!p.grants.some((g) => g.scope === "full")) {
      throw new InferxError("forbidden", `${p.id} may not manage API keys`);
    }
    const { items } = await deps.meta.list("apikey");
    const keys = items.flatMap((r) => {
      const k = ApiKeyRecordSchema.safeParse(JSON.parse(r.value));
      return k.success && mayManageKey(p, k.data) ? [keyJson(k.data)] : [];
    });
    return c.json({ items: keys });
  });
  app.get("/apikeys/:id", async (c) => c.json(keyJson(await managedKey(c, deps.meta))));
  app.delete("/apikeys/:id", async (c) => {
    const rec = await managedKey(c, deps.meta);
    await deps.meta.delete({ type: "apikey", tenant: SYSTEM, namespace: SYSTEM, name: rec.id });
    auth.removeKey(rec.id);
    log.info("API key {id} revoked by {by}", { id: rec.id, by: c.var.principal.id });
    return c.json({ revoked: rec.id });
  });

  app.get("/audit/:kind", async (c) => {
    const kind = c.req.param("kind");
    if (kind === "stats") {
      authorize(c.var.principal, "read");
      if (!deps.audit) throw new InferxError("unsupported", "This gateway keeps no audit log");
      return c.json(deps.audit.stats());
    }
    if (kind !== "requests" && kind !== "pods") {
      throw new NotFoundError(
        `No audit of "${kind}": use /audit/requests, /audit/pods or /audit/stats`,
      );
    }
    const q = auditQuery(c);
    authorize(c.var.principal, "read", q.tenant, q.tenant === undefined ? undefined : q.namespace);
    if (!deps.audit) throw new InferxError("unsupported", "This gateway keeps no audit log");
    const rows = await deps.audit.query(kind as AuditKind as "requests", q);
    return c.json({ items: rows, stats: deps.audit.stats() });
  });
  return app;
}

const KeyRequestSchema = z.strictObject({
  name: z.string().max(128).default(""),
  scope: z.enum(SCOPES),
  tenant: z.string().refine(isValidName, "not a valid tenant name").optional(),
  namespace: z.string().refine(isValidName, "not a valid namespace name").optional(),
  /** Lifetime in seconds; absent: the key does not expire. */
  expires_in_s: z.number().positive().max(10 * 365 * 86400).optional(),
}).refine((k) => k.namespace === undefined || k.tenant !== undefined, {
  message: "a namespace restriction needs a tenant",
  path: ["namespace"],
});

/** The public view of a key: everything but its hash. */
function keyJson(k: ApiKeyRecord) {
  return {
    id: k.id,
    name: k.name,
    scope: k.scope,
    tenant: k.tenant ?? null,
    namespace: k.namespace ?? null,
    expires_at: k.expiresAt === undefined ? null : new Date(k.expiresAt).toISOString(),
    created_at: new Date(k.createdAt).toISOString(),
    created_by: k.createdBy,
  };
}

function checkKeyManager(
  p: Principal,
  key: { scope: ApiKeyRecord["scope"]; tenant?: string; namespace?: string },
) {
  if (mayManageKey(p, key)) return;
  if (p.anonymous) authorize(p, "write", key.tenant, key.namespace);
  const where = key.tenant === undefined
    ? "cluster-wide"
    : `for ${key.tenant}${key.namespace ? `/${key.namespace}` : ""}`;
  throw new InferxError("forbidden", `${p.id} may not manage ${key.scope} API keys ${where}`);
}

async function managedKey(c: Ctx, meta: MetaClient): Promise<ApiKeyRecord> {
  const id = c.req.param("id")!;
  const p = c.var.principal;
  if (p.anonymous) authorize(p, "write");
  const rec = isValidName(id)
    ? await meta.get({ type: "apikey", tenant: SYSTEM, namespace: SYSTEM, name: id })
    : undefined;
  const k = rec && ApiKeyRecordSchema.safeParse(JSON.parse(rec.value));
  if (!k?.success) throw new NotFoundError(`API key ${id} does not exist`);
  if (!mayManageKey(p, k.data)) checkKeyManager(p, k.data);
  return k.data;
}

function auditQuery(c: Ctx) {
  const { tenant, namespace, func, since, limit } = c.req.query();
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

/** Where an object lives for authorization: a tenant is its own scope; a namespace too. */
function objectScope(
  o: { type: string; tenant: string; namespace: string; name: string },
): [string | undefined, string | undefined] {
  if (o.type === "tenant") return [o.name, undefined];
  if (o.type === "namespace") return [o.tenant, o.name];
  return [o.tenant, o.namespace];
}

function authorizeObject(
  p: Principal,
  action: Action,
  o: { type: string; tenant: string; namespace: string; name: string },
) {
  if (action === "write" && o.type === "tenant") return authorize(p, "write"); // quotas live there
  if (action === "write" && o.type === "namespace") return authorize(p, "write", o.tenant);
  const [t, ns] = objectScope(o);
  authorize(p, action, t, ns);
}

function mayRead(p: Principal, rec: MetaRecord): boolean {
  const [t, ns] = objectScope(rec);
  return allows(p, "read", t, ns);
}

function requestRow(
  c: Ctx,
  gateway: string,
  target: { tenant: string; namespace: string; func: string },
): Omit<RequestRow, "status"> {
  const t0 = c.var.t0 ?? performance.now();
  return {
    time: Math.round(Date.now() - (performance.now() - t0)),
    gateway,
    principal: c.var.principal?.id ?? "anonymous",
    tenant: target.tenant,
    namespace: target.namespace,
    func: target.func,
    method: c.req.method,
    path: c.req.path,
    latencyMs: performance.now() - t0,
    coldStart: false,
    resumed: false,
  };
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

async function funccall(c: Ctx, deps: Deps, limit: number, pool: HttpPool): Promise<Response> {
  const { tenant, namespace, func } = c.req.param() as Record<string, string>;
  authorize(c.var.principal, "inference", tenant, namespace);
  const req = c.req.raw;
  const url = new URL(req.url);
  const prefix = `/funccall/${tenant}/${namespace}/${func}`;
  const pathAndQuery = (url.pathname.slice(prefix.length) || "/") + url.search;
  if (!deps.cache.agent(tenant, namespace, func)) {
    throw new NotFoundError(`Function ${tenant}/${namespace}/${func} does not exist`);
  }
  const body = await readBody(req, limit);
  return await proxy(c, deps, pool, { tenant, namespace, func }, pathAndQuery, body);
}

/**
 * The OpenAI-style routes: the body's `model` names the function
 * (`tenant/namespace/name`, or a name no other tenant or namespace uses).
 */
async function openaiCall(
  c: Ctx,
  deps: Deps,
  limit: number,
  pool: HttpPool,
  path: string,
): Promise<Response> {
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
  const p = c.var.principal;
  // A bare name resolves among the functions the caller may call.
  const target = model.includes("/")
    ? deps.cache.resolveModel(model)
    : deps.cache.resolveModel(model, (t, ns) => allows(p, "inference", t, ns));
  if (target) authorize(p, "inference", target.tenant, target.namespace);
  else {
    const [t, ns] = model.split("/");
    if (model.includes("/")) authorize(p, "inference", t, ns);
    throw new NotFoundError(`The model ${model} does not exist`);
  }
  return await proxy(c, deps, pool, target, path, body);
}

async function proxy(
  c: Ctx,
  deps: Deps,
  pool: HttpPool,
  target: { tenant: string; namespace: string; func: string },
  pathAndQuery: string,
  { body, replayable }: ProxyBody,
): Promise<Response> {
  const req = c.req.raw;
  const t0 = c.var.t0;
  const agent = deps.cache.agent(target.tenant, target.namespace, target.func);
  if (!agent) {
    throw new NotFoundError(
      `Function ${target.tenant}/${target.namespace}/${target.func} does not exist`,
    );
  }
  const timeoutMs = timeoutHeader(req.headers);
  // With auth on, the platform's credential is not the worker's business.
  const headers = forwardHeaderList(req.headers, deps.auth.enabled ? CREDENTIALS : undefined);
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
  const ttfbMs = performance.now() - t0;
  const out = forwardHeaderList(upstream.headers);
  out.push(
    ["x-inferx-cold-start", slot.coldStart ? "1" : "0"],
    ["x-inferx-resumed", slot.resumed ? "1" : "0"],
    ["x-inferx-ttfb-ms", ttfbMs.toFixed(2)],
    ["x-inferx-queue-ms", slot.queuedMs.toFixed(2)],
    ["x-inferx-pod", slot.worker.podId],
  );
  const m = deps.metrics.of(agent.id);
  m.request(upstream.status);
  m.ttfb.observe(ttfbMs / 1000);
  if (slot.coldStart) m.coldStarts.inc();
  if (slot.resumed) m.resumes.inc();
  const audit = deps.audit;
  const status = upstream.status;
  const finished = () => {
    m.duration.observe((performance.now() - t0) / 1000);
    if (!audit) return;
    const row = requestRow(c, deps.gatewayId, target);
    row.ttfbMs = ttfbMs;
    row.coldStart = slot.coldStart;
    row.resumed = slot.resumed;
    row.pod = slot.worker.podId;
    audit.request({ ...row, status });
  };
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
