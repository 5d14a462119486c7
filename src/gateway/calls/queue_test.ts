import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { testCall, until } from "../../common/testing.ts";
import { callBodyRef, type CallRecord, decodeCall } from "../../model/call.ts";
import { FuncCache } from "../func_cache.ts";
import { HttpPool } from "../http_pool.ts";
import { GatewayMetrics } from "../metrics.ts";
import { addFunction, FakeScheduler, type GatewayFixture, gatewayFixture } from "../testing.ts";
import { CallbackSender } from "./callback.ts";
import { CallQueue, refOf } from "./queue.ts";
import type { MetaClient } from "../../rpc/types.ts";
import { InferxError } from "../../common/errors.ts";
import { drainCalls } from "../server.ts";
import { objectKey, SYSTEM } from "../../model/keys.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

/** A worker that counts the calls it sees by the `n` of their JSON body. */
function countingWorker() {
  const seen = new Map<string, number>();
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    const { n } = await req.json();
    seen.set(n, (seen.get(n) ?? 0) + 1);
    return Response.json({ n });
  });
  return { endpoint: `127.0.0.1:${server.addr.port}`, seen, close: () => server.shutdown() };
}

/** A call of t/n/f whose body is `{n}`, with `fields` changed. */
function record(n: string, fields: Partial<CallRecord> = {}): CallRecord {
  const body = Buffer.from(JSON.stringify({ n })).toString("base64");
  return testCall("t", "n", { body, ...fields });
}

/** Loopback, which callbacks may reach in these tests. */
const LOOPBACK = [{ address: "127.0.0.0", prefix: 8, family: "ipv4" as const }];

/** A call that ended, its callback to `url` still to deliver (its request body gone). */
function ended(url: string): CallRecord {
  const rec = record("cb", {
    status: "succeeded",
    finishedAt: Date.now(),
    callback: url,
    delivery: { state: "pending", attempts: 0 },
  });
  delete rec.body;
  return rec;
}

async function store(f: GatewayFixture, rec: CallRecord) {
  await f.meta.create({ ...refOf(rec), object: rec });
  return rec.id;
}

async function read(f: GatewayFixture, id: string): Promise<CallRecord> {
  const r = await f.meta.get(refOf({ tenant: "t", namespace: "n", id }));
  return decodeCall(r!.value);
}

/** A second gateway's queue over the fixture's store, with its own workers (none: no worker). */
async function secondGateway(
  f: GatewayFixture,
  endpoint?: string,
  callbacks = new CallbackSender(),
  { meta = f.meta, id = "gw-2", backoffMs = 20 }: {
    meta?: MetaClient;
    id?: string;
    backoffMs?: number;
  } = {},
) {
  const sched = new FakeScheduler();
  if (endpoint) sched.endpoints.push(endpoint);
  const cache = new FuncCache({ scheduler: sched, gatewayId: id });
  await cache.start(f.meta);
  const pool = new HttpPool();
  const queue = new CallQueue({
    meta,
    cache,
    pool,
    observe: { metrics: new GatewayMetrics(cache), gatewayId: id },
  }, { gatewayId: id, leaseMs: 500, backoffMs, callbacks });
  await queue.start();
  return {
    queue,
    async close() {
      await queue.stop(0);
      cache.stop();
      pool.close();
    },
  };
}

t(
  "a call whose claim ran out is taken over: the lost attempt is recorded and the call runs again, once",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
    const w = countingWorker();
    f.sched.endpoints.push(w.endpoint);
    const id = await store(
      f,
      record("a", {
        status: "running",
        owner: "gw-dead",
        leaseUntil: Date.now() - 1,
        startedAt: Date.now() - 100,
        attempts: [{ n: 1, gateway: "gw-dead", startedAt: Date.now() - 100 }],
      }),
    );
    await until("the call to end", async () => (await read(f, id)).status === "succeeded");
    const c = await read(f, id);
    assert.deepEqual(c.attempts.map((a) => [a.n, a.gateway, a.error?.code]), [
      [1, "gw-dead", "gateway_lost"],
      [2, "gw-test", undefined],
    ]);
    assert.match(c.attempts[0].error!.message, /gw-dead stopped renewing its claim/);
    assert.equal(c.owner, undefined, "the claim is let go once the call ended");
    assert.deepEqual([...w.seen], [["a", 1]]);
    // Nothing of the function is kept once its calls ended (functions come and go).
    await until("no function counted", () => Promise.resolve(f.deps.calls.functionsCounted === 0));
    await f.close();
    await w.close();
  },
);

