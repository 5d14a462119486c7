import assert from "node:assert/strict";
import { drainCalls, serveGateway } from "./server.ts";
import { forward } from "./proxy.ts";
import { fakeWorker, gatewayFixture, rawWorker, scriptedWorker } from "./testing.ts";
import { until } from "../common/testing.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

async function listening(opts: Parameters<typeof gatewayFixture>[0] = {}) {
  const f = await gatewayFixture(opts);
  const server = serveGateway(f.app, f.deps, { port: 0 });
  const url = `http://127.0.0.1:${server.addr.port}`;
  return {
    f,
    url,
    async close() {
      await server.shutdown(500);
      await f.close();
    },
  };
}

/** Writes `parts` on a fresh connection, 50 ms apart; what came back until the gateway closed it. */
async function rawCall(url: string, ...parts: (string | Uint8Array)[]): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(url).port) });
  for (const [i, p] of parts.entries()) {
    if (i) await new Promise((r) => setTimeout(r, 50)); // the gateway has the call by then
    await c.write(typeof p === "string" ? new TextEncoder().encode(p) : p);
  }
  let out = "";
  const buf = new Uint8Array(64 * 1024);
  const timer = setTimeout(() => c.close(), 5000);
  try {
    for (let n; (n = await c.read(buf)) !== null;) {
      out += String.fromCharCode(...buf.subarray(0, n));
    }
  } catch {
    // closed by the timer
  }
  clearTimeout(timer);
  try {
    c.close();
  } catch {
    // closed
  }
  return out;
}

