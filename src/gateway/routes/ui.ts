/**
 * The dashboard, mounted at `/ui` on the gateway's port. Pages
 * (`/ui/functions`, `/ui/functions/{tenant}/{namespace}/{name}`, `/ui/pods`,
 * `/ui/nodes`, `/ui/keys`, `/ui/audit`) are shells without data; their
 * browser module fetches the matching part (`/ui/part/...`) with the tab's
 * credential, so each part is rendered for its caller and authorized as the
 * JSON API authorizes the same data. `/ui/me` says who the caller is,
 * `/ui/events` streams pod and node changes as server-sent events, and
 * `/ui/static/*` serves the browser modules. Actions (playground calls,
 * terminate, keys) are calls of the JSON API from the browser.
 *
 * @module
 */
import { Hono } from "hono";
import type { Context } from "hono";
import { InferxError, NotFoundError, toInferxError, ValidationError } from "../../common/errors.ts";
import { decodeNode, decodePod, type PodInfo } from "../../model/cluster.ts";
import { funcId, isValidName } from "../../model/keys.ts";
import type { RequestRow } from "../../audit/types.ts";
import { decodeStoredUserObject, type FuncPolicy, resolvePolicy } from "../../model/schemas.ts";
import { asset } from "../../ui/assets.ts";
import { type AuditFilter, AuditPage } from "../../ui/audit.tsx";
import { nodeViews } from "../../ui/cluster_view.ts";
import { type ClusterEvent, ClusterEvents, eventStream } from "../../ui/events.ts";
import {
  type FuncRow,
  FunctionPage,
  FunctionsPage,
  FunctionsTable,
  RecentCalls,
  Versions,
} from "../../ui/functions.tsx";
import { KeysPage, KeysTable } from "../../ui/keys.tsx";
import { type PageId, PAGES, Shell } from "../../ui/layout.tsx";
import { NodesBody, NodesPage } from "../../ui/nodes.tsx";
import { PodsPage, PodsTable } from "../../ui/pods.tsx";
import { allows, authorize, type Principal, requireCredentials } from "../auth.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { listKeys } from "./apikeys.ts";
import { auditQuery, readableAudit } from "./audit.ts";

/** Scripts only from the gateway; no frames either way, no plugins, no outside connections. */
const CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
  "img-src 'self' data:; connect-src 'self'; frame-src 'none'; object-src 'none'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/**
 * How many event streams (`/ui/events`) a gateway serves at once, and to
 * whom. With auth off every browser is the same administrator, held by
 * `total` alone.
 */
export interface StreamLimits {
  /** In all. */
  total: number;
  /** Of one credential (a dashboard keeps one per tab shown). */
  perCaller: number;
  /** Of one tenant's credentials together: a tenant's full key makes more keys at will. */
  perTenant: number;
  /** Of all credentials confined to tenants, together: the rest stay for cluster-wide readers. */
  tenants: number;
}

/** The limits {@linkcode uiRoutes} applies unless told others. */
export const STREAM_LIMITS: Readonly<StreamLimits> = {
  total: 1000,
  perCaller: 20,
  perTenant: 100,
  tenants: 900,
};

/** Options of {@linkcode uiRoutes}. */
export interface UiOptions {
  /** Time between keep-alive comments on `/ui/events` (ms). @default 15000 */
  pingMs?: number;
  /** Where `/ui/events` gets changes. @default watches of `deps.meta` */
  events?: ClusterEvents;
  /** Limits on event streams, each one unset taken from {@linkcode STREAM_LIMITS}. */
  streamLimits?: Partial<StreamLimits>;
}

/** Event streams open, counted against {@linkcode StreamLimits}. */
class StreamCounts {
  #held = new Map<string, number>();
  #limits: StreamLimits;

  constructor(limits: StreamLimits) {
    this.#limits = limits;
  }