t("a claim within its lease is left to its gateway", async () => {
  const f = await gatewayFixture({ calls: { leaseMs: 500 } });
  const w = countingWorker();
  f.sched.endpoints.push(w.endpoint);
  const id = await store(
    f,
    record("b", { status: "running", owner: "gw-alive", leaseUntil: Date.now() + 60_000 }),
  );
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await read(f, id)).owner, "gw-alive");
  assert.equal(w.seen.size, 0);
  await f.close();
  await w.close();
});

t("two gateways taking calls from one store run each call exactly once", async () => {
  const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
  const w = countingWorker();
  f.sched.endpoints.push(w.endpoint);
  const other = await secondGateway(f, w.endpoint);
  const ids: string[] = [];
  for (let i = 0; i < 20; i++) ids.push(await store(f, record(`c${i}`)));
  await until("every call to end", async () => {
    for (const id of ids) if ((await read(f, id)).status !== "succeeded") return false;
    return true;
  });
  assert.equal(w.seen.size, 20);
  assert.ok([...w.seen.values()].every((n) => n === 1), JSON.stringify([...w.seen]));
  const by = new Set<string>();
  for (const id of ids) {
    const c = await read(f, id);
    assert.equal(c.attempts.length, 1);
    by.add(c.attempts[0].gateway);
  }
  assert.ok(by.size >= 1);
  await other.close();
  await f.close();
  await w.close();
});

t(
  "an unfinished call past its expiry is marked expired; an ended one past it is deleted",
  async () => {
    let now = Date.now();
    const f = await gatewayFixture({ calls: { leaseMs: 500, ttlMs: 1000, now: () => now } });
    const stale = await store(f, record("d", { expiresAt: now - 1 }));
    await until("the call to expire", async () => (await read(f, stale)).status === "expired");
    const c = await read(f, stale);
    assert.equal(c.error?.code, "expired");
    assert.equal(c.attempts.length, 0, "it never ran");
    assert.ok(c.expiresAt > now, "its record is kept a while longer");
    now += 2000;
    await until(
      "the record to go",
      async () => !(await f.meta.get(refOf({ tenant: "t", namespace: "n", id: stale }))),
    );
    await f.close();
  },
);

t(
  "a pass over the queue stops at a full function's first waiting call, yet ends its expired ones and serves other functions",
  async () => {
    let now = Date.now();
    const f = await gatewayFixture({
      calls: { leaseMs: 60_000, ttlMs: 60_000, now: () => now },
      policy: { parallel: 1, max_replica: 1 },
    });
    f.sched.hang = true; // t/n/f's one slot is taken by its first call, for good
    await addFunction(f, "t", "n", "g");
    const w = countingWorker();
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) {
      ids.push(await store(f, record(`f${i}`, { acceptedAt: now + i, expiresAt: now + 1000 + i })));
    }
    await until("the first call to run", async () => (await read(f, ids[0])).status === "running");
    // Another function's call is not held up behind the full one's.
    const sched = f.sched;
    sched.hang = false;
    sched.endpoints.push(w.endpoint);
    const g = await store(f, { ...record("g"), func: "g" });
    await until("g's call to succeed", async () => (await read(f, g)).status === "succeeded");
    // The full function's waiting calls expire, in the order they were accepted.
    now += 1015;
    await until("15 of f's calls to expire", async () => {
      const st = await Promise.all(ids.slice(1).map(async (id) => (await read(f, id)).status));
      return st.filter((s) => s === "expired").length === 15;
    });
    const st = await Promise.all(ids.slice(1).map(async (id) => (await read(f, id)).status));
    assert.deepEqual(st, [...Array(15).fill("expired"), ...Array(14).fill("queued")]);
    await f.close();
    await w.close();
  },
);

t(
  "ended calls past their expiry are deleted a batch at a time, other work going on between",
  async () => {
    let now = Date.now();
    const f = await gatewayFixture({ calls: { leaseMs: 500, ttlMs: 1000, now: () => now } });
    const ids: string[] = [];
    for (let i = 0; i < 250; i++) {
      ids.push(
        await store(
          f,
          record(`x${i}`, { status: "succeeded", finishedAt: now, expiresAt: now + 500 }),
        ),
      );
    }
    await until(
      "the calls to be known",
      async () => (await f.meta.list("call")).items.length === 250,
    );
    // When each delete was asked, counted in turns of the event loop.
    let turns = 0;
    const timer = setInterval(() => turns++, 0);
    const askedAt: number[] = [];
    const meta = f.meta as { delete: (...a: Parameters<typeof f.meta.delete>) => Promise<number> };
    const del = meta.delete.bind(f.meta);
    meta.delete = (ref, revision) => {
      if (ref.type === "call") askedAt.push(turns);
      return del(ref, revision);
    };
    try {
      now += 2000;
      await until("every call to go", async () => (await f.meta.list("call")).items.length === 0);
      assert.equal(askedAt.length, 250);
      assert.ok(askedAt.at(-1)! > askedAt[0], "the deletes were asked over several turns");
    } finally {
      clearInterval(timer);
      await f.close();
    }
  },
);

