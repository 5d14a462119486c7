/**
 * Auth end to end: the platform with an administrator key and an OIDC
 * issuer. Every route refuses missing or bad credentials (401) and every
 * cross-tenant attempt (403); scopes, namespace restrictions, expiry,
 * revocation and the open `public` tenant work as documented.
 */
import assert from "node:assert/strict";
import { startTestIssuer, type TestIssuer } from "../../src/gateway/oidc_testing.ts";
import {
  eventually,
  type Json,
  ngramFunction,
  type Platform,
  request,
  startPlatform,
} from "./helpers.ts";

const ADMIN_KEY = "admin-key-for-tests-5f2c9e";

interface Route {
  method: string;
  path: string;
  body?: unknown;
  /** What it asks of the caller. */
  needs: "inference" | "read" | "write" | "keys";
}

const lm = (tenant: string, ns: string, name: string) =>
  ngramFunction(tenant, ns, name, {
    policy: { Obj: { max_replica: 1, scalein_timeout: 30, standby_per_node: 0 } },
  });

/** The routes of tenant `acme`, namespace `prod`. */
function acmeRoutes(keyId: string): Route[] {
  return [
    {
      method: "POST",
      path: "/funccall/acme/prod/lm/v1/completions",
      body: { prompt: "The", max_tokens: 4 },
      needs: "inference",
    },
    {
      method: "POST",
      path: "/v1/completions",
      body: { model: "acme/prod/lm", prompt: "The", max_tokens: 4 },
      needs: "inference",
    },
    {
      method: "POST",
      path: "/v1/chat/completions",
      body: { model: "acme/prod/lm", messages: [{ role: "user", content: "The" }], max_tokens: 4 },
      needs: "inference",
    },
    { method: "GET", path: "/object/function/acme/prod/lm", needs: "read" },
    { method: "GET", path: "/object/tenant/system/system/acme", needs: "read" },
    { method: "GET", path: "/objects/function/acme/prod", needs: "read" },
    { method: "GET", path: "/objects/namespace/acme/system", needs: "read" },
    { method: "GET", path: "/pods/acme/prod/lm", needs: "read" },
    { method: "GET", path: "/pods/acme/prod/lm/nopod/log", needs: "read" },
    { method: "GET", path: "/audit/requests?tenant=acme", needs: "read" },
    { method: "GET", path: "/audit/pods?tenant=acme&namespace=prod", needs: "read" },
    { method: "PUT", path: "/object/", body: lm("acme", "prod", "lm-extra"), needs: "write" },
    {
      method: "POST",
      path: "/object/",
      body: { ...lm("acme", "prod", "lm"), revision: 1 },
      needs: "write",
    },
    { method: "DELETE", path: "/object/function/acme/prod/nothing", needs: "write" },
    {
      method: "PUT",
      path: "/object/",
      body: { type: "namespace", tenant: "acme", namespace: "system", name: "x", object: {} },
      needs: "write",
    },
    {
      method: "POST",
      path: "/apikeys",
      body: { scope: "inference", tenant: "acme" },
      needs: "keys",
    },
    { method: "GET", path: `/apikeys/${keyId}`, needs: "keys" },
    { method: "DELETE", path: `/apikeys/${keyId}`, needs: "keys" },
  ];
}

/** Cluster-wide routes: only unrestricted principals. */
const CLUSTER_ROUTES: Route[] = [
  { method: "GET", path: "/nodes", needs: "read" },
  { method: "GET", path: "/metrics", needs: "read" },
  { method: "GET", path: "/audit/requests", needs: "read" },
  {
    method: "PUT",
    path: "/object/",
    body: { type: "tenant", tenant: "system", namespace: "system", name: "newco", object: {} },
    needs: "write",
  },
  { method: "POST", path: "/apikeys", body: { scope: "read" }, needs: "keys" },
];

function call(p: Platform, r: Route, cred?: string | Record<string, string>) {
  const headers = typeof cred === "string" ? { authorization: `Bearer ${cred}` } : cred ?? {};
  return request(`${p.url}${r.path}`, { method: r.method, body: r.body, headers });
}

