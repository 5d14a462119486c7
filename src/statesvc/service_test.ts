import assert from "node:assert/strict";
import { openSqliteStore } from "../store/sqlite.ts";
import type { MetaStore } from "../store/types.ts";
import { StateService } from "./service.ts";
import { testCall, testPod } from "../common/testing.ts";
import { callBodyRef } from "../model/call.ts";
import { objectKey } from "../model/keys.ts";

const fn = (name: string) => ({
  type: "function" as const,
  tenant: "t",
  namespace: "n",
  name,
  object: { spec: { image: "x", policy: { Obj: { max_replica: 1 } } } },
});
const sys = { tenant: "system", namespace: "system" };

/** A state service with tenant `t` and namespace `t/n`, on `wrap` of its store when given. */
async function service(tenantSpec: unknown = {}, wrap = (s: MetaStore) => s) {
  const store = await openSqliteStore();
  const svc = new StateService(wrap(store));
  await svc.create({ type: "tenant", ...sys, name: "t", object: tenantSpec });
  await svc.create({ type: "namespace", tenant: "t", namespace: "system", name: "n", object: {} });
  return { svc, store, close: () => store.close() };
}

const outcomes = (rs: PromiseSettledResult<unknown>[]) =>
  rs.map((r) => r.status === "fulfilled" ? "ok" : (r.reason as { code: string }).code);

Deno.test("writes whose checks read other objects do not pass them together: a namespace deleted while a function is made in it", async () => {
  const { svc, close } = await service();
  const ns = { type: "namespace" as const, tenant: "t", namespace: "system", name: "n" };
  const rs = await Promise.allSettled([svc.create(fn("f")), svc.delete(ns)]);
  // Whichever went first, the other sees it: never a function without its namespace.
  const fnThere = !!(await svc.get({ type: "function", tenant: "t", namespace: "n", name: "f" }));
  const nsThere = !!(await svc.get(ns));
  assert.deepEqual(outcomes(rs), ["ok", "conflict"]);
  assert.deepEqual([fnThere, nsThere], [true, true]);
  await close();
});

Deno.test("writes whose checks read other objects do not pass them together: a quota of one function", async () => {
  const { svc, close } = await service({ spec: { quota: { max_functions: 1 } } });
  const rs = await Promise.allSettled([
    svc.create(fn("a")),
    svc.create(fn("b")),
    svc.create(fn("c")),
  ]);
  assert.deepEqual(outcomes(rs), ["ok", "quota_exceeded", "quota_exceeded"]);
  assert.equal((await svc.list("function", "t")).items.length, 1);
  await close();
});

Deno.test("an object's size limit counts the bytes it takes stored, not its characters", async () => {
  const store = await openSqliteStore();
  const svc = new StateService(store);
  try {
    await svc.create({ type: "tenant", ...sys, name: "t", object: {} });
    await svc.create({
      type: "namespace",
      tenant: "t",
      namespace: "system",
      name: "n",
      object: {},
    });
    // 540,000 characters (annotations of 45,000 each), 1.62 MB as UTF-8.
    const annotations: Record<string, string> = {};
    for (let i = 0; i < 12; i++) annotations[`note${i}`] = "€".repeat(45_000);
    const err = await svc.create({
      type: "function",
      tenant: "t",
      namespace: "n",
      name: "f",
      object: { metadata: { annotations }, spec: { image: "x" } },
    }).then(() => undefined, (e) => e);
    assert.equal(err?.code, "too_large", String(err));
    assert.ok(Number(/(\d+) bytes stored/.exec(err.message)![1]) > 1_600_000, err.message);
  } finally {
    await store.close();
  }
});

