import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { InferxError } from "../../common/errors.ts";
import { logLines, testCall, until } from "../../common/testing.ts";
import { reset } from "@logtape/logtape";
import { type ListedCall, refOf } from "../calls/queue.ts";
import { Newest } from "./calls.ts";
import { signature } from "../calls/callback.ts";
import {
  fakeWorker,
  type GatewayFixture,
  gatewayFixture,
  scriptedWorker as tcpScriptedWorker,
} from "../testing.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

const ASYNC = { prefer: "respond-async", "content-type": "application/json" };
const QUICK = { backoffMs: 20, leaseMs: 2000 };

/** Accepts an asynchronous call of t/n/f and returns the 202 answer's id. */
async function accept(
  f: GatewayFixture,
  body: unknown = { prompt: "x" },
  headers: Record<string, string> = {},
): Promise<string> {
  const r = await f.app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: { ...ASYNC, ...headers },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  assert.equal(r.status, 202, JSON.stringify(json));
  return json.id;
}

// deno-lint-ignore no-explicit-any
type Json = any;

async function get(f: GatewayFixture, id: string, headers: Record<string, string> = {}) {
  const r = await f.app.request(`/calls/${id}`, { headers });
  return { status: r.status, body: (await r.json()) as Json };
}

/** Polls GET /calls/{id} until the call has ended. */
async function ended(
  f: GatewayFixture,
  id: string,
  headers: Record<string, string> = {},
): Promise<Json> {
  let last: Json;
  await until(`call ${id} to end`, async () => {
    last = (await get(f, id, headers)).body;
    return ["succeeded", "failed", "cancelled", "expired"].includes(last.status);
  }, 10_000);
  return last;
}

/** A worker on a free port whose answers `answer(n)` scripts (n counts from 1). */
function scriptedWorker(answer: (n: number, req: Request) => Response | Promise<Response>) {
  let n = 0;
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    (req) => answer(++n, req),
  );
  return {
    endpoint: `127.0.0.1:${server.addr.port}`,
    get count() {
      return n;
    },
    close: () => server.shutdown(),
  };
}

t(
  "Prefer: respond-async answers 202 at once; GET /calls/{id} then shows the worker's JSON answer",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    const w = fakeWorker("w1");
    f.sched.endpoints.push(w.endpoint);
    const r = await f.app.request("/funccall/t/n/f/v1/completions", {
      method: "POST",
      headers: ASYNC,
      body: JSON.stringify({ prompt: "x" }),
    });
    assert.equal(r.status, 202);
    const accepted = await r.json();
    assert.match(accepted.id, /^t:n:c[0-9a-f]{24}$/);
    assert.equal(accepted.status, "running", "with room, its first attempt began at once");
    assert.equal(r.headers.get("location"), `/calls/${accepted.id}`);
    assert.equal(r.headers.get("preference-applied"), "respond-async");
    const call = await ended(f, accepted.id);
    assert.equal(call.status, "succeeded");
    assert.equal(call.function, "t/n/f");
    assert.equal(call.result.status, 200);
    assert.equal(call.result.headers["content-type"], "application/json");
    assert.equal(call.result.headers["x-inferx-cold-start"], "1");
    assert.deepEqual(call.result.body, {
      worker: "w1",
      path: "/v1/completions",
      query: "",
      body: '{"prompt":"x"}',
    });
    assert.equal(call.attempts.length, 1);
    assert.equal(call.attempts[0].gateway, "gw-test");
    assert.equal(call.attempts[0].status, 200);
    for (const k of ["accepted_at", "started_at", "finished_at", "expires_at"]) {
      assert.ok(!Number.isNaN(Date.parse(call[k])), `${k} is a time`);
    }
    assert.ok(call.queue_ms >= 0 && call.run_ms >= 0);
    // The accept and the attempt are both in the request audit.
    const rows = f.audit.requests.filter((x) => x.call === accepted.id);
    assert.deepEqual(rows.map((x) => [x.status, x.attempt]), [[202, undefined], [200, 1]]);
    assert.equal(rows[1].path, "/funccall/t/n/f/v1/completions");
    const stored = JSON.parse((await f.meta.list("call")).items[0].value);
    assert.equal(stored.body, undefined, "an ended call keeps its result, not its request body");
    await f.close();
    await w.close();
  },
);

t(
  "a result declared JSON that is not UTF-8 comes back as its bytes, small or read off the loop",
  async () => {
    const f = await gatewayFixture({ calls: QUICK, bodyLimit: 4096 });
    // Bad bytes in a string: a lenient decoder would read JSON with U+FFFD in their place.
    const small = new Uint8Array([...new TextEncoder().encode('{"s":"'), 0xff, 0xfe, 0x22, 0x7d]);
    const large = new Uint8Array(70_000 + 4);
    large.set(new TextEncoder().encode('["' + "a".repeat(70_000 - 2)));
    large.set([0xff, 0xfe, 0x22, 0x5d], 70_000);
    for (const bytes of [small, large]) {
      const w = scriptedWorker(() =>
        new Response(bytes, { headers: { "content-type": "application/json" } })
      );
      f.sched.endpoints.splice(0, f.sched.endpoints.length, w.endpoint);
      const r = await f.app.request("/funccall/t/n/f/x", {
        method: "POST",
        headers: ASYNC,
        body: "{}",
      });
      assert.equal(r.status, 202);
      const call = await ended(f, (await r.json()).id);
      assert.equal(call.status, "succeeded");
      assert.equal(call.result.body, undefined, `${bytes.length} bytes`);
      assert.deepEqual(new Uint8Array(Buffer.from(call.result.body_base64, "base64")), bytes);
      await w.close();
    }
    await f.close();
  },
);

t(
  "the OpenAI-style route accepts asynchronous calls too; other bodies come back as base64",
  async () => {
    const f = await gatewayFixture({ calls: QUICK, bodyLimit: 4096 });
    const w = scriptedWorker(() =>
      new Response("plain words", { headers: { "content-type": "text/plain" } })
    );
    f.sched.endpoints.push(w.endpoint);
    const r = await f.app.request("/v1/completions", {
      method: "POST",
      headers: ASYNC,
      body: JSON.stringify({ model: "t/n/f", prompt: "x" }),
    });
    assert.equal(r.status, 202);
    const call = await ended(f, (await r.json()).id);
    assert.equal(call.status, "succeeded");
    assert.equal(call.result.body, undefined);
    assert.equal(Buffer.from(call.result.body_base64, "base64").toString(), "plain words");
    await f.close();
    await w.close();
  },
);

