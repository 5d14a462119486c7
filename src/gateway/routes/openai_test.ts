import assert from "node:assert/strict";
import {
  addFunction,
  addNamespace,
  fakeWorker,
  gatewayFixture,
  scriptedWorker,
} from "../testing.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

const complete = (
  f: Awaited<ReturnType<typeof gatewayFixture>>,
  body: unknown,
  headers: Record<string, string> = {},
  path = "/v1/completions",
) =>
  f.app.request(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

t("/v1/models lists the functions as models named tenant/namespace/name", async () => {
  const f = await gatewayFixture();
  const r = await f.app.request("/v1/models");
  // `created`: when the function was, in seconds (as OpenAI's clients take it).
  const fn = await f.meta.get({ type: "function", tenant: "t", namespace: "n", name: "f" });
  const created = Math.floor(Date.parse(JSON.parse(fn!.value).created_at) / 1000);
  assert.ok(Math.abs(created - Date.now() / 1000) < 600, String(created));
  assert.deepEqual(await r.json(), {
    object: "list",
    data: [{ id: "t/n/f", object: "model", created, owned_by: "t" }],
  });
  // One model, as `models.retrieve` asks: by full id (slashes escaped or not) or bare name.
  for (const path of ["/v1/models/t%2Fn%2Ff", "/v1/models/t/n/f", "/v1/models/f"]) {
    const one = await f.app.request(path);
    assert.equal(one.status, 200, path);
    assert.deepEqual(await one.json(), { id: "t/n/f", object: "model", created, owned_by: "t" });
  }
  for (const path of ["/v1/models/t/n/nope", "/v1/models/nope", "/v1/models/"]) {
    const none = await f.app.request(path);
    assert.equal(none.status, 404, path);
    await none.body?.cancel();
  }
  const unnamed = await (await f.app.request("/v1/models/")).json();
  assert.equal(
    unnamed.error.message,
    "No model named: GET /v1/models/{model} (GET /v1/models lists them)",
  );
  const garbled = await f.app.request("/v1/models/%ZZ");
  assert.equal(garbled.status, 400);
  assert.match(
    (await garbled.json()).error.message,
    /^Invalid model id "%ZZ": bad percent-encoding$/,
  );
  // A trailing slash is another path, not a known one with the wrong method.
  const slash = await complete(f, { model: "f", prompt: "x" }, {}, "/v1/completions/");
  assert.equal(slash.status, 404);
  await slash.body?.cancel();
  await f.close();
});

t("/v1/completions calls the function the model names, by full id or bare name", async () => {
  const f = await gatewayFixture();
  const w = fakeWorker("w");
  f.sched.endpoints.push(w.endpoint);
  for (const model of ["t/n/f", "f"]) {
    const r = await complete(f, { model, prompt: "x" });
    assert.equal(r.status, 200);
    const body = await r.json();
    assert.equal(body.path, "/v1/completions");
    assert.equal(JSON.parse(body.body).model, model);
  }
  const chat = await f.app.request("/v1/chat/completions?api-version=2024-06-01", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "f", messages: [] }),
  });
  const got = await chat.json();
  assert.equal(got.path, "/v1/chat/completions");
  assert.equal(got.query, "?api-version=2024-06-01", "the query goes to the worker too");
  // So it does for a call that shows its progress (and one accepted to run later).
  const progress = await f.app.request("/v1/chat/completions?api-version=2024-06-01", {
    method: "POST",
    headers: { "content-type": "application/json", "x-inferx-progress": "1" },
    body: JSON.stringify({ model: "f", messages: [] }),
  });
  assert.match(
    await progress.text(),
    /\\"query\\":\\"\?api-version=2024-06-01\\"|"query":"\?api-version=2024-06-01"/,
  );
  await f.close();
  await w.close();
});

t("/v1 refuses bad calls with clear errors", async () => {
  const f = await gatewayFixture();
  const cases: [unknown, Record<string, string>, number, RegExp][] = [
    [{ prompt: "x" }, {}, 400, /model/],
    [{ model: "t/n/nope" }, {}, 404, /model t\/n\/nope does not exist/],
    [{ model: "nope" }, {}, 404, /model nope does not exist/],
    ["{oops", {}, 400, /not valid JSON/],
    [{ model: "f" }, { "content-type": "text/plain" }, 415, /takes a JSON body/],
    [{ model: "f" }, { "content-type": "application/x-ndjson" }, 415, /takes a JSON body/],
  ];
  for (const [body, headers, status, re] of cases) {
    const r = await complete(f, body, headers);
    assert.equal(r.status, status, JSON.stringify(body));
    const e = (await r.json()).error;
    assert.match(e.message, re);
    // In OpenAI's shape as well: its clients read `type` and `param`.
    assert.equal(e.type, "invalid_request_error");
    assert.ok("param" in e);
    // An unknown model has OpenAI's own code, as its clients tell it apart.
    if (status === 404) assert.equal(e.code, "model_not_found");
  }
  const retrieve = await (await f.app.request("/v1/models/nope")).json();
  assert.equal(retrieve.error.code, "model_not_found");
  const noModel = await (await complete(f, { prompt: "x" })).json();
  assert.deepEqual([noModel.error.code, noModel.error.param], ["invalid", "model"]);
  // A /funccall error keeps the platform's own shape.
  const fc = await f.app.request("/funccall/t/n/nope/x", { method: "POST" });
  assert.deepEqual(Object.keys((await fc.json()).error).sort(), ["code", "message"]);
  await f.close();
});

