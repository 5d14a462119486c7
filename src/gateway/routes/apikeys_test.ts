import assert from "node:assert/strict";
import { gatewayFixture } from "../testing.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

const ADMIN = { authorization: "Bearer admin-key-0123456789" };

t("API keys are created once in the clear, listed without secrets, then revoked", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const created = await f.app.request("/apikeys", {
    method: "POST",
    headers: { "content-type": "application/json", ...ADMIN },
    body: JSON.stringify({ scope: "inference", tenant: "t", namespace: "n", name: "ci" }),
  });
  assert.equal(created.status, 201);
  const key = await created.json();
  assert.match(key.key, /^ixk_/);
  const list = await (await f.app.request("/apikeys", { headers: ADMIN })).json();
  assert.deepEqual(list.items.map((k: { id: string }) => k.id), [key.id]);
  assert.ok(!JSON.stringify(list).includes(key.key), "the list never shows a key");
  // The new key calls the function's namespace and nothing else.
  const mine = { authorization: `Bearer ${key.key}` };
  assert.equal((await f.app.request("/v1/models", { headers: mine })).status, 200);
  const other = await f.app.request("/objects/function/t/n", { headers: mine });
  assert.equal(other.status, 403);
  await other.body?.cancel();
  const shown = await (await f.app.request(`/apikeys/${key.id}`, { headers: ADMIN })).json();
  assert.equal(shown.name, "ci");
  const revoked = await f.app.request(`/apikeys/${key.id}`, { method: "DELETE", headers: ADMIN });
  assert.deepEqual(await revoked.json(), { revoked: key.id });
  const after = await f.app.request("/v1/models", { headers: mine });
  assert.equal(after.status, 401);
  await after.body?.cancel();
  await f.close();
});

t(
  "API key requests are checked: bad fields 400, missing tenant 404, no manager 401/403",
  async () => {
    const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
    const post = (body: unknown, headers: Record<string, string> = ADMIN) =>
      f.app.request("/apikeys", {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });
    const cases: [unknown, Record<string, string>, number, RegExp][] = [
      [{ scope: "root" }, ADMIN, 400, /scope/],
      [{ scope: "read", namespace: "n" }, ADMIN, 400, /namespace restriction needs a tenant/],
      [{ scope: "read", tenant: "zz" }, ADMIN, 404, /tenant zz does not exist/],
      [{ scope: "read", expires_in_s: 1e-9 }, ADMIN, 400, /expires_in_s/],
      [{ scope: "read", expires_in_s: 0 }, ADMIN, 400, /expires_in_s/],
      [{ scope: "read" }, {}, 401, /Credentials required/],
    ];
    for (const [body, headers, status, re] of cases) {
      const r = await post(body, headers);
      assert.equal(r.status, status, JSON.stringify(body));
      assert.match((await r.json()).error.message, re);
    }
    const reader = await (await post({ scope: "read", tenant: "t" })).json();
    const r = await post({ scope: "read", tenant: "t" }, { authorization: `Bearer ${reader.key}` });
    assert.equal(r.status, 403);
    assert.match((await r.json()).error.message, /may not manage read API keys for t/);
    const missing = await f.app.request("/apikeys/nope", { headers: ADMIN });
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    await f.close();
  },
);

t("a key made with an expiring key expires no later than its maker", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const post = (body: unknown, headers: Record<string, string>) =>
    f.app.request("/apikeys", {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    });
  const maker = await (await post({ scope: "full", tenant: "t", expires_in_s: 3600 }, ADMIN))
    .json();
  const as = { authorization: `Bearer ${maker.key}` };
  const forever = await (await post({ scope: "inference", tenant: "t" }, as)).json();
  const longer = await (await post({ scope: "read", tenant: "t", expires_in_s: 7200 }, as)).json();
  const shorter = await (await post({ scope: "read", tenant: "t", expires_in_s: 60 }, as)).json();
  assert.equal(forever.expires_at, maker.expires_at);
  assert.equal(longer.expires_at, maker.expires_at);
  assert.ok(
    Date.parse(shorter.expires_at) < Date.parse(maker.expires_at),
    "a shorter life is kept",
  );
  // The administrator's keys have no expiry of their own to pass on.
  const admins = await (await post({ scope: "read", tenant: "t" }, ADMIN)).json();
  assert.equal(admins.expires_at, null);
  await f.close();
});

