import assert from "node:assert/strict";
import { fakeWorker, gatewayFixture } from "../testing.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

const until = async (what: string, check: () => boolean) => {
  for (const deadline = Date.now() + 5000; !check();) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

t(
  "a canary splits calls between versions, says which answered, and is promoted or rolled back",
  async () => {
    const f = await gatewayFixture({ policy: { canary_percent: 25, parallel: 100 } });
    const workers = [fakeWorker("a"), fakeWorker("b")];
    f.sched.endpoints.push(...workers.map((w) => w.endpoint));
    const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
    const cur = (await f.meta.get(ref))!;
    const spec = JSON.parse(cur.value).object.spec;
    await f.meta.update({ ...ref, object: { ...spec, image: "y" }, revision: cur.revision });
    await until("the gateway to see version 2", () => f.cache.split("t/n/f")?.length === 2);

    const shown = await (await f.app.request("/rollout/t/n/f")).json();
    assert.deepEqual(
      [shown.version, shown.stable_version, shown.kept_versions, shown.traffic],
      [2, 1, [2, 1], [{ version: 2, percent: 25 }, { version: 1, percent: 75 }]],
    );
    const versions: string[] = [];
    for (let i = 0; i < 8; i++) {
      const r = await f.app.request("/funccall/t/n/f/x", { method: "POST" });
      versions.push(r.headers.get("x-inferx-version")!);
      await r.body?.cancel();
    }
    assert.deepEqual(versions.filter((v) => v === "2").length, 2, versions.join(","));
    assert.deepEqual(f.sched.leases.map((l) => l.version).sort(), [1, 2]);
    assert.deepEqual(
      f.audit.requests.map((r) => r.version).filter((v) => v === 2).length,
      2,
      "the audit says which version answered",
    );

    // A guard in a body would be ignored: refused, nothing promoted.
    const guarded = await f.app.request("/rollout/t/n/f/promote", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ version: 99 }),
    });
    assert.equal(guarded.status, 400);
    assert.match(
      (await guarded.json()).error.message,
      /^Invalid rollout: it takes no body \(its parameters go in the query: version\)$/,
    );
    assert.equal((await (await f.app.request("/rollout/t/n/f")).json()).stable_version, 1);
    const promoted = await f.app.request("/rollout/t/n/f/promote", { method: "POST" });
    assert.equal(promoted.status, 200);
    assert.deepEqual((await promoted.json()).traffic, [{ version: 2, percent: 100 }]);
    const again = await f.app.request("/rollout/t/n/f/promote", { method: "POST" });
    assert.equal(again.status, 409);
    assert.match((await again.json()).error.message, /already takes every call/);
    const nothing = await f.app.request("/rollout/t/n/f/rollback", { method: "POST" });
    assert.equal(nothing.status, 409);
    assert.match((await nothing.json()).error.message, /no older version serves/);
    await until("version 1 to drain", () => f.cache.split("t/n/f")?.length === 1);
    assert.ok(
      f.sched.returns.length >= 1,
      "the version 1 worker went back once the split left it out",
    );
    for (const w of workers) await w.close();
    await f.close();
  },
);

t("rollback returns to the stable version's spec under the same number", async () => {
  const f = await gatewayFixture({ policy: { canary_percent: 10 } });
  const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
  const cur = (await f.meta.get(ref))!;
  const spec = JSON.parse(cur.value).object.spec;
  await f.meta.update({ ...ref, object: { ...spec, image: "broken" }, revision: cur.revision });
  const r = await f.app.request("/rollout/t/n/f/rollback", { method: "POST" });
  assert.equal(r.status, 200);
  const body = await r.json();
  assert.deepEqual([body.version, body.last_version, body.traffic], [1, 2, [{
    version: 1,
    percent: 100,
  }]]);
  const stored = JSON.parse((await f.meta.get(ref))!.value);
  assert.equal(stored.object.spec.image, "x");
  await f.close();
});

t("rollout routes refuse bad actions, unknown functions and callers without a grant", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const admin = { authorization: "Bearer admin-key-0123456789" };
  const cases: [string, string, Record<string, string>, number, RegExp][] = [
    ["POST", "/rollout/t/n/f/undo", admin, 400, /use promote or rollback/],
    ["POST", "/rollout/t/n/nope/promote", admin, 404, /does not exist/],
    ["GET", "/rollout/t/n/nope", admin, 404, /does not exist/],
    ["POST", "/rollout/t/n/f/promote", {}, 401, /./],
  ];
  for (const [method, path, headers, status, re] of cases) {
    const r = await f.app.request(path, { method, headers });
    assert.equal(r.status, status, `${method} ${path}`);
    assert.match((await r.json()).error.message, re);
  }
  await f.close();
});

