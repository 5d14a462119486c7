import assert from "node:assert/strict";
import { Hono } from "hono";
import { testPod, until } from "../../common/testing.ts";
import type { NodeInfo, PodInfo } from "../../model/cluster.ts";
import { ClusterEvents } from "../../ui/events.ts";
import { InferxError, toInferxError } from "../../common/errors.ts";
import { authenticate } from "../middleware/authenticate.ts";
import { errorAnswer } from "../middleware/errors.ts";
import { serveGateway } from "../server.ts";
import {
  addFunction,
  addNamespace,
  fakeWorker,
  type GatewayFixture,
  gatewayFixture,
} from "../testing.ts";
import type { GatewayEnv } from "../types.ts";
import { type StreamLimits, uiRoutes } from "./ui.ts";
import { callUrl, keyForExample, partUrl } from "../../ui/static/api.js";
import { callExamples, KEY, samplePlayground } from "../../ui/functions.tsx";
import type { FunctionSpec } from "../../model/schemas.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

const ADMIN_KEY = "admin-key-0123456789";
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const HOSTILE = `<script>alert("x")</script><img src=x onerror=alert(1)>`;

async function text(f: GatewayFixture, path: string, headers: Record<string, string> = {}) {
  const r = await f.app.request(path, { headers });
  return { status: r.status, headers: r.headers, body: await r.text() };
}

async function addPod(f: GatewayFixture, fields: Partial<PodInfo> & { id: string }) {
  const p = { ...testPod(fields.id, "n1"), ...fields };
  await f.meta.create({
    type: "pod",
    tenant: p.tenant,
    namespace: p.namespace,
    name: p.id,
    object: p,
  });
  return p;
}

async function addNode(f: GatewayFixture, more: Partial<NodeInfo> = {}) {
  const node: NodeInfo = {
    name: "n1",
    address: "127.0.0.1",
    cpuMillis: 4000,
    memMB: 8192,
    gpus: [{ index: 0, type: "H100", vramMB: 81920 }],
    contextOverheadMB: 512,
    standbyTiers: ["paused"],
    runtime: "process",
    ready: true,
    heartbeat: Date.now(),
    ...more,
  };
  await f.meta.create({
    type: "node",
    tenant: "system",
    namespace: "system",
    name: node.name,
    object: node,
  });
}

async function createKey(f: GatewayFixture, body: Record<string, unknown>): Promise<string> {
  return (await newKey(f, body)).key;
}