  /**
   * Counts a stream of `p`'s, or throws why it may not have one; returns
   * what gives it back (once, however often called). `open`: streams open
   * now. `auth`: whether credentials tell callers apart.
   */
  take(p: Principal, open: number, auth: boolean): () => void {
    const l = this.#limits;
    if (open >= l.total) {
      throw new InferxError(
        "unavailable",
        `Cannot watch: ${l.total} dashboards watch this gateway already`,
        { retryable: true },
      );
    }
    if (!auth) return () => {};
    // A credential any of whose grants reaches the whole cluster counts for itself alone.
    const tenants = p.grants.every((g) => g.tenant !== undefined)
      ? [...new Set(p.grants.map((g) => g.tenant!))]
      : [];
    const full = (key: string, most: number) => (this.#held.get(key) ?? 0) >= most;
    if (tenants.length && full("tenants", l.tenants)) {
      throw new InferxError(
        "unavailable",
        `Cannot watch: tenants' dashboards hold ${l.tenants} event streams of this gateway ` +
          "already (the rest stay for cluster-wide readers)",
        { retryable: true },
      );
    }
    const tenant = tenants.find((t) => full(`tenant ${t}`, l.perTenant));
    if (tenant !== undefined) {
      throw new InferxError(
        "quota_exceeded",
        `Cannot watch: tenant ${tenant} holds ${l.perTenant} event streams of this gateway ` +
          "already (the most)",
        { retryable: true },
      );
    }
    if (full(`caller ${p.id}`, l.perCaller)) {
      throw new InferxError(
        "quota_exceeded",
        `Cannot watch: ${p.id} holds ${l.perCaller} event streams of this gateway already (the most)`,
        { retryable: true },
      );
    }
    const keys = [`caller ${p.id}`, ...tenants.map((t) => `tenant ${t}`)];
    if (tenants.length) keys.push("tenants");
    for (const k of keys) this.#held.set(k, (this.#held.get(k) ?? 0) + 1);
    let given = false;
    return () => {
      if (given) return;
      given = true;
      for (const k of keys) {
        const n = this.#held.get(k)! - 1;
        if (n > 0) this.#held.set(k, n);
        else this.#held.delete(k);
      }
    };
  }
}

/** Function `tenant/namespace/name` with its pods, for a caller who may read it (404: none). */
async function functionRow(
  deps: RouteDeps,
  principal: Principal,
  tenant: string,
  namespace: string,
  name: string,
): Promise<FuncRow> {
  authorize(principal, "read", tenant, namespace);
  const rec = await deps.meta.get({ type: "function", tenant, namespace, name });
  if (!rec) throw new NotFoundError(`Function ${tenant}/${namespace}/${name} does not exist`);
  const o = decodeStoredUserObject(rec.value, rec.revision);
  if (o.type !== "function") throw new NotFoundError(`${name} is not a function`);
  const pods = (await deps.meta.list("pod", tenant, namespace)).items
    .map((r) => decodePod(r.value))
    .filter((p) => p.func === name);
  return { ...o, pods };
}

/** The policy `f` runs under: the gateway's (a linked one resolved), else its own. */
function policyOf(deps: RouteDeps, f: FuncRow): FuncPolicy {
  return deps.cache.policyOf(funcId(f.tenant, f.namespace, f.name)) ??
    resolvePolicy(f.spec, () => undefined);
}

/** `f`'s last 20 calls the caller may read; undefined: the gateway keeps no audit. */
async function recentCalls(
  deps: RouteDeps,
  principal: Principal,
  f: FuncRow,
): Promise<RequestRow[] | undefined> {
  const q = await readableAudit(deps, principal, {
    tenant: f.tenant,
    namespace: f.namespace,
    func: f.name,
    limit: 20,
  });
  return deps.audit && (q ? await deps.audit.query("requests", q) : []);
}

/** The dashboard's routes, mounted at `/ui`. */
export function uiRoutes(deps: RouteDeps, opts: UiOptions = {}): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  const events = opts.events ?? new ClusterEvents(deps.meta);
  const streams = new StreamCounts({ ...STREAM_LIMITS, ...opts.streamLimits });
  app.use("*", async function uiHeaders(c, next) {
    await next();
    c.header("content-security-policy", CSP);
    c.header("x-content-type-options", "nosniff");
    c.header("referrer-policy", "no-referrer");
    if (!c.res.headers.has("cache-control")) c.header("cache-control", "no-store");
  });

