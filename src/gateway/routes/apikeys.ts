/**
 * API keys: `POST /apikeys` creates one (the key is in the answer, once),
 * `GET /apikeys` lists those the caller may manage, `GET /apikeys/{id}`
 * shows one, `DELETE /apikeys/{id}` revokes it. Only SHA-256 hashes are
 * stored; a change reaches every gateway through its watch.
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { InferxError, invalidInput, NotFoundError } from "../../common/errors.ts";
import { logger } from "../../common/log.ts";
import { type ApiKeyRecord, ApiKeyRecordSchema, SCOPES } from "../../model/apikey.ts";
import { isValidName, SYSTEM } from "../../model/keys.ts";
import type { MetaClient } from "../../rpc/types.ts";
import { authorize, mayManageKey, newApiKey, type Principal, requireCredentials } from "../auth.ts";
import { hashKey } from "../../common/credential.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { readJson } from "./_json.ts";
import { queryOnce, queryOnly } from "./_query.ts";

const log = logger("gateway");

const KeyRequestSchema = z.strictObject({
  name: z.string().max(128).default(""),
  scope: z.enum(SCOPES),
  tenant: z.string().refine(isValidName, "not a valid tenant name").optional(),
  namespace: z.string().refine(isValidName, "not a valid namespace name").optional(),
  /** Lifetime in seconds; absent: the key does not expire. */
  expires_in_s: z.number().min(0.001).max(10 * 365 * 86400).optional(),
}).refine((k) => k.namespace === undefined || k.tenant !== undefined, {
  message: "a namespace restriction needs a tenant",
  path: ["namespace"],
});

/** The API key routes, mounted at `/apikeys`. */
export function apikeyRoutes(deps: RouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.post("/", async (c) => {
    const p = c.var.principal;
    // Refused before the body is read: it is not parsed for a caller who may make no key.
    requireCredentials(p, "create API keys");
    queryOnce("API key request", c.req.url, []);
    const req = KeyRequestSchema.safeParse(
      await readJson(
        c.req.raw,
        Math.min(deps.bodyLimit, 64 * 1024),
        () => deps.auth.stillHolds(p),
        deps.bodyBudget,
      ),
    );
    if (!req.success) throw invalidInput("API key request", req.error);
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
    // A key made with an expiring key expires no later than it: it cannot outlive its maker.
    let expiresAt = expires_in_s === undefined ? undefined : now + Math.round(expires_in_s * 1000);
    if (p.expiresAt !== undefined) expiresAt = Math.min(expiresAt ?? Infinity, p.expiresAt);
    const rec: ApiKeyRecord = ApiKeyRecordSchema.parse({
      id,
      name,
      hash: hashKey(key),
      scope,
      tenant,
      namespace,
      expiresAt,
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
    deps.auth.upsertKey(rec); // usable at once here; the watch brings it to other gateways
    log.info("API key {id} ({scope}) created by {by}", { id, scope, by: p.id });
    return c.json({ ...keyJson(rec), key }, 201);
  });
  // Who may not ask is told so (401) before what was asked is looked at.
  app.get("/", async (c) => {
    requireCredentials(c.var.principal, "manage API keys");
    queryOnce("API key list", c.req.url, []);
    return c.json({ items: await listKeys(c.var.principal, deps.meta) });
  });
  app.get("/:id", async (c) => {
    requireCredentials(c.var.principal, "manage API keys");
    queryOnce("API key read", c.req.url, []);
    return c.json(keyJson(await managedKey(c.req.param("id"), c.var.principal, deps.meta)));
  });
  app.delete("/:id", async (c) => {
    const rec = await managedKey(c.req.param("id"), c.var.principal, deps.meta);
    queryOnly("API key revocation", c.req.raw, []);
    await deps.meta.delete({ type: "apikey", tenant: SYSTEM, namespace: SYSTEM, name: rec.id });
    deps.auth.revokeKey(rec.id);
    log.info("API key {id} revoked by {by}", { id: rec.id, by: c.var.principal.id });
    return c.json({ revoked: rec.id });
  });
  return app;
}

/** The keys `p` may manage, as `GET /apikeys` lists them; 401/403 for who may manage none. */
export async function listKeys(p: Principal, meta: MetaClient): Promise<KeyJson[]> {
  requireCredentials(p, "manage API keys");
  if (!p.grants.some((g) => g.scope === "full")) {
    throw new InferxError("forbidden", `${p.id} may not manage API keys`);
  }
  const { items } = await meta.list("apikey");
  return items.flatMap((r) => {
    const k = ApiKeyRecordSchema.safeParse(JSON.parse(r.value));
    return k.success && mayManageKey(p, k.data) ? [keyJson(k.data)] : [];
  });
}

/** The public view of a key: everything but its hash. */
export type KeyJson = ReturnType<typeof keyJson>;

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

async function managedKey(id: string, p: Principal, meta: MetaClient): Promise<ApiKeyRecord> {
  requireCredentials(p, "manage API keys");
  const rec = isValidName(id)
    ? await meta.get({ type: "apikey", tenant: SYSTEM, namespace: SYSTEM, name: id })
    : undefined;
  const k = rec && ApiKeyRecordSchema.safeParse(JSON.parse(rec.value));
  // A key of a tenant the caller has no grant in answers as one that does not exist: its
  // scope and reach are not told to another tenant (within its tenant: 403, saying why).
  const reaches = (t?: string) => p.grants.some((g) => g.tenant === undefined || g.tenant === t);
  if (!k?.success || (!mayManageKey(p, k.data) && !reaches(k.data.tenant))) {
    throw new NotFoundError(`API key ${id} does not exist`);
  }
  if (!mayManageKey(p, k.data)) checkKeyManager(p, k.data);
  return k.data;
}