/** A new API key: its id and the key itself. */
async function newKey(
  f: GatewayFixture,
  body: Record<string, unknown>,
): Promise<{ id: string; key: string }> {
  const r = await f.app.request("/apikeys", {
    method: "POST",
    headers: { "content-type": "application/json", ...ADMIN },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 201);
  return await r.json();
}

/** Makes tenant `name`. */
async function addTenant(f: GatewayFixture, name: string): Promise<void> {
  await f.meta.create({ type: "tenant", tenant: "system", namespace: "system", name, object: {} });
}

/** Revokes the key `id`. */
async function revoke(f: GatewayFixture, id: string): Promise<void> {
  const r = await f.app.request(`/apikeys/${id}`, { method: "DELETE", headers: ADMIN });
  assert.equal(r.status, 200);
  await r.body?.cancel();
}

/** The dashboard's routes over `f` with events of their own, pinging every `pingMs`. */
function eventsApp(f: GatewayFixture, pingMs: number, streamLimits?: Partial<StreamLimits>) {
  const events = new ClusterEvents(f.meta);
  const app = new Hono<GatewayEnv>();
  app.onError((err, c) => {
    const a = errorAnswer(toInferxError(err));
    return c.body(a.body, a.status as 400, Object.fromEntries(a.headers));
  });
  app.use("*", authenticate(f.deps.auth));
  app.route("/ui", uiRoutes(f.deps, { events, pingMs, streamLimits }));
  return { app, events };
}

t("a dashboard page is a shell without data that loads its part from the gateway", async () => {
  const f = await gatewayFixture();
  try {
    const page = await text(f, "/ui/functions/t/n/f");
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type")!, /text\/html/);
    assert.match(page.body, /^<!doctype html>/);
    assert.match(page.body, /data-part="\/ui\/part\/functions\/t\/n\/f"/);
    assert.match(page.body, /<script type="module" src="\/ui\/static\/app.js">/);
    assert.doesNotMatch(page.body, /https?:\/\//, "no outside assets");
    assert.match(page.headers.get("content-security-policy")!, /script-src 'self'/);
    const audit = await text(f, "/ui/audit?tenant=t&status=5xx");
    assert.match(audit.body, /data-part="\/ui\/part\/audit\?tenant=t&amp;status=5xx"/);
    for (const file of ["app.js", "api.js", "live.js", "actions.js", "playground.js"]) {
      const js = await f.app.request(`/ui/static/${file}`);
      assert.equal(js.status, 200, file);
      assert.match(js.headers.get("content-type")!, /javascript/);
      assert.doesNotMatch(
        await js.text(),
        /https?:\/\/[a-z]/,
        `${file} loads nothing from outside`,
      );
      const again = await f.app.request(`/ui/static/${file}`, {
        headers: { "if-none-match": js.headers.get("etag")! },
      });
      assert.equal(again.status, 304);
    }
    for (const [typed, page] of [["/ui/", "/ui"], ["/ui/nodes/?x=1", "/ui/nodes?x=1"]]) {
      const r = await f.app.request(typed);
      assert.equal(r.status, 308, typed);
      assert.equal(r.headers.get("location"), page);
    }
    const nopage = await text(f, "/ui/nowhere");
    assert.equal(nopage.status, 404);
    assert.match(nopage.body, /No dashboard page \/ui\/nowhere/);
    const missing = await f.app.request("/ui/static/..%2Fevents.ts");
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    // A name that is a path would make the page load something else as its part.
    for (const bad of ["..%2F..%2F..%2Ffunccall%2Fpublic/n/f", "t/..%5Cx/f", "t/n/a%2Fb"]) {
      const r = await text(f, `/ui/functions/${bad}`);
      assert.equal(r.status, 404, bad);
      assert.doesNotMatch(r.body, /data-part/, bad);
    }
    assert.match(page.headers.get("content-security-policy")!, /frame-src 'none'/);
  } finally {
    await f.close();
  }
});

t("the parts escape names, specs, errors and states they show", async () => {
  const f = await gatewayFixture();
  try {
    await f.meta.create({
      type: "function",
      tenant: "t",
      namespace: "n",
      name: "x.y_z-9",
      object: {
        spec: {
          image: "x",
          commands: [HOSTILE],
          envs: [["A", HOSTILE]],
          sample_query: { body: HOSTILE },
        },
        metadata: { labels: {}, annotations: { note: HOSTILE } },
      },
    });
    await addPod(f, { id: "p-1", func: "x.y_z-9", state: "Failed", error: HOSTILE });
    for (const path of ["/ui/part/functions", "/ui/part/functions/t/n/x.y_z-9", "/ui/part/pods"]) {
      const r = await text(f, path);
      assert.equal(r.status, 200, path);
      assert.doesNotMatch(r.body, /<script>|<img /, `${path} shows markup as text`);
      // The functions' table shows no field a tenant writes free text in (an image is a
      // reference, a name a name).
      if (path !== "/ui/part/functions") assert.match(r.body, /&lt;script&gt;alert/, path);
      assert.match(r.body, /x\.y_z-9/, path);
    }
  } finally {
    await f.close();
  }
});

t("the function part shows spec, policy, versions, pods, examples and recent calls", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY, policy: { parallel: 7 } });
  try {
    await addPod(f, { id: "p-old", funcVersion: 0, state: "Ready" });
    await addPod(f, { id: "p-new", state: "Standby", standbyTier: "paused" });
    const worker = fakeWorker("w1");
    f.sched.endpoints.push(worker.endpoint);
    await (await f.app.request("/funccall/t/n/f/v1/completions", { headers: ADMIN })).text();
    await worker.close();
    const r = await text(f, "/ui/part/functions/t/n/f", ADMIN);
    assert.equal(r.status, 200);
    assert.match(r.body, /Parallel per pod<\/dt><dd>7</);
    assert.match(r.body, /v1 \(current, 100% of calls\): 1 Standby/);
    assert.match(r.body, /v0 \(draining\): 1 Ready/);
    assert.match(r.body, /data-pod="p-old"/);
    assert.match(
      r.body,
      /curl -sN &#39;http:\/\/localhost\/funccall\/t\/n\/f\/v1\/completions&#39;/,
    );
    assert.match(r.body, /data-key/, "the key is left for the browser to mask");
    assert.doesNotMatch(r.body, new RegExp(ADMIN_KEY), "the caller's key is never rendered");
    assert.match(r.body, /data-live="\/ui\/part\/pods\/table\?func=t%2Fn%2Ff"/);
    assert.match(r.body, /<td>GET<\/td><td class="mono">\/funccall\/t\/n\/f\/v1\/completions/);
    const missing = await text(f, "/ui/part/functions/t/n/nope", ADMIN);
    assert.equal(missing.status, 404);
    assert.match(missing.body, /Function t\/n\/nope does not exist/);
  } finally {
    await f.close();
  }
});