t("a promote or rollback with nothing to do answers 409 without trying to write", async () => {
  const f = await gatewayFixture();
  let updates = 0;
  const update = f.meta.update.bind(f.meta);
  f.meta.update = ((o: Parameters<typeof update>[0]) => (updates++, update(o))) as typeof update;
  for (const action of ["promote", "rollback"]) {
    const r = await f.app.request(`/rollout/t/n/f/${action}`, { method: "POST" });
    assert.equal(r.status, 409);
    assert.equal((await r.json()).error.code, "conflict");
  }
  // Before, each went to the state service ten times (taken for a lost compare-and-swap).
  assert.equal(updates, 0);
  await f.close();
});

t("a canary no node can hold refuses its own calls only: the stable version's go on", async () => {
  const f = await gatewayFixture({ policy: { canary_percent: 10 } });
  const w = fakeWorker("stable");
  f.sched.endpoints.push(w.endpoint);
  const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
  let cur = (await f.meta.get(ref))!;
  const spec = JSON.parse(cur.value).object.spec;
  await f.meta.update({ ...ref, object: { ...spec, image: "y" }, revision: cur.revision });
  await until("the gateway to see version 2", () => f.cache.split("t/n/f")?.length === 2);
  // The scheduler's condition for version 2, the newest (scheduler/conditions.ts).
  cur = (await f.meta.get(ref))!;
  const object = JSON.parse(cur.value).object;
  const conditions = [{
    type: "Schedulable",
    status: "False",
    reason: "NoFit",
    message: "no B300",
  }];
  await f.meta.update({
    ...ref,
    revision: cur.revision,
    object: { ...object, status: { conditions } },
  });
  await new Promise((r) => setTimeout(r, 20)); // the informer delivers it
  const statuses: number[] = [];
  for (let i = 0; i < 10; i++) {
    const r = await f.app.request("/funccall/t/n/f/x", { method: "POST" });
    statuses.push(r.status);
    await r.body?.cancel();
  }
  assert.deepEqual(statuses.filter((s) => s === 503).length, 1, statuses.join(","));
  assert.deepEqual(f.sched.leases.map((l) => l.version), [1], "version 2 was not asked for");
  await w.close();
  await f.close();
});

t(
  "a rollout does not promote, nor roll back from, a version deployed since the caller looked",
  async () => {
    const f = await gatewayFixture({ policy: { canary_percent: 10 } });
    const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
    const deploy = async (image: string) => {
      const cur = (await f.meta.get(ref))!;
      const spec = JSON.parse(cur.value).object.spec;
      await f.meta.update({ ...ref, object: { ...spec, image }, revision: cur.revision });
    };
    await deploy("v2");
    const shown = await (await f.app.request("/rollout/t/n/f")).json();
    assert.equal(shown.version, 2);
    await deploy("v3"); // meanwhile, another deploy
    for (const action of ["promote", "rollback"]) {
      const r = await f.app.request(`/rollout/t/n/f/${action}?version=2`, { method: "POST" });
      assert.equal(r.status, 409, action);
      const { error } = await r.json();
      assert.equal(
        error.message,
        `Cannot ${action} t/n/f: its newest version is 3, not 2; look again ` +
          `(GET /rollout/t/n/f) and send ?version=3 to ${action} with it`,
      );
      assert.deepEqual(error.details, { version: 3 });
    }
    const bad = await f.app.request("/rollout/t/n/f/promote?version=two", { method: "POST" });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
    // Without ?version=, a deploy landing between the route's read and its write is not promoted.
    const meta = f.deps.meta;
    let raced = false;
    f.deps.meta = new Proxy(meta, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target);
        if (prop !== "get") return typeof v === "function" ? v.bind(target) : v;
        return async (...args: Parameters<typeof meta.get>) => {
          const rec = await meta.get(...args);
          if (!raced && args[0].type === "function") (raced = true, await deploy("v4"));
          return rec;
        };
      },
    });
    const r = await f.app.request("/rollout/t/n/f/promote", { method: "POST" });
    assert.equal(r.status, 409);
    assert.match(
      (await r.json()).error.message,
      /newest version is 4, not 3 \(deployed meanwhile\)/,
    );
    f.deps.meta = meta;
    const stored = JSON.parse((await f.meta.get(ref))!.value);
    assert.deepEqual([stored.version, stored.stable_version], [4, 1], "nothing promoted");
    const ok = await f.app.request("/rollout/t/n/f/promote?version=4", { method: "POST" });
    assert.equal(ok.status, 200);
    assert.deepEqual((await ok.json()).traffic, [{ version: 4, percent: 100 }]);
    await f.close();
  },
);
