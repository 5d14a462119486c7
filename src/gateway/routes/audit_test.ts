import assert from "node:assert/strict";
import { gatewayFixture } from "../testing.ts";
import { ADMIN } from "../auth.ts";
import { pageOf, readableAudit } from "./audit.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

t("the audit routes filter request rows and refuse bad queries", async () => {
  const f = await gatewayFixture();
  await (await f.app.request("/funccall/t/n/nope/x")).body?.cancel();
  await (await f.app.request("/funccall/t/n/other/x")).body?.cancel();
  const all = await (await f.app.request("/audit/requests?tenant=t")).json();
  assert.deepEqual(all.items.map((r: { func: string }) => r.func), ["other", "nope"]);
  const one = await (await f.app.request("/audit/requests?tenant=t&func=nope&limit=5")).json();
  assert.deepEqual(one.items.map((r: { func: string }) => r.func), ["nope"]);
  assert.equal(one.stats.backend, "embedded");
  const stats = await (await f.app.request("/audit/stats")).json();
  assert.equal(stats.healthy, true);
  assert.equal(stats.gateway, "gw-test", "whose buffer the figures are");
  // An empty filter is none (as a form sends it), not a filter that matches nothing.
  const empty = await (await f.app.request("/audit/requests?tenant=t&namespace=&func=")).json();
  assert.deepEqual(empty.items.map((r: { func: string }) => r.func), ["other", "nope"]);
  const cases: [string, number, RegExp][] = [
    ["/audit/requests?func=f", 400, /need tenant/],
    ["/audit/requests?tenant=t&limit=-1", 400, /limit/],
    ["/audit/requests?tenant=t&since=soon", 400, /since/],
    ["/audit/requests?since=253402300800000", 400, /an integer from 0 to 253402300799999/],
    ["/audit/requests?tenant=t&limit=", 400, /Invalid limit "": an integer from 0 to 10000/],
    ["/audit/requests?tenant=t&since=", 400, /since/],
    ["/audit/requests?tenant=t&limit=1e2", 400, /limit/],
    ["/audit/requests?tenant=t&limit=0x10", 400, /limit/],
    ["/audit/things", 404, /No audit of "things"/],
    ["/audit/requests?tenant=t&until=soon", 400, /until/],
    ["/audit/requests?tenant=t&untill=5", 400, /unknown parameter "untill"/],
    ["/audit/requests?tenant=t&funcx=nope", 400, /unknown parameter "funcx"/],
    ["/audit/stats?status=5xx", 400, /takes tenant and since, not "status"/],
  ];
  for (const [path, status, re] of cases) {
    const r = await f.app.request(path);
    assert.equal(r.status, status, path);
    assert.match((await r.json()).error.message, re);
  }
  await f.close();
});

t("the audit needs a read grant: anonymous callers get 401, whatever they ask", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  for (
    const path of [
      "/audit/requests?tenant=t",
      "/audit/requests?tenant=t&untill=5",
      "/audit/stats?status=5xx",
      "/audit/pods?limit=-1",
    ]
  ) {
    const r = await f.app.request(path);
    assert.equal(r.status, 401, path);
    assert.equal((await r.json()).error.code, "unauthenticated");
  }
  await f.close();
});

t("/audit/requests filters by status code or class; pod rows take no status", async () => {
  const f = await gatewayFixture();
  await (await f.app.request("/funccall/t/n/nope/x")).body?.cancel();
  const late = await f.app.request("/funccall/t/n/f/x", {
    headers: { "x-inferx-timeout": "0.05" },
  });
  assert.equal(late.status, 504);
  await late.body?.cancel();
  const statuses = async (q: string) =>
    (await (await f.app.request(`/audit/requests?tenant=t&${q}`)).json()).items.map(
      (r: { status: number }) => r.status,
    );
  assert.deepEqual(await statuses("status=404"), [404]);
  assert.deepEqual(await statuses("status=5xx"), [504]);
  assert.deepEqual(await statuses("status=2xx"), []);
  for (
    const [path, re] of [
      ["/audit/requests?status=600", /Invalid status "600"/],
      ["/audit/requests?status=5x", /Invalid status "5x"/],
      ["/audit/pods?status=404", /status filters request rows only/],
    ] as const
  ) {
    const r = await f.app.request(path);
    assert.equal(r.status, 400, path);
    assert.match((await r.json()).error.message, re);
  }
  await f.close();
});

