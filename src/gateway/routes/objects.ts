/**
 * Objects and the cluster's state: `PUT|POST /object/[?dryRun=1]` (create,
 * update at a revision; an update that changes nothing answers
 * `"unchanged": true`; a dry run writes nothing),
 * `GET|DELETE /object/{type}/{tenant}/{namespace}/{name}`,
 * `GET /objects/{type}[/{tenant}/{namespace}]`, `GET /nodes`,
 * `GET /pods/{tenant}/{namespace}/{function}[/{pod}/log]`,
 * `DELETE /pods/{tenant}/{namespace}/{function}/{pod}` (terminate, through the
 * scheduler). Every change goes through the state service, which validates it.
 *
 * @module
 */
import { Hono } from "hono";
import { InferxError, NotFoundError, ValidationError } from "../../common/errors.ts";
import { decodeNode, decodePod, type PodInfo } from "../../model/cluster.ts";
import { isUserType, isValidName, type UserType } from "../../model/keys.ts";
import {
  decodeStoredUserObject,
  MAX_USER_OBJECT,
  strayEnvelopeKey,
  userObjectToJson,
} from "../../model/schemas.ts";
import { decodeSnapshot } from "../../model/snapshot.ts";
import type { MetaClient, MetaRecord, WriteResult } from "../../rpc/types.ts";
import { type Action, allows, authorize, type Principal, requireCredentials } from "../auth.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { withoutStatus } from "../json_probe.ts";
import { readObjectJson } from "./_json.ts";
import { intParam, queryOnce, queryOnly } from "./_query.ts";

/** The largest body of an object write (bytes). */
export const MAX_OBJECT_BODY = 4 * 1024 * 1024;

