import assert from "node:assert/strict";
import { InferxError } from "../../common/errors.ts";
import { until } from "../../common/testing.ts";
import { WORKER_OUTPUT } from "../../rpc/types.ts";
import {
  fakeWorker,
  type GatewayFixture,
  gatewayFixture,
  rawWorker,
  scriptedWorker,
} from "../testing.ts";

const call = (
  app: GatewayFixture["app"],
  body: unknown = { prompt: "x" },
  headers: Record<string, string> = {},
  signal?: AbortSignal,
) =>
  app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal,
  });

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

t("gateway proxies to a leased worker, marks the cold start, then reuses it warm", async () => {
  const f = await gatewayFixture();
  const w = fakeWorker("w1");
  f.sched.endpoints.push(w.endpoint);
  const r1 = await call(f.app);
  assert.equal(r1.status, 200);
  assert.equal(r1.headers.get("x-inferx-cold-start"), "1");
  assert.ok(Number(r1.headers.get("x-inferx-ttfb-ms")) >= 0);
  assert.deepEqual(await r1.json(), {
    worker: "w1",
    path: "/v1/completions",
    query: "",
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
  const f = await gatewayFixture();
  const r = await f.app.request("/funccall/t/n/nope/v1/completions");
  assert.equal(r.status, 404);
  assert.match((await r.json()).error.message, /t\/n\/nope does not exist/);
  await f.close();
});

t("gateway answers 400 for malformed JSON without leasing a worker", async () => {
  const f = await gatewayFixture();
  const r = await call(f.app, "{oops");
  assert.equal(r.status, 400);
  assert.match((await r.json()).error.message, /not valid JSON/);
  assert.equal(f.sched.leases.length, 0);
  await f.close();
});

t("gateway answers 413 for a body over the limit, declared or streamed", async () => {
  const f = await gatewayFixture({ bodyLimit: 100 });
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
  const f = await gatewayFixture({ policy: { queue_len: 1, queue_timeout: 0.3 } });
  f.sched.hang = true;
  const first = call(f.app);
  await new Promise((r) => setTimeout(r, 20));
  const full = await call(f.app);
  assert.equal(full.status, 503);
  assert.match((await full.json()).error.message, /queue is full \(1 waiting\)/);
  const timedOut = await first;
  assert.equal(timedOut.status, 504);
  // It waited what the policy says a call waits: OpenAI's clients are told not to wait it again
  // twice (they send any 5xx again unless told not to).
  assert.equal(timedOut.headers.get("x-should-retry"), "false");
  assert.match((await timedOut.json()).error.message, /no worker was free within 300 ms/);
  await f.close();
});

t("gateway honours X-Inferx-Timeout up to the policy's queue_timeout", async () => {
  const f = await gatewayFixture({ policy: { queue_timeout: 30 } });
  f.sched.hang = true;
  const t0 = performance.now();
  const r = await call(f.app, { prompt: "x" }, { "x-inferx-timeout": "0.1" });
  assert.equal(r.status, 504);
  await r.body?.cancel();
  const short = await call(f.app, { prompt: "x" }, { "x-inferx-timeout": ".1" });
  assert.equal(short.status, 504, "a decimal without its leading 0");
  await short.body?.cancel();
  assert.ok(performance.now() - t0 < 5000);
  // Decimal seconds only: Number() also read "0x1" as 1 and "1e3" as 1000.
  for (const value of ["soon", "0", "-1", "1e308", "0x1", "1e3", "+1", "Infinity"]) {
    const bad = await call(f.app, { prompt: "x" }, { "x-inferx-timeout": value });
    assert.equal(bad.status, 400, value);
    assert.match((await bad.json()).error.message, /Invalid X-Inferx-Timeout/, value);
  }
  await f.close();
});

t("gateway retries on another worker when one refuses the connection", async () => {
  const f = await gatewayFixture();
  const dead = fakeWorker("dead");
  await dead.close();
  const live = fakeWorker("live");
  f.sched.endpoints.push(dead.endpoint, live.endpoint);
  const r = await call(f.app);
  assert.equal(r.status, 200);
  assert.equal((await r.json()).worker, "live");
  assert.deepEqual(f.sched.returns, [{ podId: "pod-1", failed: true }]);
  await f.close();
  await live.close();
});

t(
  "a streamed body goes to another worker when the first refuses the connection (none of it was read)",
  async () => {
    const f = await gatewayFixture();
    const dead = fakeWorker("dead");
    await dead.close();
    const live = fakeWorker("live");
    f.sched.endpoints.push(dead.endpoint, live.endpoint);
    const r = await f.app.request("/funccall/t/n/f/upload", {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: ReadableStream.from([new TextEncoder().encode("hello")]),
    });
    assert.equal(r.status, 200);
    assert.equal((await r.json()).worker, "live");
    await f.close();
    await live.close();
  },
);

t("a POST a worker took and closed without answering is not sent to another worker", async () => {
  const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 2 } });
  const seen: string[] = [];
  const drop = () =>
    scriptedWorker((_c, got) => {
      seen.push(got.slice(0, got.indexOf("\r\n")));
      return Promise.resolve(); // and closes, answering nothing
    });
  const [a, b] = [drop(), drop()];
  f.sched.endpoints.push(a.endpoint, b.endpoint);
  const r = await f.app.request("/funccall/t/n/f/v1/pay", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: '{"charge":100}',
  });
  assert.equal(r.status, 503);
  // Nor is the caller told to send it again (OpenAI's clients send any 5xx twice more unless told).
  assert.equal(r.headers.get("x-should-retry"), "false");
  assert.equal(r.headers.get("retry-after"), null);
  const e = (await r.json()).error;
  assert.equal(e.code, "worker_failed");
  assert.match(e.message, /^Worker \S+ of t\/n\/f: it closed the connection without answering/);
  // The worker is named, not addressed: its address is the cluster's.
  assert.ok(!e.message.includes(a.endpoint) && !e.message.includes(b.endpoint), e.message);
  assert.deepEqual(e.details, { may_have_run: true });
  assert.deepEqual(seen, ["POST /v1/pay HTTP/1.1"], "one worker had it, once");
  assert.deepEqual(f.sched.returns, [], "the worker is not reported unreachable");
  // Its audit row names the pod that had it, as for an answer.
  const row = f.audit.requests.at(-1)!;
  assert.deepEqual([row.status, row.error], [503, "worker_failed"]);
  assert.ok(row.pod && e.message.startsWith(`Worker ${row.pod} of t/n/f:`), JSON.stringify(row));
  await f.close();
  await a.close();
  await b.close();
});