t(
  "a stopping gateway hands back the calls it runs, its try not counted, for another gateway to finish",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
    let release: (() => void) | undefined;
    const hold = new Promise<void>((r) => release = r);
    const slow = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      await Promise.race([hold, new Promise((r) => req.signal.addEventListener("abort", r))]);
      return Response.json({ slow: true });
    });
    f.sched.endpoints.push(`127.0.0.1:${slow.addr.port}`);
    // One attempt allowed: the one the stop broke off must not use it up.
    const id = await store(f, record("e", { maxAttempts: 1 }));
    await until("the call to run", async () => (await read(f, id)).status === "running");
    await f.deps.calls.stop(0);
    // Handed back by a write the stop (given no grace at all) does not wait for.
    await until("the call handed back", async () => (await read(f, id)).status === "queued");
    const handed = await read(f, id);
    assert.equal(handed.owner, undefined);
    assert.equal(handed.attempts[0].error?.code, "gateway_stopped");
    // Its request audit says so too, not that the call was cancelled.
    const row = () => f.audit.requests.find((r) => r.call === id && r.attempt === 1);
    await until("the attempt's audit row", () => Promise.resolve(row() !== undefined));
    assert.deepEqual([row()!.status, row()!.error], [503, "gateway_stopped"]);
    const w = countingWorker();
    const other = await secondGateway(f, w.endpoint);
    await until(
      "another gateway to finish it",
      async () => (await read(f, id)).status === "succeeded",
    );
    assert.equal((await read(f, id)).attempts[1].gateway, "gw-2");
    release!();
    await other.close();
    await f.close();
    await slow.shutdown();
    await w.close();
  },
);

t(
  "a call waiting for a worker when its gateway stops is handed back, its try not counted",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
    f.sched.hang = true; // no worker comes: the call waits in its function's queue
    const id = await store(f, record("w", { maxAttempts: 1 }));
    await until("the call to wait", () => f.cache.agent("t", "n", "f")?.queued === 1);
    // The gateway's stop, as `mod.ts` runs it: waiting calls hear STOPPING at once.
    await Promise.all([drainCalls(f.cache, { shutdown: async () => {} }, 0), f.deps.calls.stop(0)]);
    await until("the call handed back", async () => (await read(f, id)).status === "queued");
    const handed = await read(f, id);
    assert.equal(handed.attempts[0].error?.code, "gateway_stopped");
    assert.equal(f.audit.requests.at(-1)?.error, "gateway_stopped");
    // Another gateway runs it: the one attempt it has is still there to use.
    const w = countingWorker();
    const other = await secondGateway(f, w.endpoint);
    await until(
      "another gateway to finish it",
      async () => (await read(f, id)).status === "succeeded",
    );
    await other.close();
    await f.close();
    await w.close();
  },
);

t("a gateway claims no more calls of a function than it has room for", async () => {
  const f = await gatewayFixture({
    policy: { parallel: 1, max_replica: 1, queue_len: 1 },
    calls: { leaseMs: 3000, backoffMs: 20 },
  });
  let running = 0;
  let most = 0;
  const slow = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    most = Math.max(most, ++running);
    const { n } = await req.json();
    await new Promise((r) => setTimeout(r, 100));
    running--;
    return Response.json({ n });
  });
  f.sched.endpoints.push(`127.0.0.1:${slow.addr.port}`);
  f.cache.agent("t", "n", "f"); // its policy known: room for one call at a time
  let claimed = 0;
  const watch = setInterval(() => claimed = Math.max(claimed, f.deps.calls.claimed), 2);
  const ids = await Promise.all(Array.from({ length: 6 }, (_, i) => store(f, record(`c${i}`))));
  await until("every call to end", async () => {
    for (const id of ids) {
      if (!["succeeded", "failed"].includes((await read(f, id)).status)) return false;
    }
    return true;
  }, 20_000);
  clearInterval(watch);
  const calls = await Promise.all(ids.map((id) => read(f, id)));
  assert.deepEqual(
    calls.map((c) => [c.status, c.attempts.length]),
    ids.map(() => ["succeeded", 1]),
  );
  assert.equal(claimed, 1);
  assert.equal(most, 1);
  await f.close();
  await slow.shutdown();
});

