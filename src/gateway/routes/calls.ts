/**
 * Asynchronous calls (accepted with `Prefer: respond-async`):
 * `GET /calls/{id}` (status, timings, attempts, and the result once done),
 * `DELETE /calls/{id}` (cancel), `GET /calls?func=&status=&limit=&until=`
 * (the caller's calls, newest first, a page at a time), and `GET|POST
 * /calls/callback-secret/{tenant}` (a tenant administrator reads or
 * rotates the secret that signs the tenant's callbacks). A call is visible
 * to the credentials that may call its function's namespace; listing also
 * needs credentials, and shows a caller's own calls (or, with read access to
 * a namespace, every call in it).
 *
 * @module
 */
import { type Context, Hono } from "hono";
import { NotFoundError, ValidationError } from "../../common/errors.ts";
import { CALL_STATUSES, callId, FINAL_STATUSES, parseCallId } from "../../model/call.ts";
import { isValidName, SYSTEM } from "../../model/keys.ts";
import { allows, authorize, type Principal, requireCredentials } from "../auth.ts";
import { tenantSecret } from "../calls/callback.ts";
import type { ListedCall } from "../calls/queue.ts";
import { callSummary, callView, callViewText } from "../calls/view.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { intParam, queryOnce, queryOnly } from "./_query.ts";
import { nextTurn } from "../../common/clock.ts";

const MAX_LIST = 1000;

/** The call routes, mounted at `/calls`. */
export function callRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  const queue = deps.calls;

  app.get("/", async (c) => {
    const p = c.var.principal;
    requireCredentials(p, "list calls");
    const q = queryOnce("call list", c.req.url, ["func", "status", "limit", "until"]);
    const { func, status } = q;
    const limit = intParam(q.limit, "limit", 1, MAX_LIST) ?? 100;
    // Calls accepted before this (ms since the epoch, exclusive): the next page's `next_until`.
    const until = intParam(q.until, "until", 0, Number.MAX_SAFE_INTEGER);
    if (status !== undefined && !(CALL_STATUSES as readonly string[]).includes(status)) {
      throw new ValidationError(
        `Invalid status "${status}": one of ${CALL_STATUSES.join(", ")}`,
        "status",
      );
    }
    if (func !== undefined) {
      const [tenant, namespace, name, ...rest] = func.split("/");
      if (!tenant || !namespace || !name || rest.length) {
        throw new ValidationError(`Invalid func "${func}": TENANT/NAMESPACE/NAME`, "func");
      }
      authorize(p, "inference", tenant, namespace);
    }
    // From what the queue keeps of every call, not from the records (a day of calls may be
    // millions): only the page's records are read. One pass over the index, a few ms for
    // 10,000 calls, the page kept as it goes (the newest `limit`, not every match sorted), and
    // the event loop let go between slices of it: calls go on being proxied meanwhile. What
    // the caller may see is decided once per namespace.
    const now = Date.now();
    const reach = new Map<string, Reach>();
    const matches: ListedCall[] = [];
    let seen = 0;
    for (const e of queue.listed()) {
      if (++seen % SLICE === 0) await nextTurn();
      if (func !== undefined && e.func !== func) continue;
      if (status !== undefined && e.status !== status) continue;
      if (until !== undefined && e.acceptedAt >= until) continue;
      if (FINAL_STATUSES.has(e.status) && e.expiresAt <= now) continue; // past its retention
      const where = `${e.ref.tenant}/${e.ref.namespace}`;
      let r = reach.get(where);
      if (!r) reach.set(where, r = reachOf(p, e.ref.tenant, e.ref.namespace));
      if (r === "none" || (r === "own" && e.principal !== p.id)) continue;
      matches.push(e);
    }
    // Newest last, mostly (the index keeps them as they came): read from the end, all but the
    // first `limit` are passed over at one comparison each.
    const newest = new Newest(limit);
    for (let i = matches.length - 1; i >= 0; i--) {
      if (i % SLICE === 0) await nextTurn();
      newest.add(matches[i]);
    }
    const count = matches.length;
    const kept = newest.sorted();
    // More are older: the page takes the whole of its oldest millisecond (a page never splits
    // one, so `next_until` leaves none out), and says where the next page ends.
    let nextUntil: number | undefined;
    if (kept.length && count > kept.length) {
      const oldest = kept[kept.length - 1].acceptedAt;
      const ids = new Set(kept.map(callIdOf));
      for (const e of matches) {
        if (e.acceptedAt === oldest && !ids.has(callIdOf(e))) (ids.add(callIdOf(e)), kept.push(e));
      }
      kept.sort(newestFirst);
      nextUntil = oldest;
    }
    const page = await Promise.all(kept.map((e) => queue.get(callIdOf(e))));
    // The records as they are now: one that moved on since this gateway's index heard of it
    // (its watch behind a burst) is left out of a page filtered by status.
    const items = page.filter((c) =>
      c !== undefined && (status === undefined || c.status === status)
    )
      .map((c) => callSummary(c!));
    return c.json({ items, count, ...(nextUntil === undefined ? {} : { next_until: nextUntil }) });
  });

  /** The tenant a secret route names, once the caller may manage it and it exists. */
  const secretTenant = async (c: Context<GatewayEnv>) => {
    const tenant = c.req.param("tenant")!;
    // Read or replaced alike by a tenant's administrators: a read is not told it "writes".
    requireCredentials(c.var.principal, "manage a tenant's callback secret");
    authorize(c.var.principal, "write", tenant);
    const ref = { type: "tenant" as const, tenant: SYSTEM, namespace: SYSTEM, name: tenant };
    if (!isValidName(tenant) || !await deps.meta.get(ref)) {
      throw new NotFoundError(`Tenant ${tenant} does not exist`);
    }
    return tenant;
  };
  app.get("/callback-secret/:tenant", async (c) => {
    const tenant = await secretTenant(c);
    queryOnce("secret read", c.req.url, []);
    return c.json({ tenant, secret: await tenantSecret(deps.meta, tenant) });
  });
  app.post("/callback-secret/:tenant", async (c) => {
    const tenant = await secretTenant(c);
    queryOnly("secret rotation", c.req.raw, []);
    return c.json({ tenant, secret: await tenantSecret(deps.meta, tenant, { rotate: true }) });
  });

  app.get("/:id", async (c) => {
    const id = c.req.param("id");
    const { tenant, namespace } = parseCallId(id);
    authorize(c.var.principal, "inference", tenant, namespace);
    queryOnce("call read", c.req.url, []);
    const call = await queue.view(id);
    if (!call) throw new NotFoundError(`Call ${id} does not exist (or its result has expired)`);
    return c.body(await callViewText(call.rec, call.result, deps.jsonProbe), 200, JSON_TYPE);
  });
  app.delete("/:id", async (c) => {
    const id = c.req.param("id");
    const { tenant, namespace } = parseCallId(id);
    authorize(c.var.principal, "inference", tenant, namespace);
    queryOnly("call cancellation", c.req.raw, []);
    return c.json(callView(await queue.cancel(id)));
  });
  return app;
}