  // Pages: shells that load their part.
  const shell = (c: Context<GatewayEnv>, page: PageId, title: string, part: string) => {
    const q = new URL(c.req.url).search;
    return c.html(Shell({ title, page, part: `/ui/part/${part}${q}` }));
  };
  app.get("/", (c) => shell(c, "functions", "Functions", "functions"));
  for (const p of PAGES) app.get(`/${p.id}`, (c) => shell(c, p.id, p.title, p.id));
  app.get("/functions/:tenant/:namespace/:name", (c) => {
    const { tenant, namespace, name } = c.req.param();
    // The names go into the URL of the part the page loads: names only, never a path.
    if (![tenant, namespace, name].every(isValidName)) {
      throw new NotFoundError(`Function ${tenant}/${namespace}/${name} does not exist`);
    }
    const id = funcId(tenant, namespace, name);
    return shell(c, "functions", id, `functions/${id}`);
  });

  // Parts: rendered for the caller.
  // Whether the caller may make a function somewhere (a key of full scope, or the administrator).
  const mayCreate = (p: Principal) => p.grants.some((g) => g.scope === "full");
  app.get("/part/functions", async (c) => {
    const p = c.var.principal;
    return c.html(
      FunctionsPage({ funcs: await visibleFunctions(deps, p), mayCreate: mayCreate(p) }),
    );
  });
  app.get("/part/functions/table", async (c) => {
    const p = c.var.principal;
    return c.html(
      FunctionsTable({ funcs: await visibleFunctions(deps, p), mayCreate: mayCreate(p) }),
    );
  });
  app.get("/part/functions/:tenant/:namespace/:name", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    const func = await functionRow(deps, c.var.principal, tenant, namespace, name);
    return c.html(FunctionPage({
      func,
      policy: policyOf(deps, func),
      calls: await recentCalls(deps, c.var.principal, func),
      origin: new URL(c.req.url).origin,
      authEnabled: deps.auth.enabled,
      now: Date.now(),
    }));
  });
  // The function page's live regions (beside its pods table).
  app.get("/part/functions/:tenant/:namespace/:name/versions", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    const func = await functionRow(deps, c.var.principal, tenant, namespace, name);
    return c.html(Versions({ func, policy: policyOf(deps, func) }));
  });
  app.get("/part/functions/:tenant/:namespace/:name/calls", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    const func = await functionRow(deps, c.var.principal, tenant, namespace, name);
    return c.html(RecentCalls({ calls: await recentCalls(deps, c.var.principal, func) }));
  });
  app.get("/part/pods", async (c) => {
    return c.html(PodsPage({ pods: await visiblePods(deps, c.var.principal), now: Date.now() }));
  });
  app.get("/part/pods/table", async (c) => {
    const f = c.req.query("func");
    const pods = f === undefined
      ? await visiblePods(deps, c.var.principal)
      : await podsOf(deps, c.var.principal, f);
    return c.html(PodsTable({ pods, now: Date.now() }));
  });
  const nodes = async (p: Principal) => {
    authorize(p, "read"); // as GET /nodes
    const [n, pods] = await Promise.all([deps.meta.list("node"), deps.meta.list("pod")]);
    return nodeViews(
      n.items.map((r) => decodeNode(r.value)),
      pods.items.map((r) => decodePod(r.value)),
    );
  };
  app.get("/part/nodes", async (c) => {
    return c.html(NodesPage({ views: await nodes(c.var.principal), now: Date.now() }));
  });
  app.get("/part/nodes/body", async (c) => {
    return c.html(NodesBody({ views: await nodes(c.var.principal), now: Date.now() }));
  });
  app.get("/part/keys", async (c) => {
    return c.html(KeysPage({ keys: await listKeys(c.var.principal, deps.meta) }));
  });
  app.get("/part/keys/table", async (c) => {
    return c.html(KeysTable({ keys: await listKeys(c.var.principal, deps.meta) }));
  });
  app.get("/part/audit", async (c) => {
    const p = c.var.principal;
    // Who may read none of it is told so (401) before its filters are looked at.
    requireCredentials(p, "read the audit log");
    const given: Record<string, string> = {};
    let twice: string | undefined;
    for (const [k, v] of new URL(c.req.url).searchParams) {
      if (v === "") continue;
      if (given[k] !== undefined) twice ??= k;
      given[k] = v;
    }
    if (given.tenant === undefined && !allows(p, "read")) {
      // A tenant's key sees its own tenant's audit without naming it.
      const g = p.grants.find((g) => g.scope !== "inference" && g.tenant !== undefined);
      if (g) Object.assign(given, { tenant: g.tenant, namespace: g.namespace ?? given.namespace });
    }
    const kind = given.kind === "pods" ? "pods" : "requests";
    const filter: AuditFilter = {
      kind,
      tenant: given.tenant,
      namespace: given.namespace,
      func: given.func,
      status: given.status,
      limit: 100,
    };
    let q: ReturnType<typeof auditQuery>;
    try {
      // Two values of one filter disagree on what was meant, as the API's own refuse.
      if (twice !== undefined) {
        throw new ValidationError(
          `Invalid audit filter: parameter "${twice}" given more than once`,
        );
      }
      if (given.kind !== undefined && given.kind !== "pods" && given.kind !== "requests") {
        throw new ValidationError(`Invalid kind "${given.kind}": requests or pods`);
      }
      const { kind: _kind, ...filters } = given; // the page's own parameter
      q = auditQuery({ ...filters, limit: given.limit ?? "100" });
      // What the API takes but the page would show as nothing, or pass over unsaid.
      if (q.limit === 0) {
        throw new ValidationError("Invalid limit 0: the page shows 1 or more rows");
      }
      if (kind === "pods" && q.status !== undefined) {
        throw new ValidationError("status filters calls only: pod changes have no status code");
      }
      authorize(p, "read", q.tenant, q.tenant === undefined ? undefined : q.namespace);
    } catch (err) {
      const e = toInferxError(err);
      if (e.code !== "invalid" && e.code !== "forbidden") throw err;
      // The page with the form as given, and why: corrected where it was typed (a tenant the
      // credential may not read, too).
      return c.html(
        AuditPage({ filter, kept: deps.audit !== undefined, error: e.message }),
        e.code === "forbidden" ? 403 : 400,
      );
    }
    filter.limit = q.limit ?? 100;
    if (!deps.audit) return c.html(AuditPage({ filter, kept: false }));
    const rq = await readableAudit(deps, p, q);
    return c.html(
      kind === "pods"
        ? AuditPage({ filter, kept: true, pods: rq ? await deps.audit.query("pods", rq) : [] })
        : AuditPage({
          filter,
          kept: true,
          requests: rq ? await deps.audit.query("requests", rq) : [],
        }),
    );
  });

  app.get("/me", (c) => {
    const p = c.var.principal;
    return c.json({
      id: p.id,
      anonymous: p.anonymous === true,
      auth_enabled: deps.auth.enabled,
      grants: p.grants,
      may: {
        read_cluster: allows(p, "read"),
        manage_keys: p.grants.some((g) => g.scope === "full"),
      },
    });
  });

  app.get("/events", async (c) => {
    const p = c.var.principal;
    requireCredentials(p, "follow the cluster");
    if (!p.grants.some((g) => g.scope !== "inference")) {
      throw new InferxError("forbidden", `${p.id} may not follow the cluster: it reads nothing`);
    }
    // A stream never ends by itself: the gateway's stop ends it (the page reconnects) rather
    // than wait for it as for a call under way.
    const stopping = deps.cache.stopping;
    if (stopping.aborted) throw stopping.reason;
    const ended = streams.take(p, events.listeners, deps.auth.enabled);
    const headers = c.req.raw.headers;
    const body = await eventStream(events, {
      visible: (ev: ClusterEvent) =>
        ev.kind === "node" ? allows(p, "read") : allows(p, "read", ev.tenant, ev.namespace),
      stillAllowed: async () => (await deps.auth.authenticate(headers)).id === p.id,
      signal: AbortSignal.any([c.req.raw.signal, stopping]),
      pingMs: opts.pingMs,
      onEnd: ended,
    }).catch((err) => {
      ended();
      throw err;
    });
    return c.body(body, 200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      "x-accel-buffering": "no",
    });
  });

  app.get("/static/:file", async (c) => {
    const a = await asset(c.req.param("file"));
    if (!a) throw new NotFoundError(`No dashboard file ${c.req.param("file")}`);
    const headers = { etag: a.etag, "cache-control": "no-cache" };
    if (c.req.header("if-none-match") === a.etag) return c.body(null, 304, headers);
    return c.body(a.body, 200, { ...headers, "content-type": a.type });
  });
  app.get("*", (c) => {
    // `/ui/` and `/ui/nodes/` as typed: the page without the slash.
    const url = new URL(c.req.url);
    if (url.pathname.endsWith("/")) {
      return c.redirect(url.pathname.replace(/\/+$/, "") + url.search, 308);
    }
    throw new NotFoundError(`No dashboard page ${url.pathname}`);
  });
  return app;
}

