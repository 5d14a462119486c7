import assert from "node:assert/strict";
import { gatewayFixture } from "../testing.ts";
import { MAX_OBJECT_BODY } from "./objects.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

t(
  "object API refuses a key the envelope has no field for, and takes back what it answered",
  async () => {
    const f = await gatewayFixture();
    const env = { type: "funcpolicy", tenant: "t", namespace: "n", name: "p" };
    const put = (body: unknown) =>
      f.app.request("/object/", { method: "PUT", body: JSON.stringify(body) });
    for (
      const [extra, why] of [
        [{ metadata: { labels: { team: "a" } } }, /metadata: belongs in object, beside spec/],
        [{ spec: { max_replica: 2 } }, /spec: belongs in object, beside spec/],
        [{ foo: 1 }, /foo: not a field of the envelope/],
      ] as const
    ) {
      const res = await put({ ...env, ...extra, object: { spec: { max_replica: 3 } } });
      assert.equal(res.status, 400, JSON.stringify(extra));
      const { error } = await res.json();
      assert.equal(error.details.field, Object.keys(extra)[0]);
      assert.match(error.message, why);
    }
    assert.equal((await f.app.request("/object/funcpolicy/t/n/p")).status, 404, "nothing written");
    // An answer's own fields (revision, created_at) come back with what was read, unchanged.
    const created = await put({ ...env, object: { spec: { max_replica: 3 } } });
    assert.equal(created.status, 201);
    const read = await (await f.app.request("/object/funcpolicy/t/n/p")).json();
    assert.ok(read.created_at);
    read.object.spec.max_replica = 5;
    const back = await f.app.request("/object/", { method: "POST", body: JSON.stringify(read) });
    assert.equal(back.status, 200, await back.clone().text());
    assert.equal((await back.json()).object.spec.max_replica, 5);
  },
);

t("object API creates, reads, updates with compare-and-swap, lists and deletes", async () => {
  const f = await gatewayFixture();
  const put = await f.app.request("/object/", {
    method: "PUT",
    body: JSON.stringify({
      type: "funcpolicy",
      tenant: "t",
      namespace: "n",
      name: "p",
      object: { max_replica: 3 },
    }),
  });
  assert.equal(put.status, 201);
  const created = await put.json();
  assert.equal(created.object.spec.max_replica, 3);
  assert.equal(created.object.spec.parallel, 50);
  const again = await f.app.request("/object/", {
    method: "PUT",
    body: JSON.stringify({
      type: "funcpolicy",
      tenant: "t",
      namespace: "n",
      name: "p",
      object: {},
    }),
  });
  assert.equal(again.status, 409);
  await again.body?.cancel();
  const upd = (rev: number) =>
    f.app.request("/object/", {
      method: "POST",
      body: JSON.stringify({
        type: "funcpolicy",
        tenant: "t",
        namespace: "n",
        name: "p",
        revision: rev,
        object: { max_replica: 4 },
      }),
    });
  for (const rev of [-1, 0, 1e300, 1.5]) {
    const bad = await upd(rev);
    assert.equal(bad.status, 400, `revision ${rev}`);
    assert.match((await bad.json()).error.message, /revision: must be a positive integer/);
  }
  const ok = await upd(created.revision);
  assert.equal(ok.status, 200);
  // A delete's guard goes in its query: one in a body is refused, the object left.
  const bodied = await f.app.request("/object/funcpolicy/t/n/p", {
    method: "DELETE",
    body: JSON.stringify({ revision: 1 }),
  });
  assert.equal(bodied.status, 400);
  assert.match((await bodied.json()).error.message, /object delete: it takes no body/);
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p")).status, 200);
  const stale = await upd(created.revision);
  assert.equal(stale.status, 409);
  assert.match((await stale.json()).error.message, /it changed/);
  const got = await (await f.app.request("/object/funcpolicy/t/n/p")).json();
  assert.equal(got.object.spec.max_replica, 4);
  const list = await (await f.app.request("/objects/funcpolicy/t/n")).json();
  assert.deepEqual(list.items.map((o: { name: string }) => o.name), ["p"]);
  for (const rev of ["", "-1", "0", "0x3", "1e1", " 2"]) {
    const bad = await f.app.request(
      `/object/funcpolicy/t/n/p?revision=${encodeURIComponent(rev)}`,
      { method: "DELETE" },
    );
    assert.equal(bad.status, 400, `revision=${rev}`);
    assert.match((await bad.json()).error.message, /Invalid revision .*an integer from 1/);
  }
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p")).status, 200, "still there");
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p", { method: "DELETE" })).status, 200);
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p")).status, 404);
  await (await f.app.request("/object/funcpolicy/t/n/p")).body?.cancel();
  await ok.body?.cancel();
  await f.close();
});