t("/v1 errors carry OpenAI's type by status (401: authentication_error)", async () => {
  const f = await gatewayFixture({ adminKey: "admin-key-0123456789" });
  const r = await f.app.request("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer wrong-key" },
    body: JSON.stringify({ model: "f" }),
  });
  assert.equal(r.status, 401);
  assert.deepEqual((await r.json()).error.type, "authentication_error");
  await f.close();
});

t("a failing /v1 call is counted in the metrics and the audit like a /funccall one", async () => {
  const f = await gatewayFixture();
  await (await complete(f, { model: "t/n/nope" })).body?.cancel();
  await (await complete(f, { model: "f", prompt: 1 }, { "x-inferx-timeout": "never" })).body
    ?.cancel();
  await (await f.app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-inferx-timeout": "never" },
    body: "{}",
  })).body?.cancel();
  const text = await (await f.app.request("/metrics")).text();
  assert.match(text, /inferx_requests_total\{function="\(none\)",code="404"\} 1/);
  assert.match(text, /inferx_requests_total\{function="t\/n\/f",code="400"\} 2/);
  assert.deepEqual(
    f.audit.requests.map((r) => [r.path, r.tenant, r.func, r.status, r.error]),
    [
      ["/v1/completions", "t", "nope", 404, "not_found"],
      ["/v1/completions", "t", "f", 400, "invalid"],
      ["/funccall/t/n/f/v1/completions", "t", "f", 400, "invalid"],
    ],
  );
  await f.close();
});

t("a JSON answer the worker sends in pieces still has its usage in the audit", async () => {
  const enc = new TextEncoder();
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    await req.arrayBuffer();
    // Chunked: the body does not come with the head.
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        c.enqueue(enc.encode('{"id":"x","choices":[{"text":"hello"}],'));
        await new Promise((r) => setTimeout(r, 30));
        c.enqueue(
          enc.encode('"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}'),
        );
        c.close();
      },
    });
    return new Response(body, { headers: { "content-type": "application/json" } });
  });
  const f = await gatewayFixture();
  f.sched.endpoints.push(`127.0.0.1:${server.addr.port}`);
  const r = await complete(f, { model: "t/n/f", prompt: "x" });
  assert.equal((await r.json()).usage.completion_tokens, 7);
  const row = f.audit.requests.at(-1)!;
  assert.deepEqual([row.promptTokens, row.completionTokens], [3, 7]);
  assert.ok(row.ttftMs! >= 0);
  await f.close();
  await server.shutdown();
});

t(
  "a bare model name two visible functions share is refused naming both; a key that sees one calls it",
  async () => {
    const admin = "admin-key-0123456789";
    const f = await gatewayFixture({ adminKey: admin });
    const w = fakeWorker("w");
    f.sched.endpoints.push(w.endpoint);
    const ns = {
      type: "namespace" as const,
      tenant: "t",
      namespace: "system",
      name: "m",
      object: {},
    };
    await f.meta.create(ns);
    await addFunction(f, "t", "m", "f");
    const r = await complete(f, { model: "f", prompt: "x" }, { authorization: `Bearer ${admin}` });
    assert.equal(r.status, 400);
    const { error } = await r.json();
    assert.equal(error.code, "invalid");
    assert.match(
      error.message,
      /model: f names 2 functions \(t\/m\/f, t\/n\/f\): use tenant\/namespace\/name/,
    );
    const made = await f.app.request("/apikeys", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
      body: JSON.stringify({ scope: "inference", tenant: "t", namespace: "n", name: "ci" }),
    });
    const key = (await made.json()).key;
    const ok = await complete(f, { model: "f", prompt: "x" }, { authorization: `Bearer ${key}` });
    assert.equal(ok.status, 200, "the key sees t/n/f only");
    await ok.body?.cancel();
    await f.close();
    await w.close();
  },
);

t("OpenAI's client does not send again a call its worker may have run", async () => {
  const { default: OpenAI } = await import("openai");
  const f = await gatewayFixture({ policy: { parallel: 1, max_replica: 1 } });
  let seen = 0;
  const w = scriptedWorker(() => (seen++, Promise.resolve())); // takes it, closes, answers nothing
  f.sched.endpoints.push(w.endpoint);
  // The client's own retries are on (2, its default): it retries any 5xx unless told not to.
  const client = new OpenAI({
    baseURL: "http://gateway.test/v1",
    apiKey: "none",
    fetch: async (url: string | URL | Request, init?: RequestInit) =>
      await f.app.request(String(url).replace("http://gateway.test", ""), init),
  });
  try {
    const err = await client.completions.create({ model: "f", prompt: "x", max_tokens: 4 }).then(
      () => assert.fail("answered"),
      (e) => e,
    );
    assert.equal(err.status, 503);
    assert.equal(err.error?.code, "worker_failed");
    assert.equal(seen, 1, "the worker had the call once (it had it 3 times: 5xx are retried)");
  } finally {
    await f.close();
    await w.close();
  }
});