/** A JSON answer's head. */
const JSON_TYPE = { "content-type": "application/json" };

/** Entries of the index looked at between two turns of the event loop. */
const SLICE = 5000;

/** Whether `a` was accepted after `b` (newer first; in one millisecond, by acceptance). */
const newer = (a: ListedCall, b: ListedCall) =>
  a.acceptedAt > b.acceptedAt || (a.acceptedAt === b.acceptedAt && a.seq > b.seq);

/** Sorts calls newest first. */
const newestFirst = (a: ListedCall, b: ListedCall) => newer(a, b) ? -1 : newer(b, a) ? 1 : 0;

/**
 * The newest `limit` of the calls added, kept in a heap whose root is the
 * oldest of them: each call costs at most a comparison and a sift.
 */
export class Newest {
  readonly #limit: number;
  readonly #heap: ListedCall[] = [];

  constructor(limit: number) {
    this.#limit = limit;
  }

  add(e: ListedCall): void {
    const h = this.#heap;
    if (h.length < this.#limit) {
      // Up from the end to its place: its parents older than it come down.
      let i = h.length;
      h.push(e);
      while (i > 0) {
        const up = (i - 1) >> 1;
        if (!newer(h[up], e)) break;
        h[i] = h[up];
        i = up;
      }
      h[i] = e;
      return;
    }
    if (!this.#limit || !newer(e, h[0])) return;
    // In place of the oldest kept: down to its place, newer children coming up.
    const n = h.length;
    let i = 0;
    while (true) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && newer(h[l], h[r]) ? r : l; // the older child
      if (!newer(e, h[c])) break;
      h[i] = h[c];
      i = c;
    }
    h[i] = e;
  }

  /** The calls kept, newest first, each once (one seen twice, moved while the list ran). */
  sorted(): ListedCall[] {
    const out: ListedCall[] = [];
    const ids = new Set<string>();
    for (const e of [...this.#heap].sort(newestFirst)) {
      const id = callIdOf(e);
      if (!ids.has(id)) (ids.add(id), out.push(e));
    }
    return out;
  }
}

/** Which calls of a namespace a caller lists: none, its own, or all (it may read the namespace). */
type Reach = "none" | "own" | "all";

function reachOf(p: Principal, tenant: string, namespace: string): Reach {
  if (!allows(p, "inference", tenant, namespace)) return "none";
  return allows(p, "read", tenant, namespace) ? "all" : "own";
}

/** The id of a listed call (as `callId` makes it from its record's place). */
function callIdOf(e: ListedCall): string {
  return callId(e.ref.tenant, e.ref.namespace, e.ref.name);
}