Deno.test("an API key or a callback secret is admitted only for a tenant and namespace that exist", async () => {
  const { svc, close } = await service();
  try {
    const key = (id: string, namespace?: string) => ({
      type: "apikey" as const,
      ...sys,
      name: id,
      object: {
        id,
        hash: "0".repeat(64),
        scope: "full",
        tenant: "t",
        namespace,
        createdAt: 1,
        createdBy: "x",
      },
    });
    // Written past the gateway's own check (a namespace deleted meanwhile): refused all the same.
    await assert.rejects(svc.create(key("abcdefgh", "gone")), { code: "not_found" });
    await svc.create(key("abcdefgi", "n"));
    const secret = (tenant: string) => ({
      type: "callsecret" as const,
      ...sys,
      name: tenant,
      object: { tenant, secret: "a".repeat(64), createdAt: 1 },
    });
    await assert.rejects(svc.create(secret("nobody")), { code: "not_found" });
    await svc.create(secret("t"));
  } finally {
    await close();
  }
});

Deno.test("deleting a tenant deletes its callback secret: a namesake made later signs with its own", async () => {
  const { svc, close } = await service();
  try {
    const ref = { type: "callsecret" as const, ...sys, name: "t" };
    await svc.create({ ...ref, object: { tenant: "t", secret: "a".repeat(64), createdAt: 1 } });
    await svc.delete({ type: "namespace", tenant: "t", namespace: "system", name: "n" });
    await svc.delete({ type: "tenant", ...sys, name: "t" });
    assert.equal(await svc.get(ref), undefined);
  } finally {
    await close();
  }
});

Deno.test("deleting a namespace deletes its calls and their bodies: a namesake made later does not show them", async () => {
  const { svc, close } = await service();
  try {
    await svc.create({
      type: "namespace",
      tenant: "t",
      namespace: "system",
      name: "m",
      object: {},
    });
    const calls = ["n", "m"].map((namespace) => testCall("t", namespace));
    for (const c of calls) {
      const ref = {
        type: "call" as const,
        tenant: "t",
        namespace: c.namespace,
        name: c.id.split(":")[2],
      };
      await svc.create({ ...ref, object: c });
      await svc.create({ ...callBodyRef(ref, "result"), object: { body: "eA==" } });
    }
    await svc.delete({ type: "namespace", tenant: "t", namespace: "system", name: "n" });
    assert.deepEqual((await svc.list("call", "t")).items.map((r) => r.namespace), ["m"]);
    assert.deepEqual((await svc.list("callbody", "t")).items.map((r) => r.namespace), ["m"]);
    await svc.delete({ type: "namespace", tenant: "t", namespace: "system", name: "m" });
    await svc.delete({ type: "tenant", ...sys, name: "t" });
    assert.equal((await svc.list("call")).items.length, 0);
    assert.equal((await svc.list("callbody")).items.length, 0);
  } finally {
    await close();
  }
});

Deno.test("a call is stored only in a namespace that is there, never past its deletion", async () => {
  const { svc, close } = await service();
  try {
    const callIn = (namespace: string) => {
      const c = testCall("t", namespace);
      return { type: "call" as const, tenant: "t", namespace, name: c.id.split(":")[2], object: c };
    };
    await assert.rejects(svc.create(callIn("gone")), /namespace t\/gone does not exist/);
    await assert.rejects(
      svc.create({ ...callBodyRef(callIn("gone"), "request"), object: { body: "eA==" } }),
      /namespace t\/gone does not exist/,
    );
    // A call whose body is stored apart comes after its body: one whose namespace was deleted
    // (and made again) between the two writes finds its body gone and is refused.
    const big = callIn("n");
    (big.object as { bodyBytes?: number; body?: string }).bodyBytes = 5000;
    delete (big.object as { body?: string }).body;
    await svc.create({ ...callBodyRef(big, "request"), object: { body: "eA==" } });
    const nsRef = { type: "namespace" as const, tenant: "t", namespace: "system", name: "n" };
    await svc.delete(nsRef);
    await svc.create({ ...nsRef, object: {} });
    await assert.rejects(svc.create(big), /request body is not stored/);
    await svc.create({ ...callBodyRef(big, "request"), object: { body: "eA==" } });
    await svc.create(big);
    await svc.delete({ type: "call", tenant: "t", namespace: "n", name: big.name });
    // Stored while the namespace is being deleted: each either before (deleted with it) or
    // refused after, none outliving it, for a namesake made later to show and run.
    const ns = { type: "namespace" as const, tenant: "t", namespace: "system", name: "n" };
    for (let round = 0; round < 5; round++) {
      const writes = Array.from({ length: 20 }, () => svc.create(callIn("n")).catch(() => "no"));
      const deleted = svc.delete(ns);
      const later = Array.from({ length: 20 }, () => svc.create(callIn("n")).catch(() => "no"));
      const outcomes = await Promise.all([...writes, deleted, ...later]);
      assert.ok(outcomes.slice(21).every((o) => o === "no"), "after the deletion: refused");
      assert.equal((await svc.list("call", "t")).items.length, 0, `round ${round}`);
      await svc.create({ ...ns, object: {} });
    }
  } finally {
    await close();
  }
});