t(
  "a key may call public's functions as a caller without one may; a bare name finds the key's own first",
  async () => {
    const admin = "admin-key-0123456789";
    const f = await gatewayFixture({ adminKey: admin });
    const w = fakeWorker("w");
    f.sched.endpoints.push(w.endpoint, w.endpoint, w.endpoint, w.endpoint);
    const system = { tenant: "system", namespace: "system" };
    await f.meta.create({ type: "tenant", ...system, name: "public", object: {} });
    await f.meta.create({
      type: "namespace",
      tenant: "public",
      namespace: "system",
      name: "demo",
      object: {},
    });
    for (const name of ["f", "g"]) await addFunction(f, "public", "demo", name);
    const made = await f.app.request("/apikeys", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
      body: JSON.stringify({ scope: "inference", tenant: "t", name: "app" }),
    });
    const bearer = { authorization: `Bearer ${(await made.json()).key}` };
    const called = async (body: unknown, headers: Record<string, string>) => {
      const r = await complete(f, body, headers);
      assert.equal(r.status, 200, JSON.stringify(body));
      await r.body?.cancel();
      const l = f.sched.leases.at(-1)!;
      return `${l.tenant}/${l.namespace}/${l.func}`;
    };
    try {
      // Before, the key got 403 where a caller without credentials was let in.
      assert.equal(await called({ model: "public/demo/g", prompt: "x" }, bearer), "public/demo/g");
      assert.equal(await called({ model: "g", prompt: "x" }, bearer), "public/demo/g");
      // Its own f is not made ambiguous by public's.
      assert.equal(await called({ model: "f", prompt: "x" }, bearer), "t/n/f");
      assert.equal(await called({ model: "f", prompt: "x" }, {}), "public/demo/f");
      const listed = await (await f.app.request("/v1/models", { headers: bearer })).json();
      assert.deepEqual(listed.data.map((m: { id: string }) => m.id).sort(), [
        "public/demo/f",
        "public/demo/g",
        "t/n/f",
      ]);
      const one = await (await f.app.request("/v1/models/f", { headers: bearer })).json();
      assert.equal(one.id, "t/n/f");
      const through = await f.app.request("/funccall/public/demo/g/x", { headers: bearer });
      assert.equal(through.status, 200, "through /funccall too");
      await through.body?.cancel();
      // Nothing more than calling: public's objects stay unreadable to it.
      const obj = await f.app.request("/object/function/public/demo/g", { headers: bearer });
      assert.equal(obj.status, 403);
      await obj.body?.cancel();
    } finally {
      await f.close();
      await w.close();
    }
  },
);

t(
  "a model the caller may not call is one that does not exist for it, on every /v1 route",
  async () => {
    const admin = "admin-key-0123456789";
    const f = await gatewayFixture({ adminKey: admin });
    const w = fakeWorker("w");
    f.sched.endpoints.push(w.endpoint);
    await addNamespace(f, "u", "m");
    await addFunction(f, "u", "m", "h");
    const made = await f.app.request("/apikeys", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
      body: JSON.stringify({ scope: "inference", tenant: "u", name: "app" }),
    });
    const bearer = { authorization: `Bearer ${(await made.json()).key}` };
    try {
      // t/n/f exists, t/n/nope does not: the key, which reaches tenant u only, hears the same.
      for (const model of ["t/n/f", "t/n/nope", "f"]) {
        for (const path of ["/v1/completions", "/v1/chat/completions"]) {
          const r = await complete(f, { model, prompt: "x", messages: [] }, bearer, path);
          assert.equal(r.status, 404, `${path} ${model}`);
          const e = (await r.json()).error;
          assert.equal(e.code, "model_not_found", `${path} ${model}`);
          assert.equal(
            e.message,
            `The model ${model} does not exist or you do not have access to it`,
          );
        }
        const one = await f.app.request(`/v1/models/${encodeURIComponent(model)}`, {
          headers: bearer,
        });
        assert.equal(one.status, 404, model);
        assert.equal((await one.json()).error.code, "model_not_found");
      }
      const own = await complete(f, { model: "u/m/h", prompt: "x" }, bearer);
      assert.equal(own.status, 200);
      await own.body?.cancel();
      // /funccall keeps the platform's answer: 403 for a function of another tenant.
      const fc = await f.app.request("/funccall/t/n/f/x", { method: "POST", headers: bearer });
      assert.equal(fc.status, 403);
      await fc.body?.cancel();
    } finally {
      await f.close();
      await w.close();
    }
  },
);