/** A worker answering every call with `events` events (`data: 1` ...), one every `everyMs`. */
function sseWorker(events: number, everyMs: number) {
  return Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, () => {
    let i = 0;
    return new Response(
      new ReadableStream({
        async pull(c) {
          await new Promise((r) => setTimeout(r, everyMs));
          if (i++ < events) c.enqueue(new TextEncoder().encode(`data: ${i}\n\n`));
          else c.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  });
}

const post = (url: string, body: unknown, headers: Record<string, string> = {}, method = "POST") =>
  fetch(url, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });

t("the listener serves calls on the warm path and every other route through the app", async () => {
  const g = await listening();
  const w = fakeWorker("w");
  g.f.sched.endpoints.push(w.endpoint);
  const r = await post(`${g.url}/funccall/t/n/f/v1/completions?x=1`, { prompt: "x" });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-inferx-cold-start"), "1");
  assert.equal(r.headers.get("x-inferx-pod"), "pod-1");
  assert.deepEqual(await r.json(), {
    worker: "w",
    path: "/v1/completions",
    query: "?x=1",
    body: '{"prompt":"x"}',
  });
  const v1 = await post(`${g.url}/v1/chat/completions`, { model: "t/n/f", messages: [] });
  assert.equal((await v1.json()).path, "/v1/chat/completions");
  const objects = await fetch(`${g.url}/objects/function/t/n`);
  assert.deepEqual((await objects.json()).items.map((o: { name: string }) => o.name), ["f"]);
  const missing = await fetch(`${g.url}/nowhere`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "not_found");
  assert.deepEqual(
    g.f.audit.requests.map((x) => [x.path, x.status]),
    [["/funccall/t/n/f/v1/completions", 200], ["/v1/chat/completions", 200]],
  );
  await g.close();
  await w.close();
});

t("the listener refuses calls past their tenant's max_calls_per_s, recorded as 429s", async () => {
  const g = await listening();
  const w = fakeWorker("w");
  g.f.sched.endpoints.push(w.endpoint);
  try {
    const ref = { type: "tenant" as const, tenant: "system", namespace: "system", name: "t" };
    const tenant = await g.f.meta.get(ref);
    await g.f.meta.update({
      ...ref,
      object: { spec: { quota: { max_calls_per_s: 1, max_call_burst: 2 } } },
      revision: tenant!.revision,
    });
    await until(
      "the gateway reads the quota",
      () => Promise.resolve(g.f.cache.tenantQuota("t").max_calls_per_s === 1),
    );
    const statuses: number[] = [];
    for (const path of ["/funccall/t/n/f/x", "/v1/completions", "/funccall/t/n/f/x"]) {
      const r = await post(`${g.url}${path}`, { model: "t/n/f", prompt: "x" });
      statuses.push(r.status);
      if (r.status === 429) {
        assert.ok(Number(r.headers.get("retry-after-ms")) > 0);
        assert.equal(r.headers.get("retry-after"), "1");
        assert.equal((await r.json()).error.details.limit, "max_calls_per_s");
      } else await r.body?.cancel();
    }
    assert.deepEqual(statuses, [200, 200, 429]);
    assert.deepEqual(g.f.audit.requests.map((x) => x.status), [200, 200, 429]);
  } finally {
    await g.close();
    await w.close();
  }
});

t(
  "a chunked body past the limit that came whole with its head is refused, no worker asked",
  async () => {
    const g = await listening({ bodyLimit: 1000 });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint);
    try {
      const body = JSON.stringify({ prompt: "x".repeat(2000) });
      const chunked = `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
      const out = await rawCall(
        g.url,
        "POST /funccall/t/n/f/v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n" +
          `content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${chunked}`,
      );
      assert.match(out, /^HTTP\/1\.1 413 /, out.slice(0, 200));
      assert.match(out, /"code":"too_large"/);
      assert.equal(w.heard.length, 0, "the worker had nothing");
      assert.equal(g.f.sched.leases.length, 0);
    } finally {
      await g.close();
      await w.close();
    }
  },
);

t("the listener answers call errors as JSON and records them like the app does", async () => {
  const g = await listening({ adminKey: "admin-key-0123456789" });
  const cases: [string, unknown, Record<string, string>, number, string][] = [
    ["/funccall/t/n/f/x", {}, {}, 401, "unauthenticated"],
    // The same through the app (a progress stream asked for): named alike.
    ["/funccall/t/n/f/x", {}, { "x-inferx-progress": "1" }, 401, "unauthenticated"],
    [
      "/funccall/t/n/nope/x",
      {},
      { authorization: "Bearer admin-key-0123456789" },
      404,
      "not_found",
    ],
    [
      "/v1/completions",
      { model: "t/n/nope" },
      { authorization: "Bearer admin-key-0123456789" },
      404,
      "model_not_found",
    ],
    [
      "/v1/completions",
      { prompt: "no model" },
      { authorization: "Bearer admin-key-0123456789" },
      400,
      "invalid",
    ],
  ];
  for (const [path, body, headers, status, code] of cases) {
    const r = await post(`${g.url}${path}`, body, headers);
    assert.equal(r.status, status, path);
    const e = (await r.json()).error;
    assert.equal(e.code, code);
    // OpenAI's shape on its routes: `type` beside the code.
    assert.equal(e.type, path.startsWith("/v1/") ? "invalid_request_error" : undefined, path);
    if (status === 401) assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="inferx"');
  }
  // A target with a dot segment (sent raw: fetch() would resolve it).
  const dot = await rawCall(
    g.url,
    "POST /funccall/t/n/f/../../../x/y/z HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
  );
  assert.match(dot, /^HTTP\/1.1 400 /);
  assert.deepEqual(g.f.audit.requests.map((x) => [x.status, x.error, x.tenant, x.func]), [
    // Refused for its credentials, the call is still its function's, in its tenant's audit.
    [401, "unauthenticated", "t", "f"],
    [401, "unauthenticated", "t", "f"],
    [404, "not_found", "t", "nope"],
    [404, "not_found", "t", "nope"],
    [400, "invalid", "", ""],
    [400, "invalid", "", ""],
  ]);
  const text = await (await fetch(`${g.url}/metrics`, {
    headers: { authorization: "Bearer admin-key-0123456789" },
  })).text();
  assert.match(text, /inferx_requests_total\{function="\(none\)",code="404"\} 2/);
  assert.match(text, /inferx_requests_total\{function="t\/n\/f",code="401"\} 2/);
  assert.match(text, /inferx_requests_total\{function="\(none\)",code="400"\} 2/);
  await g.close();
});

t("an OpenAI-style call's query goes to the worker with its path on the warm path", async () => {
  const g = await listening();
  const w = fakeWorker("w");
  g.f.sched.endpoints.push(w.endpoint);
  const r = await post(`${g.url}/v1/completions?api-version=2024-06-01`, { model: "f" });
  assert.equal(r.status, 200);
  const got = await r.json();
  assert.deepEqual([got.path, got.query], ["/v1/completions", "?api-version=2024-06-01"]);
  await g.close();
  await w.close();
});

t("the listener forwards streamed answers chunk by chunk as they come", async () => {
  const g = await listening();
  const worker = sseWorker(3, 100);
  g.f.sched.endpoints.push(`127.0.0.1:${worker.addr.port}`);
  const t0 = performance.now();
  const r = await post(`${g.url}/funccall/t/n/f/stream`, {});
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  const firstMs = performance.now() - t0;
  assert.equal(first.value, "data: 1\n\n");
  assert.ok(firstMs < 300, `the first chunk came before the rest (${firstMs} ms)`);
  let rest = "";
  for (let c; !(c = await reader.read()).done;) rest += c.value;
  assert.equal(rest, "data: 2\n\ndata: 3\n\n");
  const agent = g.f.cache.agent("t", "n", "f")!;
  assert.equal(agent.workers[0].inflight, 0, "the slot is back after the stream ended");
  await g.close();
  await worker.shutdown();
});

t("a caller that goes away aborts the worker's request and frees the slot at once", async () => {
  const g = await listening();
  const aborted = Promise.withResolvers<void>();
  const worker = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    (req) =>
      new Promise<Response>((resolve) => {
        // Answers only once its caller is gone.
        req.signal.addEventListener("abort", () => {
          aborted.resolve();
          resolve(new Response("too late"));
        });
      }),
  );
  g.f.sched.endpoints.push(`127.0.0.1:${worker.addr.port}`);
  const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(g.url).port) });
  await c.write(
    new TextEncoder().encode(
      "POST /funccall/t/n/f/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ),
  );
  const agent = () => g.f.cache.agent("t", "n", "f")!;
  while (agent().workers[0]?.inflight !== 1) await new Promise((r) => setTimeout(r, 10));
  c.close();
  await aborted.promise;
  while (agent().workers[0].inflight !== 0) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(g.f.audit.requests.map((x) => [x.status, x.error]), [[499, "caller_gone"]]);
  await g.close();
  await worker.shutdown();
});

t(
  "the listener hands calls with Prefer: respond-async to the app; other Prefer values stay ordinary calls",
  async () => {
    const g = await listening({ calls: { backoffMs: 20 } });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint);
    const r = await post(`${g.url}/funccall/t/n/f/v1/completions`, { prompt: "x" }, {
      prefer: "respond-async",
    });
    assert.equal(r.status, 202);
    const { id } = await r.json();
    assert.equal(r.headers.get("location"), `/calls/${id}`);
    const openai = await post(`${g.url}/v1/completions`, { model: "t/n/f" }, {
      prefer: "wait=5, respond-async",
    });
    assert.equal(openai.status, 202);
    await openai.body?.cancel();
    // A Prefer without respond-async is an ordinary call.
    const plain = await post(`${g.url}/funccall/t/n/f/x`, {}, { prefer: "return=minimal" });
    assert.equal(plain.status, 200);
    assert.equal((await plain.json()).worker, "w");
    let status = "";
    for (let i = 0; i < 200 && status !== "succeeded"; i++) {
      status = (await (await fetch(`${g.url}/calls/${id}`)).json()).status;
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(status, "succeeded");
    await g.close();
    await w.close();
  },
);

t(
  "a caller that closes in the middle of its request body is a caller gone, whatever the route",
  async () => {
    const g = await listening({ calls: { backoffMs: 20 } });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint);
    const port = Number(new URL(g.url).port);
    const cases: [string, string, string][] = [
      ["/funccall/t/n/f/v1/completions", "application/json", ""],
      ["/funccall/t/n/f/v1/completions", "application/octet-stream", ""],
      ["/v1/completions", "application/json", ""],
      ["/funccall/t/n/f/v1/completions", "application/json", "prefer: respond-async\r\n"],
      ["/v1/completions", "application/json", "prefer: respond-async\r\n"],
    ];
    try {
      for (const [i, [path, type, extra]] of cases.entries()) {
        const c = await Deno.connect({ hostname: "127.0.0.1", port });
        await c.write(new TextEncoder().encode(
          `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: ${type}\r\n` +
            `content-length: 100\r\n${extra}\r\n{"model":"t/n/f","prompt":`,
        ));
        await new Promise((r) => setTimeout(r, 50)); // the gateway is reading the body
        c.close();
        await until(`row ${i + 1}`, () => g.f.audit.requests.length === i + 1, 2000);
        const row = g.f.audit.requests[i];
        assert.deepEqual([row.status, row.error], [499, "caller_gone"], `${path} ${type} ${extra}`);
      }
      const text = await g.f.deps.registry.metrics();
      assert.match(text, /inferx_requests_total\{function="t\/n\/f",code="499"\} 3/);
      // An OpenAI-style call names its function in the body it did not finish sending.
      assert.match(text, /inferx_requests_total\{function="\(none\)",code="499"\} 2/);
      assert.doesNotMatch(text, /code="500"/);
    } finally {
      await g.close();
      await w.close();
    }
  },
);

t(
  "a call that arrives on an idle connection as the gateway stops is answered 503, not cut",
  async () => {
    const f = await gatewayFixture();
    const w = fakeWorker("w");
    f.sched.endpoints.push(w.endpoint);
    const server = serveGateway(f.app, f.deps, { port: 0 });
    const c = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    const buf = new Uint8Array(65536);
    const call = new TextEncoder().encode(
      "GET /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    const answer = async () => {
      let out = "";
      for (let n; !/\r\n\r\n[\s\S]*\}$/.test(out) && (n = await c.read(buf)) !== null;) {
        out += new TextDecoder().decode(buf.subarray(0, n));
      }
      return out;
    };
    try {
      await c.write(call);
      assert.match(await answer(), /^HTTP\/1.1 200 /); // the connection is idle, kept alive
      const stopped = drainCalls(f.cache, server, 2000);
      await new Promise((r) => setTimeout(r, 50)); // a call on its way as the stop begins
      await c.write(call);
      const late = await answer();
      assert.match(late, /^HTTP\/1.1 503 /);
      assert.match(late, /\r\nretry-after: \d+\r\n/i);
      assert.match(late, /\r\nconnection: close\r\n/i);
      assert.match(late, /the call was not sent to a worker; try again/);
      assert.equal(await c.read(buf), null, "closed after it");
      await stopped;
    } finally {
      c.close();
      await f.close();
      await w.close();
    }
  },
);

t(
  "a call waiting for a worker when the gateway stops gets its 503 with Connection: close",
  async () => {
    const f = await gatewayFixture();
    f.sched.hang = true; // no worker comes
    const server = serveGateway(f.app, f.deps, { port: 0 });
    const c = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    try {
      await c.write(
        new TextEncoder().encode("GET /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
      );
      await until("the call queued", () => f.cache.agent("t", "n", "f")?.queued === 1);
      const stopped = drainCalls(f.cache, server, 2000);
      const buf = new Uint8Array(65536);
      let out = "";
      for (let n; !/\r\n\r\n[\s\S]*\}$/.test(out) && (n = await c.read(buf)) !== null;) {
        out += new TextDecoder().decode(buf.subarray(0, n));
      }
      assert.match(out, /^HTTP\/1.1 503 /);
      assert.match(out, /\r\nconnection: close\r\n/i, out);
      assert.equal(await c.read(buf), null, "closed after it");
      await stopped;
    } finally {
      c.close();
      await f.close();
    }
  },
);

t("a caller that disconnects while queued leaves the queue at once", async () => {
  const g = await listening();
  g.f.sched.hang = true;
  const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(g.url).port) });
  await c.write(
    new TextEncoder().encode("GET /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
  );
  const agent = () => g.f.cache.agent("t", "n", "f")!;
  while (agent()?.queued !== 1) await new Promise((r) => setTimeout(r, 10));
  c.close();
  while (agent().queued !== 0) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(g.f.audit.requests.map((x) => [x.status, x.error]), [[499, "caller_gone"]]);
  await g.close();
});

t(
  "routes on the request target alone: a bad Host is 400, an absolute target keeps its query",
  async () => {
    // With auth on: without it, a gateway on loopback refuses any other Host 403 first.
    const g = await listening({ adminKey: "admin-key-0123456789" });
    const port = Number(new URL(g.url).port);
    const raw = async (head: string) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await c.write(new TextEncoder().encode(head));
      let text = "";
      const buf = new Uint8Array(65536);
      for (let n; (n = await c.read(buf).catch(() => null)) !== null;) {
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      c.close();
      return { status: Number(text.slice(9, 12)), body: text.slice(text.indexOf("\r\n\r\n") + 4) };
    };
    for (
      const host of ["x:abc", "a b", "[::1", "x:99999", "x/objects/function/t/n?", "x#"]
    ) {
      const r = await raw(`GET /health HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
      assert.equal(r.status, 400, host);
      assert.equal(JSON.parse(r.body).error.code, "invalid", host);
    }
    const two = await raw(
      "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert.equal(two.status, 400, "two Host fields");
    const ok = await raw("GET /health HTTP/1.1\r\nHost: [::1]:4000\r\nConnection: close\r\n\r\n");
    assert.equal(ok.status, 200);
    const abs = await raw(
      `GET http://gw:1/objects/function/t/n HTTP/1.1\r\nHost: x\r\n` +
        `Authorization: Bearer admin-key-0123456789\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(abs.status, 200);
    assert.deepEqual(JSON.parse(abs.body).items.map((o: { name: string }) => o.name), ["f"]);
    await g.close();
  },
);

t("fields go to the worker and back byte for byte, non-ASCII bytes included", async () => {
  const g = await listening();
  const w = rawWorker({
    answer: "HTTP/1.1 200 OK\r\nx-file: Caf\u00e9\r\nx-next: 1\r\ncontent-length: 2\r\n\r\nok",
  });
  g.f.sched.endpoints.push(w.endpoint);
  // UTF-8 in one request field: two bytes a character, and the fields after it must not shift.
  const head = new TextEncoder().encode(
    "GET /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: \u00e9\u00e9\r\nX-Next: yes\r\nConnection: close\r\n\r\n",
  );
  const out = await rawCall(g.url, head);
  assert.match(out, /^HTTP\/1.1 200 /);
  const sent = w.received();
  assert.ok(sent.includes("x-a: \xc3\xa9\xc3\xa9\r\nx-next: yes\r\n"), JSON.stringify(sent));
  // The worker's answer field as the worker wrote it (U+00E9 in UTF-8, two bytes).
  assert.ok(out.includes("x-file: Caf\xc3\xa9\r\nx-next: 1\r\n"), JSON.stringify(out));
  await g.close();
  w.close();
});

t("a caller's bad streamed body is answered 413 or 400 and the worker is not dropped", async () => {
  const g = await listening({ bodyLimit: 1024 });
  const w = rawWorker();
  g.f.sched.endpoints.push(w.endpoint);
  const head =
    "POST /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  const big = "x".repeat(2000);
  const tooLarge = await rawCall(g.url, `${head}${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`);
  assert.match(tooLarge, /^HTTP\/1.1 413 /);
  assert.match(tooLarge, /"too_large"/);
  const malformed = await rawCall(g.url, `${head}2\r\nab\r\n`, "zz\r\n");
  assert.match(malformed, /^HTTP\/1.1 400 /);
  assert.match(malformed, /"invalid"/);
  assert.deepEqual(g.f.sched.returns.filter((r) => r.failed), [], "no worker was reported failed");
  assert.deepEqual(
    g.f.audit.requests.map((x) => x.status),
    [413, 400],
  );
  await g.close();
  w.close();
});

t("HEAD on the warm path answers the length the worker declared, without a body", async () => {
  const g = await listening();
  const w = rawWorker({ answer: "HTTP/1.1 200 OK\r\ncontent-length: 12345\r\n\r\n" });
  g.f.sched.endpoints.push(w.endpoint);
  const out = await rawCall(
    g.url,
    "HEAD /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
  );
  assert.match(out, /^HTTP\/1.1 200 /);
  assert.match(out, /\r\ncontent-length: 12345\r\n/);
  assert.ok(out.endsWith("\r\n\r\n"), "no body");
  await g.close();
  w.close();
});

/**
 * Sends a call of `/funccall/t/n/f/s` and half-closes at once, or once `seen`
 * has come back; everything that came back.
 */
async function halfClosedCall(url: string, seen?: string): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(url).port) });
  await c.write(
    new TextEncoder().encode("GET /funccall/t/n/f/s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
  );
  let out = "";
  const buf = new Uint8Array(65536);
  const read = () => c.read(buf).catch(() => null);
  if (seen !== undefined) {
    for (let n; !out.includes(seen) && (n = await read()) !== null;) {
      out += new TextDecoder().decode(buf.subarray(0, n));
    }
  }
  await c.closeWrite();
  for (let n; (n = await read()) !== null;) out += new TextDecoder().decode(buf.subarray(0, n));
  c.close();
  return out;
}

t(
  "a caller that half-closes after its request is a caller gone: 499 recorded, no 500",
  async () => {
    const g = await listening();
    const w = fakeWorker("slow", { delayMs: 500 }); // no answer before the half-close is seen
    g.f.sched.endpoints.push(w.endpoint);
    try {
      assert.equal(await halfClosedCall(g.url), "");
      assert.deepEqual(g.f.audit.requests.map((x) => [x.status, x.error]), [[499, "caller_gone"]]);
    } finally {
      await g.close();
      await w.close();
    }
  },
);

t("a caller that half-closes in the middle of a streamed answer: cut, and 499", async () => {
  const g = await listening();
  const worker = sseWorker(6, 50);
  g.f.sched.endpoints.push(`127.0.0.1:${worker.addr.port}`);
  try {
    const cut = await halfClosedCall(g.url, "data: 1");
    assert.match(cut, /^HTTP\/1.1 200 /);
    assert.match(cut, /data: 1/);
    assert.ok(!cut.endsWith("0\r\n\r\n"), `not ended as if whole: ${JSON.stringify(cut)}`);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(g.f.audit.requests.map((x) => [x.status, x.error]), [[499, "caller_gone"]]);
    // Counted once, as 499 (not also as the 200 its head said), with its duration.
    const text = await g.f.deps.registry.metrics();
    assert.match(text, /inferx_requests_total\{function="t\/n\/f",code="499"\} 1/);
    assert.doesNotMatch(text, /inferx_requests_total\{function="t\/n\/f",code="200"\}/);
    assert.match(text, /inferx_request_duration_seconds_count\{function="t\/n\/f"\} 1/);
  } finally {
    await g.close();
    await worker.shutdown();
  }
});

t(
  "a retry after a worker dropped the call waits only for what is left of the caller's limit",
  async () => {
    const g = await listening();
    // A worker that takes the request, says nothing for 600 ms, then closes the connection.
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    (async () => {
      for await (const c of l) {
        setTimeout(() => c.close(), 600);
      }
    })().catch(() => {});
    g.f.sched.endpoints.push(`127.0.0.1:${(l.addr as Deno.NetAddr).port}`); // no second worker
    const t0 = performance.now();
    const r = await fetch(`${g.url}/funccall/t/n/f/x`, { headers: { "x-inferx-timeout": "1" } });
    const ms = performance.now() - t0;
    assert.equal(r.status, 504);
    await r.body?.cancel();
    // 600 ms on the first worker, then the 400 ms left: not another whole second.
    assert.ok(ms < 1400, `answered after ${Math.round(ms)} ms`);
    await g.close();
    l.close();
  },
);

t(
  "callers who leave a queue they watch (x-inferx-progress) leave no waiter behind to take a slot",
  async () => {
    const g = await listening({ policy: { parallel: 1, max_replica: 1, queue_len: 100_000 } });
    // A worker that answers /fast at once and nothing else: the slot a waiter took stays taken.
    const w = scriptedWorker(async (c, got) => {
      if (got.includes("/fast")) {
        await c.write(new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
      }
      const buf = new Uint8Array(64 * 1024);
      while ((await c.read(buf).catch(() => null)) !== null); // holds the rest
    });
    g.f.sched.endpoints.push(w.endpoint);
    const port = Number(new URL(g.url).port);
    const post = (path: string, extra = "") =>
      `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 7\r\n${extra}\r\n{"a":1}`;
    /** A call on a connection of its own, closed after `ms` (or when its answer is in). */
    const call = async (req: string, ms: number) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await c.write(new TextEncoder().encode(req));
      const timer = setTimeout(() => c.close(), ms);
      let out = "";
      const buf = new Uint8Array(4096);
      try {
        for (let n; !/\r\n\r\nok$/.test(out) && (n = await c.read(buf)) !== null;) {
          out += String.fromCharCode(...buf.subarray(0, n));
        }
      } catch { /* closed by the timer */ }
      clearTimeout(timer);
      try {
        c.close();
      } catch { /* closed */ }
      return out;
    };
    try {
      assert.match(await call(post("/funccall/t/n/f/fast"), 5000), /^HTTP\/1.1 200/);
      const blocker = await Deno.connect({ hostname: "127.0.0.1", port });
      await blocker.write(new TextEncoder().encode(post("/funccall/t/n/f/hold"))); // the one slot
      await new Promise((r) => setTimeout(r, 100));
      // Callers watching their wait leave after 30 ms; now and then the gateway's write of
      // their progress failed first, and their waiter stayed queued (1-2 in 100).
      const watch = "x-inferx-progress: 1\r\naccept: text/event-stream\r\n";
      for (let i = 0; i < 480; i += 8) {
        await Promise.all(
          Array.from({ length: 8 }, () => call(post("/funccall/t/n/f/x", watch), 30)),
        );
      }
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(g.f.cache.agent("t", "n", "f")!.queued, 0, "waiters of callers gone");
      blocker.close();
      await new Promise((r) => setTimeout(r, 300));
      // The slot is free for the next caller, not taken by a waiter whose caller left.
      const next = await call(post("/funccall/t/n/f/fast", "x-inferx-timeout: 2\r\n"), 5000);
      assert.match(next, /^HTTP\/1.1 200/);
    } finally {
      w.close();
      await g.close();
    }
  },
);

t("a streamed answer quiet past answer_timeout is cut and recorded as such", async () => {
  const g = await listening({ policy: { parallel: 1, max_replica: 1, answer_timeout: 0.3 } });
  let first = true;
  const w = scriptedWorker(async (c) => {
    const enc = new TextEncoder();
    if (!first) {
      return void await c.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    }
    first = false;
    await c.write(enc.encode(
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" +
        "9\r\ndata: 1\n\n\r\n",
    ));
    await c.read(new Uint8Array(1)); // then nothing, until the gateway cuts the connection
  });
  g.f.sched.endpoints.push(w.endpoint);
  const sweep = setInterval(() => g.f.deps.pool.sweep(), 100); // as the gateway's own sweep
  try {
    const cut = await rawCall(
      g.url,
      "POST /funccall/t/n/f/v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}",
    );
    assert.match(cut, /^HTTP\/1.1 200 /);
    assert.match(cut, /data: 1/);
    assert.ok(!cut.endsWith("0\r\n\r\n"), `not ended as if whole: ${JSON.stringify(cut)}`);
    const next = await post(`${g.url}/funccall/t/n/f/v1/completions`, {});
    assert.equal(await next.text(), "ok", "the slot was freed");
    assert.deepEqual(g.f.audit.requests.map((x) => [x.status, x.error ?? null]), [
      [200, "timeout"],
      [200, null],
    ]);
    // Counted as sent (200), and as cut: the 200s alone did not tell.
    const text = await g.f.deps.metrics!.registry.metrics();
    assert.match(text, /^inferx_requests_total\{function="t\/n\/f",code="200"\} 2$/m);
    assert.match(text, /^inferx_answers_cut_total\{function="t\/n\/f",reason="timeout"\} 1$/m);
  } finally {
    clearInterval(sweep);
    w.close();
    await g.close();
  }
});

t(
  "app routes: HEAD answers GET's length, and no 100 Continue goes out before the route reads",
  async () => {
    const g = await listening();
    try {
      const get = await fetch(`${g.url}/health`);
      const length = (await get.text()).length;
      const head = await rawCall(
        g.url,
        "HEAD /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
      );
      assert.match(head, new RegExp(`content-length: ${length}\\r\\n`));
      // A route that answers without reading the body: its answer, not 100 Continue first.
      const refused = await rawCall(
        g.url,
        "POST /nope HTTP/1.1\r\nhost: 127.0.0.1\r\nexpect: 100-continue\r\ncontent-length: 5000000\r\n\r\n",
      );
      assert.match(refused, /^HTTP\/1.1 404 /);
    } finally {
      await g.close();
    }
  },
);

t(
  "a client that sends its whole large body before reading gets the answer, not a reset",
  async () => {
    const g = await listening();
    try {
      const port = Number(new URL(g.url).port);
      for (const path of ["/funccall/t/n/nope/x", "/object/"]) {
        const c = await Deno.connect({ hostname: "127.0.0.1", port });
        const body = new Uint8Array(5 * 1024 * 1024).fill(120);
        const head = `PUT ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: text/plain\r\n` +
          `content-length: ${body.byteLength}\r\n\r\n`;
        // As Python's http.client does: the whole request first, then the answer.
        let sent = true;
        try {
          await c.write(new TextEncoder().encode(head));
          for (let o = 0; o < body.byteLength;) o += await c.write(body.subarray(o));
        } catch {
          sent = false;
        }
        let out = "";
        const buf = new Uint8Array(65536);
        for (let n; (n = await c.read(buf).catch(() => null)) !== null;) {
          out += new TextDecoder().decode(buf.subarray(0, n));
        }
        c.close();
        assert.ok(sent, `${path}: the body went out`);
        assert.match(out, /^HTTP\/1.1 4\d\d /, path);
        assert.match(out, /connection: close\r\n/, path);
      }
    } finally {
      await g.close();
    }
  },
);

t("HEAD on a streaming app route answers its head and lets the stream go", async () => {
  const g = await listening();
  try {
    const out = await rawCall(
      g.url,
      "HEAD /ui/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
      "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    );
    const heads = out.split("HTTP/1.1 ").filter(Boolean);
    assert.equal(heads.length, 2, out);
    assert.match(heads[0], /^200 [\s\S]*text\/event-stream/);
    assert.match(
      heads[1],
      /^200 [\s\S]*"status"/,
      "the next request on the connection is answered",
    );
  } finally {
    await g.close();
  }
});

t(
  "a caller who leaves a stream it watches (x-inferx-progress) is recorded 499, not the worker's failure",
  async () => {
    const g = await listening();
    const enc = new TextEncoder();
    const w = scriptedWorker(async (c) => {
      await c.write(
        enc.encode(
          "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        ),
      );
      const ev = 'data: {"choices":[{"text":"a"}]}\n\n';
      await c.write(enc.encode(`${ev.length.toString(16)}\r\n${ev}\r\n`));
      await c.read(new Uint8Array(16)).catch(() => null); // quiet until the gateway closes it
    });
    g.f.sched.endpoints.push(w.endpoint);
    const body = JSON.stringify({ model: "t/n/f", prompt: "x", stream: true });
    const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(g.url).port) });
    await c.write(enc.encode(
      `POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nx-inferx-progress: 1\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
    ));
    const buf = new Uint8Array(65536);
    let got = "";
    while (!got.includes('"text"')) {
      got += new TextDecoder().decode(buf.subarray(0, (await c.read(buf))!));
    }
    c.close(); // the caller goes while the worker thinks
    await until("the call to be recorded", () => Promise.resolve(g.f.audit.requests.length === 1));
    const [row] = g.f.audit.requests;
    assert.deepEqual([row.status, row.error], [499, "caller_gone"]);
    await g.close();
    w.close();
  },
);

t(
  "two credentials on one request are refused on the warm path as on every other route",
  async () => {
    const admin = "admin-key-0123456789";
    const g = await listening({ adminKey: admin });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint);
    try {
      const body = '{"prompt":"x"}';
      const ask = (path: string, ...fields: string[]) =>
        rawCall(
          g.url,
          `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\n` +
            `content-length: ${body.length}\r\n${
              fields.map((f) => `${f}\r\n`).join("")
            }\r\n${body}`,
        );
      const one = await ask("/funccall/t/n/f/v1/completions", `authorization: Bearer ${admin}`);
      assert.match(one, /^HTTP\/1.1 200 /);
      for (const path of ["/funccall/t/n/f/v1/completions", "/object/"]) {
        for (const fields of [["authorization", "authorization"], ["x-api-key", "x-api-key"]]) {
          const both = await ask(
            path,
            ...fields.map((f, i) =>
              f === "authorization" ? `${f}: Bearer ${i ? "other-key" : admin}` : `${f}: ${admin}`
            ),
          );
          assert.match(both, /^HTTP\/1.1 401 /, `${path} ${fields}: ${both}`);
          assert.match(both, /"code":"unauthenticated"/);
        }
      }
    } finally {
      await g.close();
      await w.close();
    }
  },
);

t("a target with a dot segment is refused 400 on every path, and reaches no worker", async () => {
  const g = await listening();
  const w = rawWorker();
  g.f.sched.endpoints.push(w.endpoint);
  for (
    const target of [
      "/funccall/t/n/f/../../../x/y/z/whoami",
      "/funccall/t/n/f/%2e%2E/%2e%2e/%2e%2e/x/y/z/whoami",
      "/funccall/t/n/f/./x",
      "/funccall/t/n/f/.%2e/x",
      // A URL takes a backslash for "/", and ends the path at "#".
      "/funccall/t/n/f/..\\..\\..\\x/y/z/whoami",
      "/funccall/t/n/f/g/..#",
    ]
  ) {
    for (const extra of ["", "x-inferx-progress: 1\r\n"]) {
      const out = await rawCall(
        g.url,
        `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}Connection: close\r\n\r\n`,
      );
      assert.match(out, /^HTTP\/1.1 400 /, `${target} ${extra}: ${out}`);
      assert.match(out, /"code":"invalid"/);
    }
  }
  assert.equal(w.received(), "", "no worker saw any of them");
  // Dots inside a segment are a name's: served.
  const ok = await rawCall(
    g.url,
    "GET /funccall/t/n/f/v1.2/a..b/.x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
  );
  assert.match(ok, /^HTTP\/1.1 200 /, ok);
  assert.ok(w.received().startsWith("GET /v1.2/a..b/.x "), w.received());
  await g.close();
  w.close();
});

t(
  "fields a message's Connection names, and every hop-by-hop field, stay on their hop both ways",
  async () => {
    const g = await listening();
    const w = rawWorker({
      answer: "HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: internal\r\n" +
        "Upgrade: h2c\r\nProxy-Connection: keep-alive\r\nTrailer: x-sum\r\nTE: trailers\r\n" +
        "x-kept: 1\r\ncontent-length: 2\r\n\r\nok",
    });
    g.f.sched.endpoints.push(w.endpoint);
    const out = await rawCall(
      g.url,
      "GET /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: X-Foo, HTTP2-Settings, close\r\n" +
        "X-Foo: secret\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nUpgrade: h2c\r\nTE: trailers\r\n" +
        "Proxy-Connection: keep-alive\r\nX-Bar: kept\r\n\r\n",
    );
    assert.match(out, /^HTTP\/1.1 200 /);
    const sent = w.received().toLowerCase();
    for (const gone of ["x-foo", "http2-settings", "upgrade", "te:", "proxy-connection"]) {
      assert.ok(!sent.includes(gone), `${gone} reached the worker: ${sent}`);
    }
    assert.ok(sent.includes("x-bar: kept"), sent);
    const answer = out.toLowerCase();
    for (const gone of ["x-secret", "upgrade", "proxy-connection", "trailer", "\r\nte:"]) {
      assert.ok(!answer.includes(gone), `${gone} reached the caller: ${answer}`);
    }
    assert.ok(answer.includes("x-kept: 1"), answer);
    await g.close();
    w.close();
  },
);

t("a worker's 101 Switching Protocols, never asked for, is a broken answer: 503", async () => {
  const g = await listening();
  const w = rawWorker({
    answer: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
  });
  g.f.sched.endpoints.push(w.endpoint);
  const out = await rawCall(
    g.url,
    "GET /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n",
  );
  assert.match(out, /^HTTP\/1.1 503 /, out);
  assert.match(out, /"code":"worker_failed"/);
  assert.ok(!/\r\nupgrade:/i.test(out), out);
  await g.close();
  w.close();
});

t(
  "an answer given before a body its client holds back for 100 Continue closes the connection",
  async () => {
    const g = await listening();
    // No such function: answered 404 at once, the body never asked for.
    const out = await rawCall(
      g.url,
      "POST /funccall/t/n/nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
      "{}GET /funccall/t/n/nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    const answers = out.match(/HTTP\/1.1 \d+/g) ?? [];
    assert.equal(answers.length, 1, out);
    assert.match(out, /^HTTP\/1.1 404 [^]*\r\nconnection: close\r\n/, out);
    await g.close();
  },
);

t("without auth, requests of web pages of other sites are refused 403 on every path", async () => {
  const g = await listening();
  const w = fakeWorker("w");
  g.f.sched.endpoints.push(w.endpoint);
  const port = new URL(g.url).port;
  const head = (method: string, path: string, fields: string) =>
    `${method} ${path} HTTP/1.1\r\n${fields}content-type: text/plain\r\ncontent-length: 2\r\n` +
    `connection: close\r\n\r\n{}`;
  for (
    const [path, fields] of [
      ["/apikeys", `host: 127.0.0.1:${port}\r\norigin: http://evil.example\r\n`],
      ["/funccall/t/n/f/x", `host: rebind.example:${port}\r\n`],
      ["/v1/completions", `host: 127.0.0.1:${port}\r\norigin: null\r\n`],
    ]
  ) {
    const answer = await rawCall(g.url, head("POST", path, fields));
    assert.match(answer, /^HTTP\/1.1 403 /, path);
    assert.match(answer, /"code":"forbidden".*without auth/, path);
  }
  // A Host that is none (two, a path in it) is malformed, loopback or not: 400, not 403.
  for (const fields of [`host: 127.0.0.1\r\nhost: 127.0.0.1\r\n`, `host: 127.0.0.1/x\r\n`]) {
    for (const path of ["/nodes", "/funccall/t/n/f/x"]) {
      const answer = await rawCall(g.url, head("POST", path, fields));
      assert.match(answer, /^HTTP\/1.1 400 /, `${path} ${fields}`);
      assert.match(answer, /Malformed HTTP request: (more than one Host|invalid Host header)/);
    }
  }
  // Recorded as any refused call is; no key was made.
  assert.deepEqual(g.f.audit.requests.map((x) => x.status), [403, 403, 400, 400]);
  assert.deepEqual((await (await fetch(`${g.url}/apikeys`)).json()).items, []);
  // Its own pages, and clients that are not browsers, are served.
  const own = await rawCall(
    g.url,
    head("POST", "/funccall/t/n/f/x", `host: 127.0.0.1:${port}\r\norigin: ${g.url}\r\n`),
  );
  assert.match(own, /^HTTP\/1.1 200 /);
  assert.equal((await post(`${g.url}/funccall/t/n/f/x`, {})).status, 200);
  await g.close();
  await w.close();
  // With auth on, credentials decide.
  const a = await listening({ adminKey: "admin-key-0123456789" });
  const r = await rawCall(a.url, head("GET", "/nodes", "host: rebind.example\r\n"));
  assert.match(r, /^HTTP\/1.1 401 /);
  await a.close();
});

t(
  "a stop answers waiting calls 503 at once and lets calls under way finish within the drain",
  async () => {
    const f = await gatewayFixture({ policy: { parallel: 1 } });
    const server = serveGateway(f.app, f.deps, { port: 0 });
    const url = `http://127.0.0.1:${server.addr.port}`;
    const slow = sseWorker(6, 400); // 2.4 s: longer than the 2 s a stop gave before
    f.sched.endpoints.push(`127.0.0.1:${slow.addr.port}`);
    const streaming = await post(`${url}/funccall/t/n/f/stream`, {});
    assert.equal(streaming.status, 200);
    const whole = streaming.text();
    // A second call waits for a second worker, which does not come.
    f.sched.hang = true;
    const waiting = post(`${url}/funccall/t/n/f/x`, {});
    const agent = f.cache.agent("t", "n", "f")!;
    while (agent.queued !== 1) await new Promise((r) => setTimeout(r, 10));
    const t0 = performance.now();
    const stopped = drainCalls(f.cache, server, 10_000);
    const refused = await waiting;
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.equal(refused.headers.get("x-should-retry"), null, "it may be sent again");
    assert.match(
      (await refused.json()).error.message,
      /gateway is stopping: the call was not sent/,
    );
    assert.ok(performance.now() - t0 < 1000, "at once, not at the drain's end");
    assert.equal(await whole, [1, 2, 3, 4, 5, 6].map((i) => `data: ${i}\n\n`).join(""));
    await stopped;
    assert.ok(performance.now() - t0 < 5000, "the stop ended with the last call");
    await until("both calls audited", () => f.audit.requests.length === 2);
    assert.deepEqual(
      f.audit.requests.map((x) => [x.status, x.error ?? null]).sort(),
      [[200, null], [503, "unavailable"]],
    );
    await f.close();
    await slow.shutdown();
  },
);

t(
  "a call still under way when the drain runs out is cut and recorded as gateway_stopped",
  async () => {
    const f = await gatewayFixture();
    const server = serveGateway(f.app, f.deps, { port: 0 });
    const slow = sseWorker(20, 200);
    f.sched.endpoints.push(`127.0.0.1:${slow.addr.port}`);
    const r = await post(`http://127.0.0.1:${server.addr.port}/funccall/t/n/f/stream`, {});
    assert.equal(r.status, 200);
    const body = r.text().catch((err) => `cut: ${err}`);
    await drainCalls(f.cache, server, 300);
    assert.match(await body, /^cut: /, "the chunked answer breaks off: the caller sees it cut");
    await until("the cut call audited", () => f.audit.requests.length === 1);
    assert.deepEqual(f.audit.requests.map((x) => [x.status, x.error]), [[200, "gateway_stopped"]]);
    await f.close();
    await slow.shutdown();
  },
);

/** A worker answering with `mb` MiB, chunked in 64 KiB pieces (byte i of the body: i % 251). */
function bigWorker(mb: number, breakAtMb?: number) {
  const sent = { done: false };
  const piece = 64 * 1024;
  const w = scriptedWorker(async (c) => {
    const enc = new TextEncoder();
    const write = async (b: Uint8Array) => {
      for (let o = 0; o < b.length;) o += await c.write(b.subarray(o));
    };
    await write(enc.encode(
      "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    ));
    for (let at = 0; at < mb * 1024 * 1024; at += piece) {
      if (breakAtMb !== undefined && at >= breakAtMb * 1024 * 1024) {
        sent.done = true;
        return; // the connection closed mid-answer, with no last chunk
      }
      const body = new Uint8Array(piece).map((_, i) => (at + i) % 251);
      await write(enc.encode(`${piece.toString(16)}\r\n`));
      await write(body);
      await write(enc.encode("\r\n"));
    }
    await write(enc.encode("0\r\n\r\n"));
    sent.done = true;
  });
  return { ...w, sent };
}

/**
 * Runs `test` on a gateway that spills to a directory of its own (64 MiB),
 * with `w` its worker and `c` a caller that asked for `/big`; all closed
 * and removed after.
 */
async function spillingCall(
  w: ReturnType<typeof bigWorker>,
  test: (
    g: Awaited<ReturnType<typeof listening>>,
    w: ReturnType<typeof bigWorker>,
    c: Deno.Conn,
    dir: string,
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "inferx-spill-test-" });
  const g = await listening({ spill: { dir, limit: 64 * 1024 * 1024 } });
  g.f.sched.endpoints.push(w.endpoint);
  const c = await askBig(g.url);
  try {
    await test(g, w, c, dir);
  } finally {
    c.close();
    w.close();
    await g.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Waits until what answers held read ahead, in memory and on disk, is all given back. */
async function allGivenBack(budget: { held: number; spilled: number }): Promise<void> {
  await until("nothing held", () => budget.held === 0 && budget.spilled === 0);
}

/** A connection to the gateway at `url` on which `GET /funccall/t/n/f/big` was sent. */
async function askBig(url: string): Promise<Deno.Conn> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(url).port) });
  await c.write(
    new TextEncoder().encode("GET /funccall/t/n/f/big HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"),
  );
  return c;
}

/**
 * Reads a 200 answer of {@linkcode bigWorker}'s to its last chunk from `c`
 * (up to `max` body bytes), undoes the chunked framing (the gateway's pieces
 * are its own) and checks its bytes; the body's length. Throws when the
 * connection closed before the last chunk.
 */
async function readChunked(c: Deno.Conn, max: number): Promise<number> {
  const all = new Uint8Array(max + 1024 * 1024);
  let got = 0;
  const tail = () => new TextDecoder("latin1").decode(all.subarray(Math.max(0, got - 5), got));
  for (let n; tail() !== "0\r\n\r\n" && (n = await c.read(all.subarray(got))) !== null;) {
    got += n;
  }
  const text = (a: number, b: number) => new TextDecoder("latin1").decode(all.subarray(a, b));
  const find = (from: number) =>
    all.subarray(from, got).findIndex((b, i, a) => b === 13 && a[i + 1] === 10) + from;
  let at = text(0, got > 4096 ? 4096 : got).indexOf("\r\n\r\n") + 4;
  assert.match(text(0, at), /^HTTP\/1.1 200 /);
  let body = 0;
  for (let size; (size = parseInt(text(at, find(at)), 16)) > 0;) {
    at = find(at) + 2;
    for (let i = 0; i < size; i += 4099) {
      assert.equal(all[at + i], (body + i) % 251, `byte ${body + i}`);
    }
    body += size;
    at += size + 2;
  }
  if (tail() !== "0\r\n\r\n") throw new Error(`the answer was cut after ${body} bytes`);
  return body;
}

t(
  "a streamed answer is read ahead of its caller: the worker's slot goes back when the worker is done",
  async () => {
    const g = await listening({ policy: { parallel: 1, max_replica: 1 } });
    const w = bigWorker(2);
    g.f.sched.endpoints.push(w.endpoint);
    try {
      const answer = await forward(g.f.deps, {
        target: { tenant: "t", namespace: "n", func: "f" },
        method: "GET",
        path: "/big",
        headers: [],
        body: null,
        replayable: true,
        t0: performance.now(),
      });
      const agent = g.f.cache.agent("t", "n", "f")!;
      // Nothing read by the caller yet: the worker has sent all of it, and its slot is free.
      await until("the worker's answer read whole", () => w.sent.done);
      await until("the slot back", () => agent.workers[0].inflight === 0);
      assert.ok(g.f.deps.readAhead.held >= 2 * 1024 * 1024 - 64 * 1024, "held for the caller");
      let n = 0;
      for (let c; (c = await answer.read()) !== null;) {
        for (let i = 0; i < c.length; i += 4099) assert.equal(c[i], (n + i) % 251, `byte ${n + i}`);
        n += c.length;
      }
      assert.equal(n, 2 * 1024 * 1024, "the whole answer, in order");
      answer.finish(true);
      assert.equal(g.f.deps.readAhead.held, 0);
      assert.equal(agent.workers[0].inflight, 0, "released once");
    } finally {
      w.close();
      await g.close();
    }
  },
);

t(
  "with a spill directory, an answer larger than memory's share is read to its end ahead of a caller who reads nothing; it gets all of it later",
  () =>
    spillingCall(bigWorker(24), async (g, w, c, dir) => {
      // The caller reads nothing: past memory's 8 MiB the rest goes to disk, and the worker is
      // done and its slot back before the caller has read a byte.
      await until("the worker's answer read whole", () => w.sent.done, 20_000);
      await until("the slot back", () => g.f.cache.agent("t", "n", "f")!.workers[0].inflight === 0);
      const spilled = g.f.deps.readAhead.spilled;
      assert.ok(spilled >= 8 * 1024 * 1024, `on disk: ${spilled}`);
      assert.ok(g.f.deps.readAhead.held <= 8 * 1024 * 1024 + 64 * 1024, "memory holds its share");
      const scraped = await g.f.deps.metrics.registry.metrics();
      assert.equal(
        Number(/^inferx_read_ahead_spilled_bytes (\d+)$/m.exec(scraped)?.[1]),
        spilled,
        "the metric shows it",
      );
      assert.deepEqual([...Deno.readDirSync(dir)], [], "no file left to see in the directory");
      assert.equal(await readChunked(c, 24 * 1024 * 1024), 24 * 1024 * 1024, "all of it, in order");
      await allGivenBack(g.f.deps.readAhead);
    }),
);

t(
  "a worker that breaks off an answer read ahead (to disk) is released at once; its caller gets what came, then a cut answer",
  () =>
    // Past what memory (8 MiB) and the kernel's buffers (the gateway's send buffer grows to 4
    // MiB) hold of an answer its caller does not read: 12 MiB spilled by a hair, or not at all.
    spillingCall(bigWorker(24, 16), async (g, w, c) => {
      await until("the worker broke off", () => w.sent.done, 20_000);
      // The caller has read nothing: the slot is back all the same.
      await until("the slot back", () => g.f.cache.agent("t", "n", "f")!.workers[0].inflight === 0);
      assert.ok(g.f.deps.readAhead.spilled > 0, "part of it on disk");
      await assert.rejects(
        readChunked(c, 24 * 1024 * 1024),
        /cut after 16777216 bytes/,
        "what came, in order, and no last chunk",
      );
      await allGivenBack(g.f.deps.readAhead);
      await until("audited", () => g.f.audit.requests.length === 1);
      assert.equal(g.f.audit.requests[0].error, "worker_failed");
    }),
);

t(
  "through the listener, a caller that reads late gets the whole answer; what was held goes back",
  async () => {
    const g = await listening();
    const w = bigWorker(24);
    g.f.sched.endpoints.push(w.endpoint);
    const c = await askBig(g.url);
    try {
      // The caller reads nothing for a while: the gateway reads ahead for it, up to its share.
      await until("read ahead", () => g.f.deps.readAhead.held >= 8 * 1024 * 1024);
      assert.ok(!w.sent.done, "24 MiB is more than the share and the sockets hold");
      const scraped = await g.f.deps.metrics.registry.metrics();
      const held = Number(/^inferx_read_ahead_bytes (\d+)$/m.exec(scraped)?.[1]);
      assert.ok(held >= 8 * 1024 * 1024, `the metric shows it: ${held}`);
      assert.equal(await readChunked(c, 24 * 1024 * 1024), 24 * 1024 * 1024, "all of it, in order");
      await until("nothing held", () => g.f.deps.readAhead.held === 0);
      await until("the slot back", () => g.f.cache.agent("t", "n", "f")!.workers[0].inflight === 0);
      assert.equal(w.sent.done, true);
    } finally {
      c.close();
      w.close();
      await g.close();
    }
  },
);

t(
  "a call's JSON body too heavy to parse is refused 400 before it is parsed; other types pass unread",
  async () => {
    const g = await listening({ bodyLimit: 4 << 20 });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint, w.endpoint);
    try {
      const heavy = "[" + "[],".repeat(100_000) + "[]]";
      const send = (path: string, type: string) =>
        fetch(`${g.url}${path}`, {
          method: "POST",
          headers: { "content-type": type },
          body: heavy,
        });
      for (const path of ["/funccall/t/n/f/x", "/v1/completions"]) {
        const r = await send(path, "application/json");
        assert.equal(r.status, 400, path);
        const e = (await r.json()).error;
        assert.equal(e.code, "invalid");
        assert.match(
          e.message,
          /^Request body holds more than 100000 arrays, objects and object members/,
        );
      }
      assert.equal(g.f.sched.leases.length, 0, "no worker was asked for");
      // As bytes of another type, a /funccall body is the worker's to read.
      const raw = await send("/funccall/t/n/f/x", "application/octet-stream");
      assert.equal(raw.status, 200);
      assert.equal((await raw.json()).body.length, heavy.length);
      // Calls go on as before.
      const ok = await post(`${g.url}/funccall/t/n/f/x`, { prompt: "x" });
      assert.equal(ok.status, 200);
      await ok.body?.cancel();
    } finally {
      await g.close();
      await w.close();
    }
  },
);

t(
  "a large JSON call body is read off the event loop and forwarded whole; a broken one is refused",
  async () => {
    const g = await listening({ bodyLimit: 4 << 20 });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint, w.endpoint);
    try {
      const big = JSON.stringify({ model: "t/n/f", max_tokens: 3, input: Array(600_000).fill(12) });
      assert.ok(big.length > 1 << 20);
      for (const path of ["/funccall/t/n/f/x", "/v1/completions"]) {
        const r = await fetch(`${g.url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: big,
        });
        assert.equal(r.status, 200, path);
        assert.equal((await r.json()).body, big, "the worker got it as it came");
      }
      const broken = await fetch(`${g.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: big.slice(0, -1),
      });
      assert.equal(broken.status, 400);
      assert.match((await broken.json()).error.message, /^Request body is not valid JSON/);
    } finally {
      await g.close();
      await w.close();
    }
  },
);

t(
  "bodies arriving slowly hold no more than the gateway's budget: past it a body is refused 503",
  async () => {
    const g = await listening({ bodyLimit: 4 << 20, bodyBufferBytes: 1 << 20 });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint, w.endpoint, w.endpoint);
    const port = Number(new URL(g.url).port);
    const head = (n: number) =>
      new TextEncoder().encode(
        `POST /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: ${n}\r\n\r\n`,
      );
    const json = (n: number) => new TextEncoder().encode(`"${"x".repeat(n - 2)}"`);
    const answerOf = async (c: Deno.Conn) => {
      const buf = new Uint8Array(64 * 1024);
      let text = "";
      for (let n; !/\r\n\r\n[^]*\}/.test(text) && (n = await c.read(buf)) !== null;) {
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      return text;
    };
    const a = await Deno.connect({ hostname: "127.0.0.1", port });
    const b = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      // A sends 700 KB of an 800 KB body and waits: held while it arrives.
      const bodyA = json(800_000);
      await a.write(head(bodyA.byteLength));
      for (let o = 0; o < 700_000; o += 100_000) await a.write(bodyA.subarray(o, o + 100_000));
      await until("A's bytes to be held", () => g.f.deps.bodyBudget.held >= 600_000);
      // B's 600 KB would take the budget (1 MiB) past its limit: refused, its connection closed.
      const bodyB = json(600_000);
      await b.write(head(bodyB.byteLength));
      await b.write(bodyB).catch(() => {}); // the gateway may close before it has it all
      const refused = await answerOf(b);
      assert.match(refused, /^HTTP\/1.1 503 /);
      assert.match(refused, /retry-after: 1/i);
      assert.match(refused, /connection: close/i);
      assert.match(refused, /INFERX_BODY_BUFFER_MB/);
      // A's call goes on when the rest comes; what it held is given back.
      await a.write(bodyA.subarray(700_000));
      assert.match(await answerOf(a), /^HTTP\/1.1 200 /);
      assert.equal(g.f.deps.bodyBudget.held, 0);
      const after = await fetch(`${g.url}/funccall/t/n/f/x`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: new TextDecoder().decode(bodyB),
      });
      assert.equal(after.status, 200, "room again");
      await after.body?.cancel();
    } finally {
      a.close();
      b.close();
      await g.close();
      await w.close();
    }
  },
);