t(
  "an asynchronous call's body over INFERX_CALL_MAX_BYTES is refused at once with 413",
  async () => {
    const f = await gatewayFixture({ calls: { ...QUICK, maxBytes: 64 }, bodyLimit: 1024 });
    const r = await f.app.request("/funccall/t/n/f/x", {
      method: "POST",
      headers: ASYNC,
      body: JSON.stringify({ prompt: "x".repeat(100) }),
    });
    assert.equal(r.status, 413);
    assert.match((await r.json()).error.message, /larger than 64 bytes.*INFERX_CALL_MAX_BYTES/);
    const stream = await f.app.request("/funccall/t/n/f/x", {
      method: "POST",
      headers: { prefer: "respond-async", "content-type": "application/octet-stream" },
      body: new Uint8Array(100),
    });
    assert.equal(stream.status, 413);
    await stream.body?.cancel();
    assert.equal((await f.meta.list("call")).items.length, 0, "nothing was stored");
    await f.close();
  },
);

t("a result over the bound fails the call and says why; it is never cut short", async () => {
  const f = await gatewayFixture({ calls: { ...QUICK, maxBytes: 100 } });
  const w = scriptedWorker(() => new Response("y".repeat(500)));
  f.sched.endpoints.push(w.endpoint);
  const call = await ended(f, await accept(f));
  assert.equal(call.status, "failed");
  assert.equal(call.result, undefined);
  assert.equal(call.error.code, "too_large");
  assert.match(call.error.message, /larger than 100 bytes \(INFERX_CALL_MAX_BYTES\)/);
  assert.equal(call.attempts.length, 1, "a too-large answer is not tried again");
  assert.equal(call.attempts[0].status, 200);
  const agent = f.cache.agent("t", "n", "f")!;
  await until("the slot to be free", () => Promise.resolve(agent.workers[0].inflight === 0));
  await f.close();
  await w.close();
});

t(
  "an attempt whose worker had it and failed it names that pod, in the record and the audit",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    // It reads the request and closes, answering nothing (killed mid-call, say).
    const w = tcpScriptedWorker(() => Promise.resolve());
    f.sched.endpoints.push(w.endpoint);
    const id = await accept(f);
    const call = await ended(f, id);
    assert.equal(call.status, "failed", JSON.stringify(call));
    assert.ok(call.attempts.length >= 1);
    for (const a of call.attempts) {
      assert.equal(a.error?.code, "worker_failed");
      assert.ok(a.pod && a.error.message.includes(a.pod), JSON.stringify(a));
    }
    const rows = f.audit.requests.filter((r) => r.call === id && r.attempt);
    assert.deepEqual(rows.map((r) => r.pod), call.attempts.map((a: Json) => a.pod));
    await f.close();
    await w.close();
  },
);

t(
  "a worker failure is tried again after a backoff; every attempt is in the record and the audit",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    const w = scriptedWorker((n) =>
      n < 3 ? new Response("busy", { status: 503 }) : Response.json({ ok: n })
    );
    f.sched.endpoints.push(w.endpoint);
    const id = await accept(f);
    const call = await ended(f, id);
    assert.equal(call.status, "succeeded", JSON.stringify(call));
    assert.deepEqual(call.result.body, { ok: 3 });
    assert.deepEqual(
      call.attempts.map((a: Json) => [a.n, a.status, a.error?.code]),
      [[1, 503, "worker_failed"], [2, 503, "worker_failed"], [3, 200, undefined]],
    );
    const gap = Date.parse(call.attempts[2].started_at) - Date.parse(call.attempts[1].ended_at);
    assert.ok(gap >= 30, `the third try waited its backoff (${gap} ms)`);
    assert.deepEqual(
      f.audit.requests.filter((r) => r.call === id && r.attempt).map((r) => [r.attempt, r.status]),
      [[1, 503], [2, 503], [3, 200]],
    );
    assert.equal(w.count, 3, "each attempt reached the worker once");
    await f.close();
    await w.close();
  },
);

t("when every attempt fails the call fails with the worker's last answer", async () => {
  const f = await gatewayFixture({ calls: { ...QUICK, maxAttempts: 2 } });
  const w = scriptedWorker(() => Response.json({ error: "no" }, { status: 503 }));
  f.sched.endpoints.push(w.endpoint);
  const call = await ended(f, await accept(f));
  assert.equal(call.status, "failed");
  assert.equal(call.attempts.length, 2);
  assert.equal(call.result.status, 503);
  assert.deepEqual(call.result.body, { error: "no" });
  await f.close();
  await w.close();
});

t("a worker's 4xx or 500 answer ends the call as failed at once, with that answer", async () => {
  // 400 too: every error status, the first of them included.
  for (const status of [422, 400]) {
    const f = await gatewayFixture({ calls: QUICK });
    const w = scriptedWorker(() => Response.json({ error: "bad prompt" }, { status }));
    f.sched.endpoints.push(w.endpoint);
    const call = await ended(f, await accept(f));
    assert.equal(call.status, "failed", String(status));
    assert.equal(call.attempts.length, 1);
    assert.deepEqual(call.result.body, { error: "bad prompt" });
    await f.close();
    await w.close();
  }
});

/** Makes `f`'s store fail every write of a call record: after it (`applied`) or instead of it. */
function failCallWrites(f: GatewayFixture, applied: boolean) {
  const meta = f.deps.meta;
  const create = meta.create.bind(meta);
  meta.create = async (input, options) => {
    if (input.type !== "call") return await create(input, options);
    // As etcd does when it resumes after the write's connection dropped: the write applied,
    // the writer told it failed.
    if (applied) await create(input, options);
    throw new InferxError("unavailable", "etcd did not answer");
  };
  return () => meta.create = create;
}

async function mayBeStored(f: GatewayFixture, body: unknown) {
  const r = await f.app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: ASYNC,
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 503);
  assert.equal(r.headers.get("retry-after"), null);
  assert.equal(r.headers.get("x-should-retry"), "false");
  const e = (await r.json()).error;
  assert.equal(e.details.may_be_stored, true);
  assert.match(e.message, /^Cannot tell whether call \S+ was stored: etcd did not answer\. A call/);
  assert.match(e.message, new RegExp(`GET /calls/${e.details.call_id} says whether it was`));
  return e.details.call_id as string;
}

t(
  "a call whose store failed after taking it is answered 503 with its id and no retry, and runs here, once",
  async () => {
    // One attempt: the one its acceptance began is the one that runs (not lost to its own claim).
    const f = await gatewayFixture({ calls: { ...QUICK, maxAttempts: 1 } });
    const w = scriptedWorker(() => Response.json({ ok: true }));
    f.sched.endpoints.push(w.endpoint);
    const restore = failCallWrites(f, true);
    const id = await mayBeStored(f, { prompt: "x" });
    restore();
    const call = await ended(f, id);
    assert.equal(call.status, "succeeded", JSON.stringify(call));
    assert.equal(call.attempts.length, 1);
    assert.equal(w.count, 1);
    await f.close();
    await w.close();
  },
);