t("a worker that cannot be reached is named to the caller, not addressed", async () => {
  const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 3 } });
  const endpoints = [];
  for (let i = 0; i < 3; i++) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    endpoints.push(`127.0.0.1:${l.addr.port}`);
    l.close(); // nothing listens there now: connections are refused
  }
  f.sched.endpoints.push(...endpoints);
  const r = await f.app.request("/funccall/t/n/f/v1/models");
  assert.equal(r.status, 503);
  const e = (await r.json()).error;
  assert.equal(e.code, "unavailable");
  assert.match(e.message, /^Cannot reach worker \S+ of t\/n\/f: cannot connect to it: /);
  assert.ok(endpoints.every((at) => !e.message.includes(at)), e.message);
  await f.close();
});

t(
  "a GET every worker took and closed without answering fails as the workers' failure",
  async () => {
    const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 3 } });
    const seen: string[] = [];
    const drop = () =>
      scriptedWorker((_c, got) => {
        seen.push(got.slice(0, got.indexOf("\r\n")));
        return Promise.resolve(); // and closes, answering nothing (killed mid-call, say)
      });
    const workers = [drop(), drop(), drop()];
    f.sched.endpoints.push(...workers.map((w) => w.endpoint));
    const r = await f.app.request("/funccall/t/n/f/v1/models");
    assert.equal(r.status, 503);
    const e = (await r.json()).error;
    assert.equal(e.code, "worker_failed", "not 'unavailable': the workers had it");
    assert.match(e.message, /closed the connection/);
    assert.equal(seen.length, 3, "sent again, as a GET may be, up to three times");
    await f.close();
    for (const w of workers) await w.close();
  },
);

