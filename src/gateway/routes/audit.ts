/**
 * The audit: `GET /audit/requests` and `GET /audit/pods`, newest first,
 * filtered by `tenant`, `namespace`, `func`, `since` and `until` (ms) and
 * `limit`, and request rows by `status` (`503`, or a class: `5xx`); a page
 * that may have more after it says `next_until`, the `until` of the next
 * (a page never splits a millisecond's rows, even where one millisecond holds
 * more than `limit`: then it comes whole); `GET /audit/stats`
 * for the log's health and the token usage of OpenAI-style calls by
 * function version and by tenant (`since`, default the last hour; `tenant`
 * to see one tenant's, with a grant on that tenant).
 *
 * @module
 */
import { Hono } from "hono";
import { InferxError, NotFoundError, ValidationError } from "../../common/errors.ts";
import type { AuditQuery } from "../../audit/types.ts";
import { SYSTEM } from "../../model/keys.ts";
import { storedCreatedAt } from "../../model/schemas.ts";
import type { ObjectRef } from "../../rpc/types.ts";
import { allows, authorize, type Principal, readReach, requireCredentials } from "../auth.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { intParam, knownParams, queryOnce } from "./_query.ts";

const HOUR_MS = 3_600_000;

/** The audit routes, mounted at `/audit`. */
export function auditRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.get("/:kind", async (c) => {
    // Who may read none of it is told so (401) before its query is looked at.
    requireCredentials(c.var.principal, "read the audit log");
    const kind = c.req.param("kind");
    if (kind === "stats") {
      const given = queryOnce("audit query", c.req.url, AUDIT_PARAMS);
      for (const k of Object.keys(given)) {
        if (k !== "tenant" && k !== "since") {
          throw new ValidationError(
            `Invalid audit query: /audit/stats takes tenant and since, not "${k}"`,
            k,
          );
        }
      }
      const { tenant, since: asked } = auditQuery(given);
      authorize(c.var.principal, "read", tenant);
      if (!deps.audit) throw new InferxError("unsupported", "This gateway keeps no audit log");
      const since = asked ?? Date.now() - HOUR_MS;
      const readable = await readableAudit(deps, c.var.principal, { tenant, since });
      // The log's health must show while its backend is down: usage then says why it is missing.
      const usage = readable
        ? await deps.audit.usage({ tenant, since: readable.since! })
          .catch((err: Error) => ({ error: err.message }))
        : { since, functions: [], tenants: [] };
      return c.json({ ...bufferStats(deps, c.var.principal), usage });
    }
    if (kind !== "requests" && kind !== "pods") {
      throw new NotFoundError(
        `No audit of "${kind}": use /audit/requests, /audit/pods or /audit/stats`,
      );
    }
    const q = auditQuery(queryOnce("audit query", c.req.url, AUDIT_PARAMS));
    if (kind === "pods" && q.status) {
      throw new ValidationError("Invalid audit query: status filters request rows only", "status");
    }
    authorize(c.var.principal, "read", q.tenant, q.tenant === undefined ? undefined : q.namespace);
    if (!deps.audit) throw new InferxError("unsupported", "This gateway keeps no audit log");
    const readable = await readableAudit(deps, c.var.principal, q);
    if (!readable) return c.json({ items: [], stats: bufferStats(deps, c.var.principal) });
    const query = (q: AuditQuery): Promise<{ time: number }[]> =>
      kind === "requests" ? deps.audit!.query("requests", q) : deps.audit!.query("pods", q);
    // One row more than asked: whether another page follows, and where it begins.
    const rows = await query({ ...readable, limit: q.limit! + 1 });
    let { items, nextUntil } = pageOf(rows, q.limit!);
    const ms = items.at(-1)?.time;
    if (nextUntil === ms && items.length && items[0].time === ms && ms !== undefined) {
      // One millisecond holds more rows than a page: it comes whole (a page never splits one).
      items = await query({ ...readable, since: ms, until: ms + 1, limit: MAX_LIMIT });
      nextUntil = ms;
    }
    return c.json({
      items,
      ...(nextUntil === undefined ? {} : { next_until: nextUntil }),
      stats: bufferStats(deps, c.var.principal),
    });
  });
  return app;
}

/**
 * Query `q` as reader `p` may run it: from the creation of the tenant or
 * namespace its grants stop at ({@linkcode auditFloor}); undefined when it
 * may see nothing there.
 */
export async function readableAudit(
  deps: RouteDeps,
  p: Principal,
  q: AuditQuery,
): Promise<AuditQuery | undefined> {
  const floor = await auditFloor(deps, p, q.tenant, q.namespace);
  if (floor === undefined) return undefined;
  return floor > (q.since ?? 0) ? { ...q, since: floor } : q;
}