Deno.test("a namespace's delete cut off half way leaves it standing with what is left of its calls, to be deleted again", async () => {
  // The store as the state service sees it, cut off (a crash) at its `crashAt`th delete.
  let deletes = 0;
  let crashAt = Infinity;
  const { svc, close } = await service({}, (store) =>
    new Proxy(store, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target);
        if (typeof v !== "function") return v;
        if (prop !== "delete") return v.bind(target);
        return (...args: unknown[]) => {
          if (++deletes === crashAt) return Promise.reject(new Error("the process was killed"));
          return v.apply(target, args);
        };
      },
    }));
  try {
    for (let i = 0; i < 3; i++) {
      const c = testCall("t", "n");
      const ref = { type: "call" as const, tenant: "t", namespace: "n", name: c.id.split(":")[2] };
      await svc.create({ ...ref, object: c });
    }
    const ns = { type: "namespace" as const, tenant: "t", namespace: "system", name: "n" };
    for (crashAt = 1; crashAt <= 4; crashAt++) {
      deletes = 0;
      await svc.delete(ns).catch(() => {});
      const standing = !!await svc.get(ns);
      const calls = (await svc.list("call", "t")).items.length;
      assert.ok(standing || calls === 0, `cut off at delete ${crashAt}: ${calls} calls outlive it`);
    }
    crashAt = Infinity;
    if (await svc.get(ns)) await svc.delete(ns);
    assert.equal(await svc.get(ns), undefined);
    assert.equal((await svc.list("call", "t")).items.length, 0);
  } finally {
    await close();
  }
});

Deno.test("deleting a namespace of many calls lets other work go on meanwhile", async () => {
  const { svc, close } = await service();
  try {
    for (let i = 0; i < 1200; i++) {
      const c = testCall("t", "n");
      const ref = { type: "call" as const, tenant: "t", namespace: "n", name: c.id.split(":")[2] };
      await svc.create({ ...ref, object: c });
    }
    let turns = 0;
    const timer = setInterval(() => turns++, 0);
    await svc.delete({ type: "namespace", tenant: "t", namespace: "system", name: "n" });
    clearInterval(timer);
    assert.ok(turns > 0, "the event loop turned while the calls were deleted");
    assert.equal((await svc.list("call", "t")).items.length, 0);
  } finally {
    await close();
  }
});

Deno.test("a stale delete is refused as a stale update is, naming the object", async () => {
  const { svc, close } = await service();
  try {
    const ns = { type: "namespace" as const, tenant: "t", namespace: "system", name: "n" };
    const cur = (await svc.get(ns))!;
    await assert.rejects(
      svc.delete(ns, cur.revision - 1),
      (e: Error & { code: string }) =>
        e.code === "conflict" &&
        e.message ===
          `Cannot delete namespace t/system/n: it changed (revision ${cur.revision}, you sent ${
            cur.revision - 1
          })`,
    );
  } finally {
    await close();
  }
});

