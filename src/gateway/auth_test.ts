import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { hashKey } from "../common/credential.ts";
import {
  ADMIN,
  allows,
  allowsOwn,
  ANONYMOUS,
  Authenticator,
  authorize,
  mayManageKey,
  newApiKey,
  type Principal,
  rolesToGrants,
} from "./auth.ts";

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as InferxError).code;
  }
};

Deno.test("scopes nest full > read > inference, within a tenant or a namespace", () => {
  const tenantRead: Principal = { id: "k", grants: [{ scope: "read", tenant: "a" }] };
  assert.ok(allows(tenantRead, "read", "a", "x"));
  assert.ok(allows(tenantRead, "inference", "a", "x"));
  assert.ok(!allows(tenantRead, "write", "a", "x"));
  assert.ok(!allows(tenantRead, "read", "b", "x"));
  assert.ok(!allows(tenantRead, "read"), "a tenant grant is not cluster-wide");
  const nsFull: Principal = { id: "k", grants: [{ scope: "full", tenant: "a", namespace: "x" }] };
  assert.ok(allows(nsFull, "write", "a", "x"));
  assert.ok(!allows(nsFull, "write", "a", "y"));
  assert.ok(!allows(nsFull, "write", "a"), "a namespace grant does not reach the tenant");
  const inf: Principal = { id: "k", grants: [{ scope: "inference" }] };
  assert.ok(allows(inf, "inference", "any", "ns"));
  assert.ok(!allows(inf, "read", "any", "ns"));
  assert.ok(allows(ANONYMOUS, "inference", "public", "demo"));
  assert.ok(!allows(ANONYMOUS, "inference", "acme", "demo"));
  // What a caller without credentials may do, one with them may too; no more.
  assert.ok(allows(tenantRead, "inference", "public", "demo"));
  assert.ok(!allows(tenantRead, "read", "public", "demo"));
  assert.ok(!allowsOwn(tenantRead, "inference", "public", "demo"), "not its own grant");
  assert.ok(allows(ADMIN, "write"));
});

Deno.test("authorize() answers 401 to the anonymous and 403 to the known", () => {
  assert.equal(code(() => authorize(ANONYMOUS, "read", "public")), "unauthenticated");
  const k: Principal = { id: "key:1", grants: [{ scope: "full", tenant: "a" }] };
  assert.equal(code(() => authorize(k, "read", "b")), "forbidden");
  assert.equal(code(() => authorize(k, "read", "a")), undefined);
});

Deno.test("rolesToGrants maps the four Keycloak group paths and ignores others", () => {
  assert.deepEqual(
    rolesToGrants([
      "/tenant/admin/a",
      "tenant/user/b",
      "/namespace/admin/c/x",
      "/namespace/user/d/y",
      "/tenant/owner/e",
      "/namespace/user/f",
      "offline_access",
    ]),
    [
      { scope: "full", tenant: "a" },
      { scope: "read", tenant: "b" },
      { scope: "full", tenant: "c", namespace: "x" },
      { scope: "read", tenant: "d", namespace: "y" },
    ],
  );
});

Deno.test("only a full grant covering a key's reach may manage it", () => {
  const tenantAdmin: Principal = { id: "t", grants: [{ scope: "full", tenant: "a" }] };
  assert.ok(mayManageKey(tenantAdmin, { scope: "full", tenant: "a" }));
  assert.ok(mayManageKey(tenantAdmin, { scope: "read", tenant: "a", namespace: "x" }));
  assert.ok(!mayManageKey(tenantAdmin, { scope: "read", tenant: "b" }));
  assert.ok(!mayManageKey(tenantAdmin, { scope: "inference" }), "no cluster-wide keys");
  const reader: Principal = { id: "r", grants: [{ scope: "read" }] };
  assert.ok(!mayManageKey(reader, { scope: "inference", tenant: "a" }));
  assert.ok(mayManageKey(ADMIN, { scope: "full" }));
});