t(
  "a small body of another type than JSON is read whole before the call takes a worker's slot",
  async () => {
    const g = await listening({ policy: { max_replica: 1, parallel: 1, queue_timeout: 1 } });
    const w = fakeWorker("w");
    g.f.sched.endpoints.push(w.endpoint, w.endpoint);
    const a = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(g.url).port) });
    try {
      // A sends half its body and waits: it holds no slot meanwhile.
      await a.write(
        new TextEncoder().encode(
          "POST /funccall/t/n/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: text/plain\r\n" +
            "content-length: 100\r\n\r\n" + "a".repeat(50),
        ),
      );
      await new Promise((r) => setTimeout(r, 100));
      // The function's one slot is free for B (while A held it, B waited out its queue_timeout: 504).
      const b = await fetch(`${g.url}/funccall/t/n/f/y`, {
        method: "POST",
        headers: { "content-type": "text/plain" },
        body: "b",
      });
      assert.equal(b.status, 200);
      await b.body?.cancel();
      await a.write(new TextEncoder().encode("a".repeat(50)));
      const buf = new Uint8Array(4096);
      let text = "";
      for (let n; !/\r\n\r\n[^]*\}/.test(text) && (n = await a.read(buf)) !== null;) {
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      assert.match(text, /^HTTP\/1.1 200 /);
      assert.match(text, /"body":"a{100}"/, "the worker got it whole");
    } finally {
      a.close();
      await g.close();
      await w.close();
    }
  },
);