t("the nodes part draws a GPU bar with one slice per pod, colored by function", async () => {
  const f = await gatewayFixture();
  try {
    await addNode(f);
    const gpu = [{ index: 0, vramMB: 30000 }];
    await addFunction(f, "t", "n", "g");
    await addPod(f, { id: "p-a", gpus: gpu, state: "Ready" });
    await addPod(f, { id: "p-b", func: "g", gpus: gpu, state: "Ready" });
    await addPod(f, { id: "p-c", func: "g", gpus: gpu, state: "Standby", standbyTier: "file" });
    const r = await text(f, "/ui/part/nodes");
    assert.equal(r.status, 200);
    const bar = /<div class="bar gpu-bar">(.*?)<\/div><\/div><\/div>/.exec(r.body)?.[1] ?? "";
    assert.deepEqual([...bar.matchAll(/data-func="([^"]+)"/g)].map((m) => m[1]), [
      "t/n/f",
      "t/n/g",
    ]);
    assert.match(bar, /width:37\.246%;background-color:hsl\(/, "30000 MB + 512 MB of 81920 MB");
    assert.match(r.body, /class="chip parked-pod" data-func="t\/n\/g" data-pod="p-c"/);
    assert.match(r.body, /GPU 0 · <bdi>H100<\/bdi> · 59.6 GB of 80 GB held/);
  } finally {
    await f.close();
  }
});

t(
  "the nodes part says whether a node takes snapshots, or why not, and what slows its restores",
  async () => {
    const f = await gatewayFixture();
    try {
      const item = { func: "t/n/f", version: 1, state: "Ready", sizeMB: 116.4 };
      // A dump that failed is kept as a record, with no image: not counted.
      const failed = { func: "t/n/g", version: 1, state: "Failed", error: "CRIU said no" };
      await addNode(f, {
        criu: {
          available: true,
          kernelCache: "off",
          kernelCacheReason: "/run is ext4, not a tmpfs",
        },
        favorDynmods: { state: "off", reason: "mounting a cgroup hierarchy needs root" },
        snapshots: {
          available: true,
          diskBudgetMB: 10240,
          diskUsedMB: 139.6,
          hugePages: "madvise",
          items: [item, failed],
        },
      });
      await addNode(f, {
        name: "n2",
        favorDynmods: { state: "off", reason: "INFERX_CGROUP_FAVOR_DYNMODS=off" },
        snapshots: {
          available: false,
          reason: "CRIU is not available: CRIU needs root",
          items: [],
        },
      });
      await addNode(f, {
        name: "n3",
        criu: { available: true, kernelCache: "seeded" },
        favorDynmods: { state: "mounted", mountPoint: "/run/inferx/cgroup-favordynmods" },
        snapshots: { available: true, diskBudgetMB: 10240, hugePages: "always", items: [] },
      });
      const r = await text(f, "/ui/part/nodes");
      assert.equal(r.status, 200);
      const line = (node: string) =>
        new RegExp(`data-node="${node}".*?<p class="muted small snapshots">(.*?)</p>`, "s")
          .exec(r.body)?.[1].replace(/<[^>]+>/g, "") ?? "";
      assert.equal(
        line("n1"),
        "Snapshots on · 1 image(s), 140 MB of 10 GB · transparent huge pages madvise · CRIU&#39;s kernel cache off: each dump and restore probes the kernel · pod starts may wait for an RCU grace period (favordynmods off)",
      );
      assert.match(r.body, /title="\/run is ext4, not a tmpfs"/);
      assert.match(r.body, /title="mounting a cgroup hierarchy needs root"/);
      assert.equal(
        line("n2"),
        "Snapshots off: CRIU is not available: CRIU needs root · pod starts may wait for an RCU grace period (favordynmods off)",
      );
      assert.equal(line("n3"), "Snapshots on · 0 image(s), 0 MB of 10 GB");
    } finally {
      await f.close();
    }
  },
);