/** The object, node and pod routes, mounted at `/`. */
export function objectRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  // A stored object is 1 MiB at most; its body, however laid out, gets four times that. One past
  // 64 KiB is parsed in the gateway's JSON thread, and what the event loop parses of it is its
  // text without whitespace, refused past 1 MiB.
  const limit = Math.min(deps.bodyLimit, MAX_OBJECT_BODY);
  // The writer's key is checked again once the body is in: it may have been revoked meanwhile.
  const readObject = (req: Request, p: Principal) =>
    readObjectJson(
      req,
      limit,
      MAX_USER_OBJECT,
      deps.jsonProbe,
      () => deps.auth.stillHolds(p),
      deps.bodyBudget,
    );
  app.put("/object/", async (c) => {
    // Refused before the body is read: it is not parsed for a caller who may write nothing.
    requireCredentials(c.var.principal, "write objects");
    const dryRun = dryRunParam(queryOnce("object write", c.req.url, ["dryRun"]).dryRun);
    const input = objectInput(await readObject(c.req.raw, c.var.principal));
    authorizeObject(c.var.principal, "write", input);
    const rec = await deps.meta.create(input, { dryRun });
    return c.json(writeJson(rec), dryRun ? 200 : 201);
  });
  app.post("/object/", async (c) => {
    requireCredentials(c.var.principal, "write objects");
    const dryRun = dryRunParam(queryOnce("object write", c.req.url, ["dryRun"]).dryRun);
    const input = objectInput(await readObject(c.req.raw, c.var.principal));
    if (input.revision === undefined) {
      throw new ValidationError(
        "Invalid update: revision is required (the revision you read, for compare-and-swap)",
        "revision",
      );
    }
    authorizeObject(c.var.principal, "write", input);
    return c.json(writeJson(await deps.meta.update(input, { dryRun })));
  });
  // Who may read or write no object is told so (401) before the type is looked at.
  app.get("/object/:type/:tenant/:namespace/:name", async (c) => {
    requireCredentials(c.var.principal, "read objects");
    const { tenant, namespace, name } = c.req.param();
    const type = userType(c.req.param("type"));
    authorizeObject(c.var.principal, "read", { type, tenant, namespace, name });
    queryOnce("object read", c.req.url, []);
    const rec = await deps.meta.get({ type, tenant, namespace, name });
    if (!rec) throw new NotFoundError(`${type} ${tenant}/${namespace}/${name} does not exist`);
    return c.json(recordJson(rec));
  });
  app.delete("/object/:type/:tenant/:namespace/:name", async (c) => {
    requireCredentials(c.var.principal, "delete objects");
    const { tenant, namespace, name } = c.req.param();
    const type = userType(c.req.param("type"));
    authorizeObject(c.var.principal, "write", { type, tenant, namespace, name });
    const { revision: raw } = queryOnly("object delete", c.req.raw, ["revision"]);
    const revision = intParam(raw, "revision", 1, Number.MAX_SAFE_INTEGER);
    const at = await deps.meta.delete({ type, tenant, namespace, name }, revision);
    return c.json({ deleted: { type, tenant, namespace, name }, revision: at });
  });
  app.get("/objects/:type/:tenant/:namespace", async (c) => {
    const p = c.var.principal;
    requireCredentials(p, "list objects");
    const { tenant, namespace } = c.req.param();
    const type = userType(c.req.param("type"));
    if (type === "function" || type === "funcpolicy") authorize(p, "read", tenant, namespace);
    else if (
      !p.grants.some((g) => g.scope !== "inference" && (g.tenant ?? tenant) === tenant)
    ) {
      // Namespaces (and tenants) of a tenant: whoever reads anything in it sees what it may.
      authorize(p, "read", tenant);
    }
    queryOnce(`${type} list`, c.req.url, []);
    const { items, revision } = await deps.meta.list(type, tenant, namespace);
    return c.json({ items: items.filter((r) => mayRead(p, r)).map(recordJson), revision });
  });
  app.get("/objects/:type", async (c) => {
    const p = c.var.principal;
    requireCredentials(p, "list objects");
    const type = userType(c.req.param("type"));
    queryOnce(`${type} list`, c.req.url, []);
    const { items, revision } = await deps.meta.list(type);
    return c.json({ items: items.filter((r) => mayRead(p, r)).map(recordJson), revision });
  });
  app.get("/nodes", async (c) => {
    authorize(c.var.principal, "read");
    queryOnce("node list", c.req.url, []);
    const { items } = await deps.meta.list("node");
    return c.json(items.map((r) => decodeNode(r.value)));
  });
  app.get("/snapshots", async (c) => {
    const p = c.var.principal;
    requireCredentials(p, "list snapshots");
    const { tenant, namespace, func, node } = queryOnce("snapshot list", c.req.url, [
      "tenant",
      "namespace",
      "func",
      "node",
    ]);
    // An empty filter is none (as a form sends it); a namespace narrows the list only with its tenant.
    const { items } = await deps.meta.list(
      "snapshot",
      tenant || undefined,
      (tenant && namespace) || undefined,
    );
    return c.json({
      items: items.map((r) => decodeSnapshot(r.value)).filter((s) =>
        allows(p, "read", s.tenant, s.namespace) && (!func || s.func === func) &&
        (!node || s.node === node) && (!namespace || s.namespace === namespace)
      ),
    });
  });
  app.get("/nodes/:node/snapshots", async (c) => {
    authorize(c.var.principal, "read");
    const node = c.req.param("node");
    queryOnce("snapshot list", c.req.url, []);
    const { items } = await deps.meta.list("snapshot");
    const snapshots = items.map((r) => decodeSnapshot(r.value)).filter((s) => s.node === node);
    const ref = { type: "node" as const, tenant: "system", namespace: "system", name: node };
    if (!snapshots.length && !await deps.meta.get(ref)) {
      throw new NotFoundError(`Node ${node} does not exist`);
    }
    return c.json({ items: snapshots });
  });
  app.get("/pods/:tenant/:namespace/:func", async (c) => {
    const { tenant, namespace, func } = c.req.param();
    authorize(c.var.principal, "read", tenant, namespace);
    queryOnce("pod list", c.req.url, []);
    const { items } = await deps.meta.list("pod", tenant, namespace);
    const pods = items.map((r) => decodePod(r.value)).filter((p) => p.func === func);
    // A misspelt name is not "no pods" (a deleted function's pods still ending are listed).
    if (!pods.length && !await deps.meta.get({ type: "function", tenant, namespace, name: func })) {
      throw new NotFoundError(`Function ${tenant}/${namespace}/${func} does not exist`);
    }
    return c.json(pods);
  });
  app.delete("/pods/:tenant/:namespace/:func/:pod", async (c) => {
    const { tenant, namespace, func, pod: podId } = c.req.param();
    authorize(c.var.principal, "write", tenant, namespace);
    queryOnly("pod termination", c.req.raw, []);
    const pod = await podOf(deps.meta, tenant, namespace, func, podId);
    if (!deps.scheduler) {
      throw new InferxError("unsupported", "This gateway cannot reach the scheduler");
    }
    await deps.scheduler.killPod(pod.id);
    return c.json({ terminated: pod.id, state: pod.state });
  });
  app.get("/pods/:tenant/:namespace/:func/:pod/log", async (c) => {
    const { tenant, namespace, func, pod: podId } = c.req.param();
    authorize(c.var.principal, "read", tenant, namespace);
    const lines = intParam(queryOnce("pod log", c.req.url, ["lines"]).lines, "lines", 1, 10_000) ??
      50;
    const pod = await podOf(deps.meta, tenant, namespace, func, podId);
    const nodeRec = await deps.meta.get({
      type: "node",
      tenant: "system",
      namespace: "system",
      name: pod.node,
    });
    const agent = nodeRec && deps.nodeAgent?.(decodeNode(nodeRec.value));
    if (!agent) throw new InferxError("unavailable", `Cannot reach the agent of node ${pod.node}`);
    return c.text(await agent.readPodLog(podId, lines));
  });
  return app;
}