t(
  "a tenant's reader sees the audit buffer's health, not its counts of every tenant's calls",
  async () => {
    const admin = { authorization: "Bearer admin-key-0123456789" };
    const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
    const r = await f.app.request("/apikeys", {
      method: "POST",
      headers: { "content-type": "application/json", ...admin },
      body: JSON.stringify({ scope: "read", tenant: "t" }),
    });
    assert.equal(r.status, 201);
    const reader = { authorization: `Bearer ${(await r.json()).key}` };
    await (await f.app.request("/funccall/u/n/f/x", { headers: admin })).body?.cancel();
    for (const path of ["/audit/stats?tenant=t", "/audit/requests?tenant=t"]) {
      const mine = await (await f.app.request(path, { headers: reader })).json();
      const stats = path.startsWith("/audit/stats") ? mine : mine.stats;
      assert.deepEqual(
        Object.keys(stats).filter((k) => k !== "usage").sort(),
        ["backend", "gateway", "healthy"],
        path,
      );
      const all = await (await f.app.request(path, { headers: admin })).json();
      const allStats = path.startsWith("/audit/stats") ? all : all.stats;
      assert.equal(typeof allStats.written, "number", path);
      assert.equal(typeof allStats.buffered, "number", path);
    }
    await f.close();
  },
);

t("the audit pages back with next_until, each row once, a millisecond never split", async () => {
  const f = await gatewayFixture();
  await (await f.app.request("/funccall/t/n/x/x")).body?.cancel();
  const row = f.audit.requests.pop()!;
  // Oldest first, as the log keeps them; two of one millisecond.
  for (const [func, time] of [["a", 7], ["b", 8], ["c", 9], ["d", 9], ["e", 10]] as const) {
    f.audit.requests.push({ ...row, func, time });
  }
  const seen: string[] = [];
  const pages: string[][] = [];
  let until: number | undefined;
  for (let n = 0;; n++) {
    assert.ok(n < 10, "pages end");
    const q = `/audit/requests?tenant=t&limit=2${until === undefined ? "" : `&until=${until}`}`;
    const page = await (await f.app.request(q)).json();
    pages.push(page.items.map((r: { func: string }) => r.func));
    seen.push(...pages.at(-1)!);
    if (page.next_until === undefined) break;
    until = page.next_until;
  }
  assert.deepEqual(pages, [["e"], ["d", "c"], ["b", "a"]], "9's two rows on one page");
  assert.deepEqual(seen, ["e", "d", "c", "b", "a"]);
  // One millisecond past the limit: pageOf says so (its rows up to the limit, next_until that
  // millisecond) and the route gives the millisecond whole.
  const tie = [{ time: 5 }, { time: 5 }, { time: 5 }];
  assert.deepEqual(pageOf(tie, 2), { items: tie.slice(0, 2), nextUntil: 5 });
  f.audit.requests.length = 0;
  for (const [func, time] of [["a", 7], ["b", 9], ["c", 9], ["d", 9], ["e", 10]] as const) {
    f.audit.requests.push({ ...row, func, time });
  }
  const paged: string[][] = [];
  until = undefined;
  for (let n = 0;; n++) {
    assert.ok(n < 10, "pages end");
    const q: string = `/audit/requests?tenant=t&limit=2${
      until === undefined ? "" : `&until=${until}`
    }`;
    const page: { items: { func: string }[]; next_until?: number } = await (await f.app.request(q))
      .json();
    paged.push(page.items.map((r: { func: string }) => r.func));
    if (page.next_until === undefined) break;
    until = page.next_until;
  }
  assert.deepEqual(paged, [["e"], ["d", "c", "b"], ["a"]], "9's three rows whole, none lost");
  await f.close();
});

