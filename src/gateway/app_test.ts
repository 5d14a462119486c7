import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { openSqliteStore } from "../store/sqlite.ts";
import { StateService } from "../statesvc/service.ts";
import type { Lease, LeaseRequest, SchedulerClient } from "../rpc/types.ts";
import { createGatewayApp } from "./app.ts";
import { FuncCache } from "./func_cache.ts";

/** A scheduler that hands out scripted endpoints and records calls. */
class FakeScheduler implements SchedulerClient {
  endpoints: string[] = [];
  leases: LeaseRequest[] = [];
  returns: { podId: string; failed?: boolean }[] = [];
  coldStart = true;
  /** When set, leases never resolve on their own (until aborted). */
  hang = false;
  failWith?: InferxError;
  #seq = 0;
  leaseWorker(req: LeaseRequest, signal?: AbortSignal): Promise<Lease> {
    this.leases.push(req);
    if (this.failWith) return Promise.reject(this.failWith);
    if (this.hang || this.endpoints.length === 0) {
      return new Promise((_, reject) =>
        signal?.addEventListener("abort", () => reject(signal.reason))
      );
    }
    const endpoint = this.endpoints.shift()!;
    return Promise.resolve({
      podId: `pod-${++this.#seq}`,
      endpoint,
      coldStart: this.coldStart,
      resumed: false,
      version: 1,
    });
  }
  returnWorker(req: { podId: string; gatewayId: string; failed?: boolean }): Promise<void> {
    this.returns.push({ podId: req.podId, failed: req.failed });
    return Promise.resolve();
  }
  refreshGateway(): Promise<void> {
    return Promise.resolve();
  }
  killPod(): Promise<void> {
    return Promise.resolve();
  }
}

interface Fixture {
  app: ReturnType<typeof createGatewayApp>;
  sched: FakeScheduler;
  cache: FuncCache;
  meta: StateService;
  close(): Promise<void>;
}

async function fixture(policy: Record<string, unknown> = {}, bodyLimit = 1024): Promise<Fixture> {
  const store = await openSqliteStore();
  const meta = new StateService(store);
  await meta.create({
    type: "tenant",
    tenant: "system",
    namespace: "system",
    name: "t",
    object: {},
  });
  await meta.create({ type: "namespace", tenant: "t", namespace: "system", name: "n", object: {} });
  await meta.create({
    type: "function",
    tenant: "t",
    namespace: "n",
    name: "f",
    object: { spec: { image: "x", policy: { Obj: { max_replica: 2, ...policy } } } },
  });
  const sched = new FakeScheduler();
  const cache = new FuncCache({ scheduler: sched, gatewayId: "gw-test" });
  await cache.start(meta);
  const app = createGatewayApp({ meta, cache, bodyLimit });
  return { app, sched, cache, meta, close: async () => (cache.stop(), await store.close()) };
}