Deno.test("a function stored before a rule it breaks takes status writes and rollouts; a changed spec must meet it", async () => {
  const { svc, store, close } = await service();
  try {
    const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
    // As an earlier version stored it: queue_len 0, an image that is no reference, CPU and
    // memory no container gets, all refused in writes since.
    await store.create(
      "/registry/function/t/n/f",
      JSON.stringify({
        type: "function",
        tenant: "t",
        namespace: "n",
        name: "f",
        object: {
          spec: {
            image: "MyOrg/Model:v1",
            resources: { CPU: 5, Mem: 4 },
            policy: { Obj: { queue_len: 0 } },
          },
        },
        version: 1,
      }),
    );
    const cur = (await svc.get(ref))!;
    const stored = JSON.parse(cur.value);
    const status = {
      conditions: [{ type: "Schedulable", status: "True", reason: "R", message: "m" }],
    };
    const w = await svc.update({
      ...ref,
      revision: cur.revision,
      object: { ...stored.object, status },
    });
    assert.ok(w.revision > cur.revision, "the scheduler's status write passes");
    await assert.rejects(
      svc.update({
        ...ref,
        revision: w.revision,
        object: { spec: { image: "y", policy: { Obj: { queue_len: 0 } } } },
      }),
      /queue_len: must be at least 1/,
    );
  } finally {
    await close();
  }
});

Deno.test("labels and annotations stored past their bounds stay; a write that changes them must meet them", async () => {
  const { svc, store, close } = await service();
  try {
    const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
    const labels = (n: number) =>
      Object.fromEntries(Array.from({ length: n }, (_, i) => [`l${i}`, "v"]));
    await store.create(
      "/registry/function/t/n/f",
      JSON.stringify({
        ...ref,
        object: { metadata: { labels: labels(300) }, spec: { image: "x" } },
        version: 1,
      }),
    );
    const cur = (await svc.get(ref))!;
    const stored = JSON.parse(cur.value);
    // The spec changes, the labels do not: the bound is not asked of them.
    const w = await svc.update({
      ...ref,
      revision: cur.revision,
      object: { metadata: stored.object.metadata, spec: { image: "y" } },
    });
    assert.ok(w.revision > cur.revision);
    await assert.rejects(
      svc.update({
        ...ref,
        revision: w.revision,
        object: { metadata: { labels: labels(301) }, spec: { image: "y" } },
      }),
      /metadata\.labels: at most 256 entries \(got 301\)/,
    );
    await assert.rejects(
      svc.create({
        type: "function",
        tenant: "t",
        namespace: "n",
        name: "g",
        object: {
          metadata: { annotations: labels(257) },
          spec: { image: "x" },
        },
      }),
      /metadata\.annotations: at most 256 entries \(got 257\)/,
    );
    const ok = await svc.update({
      ...ref,
      revision: w.revision,
      object: { metadata: { labels: labels(256) }, spec: { image: "y" } },
    });
    assert.ok(ok.revision > w.revision);
  } finally {
    await close();
  }
});

Deno.test("cluster records are refused where they would stand for something else: a pod id no path may hold, a pod or node stored elsewhere", async () => {
  const { svc, close } = await service();
  const pod = (id: string, at = { tenant: "t", namespace: "n" }) => ({
    ...testPod(id, "n1"),
    ...at,
  });
  const node = {
    name: "n1",
    address: "127.0.0.1",
    cpuMillis: 1000,
    memMB: 1024,
    gpus: [],
    heartbeat: 1,
    ready: true,
  };
  const cases: [string, Parameters<StateService["create"]>[0], RegExp][] = [
    [
      "..",
      { type: "pod", tenant: "t", namespace: "n", name: "..", object: pod("..") },
      /a pod id is a name/,
    ],
    [
      "a/b",
      { type: "pod", tenant: "t", namespace: "n", name: "a/b", object: pod("a/b") },
      /a pod id is a name/,
    ],
    [
      "a pod saying another tenant",
      {
        type: "pod",
        tenant: "t",
        namespace: "n",
        name: "p-1",
        object: pod("p-1", { tenant: "u", namespace: "n" }),
      },
      /a pod lives at \{its tenant\}\/\{its namespace\}\/\{its id\}/,
    ],
    [
      "a node outside system/system",
      { type: "node", tenant: "x", namespace: "y", name: "n1", object: node },
      /a node lives at system\/system\/\{its name\}/,
    ],
    [
      // One segment of its key: a node named so would never be listed.
      "a node whose name is no node name",
      { type: "node", ...sys, name: "rack1:n1", object: { ...node, name: "rack1:n1" } },
      /name: is not a node name/,
    ],
  ];
  for (const [what, input, re] of cases) {
    await assert.rejects(svc.create(input), (e: Error & { code?: string }) => {
      assert.equal(e.code, "invalid", what);
      assert.match(e.message, re, what);
      return true;
    });
  }
  // The same, where they belong, are taken.
  await svc.create({ type: "pod", tenant: "t", namespace: "n", name: "p-1", object: pod("p-1") });
  await svc.create({ type: "node", ...sys, name: "n1", object: node });
  await close();
});