t(
  "a callback whose host name does not resolve for a while is tried again, not given up",
  async () => {
    const f = await gatewayFixture();
    await f.deps.calls.stop(0); // the second gateway's queue delivers
    let hits = 0;
    const receiver = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      () => (hits++, new Response("ok")),
    );
    let lookups = 0;
    const resolve = () =>
      ++lookups === 1
        ? Promise.reject(new Error("getaddrinfo EAI_AGAIN hook.test"))
        : Promise.resolve(["127.0.0.1"]);
    const other = await secondGateway(
      f,
      undefined,
      new CallbackSender({ resolve, allow: LOOPBACK }),
    );
    const id = await store(f, ended(`http://hook.test:${receiver.addr.port}/cb`));
    await until(
      "the delivery to settle",
      async () => (await read(f, id)).delivery?.state !== "pending",
    );
    const d = (await read(f, id)).delivery;
    assert.equal(d?.state, "delivered");
    assert.equal(d?.attempts, 2);
    assert.equal(hits, 1);
    await other.close();
    await f.close();
    await receiver.shutdown();
  },
);

t(
  "a call taken over reads its request body from the store; one whose body is missing fails saying so",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
    const w = countingWorker();
    f.sched.endpoints.push(w.endpoint);
    const lost = (n: string) =>
      record(n, {
        body: undefined,
        bodyBytes: JSON.stringify({ n }).length,
        status: "running",
        owner: "gw-dead",
        leaseUntil: Date.now() - 1,
        startedAt: Date.now() - 100,
        attempts: [{ n: 1, gateway: "gw-dead", startedAt: Date.now() - 100 }],
      });
    const kept = lost("apart");
    const ref = refOf(kept);
    await f.meta.create({
      ...callBodyRef(ref, "request"),
      object: { body: Buffer.from(JSON.stringify({ n: "apart" })).toString("base64") },
    });
    const id = await store(f, kept);
    // Stored with its body, which then went (a record is refused without it).
    const goneRec = lost("gone");
    const goneBody = callBodyRef(refOf(goneRec), "request");
    await f.meta.create({ ...goneBody, object: { body: "eA==" } });
    const gone = await store(f, goneRec);
    await f.meta.delete(goneBody);
    await until(
      "both calls to end",
      async () =>
        (await read(f, id)).status === "succeeded" && (await read(f, gone)).status === "failed",
    );
    assert.deepEqual([...w.seen], [["apart", 1]]);
    const failed = await read(f, gone);
    assert.equal(failed.error?.code, "internal");
    assert.match(failed.error!.message, /request body of call .* is not in the store/);
    await until(
      "the request body to go",
      async () => !await f.meta.get(callBodyRef(ref, "request")),
    );
    await f.close();
    await w.close();
  },
);

/** `meta` whose methods named in `fail` reject while `when()` says so. */
function flaky(meta: MetaClient, fail: string[], when: (input: unknown) => boolean): MetaClient {
  return new Proxy(meta, {
    get(target, k, r) {
      const v = Reflect.get(target, k, r);
      if (typeof v !== "function") return v;
      return (...a: unknown[]) =>
        fail.includes(String(k)) && when(a[0])
          ? Promise.reject(new Error("store unreachable"))
          : v.apply(target, a);
    },
  });
}

t(
  "a gateway cut off from the store lets its call go before another may take it over: never two runs at once",
  async () => {
    const f = await gatewayFixture();
    await f.deps.calls.stop(0);
    let running = 0, most = 0, runs = 0;
    const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      runs++, running++, most = Math.max(most, running);
      await new Promise((r) => {
        const t = setTimeout(r, 1500);
        req.signal.addEventListener("abort", () => (clearTimeout(t), r(null))); // its caller left
      });
      running--;
      return Response.json({ ok: true });
    });
    const endpoint = `127.0.0.1:${server.addr.port}`;
    let cut = false;
    const a = await secondGateway(f, endpoint, undefined, {
      id: "gw-a",
      meta: flaky(f.meta, ["get", "update", "create"], () => cut),
    });
    const id = await store(f, record("p"));
    await until("gw-a to run it", () => Promise.resolve(runs === 1));
    cut = true;
    const b = await secondGateway(f, endpoint, undefined, { id: "gw-b" });
    await until("the call to end", async () => (await read(f, id)).status === "succeeded", 10_000);
    assert.equal(most, 1, "the worker never ran the call twice at once");
    assert.deepEqual((await read(f, id)).attempts.map((x) => [x.gateway, x.error?.code]), [
      ["gw-a", "gateway_lost"],
      ["gw-b", undefined],
    ]);
    await a.close();
    await b.close();
    await f.close();
    await server.shutdown();
  },
);