t(
  "a call the store refused whole (a full disk) is a plain 503 to send again, not 'may be stored'",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    const meta = f.deps.meta;
    const create = meta.create.bind(meta);
    meta.create = async (input, options) => {
      if (input.type !== "call") return await create(input, options);
      throw new InferxError("unavailable", "Cannot write to the embedded store: full", {
        retryable: true,
        details: { not_written: true },
      });
    };
    const r = await f.app.request("/funccall/t/n/f/v1/completions", {
      method: "POST",
      headers: ASYNC,
      body: JSON.stringify({ prompt: "x" }),
    });
    assert.equal(r.status, 503);
    assert.equal(r.headers.get("retry-after"), "1");
    assert.notEqual(r.headers.get("x-should-retry"), "false");
    const e = (await r.json()).error;
    assert.equal(e.details.may_be_stored, undefined);
    assert.equal(e.details.not_written, true);
    meta.create = create;
    assert.deepEqual((await f.deps.meta.list("call")).items, []);
    await f.close();
  },
);

for (const size of [10, 100_000]) {
  t(
    `a worker's answer (${size} B) the store takes no writes for past the claim is stored once it does, not run again`,
    async () => {
      const f = await gatewayFixture({ calls: { ...QUICK, leaseMs: 600 } });
      let full = false;
      const w = scriptedWorker(() => {
        full = true; // the disk fills while the worker answers
        return new Response("x".repeat(size), { headers: { "content-type": "text/plain" } });
      });
      f.sched.endpoints.push(w.endpoint);
      const meta = f.deps.meta;
      const [update, create] = [meta.update.bind(meta), meta.create.bind(meta)];
      const refuse = () =>
        Promise.reject(
          new InferxError("unavailable", "Cannot write to the embedded store: full", {
            retryable: true,
            details: { not_written: true },
          }),
        );
      meta.update = (input, options) => full ? refuse() : update(input, options);
      meta.create = (input, options) =>
        full && input.type !== "call" ? refuse() : create(input, options);
      const id = await accept(f);
      await until("the worker's answer", () => Promise.resolve(w.count === 1), 5_000);
      // Past the claim's lease (600 ms): it lapses, the answer in hand.
      await new Promise((r) => setTimeout(r, 1500));
      full = false;
      const call = await ended(f, id);
      assert.equal(call.status, "succeeded", JSON.stringify(call));
      assert.equal(call.attempts.length, 1);
      assert.equal(atob(call.result.body_base64), "x".repeat(size));
      assert.equal(w.count, 1, "run once");
      await f.close();
      await w.close();
    },
  );
}

t("the body of a call its store never took goes a call lease later", async () => {
  const f = await gatewayFixture({ calls: QUICK, bodyLimit: 64 * 1024 });
  const restore = failCallWrites(f, false);
  const id = await mayBeStored(f, { prompt: "x".repeat(8_000) });
  restore();
  assert.equal((await get(f, id)).status, 404);
  const bodies = async () => (await f.deps.meta.list("callbody")).items.length;
  assert.equal(await bodies(), 1, "kept while it may yet be stored");
  await until("the body gone", async () => await bodies() === 0, 10_000);
  await f.close();
});

t(
  "a call its tenant's replica quota keeps from a worker for now is tried again, not failed",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    const w = scriptedWorker(() => Response.json({ ok: true }));
    f.sched.failWith = new InferxError(
      "quota_exceeded",
      "Cannot lease worker for t/n/f: tenant t is at its max_replica quota (1 running)",
    );
    const id = await accept(f);
    await until("its first attempt failed", async () => {
      const c = (await get(f, id)).body;
      return c.attempts.length === 1 && c.attempts[0].ended_at !== undefined;
    });
    f.sched.failWith = undefined;
    f.sched.endpoints.push(w.endpoint);
    const call = await ended(f, id);
    assert.equal(call.status, "succeeded", JSON.stringify(call));
    assert.equal(call.attempts[0].error.code, "quota_exceeded");
    assert.equal(call.attempts.length, 2);
    await f.close();
    await w.close();
  },
);

t("DELETE /calls/{id} cancels a queued call: it never reaches a worker", async () => {
  const f = await gatewayFixture({ calls: QUICK, policy: { parallel: 1, max_replica: 1 } });
  // Holds the first call until the gateway gives up on it.
  const w = scriptedWorker((_n, req) =>
    new Promise((resolve) => req.signal.addEventListener("abort", () => resolve(new Response())))
  );
  f.sched.endpoints.push(w.endpoint);
  const first = await accept(f);
  await until("the first call to reach the worker", () => Promise.resolve(w.count === 1));
  const second = await accept(f);
  assert.equal((await get(f, second)).body.status, "queued", "no room for it yet");
  assert.equal((await get(f, second)).body.attempts.length, 0);
  const r = await f.app.request(`/calls/${second}`, { method: "DELETE" });
  assert.equal(r.status, 200);
  const cancelled = await r.json();
  assert.equal(cancelled.status, "cancelled");
  assert.equal(cancelled.error.code, "cancelled");
  const again = await f.app.request(`/calls/${second}`, { method: "DELETE" });
  assert.equal(again.status, 409);
  assert.match((await again.json()).error.message, /already ended \(cancelled\)/);
  await (await f.app.request(`/calls/${first}`, { method: "DELETE" })).body?.cancel();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(w.count, 1, "the cancelled queued call never ran");
  assert.equal((await get(f, second)).body.attempts.length, 0);
  await f.close();
  await w.close();
});

t(
  "DELETE /calls/{id} aborts a running call: the worker sees the abort and the slot is freed",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    const aborted = Promise.withResolvers<void>();
    const w = scriptedWorker((_n, req) =>
      new Promise<Response>((resolve) =>
        req.signal.addEventListener("abort", () => {
          aborted.resolve();
          resolve(new Response("too late"));
        })
      )
    );
    f.sched.endpoints.push(w.endpoint);
    const id = await accept(f);
    const agent = () => f.cache.agent("t", "n", "f")!;
    await until("the call to reach the worker", () => w.count === 1);
    assert.equal(agent().workers[0].inflight, 1);
    assert.equal((await get(f, id)).body.status, "running");
    const r = await f.app.request(`/calls/${id}`, { method: "DELETE" });
    assert.equal((await r.json()).status, "cancelled");
    await aborted.promise;
    await until("the slot to be free", () => Promise.resolve(agent().workers[0].inflight === 0));
    await until("the attempt to be closed", async () => {
      const a = (await get(f, id)).body.attempts[0];
      return a.ended_at !== undefined && a.error?.code === "cancelled";
    });
    const row = f.audit.requests.find((x) => x.call === id && x.attempt === 1);
    assert.deepEqual([row?.status, row?.error], [499, "cancelled"]);
    assert.equal(JSON.parse((await f.meta.list("call")).items[0].value).body, undefined);
    await f.close();
    await w.close();
  },
);