t("gateway retries a 503 answer on another free worker", async () => {
  const f = await gatewayFixture({ policy: { parallel: 1, scaleout_policy: { wait_ratio: 0 } } });
  const busy = fakeWorker("busy", { status: 503, delayMs: 100 });
  const ok = fakeWorker("ok");
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

t(
  "a streamed body answered 503 is not sent again to another worker: the 503 is the caller's",
  async () => {
    const f = await gatewayFixture({ policy: { parallel: 1, scaleout_policy: { wait_ratio: 0 } } });
    const busy = fakeWorker("busy", { status: 503, delayMs: 100 });
    const ok = fakeWorker("ok");
    f.sched.endpoints.push(busy.endpoint);
    const a = call(f.app); // leases busy; the queue behind it leases ok
    await new Promise((r) => setTimeout(r, 20));
    f.sched.endpoints.push(ok.endpoint);
    await (await call(f.app)).body?.cancel();
    await (await a).body?.cancel();
    // Both free now, busy first in line: a body read whole would go on to ok (the test above).
    const r = await f.app.request("/funccall/t/n/f/upload", {
      method: "POST",
      headers: { "content-type": "text/plain" }, // no length: streamed to the worker
      body: ReadableStream.from([new TextEncoder().encode("hello streamed body")]),
    });
    assert.equal(r.status, 503);
    const answer = await r.json();
    assert.deepEqual([answer.worker, answer.body], ["busy", "hello streamed body"]);
    await f.close();
    await busy.close();
    await ok.close();
  },
);

t("a PUT's streamed body its worker took and closed on is not sent again, empty", async () => {
  const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 3 } });
  const seen: string[] = [];
  const drop = () =>
    scriptedWorker(async (c, got) => {
      // The whole request, its chunked body's end included, then closed without an answer.
      const buf = new Uint8Array(65536);
      while (!got.includes("0\r\n\r\n")) {
        const n = await c.read(buf);
        if (n === null) break;
        got += new TextDecoder().decode(buf.subarray(0, n));
      }
      seen.push(got.slice(got.indexOf("\r\n\r\n") + 4));
    });
  const workers = [drop(), drop(), drop()];
  f.sched.endpoints.push(...workers.map((w) => w.endpoint));
  const r = await f.app.request("/funccall/t/n/f/v1/things", {
    method: "PUT", // may be sent twice, but only with a body read whole or none
    headers: { "content-type": "text/plain" },
    body: ReadableStream.from([new TextEncoder().encode("hello streamed body")]),
  });
  assert.equal(r.status, 503);
  assert.equal((await r.json()).error.code, "worker_failed");
  assert.deepEqual(seen, ["13\r\nhello streamed body\r\n0\r\n\r\n"], "sent once, whole");
  await f.close();
  for (const w of workers) await w.close();
});

t("gateway passes a 503 answer through when no other worker is free", async () => {
  const f = await gatewayFixture();
  const busy = fakeWorker("busy", { status: 503 });
  f.sched.endpoints.push(busy.endpoint);
  const r = await call(f.app);
  assert.equal(r.status, 503);
  assert.equal((await r.json()).worker, "busy");
  await f.close();
  await busy.close();
});