t("an expired key keeps no namespace from being deleted, and its record goes", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const json = { "content-type": "application/json", ...ADMIN };
  await (await f.app.request("/object/", {
    method: "PUT",
    headers: json,
    body: JSON.stringify({ type: "namespace", tenant: "t", namespace: "system", name: "m" }),
  })).body?.cancel();
  const created = await (await f.app.request("/apikeys", {
    method: "POST",
    headers: json,
    body: JSON.stringify({ scope: "read", tenant: "t", namespace: "m", expires_in_s: 1 }),
  })).json();
  assert.ok(created.id, JSON.stringify(created));
  // Refused while it works: it would reach a namespace made again under the same name.
  const early = await f.app.request("/object/namespace/t/system/m", {
    method: "DELETE",
    headers: ADMIN,
  });
  assert.equal(early.status, 409);
  await early.body?.cancel();
  await new Promise((r) => setTimeout(r, 1100));
  // Expired, it reaches nothing: the namespace goes (no revocation by hand first).
  const del = await f.app.request("/object/namespace/t/system/m", {
    method: "DELETE",
    headers: ADMIN,
  });
  assert.equal(del.status, 200, await del.text());
  const listed = await (await f.app.request("/apikeys", { headers: ADMIN })).json();
  assert.ok(listed.items.some((k: { id: string }) => k.id === created.id), "listed until swept");
  await f.deps.auth.dropExpired(f.meta);
  const gone = await f.app.request(`/apikeys/${created.id}`, { headers: ADMIN });
  assert.equal(gone.status, 404);
  await gone.body?.cancel();
  await f.close();
});

t(
  "a key request without credentials is refused 401 before its body is read; parameters 400",
  async () => {
    const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
    const make = (query: string, body: string, headers: Record<string, string> = {}) =>
      f.app.request(`/apikeys${query}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body,
      });
    // Not its scope's 400, nor its body's size, nor its JSON: credentials first.
    for (const body of ['{"scope":"bogus"}', "{", "x".repeat(4096)]) {
      const r = await make("", body);
      assert.equal(r.status, 401, body.slice(0, 20));
      assert.equal((await r.json()).error.code, "unauthenticated");
    }
    const extra = await make(
      "?dryRun=1",
      JSON.stringify({ scope: "inference", tenant: "t" }),
      ADMIN,
    );
    assert.equal(extra.status, 400);
    assert.match(
      (await extra.json()).error.message,
      /unknown parameter "dryRun" \(it takes none\)/,
    );
    const list = await (await f.app.request("/apikeys", { headers: ADMIN })).json();
    assert.deepEqual(list.items, [], "no key was made");
    // Reads, too: credentials before their parameters.
    for (const path of ["/apikeys?tenant=t", "/apikeys/k1?tenant=t"]) {
      const r = await f.app.request(path);
      assert.equal(r.status, 401, path);
      assert.equal((await r.json()).error.code, "unauthenticated");
    }
    await f.close();
  },
);

Deno.test({
  name: "the gateway's own answers, a new key's included, are kept by no cache and never sniffed",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
    try {
      const headers = {
        authorization: "Bearer admin-key-0123456789",
        "content-type": "application/json",
      };
      for (
        const [path, init] of [
          ["/apikeys", { method: "POST", body: JSON.stringify({ scope: "read" }), headers }],
          ["/nodes", { headers }],
          ["/no-such-route", { headers }],
        ] as const
      ) {
        const r = await f.app.request(path, init);
        assert.equal(r.headers.get("cache-control"), "no-store", path);
        assert.equal(r.headers.get("x-content-type-options"), "nosniff", path);
        await r.body?.cancel();
      }
    } finally {
      await f.close();
    }
  },
});
