/**
 * Rollouts of function versions (docs/traffic.md):
 * `GET /rollout/{tenant}/{namespace}/{function}` shows the versions kept and
 * the share of calls each takes; `POST .../promote` makes the newest version
 * take every call (and the stable one); `POST .../rollback` makes an older
 * version the function's again (the stable one; under a `traffic` split, the
 * one with the largest share), its warm pods serving at once. Both are
 * updates through the state service, retried when the function changed
 * meanwhile, but not past a new version: `?version=N` names the newest
 * version the caller saw (else the one there when the request came), and
 * another one there answers 409.
 *
 * @module
 */
import { Hono } from "hono";
import { ConflictError, NotFoundError, ValidationError } from "../../common/errors.ts";
import { updateWithRetry } from "../../common/retry.ts";
import { funcId } from "../../model/keys.ts";
import {
  decodeStoredUserObject,
  type FuncPolicy,
  functionSpecToJson,
  resolvePolicy,
} from "../../model/schemas.ts";
import { type FunctionObject, rolloutVersions, trafficSplit } from "../../model/versions.ts";
import type { MetaClient, MetaRecord } from "../../rpc/types.ts";
import { authorize } from "../auth.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { intParam, queryOnce, queryOnly } from "./_query.ts";

const ACTIONS = new Set(["promote", "rollback"]);

/** The rollout routes, mounted at `/rollout`. */
export function rolloutRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.get("/:tenant/:namespace/:name", async (c) => {
    const { tenant, namespace, name } = c.req.param();
    authorize(c.var.principal, "read", tenant, namespace);
    queryOnce("rollout status", c.req.url, []);
    const rec = await deps.meta.get({ type: "function", tenant, namespace, name });
    if (!rec) throw new NotFoundError(`Function ${tenant}/${namespace}/${name} does not exist`);
    return c.json(await rolloutJson(deps.meta, rec));
  });
  app.post("/:tenant/:namespace/:name/:action", async (c) => {
    const { tenant, namespace, name, action } = c.req.param();
    authorize(c.var.principal, "write", tenant, namespace);
    if (!ACTIONS.has(action)) {
      throw new ValidationError(
        `Invalid rollout action "${action}": use promote or rollback`,
        "action",
      );
    }
    const query = queryOnly("rollout", c.req.raw, ["version"]);
    const asked = intParam(query.version, "version", 1, Number.MAX_SAFE_INTEGER);
    const ref = { type: "function" as const, tenant, namespace, name };
    const id = `${tenant}/${namespace}/${name}`;
    // Nothing to roll out is answered 409 at once: the update below would take it for a lost
    // compare-and-swap (the same code) and try again for a second.
    const before = await deps.meta.get(ref);
    if (!before) throw new NotFoundError(`Function ${id} does not exist`);
    const f = decodeStoredUserObject(before.value, before.revision) as FunctionObject;
    // The newest version the caller saw (`?version=`), else the one there now: a version
    // deployed meanwhile is not promoted, nor rolled back from, unseen.
    const seen = asked ?? f.version;
    const moved = (now: number) =>
      new ConflictError(
        `Cannot ${action} ${id}: its newest version is ${now}, not ${seen}` +
          `${asked === undefined ? " (deployed meanwhile)" : ""}; look again ` +
          `(GET /rollout/${id}) and send ?version=${now} to ${action} with it`,
        { version: now },
      );
    if (f.version !== seen) throw moved(f.version);
    rolloutVersions(f, action as "promote" | "rollback", await policyOf(deps.meta, f));
    let newer: number | undefined;
    const rec = await updateWithRetry(deps.meta, ref, (cur) => {
      if (!cur) throw new NotFoundError(`Function ${id} does not exist`);
      const f = decodeStoredUserObject(cur.value, cur.revision) as FunctionObject;
      // Not thrown from here: a conflict would be taken for a lost compare-and-swap and tried again.
      if (f.version !== seen) return void (newer = f.version);
      // The current spec, unchanged: the state service does the rollout.
      return { spec: functionSpecToJson(f.spec), rollout: action };
    });
    if (newer !== undefined) throw moved(newer);
    return c.json(await rolloutJson(deps.meta, rec!));
  });
  return app;
}

/** A function's versions and traffic split, as the API shows them. */
async function rolloutJson(meta: MetaClient, rec: MetaRecord) {
  const f = decodeStoredUserObject(rec.value, rec.revision) as FunctionObject;
  const policy = await policyOf(meta, f);
  return {
    function: funcId(f.tenant, f.namespace, f.name),
    revision: f.revision,
    version: f.version,
    stable_version: f.stableVersion ?? f.version,
    last_version: Math.max(f.version, f.lastVersion ?? 0),
    kept_versions: [f.version, ...(f.olderVersions ?? []).map((o) => o.version)],
    traffic: trafficSplit(f, policy),
  };
}

async function policyOf(meta: MetaClient, f: FunctionObject): Promise<FuncPolicy> {
  const ref = f.spec.policy;
  let linked: FuncPolicy | undefined;
  if (ref?.kind === "link") {
    const rec = await meta.get({
      type: "funcpolicy",
      tenant: f.tenant,
      namespace: f.namespace,
      name: ref.name,
    });
    const o = rec && decodeStoredUserObject(rec.value, rec.revision);
    if (o?.type === "funcpolicy") linked = o.spec;
  }
  return resolvePolicy(f.spec, () => linked);
}