/**
 * The answers to requests (`[head, JSON body]`, the head's lines up to its framing) whose heads
 * and first 5 bytes of body reach `url`'s gateway before `admin` revokes API key `keyId`, and
 * the rest of each body after.
 */
async function revokedMidBody(
  url: string,
  admin: Record<string, string>,
  keyId: string,
  requests: readonly (readonly [string, string])[],
): Promise<string[]> {
  const port = Number(new URL(url).port);
  const conns = await Promise.all(requests.map(async ([head, body]) => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    // JSON unless the head names its own type.
    const type = /content-type:/i.test(head) ? "" : "content-type: application/json\r\n";
    await c.write(
      new TextEncoder().encode(
        `${head}${type}content-length: ${body.length}\r\n\r\n` + body.slice(0, 5),
      ),
    );
    return c;
  }));
  await new Promise((r) => setTimeout(r, 100)); // the gateway has the heads
  const revoked = await fetch(`${url}/apikeys/${keyId}`, { method: "DELETE", headers: admin });
  assert.equal(revoked.status, 200);
  await revoked.body?.cancel();
  return await Promise.all(conns.map(async (c, i) => {
    await c.write(new TextEncoder().encode(requests[i][1].slice(5)));
    const buf = new Uint8Array(64 * 1024);
    let out = "";
    while (!out.includes("}")) {
      const n = await c.read(buf);
      if (n === null) break;
      out += new TextDecoder().decode(buf.subarray(0, n));
    }
    c.close();
    return out;
  }));
}