t(
  "object API refuses bad input with 400 naming the field, and missing parents with 404",
  async () => {
    const f = await gatewayFixture();
    const send = (body: unknown) =>
      f.app.request("/object/", {
        method: "PUT",
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
    const cases: [unknown, number, RegExp][] = [
      ["{", 400, /not valid JSON/],
      [{ type: "node", tenant: "t", namespace: "n", name: "x" }, 400, /type/],
      [
        {
          type: "function",
          tenant: "t",
          namespace: "n",
          name: "g",
          object: { spec: { image: 5 } },
        },
        400,
        /image/,
      ],
      [
        { type: "function", tenant: "t", namespace: "zz", name: "g", object: { image: "x" } },
        404,
        /namespace t\/zz does not exist/,
      ],
      [
        {
          type: "function",
          tenant: "t",
          namespace: "n",
          name: "g",
          object: { image: "x", policy: { Link: { name: "nope" } } },
        },
        404,
        /funcpolicy t\/n\/nope/,
      ],
    ];
    for (const [body, status, re] of cases) {
      const r = await send(body);
      assert.equal(r.status, status, JSON.stringify(body));
      assert.match((await r.json()).error.message, re);
    }
    const notEmpty = await f.app.request("/object/namespace/t/system/n", { method: "DELETE" });
    assert.equal(notEmpty.status, 409);
    assert.match((await notEmpty.json()).error.message, /still has 1 function/);
    await f.close();
  },
);

t(
  "an update equal to the stored object answers 200 unchanged with the same revision and version",
  async () => {
    const f = await gatewayFixture();
    const cur = await (await f.app.request("/object/function/t/n/f")).json();
    const send = (object: unknown) =>
      f.app.request("/object/", {
        method: "POST",
        body: JSON.stringify({ ...cur, object }),
      });
    const same = await send(cur.object);
    assert.equal(same.status, 200);
    const body = await same.json();
    assert.equal(body.unchanged, true);
    assert.equal(body.revision, cur.revision);
    assert.equal(body.version, cur.version);
    // A policy change writes, and keeps the version: no new workers.
    const policy = await send({ spec: { image: "x", policy: { Obj: { max_replica: 5 } } } });
    const changed = await policy.json();
    assert.equal(changed.unchanged, false);
    assert.ok(changed.revision > cur.revision);
    assert.equal(changed.version, cur.version);
    await f.close();
  },
);

t("?dryRun=1 validates and answers the object as it would be, writing nothing", async () => {
  const f = await gatewayFixture();
  const fn = { type: "function", tenant: "t", namespace: "n", name: "g", object: { image: "x" } };
  const dry = await f.app.request("/object/?dryRun=1", { method: "PUT", body: JSON.stringify(fn) });
  assert.equal(dry.status, 200);
  const body = await dry.json();
  assert.equal(body.dryRun, true);
  assert.equal(body.version, 1);
  assert.equal(body.object.spec.endpoint.probe, "/health", "defaults filled in");
  assert.equal((await f.app.request("/object/function/t/n/g")).status, 404);
  const bad = await f.app.request("/object/?dryRun=1", {
    method: "PUT",
    body: JSON.stringify({ ...fn, object: { image: "x", resources: { CPU: 0 } } }),
  });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error.message, /resources\.CPU/);
  const cur = await (await f.app.request("/object/function/t/n/f")).json();
  const upd = await f.app.request("/object/?dryRun=true", {
    method: "POST",
    body: JSON.stringify({ ...cur, object: { spec: { image: "y" } } }),
  });
  const u = await upd.json();
  assert.deepEqual([u.dryRun, u.unchanged, u.version, u.revision], [
    true,
    false,
    cur.version + 1,
    cur.revision,
  ]);
  const still = await (await f.app.request("/object/function/t/n/f")).json();
  assert.deepEqual(still, cur);
  const wrong = await f.app.request("/object/?dryRun=maybe", { method: "PUT", body: "{}" });
  assert.equal(wrong.status, 400);
  assert.match((await wrong.json()).error.message, /Invalid dryRun "maybe"/);
  await f.close();
});

t("users cannot write a function's status: the API drops it", async () => {
  const f = await gatewayFixture();
  const conditions = [{ type: "Schedulable", status: "False", reason: "Forged", message: "" }];
  const put = await f.app.request("/object/", {
    method: "PUT",
    body: JSON.stringify({
      type: "function",
      tenant: "t",
      namespace: "n",
      name: "g",
      object: { spec: { image: "x" }, status: { conditions } },
    }),
  });
  assert.equal(put.status, 201);
  assert.equal((await put.json()).object.status, undefined);
  await f.close();
});

t("snapshots are listed for those who may read their namespace, and per node", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const snap = (node: string) => ({
    tenant: "t",
    namespace: "n",
    func: "f",
    funcVersion: 1,
    node,
    state: "Ready",
    sourcePod: "p-1",
    bytes: 1000,
    dumpMs: 5,
    createdAt: 1,
  });
  for (const node of ["n1", "n2"]) {
    await f.meta.create({
      type: "snapshot",
      tenant: "t",
      namespace: "n",
      name: `f.v1.${node}`,
      object: snap(node),
    });
  }
  const admin = { authorization: "Bearer admin-key-0123456789" };
  const all = await (await f.app.request("/snapshots", { headers: admin })).json();
  assert.deepEqual(all.items.map((s: { node: string }) => s.node).sort(), ["n1", "n2"]);
  const one = await (await f.app.request("/snapshots?func=f&node=n2", { headers: admin })).json();
  assert.deepEqual(one.items.map((s: { node: string }) => s.node), ["n2"]);
  const byNode = await (await f.app.request("/nodes/n1/snapshots", { headers: admin })).json();
  assert.deepEqual(byNode.items.map((s: { node: string }) => s.node), ["n1"]);
  // A key of t's sees them; one of another tenant, none of them.
  await f.meta.create({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: "u",
    object: {},
  });
  const keyOf = async (tenant: string) => {
    const r = await f.app.request("/apikeys", {
      method: "POST",
      headers: { ...admin, "content-type": "application/json" },
      body: JSON.stringify({ scope: "full", tenant }),
    });
    return { authorization: `Bearer ${(await r.json()).key}` };
  };
  for (const [tenant, count] of [["t", 2], ["u", 0]] as const) {
    const r = await f.app.request("/snapshots", { headers: await keyOf(tenant) });
    assert.equal(r.status, 200);
    assert.equal((await r.json()).items.length, count, `a key of ${tenant}`);
  }
  // A namespace filter without its tenant still filters.
  for (const namespace of ["n", "other"]) {
    const r = await f.app.request(`/snapshots?namespace=${namespace}`, { headers: admin });
    const items = (await r.json()).items as { namespace: string }[];
    assert.equal(items.length, namespace === "n" ? 2 : 0, namespace);
  }
  // Empty filters are none, as a form sends them.
  const empty = await f.app.request("/snapshots?tenant=&namespace=", { headers: admin });
  assert.equal(empty.status, 200);
  assert.equal((await empty.json()).items.length, 2);
  const anon = await f.app.request("/snapshots");
  assert.equal(anon.status, 401);
  await anon.body?.cancel();
  // A misspelt filter is refused, not passed over to answer every snapshot.
  const typo = await f.app.request("/snapshots?fucn=f", { headers: admin });
  assert.equal(typo.status, 400);
  assert.match((await typo.json()).error.message, /unknown parameter "fucn" \(it takes tenant/);
  // A node that does not exist has no list of its own.
  const noNode = await f.app.request("/nodes/n9/snapshots", { headers: admin });
  assert.equal(noNode.status, 404);
  assert.match((await noNode.json()).error.message, /Node n9 does not exist/);
  await f.close();
});

t(
  "a function's pods are listed; a function that does not exist is 404, not an empty list",
  async () => {
    const f = await gatewayFixture();
    const pods = await f.app.request("/pods/t/n/f");
    assert.equal(pods.status, 200);
    assert.deepEqual(await pods.json(), []);
    const typo = await f.app.request("/pods/t/n/ff");
    assert.equal(typo.status, 404);
    assert.match((await typo.json()).error.message, /Function t\/n\/ff does not exist/);
    await f.close();
  },
);

t(
  "a tenant or namespace with API keys restricted to it is not deleted until they are revoked",
  async () => {
    const f = await gatewayFixture();
    const json = (method: string, path: string, body?: unknown) =>
      f.app.request(path, {
        method,
        headers: { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    const put = (o: unknown) => json("PUT", "/object/", o);
    for (
      const [type, tenant, name] of [["tenant", "system", "acme"], ["namespace", "acme", "prod"]]
    ) {
      const r = await put({ type, tenant, namespace: "system", name, object: {} });
      assert.equal(r.status, 201, `${type} ${name}`);
    }
    const nsKey = await (await json("POST", "/apikeys", {
      scope: "full",
      tenant: "acme",
      namespace: "prod",
    })).json();
    const tenantKey = await (await json("POST", "/apikeys", { scope: "full", tenant: "acme" }))
      .json();
    // A key would reach whatever is made again under the same name.
    const ns = await json("DELETE", "/object/namespace/acme/system/prod");
    assert.equal(ns.status, 409);
    assert.match((await ns.json()).error.message, /still has 1 API key\(s\); revoke them first/);
    assert.equal((await json("DELETE", `/apikeys/${nsKey.id}`)).status, 200);
    assert.equal((await json("DELETE", "/object/namespace/acme/system/prod")).status, 200);
    const tenant = await json("DELETE", "/object/tenant/system/system/acme");
    assert.equal(tenant.status, 409);
    assert.match((await tenant.json()).error.message, /still has 1 API key\(s\)/);
    assert.equal((await json("DELETE", `/apikeys/${tenantKey.id}`)).status, 200);
    assert.equal((await json("DELETE", "/object/tenant/system/system/acme")).status, 200);
    await f.close();
  },
);

t("an object larger than the store takes is refused 413, not left to the store", async () => {
  const f = await gatewayFixture({ bodyLimit: 4 << 20 });
  const r = await f.app.request("/object/", {
    method: "PUT",
    body: JSON.stringify({
      type: "function",
      tenant: "t",
      namespace: "n",
      name: "big",
      // Within 1 MiB as sent; past it once stored with its defaults.
      object: { image: "x", commands: ["a".repeat(1_048_400)] },
    }),
  });
  assert.equal(r.status, 413);
  assert.match(
    (await r.json()).error.message,
    /function t\/n\/big is \d+ bytes stored; the most is 1048576/,
  );
  assert.equal((await f.app.request("/object/function/t/n/big")).status, 404);
  await f.close();
});

t(
  "a large object body is read in the JSON thread: whitespace goes, the rest is checked as on the loop",
  async () => {
    const f = await gatewayFixture({ bodyLimit: 4 << 20 });
    const put = (body: string) => f.app.request("/object/", { method: "PUT", body });
    const fn = (name: string, spec: unknown) =>
      JSON.stringify({ type: "function", tenant: "t", namespace: "n", name, object: spec });
    // Over 1 MiB without whitespace: refused before the event loop parses it.
    const big = await put(fn("big", { image: "x", commands: ["a".repeat(1_200_000)] }));
    assert.equal(big.status, 413);
    const bigError = (await big.json()).error;
    assert.equal(bigError.code, "too_large");
    assert.match(
      bigError.message,
      /^Request body is 12\d{5} characters of JSON without its whitespace; a stored object is 1048576 bytes at most$/,
    );
    // 3 MiB of spaces around a small function: stored as any other.
    const padded = fn("padded", { image: "x", envs: [["A", "b"]] }).replace(
      '"object"',
      `${" ".repeat(3 << 20)}"object"`,
    );
    const ok = await put(padded);
    assert.equal(ok.status, 201, await ok.clone().text());
    assert.deepEqual((await ok.json()).object.spec.envs, [["A", "b"]]);
    // A status beside the spec is dropped, not counted: 1.2 MB of it leaves a small object.
    const withStatus = await put(
      fn("status", { spec: { image: "x" }, status: { note: "x".repeat(1_200_000) } }),
    );
    assert.equal(withStatus.status, 201, await withStatus.clone().text());
    assert.equal((await withStatus.json()).object.status, undefined);
    // A __proto__ key survives the thread's round trip and is refused by name.
    const proto = await put(
      fn("proto", { spec: { image: "x", sample_query: { pad: "p".repeat(70_000) } } })
        .replace('"pad"', '"__proto__":1,"pad"'),
    );
    assert.equal(proto.status, 400);
    assert.match(
      (await proto.json()).error.message,
      /sample_query\.__proto__: "__proto__" is not allowed/,
    );
    // Not JSON, and too deep: 400 as on the loop.
    const bad = await put(`{"type":"function",${" ".repeat(70_000)}`);
    assert.equal(bad.status, 400);
    assert.match((await bad.json()).error.message, /^Request body is not valid JSON: /);
    // Not UTF-8, off the loop and on it: 400, nothing stored with U+FFFD in place of its bytes.
    for (const pad of [70_000, 0]) {
      const text = fn("latin", { image: "x", envs: [["A", "b\u00ff"]] })
        .replace('"object"', `${" ".repeat(pad)}"object"`);
      const bytes = new TextEncoder().encode(text);
      const at = bytes.lastIndexOf(0xc3); // "ÿ" as UTF-8 is c3 bf: its first byte alone is not
      const latin = new Uint8Array([...bytes.subarray(0, at), 0xff, ...bytes.subarray(at + 2)]);
      const res = await f.app.request("/object/", { method: "PUT", body: latin });
      assert.equal(res.status, 400, `padded ${pad}`);
      assert.match((await res.json()).error.message, /^Request body is not valid JSON: .*UTF-8/);
    }
    assert.equal((await f.app.request("/object/function/t/n/latin")).status, 404);
    const deep = await put(`${"[".repeat(65)}${" ".repeat(70_000)}${"]".repeat(65)}`);
    assert.equal(deep.status, 400);
    assert.match(
      (await deep.json()).error.message,
      /nests arrays and objects more than 64 levels deep/,
    );
    assert.equal(f.deps.jsonProbe.pending, 0);
    await f.close();
  },
);

t("a known path with the wrong method is answered 405 with Allow, an unknown one 404", async () => {
  const f = await gatewayFixture();
  const cases: [string, string, number, string | null][] = [
    ["PATCH", "/object/", 405, "PUT, POST"],
    ["PUT", "/calls/t:n:abc", 405, "GET, HEAD, DELETE"],
    ["GET", "/v1/completions", 405, "POST"],
    ["POST", "/objects/function/t/n", 405, "GET, HEAD"],
    ["GET", "/nowhere", 404, null],
  ];
  for (const [method, path, status, allow] of cases) {
    const r = await f.app.request(path, { method });
    assert.equal(r.status, status, `${method} ${path}`);
    assert.equal(r.headers.get("allow"), allow, `${method} ${path}`);
    const e = (await r.json()).error;
    assert.equal(e.code, status === 405 ? "method_not_allowed" : "not_found");
  }
  await f.close();
});

t("object writes and deletes refuse parameters they do not take, and repeated ones", async () => {
  const f = await gatewayFixture();
  const policy = (name: string) =>
    JSON.stringify({ type: "funcpolicy", tenant: "t", namespace: "n", name, object: {} });
  const write = (method: string, query: string, name = "p") =>
    f.app.request(`/object/${query}`, { method, body: policy(name) });
  // A misspelt dryRun wrote, a repeated one wrote or not by its first value.
  for (const query of ["?dryrun=1", "?dry_run=1", "?dryRun=0&dryRun=1", "?dryRun=1&dryRun=0"]) {
    const r = await write("PUT", query);
    assert.equal(r.status, 400, query);
    const e = (await r.json()).error;
    assert.match(
      e.message,
      /Invalid object write: (unknown parameter "dry.?run"|parameter "dryRun" given more than once)/,
    );
  }
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p")).status, 404, "nothing written");
  const dry = await write("PUT", "?dryRun=1");
  assert.equal(dry.status, 200);
  await dry.body?.cancel();
  const made = await write("PUT", "");
  assert.equal(made.status, 201);
  const { revision } = await made.json();
  const post = await f.app.request("/object/?dryRun=1&x=1", {
    method: "POST",
    body: JSON.stringify({ ...JSON.parse(policy("p")), revision }),
  });
  assert.equal(post.status, 400);
  await post.body?.cancel();
  // A misspelt revision deleted unchecked.
  for (const query of ["?revison=1", `?revision=${revision}&revision=1`, "?force=1"]) {
    const r = await f.app.request(`/object/funcpolicy/t/n/p${query}`, { method: "DELETE" });
    assert.equal(r.status, 400, query);
    await r.body?.cancel();
  }
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p")).status, 200, "still there");
  const del = await f.app.request(`/object/funcpolicy/t/n/p?revision=${revision}`, {
    method: "DELETE",
  });
  assert.equal(del.status, 200);
  await del.body?.cancel();
  await f.close();
});

t("object writes refuse a caller without credentials before reading the body", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  for (const method of ["PUT", "POST"]) {
    // Neither a bad body's 400 nor the time to parse a heavy one: 401 at once.
    for (const body of ['{"type":"pod"}', "[" + "[],".repeat(300_000) + "[]]"]) {
      const r = await f.app.request("/object/", { method, body });
      assert.equal(r.status, 401, `${method} ${body.slice(0, 20)}`);
      assert.equal((await r.json()).error.code, "unauthenticated");
    }
  }
  await f.close();
});

t("object writes refuse JSON too deep or too heavy to parse, before parsing it", async () => {
  const f = await gatewayFixture({ bodyLimit: 1 << 20 });
  const cases: [string, RegExp][] = [
    ["[".repeat(65) + "]".repeat(65), /nests arrays and objects more than 64 levels deep/],
    [
      "[" + "[],".repeat(100_000) + "[]]",
      /holds more than 100000 arrays, objects and object members/,
    ],
  ];
  for (const [body, re] of cases) {
    const r = await f.app.request("/object/", { method: "PUT", body });
    assert.equal(r.status, 400);
    assert.match((await r.json()).error.message, re);
  }
  await f.close();
});

t("an object write's body is 4 MiB at most, whatever INFERX_BODY_LIMIT allows calls", async () => {
  const f = await gatewayFixture({ bodyLimit: 16 << 20 });
  const big = JSON.stringify({
    type: "funcpolicy",
    tenant: "t",
    namespace: "n",
    name: "p",
    object: { x: "y".repeat(MAX_OBJECT_BODY) },
  });
  const r = await f.app.request("/object/", { method: "PUT", body: big });
  assert.equal(r.status, 413);
  assert.equal((await r.json()).error.details.limit, MAX_OBJECT_BODY);
  await f.close();
});

Deno.test("the reads that take no parameter refuse one, rather than answer everything as if filtered", async () => {
  const f = await gatewayFixture();
  for (
    const path of [
      "/object/function/t/n/f?fields=spec",
      "/objects/function?limit=10",
      "/objects/function/t/n?limit=10",
      "/objects/tenant?continue=x",
      "/nodes?x=1",
      "/nodes/n1/snapshots?func=f",
      "/pods/t/n/f?state=Ready",
      "/apikeys?tenant=t",
      "/apikeys/k1?tenant=u",
      "/rollout/t/n/f?version=1",
    ]
  ) {
    const r = await f.app.request(path);
    assert.equal(r.status, 400, path);
    const { error } = await r.json();
    assert.match(error.message, /: unknown parameter "[a-z]+" \(it takes none\)$/, path);
  }
  // A pod's log takes `lines`, once: a misspelt one would give the default 50 lines unsaid.
  for (
    const [path, want] of [
      ["/pods/t/n/f/p1/log?line=5", /unknown parameter "line" \(it takes lines\)$/],
      ["/pods/t/n/f/p1/log?lines=1&lines=3", /parameter "lines" given more than once$/],
      ["/pods/t/n/f/p1/log?lines=0", /lines/],
    ] as const
  ) {
    const r = await f.app.request(path);
    assert.equal(r.status, 400, path);
    assert.match((await r.json()).error.message, want, path);
  }
  const r = await f.app.request("/objects/function");
  assert.equal(r.status, 200);
  await r.body?.cancel();
  await f.close();
});

Deno.test("object reads and deletes tell a caller without credentials 401 before a bad type or action", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  for (
    const [method, path] of [
      ["GET", "/object/bogus/t/n/x"],
      ["DELETE", "/object/bogus/t/n/x"],
      ["GET", "/objects/bogus"],
      ["GET", "/objects/bogus/t/n"],
      ["POST", "/rollout/t/n/f/bogus"],
    ]
  ) {
    const r = await f.app.request(path, { method });
    assert.equal(r.status, 401, `${method} ${path}`);
    assert.equal((await r.json()).error.code, "unauthenticated");
  }
  await f.close();
});