Deno.test("lists and writes name what they mean: a tenant or namespace is one name, a revision a whole number", async () => {
  const { svc, close } = await service();
  await svc.create(fn("f"));
  const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    ["a tenant that is a prefix", () => svc.list("function", "t/n"), /tenant "t\/n" is no name/],
    [
      "a namespace without its tenant",
      () => svc.list("function", undefined, "n"),
      /needs its tenant/,
    ],
    ["a negative revision", () => svc.delete(ref, -3), /Invalid revision -3/],
    [
      "a revision past 2^53",
      () => svc.update({ ...fn("f"), revision: 2 ** 62 }),
      /Invalid revision/,
    ],
  ];
  for (const [what, call, re] of cases) {
    await assert.rejects(call(), (e: Error & { code?: string }) => {
      assert.equal(e.code, "invalid", what);
      assert.match(e.message, re, what);
      return true;
    });
  }
  assert.equal((await svc.list("function", "t", "n")).items.length, 1);
  await close();
});

Deno.test("a linked funcpolicy whose canary ends settles its functions: set again, it does not bring the old version back", async () => {
  const { svc, store, close } = await service();
  const pol = (spec: unknown, revision?: number) => ({
    type: "funcpolicy" as const,
    tenant: "t",
    namespace: "n",
    name: "cp",
    object: spec,
    ...(revision ? { revision } : {}),
  });
  const linked = (image: string, revision?: number) => ({
    type: "function" as const,
    tenant: "t",
    namespace: "n",
    name: "l",
    object: { spec: { image, policy: { Link: { name: "cp" } } } },
    ...(revision ? { revision } : {}),
  });
  const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "l" };
  const stored = async () => JSON.parse((await svc.get(ref))!.value);
  const p1 = await svc.create(pol({ canary_percent: 20 }));
  const f1 = await svc.create(linked("a"));
  await svc.update(linked("b", f1.revision));
  assert.deepEqual([(await stored()).version, (await stored()).stable_version], [2, 1]);
  const unsettled = (await svc.get(ref))!.value;
  // The canary off: version 2 is the stable one, version 1's spec goes.
  const p2 = await svc.update(pol({}, p1.revision));
  const settled = await stored();
  assert.deepEqual([settled.version, settled.stable_version, settled.older_versions], [
    2,
    2,
    undefined,
  ]);
  // On again: no split until the next version.
  const p3 = await svc.update(pol({ canary_percent: 10 }, p2.revision));
  assert.deepEqual([(await stored()).version, (await stored()).stable_version], [2, 2]);
  // A settling that did not happen (the store away then) is made by the next write of the
  // policy, an unchanged one included.
  const p4 = await svc.update(pol({}, p3.revision));
  const key = objectKey("function", "t", "n", "l");
  await store.update(key, unsettled, (await store.get(key))!.revision);
  assert.equal((await stored()).stable_version, 1);
  const again = await svc.update(pol({}, p4.revision));
  assert.equal(again.unchanged, true);
  assert.equal((await stored()).stable_version, 2);
  await close();
});