t("call ids are checked: malformed 400, unknown 404", async () => {
  const f = await gatewayFixture({ calls: QUICK });
  const bad = await get(f, "nope");
  assert.equal(bad.status, 400);
  assert.match(bad.body.error.message, /TENANT:NAMESPACE:KEY/);
  const missing = await get(f, "t:n:c000000000000000000000000");
  assert.equal(missing.status, 404);
  const del = await f.app.request("/calls/t:n:c000000000000000000000000", { method: "DELETE" });
  assert.equal(del.status, 404);
  await del.body?.cancel();
  await f.close();
});

const ADMIN = { authorization: "Bearer admin-key-0123456789" };

async function newKey(f: GatewayFixture, scope: string, tenant: string, namespace?: string) {
  const r = await f.app.request("/apikeys", {
    method: "POST",
    headers: { "content-type": "application/json", ...ADMIN },
    body: JSON.stringify({ scope, tenant, namespace }),
  });
  assert.equal(r.status, 201);
  return { authorization: `Bearer ${(await r.json()).key}` };
}

t(
  "calls are visible to credentials that reach their namespace; a caller lists its own",
  async () => {
    const f = await gatewayFixture({ calls: QUICK, adminKey: "admin-key-0123456789" });
    await f.meta.create({
      type: "namespace",
      tenant: "t",
      namespace: "system",
      name: "m",
      object: {},
    });
    const w = fakeWorker("w1");
    f.sched.endpoints.push(w.endpoint);
    const alice = await newKey(f, "inference", "t", "n");
    const bob = await newKey(f, "inference", "t", "n");
    const reader = await newKey(f, "read", "t");
    const stranger = await newKey(f, "inference", "t", "m");
    const id = await accept(f, { prompt: "a" }, alice);
    await ended(f, id, ADMIN);
    assert.equal((await get(f, id, bob)).status, 200, "same namespace: may read it by id");
    assert.equal((await get(f, id, stranger)).status, 403);
    assert.equal((await get(f, id)).status, 401, "anonymous");
    const list = async (h: Record<string, string>, q = "") => {
      const r = await f.app.request(`/calls${q}`, { headers: h });
      return { status: r.status, body: (await r.json()) as Json };
    };
    assert.deepEqual((await list(alice)).body.items.map((c: Json) => c.id), [id]);
    assert.deepEqual((await list(bob)).body.items, [], "another caller's call is not listed");
    assert.deepEqual((await list(reader)).body.items.map((c: Json) => c.id), [id]);
    assert.deepEqual((await list(ADMIN, "?func=t/n/f&status=succeeded")).body.count, 1);
    assert.deepEqual((await list(ADMIN, "?status=queued")).body.count, 0);
    assert.equal((await list(stranger, "?func=t/n/f")).status, 403);
    const anon = await list({});
    assert.equal(anon.status, 401);
    // Not "to read cluster-wide": a key that reads one namespace lists its calls.
    assert.match(anon.body.error.message, /^Credentials required to list calls: /);
    assert.equal((await list(ADMIN, "?status=done")).status, 400);
    assert.equal((await list(ADMIN, "?limit=0")).status, 400);
    const del = await f.app.request(`/calls/${id}`, { method: "DELETE", headers: stranger });
    assert.equal(del.status, 403);
    await del.body?.cancel();
    await f.close();
    await w.close();
  },
);

/** A gateway with auth on that may call back receivers on loopback, and a worker. */
async function callbackFixture() {
  const f = await gatewayFixture({
    calls: { ...QUICK, callbackAllow: [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }] },
    adminKey: "admin-key-0123456789",
  });
  const w = fakeWorker("w1");
  f.sched.endpoints.push(w.endpoint);
  return { f, w };
}

t(
  "a callback POSTs the ended call to an allowed receiver, signed with the tenant's secret",
  async () => {
    const { f, w } = await callbackFixture();
    const secret = (await (await f.app.request("/calls/callback-secret/t", { headers: ADMIN }))
      .json()).secret;
    assert.match(secret, /^[0-9a-f]{64}$/);
    const got = Promise.withResolvers<{ body: string; headers: Headers }>();
    let hits = 0;
    const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      const body = await req.text();
      // The first delivery is turned away: the gateway tries again.
      if (++hits === 1) return new Response("later", { status: 500 });
      got.resolve({ body, headers: req.headers });
      return new Response("ok");
    });
    const url = `http://127.0.0.1:${receiver.addr.port}/hook?x=1`;
    const id = await accept(f, { prompt: "x" }, { ...ADMIN, "x-inferx-callback-url": url });
    const { body, headers } = await got.promise;
    assert.equal(headers.get("x-inferx-signature"), signature(secret, body));
    assert.equal(headers.get("x-inferx-call"), id);
    const sent = JSON.parse(body);
    assert.equal(sent.id, id);
    assert.equal(sent.status, "succeeded");
    assert.equal(sent.result.body.worker, "w1");
    await until("the delivery to be recorded", async () => {
      const c = (await get(f, id, ADMIN)).body;
      return c.callback.state === "delivered" && c.callback.attempts === 2;
    });
    // The gateway's own fields do not reach the worker, nor the caller's credentials.
    const fields = [...w.heard[0].keys()];
    assert.ok(fields.includes("content-type"), fields.join());
    assert.ok(
      !fields.includes("prefer") && !fields.includes("x-inferx-callback-url"),
      fields.join(),
    );
    assert.ok(!fields.includes("authorization"), "nor the caller's credentials");
    // A rotated secret signs the next callbacks; only a tenant administrator reads it.
    const rotated = await f.app.request("/calls/callback-secret/t", {
      method: "POST",
      headers: ADMIN,
    });
    assert.notEqual((await rotated.json()).secret, secret);
    const user = await newKey(f, "inference", "t", "n");
    const denied = await f.app.request("/calls/callback-secret/t", { headers: user });
    assert.equal(denied.status, 403);
    await denied.body?.cancel();
    // No secret is made for a tenant that does not exist.
    for (const method of ["GET", "POST"]) {
      for (const name of ["ghost", "Not_A-Name"]) {
        const ghost = await f.app.request(`/calls/callback-secret/${name}`, {
          method,
          headers: ADMIN,
        });
        assert.equal(ghost.status, 404, `${method} ${name}`);
        assert.equal((await ghost.json()).error.code, "not_found");
      }
    }
    assert.deepEqual(
      (await f.meta.list("callsecret")).items.map((r) => r.name),
      ["t"],
      "the secret of t only",
    );
    await f.close();
    await w.close();
    await receiver.shutdown();
  },
);

