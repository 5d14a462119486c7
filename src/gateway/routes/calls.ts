/**
 * Asynchronous calls (accepted with `Prefer: respond-async`):
 * `GET /calls/{id}` (status, timings, attempts, and the result once done),
 * `DELETE /calls/{id}` (cancel), `GET /calls?func=&status=&limit=` (the
 * caller's calls, newest first), and `GET|POST
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
import { CALL_STATUSES, type CallRecord, decodeCall, parseCallId } from "../../model/call.ts";
import { funcId, isValidName, SYSTEM } from "../../model/keys.ts";
import type { MetaRecord } from "../../rpc/types.ts";
import { allows, authorize, type Principal } from "../auth.ts";
import { tenantSecret } from "../calls/callback.ts";
import { callSummary, callView } from "../calls/view.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { intParam } from "./_query.ts";

const MAX_LIST = 1000;

/** The call routes, mounted at `/calls`. */
export function callRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  const queue = deps.calls;

  app.get("/", async (c) => {
    const p = c.var.principal;
    if (p.anonymous) authorize(p, "read");
    const func = c.req.query("func");
    const status = c.req.query("status");
    const limit = intParam(c.req.query("limit"), "limit", 1, MAX_LIST) ?? 100;
    if (status !== undefined && !(CALL_STATUSES as readonly string[]).includes(status)) {
      throw new ValidationError(
        `Invalid status "${status}": one of ${CALL_STATUSES.join(", ")}`,
        "status",
      );
    }
    let records: MetaRecord[];
    if (func !== undefined) {
      const [tenant, namespace, name, ...rest] = func.split("/");
      if (!tenant || !namespace || !name || rest.length) {
        throw new ValidationError(`Invalid func "${func}": TENANT/NAMESPACE/NAME`, "func");
      }
      authorize(p, "inference", tenant, namespace);
      records = (await deps.meta.list("call", tenant, namespace)).items;
    } else records = await reachable(deps, p);
    const calls: CallRecord[] = [];
    for (const r of records) {
      const call = decodeCall(r.value);
      if (func !== undefined && funcId(call.tenant, call.namespace, call.func) !== func) continue;
      if (status !== undefined && call.status !== status) continue;
      if (!mayList(p, call)) continue;
      calls.push(call);
    }
    calls.sort((a, b) => b.acceptedAt - a.acceptedAt);
    return c.json({ items: calls.slice(0, limit).map(callSummary), count: calls.length });
  });

  /** The tenant a secret route names, once the caller may manage it and it exists. */
  const secretTenant = async (c: Context<GatewayEnv>) => {
    const tenant = c.req.param("tenant")!;
    authorize(c.var.principal, "write", tenant);
    const ref = { type: "tenant" as const, tenant: SYSTEM, namespace: SYSTEM, name: tenant };
    if (!isValidName(tenant) || !await deps.meta.get(ref)) {
      throw new NotFoundError(`Tenant ${tenant} does not exist`);
    }
    return tenant;
  };
  app.get("/callback-secret/:tenant", async (c) => {
    const tenant = await secretTenant(c);
    return c.json({ tenant, secret: await tenantSecret(deps.meta, tenant) });
  });
  app.post("/callback-secret/:tenant", async (c) => {
    const tenant = await secretTenant(c);
    return c.json({ tenant, secret: await tenantSecret(deps.meta, tenant, { rotate: true }) });
  });

  app.get("/:id", async (c) => {
    const id = c.req.param("id");
    const { tenant, namespace } = parseCallId(id);
    authorize(c.var.principal, "inference", tenant, namespace);
    const call = await queue.view(id);
    if (!call) throw new NotFoundError(`Call ${id} does not exist (or its result has expired)`);
    return c.json(callView(call.rec, call.result));
  });
  app.delete("/:id", async (c) => {
    const id = c.req.param("id");
    const { tenant, namespace } = parseCallId(id);
    authorize(c.var.principal, "inference", tenant, namespace);
    return c.json(callView(await queue.cancel(id)));
  });
  return app;
}

/** A caller's own calls; with read access to a namespace, every call in it. */
function mayList(p: Principal, call: CallRecord): boolean {
  if (!allows(p, "inference", call.tenant, call.namespace)) return false;
  return call.principal === p.id || allows(p, "read", call.tenant, call.namespace);
}

/** The stored calls of every namespace `p` reaches (each grant's reach listed once). */
async function reachable(deps: RouteDeps, p: Principal): Promise<MetaRecord[]> {
  if (p.grants.some((g) => g.tenant === undefined)) return (await deps.meta.list("call")).items;
  const scopes = new Map<string, [string, string | undefined]>();
  for (const g of p.grants) {
    if (g.tenant !== undefined) {
      scopes.set(`${g.tenant}/${g.namespace ?? ""}`, [g.tenant, g.namespace]);
    }
  }
  const out: MetaRecord[] = [];
  for (const [tenant, namespace] of scopes.values()) {
    if (namespace !== undefined && scopes.has(`${tenant}/`)) continue; // the tenant's list has it
    out.push(...(await deps.meta.list("call", tenant, namespace)).items);
  }
  return out;
}