Deno.test("Authenticator finds keys by hash, refuses unknown, expired and malformed ones", async () => {
  let now = 1_000_000;
  const auth = new Authenticator({ adminKey: "admin-key-0123456789", now: () => now });
  assert.ok(auth.enabled);
  const { id, key } = newApiKey();
  assert.match(key, /^ixk_[A-Za-z0-9_-]{43}$/);
  auth.upsertKey({
    id,
    name: "",
    hash: hashKey(key),
    scope: "read",
    tenant: "a",
    expiresAt: now + 1000,
    createdAt: now,
    createdBy: "admin",
  });
  const h = (v: Record<string, string>) => new Headers(v);
  const p = await auth.authenticate(h({ authorization: `Bearer ${key}` }));
  assert.equal(p.id, `key:${id}`);
  assert.deepEqual(p.grants, [{ scope: "read", tenant: "a", namespace: undefined }]);
  assert.equal((await auth.authenticate(h({ "x-api-key": key }))).id, `key:${id}`);
  assert.equal(await auth.authenticate(h({ authorization: "Bearer admin-key-0123456789" })), ADMIN);
  assert.equal(await auth.authenticate(h({})), ANONYMOUS);
  const fails = async (headers: Headers, re: RegExp) => {
    await assert.rejects(async () => await auth.authenticate(headers), (err: unknown) => {
      assert.equal((err as InferxError).code, "unauthenticated");
      assert.match((err as Error).message, re);
      assert.ok(!(err as Error).message.includes(key), "a key never appears in a message");
      return true;
    });
  };
  await fails(h({ authorization: "Bearer ixk_nope" }), /Invalid API key/);
  await fails(h({ authorization: "Basic dXNlcjpwYXNz" }), /expected Bearer/);
  await fails(h({ authorization: "Bearer admin-key-0123456780" }), /Invalid credentials/);
  // A field sent twice (Headers joins them) is refused as such, the valid one too.
  const twice = (name: string, values: string[]) => {
    const hs = new Headers();
    for (const v of values) hs.append(name, v);
    return hs;
  };
  await fails(
    twice("authorization", [`Bearer ${key}`, "Bearer admin-key-0123456789"]),
    /^Invalid credentials: Authorization sent more than once$/,
  );
  await fails(
    twice("x-api-key", [key, key]),
    /^Invalid credentials: X-Api-Key sent more than once$/,
  );
  // Both fields: the same credential is taken, two that differ are refused, the valid one too.
  assert.equal(
    (await auth.authenticate(h({ authorization: `Bearer ${key}`, "x-api-key": key }))).id,
    p.id,
  );
  await fails(
    h({ authorization: `Bearer ${key}`, "x-api-key": "admin-key-0123456789" }),
    /^Invalid credentials: Authorization and X-Api-Key carry different credentials \(send one\)$/,
  );
  // Checked again once a slow body is in: it holds until the key expires or goes.
  auth.stillHolds(p);
  auth.stillHolds(ADMIN);
  auth.stillHolds(ANONYMOUS);
  now += 1000;
  await fails(h({ authorization: `Bearer ${key}` }), /expired at/);
  assert.throws(() => auth.stillHolds(p), /expired at .*, while the request's body was being sent/);
  auth.removeKey(id);
  now -= 1000;
  await fails(h({ authorization: `Bearer ${key}` }), /Invalid API key/);
  assert.throws(() => auth.stillHolds(p), /was revoked while the request's body was being sent/);
});

Deno.test("Authenticator without admin key or OIDC lets everyone in as the administrator", async () => {
  const auth = new Authenticator({});
  assert.ok(!auth.enabled);
  assert.equal(await auth.authenticate(new Headers({ authorization: "Bearer junk" })), ADMIN);
  assert.throws(() => new Authenticator({ adminKey: "short" }), /at least 16/);
  assert.throws(
    () => new Authenticator({ adminKey: "admin-key-0123456789", metricsKey: "short" }),
    /INFERX_METRICS_KEY must be at least 16/,
  );
  // Looked up as a stored key, it could never be the admin's: refused at start.
  assert.throws(
    () => new Authenticator({ adminKey: "ixk_0123456789abcdef" }),
    /must not begin with ixk_/,
  );
});