t(
  "a receiver that answers a redirect has not taken the callback: tried as often as allowed, no more",
  async () => {
    const f = await gatewayFixture({
      calls: {
        ...QUICK,
        deliveryTries: 3,
        callbackAllow: [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }],
      },
      adminKey: "admin-key-0123456789",
    });
    const w = fakeWorker("w1");
    f.sched.endpoints.push(w.endpoint);
    let posts = 0;
    // Redirects are not followed: the receiver never had the call.
    const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      await req.text();
      posts++;
      return new Response(null, { status: 302, headers: { location: "https://elsewhere/x" } });
    });
    try {
      const url = `http://127.0.0.1:${receiver.addr.port}/hook`;
      const id = await accept(f, { prompt: "x" }, { ...ADMIN, "x-inferx-callback-url": url });
      let call: Json;
      await until("the delivery given up", async () => {
        call = (await get(f, id, ADMIN)).body;
        return call.callback?.state === "failed";
      });
      assert.equal(call.callback.attempts, 3);
      assert.equal(call.callback.last_error, "the receiver answered 302");
      await new Promise((r) => setTimeout(r, 200)); // a fourth try would have come by now
      assert.equal(posts, 3);
    } finally {
      await f.close();
      await w.close();
      await receiver.shutdown();
    }
  },
);

t("call and secret reads refuse parameters they do not take, after credentials", async () => {
  const { f, w } = await callbackFixture();
  const id = await accept(f, { prompt: "x" }, ADMIN);
  for (const path of [`/calls/${id}?wait=1`, "/calls/callback-secret/t?rotate=1"]) {
    const anonymous = await f.app.request(path);
    assert.equal(anonymous.status, 401, path);
    assert.equal((await anonymous.json()).error.code, "unauthenticated");
    const r = await f.app.request(path, { headers: ADMIN });
    assert.equal(r.status, 400, path);
    assert.match((await r.json()).error.message, /unknown parameter "[a-z]+" \(it takes none\)$/);
  }
  const secret = await f.app.request("/calls/callback-secret/t");
  assert.match(
    (await secret.json()).error.message,
    /^Credentials required to manage a tenant's callback secret: /,
  );
  await f.close();
  await w.close();
});

t(
  "callback URLs are checked at accept: only http(s), and no loopback or private address unless allowed",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    const cases: [string, RegExp][] = [
      ["ftp://example.com/x", /only http and https/],
      ["not-a-url", /not an absolute URL/],
      ["http://example.com/a b", /whitespace in a URL/],
      // The header twice: joined with ", " (one call, one callback).
      ["https://example.com/one, https://example.com/two", /sent more than once/],
      [
        "http://127.0.0.1:9/x",
        /127\.0\.0\.1, which is not a public address.*INFERX_CALLBACK_ALLOW/,
      ],
      ["http://[::1]:9/x", /::1/],
      ["http://169.254.169.254/latest", /169\.254\.169\.254/],
      ["http://10.1.2.3/x", /10\.1\.2\.3/],
      ["http://localhost:9/x", /not a public address/],
      ["http://user:pw@example.com/x", /credentials in the URL/],
      ["http://:pw@example.com/x", /credentials in the URL/],
      ["http://user@example.com/x", /credentials in the URL/],
    ];
    for (const [url, want] of cases) {
      const r = await f.app.request("/funccall/t/n/f/x", {
        method: "POST",
        headers: { ...ASYNC, "x-inferx-callback-url": url },
        body: "{}",
      });
      const body = await r.json();
      assert.equal(r.status, 400, url);
      assert.match(body.error.message, want, url);
    }
    // Without Prefer: respond-async it would come to nothing: refused.
    const sync = await f.app.request("/funccall/t/n/f/x", {
      method: "POST",
      headers: { "content-type": "application/json", "x-inferx-callback-url": "https://e.test/x" },
      body: "{}",
    });
    assert.equal(sync.status, 400);
    assert.match((await sync.json()).error.message, /is for asynchronous calls: add Prefer/);
    const twice = new Headers(ASYNC);
    twice.append("x-inferx-callback-url", "https://example.com/one");
    twice.append("x-inferx-callback-url", "https://example.com/two");
    const r = await f.app.request("/funccall/t/n/f/x", {
      method: "POST",
      headers: twice,
      body: "{}",
    });
    assert.equal(r.status, 400);
    assert.match((await r.json()).error.message, /x-inferx-callback-url sent more than once/);
    assert.equal((await f.meta.list("call")).items.length, 0, "nothing was accepted");
    await f.close();
  },
);

t("a call's callback being retried does not hold the function's run slot", async () => {
  const f = await gatewayFixture({
    policy: { parallel: 1, max_replica: 1 },
    calls: {
      backoffMs: 10_000,
      callbackAllow: [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }],
    },
  });
  const w = fakeWorker("w1");
  f.sched.endpoints.push(w.endpoint);
  const receiver = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => new Response("down", { status: 500 }),
  );
  try {
    const post = async (headers: Record<string, string>) => {
      const r = await f.app.request("/funccall/t/n/f/v1/completions", {
        method: "POST",
        headers: { prefer: "respond-async", "content-type": "application/json", ...headers },
        body: "{}",
      });
      return (await r.json()).id as string;
    };
    const get = async (id: string) => await (await f.app.request(`/calls/${id}`)).json();
    const cb = `http://127.0.0.1:${receiver.addr.port}/cb`;
    const first = await post({ "x-inferx-callback-url": cb });
    await until("the first call ends", async () => (await get(first)).status === "succeeded");
    // Its callback waits 10 s for its next try; before, the second call waited with it.
    const second = await post({});
    await until("the second call ends", async () => (await get(second)).status === "succeeded");
    assert.equal((await get(first)).callback.state, "pending");
  } finally {
    await f.close();
    await w.close();
    await receiver.shutdown();
  }
});

t(
  "a callback tried again after its tenant's secret was replaced is signed with the new one",
  async () => {
    const { f, w } = await callbackFixture();
    const secretOf = async (method = "GET") =>
      (await (await f.app.request("/calls/callback-secret/t", { method, headers: ADMIN })).json())
        .secret as string;
    let secret = await secretOf();
    const signed: boolean[] = [];
    const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      const body = await req.text();
      signed.push(req.headers.get("x-inferx-signature") === signature(secret, body));
      if (signed.length > 1) return new Response("ok");
      secret = await secretOf("POST"); // replaced while the first try is turned away
      return new Response("later", { status: 503 });
    });
    try {
      const url = `http://127.0.0.1:${receiver.addr.port}/hook`;
      await accept(f, { prompt: "x" }, { ...ADMIN, "x-inferx-callback-url": url });
      await until("a second try", () => signed.length >= 2);
      // Before, the secret was read once before the first try.
      assert.deepEqual(signed, [true, true]);
    } finally {
      await f.close();
      await w.close();
      await receiver.shutdown();
    }
  },
);