t("gateway returns a worker idle past scalein_timeout", async () => {
  const f = await gatewayFixture({ policy: { scalein_timeout: 0.05 } });
  const w = fakeWorker("w");
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

t(
  "a worker start failure reaches the caller as 503, its output only for readers of the namespace",
  async () => {
    const ADMIN = { authorization: "Bearer admin-key-0123456789" };
    const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
    f.sched.failWith = new InferxError(
      "worker_failed",
      "Worker pod-9 failed to start: exit code 3",
      {
        details: { [WORKER_OUTPUT]: "loading with HF_TOKEN=hf_secret", retry_after_s: 2 },
      },
    );
    const key = async (scope: string) => {
      const r = await f.app.request("/apikeys", {
        method: "POST",
        headers: { "content-type": "application/json", ...ADMIN },
        body: JSON.stringify({ scope, tenant: "t", namespace: "n", name: scope }),
      });
      return { authorization: `Bearer ${(await r.json()).key}` };
    };
    const openai = (headers: Record<string, string>) =>
      f.app.request("/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify({ model: "t/n/f", prompt: "x" }),
      });
    for (
      const [who, headers, shown] of [
        ["the administrator", ADMIN, true],
        ["a reader of t/n", await key("read"), true],
        ["a caller only", await key("inference"), false],
      ] as const
    ) {
      for (
        const [route, r] of [["funccall", await call(f.app, undefined, headers)], [
          "/v1",
          await openai(headers),
        ]] as const
      ) {
        assert.equal(r.status, 503, `${who}, ${route}`);
        assert.equal(r.headers.get("retry-after"), "2");
        const { error } = await r.json();
        assert.match(error.message, /^Worker pod-9 failed to start: exit code 3/);
        assert.deepEqual(
          error.details,
          { retry_after_s: 2 },
          "the output never goes in the details",
        );
        if (shown) {
          assert.match(error.message, /; last output:\nloading with HF_TOKEN=hf_secret$/, who);
        } else {
          assert.doesNotMatch(error.message, /hf_secret/, `${who}, ${route}`);
          assert.match(error.message, /its last output is for readers of t\/n: GET \/audit\/pods/);
        }
      }
    }
    await f.close();
  },
);

t("every outcome of a call is counted in the metrics and written to the audit", async () => {
  const f = await gatewayFixture();
  const w = fakeWorker("w");
  f.sched.endpoints.push(w.endpoint);
  assert.equal((await call(f.app)).status, 200);
  await (await f.app.request("/funccall/t/n/nope/x")).body?.cancel(); // 404: no such function
  await (await call(f.app, "{oops")).body?.cancel(); // 400
  const text = await (await f.app.request("/metrics")).text();
  assert.match(text, /inferx_requests_total\{function="t\/n\/f",code="200"\} 1/);
  assert.match(text, /inferx_requests_total\{function="t\/n\/f",code="400"\} 1/);
  assert.match(text, /inferx_requests_total\{function="\(none\)",code="404"\} 1/);
  assert.match(text, /inferx_time_to_first_byte_seconds_count\{function="t\/n\/f"\} 1/);
  assert.deepEqual(
    f.audit.requests.map((r) => [r.func, r.status, r.error ?? null, r.pod ?? null]),
    [["f", 200, null, "pod-1"], ["nope", 404, "not_found", null], ["f", 400, "invalid", null]],
  );
  assert.ok(f.audit.requests.every((r) => r.principal === "admin" && r.latencyMs >= 0));
  await f.close();
  await w.close();
});

t("a call refused by authentication is recorded with its 401", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const r = await call(f.app, { prompt: "x" }, { authorization: "Bearer wrong" });
  assert.equal(r.status, 401);
  assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="inferx"');
  await r.body?.cancel();
  assert.deepEqual(
    f.audit.requests.map((x) => [x.principal, x.status, x.error]),
    [["unauthenticated", 401, "unauthenticated"]],
  );
  assert.equal(f.sched.leases.length, 0);
  await f.close();
});

t("the platform's credentials are not forwarded to the worker when auth is on", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const seen: string[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, (req) => {
    seen.push(...req.headers.keys());
    return new Response("ok");
  });
  f.sched.endpoints.push(`127.0.0.1:${server.addr.port}`);
  const r = await call(f.app, { prompt: "x" }, {
    authorization: "Bearer admin-key-0123456789",
    "x-trace": "1",
    // A browser's: any app's of the gateway's host (another port, a parent domain's sign-in).
    cookie: "otherapp_session=s3cret",
  });
  assert.equal(await r.text(), "ok");
  assert.ok(seen.includes("x-trace"));
  assert.ok(!seen.includes("authorization"));
  assert.ok(!seen.includes("cookie"));
  await f.close();
  await server.shutdown();
});