/**
 * The first millisecond of the audit of `tenant` (and `namespace`) that `p`
 * may read: for a reader whose grants stop at the tenant or the namespace,
 * when that was created, so that one made again under a deleted one's name
 * does not show the deleted one's rows (nor its workers' output); 0 for a
 * reader of the whole cluster and for objects stored before their creation
 * time was kept; undefined when the tenant or namespace is gone (nothing to
 * show but to such a reader).
 */
async function auditFloor(
  deps: RouteDeps,
  p: Principal,
  tenant?: string,
  namespace?: string,
): Promise<number | undefined> {
  const reach = tenant === undefined ? "cluster" : readReach(p, tenant, namespace);
  if (reach === "cluster" || reach === undefined) return 0;
  const created = async (ref: ObjectRef) => {
    const r = await deps.meta.get(ref);
    return r && (storedCreatedAt(r.value) ?? 0);
  };
  const t = await created({ type: "tenant", tenant: SYSTEM, namespace: SYSTEM, name: tenant! });
  if (t === undefined || reach === "tenant") return t;
  const n = await created({
    type: "namespace",
    tenant: tenant!,
    namespace: SYSTEM,
    name: namespace!,
  });
  return n === undefined ? undefined : Math.max(t, n);
}

/**
 * The first `limit` of `rows` (newest first, one more than a page when more
 * follow) and the `until` of the next page: the page ends at a millisecond's
 * boundary, the rows of the millisecond it would split going to the next
 * (unless they would be the whole page: then `nextUntil` is that
 * millisecond, whose rows the caller reads whole).
 */
export function pageOf<R extends { time: number }>(
  rows: R[],
  limit: number,
): { items: R[]; nextUntil?: number } {
  if (rows.length <= limit || limit === 0) return { items: rows.slice(0, limit) };
  let items = rows.slice(0, limit);
  const last = items[limit - 1].time;
  if (rows[limit].time !== last) return { items, nextUntil: last };
  const whole = items.filter((r) => r.time !== last);
  if (whole.length === 0) return { items, nextUntil: last }; // one millisecond past the limit
  items = whole;
  return { items, nextUntil: last + 1 };
}

/**
 * The audit buffer's figures, which are this gateway's (one member's, in a
 * group: named). Its counts are of every tenant's calls: only a caller that
 * may read the whole cluster sees them, others the backend and its health.
 */
function bufferStats(deps: RouteDeps, p: Principal) {
  const { backend, healthy, ...counts } = deps.audit!.stats();
  const all = allows(p, "read");
  return { gateway: deps.gatewayId, backend, healthy, ...(all ? counts : {}) };
}

/** The most rows a page holds (and one millisecond's rows, given whole). */
const MAX_LIMIT = 10_000;

/** 9999-12-31T23:59:59.999Z. */
const LAST_MS = 253_402_300_799_999;
const AUDIT_PARAMS = ["tenant", "namespace", "func", "since", "until", "limit", "status"];

/** Filters that an empty value leaves out, as a form sends it (an empty number is refused). */
const TEXT_FILTERS = new Set(["tenant", "namespace", "func", "status"]);

/**
 * An audit query from a request's query parameters; a clear 400 for bad ones
 * and for a name it does not take (a typo would answer rows unfiltered). An
 * empty filter is no filter (it matched nothing).
 */
export function auditQuery(raw: Record<string, string | undefined>): AuditQuery {
  knownParams("audit query", raw, AUDIT_PARAMS);
  const query: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (v !== "" || !TEXT_FILTERS.has(k)) query[k] = v;
  }
  const { tenant, namespace, func, since, until, limit, status } = query;
  if ((namespace || func) && !tenant) {
    throw new ValidationError("Invalid audit query: namespace and func need tenant", "tenant");
  }
  return {
    tenant,
    namespace,
    func,
    status: statusRange(status),
    // To the end of year 9999: what a timestamp of either store holds (PostgreSQL refused later).
    since: intParam(since, "since", 0, LAST_MS),
    until: intParam(until, "until", 0, LAST_MS),
    limit: intParam(limit, "limit", 0, MAX_LIMIT) ?? 100,
  };
}

/** `503` or a class such as `5xx`, as an inclusive range. */
function statusRange(raw: string | undefined): AuditQuery["status"] {
  if (raw === undefined || raw === "") return undefined;
  const m = /^([1-5])(xx|\d\d)$/i.exec(raw);
  if (!m) {
    throw new ValidationError(
      `Invalid status "${raw}": a status code (503) or a class (5xx)`,
      "status",
    );
  }
  if (m[2].toLowerCase() === "xx") return { min: Number(m[1]) * 100, max: Number(m[1]) * 100 + 99 };
  return { min: Number(raw), max: Number(raw) };
}