t(
  "an ended call past its retention is gone, also when removing its record failed once",
  async () => {
    let now = Date.now();
    const f = await gatewayFixture({ calls: { leaseMs: 500, ttlMs: 1000, now: () => now } });
    try {
      const rec = testCall("t", "n", {
        status: "succeeded",
        finishedAt: now,
        expiresAt: now + 1000,
      });
      delete rec.body;
      await f.meta.create({ ...refOf(rec), object: rec });
      const remove = f.meta.delete.bind(f.meta);
      let fails = 1;
      f.meta.delete = ((...a: Parameters<typeof remove>) =>
        fails-- > 0
          ? Promise.reject(new Error("store unavailable"))
          : remove(...a)) as typeof remove;
      now += 2000;
      // Past its retention it is not answered, whether or not its record is still there.
      assert.equal((await f.app.request(`/calls/${rec.id}`)).status, 404);
      // Before, a removal that failed once was never tried again: kept until a restart.
      await until("its record to be removed", async () =>
        !(await f.meta.get(refOf(rec))));
    } finally {
      await f.close();
    }
  },
);

t(
  "cancelling a call whose gateway went away closes its attempt and drops the dead claim",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    try {
      const now = Date.now();
      const rec = testCall("t", "n", {
        status: "running",
        owner: "gw-gone",
        leaseUntil: now - 1000, // its gateway stopped renewing
        startedAt: now - 5000,
        attempts: [{ n: 1, gateway: "gw-gone", startedAt: now - 5000 }],
      });
      await f.meta.create({ ...refOf(rec), object: rec });
      const r = await f.app.request(`/calls/${rec.id}`, { method: "DELETE" });
      assert.equal(r.status, 200);
      const stored = JSON.parse((await f.meta.get(refOf(rec)))!.value);
      // Before, it kept owner gw-gone and an attempt that never ended, until it expired.
      assert.equal(stored.status, "cancelled");
      assert.equal(stored.owner, undefined);
      assert.equal(typeof stored.attempts[0].endedAt, "number");
      assert.equal(stored.attempts[0].error.code, "cancelled");
    } finally {
      await f.close();
    }
  },
);

t(
  "a running call's renewals rewrite a small record: its large bodies are written once, apart, and go with it",
  async () => {
    const MiB = 1024 * 1024;
    const f = await gatewayFixture({
      calls: { backoffMs: 20, leaseMs: 300, maxBytes: MiB },
      bodyLimit: MiB,
    });
    const answer = JSON.stringify({ text: "y".repeat(200_000) });
    let seen = 0;
    const w = scriptedWorker(async (_n, req) => {
      seen = (await req.text()).length;
      await new Promise((r) => setTimeout(r, 1500)); // several renewals
      return new Response(answer, { headers: { "content-type": "application/json" } });
    });
    f.sched.endpoints.push(w.endpoint);
    const writes = { call: [] as number[], callbody: [] as string[] };
    const watches = (["call", "callbody"] as const).map((type) =>
      f.meta.watch(type, {
        onEvent(ev) {
          if (ev.type !== "put") return;
          if (type === "call") writes.call.push(ev.record.value.length);
          else writes.callbody.push(ev.record.name);
        },
      })
    );
    const prompt = "x".repeat(300_000);
    const id = await accept(f, { prompt });
    const call = await ended(f, id);
    assert.equal(call.status, "succeeded");
    assert.equal(seen, JSON.stringify({ prompt }).length, "the worker got the whole body");
    assert.equal(call.result.body.text.length, 200_000, "the answer is shown whole");
    assert.ok(writes.call.length >= 4, `renewed while it ran: ${writes.call.length} writes`);
    assert.ok(
      Math.max(...writes.call) < 8192,
      `each record write is small: ${writes.call.join(", ")} bytes`,
    );
    const key = id.split(":")[2];
    assert.deepEqual(writes.callbody, [key, `${key}.result`], "each body written once");
    const ref = refOf({ tenant: "t", namespace: "n", id });
    const body = (part: string) => f.meta.get({ ...ref, type: "callbody", name: part });
    await until("the request body to go once the call ended", async () => !await body(key));
    assert.ok(await body(`${key}.result`), "the answer's body stays with its record");
    await f.meta.delete(ref);
    assert.equal(await body(`${key}.result`), undefined, "deleted with its record");
    // A small call's bodies ride in its record: no more writes than that.
    writes.callbody.length = 0;
    const small = await ended(f, await accept(f, { prompt: "x" }));
    assert.equal(small.status, "succeeded");
    assert.equal(small.result.body.text.length, 200_000);
    assert.deepEqual(
      writes.callbody,
      [`${small.id.split(":")[2]}.result`],
      "only the large answer",
    );
    for (const x of watches) x.cancel();
    await f.close();
    await w.close();
  },
);