t("a browser's cookies are not forwarded to the worker, with auth off too", async () => {
  const f = await gatewayFixture();
  const seen: string[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, (req) => {
    seen.push(...req.headers.keys());
    return new Response("ok");
  });
  f.sched.endpoints.push(`127.0.0.1:${server.addr.port}`);
  const r = await call(f.app, { prompt: "x" }, {
    cookie: "otherapp_session=s3cret",
    // Names a CGI- or WSGI-style server maps to the framing's: dropped, as nginx drops them.
    transfer_encoding: "chunked",
    content_length: "5",
    "x_user": "admin",
  });
  assert.equal(await r.text(), "ok");
  assert.ok(!seen.includes("cookie"), seen.join(","));
  assert.deepEqual(seen.filter((k) => k.includes("_")), []);
  await f.close();
  await server.shutdown();
});

t(
  "a function whose Schedulable condition is False answers 503 unschedulable at once, until it clears",
  async () => {
    const f = await gatewayFixture();
    const ref = { type: "function" as const, tenant: "t", namespace: "n", name: "f" };
    const setStatus = async (status: string, reason: string, message: string) => {
      const cur = (await f.meta.get(ref))!;
      const object = JSON.parse(cur.value).object;
      await f.meta.update({
        ...ref,
        revision: cur.revision,
        object: {
          ...object,
          status: { conditions: [{ type: "Schedulable", status, reason, message }] },
        },
      });
      await new Promise((r) => setTimeout(r, 20)); // the informer delivers it
    };
    await setStatus("False", "GPUTypeUnavailable", "No node could ever hold a pod: no A100");
    const r = await call(f.app);
    assert.equal(r.status, 503);
    const body = await r.json();
    assert.equal(body.error.code, "unschedulable");
    assert.equal(body.error.message, "Cannot call t/n/f: No node could ever hold a pod: no A100");
    assert.equal(body.error.details.reason, "GPUTypeUnavailable");
    assert.equal(f.sched.leases.length, 0, "refused without asking the scheduler");
    await setStatus("True", "Fits", "At least one node can hold a pod");
    const w = fakeWorker("w1");
    f.sched.endpoints.push(w.endpoint);
    const ok = await call(f.app);
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    await f.close();
    await w.close();
  },
);

t(
  "the Hono route aborts the worker's request when its caller goes away, and frees the slot",
  async () => {
    const f = await gatewayFixture();
    const aborted = Promise.withResolvers<void>();
    let reached = false;
    const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, (req) => {
      reached = true;
      return new Promise<Response>((resolve) =>
        req.signal.addEventListener("abort", () => {
          aborted.resolve();
          resolve(new Response("too late"));
        })
      );
    });
    f.sched.endpoints.push(`127.0.0.1:${server.addr.port}`);
    const caller = new AbortController();
    const answer = f.app.request("/funccall/t/n/f/slow", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
      signal: caller.signal,
    });
    while (!reached) await new Promise((r) => setTimeout(r, 10));
    caller.abort();
    await aborted.promise;
    const agent = f.cache.agent("t", "n", "f")!;
    while (agent.workers[0].inflight !== 0) await new Promise((r) => setTimeout(r, 10));
    assert.equal((await answer).status, 503);
    assert.deepEqual(f.audit.requests.map((x) => [x.status, x.error]), [[499, "caller_gone"]]);
    await f.close();
    await server.shutdown();
  },
);

t("a caller that goes away while queued leaves the function's queue at once", async () => {
  const f = await gatewayFixture();
  f.sched.hang = true;
  const caller = new AbortController();
  const answer = f.app.request("/funccall/t/n/f/x", { signal: caller.signal });
  const agent = () => f.cache.agent("t", "n", "f")!;
  while (agent().queued !== 1) await new Promise((r) => setTimeout(r, 5));
  caller.abort();
  await (await answer).body?.cancel();
  assert.equal(agent().queued, 0);
  assert.deepEqual(f.audit.requests.map((x) => [x.status, x.error]), [[499, "caller_gone"]]);
  await f.close();
});