Deno.test("a tenant's namespaces, function policies and API keys are bounded by its quota, 1,000 each by default", async () => {
  const { svc, close } = await service({
    spec: { quota: { max_namespaces: 2, max_funcpolicies: 1, max_api_keys: 1 } },
  });
  try {
    const ns = (name: string) =>
      svc.create({ type: "namespace", tenant: "t", namespace: "system", name, object: {} });
    const policy = (name: string) =>
      svc.create({
        type: "funcpolicy",
        tenant: "t",
        namespace: "n",
        name,
        object: { spec: { max_replica: 1 } },
      });
    const key = (name: string) =>
      svc.create({
        type: "apikey",
        ...sys,
        name,
        object: {
          id: name,
          name,
          hash: "a".repeat(64),
          scope: "inference",
          tenant: "t",
          createdAt: 1,
          createdBy: "admin",
        },
      });
    // Before, a tenant's full key made as many as it liked (60 namespaces of 1 MB in 2 s).
    await ns("m"); // "n" and "m": 2
    for (
      const [write, limit, what] of [
        [() => ns("o"), "max_namespaces", /quota max_namespaces is 2: it has 2 namespaces/],
        [
          () => policy("q"),
          "max_funcpolicies",
          /quota max_funcpolicies is 1: it has 1 function policies/,
        ],
        [() => key("key00002"), "max_api_keys", /quota max_api_keys is 1: it has 1 API keys/],
      ] as const
    ) {
      if (limit === "max_funcpolicies") await policy("p");
      if (limit === "max_api_keys") await key("key00001");
      const err = await write().then(() => undefined, (e) => e);
      assert.equal(err?.code, "quota_exceeded", limit);
      assert.match(err.message, what);
      assert.deepEqual(err.details, { limit, quota: limit === "max_namespaces" ? 2 : 1 });
    }
    // Changing one kept is no new one.
    await svc.update({
      type: "namespace",
      tenant: "t",
      namespace: "system",
      name: "m",
      object: { spec: { team: "a" } },
      revision: (await svc.get({ type: "namespace", tenant: "t", namespace: "system", name: "m" }))!
        .revision,
    });
  } finally {
    await close();
  }
  // Without a quota, 1,000 of each.
  const plain = await service();
  try {
    for (let i = 1; i < 1000; i++) {
      await plain.svc.create({
        type: "namespace",
        tenant: "t",
        namespace: "system",
        name: `n${i}`,
        object: {},
      });
    }
    const err = await plain.svc.create({
      type: "namespace",
      tenant: "t",
      namespace: "system",
      name: "one-more",
      object: {},
    }).then(() => undefined, (e) => e);
    assert.match(err?.message ?? "", /quota max_namespaces is 1000: it has 1000 namespaces/);
  } finally {
    await plain.close();
  }
});

Deno.test("an object's creation time is the state service's: set on create, kept by every write, never a writer's", async () => {
  const { svc, store, close } = await service();
  try {
    const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
    const createdOf = async () => JSON.parse((await svc.get(ref))!.value).created_at;
    const before = Date.now();
    await svc.create({ ...fn("f"), created_at: "2001-01-01T00:00:00.000Z" } as never);
    const created = await createdOf();
    assert.ok(Date.parse(created) >= before, `set by the service, not the writer: ${created}`);
    let cur = (await svc.get(ref))!;
    // A new version, a status write (on what is stored then) and an unchanged write keep it.
    const spec = { image: "y", policy: { Obj: { max_replica: 1 } } };
    const writes = [
      () => ({ spec }),
      () => ({ ...JSON.parse(cur.value).object, status: { conditions: [] } }),
    ];
    for (const object of writes) {
      await new Promise((r) => setTimeout(r, 2));
      const w = await svc.update({
        ...ref,
        revision: cur.revision,
        object: object(),
        created_at: "2001-01-01T00:00:00.000Z",
      } as never);
      assert.equal(await createdOf(), created);
      cur = (await svc.get(ref))!;
      assert.equal(cur.revision, w.revision);
    }
    const again = await svc.update({ ...ref, revision: cur.revision, object: { spec } });
    assert.equal(again.unchanged, true, "the kept time is no change");
    // An object stored before creation times were kept gets none later.
    await store.create(
      objectKey("namespace", "t", "system", "old"),
      JSON.stringify({
        type: "namespace",
        tenant: "t",
        namespace: "system",
        name: "old",
        object: { spec: {} },
      }),
    );
    const old = { type: "namespace" as const, tenant: "t", namespace: "system", name: "old" };
    const o = (await svc.get(old))!;
    await svc.update({ ...old, revision: o.revision, object: { spec: { a: 1 } } });
    assert.equal(JSON.parse((await svc.get(old))!.value).created_at, undefined);
  } finally {
    await close();
  }
});