t(
  "a call's JSON answer is shown as the worker wrote it, a large one checked off the event loop; one that is not JSON as base64",
  async () => {
    const MiB = 1024 * 1024;
    const f = await gatewayFixture({
      calls: { ...QUICK, callbackAllow: [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }] },
      bodyLimit: MiB,
    });
    let offLoop = 0;
    const check = f.deps.jsonProbe.check.bind(f.deps.jsonProbe);
    f.deps.jsonProbe.check = (bytes) => (offLoop++, check(bytes));
    // Laid out as the worker wrote it (indented, a string past U+FFFF): shown as such.
    const pretty = JSON.stringify({ text: "y".repeat(100_000), mood: "\u{1F600}" }, null, 2);
    const answers = [
      pretty,
      '{"text": "' + "y".repeat(100_000), // declared JSON, cut short
      `[${"[],".repeat(150_000)}[]]`, // more than the gateway reads of a call's body: read there
      '{"n": 1.0, "id": 12345678901234567890}', // small: checked here; its numbers as written
    ];
    const w = scriptedWorker((n) =>
      new Response(answers[(n - 1) % answers.length], {
        headers: { "content-type": "application/json" },
      })
    );
    f.sched.endpoints.push(w.endpoint);
    const shown: string[] = [];
    for (const _ of answers) {
      const id = (await ended(f, await accept(f))).id;
      offLoop = 0;
      const r = await f.app.request(`/calls/${id}`);
      assert.equal(r.headers.get("content-type"), "application/json");
      shown.push(await r.text());
      assert.equal(offLoop, shown.length < 4 ? 1 : 0, `answer ${shown.length}`);
    }
    const [whole, cut, many, small] = shown.map((x) => JSON.parse(x).result);
    assert.deepEqual(whole.body, JSON.parse(pretty));
    assert.ok(shown[0].includes(pretty), "its own text, not written again");
    assert.equal(Buffer.from(cut.body_base64, "base64").toString(), answers[1]);
    assert.equal(cut.body, undefined);
    assert.equal(many.body.length, 150_001);
    assert.ok(shown[3].includes(answers[3]), "1.0 and the large integer as the worker wrote them");
    assert.equal(small.body.n, 1);
    // A callback carries the same view, checked there too.
    const got = Promise.withResolvers<string>();
    const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      got.resolve(await req.text());
      return new Response("ok");
    });
    offLoop = 0;
    const url = `http://127.0.0.1:${receiver.addr.port}/hook`;
    await accept(f, { prompt: "x" }, { "x-inferx-callback-url": url }); // the fifth: `pretty`
    const sent = await got.promise;
    assert.ok(sent.includes(pretty), "the callback's body holds the answer's own text");
    assert.deepEqual(JSON.parse(sent).result.body, JSON.parse(pretty));
    assert.equal(offLoop, 1);
    // That thread stopped (the gateway stopping): the answer is checked here, and shown.
    f.deps.jsonProbe.check = () => Promise.reject(new Error("stopped"));
    const again = JSON.parse(await (await f.app.request(`/calls/${JSON.parse(sent).id}`)).text());
    assert.deepEqual(again.result.body, JSON.parse(pretty));
    await receiver.shutdown();
    await f.close();
    await w.close();
  },
);

t("GET /calls lists from what the queue keeps, reading only the page's records", async () => {
  const f = await gatewayFixture({ calls: QUICK });
  const w = fakeWorker("w1");
  f.sched.endpoints.push(w.endpoint);
  try {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push(await accept(f, { prompt: `${i}` }));
      // Each in a millisecond of its own: a page never splits one (two in one came whole).
      await new Promise((r) => setTimeout(r, 2));
    }
    // Each listed at once, before any watch brought it; newest first.
    const first = await (await f.app.request("/calls?limit=2")).json();
    assert.equal(first.count, 5);
    assert.deepEqual(first.items.map((c: Json) => c.id), ids.slice(3).reverse());
    for (const id of ids) await ended(f, id);
    const meta = f.meta as { list: (...a: unknown[]) => Promise<unknown> };
    const list = meta.list.bind(meta);
    let listed = 0;
    meta.list = (...a: unknown[]) => (a[0] === "call" && listed++, list(...a));
    const r = await (await f.app.request("/calls?func=t/n/f&status=succeeded&limit=3")).json();
    assert.equal(r.count, 5);
    assert.deepEqual(r.items.map((c: Json) => [c.id, c.status]), [
      [ids[4], "succeeded"],
      [ids[3], "succeeded"],
      [ids[2], "succeeded"],
    ]);
    assert.equal(listed, 0, "no record listed");
    assert.equal((await (await f.app.request("/calls?status=queued")).json()).count, 0);
    // Page after page from `next_until`: every call once, newest first, none split.
    const paged: string[] = [];
    let until: number | undefined;
    for (let pages = 0; pages < 10; pages++) {
      const q = until === undefined ? "" : `&until=${until}`;
      const page = await (await f.app.request(`/calls?limit=2${q}`)).json();
      paged.push(...page.items.map((c: Json) => c.id));
      assert.ok(page.items.length >= Math.min(2, page.count), JSON.stringify(page));
      until = page.next_until;
      if (until === undefined) break;
    }
    assert.deepEqual(paged, [...ids].reverse());
    assert.equal((await f.app.request("/calls?until=soon")).status, 400);
    // A misspelt filter is refused, not passed over to list every call.
    const typo = await f.app.request("/calls?fnc=t/n/f");
    assert.equal(typo.status, 400);
    assert.match((await typo.json()).error.message, /unknown parameter "fnc" \(it takes func/);
  } finally {
    await f.close();
    await w.close();
  }
});

t(
  "GET /calls?status= shows no call that has moved on since the gateway's index heard of it",
  async () => {
    const f = await gatewayFixture({ calls: QUICK });
    try {
      // No worker: the call waits (queued, or running its first attempt).
      const id = await accept(f, { prompt: "a" });
      const now = (await get(f, id)).body.status;
      assert.ok(now === "queued" || now === "running", now);
      const listed = await (await f.app.request(`/calls?status=${now}`)).json();
      assert.deepEqual(listed.items.map((c: Json) => c.id), [id]);
      // The index no longer hears of changes (a watch behind a burst, say); the record moves on.
      await f.deps.calls.stop(0);
      const ref = refOf({ tenant: "t", namespace: "n", id });
      const rec = (await f.meta.get(ref))!;
      await f.meta.update({
        ...ref,
        object: { ...JSON.parse(rec.value), status: "cancelled", finishedAt: Date.now() },
        revision: rec.revision,
      });
      const stale = await (await f.app.request(`/calls?status=${now}`)).json();
      assert.deepEqual(stale.items, [], `the record as it is now is no longer ${now}`);
    } finally {
      await f.close();
    }
  },
);

Deno.test("Newest keeps the newest `limit` calls as a sort of them all would, ties by acceptance", () => {
  let x = 7;
  const r = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 4294967296;
  for (let trial = 0; trial < 50; trial++) {
    const all = Array.from({ length: Math.floor(r() * 300) }, (_, i) =>
      ({
        ref: { type: "call" as const, tenant: "t", namespace: "n", name: `k${i}` },
        acceptedAt: Math.floor(r() * 40), // many in one millisecond
        seq: i + 1,
      }) as unknown as ListedCall);
    for (const limit of [0, 1, 3, 100, 1000]) {
      const n = new Newest(limit);
      for (const e of all) n.add(e);
      const want = [...all].sort((a, b) => b.acceptedAt - a.acceptedAt || b.seq - a.seq)
        .slice(0, limit);
      assert.deepEqual(n.sorted().map((e) => e.seq), want.map((e) => e.seq), `${trial}/${limit}`);
    }
  }
  // A call seen twice (moved from open to ended while the list ran): once in the page.
  const e = {
    ref: { type: "call", tenant: "t", namespace: "n", name: "k" },
    acceptedAt: 5,
    seq: 1,
  } as unknown as ListedCall;
  const n = new Newest(10);
  n.add(e);
  n.add({ ...e, status: "succeeded" } as ListedCall);
  assert.equal(n.sorted().length, 1);
});