t(
  "503 and 429 answers say when to try again (Retry-After), or not to (x-should-retry: false)",
  async () => {
    const f = await gatewayFixture({ policy: { queue_len: 1, max_replica: 1 } });
    f.sched.hang = true;
    const waiting = new AbortController();
    const first = call(f.app, { prompt: "x" }, {}, waiting.signal);
    while (f.cache.agent("t", "n", "f")?.queued !== 1) await new Promise((r) => setTimeout(r, 5));
    const full = await call(f.app);
    assert.equal(full.status, 503);
    assert.equal(full.headers.get("retry-after"), "1");
    assert.equal(full.headers.get("x-should-retry"), null, "worth sending again");
    assert.equal((await full.json()).error.code, "queue_full");
    waiting.abort();
    await (await first).body?.cancel();
    await f.close();
    const q = await gatewayFixture();
    q.sched.failWith = new InferxError("quota_exceeded", "Tenant t quota max_replica is 0");
    const quota = await call(q.app);
    assert.equal(quota.status, 429);
    assert.equal(quota.headers.get("retry-after"), "30");
    // Not to be sent again at once (an OpenAI client would wait 30 s twice to see it fail).
    assert.equal(quota.headers.get("x-should-retry"), "false");
    await quota.body?.cancel();
    q.sched.failWith = new InferxError("unschedulable", "No node could ever hold it");
    const never = await call(q.app);
    assert.equal(never.status, 503);
    assert.equal(never.headers.get("x-should-retry"), "false");
    await never.body?.cancel();
    // A failed start: sent again after its back-off, but not once the failures are a crash loop
    // (a client would wait a minute a try to start another worker that fails), however little
    // of the back-off is left.
    // (From a scheduler of the release before, which tells only the back-off left, by that.)
    const tries = [
      [1, 1, null],
      [2, 2, null],
      [3, 1, "false"],
      [7, 60, "false"],
      [undefined, 2, null],
      [undefined, 4, "false"],
    ] as const;
    for (const [n, s, retry] of tries) {
      const w = await gatewayFixture();
      w.sched.failWith = new InferxError("worker_failed", "Worker failed to start", {
        details: { retry_after_s: s, ...(n === undefined ? {} : { failed_starts: n }) },
      });
      const failed = await call(w.app);
      assert.equal(failed.status, 503);
      assert.equal(failed.headers.get("retry-after"), String(s));
      assert.equal(failed.headers.get("x-should-retry"), retry, `${n} failed starts`);
      await failed.body?.cancel();
      await w.close();
    }
    const missing = await q.app.request("/funccall/t/n/nope/x");
    assert.equal(missing.headers.get("retry-after"), null, "only 429 and 503 carry it");
    await missing.body?.cancel();
    await q.close();
  },
);

t(
  "a worker cannot set cookies or the gateway's own fields, and what it serves is sandboxed",
  async () => {
    const f = await gatewayFixture();
    const html = "<script>fetch('/x?k=' + sessionStorage.getItem('inferx.credential'))</script>";
    const w = rawWorker({
      answer: "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n" +
        "set-cookie: sid=planted; Path=/; HttpOnly\r\n" +
        "x-content-type-options: sniff\r\n" + // read first by a browser, it would undo nosniff
        // Applied by a browser to the whole origin, whatever answer (a fetch's too) carries them.
        'clear-site-data: "storage", "cookies"\r\nstrict-transport-security: max-age=60\r\n' +
        "alt-svc: clear\r\n" +
        // Acted on by nginx in front: it would send the caller's request where the worker says.
        "x-accel-redirect: /apikeys\r\nX-Accel-Buffering: no\r\nx-sendfile: /etc/passwd\r\n" +
        "x-lighttpd-send-file: /etc/passwd\r\nx-sendfile2: /etc/passwd 0-\r\n" +
        "x-inferx-pod: spoofed\r\nx-inferx-cold-start: 0\r\nx-app: kept\r\n" +
        `content-length: ${html.length}\r\n\r\n${html}`,
    });
    f.sched.endpoints.push(w.endpoint);
    const r = await f.app.request("/funccall/t/n/f/", { method: "GET" });
    assert.equal(await r.text(), html, "the body is passed on unchanged");
    assert.equal(r.headers.get("set-cookie"), null);
    for (
      const field of [
        "clear-site-data",
        "strict-transport-security",
        "alt-svc",
        "x-accel-redirect",
        "x-accel-buffering",
        "x-sendfile",
        "x-lighttpd-send-file",
        "x-sendfile2",
      ]
    ) {
      assert.equal(r.headers.get(field), null, field);
    }
    assert.equal(r.headers.get("x-inferx-pod"), f.sched.leases[0] && "pod-1");
    assert.equal(r.headers.get("x-inferx-cold-start"), "1");
    assert.equal(r.headers.get("x-app"), "kept");
    assert.match(r.headers.get("content-security-policy")!, /^sandbox /);
    assert.doesNotMatch(r.headers.get("content-security-policy")!, /allow-same-origin/);
    assert.equal(r.headers.get("x-content-type-options"), "nosniff");
    await f.close();
    await w.close();
  },
);