t(
  "a tenant or namespace made again under a deleted one's name shows its readers none of the old rows",
  async () => {
    const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
    const admin = { authorization: "Bearer admin-key-0123456789" };
    const sys = "system";
    const put = (type: "tenant" | "namespace", tenant: string, name: string) =>
      f.meta.create({ type, tenant, namespace: sys, name, object: {} });
    const drop = (type: "tenant" | "namespace", tenant: string, name: string) =>
      f.meta.delete({ type, tenant, namespace: sys, name });
    const call = async (path: string) => await (await f.app.request(path)).body?.cancel();
    const keyFor = async (tenant: string, namespace?: string) => {
      const r = await f.app.request("/apikeys", {
        method: "POST",
        headers: { "content-type": "application/json", ...admin },
        body: JSON.stringify({ scope: "read", tenant, namespace, name: "reader" }),
      });
      assert.equal(r.status, 201);
      return { authorization: `Bearer ${(await r.json()).key}` };
    };
    const funcs = async (path: string, headers: Record<string, string>) => {
      const r = await f.app.request(path, { headers });
      assert.equal(r.status, 200, path);
      return (await r.json()).items.map((x: { func: string }) => x.func);
    };
    const tick = () => new Promise((r) => setTimeout(r, 5));

    // Namespace t/m: a row, then the namespace deleted and made again.
    await put("namespace", "t", "m");
    await call("/funccall/t/m/old/x");
    await tick();
    await drop("namespace", "t", "m");
    await put("namespace", "t", "m");
    await tick();
    await call("/funccall/t/m/new/x");
    const nsKey = await keyFor("t", "m");
    const inM = "/audit/requests?tenant=t&namespace=m";
    assert.deepEqual(await funcs(inM, nsKey), ["new"], "the namespace's reader: its own rows only");
    assert.deepEqual(
      await funcs(inM, await keyFor("t")),
      ["new", "old"],
      "the tenant's: all of it",
    );
    assert.deepEqual(await funcs(inM, admin), ["new", "old"]);
    const page = await (await f.app.request(
      "/ui/part/audit?kind=requests&tenant=t&namespace=m",
      { headers: nsKey },
    )).text();
    assert.ok(page.includes("t/m/new") && !page.includes("t/m/old"), "the dashboard's page alike");

    // Tenant u: a row, then the tenant deleted and made again.
    await put("tenant", sys, "u");
    await put("namespace", "u", "a");
    await call("/funccall/u/a/gone/x");
    await tick();
    await drop("namespace", "u", "a");
    await drop("tenant", sys, "u");
    await put("tenant", sys, "u");
    const uKey = await keyFor("u");
    assert.deepEqual(await funcs("/audit/requests?tenant=u", uKey), []);
    assert.deepEqual(await funcs("/audit/requests?tenant=u", admin), ["gone"]);
    const created = Date.parse(
      (await (await f.app.request("/object/tenant/system/system/u", { headers: admin })).json())
        .created_at,
    );
    assert.ok(Number.isFinite(created), "GET shows when the object was created");
    const stats = await (await f.app.request("/audit/stats?tenant=u&since=0", { headers: uKey }))
      .json();
    assert.equal(stats.usage.since, created, "token usage counted from the tenant's creation");

    // Grants naming a tenant that is gone (an OIDC token's, say) read nothing there.
    const oidc = { id: "oidc:x", grants: [{ scope: "read" as const, tenant: "nobody" }] };
    assert.equal(await readableAudit(f.deps, oidc, { tenant: "nobody", limit: 5 }), undefined);
    const q = { tenant: "nobody", limit: 5 };
    assert.equal(await readableAudit(f.deps, ADMIN, q), q, "the cluster's reader: unchanged");
    await f.close();
  },
);