async function newKey(p: Platform, cred: string, body: Record<string, unknown>): Promise<Json> {
  const r = await request(`${p.url}/apikeys`, {
    body,
    headers: { authorization: `Bearer ${cred}` },
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

Deno.test({
  name: "auth: every route refuses missing or bad credentials (401) and other tenants (403)",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const issuer: TestIssuer = await startTestIssuer();
    const p = await startPlatform({
      INFERX_ADMIN_APIKEY: ADMIN_KEY,
      INFERX_OIDC_JWKS_URL: issuer.jwksUrl,
      INFERX_OIDC_ISSUER: issuer.issuer,
    });
    const created: string[] = [];
    try {
      const put = async (o: unknown) => {
        const r = await request(`${p.url}/object/`, {
          method: "PUT",
          body: o,
          headers: { authorization: `Bearer ${ADMIN_KEY}` },
        });
        assert.equal(r.status, 201, JSON.stringify(r.body));
      };
      for (
        const [t, nss] of [["acme", ["prod", "dev"]], ["beta", ["prod"]], ["public", [
          "demo",
        ]]] as const
      ) {
        await put({ type: "tenant", tenant: "system", namespace: "system", name: t, object: {} });
        for (const ns of nss) {
          await put({ type: "namespace", tenant: t, namespace: "system", name: ns, object: {} });
        }
      }
      await put(lm("acme", "prod", "lm"));
      await put(lm("public", "demo", "lm-public"));

      const key = async (body: Record<string, unknown>) => {
        const k = await newKey(p, ADMIN_KEY, body);
        created.push(k.key);
        return k;
      };
      const acmeFull = await key({ name: "acme admin", scope: "full", tenant: "acme" });
      const acmeRead = await key({ scope: "read", tenant: "acme" });
      const acmeInf = await key({ scope: "inference", tenant: "acme" });
      const acmeDev = await key({ scope: "full", tenant: "acme", namespace: "dev" });
      const betaFull = await key({ scope: "full", tenant: "beta" });
      const clusterRead = await key({ scope: "read" });
      const soonExpired = await key({ scope: "full", tenant: "acme", expires_in_s: 0.5 });
      const revoked = await key({ scope: "full", tenant: "acme" });
      const target = await key({ scope: "inference", tenant: "acme", name: "target" });
      assert.equal(acmeFull.scope, "full");
      assert.equal(acmeFull.tenant, "acme");
      assert.equal(acmeFull.hash, undefined, "the hash is never shown");
      const del = await request(`${p.url}/apikeys/${revoked.id}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${ADMIN_KEY}` },
      });
      assert.equal(del.status, 200, JSON.stringify(del.body));
      await new Promise((r) => setTimeout(r, 600)); // soonExpired expires
      const betaToken = await issuer.sign({ sub: "bob", groups: ["/tenant/admin/beta"] });
      const badToken = (await issuer.sign({ sub: "eve", groups: ["/tenant/admin/acme"] }))
        .slice(0, -6) + "AAAAAA";
      const expiredToken = await issuer.sign({
        sub: "old",
        groups: ["/tenant/admin/acme"],
        exp: Math.floor(Date.now() / 1000) - 300,
      });

      const routes = [...acmeRoutes(target.id), ...CLUSTER_ROUTES];
      const unauthenticated: [string, string | Record<string, string> | undefined][] = [
        ["no credentials", undefined],
        ["an unknown key", "ixk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
        ["a wrong admin key", "admin-key-for-tests-000000"],
        ["a malformed header", { authorization: "Basic YWRtaW46YWRtaW4=" }],
        ["an expired key", soonExpired.key],
        ["a revoked key", revoked.key],
        ["a token with a bad signature", badToken],
        ["an expired token", expiredToken],
      ];
      for (const r of routes) {
        for (const [what, cred] of unauthenticated) {
          const res = await call(p, r, cred);
          assert.equal(
            res.status,
            401,
            `${r.method} ${r.path} with ${what}: ${JSON.stringify(res.body)}`,
          );
          assert.equal(res.body.error.code, "unauthenticated");
          assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="inferx"');
        }
      }
      for (const r of acmeRoutes(target.id)) {
        for (const [what, cred] of [["beta's key", betaFull.key], ["beta's token", betaToken]]) {
          const res = await call(p, r, cred);
          // Another tenant's API key, named by its id alone, is not told to exist; nor is a
          // model (as OpenAI's API answers one the caller cannot reach).
          const model = r.path.startsWith("/v1/");
          const hidden = r.path.startsWith("/apikeys/") || model;
          assert.equal(
            res.status,
            hidden ? 404 : 403,
            `${r.method} ${r.path} with ${what}: ${JSON.stringify(res.body)}`,
          );
          assert.equal(
            res.body.error.code,
            model ? "model_not_found" : hidden ? "not_found" : "forbidden",
          );
        }
      }
      for (const r of CLUSTER_ROUTES) {
        const res = await call(p, r, acmeFull.key);
        assert.equal(res.status, 403, `${r.method} ${r.path} with acme's key`);
      }

      // Within its reach each scope does what it names, and no more.
      const allowed = async (cred: string, r: Route) => {
        const res = await call(p, r, cred);
        assert.ok(
          res.status !== 401 && res.status !== 403,
          `${r.method} ${r.path}: ${res.status} ${JSON.stringify(res.body)}`,
        );
        return res;
      };
      const forbidden = async (cred: string, r: Route) => {
        const res = await call(p, r, cred);
        assert.equal(res.status, 403, `${r.method} ${r.path}: ${JSON.stringify(res.body)}`);
      };
      for (const r of acmeRoutes(target.id)) {
        if (r.method === "DELETE" && r.needs === "keys") continue; // revoking is checked below
        if (r.needs === "inference") {
          const res = await allowed(acmeInf.key, r);
          assert.equal(res.status, 200, JSON.stringify(res.body));
        } else await forbidden(acmeInf.key, r);
        if (r.needs === "write" || r.needs === "keys") await forbidden(acmeRead.key, r);
        else await allowed(acmeRead.key, r);
        await allowed(acmeFull.key, r);
        if (r.path === "/objects/namespace/acme/system") {
          // The namespaces of its tenant: it sees its own only.
          const res = await allowed(acmeDev.key, r);
          assert.deepEqual(res.body.items.map((n: Json) => n.name), ["dev"]);
        } else if (r.path.startsWith("/v1/")) {
          // prod is not its namespace, and it may not read it: no such model, for it.
          const res = await call(p, r, acmeDev.key);
          assert.equal(res.status, 404, `${r.method} ${r.path}: ${JSON.stringify(res.body)}`);
          assert.equal(res.body.error.code, "model_not_found");
        } else await forbidden(acmeDev.key, r); // prod is not its namespace
        if (r.needs === "read") await allowed(clusterRead.key, r);
      }
      for (const r of CLUSTER_ROUTES) {
        if (r.needs === "read") await allowed(clusterRead.key, r);
        else await forbidden(clusterRead.key, r);
      }

      // OIDC roles: a namespace user reads its namespace only; a tenant admin writes.
      const nsUser = await issuer.sign({ sub: "carol", groups: ["/namespace/user/acme/prod"] });
      await allowed(nsUser, { method: "GET", path: "/objects/function/acme/prod", needs: "read" });
      await forbidden(nsUser, { method: "GET", path: "/objects/function/acme/dev", needs: "read" });
      await forbidden(nsUser, {
        method: "PUT",
        path: "/object/",
        body: lm("acme", "prod", "x"),
        needs: "write",
      });
      const tenantAdmin = await issuer.sign({
        sub: "dave",
        realm_access: { roles: ["/tenant/admin/acme"] },
      });
      const made = await call(p, {
        method: "PUT",
        path: "/object/",
        body: lm("acme", "dev", "by-token"),
        needs: "write",
      }, tenantAdmin);
      assert.equal(made.status, 201, JSON.stringify(made.body));

      // Key management stays within the manager's reach.
      const mine = await newKey(p, acmeFull.key, {
        scope: "inference",
        tenant: "acme",
        namespace: "prod",
      });
      created.push(mine.key);
      assert.equal(mine.created_by, `key:${acmeFull.id}`);
      for (const body of [{ scope: "full" }, { scope: "read", tenant: "beta" }]) {
        const r = await request(`${p.url}/apikeys`, {
          body,
          headers: { authorization: `Bearer ${acmeFull.key}` },
        });
        assert.equal(r.status, 403, JSON.stringify(r.body));
      }
      const listed = await request(`${p.url}/apikeys`, {
        headers: { authorization: `Bearer ${acmeFull.key}` },
      });
      assert.equal(listed.status, 200);
      assert.ok(listed.body.items.length >= 5);
      assert.ok(listed.body.items.every((k: Json) => k.tenant === "acme" && k.hash === undefined));
      const bad = await request(`${p.url}/apikeys`, {
        body: { scope: "owner", tenant: "acme" },
        headers: { authorization: `Bearer ${ADMIN_KEY}` },
      });
      assert.equal(bad.status, 400);
      assert.match(bad.body.error.message, /scope/);
      const noTenant = await request(`${p.url}/apikeys`, {
        body: { scope: "read", tenant: "nowhere" },
        headers: { authorization: `Bearer ${ADMIN_KEY}` },
      });
      assert.equal(noTenant.status, 404);

      // The new key calls; revoked, it is refused.
      const route = acmeRoutes(target.id)[0];
      assert.equal((await call(p, route, mine.key)).status, 200);
      const rv = await request(`${p.url}/apikeys/${mine.id}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${acmeFull.key}` },
      });
      assert.equal(rv.status, 200);
      assert.equal((await call(p, route, mine.key)).status, 401);

      // Tenant public is open for inference, and only for inference.
      const pub = await call(p, {
        method: "POST",
        path: "/funccall/public/demo/lm-public/v1/completions",
        body: { prompt: "The", max_tokens: 4 },
        needs: "inference",
      });
      assert.equal(pub.status, 200, JSON.stringify(pub.body));
      const models = await call(p, { method: "GET", path: "/v1/models", needs: "inference" });
      assert.deepEqual(models.body.data.map((m: Json) => m.id), ["public/demo/lm-public"]);
      const pubRead = await call(p, {
        method: "GET",
        path: "/objects/function/public/demo",
        needs: "read",
      });
      assert.equal(pubRead.status, 401);
      const health = await call(p, { method: "GET", path: "/health", needs: "read" });
      assert.equal(health.status, 200);

      // Request audit names the principal, never its secret.
      await eventually("audit rows", async () => {
        const a = await request(`${p.url}/audit/requests?tenant=acme&limit=1000`, {
          headers: { authorization: `Bearer ${ADMIN_KEY}` },
        });
        return a.body.items.some((r: Json) =>
          r.principal === `key:${acmeInf.id}` && r.status === 200
        );
      });
    } finally {
      await p.stop();
      await issuer.stop();
    }
    const out = p.output();
    for (const secret of [ADMIN_KEY, ...created]) {
      assert.ok(!out.includes(secret), "no key appears in the logs");
    }
    // The audit database's bytes, its write-ahead log too if one is left.
    let audit = "";
    for (const f of ["audit.db", "audit.db-wal"]) {
      audit += await Deno.readFile(`${p.dataDir}/audit/${f}`)
        .then((b) => new TextDecoder().decode(b), () => "");
    }
    assert.ok(
      audit.includes("/funccall/public/demo/lm-public"),
      "the rows are in the audit database",
    );
    for (const secret of [ADMIN_KEY, ...created]) assert.ok(!audit.includes(secret));
    await Deno.remove(p.dataDir, { recursive: true });
  },
});