/** Pod `podId` of function `tenant/namespace/func`; `not_found` when there is none. */
async function podOf(
  meta: MetaClient,
  tenant: string,
  namespace: string,
  func: string,
  podId: string,
): Promise<PodInfo> {
  const rec = isValidName(podId)
    ? await meta.get({ type: "pod", tenant, namespace, name: podId })
    : undefined;
  const pod = rec && decodePod(rec.value);
  if (!pod || pod.func !== func) {
    throw new NotFoundError(`Pod ${podId} of ${tenant}/${namespace}/${func} does not exist`);
  }
  return pod;
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

/** The answer of a write: the object, whether it was unchanged, and whether it was a dry run. */
function writeJson(rec: WriteResult): Record<string, unknown> {
  const out = recordJson(rec);
  out.unchanged = rec.unchanged ?? false;
  if (rec.dryRun) out.dryRun = true;
  return out;
}

/** `?dryRun=1|true` (or absent, `0`, `false`). */
function dryRunParam(q: string | undefined): boolean {
  if (q === undefined || q === "0" || q === "false") return false;
  if (q === "1" || q === "true" || q === "") return true;
  throw new ValidationError(`Invalid dryRun "${q}": 1, true, 0 or false`, "dryRun");
}

/** The `{type, tenant, namespace, name, object, revision?}` envelope of a change. */
function objectInput(body: unknown) {
  if (!body || typeof body !== "object" || Array.isArray(body)) {
    throw new ValidationError("Invalid object envelope: body must be a JSON object");
  }
  const b = body as Record<string, unknown>;
  const stray = strayEnvelopeKey(b);
  if (stray) {
    throw new ValidationError(`Invalid object envelope: ${stray.key}: ${stray.why}`, stray.key);
  }
  if (typeof b.type !== "string") {
    throw new ValidationError("Invalid object envelope: type: must be a string", "type");
  }
  const type = userType(b.type);
  for (const f of ["tenant", "namespace", "name"]) {
    if (typeof b[f] !== "string") {
      throw new ValidationError(`Invalid object envelope: ${f}: must be a string`, f);
    }
  }
  if (
    b.revision !== undefined &&
    !(Number.isSafeInteger(b.revision) && (b.revision as number) > 0)
  ) {
    throw new ValidationError(
      "Invalid object envelope: revision: must be a positive integer (the revision you read)",
      "revision",
    );
  }
  return {
    type,
    tenant: b.tenant as string,
    namespace: b.namespace as string,
    name: b.name as string,
    object: withoutStatus(b.object),
    revision: b.revision as number | undefined,
  };
}