/** A worker on a free port that answers with its name, after `delayMs`. */
function worker(name: string, options: { status?: number; delayMs?: number } = {}) {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    if (options.delayMs) await new Promise((r) => setTimeout(r, options.delayMs));
    const body = req.body ? await req.text() : "";
    return Response.json({ worker: name, path: new URL(req.url).pathname, body }, {
      status: options.status ?? 200,
    });
  });
  return { endpoint: `127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

const call = (
  app: Fixture["app"],
  body: unknown = { prompt: "x" },
  headers: Record<string, string> = {},
) =>
  app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

t("gateway proxies to a leased worker, marks the cold start, then reuses it warm", async () => {
  const f = await fixture();
  const w = worker("w1");
  f.sched.endpoints.push(w.endpoint);
  const r1 = await call(f.app);
  assert.equal(r1.status, 200);
  assert.equal(r1.headers.get("x-inferx-cold-start"), "1");
  assert.ok(Number(r1.headers.get("x-inferx-ttfb-ms")) >= 0);
  assert.deepEqual(await r1.json(), {
    worker: "w1",
    path: "/v1/completions",
    body: '{"prompt":"x"}',
  });
  const r2 = await call(f.app);
  assert.equal(r2.headers.get("x-inferx-cold-start"), "0");
  await r2.body?.cancel();
  assert.equal(f.sched.leases.length, 1, "the warm call made no scheduler call");
  await f.close();
  await w.close();
});

t("gateway answers 404 for an unknown function", async () => {
  const f = await fixture();
  const r = await f.app.request("/funccall/t/n/nope/v1/completions");
  assert.equal(r.status, 404);
  assert.match((await r.json()).error.message, /t\/n\/nope does not exist/);
  await f.close();
});

t("gateway answers 400 for malformed JSON without leasing a worker", async () => {
  const f = await fixture();
  const r = await call(f.app, "{oops");
  assert.equal(r.status, 400);
  assert.match((await r.json()).error.message, /not valid JSON/);
  assert.equal(f.sched.leases.length, 0);
  await f.close();
});

t("gateway answers 413 for a body over the limit, declared or streamed", async () => {
  const f = await fixture({}, 100);
  const big = JSON.stringify({ prompt: "x".repeat(200) });
  const r = await call(f.app, big);
  assert.equal(r.status, 413);
  assert.match((await r.json()).error.message, /limit of 100 bytes/);
  const chunked = await f.app.request("/funccall/t/n/f/upload", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: new Blob([big]).stream(),
  });
  assert.equal(chunked.status, 413);
  await chunked.body?.cancel();
  await f.close();
});

t("gateway answers 503 when the queue is full and 504 when the wait runs out", async () => {
  const f = await fixture({ queue_len: 1, queue_timeout: 0.3 });
  f.sched.hang = true;
  const first = call(f.app);
  await new Promise((r) => setTimeout(r, 20));
  const full = await call(f.app);
  assert.equal(full.status, 503);
  assert.match((await full.json()).error.message, /queue is full \(1 waiting\)/);
  const timedOut = await first;
  assert.equal(timedOut.status, 504);
  assert.match((await timedOut.json()).error.message, /no worker was free within 300 ms/);
  await f.close();
});

t("gateway honours X-Inferx-Timeout up to the policy's queue_timeout", async () => {
  const f = await fixture({ queue_timeout: 30 });
  f.sched.hang = true;
  const t0 = performance.now();
  const r = await call(f.app, { prompt: "x" }, { "x-inferx-timeout": "0.1" });
  assert.equal(r.status, 504);
  await r.body?.cancel();
  assert.ok(performance.now() - t0 < 5000);
  const bad = await call(f.app, { prompt: "x" }, { "x-inferx-timeout": "soon" });
  assert.equal(bad.status, 400);
  await bad.body?.cancel();
  await f.close();
});

t("gateway retries on another worker when one refuses the connection", async () => {
  const f = await fixture();
  const dead = worker("dead");
  await dead.close();
  const live = worker("live");
  f.sched.endpoints.push(dead.endpoint, live.endpoint);
  const r = await call(f.app);
  assert.equal(r.status, 200);
  assert.equal((await r.json()).worker, "live");
  assert.deepEqual(f.sched.returns, [{ podId: "pod-1", failed: true }]);
  await f.close();
  await live.close();
});

t("gateway retries a 503 answer on another free worker", async () => {
  const f = await fixture({ parallel: 1, scaleout_policy: { wait_ratio: 0 } });
  const busy = worker("busy", { status: 503, delayMs: 100 });
  const ok = worker("ok");
  f.sched.endpoints.push(busy.endpoint);
  const a = call(f.app); // leases busy and holds its only slot for 100 ms
  await new Promise((r) => setTimeout(r, 20));
  f.sched.endpoints.push(ok.endpoint);
  const b = await call(f.app); // queue pressure leases ok
  assert.equal((await b.json()).worker, "ok");
  const ra = await a;
  assert.equal(ra.status, 200, "busy answered 503 once ok was free: retried there");
  assert.equal((await ra.json()).worker, "ok");
  const c = await call(f.app); // busy is first in line and free; its 503 is retried on ok
  assert.equal(c.status, 200);
  assert.equal((await c.json()).worker, "ok");
  assert.equal(f.sched.leases.length, 2);
  await f.close();
  await busy.close();
  await ok.close();
});

t("gateway passes a 503 answer through when no other worker is free", async () => {
  const f = await fixture();
  const busy = worker("busy", { status: 503 });
  f.sched.endpoints.push(busy.endpoint);
  const r = await call(f.app);
  assert.equal(r.status, 503);
  assert.equal((await r.json()).worker, "busy");
  await f.close();
  await busy.close();
});

t("gateway returns a worker idle past scalein_timeout", async () => {
  const f = await fixture({ scalein_timeout: 0.05 });
  const w = worker("w");
  f.sched.endpoints.push(w.endpoint);
  await (await call(f.app)).body?.cancel();
  const agent = f.cache.agent("t", "n", "f")!;
  assert.equal(agent.workers.length, 1);
  agent.sweep(performance.now() + 100);
  assert.equal(agent.workers.length, 0);
  assert.deepEqual(f.sched.returns, [{ podId: "pod-1", failed: false }]);
  await f.close();
  await w.close();
});

t("gateway passes a worker start failure to the caller as 503 with its message", async () => {
  const f = await fixture();
  f.sched.failWith = new InferxError(
    "worker_failed",
    "Worker pod-9 failed to start: exit code 3; last output:\nno weights",
  );
  const r = await call(f.app);
  assert.equal(r.status, 503);
  assert.match((await r.json()).error.message, /no weights/);
  await f.close();
});

t("object API creates, reads, updates with compare-and-swap, lists and deletes", async () => {
  const f = await fixture();
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
  const ok = await upd(created.revision);
  assert.equal(ok.status, 200);
  const stale = await upd(created.revision);
  assert.equal(stale.status, 409);
  assert.match((await stale.json()).error.message, /it changed/);
  const got = await (await f.app.request("/object/funcpolicy/t/n/p")).json();
  assert.equal(got.object.spec.max_replica, 4);
  const list = await (await f.app.request("/objects/funcpolicy/t/n")).json();
  assert.deepEqual(list.items.map((o: { name: string }) => o.name), ["p"]);
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p", { method: "DELETE" })).status, 200);
  assert.equal((await f.app.request("/object/funcpolicy/t/n/p")).status, 404);
  await (await f.app.request("/object/funcpolicy/t/n/p")).body?.cancel();
  await ok.body?.cancel();
  await f.close();
});

t(
  "object API refuses bad input with 400 naming the field, and missing parents with 404",
  async () => {
    const f = await fixture();
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