t(
  "an answer whose record write fails for a moment is written when the store is back, not run again",
  async () => {
    const f = await gatewayFixture();
    await f.deps.calls.stop(0);
    const w = countingWorker();
    // Writes of the answer until it is written (later ones, letting the claim go, not counted).
    let failures = 0;
    let written = false;
    const g = await secondGateway(f, w.endpoint, undefined, {
      meta: flaky(f.meta, ["update"], (input) => {
        const o = (input as { object?: { result?: unknown } }).object;
        if (o?.result === undefined || written) return false;
        if (failures++ < 2) return true;
        written = true;
        return false;
      }),
    });
    const id = await store(f, record("s", { maxAttempts: 1 }));
    await until("the call to end", async () =>
      (await read(f, id)).status !== "queued" &&
      (await read(f, id)).status !== "running");
    const c = await read(f, id);
    assert.equal(c.status, "succeeded", JSON.stringify(c.error));
    assert.equal(failures, 3, "written on its third try");
    assert.deepEqual([...w.seen], [["s", 1]], "run once");
    await g.close();
    await f.close();
    await w.close();
  },
);

t("a callback of a tenant that is gone is given up, not claimed again for ever", async () => {
  const f = await gatewayFixture({ calls: { leaseMs: 300, ttlMs: 500 } });
  const rec = testCall("gone", "n", {
    status: "succeeded",
    finishedAt: Date.now(),
    callback: "http://hook.test/cb",
    delivery: { state: "pending", attempts: 0 },
    result: { status: 200, headers: [], body: "" },
    expiresAt: Date.now() + 1000,
  });
  // Its tenant deleted past the state service, which deletes a tenant's calls with it: as a
  // crash half way through an earlier release's deletion left it.
  await f.meta.create({
    type: "tenant",
    tenant: SYSTEM,
    namespace: SYSTEM,
    name: "gone",
    object: {},
  });
  await f.meta.create({
    type: "namespace",
    tenant: "gone",
    namespace: SYSTEM,
    name: "n",
    object: {},
  });
  await f.meta.create({ ...refOf(rec), object: rec });
  await f.store.delete(objectKey("namespace", "gone", SYSTEM, "n"));
  await f.store.delete(objectKey("tenant", SYSTEM, SYSTEM, "gone"));
  const ref = refOf(rec);
  await until("the delivery to be given up", async () => {
    const cur = await f.meta.get(ref);
    return cur !== undefined && decodeCall(cur.value).delivery?.state === "failed";
  });
  const d = decodeCall((await f.meta.get(ref))!.value).delivery;
  assert.match(d?.lastError ?? "", /Tenant gone no longer exists/);
  await until("its record to go at the end of its retention", async () => !await f.meta.get(ref));
  await f.close();
});

t("a gateway starting with a backlog runs it oldest first", async () => {
  const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 1 } });
  await f.deps.calls.stop(0);
  const order: number[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    order.push((await req.json()).n);
    return Response.json({});
  });
  const t0 = Date.now() - 60_000;
  // Keys in the reverse order of acceptance: the store lists the newest first.
  for (let n = 0; n < 6; n++) {
    const key = `c${(15 - n).toString(16).repeat(24)}`;
    const body = Buffer.from(JSON.stringify({ n })).toString("base64");
    await store(f, testCall("t", "n", { id: `t:n:${key}`, body, acceptedAt: t0 + n * 1000 }));
  }
  const g = await secondGateway(f, `127.0.0.1:${server.addr.port}`);
  await until("all to run", () => Promise.resolve(order.length === 6));
  assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
  await g.close();
  await f.close();
  await server.shutdown();
});

t(
  "a large answer whose body write fails for a moment is stored when the store is back, not run again",
  async () => {
    const f = await gatewayFixture();
    await f.deps.calls.stop(0);
    let runs = 0;
    const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      await req.text();
      runs++;
      return Response.json({ text: "y".repeat(8000) });
    });
    let failures = 0;
    const g = await secondGateway(f, `127.0.0.1:${server.addr.port}`, undefined, {
      meta: flaky(f.meta, ["create"], (input) => {
        const i = input as { type?: string; name?: string };
        return i.type === "callbody" && i.name!.endsWith(".result") && failures++ < 1;
      }),
    });
    const id = await store(f, record("big", { maxAttempts: 1 }));
    await until(
      "the call to end",
      async () => !["queued", "running"].includes((await read(f, id)).status),
    );
    const c = await read(f, id);
    assert.equal(c.status, "succeeded", JSON.stringify(c.error));
    assert.equal(runs, 1, "run once");
    assert.equal(c.result?.bytes, JSON.stringify({ text: "y".repeat(8000) }).length);
    await g.close();
    await f.close();
    await server.shutdown();
  },
);