t("each part shows only what the credential may see, and refuses as the API does", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY });
  try {
    await addNamespace(f, "u", "m");
    await addFunction(f, "u", "m", "other");
    await addPod(f, { id: "p-t" });
    await addPod(f, { id: "p-u", tenant: "u", namespace: "m", func: "other" });
    const reader = {
      authorization: `Bearer ${await createKey(f, { scope: "read", tenant: "t" })}`,
    };

    const anon = await text(f, "/ui/part/functions");
    assert.equal(anon.status, 401);
    assert.match(anon.body, /Credentials required/);
    assert.equal(anon.headers.get("www-authenticate"), 'Bearer realm="inferx"');
    // The audit part too, whatever its filters: credentials first, as the API does.
    for (const q of ["", "?limit=0", "?kind=pods&status=5xx", "?tenant=t&status=teapot"]) {
      const audit = await text(f, `/ui/part/audit${q}`);
      assert.equal(audit.status, 401, q);
    }

    const funcs = await text(f, "/ui/part/functions", reader);
    assert.match(funcs.body, /data-func="t\/n\/f"/);
    assert.doesNotMatch(funcs.body, /other/);
    const pods = await text(f, "/ui/part/pods/table", reader);
    assert.match(pods.body, /p-t/);
    assert.doesNotMatch(pods.body, /p-u/);
    const theirs = await text(f, "/ui/part/pods/table?func=u/m/other", reader);
    assert.equal(theirs.status, 403);
    assert.match(theirs.body, /may not read in u\/m/);
    const nodes = await text(f, "/ui/part/nodes", reader);
    assert.equal(nodes.status, 403);
    assert.match(nodes.body, /may not read cluster-wide/);
    const keys = await text(f, "/ui/part/keys", reader);
    assert.equal(keys.status, 403);
    assert.match(keys.body, /may not manage API keys/);
    const audit = await text(f, "/ui/part/audit", reader);
    assert.equal(audit.status, 200, "a tenant's key reads its own tenant's audit");
    assert.match(audit.body, /name="tenant" value="t"/);
    // Another tenant's: refused under the form, which keeps what was typed.
    const other = await text(f, "/ui/part/audit?tenant=u", reader);
    assert.equal(other.status, 403);
    assert.match(other.body, /<form id="audit-form"/);
    assert.match(other.body, /name="tenant" value="u"/);
    assert.match(other.body, /class="error refused">[^<]*may not read in tenant u/);
    assert.doesNotMatch(other.body, /<table/);

    // A key that may only call sees none to read, and is not told to make one.
    const caller = {
      authorization: `Bearer ${await createKey(f, { scope: "inference", tenant: "t" })}`,
    };
    const none = await text(f, "/ui/part/functions/table", caller);
    assert.match(none.body, /No functions you may read\./);
    assert.doesNotMatch(none.body, /PUT \/object/);
    const empty = await text(f, "/ui/part/functions/table", ADMIN);
    assert.doesNotMatch(empty.body, /No functions/, "the admin sees the functions");

    const me = await (await f.app.request("/ui/me", { headers: reader })).json();
    assert.equal(me.auth_enabled, true);
    assert.deepEqual(me.may, { read_cluster: false, manage_keys: false });
    const bad = await text(f, "/ui/me", { authorization: "Bearer ixk_nope" });
    assert.equal(bad.status, 401);
    assert.match(bad.body, /Invalid API key/);
  } finally {
    await f.close();
  }
});

t("the keys part lists the keys, and the audit part filters calls by status", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY });
  try {
    await createKey(f, { scope: "read", tenant: "t", name: `<b>${HOSTILE}</b>` });
    const keys = await text(f, "/ui/part/keys", ADMIN);
    assert.equal(keys.status, 200);
    assert.match(keys.body, /data-action="revoke"/);
    assert.match(keys.body, /&lt;b&gt;&lt;script&gt;/);
    // The form says the API's bound in its own unit (the API's message counts seconds).
    assert.match(keys.body, /name="expires_days" min="0.001" max="3650"/);
    await (await f.app.request("/funccall/t/n/nope/x", { headers: ADMIN })).text();
    const late = await f.app.request("/funccall/t/n/f/x", {
      headers: { ...ADMIN, "x-inferx-timeout": "0.05" },
    });
    assert.equal(late.status, 504);
    await late.body?.cancel();
    const only404 = await text(f, "/ui/part/audit?tenant=t&status=404&func=", ADMIN);
    assert.equal(only404.status, 200);
    assert.match(only404.body, /<td>404<\/td>/);
    assert.doesNotMatch(only404.body, /<td>504<\/td>/);
    const fives = await text(f, "/ui/part/audit?tenant=t&status=5xx", ADMIN);
    assert.match(fives.body, /<td>504<\/td>/);
    assert.doesNotMatch(fives.body, /<td>404<\/td>/);
    // A bad filter: 400 with the page, its form as typed and the reason under it.
    const bad = await text(f, "/ui/part/audit?tenant=t&status=teapot", ADMIN);
    assert.equal(bad.status, 400);
    assert.match(bad.body, /<form id="audit-form"/);
    assert.match(bad.body, /name="status" value="teapot"/);
    assert.match(bad.body, /class="error refused">Invalid status &quot;teapot&quot;/);
    assert.doesNotMatch(bad.body, /<table/);
    // What the API takes but the page would show as nothing, or pass over unsaid.
    const none = await text(f, "/ui/part/audit?tenant=t&limit=0", ADMIN);
    assert.equal(none.status, 400);
    assert.match(none.body, /class="error refused">Invalid limit 0/);
    const pods = await text(f, "/ui/part/audit?tenant=t&kind=pods&status=500", ADMIN);
    assert.equal(pods.status, 400);
    assert.match(pods.body, /class="error refused">status filters calls only/);
    const kind = await text(f, "/ui/part/audit?tenant=t&kind=bogus", ADMIN);
    assert.equal(kind.status, 400);
    assert.match(
      kind.body,
      /class="error refused">Invalid kind &quot;bogus&quot;: requests or pods/,
    );
    const twice = await text(f, "/ui/part/audit?tenant=t&status=404&status=500", ADMIN);
    assert.equal(twice.status, 400);
    assert.match(
      twice.body,
      /class="error refused">Invalid audit filter: parameter &quot;status&quot; given more than once/,
    );
  } finally {
    await f.close();
  }
});