t(
  "a key or object write whose body comes after its key was revoked is refused, nothing written",
  async () => {
    const admin = { authorization: "Bearer admin-key-0123456789" };
    const g = await listening({ adminKey: "admin-key-0123456789" });
    const made = await (await post(`${g.url}/apikeys`, { scope: "full", tenant: "t" }, admin))
      .json();
    const policy = { type: "funcpolicy", tenant: "t", namespace: "n" };
    const old = await post(
      `${g.url}/object/`,
      { ...policy, name: "old", object: {} },
      admin,
      "PUT",
    );
    assert.equal(old.status, 201);
    const { revision } = await old.json();
    const writes: [string, string][] = [
      ["POST /apikeys", JSON.stringify({ scope: "full", tenant: "t", name: "minted" })],
      ["PUT /object/", JSON.stringify({ ...policy, name: "new", object: {} })],
      [
        "POST /object/",
        JSON.stringify({ ...policy, name: "old", revision, object: { max_replica: 9 } }),
      ],
    ];
    const answers = await revokedMidBody(
      g.url,
      admin,
      made.id,
      writes.map(([line, body]) =>
        [
          `${line} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${made.key}\r\n`,
          body,
        ] as const
      ),
    );
    for (const [i, a] of answers.entries()) {
      assert.match(a, /^HTTP\/1\.1 401 /, `${writes[i][0]}: ${a}`);
      assert.match(a, /API key [^ ]+ was revoked while the request's body was being sent/);
    }
    const keys = await (await fetch(`${g.url}/apikeys`, { headers: admin })).json();
    assert.deepEqual(keys.items.map((k: { name: string }) => k.name), [], "no key minted");
    const got = (name: string) =>
      fetch(`${g.url}/object/funcpolicy/t/n/${name}`, { headers: admin });
    const created = await got("new");
    assert.equal(created.status, 404, "nothing created");
    await created.body?.cancel();
    const kept = await (await got("old")).json();
    assert.equal(kept.revision, revision, "nothing updated");
    await g.close();
  },
);

t(
  "a call whose body comes after its key was revoked is refused, sync, OpenAI-style and async",
  async () => {
    const admin = { authorization: "Bearer admin-key-0123456789" };
    const g = await listening({
      adminKey: "admin-key-0123456789",
      bodyLimit: 4 << 20,
      calls: { maxBytes: 4 << 20 },
    });
    const w = fakeWorker("w1");
    g.f.sched.endpoints.push(w.endpoint);
    const made = await (await post(`${g.url}/apikeys`, { scope: "inference", tenant: "t" }, admin))
      .json();
    const key = { authorization: `Bearer ${made.key}` };
    const body = JSON.stringify({ model: "t/n/f", prompt: "x" });
    const answers = await revokedMidBody(
      g.url,
      admin,
      made.id,
      [
        ["/funccall/t/n/f/v1/completions", ""],
        ["/v1/completions", ""],
        ["/funccall/t/n/f/v1/completions", "prefer: respond-async\r\n"],
        // Past 1 MiB and not JSON, an asynchronous call's body streams: read after the head's
        // checks, in the accept itself.
        [
          "/funccall/t/n/f/upload",
          "prefer: respond-async\r\ncontent-type: application/octet-stream\r\n",
          "x".repeat(1_100_000),
        ],
      ].map(([path, extra, own]) =>
        [
          `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: ${key.authorization}\r\n${extra}`,
          own ?? body,
        ] as const
      ),
    );
    for (const a of answers) {
      assert.match(a, /^HTTP\/1\.1 401 /, a);
      assert.match(a, /API key [^ ]+ was revoked while the request's body was being sent/);
    }
    assert.equal(g.f.sched.leases.length, 0, "nothing ran");
    const calls = await (await fetch(`${g.url}/calls`, { headers: admin })).json();
    assert.equal(calls.items.length, 0, "nothing stored");
    await g.close();
    await w.close();
  },
);