t(
  "a stop whose hand-back cannot reach the store (its state service down) ends all the same",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
    await f.deps.calls.stop(0); // the second gateway runs the call
    const slow = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async () => {
      await new Promise((r) => setTimeout(r, 5000));
      return Response.json({});
    });
    let down = false;
    const meta = new Proxy(f.meta, {
      get(target, key) {
        const v = Reflect.get(target, key) as unknown;
        if (typeof v !== "function") return v;
        // Once down, every write waits for ever (no answer, no error).
        if (key === "update" || key === "create") {
          return (...a: unknown[]) => down ? new Promise(() => {}) : v.apply(target, a);
        }
        return v.bind(target);
      },
    });
    const g = await secondGateway(f, `127.0.0.1:${slow.addr.port}`, undefined, { meta });
    try {
      const id = await store(f, record("a"));
      await until("the call running on gw-2", async () => (await read(f, id)).owner === "gw-2");
      down = true;
      const t0 = Date.now();
      const ended = await Promise.race([
        g.queue.stop(100).then(() => "stopped"),
        new Promise((r) => setTimeout(() => r("still stopping after 3 s"), 3000)),
      ]);
      assert.equal(ended, "stopped");
      assert.ok(Date.now() - t0 < 2000, `${Date.now() - t0} ms`);
    } finally {
      down = false;
      await slow.shutdown();
      await f.close();
    }
  },
);

/** A store whose writes fail (`unavailable`) while `down.on`: a gateway cut off from it. */
function flakyWrites(meta: MetaClient) {
  const down = { on: false };
  const proxy = new Proxy(meta, {
    get(target, key) {
      const v = Reflect.get(target, key) as unknown;
      if (typeof v !== "function") return v;
      if (key === "update" || key === "create") {
        return (...a: unknown[]) =>
          down.on
            ? Promise.reject(new InferxError("unavailable", "the store is away"))
            : v.apply(target, a);
      }
      return v.bind(target);
    },
  });
  return { meta: proxy, down };
}

t(
  "a gateway that let a call go posts no more of its callback (another gateway delivers)",
  async () => {
    const f = await gatewayFixture();
    await f.deps.calls.stop(0);
    let hits = 0;
    const receiver = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      () => (hits++, new Response("not yet", { status: 500 })),
    );
    const { meta, down } = flakyWrites(f.meta);
    const g = await secondGateway(
      f,
      undefined,
      new CallbackSender({ allow: LOOPBACK }),
      { meta, backoffMs: 3000 },
    );
    try {
      const id = await store(f, ended(`http://127.0.0.1:${receiver.addr.port}/cb`));
      await until("the first try", async () => (await read(f, id)).delivery?.attempts === 1);
      // Cut off from the store while it waits to try again: its claim runs out, it lets go.
      down.on = true;
      await new Promise((r) => setTimeout(r, 1200));
      assert.equal(hits, 1, "no try after letting the call go");
    } finally {
      down.on = false;
      await g.close();
      await receiver.shutdown();
      await f.close();
    }
  },
);

t(
  "a call cancelled while it ran, its gateway gone, has its attempt closed by another",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
    const rec = record("c", {
      status: "cancelled",
      startedAt: Date.now() - 1000,
      finishedAt: Date.now() - 900,
      error: { code: "cancelled", message: "The call was cancelled" },
      owner: "gw-dead",
      leaseUntil: Date.now() - 1,
      attempts: [{ n: 1, gateway: "gw-dead", startedAt: Date.now() - 1000 }],
    });
    delete rec.body;
    const id = await store(f, rec);
    await until(
      "its attempt closed",
      async () => (await read(f, id)).attempts[0].endedAt !== undefined,
    );
    const c = await read(f, id);
    assert.equal(c.status, "cancelled");
    assert.equal(c.attempts[0].error?.code, "cancelled");
    assert.match(c.attempts[0].error!.message, /gw-dead stopped renewing its claim/);
    assert.equal(c.owner, undefined);
    await f.close();
  },
);

t(
  "a running call cancelled has its callback sent at once, not after its claim's lease",
  async () => {
    const f = await gatewayFixture({
      calls: {
        leaseMs: 6000,
        backoffMs: 20,
        callbackAllow: LOOPBACK,
      },
    });
    const slow = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async () => {
      await new Promise((r) => setTimeout(r, 3000));
      return Response.json({});
    });
    f.sched.endpoints.push(`127.0.0.1:${slow.addr.port}`);
    const got: number[] = [];
    const receiver = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      () => (got.push(Date.now()), new Response("ok")),
    );
    try {
      const id = await store(
        f,
        record("c", { callback: `http://127.0.0.1:${receiver.addr.port}/cb` }),
      );
      await until("the call running", async () => (await read(f, id)).status === "running");
      const t0 = Date.now();
      await f.deps.calls.cancel(id);
      await until("the callback", () => got.length > 0, 4000);
      assert.ok(got[0] - t0 < 2000, `${got[0] - t0} ms after the cancel`);
      await until("delivered", async () => (await read(f, id)).delivery?.state === "delivered");
      assert.equal(got.length, 1);
    } finally {
      await slow.shutdown();
      await receiver.shutdown();
      await f.close();
    }
  },
);