t("DELETE /pods terminates a pod through the scheduler, as a write", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY });
  try {
    await addPod(f, { id: "p-1", state: "Ready" });
    const reader = {
      authorization: `Bearer ${await createKey(f, { scope: "read", tenant: "t" })}`,
    };
    const refused = await f.app.request("/pods/t/n/f/p-1", { method: "DELETE", headers: reader });
    assert.equal(refused.status, 403);
    assert.match((await refused.json()).error.message, /may not write in t\/n/);
    const anon = await f.app.request("/pods/t/n/f/p-1", { method: "DELETE" });
    assert.equal(anon.status, 401);
    await anon.body?.cancel();
    assert.deepEqual(f.sched.kills, []);
    const ok = await f.app.request("/pods/t/n/f/p-1", { method: "DELETE", headers: ADMIN });
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { terminated: "p-1", state: "Ready" });
    assert.deepEqual(f.sched.kills, ["p-1"]);
    for (const path of ["/pods/t/n/f/p-2", "/pods/t/n/g/p-1", "/pods/t/n/f/NOT_A_POD"]) {
      const r = await f.app.request(path, { method: "DELETE", headers: ADMIN });
      assert.equal(r.status, 404, path);
      assert.match((await r.json()).error.message, /does not exist/);
    }
  } finally {
    await f.close();
  }
});

t(
  "/ui/events streams the pod changes the caller may see and frees the watch when it leaves",
  async () => {
    const f = await gatewayFixture({ adminKey: ADMIN_KEY });
    const { app, events } = eventsApp(f, 50);
    try {
      await addTenant(f, "u");
      const key = await createKey(f, { scope: "read", tenant: "t" });
      const anon = await app.request("/ui/events");
      assert.equal(anon.status, 401);
      assert.match(
        (await anon.json()).error.message,
        /^Credentials required to follow the cluster/,
      );
      assert.equal(events.watching, false);
      const caller = await createKey(f, { scope: "inference", tenant: "t" });
      const callerOnly = await app.request("/ui/events", {
        headers: { authorization: `Bearer ${caller}` },
      });
      assert.equal(callerOnly.status, 403);
      assert.match((await callerOnly.json()).error.message, /may not follow the cluster: it reads/);

      const abort = new AbortController();
      const res = await app.request("/ui/events", {
        headers: { authorization: `Bearer ${key}` },
        signal: abort.signal,
      });
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type")!, /text\/event-stream/);
      assert.equal(events.listeners, 1);
      const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
      let seen = "";
      const readUntil = async (re: RegExp) => {
        while (!re.test(seen)) {
          const { value, done } = await reader.read();
          assert.ok(!done, `stream ended before ${re}:\n${seen}`);
          seen += value;
        }
      };
      await readUntil(/: watching pods, nodes and functions/);
      await addPod(f, { id: "p-hidden", tenant: "u", namespace: "m", func: "other" });
      await addPod(f, { id: "p-seen" });
      await readUntil(/"id":"p-seen"/);
      assert.match(seen, /event: pod\ndata: \{"kind":"pod","op":"put","id":"p-seen"/);
      assert.doesNotMatch(seen, /p-hidden/, "another tenant's pod is not streamed");
      // Functions made, changed and deleted: the functions list follows them.
      for (
        const o of [
          { type: "namespace" as const, tenant: "u", namespace: "system", name: "m" },
          { type: "function" as const, tenant: "u", namespace: "m", name: "hidden" },
          { type: "function" as const, tenant: "t", namespace: "n", name: "g" },
        ]
      ) {
        await f.meta.create({ ...o, object: o.type === "function" ? { image: "x" } : {} });
      }
      await f.meta.delete({ type: "function", tenant: "t", namespace: "n", name: "g" });
      await readUntil(/"op":"delete","tenant":"t","namespace":"n","name":"g"/);
      assert.match(
        seen,
        /event: function\ndata: \{"kind":"function","op":"put","tenant":"t","namespace":"n","name":"g"\}/,
      );
      assert.doesNotMatch(seen, /"hidden"/, "another tenant's function is not streamed");
      await readUntil(/: ping/);

      abort.abort();
      await reader.cancel().catch(() => {});
      assert.equal(events.listeners, 0);
      assert.equal(events.watching, false, "the last listener gone stops the watches");
    } finally {
      await f.close();
    }
  },
);

t("/ui/events ends when the gateway begins to stop, and a new one is refused 503", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY });
  const { app, events } = eventsApp(f, 60_000);
  try {
    const headers = { authorization: `Bearer ${ADMIN_KEY}` };
    const res = await app.request("/ui/events", { headers });
    assert.equal(res.status, 200);
    const body = res.text();
    f.deps.cache.drain(new InferxError("unavailable", "The gateway is stopping"));
    assert.match(await body, /: watching pods, nodes and functions/, "it ends by itself");
    assert.equal(events.watching, false);
    const late = await app.request("/ui/events", { headers });
    assert.equal(late.status, 503);
    assert.match((await late.json()).error.message, /The gateway is stopping/);
  } finally {
    await f.close();
  }
});