t(
  "a worker that breaks off its answer fails the call once: it is not sent to another worker",
  async () => {
    const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 2 } });
    // Both workers answer a head and part of a sized body, then close the connection.
    const workers = [0, 1].map(() =>
      scriptedWorker(async (c) => {
        await c.write(
          new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart"),
        );
      })
    );
    f.sched.endpoints.push(...workers.map((w) => w.endpoint));
    const r = await call(f.app, { prompt: "x" });
    assert.equal(r.status, 503);
    const { error } = await r.json();
    assert.equal(error.code, "worker_failed");
    assert.match(error.message, /broke off its answer/);
    assert.doesNotMatch(error.message, /broke off its answer: it broke off/, "said once");
    const sent = workers[0].connections() + workers[1].connections();
    assert.equal(sent, 1, "the POST went to one worker only (it may have run)");
    assert.deepEqual(
      f.sched.returns.filter((x) => x.failed),
      [],
      "the worker is not reported failed",
    );
    await f.close();
    for (const w of workers) w.close();
  },
);

t(
  "gateway answers 504 when a worker stays silent past answer_timeout, and frees its slot",
  async () => {
    const f = await gatewayFixture({
      policy: { parallel: 1, max_replica: 1, answer_timeout: 0.3 },
    });
    let first = true;
    const w = scriptedWorker(async (c) => {
      if (first) {
        first = false;
        await c.read(new Uint8Array(1)); // hung: nothing until the gateway cuts the connection
        return;
      }
      await c.write(new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    });
    f.sched.endpoints.push(w.endpoint);
    const sweep = setInterval(() => f.deps.pool.sweep(), 100); // as the gateway's own sweep
    try {
      const hung = await call(f.app);
      assert.equal(hung.status, 504);
      assert.equal(hung.headers.get("x-should-retry"), "false", "the worker had it");
      assert.match(
        (await hung.json()).error.message,
        /sent nothing for 0\.3 s \(the policy's answer_timeout\)/,
      );
      // The one slot is free again and the worker kept: the next call is answered.
      const next = await call(f.app);
      assert.equal(next.status, 200);
      assert.equal(await next.text(), "ok");
      assert.equal(f.sched.leases.length, 1, "the worker was not given up");
      assert.deepEqual(f.audit.requests.map((r) => [r.status, r.error ?? null]), [
        [504, "timeout"],
        [200, null],
      ]);
    } finally {
      clearInterval(sweep);
      await f.close();
      w.close();
    }
  },
);

t(
  "a streamed answer quiet past answer_timeout errors the body and is audited as timeout",
  async () => {
    const f = await gatewayFixture({ policy: { answer_timeout: 0.3 } });
    const w = scriptedWorker(async (c) => {
      await c.write(new TextEncoder().encode(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" +
          "9\r\ndata: 1\n\n\r\n",
      ));
      await c.read(new Uint8Array(1)); // then nothing, until the gateway cuts the connection
    });
    f.sched.endpoints.push(w.endpoint);
    const sweep = setInterval(() => f.deps.pool.sweep(), 100);
    try {
      const r = await call(f.app);
      assert.equal(r.status, 200);
      await assert.rejects(r.text());
      assert.deepEqual(f.audit.requests.map((x) => [x.status, x.error ?? null]), [[
        200,
        "timeout",
      ]]);
    } finally {
      clearInterval(sweep);
      await f.close();
      w.close();
    }
  },
);

t("a call cut off on a worker reclaimed for another tenant's fair share says so", async () => {
  const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 1 } });
  const cut = Promise.withResolvers<void>();
  const w = scriptedWorker(() => cut.promise); // takes the call; closes when the pod is ended
  f.sched.endpoints.push(w.endpoint);
  try {
    const answer = f.app.request("/funccall/t/n/f/v1/pay", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    const agent = () => f.cache.agent("t", "n", "f")!;
    while (agent()?.workers[0]?.inflight !== 1) await new Promise((r) => setTimeout(r, 5));
    agent().reclaim(agent().workers[0].podId); // the scheduler's advice, then its grace runs out
    cut.resolve();
    const r = await answer;
    assert.equal(r.status, 503);
    assert.match(
      (await r.json()).error.message,
      /closed the connection without answering.*\(the worker was reclaimed for another tenant's fair share, and ended as its grace period ran out\)/,
    );
  } finally {
    await f.close();
    await w.close();
  }
});

t("a tenant's max_calls_per_s holds for /funccall, /v1 and asynchronous calls alike", async () => {
  const f = await gatewayFixture();
  const w = fakeWorker("w1");
  f.sched.endpoints.push(w.endpoint);
  try {
    const ref = { type: "tenant" as const, tenant: "system", namespace: "system", name: "t" };
    const tenant = await f.meta.get(ref);
    const quota = { max_calls_per_s: 0.5, max_call_burst: 3 };
    await f.meta.update({ ...ref, object: { spec: { quota } }, revision: tenant!.revision });
    await until(
      "the gateway reads the quota",
      () => Promise.resolve(f.cache.tenantQuota("t").max_calls_per_s === 0.5),
    );
    const openai = () =>
      f.app.request("/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "t/n/f", prompt: "x" }),
      });
    const queued = () =>
      f.app.request("/funccall/t/n/f/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json", prefer: "respond-async" },
        body: JSON.stringify({ prompt: "x" }),
      });
    // The burst, taken by each kind of call once.
    for (const r of [await call(f.app), await openai(), await queued()]) {
      assert.ok(r.status === 200 || r.status === 202, `${r.status} ${await r.clone().text()}`);
      await r.body?.cancel();
    }
    // Each told a later turn, a token (2 s at half a call a second) after the one before.
    const turns: number[] = [];
    const refused = [await call(f.app), await openai(), await queued()];
    // OpenAI's own code on its route.
    const codes = ["quota_exceeded", "rate_limit_exceeded", "quota_exceeded"];
    for (const [i, r] of refused.entries()) {
      assert.equal(r.status, 429);
      const ms = Number(r.headers.get("retry-after-ms"));
      assert.equal(r.headers.get("retry-after"), String(Math.ceil(ms / 1000)));
      turns.push(ms);
      const { error } = await r.json();
      assert.equal(error.code, codes[i]);
      assert.match(error.message, /tenant t is at its max_calls_per_s quota \(0\.5 a second/);
      assert.equal(error.details.limit, "max_calls_per_s");
    }
    assert.ok(turns[0] > 1000 && turns[0] <= 2000, String(turns));
    assert.ok(turns[1] - turns[0] > 1900 && turns[2] - turns[1] > 1900, String(turns));
    // Each refused call counts in the tenant's demand for the scheduler's shares.
    assert.deepEqual(f.cache.limits.demand(), [{ tenant: "t", calls: 6 }]);
    // Refused before any worker was asked for.
    assert.equal(f.sched.leases.length <= 1, true);
  } finally {
    await f.close();
    await w.close();
  }
});