/** Functions `p` may read, with their pods; 401 for a caller who may read nothing. */
async function visibleFunctions(deps: RouteDeps, p: Principal): Promise<FuncRow[]> {
  requireCredentials(p, "list functions");
  const [funcs, pods] = await Promise.all([deps.meta.list("function"), deps.meta.list("pod")]);
  const byFunc = new Map<string, PodInfo[]>();
  for (const r of pods.items) {
    const pod = decodePod(r.value);
    const id = funcId(pod.tenant, pod.namespace, pod.func);
    byFunc.set(id, [...(byFunc.get(id) ?? []), pod]);
  }
  const rows: FuncRow[] = [];
  for (const r of funcs.items) {
    if (!allows(p, "read", r.tenant, r.namespace)) continue;
    const o = decodeStoredUserObject(r.value, r.revision);
    if (o.type !== "function") continue;
    rows.push({ ...o, pods: byFunc.get(funcId(o.tenant, o.namespace, o.name)) ?? [] });
  }
  return rows.sort((a, b) =>
    funcId(a.tenant, a.namespace, a.name).localeCompare(funcId(b.tenant, b.namespace, b.name))
  );
}

/** Pods `p` may read; 401 for a caller who may read nothing. */
async function visiblePods(deps: RouteDeps, p: Principal): Promise<PodInfo[]> {
  requireCredentials(p, "list pods");
  const { items } = await deps.meta.list("pod");
  return items.filter((r) => allows(p, "read", r.tenant, r.namespace)).map((r) =>
    decodePod(r.value)
  );
}

/** Pods of function `id` (`tenant/namespace/name`), as `GET /pods/...` authorizes them. */
async function podsOf(deps: RouteDeps, p: Principal, id: string): Promise<PodInfo[]> {
  const [tenant, namespace, name] = id.split("/");
  if (!tenant || !namespace || !name) {
    throw new NotFoundError(`No function "${id}": expected tenant/namespace/name`);
  }
  authorize(p, "read", tenant, namespace);
  const { items } = await deps.meta.list("pod", tenant, namespace);
  return items.map((r) => decodePod(r.value)).filter((pod) => pod.func === name);
}