t(
  "a function page's versions part names the current and stable versions with their shares, and says when the function is gone",
  async () => {
    const f = await gatewayFixture();
    try {
      const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "c" };
      await f.meta.create({ ...ref, object: { image: "x" } });
      const cur = (await f.meta.get(ref))!;
      await f.meta.update({
        ...ref,
        revision: cur.revision,
        object: { image: "y", policy: { Obj: { canary_percent: 25 } } },
      });
      await addPod(f, { id: "p-old", func: "c", funcVersion: 1 });
      await until(
        "the gateway's policy",
        () => f.deps.cache.policyOf("t/n/c")?.canary_percent === 25,
      );
      const versions = await text(f, "/ui/part/functions/t/n/c/versions");
      assert.equal(versions.status, 200);
      assert.match(versions.body, /v2 \(current, 25% of calls\): no pods/);
      assert.match(versions.body, /v1 \(stable, 75% of calls\): 1 Creating/);
      const page = await text(f, "/ui/part/functions/t/n/c");
      assert.match(page.body, /data-live="\/ui\/part\/functions\/t\/n\/c\/versions"/);
      assert.match(page.body, /data-live="\/ui\/part\/functions\/t\/n\/c\/calls"/);
      assert.match(page.body, /<dt>Traffic<\/dt><dd>v2 25% · v1 75%<\/dd>/);
      assert.equal((await text(f, "/ui/part/functions/t/n/c/calls")).status, 200);
      // Promoted: the older version drains.
      const now = (await f.meta.get(ref))!;
      await f.meta.update({ ...ref, revision: now.revision, object: { image: "y" } });
      await until(
        "the split gone",
        () => f.deps.cache.policyOf("t/n/c")?.canary_percent === undefined,
      );
      assert.match(
        (await text(f, "/ui/part/functions/t/n/c/versions")).body,
        /v1 \(draining\): 1 Creating/,
      );
      await f.meta.delete(ref);
      const gone = await text(f, "/ui/part/functions/t/n/c/versions");
      assert.equal(gone.status, 404);
      assert.match(gone.body, /Function t\/n\/c does not exist/);
    } finally {
      await f.close();
    }
  },
);

t("/ui/events says bye and ends when the credential is revoked", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY });
  const { app, events } = eventsApp(f, 30);
  try {
    const created = await newKey(f, { scope: "read", tenant: "t" });
    const res = await app.request("/ui/events", {
      headers: { authorization: `Bearer ${created.key}` },
    });
    assert.equal(res.status, 200);
    await revoke(f, created.id);
    const all = await res.text(); // ends by itself
    assert.match(all, /event: bye\ndata: \{"reason":"The credential no longer holds"\}/);
    assert.equal(events.watching, false);
  } finally {
    await f.close();
  }
});

t("/ui/events sends a revoked key no change, even before its next ping", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY });
  const { app, events } = eventsApp(f, 60_000);
  try {
    const created = await newKey(f, { scope: "read", tenant: "t" });
    const res = await app.request("/ui/events", {
      headers: { authorization: `Bearer ${created.key}` },
    });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    const readUntil = async (re: RegExp) => {
      while (!re.test(seen)) {
        const { value, done } = await reader.read();
        assert.ok(!done, `stream ended before ${re}:\n${seen}`);
        seen += value;
      }
    };
    await addPod(f, { id: "p-before" });
    await readUntil(/"id":"p-before"/);
    await revoke(f, created.id);
    await addPod(f, { id: "p-after" });
    for (let r; !(r = await reader.read()).done;) seen += r.value; // ends by itself
    assert.match(seen, /event: bye\n/);
    assert.doesNotMatch(seen, /p-after/);
    assert.equal(events.watching, false);
  } finally {
    await f.close();
  }
});