// A stopping gateway hands the delivery back, for another gateway to take at once: a try under
// way is broken off and not counted; one waiting between tries keeps its count (before, it kept
// its claim, a minute here, and no gateway tried it until that ran out).
for (
  const [when, slow, tried] of [
    ["while a try is under way", true, 0],
    ["between tries", false, 1],
  ] as const
) {
  t(`a stopping gateway hands back a callback's delivery ${when}`, async () => {
    const f = await gatewayFixture({
      calls: { leaseMs: 60_000, backoffMs: 30_000, callbackAllow: LOOPBACK },
    });
    let tries = 0;
    const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async () => {
      tries++;
      if (slow) await new Promise((r) => setTimeout(r, 3000)); // the stop comes while it answers
      return new Response("not yet", { status: 500 });
    });
    try {
      const id = await store(f, ended(`http://127.0.0.1:${receiver.addr.port}/cb`));
      await until(
        "the try",
        async () => tries === 1 && (await read(f, id)).delivery?.attempts === tried,
      );
      if (!slow) await new Promise((r) => setTimeout(r, 100)); // waiting 30 s for the next
      await f.deps.calls.stop(100);
      const c = await read(f, id);
      assert.deepEqual([c.delivery?.state, c.delivery?.attempts], ["pending", tried]);
      assert.equal(c.owner, undefined, "handed back: another gateway may take it at once");
      assert.equal(c.leaseUntil, undefined);
      assert.equal(tries, 1);
    } finally {
      await receiver.shutdown();
      await f.close();
    }
  });
}

t(
  "a call deleted while its callback is tried gets no more tries, the one under way broken off",
  async () => {
    const f = await gatewayFixture({
      calls: { leaseMs: 60_000, backoffMs: 50, callbackAllow: LOOPBACK },
    });
    let tries = 0;
    let closed = 0;
    const receiver = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      async (req) => {
        tries++;
        req.signal.addEventListener("abort", () => closed++);
        await new Promise((r) => setTimeout(r, 400)); // slow: the delete comes while it answers
        return new Response("not yet", { status: 500 });
      },
    );
    try {
      const rec = ended(`http://127.0.0.1:${receiver.addr.port}/cb`);
      await store(f, rec);
      await until("the second try under way", () => tries === 2);
      await f.meta.delete(refOf(rec));
      await until("the try under way broken off", () => closed === 1);
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(tries, 2, "no try after the delete");
    } finally {
      await receiver.shutdown();
      await f.close();
    }
  },
);

t("a call that ends while its index is read is given once", async () => {
  const f = await gatewayFixture();
  await f.deps.calls.stop(0); // nothing runs the calls: they stay as written
  const open = record("open", {
    status: "running",
    owner: "gw-x",
    leaseUntil: Date.now() + 60_000,
  });
  await store(f, open);
  for (let i = 0; i < 3; i++) await store(f, record(`done${i}`, { status: "succeeded" }));
  const q = new CallQueue({
    meta: f.meta,
    cache: f.deps.cache,
    pool: f.deps.pool,
    observe: { metrics: f.deps.metrics, gatewayId: "gw-3" },
  }, { gatewayId: "gw-3", callbacks: new CallbackSender() });
  await q.start();
  try {
    const it = q.listed();
    const first = it.next().value!;
    assert.equal(first.status, "running");
    // It ends meanwhile: its entry moves behind where the reader is.
    const cur = await f.meta.get(refOf(open));
    await f.meta.update({
      ...refOf(open),
      object: { ...decodeCall(cur!.value), status: "succeeded", owner: undefined },
      revision: cur!.revision,
    });
    await until(
      "the move heard",
      () => [...q.listed()].some((e) => e.status === "succeeded" && e.ref.name === first.ref.name),
    );
    const rest = [...it].map((e) => e.ref.name);
    assert.equal(rest.filter((n) => n === first.ref.name).length, 0, `given again: ${rest}`);
    assert.equal(rest.length, 3);
  } finally {
    await q.stop(0);
    await f.close();
  }
});

/** A receiver that takes connections and never answers; `most`: the most it held at once. */
function hangingReceiver() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const r = {
    url: `http://127.0.0.1:${listener.addr.port}/cb`,
    most: 0,
    get open() {
      return open.size;
    },
    close() {
      listener.close();
      for (const c of open) c.close();
    },
  };
  (async () => {
    for await (const c of listener) (open.add(c), r.most = Math.max(r.most, open.size));
  })().catch(() => {});
  return r;
}