t(
  "a tenant's asynchronous calls are bounded: those not ended by count and by their requests' bytes, those kept ended by count",
  async () => {
    // No worker comes: every call accepted waits.
    const f = await gatewayFixture({ calls: { ...QUICK, openMax: 2 }, bodyLimit: 1 << 20 });
    f.sched.hang = true;
    const refused = async (body: unknown, limit: string, quota: number, headers = {}) => {
      const r = await f.app.request("/funccall/t/n/f/v1/completions", {
        method: "POST",
        headers: { ...ASYNC, ...headers },
        body: JSON.stringify(body),
      });
      assert.equal(r.status, 429);
      // It clears as calls end: worth trying again a little later, on its own.
      assert.equal(r.headers.get("retry-after"), "5");
      assert.equal(r.headers.get("x-should-retry"), null);
      const { error } = await r.json();
      assert.equal(error.code, "quota_exceeded");
      assert.deepEqual(error.details, { limit, quota, retry_after_s: 5 });
      return error.message as string;
    };
    const setQuota = async (quota: Record<string, number>) => {
      const ref = { type: "tenant" as const, tenant: "system", namespace: "system", name: "t" };
      const tenant = await f.meta.get(ref);
      await f.meta.update({ ...ref, object: { spec: { quota } }, revision: tenant!.revision });
      await until(
        "the gateway reads the quota",
        () => Promise.resolve(JSON.stringify(f.cache.tenantQuota("t")) === JSON.stringify(quota)),
      );
    };
    try {
      const first = await accept(f);
      await accept(f);
      // Before, a caller could store calls without end (1 MB each, for a day).
      assert.match(
        await refused({ prompt: "x" }, "max_open_calls", 2),
        /Tenant t has 2 asynchronous calls not ended, its limit 2 \(quota max_open_calls\)/,
      );
      // One ends: room for one more.
      await (await f.app.request(`/calls/${first}`, { method: "DELETE" })).body?.cancel();
      await accept(f);
      // A tenant's own quota is read over the gateway's default, by count and by bytes, which
      // count the request's headers too (60 KB of them were let past a 50 KB limit).
      await setQuota({ max_open_calls: 10, max_open_call_mb: 0.05 });
      await accept(f, { prompt: "x".repeat(20_000) });
      assert.match(
        await refused({ prompt: "x".repeat(40_000) }, "max_open_call_mb", 0.05),
        /Tenant t has asynchronous calls not ended holding 20 KB, and this one 40 KB more, its limit 52 KB \(quota max_open_call_mb\)/,
      );
      assert.match(
        await refused({ prompt: "x" }, "max_open_call_mb", 0.05, { "x-pad": "y".repeat(40_000) }),
        /and this one 40 KB more/,
      );
      // Ended calls are kept until they expire, counted too: a call cancelled at once included.
      await setQuota({ max_open_calls: 10, max_kept_calls: 1 });
      const kept = (await (await f.app.request("/calls")).json()).items.filter((
        c: { status: string },
      ) => c.status === "cancelled").length;
      assert.equal(kept, 1, "the first, cancelled");
      assert.match(
        await refused({ prompt: "x" }, "max_kept_calls", 1),
        /Tenant t has 1 ended asynchronous calls kept and \d+ not ended, its limit 1 \(quota max_kept_calls\): try again once some of its calls ended and expired/,
      );
      // Calls not ended will be kept once they end: counted now, so the kept never pass the
      // bound (room for one more with the bound at kept + open + 1, and not for two).
      const open = (await (await f.app.request("/calls")).json()).items.filter((
        c: { status: string },
      ) => c.status === "queued" || c.status === "running").length;
      assert.ok(open > 0);
      await setQuota({ max_open_calls: 100, max_kept_calls: 1 + open + 1 });
      await accept(f);
      assert.match(
        await refused({ prompt: "x" }, "max_kept_calls", 1 + open + 1),
        new RegExp(`has 1 ended asynchronous calls kept and ${open + 1} not ended`),
      );
    } finally {
      await f.close();
    }
  },
);

t(
  "a call deleted before its accept's store write answered is not counted against its tenant",
  async () => {
    const f = await gatewayFixture({ calls: { ...QUICK, openMax: 2 } });
    f.sched.hang = true;
    const create = f.meta.create.bind(f.meta);
    let race = true;
    // Its namespace deleted between the write and its answer (over gRPC the watch is another
    // stream than the answer's): the watch tells of the deletion first.
    f.meta.create = async (input, options) => {
      const made = await create(input, options);
      if (input.type === "call" && race) {
        await f.meta.delete({
          type: "call",
          tenant: input.tenant,
          namespace: input.namespace,
          name: input.name,
        });
        await new Promise((r) => setTimeout(r, 100));
      }
      return made;
    };
    try {
      await accept(f);
      await accept(f);
      race = false;
      assert.deepEqual((await f.meta.list("call", "t", "n")).items, []);
      // Before, the two stayed counted for good: the next was refused at max_open_calls.
      await accept(f);
    } finally {
      await f.close();
    }
  },
);

t(
  "a namespace deleted (and made again) under running calls ends them quietly: no answer stays, no error is logged",
  async () => {
    const lines = await logLines();
    const f = await gatewayFixture({ calls: QUICK, bodyLimit: 64 * 1024 });
    const w = fakeWorker("w1", { delayMs: 300 });
    f.sched.endpoints.push(w.endpoint);
    try {
      // Answers past what a record holds: stored apart, in the namespace being deleted.
      const ids = [
        await accept(f, { prompt: "x".repeat(6000) }),
        await accept(f, { prompt: "short" }),
      ];
      await until("the calls to run", async () => {
        for (const id of ids) if ((await get(f, id)).body.status !== "running") return false;
        return true;
      });
      await f.meta.delete({ type: "function", tenant: "t", namespace: "n", name: "f" });
      await f.meta.delete({ type: "namespace", tenant: "t", namespace: "system", name: "n" });
      // Made again at once, for someone else: the answers do not land in it.
      await f.meta.create({
        type: "namespace",
        tenant: "t",
        namespace: "system",
        name: "n",
        object: {},
      });
      await new Promise((r) => setTimeout(r, 800));
      for (const id of ids) assert.equal((await get(f, id)).status, 404, id);
      assert.deepEqual((await f.meta.list("call")).items, []);
      assert.deepEqual((await f.meta.list("callbody")).items, [], "no answer stored after it");
      const failed = lines.filter((l) => /failed in the gateway/.test(l));
      assert.deepEqual(failed, []);
    } finally {
      await f.close();
      await w.close();
      await reset();
    }
  },
);