t("a dashboard that goes away from the gateway's listener ends its event stream", async () => {
  const f = await gatewayFixture();
  const { app, events } = eventsApp(f, 60_000);
  const server = serveGateway(app, f.deps, { port: 0 });
  try {
    const abort = new AbortController();
    const res = await fetch(`http://127.0.0.1:${server.addr.port}/ui/events`, {
      signal: abort.signal,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("transfer-encoding"), "chunked", "streamed as it is produced");
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    assert.match((await reader.read()).value ?? "", /: watching pods, nodes and functions/);
    assert.equal(events.listeners, 1);
    await addPod(f, { id: "p-live" });
    let seen = "";
    while (!seen.includes('"id":"p-live"')) seen += (await reader.read()).value ?? "";
    abort.abort();
    await reader.cancel().catch(() => {});
    await until("the stream to end", () => events.listeners === 0);
    assert.equal(events.watching, false);
  } finally {
    await server.shutdown(100);
    await f.close();
  }
});

Deno.test("the page script loads only parts of this dashboard as HTML", () => {
  const origin = "http://127.0.0.1:4000";
  const cases: [string, string | undefined][] = [
    ["/ui/part/functions/t/n/f", "/ui/part/functions/t/n/f"],
    ["/ui/part/audit?tenant=t&status=5xx", "/ui/part/audit?tenant=t&status=5xx"],
    ["/ui/part/functions/../../../funccall/public/n/f", undefined],
    ["/ui/part/functions/..%2F..%2Ffunccall/x", undefined],
    ["/ui/part/functions/%2e%2e/x", "/ui/part/x"], // resolved as a browser would: still a part
    ["/funccall/public/n/f", undefined],
    ["http://elsewhere.example/ui/part/functions", undefined],
    ["//elsewhere.example/ui/part/functions", undefined],
    ["javascript:alert(1)", undefined],
  ];
  for (const [url, want] of cases) assert.equal(partUrl(url, origin), want, url);
});

Deno.test("the playground calls only paths of its own function, whatever the spec's sample path says", () => {
  const origin = "http://127.0.0.1:4000";
  const cases: [string, string | undefined][] = [
    ["v1/completions", "/funccall/t/n/f/v1/completions"],
    ["v1/completions?x=1", "/funccall/t/n/f/v1/completions?x=1"],
    ["", "/funccall/t/n/f/"],
    ["v1/../../../../calls/callback-secret/t", undefined],
    ["v1/completions/%2e%2e/../../../../../apikeys", undefined],
    ["a%2F..%2F..%2Fx", undefined],
  ];
  for (const [path, want] of cases) assert.equal(callUrl("t/n/f", path, origin), want, path);
});

Deno.test("a function's page shows no sample path that leads out of the function", () => {
  const spec = (path: string) => ({ sample_query: { path, body: {} } }) as unknown as FunctionSpec;
  // Stored before such paths were refused on write: the examples call v1/completions instead.
  assert.equal(samplePlayground(spec("../../../../object/")).path, "v1/completions");
  assert.equal(samplePlayground(spec("v1/%2e%2e/%2e%2e/apikeys")).path, "v1/completions");
  assert.equal(samplePlayground(spec("/v1/chat/completions")).path, "v1/chat/completions");
});

Deno.test("the copied curl example quotes the spec's path and body for a shell", () => {
  const { curl } = callExamples({
    id: "t/n/f",
    origin: "http://localhost",
    path: "v1/completions https://evil.example/steal $(id>/tmp/pwned) '",
    body: { x: "it's" },
    authEnabled: true,
  });
  const text = curl.map((p) => p === KEY ? "KEY" : p).join("");
  const url = "http://localhost/funccall/t/n/f/v1/completions https://evil.example/steal " +
    "$(id>/tmp/pwned) '";
  assert.ok(text.startsWith(`curl -sN '${url.replaceAll("'", "'\\''")}' \\\n`), text);
  assert.ok(text.includes(`-d '{"x":"it'\\''s"}'`), text);
});

Deno.test("the curl example's key is the shell's variable until copied, then escaped where it goes", () => {
  const { curl } = callExamples({
    id: "t/n/f",
    origin: "http://localhost",
    path: "v1/completions",
    body: {},
    authEnabled: true,
  });
  const text = curl.map((p) => p === KEY ? keyForExample("", "sh") : p).join("");
  assert.ok(text.includes(`-H "authorization: Bearer $INFERX_APIKEY"`), text);
  // An administrator's key is the operator's choice: whatever it holds reaches curl as typed.
  const key = 'a$b`c"d\\e';
  assert.equal(keyForExample(key, "sh"), 'a\\$b\\`c\\"d\\\\e');
  assert.equal(keyForExample(key, "py"), 'a$b`c\\"d\\\\e');
  assert.equal(keyForExample("ixk_AbC-_9", "sh"), "ixk_AbC-_9");
});

Deno.test("the OpenAI example is a chat for a chat sample, a completion otherwise", () => {
  const text = (path: string, body: unknown) =>
    callExamples({ id: "t/n/f", origin: "http://localhost", path, body, authEnabled: false })
      .openai.join("");
  const chat = text("v1/chat/completions", {
    messages: [{ role: "system", content: "Be brief" }, { role: "user", content: 'Say "hi"' }],
    max_tokens: 9,
  });
  assert.match(chat, /client\.chat\.completions\.create\(/);
  assert.match(chat, /messages=\[\{"role": "user", "content": "Say \\"hi\\""\}\]/);
  assert.match(chat, /max_tokens=9,/);
  assert.match(chat, /print\(r\.choices\[0\]\.message\.content\)/);
  const completion = text("v1/completions", { prompt: "The GPU", max_tokens: 4 });
  assert.match(
    completion,
    /client\.completions\.create\(\n {4}model="t\/n\/f",\n {4}prompt="The GPU",/,
  );
  assert.match(completion, /print\(r\.choices\[0\]\.text\)/);
});

t("/ui/events holds a few streams per credential, so one cannot take them all", async () => {
  const f = await gatewayFixture({ adminKey: ADMIN_KEY });
  const { app, events } = eventsApp(f, 60_000, { perCaller: 2 });
  try {
    const key = await createKey(f, { scope: "read", tenant: "t" });
    const open = async (auth: string) => {
      const abort = new AbortController();
      const res = await app.request("/ui/events", {
        headers: { authorization: `Bearer ${auth}` },
        signal: abort.signal,
      });
      return { res, close: async () => (abort.abort(), await res.body?.cancel().catch(() => {})) };
    };
    const a = await open(key);
    const b = await open(key);
    const c = await open(key);
    assert.deepEqual([a.res.status, b.res.status, c.res.status], [200, 200, 429]);
    assert.match((await c.res.json()).error.message, /holds 2 event streams/);
    const admin = await open(ADMIN_KEY); // another credential is not held back
    assert.equal(admin.res.status, 200);
    await a.close();
    const d = await open(key); // one freed: one more
    assert.equal(d.res.status, 200);
    for (const s of [b, d, admin]) await s.close();
    assert.equal(events.listeners, 0);
  } finally {
    await f.close();
  }
});

t(
  "/ui/events holds a tenant's credentials together to a few streams, and keeps some for cluster-wide readers",
  async () => {
    const f = await gatewayFixture({ adminKey: ADMIN_KEY });
    const { app, events } = eventsApp(f, 60_000, { perCaller: 5, perTenant: 2, tenants: 3 });
    try {
      const open = async (auth: string) => {
        const abort = new AbortController();
        const res = await app.request("/ui/events", {
          headers: { authorization: `Bearer ${auth}` },
          signal: abort.signal,
        });
        return {
          res,
          close: async () => (abort.abort(), await res.body?.cancel().catch(() => {})),
        };
      };
      // Keys a tenant made for itself, one stream each: its streams together are held.
      const t = [];
      for (let i = 0; i < 3; i++) t.push(await createKey(f, { scope: "read", tenant: "t" }));
      const t1 = await open(t[0]);
      const t2 = await open(t[1]);
      const t3 = await open(t[2]);
      assert.deepEqual([t1.res.status, t2.res.status, t3.res.status], [200, 200, 429]);
      assert.match((await t3.res.json()).error.message, /tenant t holds 2 event streams/);
      // Another tenant's key is not held back by t's, until tenants together hold their share.
      await addTenant(f, "u");
      const u1 = await open(await createKey(f, { scope: "read", tenant: "u" }));
      assert.equal(u1.res.status, 200);
      const u2 = await open(await createKey(f, { scope: "read", tenant: "u" }));
      assert.equal(u2.res.status, 503);
      assert.match((await u2.res.json()).error.message, /the rest stay for cluster-wide readers/);
      const admin = await open(ADMIN_KEY);
      assert.equal(admin.res.status, 200, "a cluster-wide reader watches still");
      await t1.close();
      const again = await open(t[2]); // one of t's freed: one more for t
      assert.equal(again.res.status, 200);
      for (const s of [t2, again, u1, admin]) await s.close();
      assert.equal(events.listeners, 0);
    } finally {
      await f.close();
    }
  },
);

t("a node's heartbeat alone is no event: pages are not redrawn every 2 s", async () => {
  const f = await gatewayFixture();
  const events = new ClusterEvents(f.meta);
  try {
    await addNode(f);
    const seen: string[] = [];
    const stop = await events.subscribe((ev) => seen.push(`${ev.kind} ${JSON.stringify(ev)}`));
    const ref = { type: "node" as const, tenant: "system", namespace: "system", name: "n1" };
    const bump = async (change: (n: NodeInfo) => void) => {
      const cur = (await f.meta.get(ref))!;
      const n = JSON.parse(cur.value) as NodeInfo;
      change(n);
      await f.meta.update({ ...ref, object: n, revision: cur.revision });
    };
    for (let i = 0; i < 3; i++) await bump((n) => n.heartbeat += 2000);
    await bump((n) => n.ready = false);
    await until("the ready change is seen", () => seen.length > 0);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(seen, ['node {"kind":"node","op":"put","name":"n1","ready":false}']);
    stop();
  } finally {
    await f.close();
  }
});

t("/ui/events with auth off holds no browser to a shared per-credential limit", async () => {
  const f = await gatewayFixture(); // auth off: every caller is the same admin
  const { app, events } = eventsApp(f, 60_000, { perCaller: 2 });
  try {
    const aborts: AbortController[] = [];
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const abort = new AbortController();
      aborts.push(abort);
      const res = await app.request("/ui/events", { signal: abort.signal });
      statuses.push(res.status);
    }
    assert.deepEqual(statuses, [200, 200, 200, 200]);
    for (const a of aborts) a.abort();
    await until("the streams end", () => events.listeners === 0);
  } finally {
    await f.close();
  }
});