t(
  "callbacks to a receiver that hangs are taken on a bounded number at once per tenant",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 60_000, backoffMs: 20 } });
    await f.deps.calls.stop(0);
    const hang = hangingReceiver();
    const g = await secondGateway(f, undefined, new CallbackSender({ allow: LOOPBACK }));
    try {
      // Calls cancelled at once with a callback, say: each one's delivery would hang a minute.
      for (let i = 0; i < 40; i++) {
        await store(f, ended(hang.url));
      }
      await until("deliveries to begin", () => Promise.resolve(hang.open > 0));
      await new Promise((r) => setTimeout(r, 500));
      // Before, every one of them held a connection at once.
      assert.equal(hang.most, 16);
    } finally {
      await g.close();
      hang.close();
      await f.close();
    }
  },
);

t(
  "callbacks of calls that end on the gateway that ran them are bounded per tenant too",
  async () => {
    const f = await gatewayFixture({
      calls: { leaseMs: 60_000, backoffMs: 20, callbackAllow: LOOPBACK },
    });
    const w = countingWorker();
    f.sched.endpoints.push(w.endpoint);
    const hang = hangingReceiver();
    try {
      const ids = [];
      for (let i = 0; i < 24; i++) {
        const delivery = { state: "pending" as const, attempts: 0 };
        ids.push(await store(f, record(`r${i}`, { callback: hang.url, delivery })));
      }
      await until("every call run", () => w.seen.size === 24, 10_000);
      await new Promise((r) => setTimeout(r, 500));
      // Before, each call that ended here went to its callback at once: 24 connections.
      assert.equal(hang.most, 16);
      const pending = await Promise.all(ids.map(async (id) => (await read(f, id)).delivery?.state));
      assert.deepEqual(new Set(pending), new Set(["pending"]), "the rest wait their turn");
    } finally {
      await f.close();
      hang.close();
      await w.close();
    }
  },
);

/** An address nobody listens on: every attempt there fails, the worker unreachable. */
function deadEndpoint(): string {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return `127.0.0.1:${port}`;
}

const ENDED = ["succeeded", "failed", "cancelled", "expired"];

async function endOf(f: GatewayFixture, id: string): Promise<CallRecord> {
  await until("the call to end", async () => ENDED.includes((await read(f, id)).status), 15_000);
  return await read(f, id);
}

t("a call whose worker cannot be reached fails after exactly its attempts", async () => {
  const f = await gatewayFixture({ calls: { leaseMs: 2000, backoffMs: 20 } });
  for (let i = 0; i < 12; i++) f.sched.endpoints.push(deadEndpoint());
  const c = await endOf(f, await store(f, record("u", { maxAttempts: 2 })));
  assert.equal(c.status, "failed");
  assert.deepEqual(c.attempts.map((a) => a.error?.code), ["unavailable", "unavailable"]);
  await f.close();
});

t("an attempt lost with its gateway counts against the call's attempts", async () => {
  const f = await gatewayFixture({ calls: { leaseMs: 500, backoffMs: 20 } });
  const w = countingWorker();
  f.sched.endpoints.push(w.endpoint);
  const c = await endOf(
    f,
    await store(
      f,
      record("l", {
        maxAttempts: 1,
        status: "running",
        owner: "gw-dead",
        leaseUntil: Date.now() - 1,
        startedAt: Date.now() - 100,
        attempts: [{ n: 1, gateway: "gw-dead", startedAt: Date.now() - 100 }],
      }),
    ),
  );
  assert.equal(c.status, "failed", "its one attempt was the lost one");
  assert.equal(c.attempts.length, 1);
  assert.match(c.error?.message ?? "", /All 1 attempt\(s\) failed; the last: Gateway gw-dead/);
  assert.deepEqual([...w.seen], [], "not run again");
  await f.close();
  await w.close();
});

t(
  "an attempt a stopping gateway broke off does not count against the call's attempts",
  async () => {
    const f = await gatewayFixture({ calls: { leaseMs: 2000, backoffMs: 20 } });
    for (let i = 0; i < 12; i++) f.sched.endpoints.push(deadEndpoint());
    const now = Date.now();
    const c = await endOf(
      f,
      await store(
        f,
        record("s", {
          maxAttempts: 2,
          attempts: [{
            n: 1,
            gateway: "gw-old",
            startedAt: now - 100,
            endedAt: now - 50,
            error: { code: "gateway_stopped", message: "Gateway gw-old stopped" },
          }],
        }),
      ),
    );
    assert.deepEqual(
      c.attempts.map((a) => a.error?.code),
      ["gateway_stopped", "unavailable", "unavailable"],
      "the broken-off try and two counted ones",
    );
    await f.close();
  },
);
