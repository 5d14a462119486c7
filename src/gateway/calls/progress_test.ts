import assert from "node:assert/strict";
import { InferxError } from "../../common/errors.ts";
import { until } from "../../common/testing.ts";
import { type GatewayFixture, gatewayFixture } from "../testing.ts";
import { EventLines } from "./progress.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

/** A worker that streams three events, or answers `status` with a JSON error. */
function sseWorker(status = 200) {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, () => {
    if (status !== 200) return Response.json({ error: "model not loaded" }, { status });
    return new Response("data: 1\n\ndata: 2\n\ndata: [DONE]\n\n", {
      headers: { "content-type": "text/event-stream" },
    });
  });
  return { endpoint: `127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

const stream = (f: GatewayFixture, body: unknown = { prompt: "x", stream: true }) =>
  f.app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-inferx-progress": "1" },
    body: JSON.stringify(body),
  });

t(
  "a streaming call that waits for a worker hears each stage before the worker's stream",
  async () => {
    const f = await gatewayFixture();
    const w = sseWorker();
    f.sched.stages = ["starting"];
    f.sched.endpoints.push(w.endpoint);
    const r = await stream(f);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-type"), "text/event-stream");
    assert.equal(r.headers.get("x-inferx-progress"), "1");
    assert.match(r.headers.get("content-security-policy") ?? "", /^sandbox /);
    assert.equal(r.headers.get("x-content-type-options"), "nosniff");
    assert.equal(
      await r.text(),
      ": queued\n\n: placing\n\n: starting\n\n: ready\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n",
    );
    assert.deepEqual(f.audit.requests.map((x) => [x.status, x.coldStart]), [[200, true]]);
    // Warm now: a free worker answers at once, unchanged, with no progress lines.
    const warm = await stream(f);
    assert.equal(warm.headers.get("x-inferx-cold-start"), "0");
    assert.equal(warm.headers.get("x-inferx-progress"), null);
    assert.equal(await warm.text(), "data: 1\n\ndata: 2\n\ndata: [DONE]\n\n");
    await f.close();
    await w.close();
  },
);

t("x-inferx-progress is 1 or 0: another value is refused, not taken for off", async () => {
  const f = await gatewayFixture();
  const w = sseWorker();
  f.sched.endpoints.push(w.endpoint);
  for (const value of ["yes", "true", "1, 1"]) {
    const r = await f.app.request("/funccall/t/n/f/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json", "x-inferx-progress": value },
      body: JSON.stringify({ prompt: "x", stream: true }),
    });
    assert.equal(r.status, 400, value);
    const { error } = await r.json();
    assert.match(
      error.message,
      /^Invalid x-inferx-progress ".*": 1 \(follow the call's progress\) or 0$/,
    );
  }
  const off = await f.app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-inferx-progress": "0" },
    body: JSON.stringify({ prompt: "x", stream: true }),
  });
  assert.equal(off.status, 200);
  assert.equal(await off.text(), "data: 1\n\ndata: 2\n\ndata: [DONE]\n\n");
  await f.close();
  await w.close();
});

t("a worker restored from standby shows as restoring", async () => {
  const f = await gatewayFixture();
  const w = sseWorker();
  f.sched.stages = ["placing", "restoring"];
  f.sched.endpoints.push(w.endpoint);
  const text = await (await stream(f)).text();
  assert.ok(text.startsWith(": queued\n\n: placing\n\n: restoring\n\n: ready\n\ndata: 1"), text);
  await f.close();
  await w.close();
});

t("a large streaming body, read off the event loop, is known for streaming too", async () => {
  const f = await gatewayFixture({ bodyLimit: 1024 * 1024 });
  const w = sseWorker();
  f.sched.endpoints.push(w.endpoint);
  const r = await stream(f, { prompt: "x".repeat(100 * 1024), stream: true });
  assert.equal(r.headers.get("x-inferx-progress"), "1");
  assert.match(await r.text(), /^: queued\n\n: placing\n\n: ready\n\ndata: 1/);
  await f.close();
  await w.close();
});

t(
  "a body of another type than JSON that is a JSON object is known for streaming (curl -d)",
  async () => {
    const w = sseWorker();
    const cases = [
      // curl -d's default type.
      ["application/x-www-form-urlencoded", ' \n{"prompt": "x", "stream": true}', true, 0],
      // Large: read in the thread for large bodies, as a JSON one is.
      ["text/plain", JSON.stringify({ prompt: "x".repeat(100 * 1024), stream: true }), true, 1],
      // Not JSON after all: not refused, it goes to the worker as it came, without progress.
      ["text/plain", '{"stream": true', false, 0],
      ["text/plain", JSON.stringify({ prompt: "x".repeat(100 * 1024), stream: 1 }), false, 1],
      // That thread stopped (the gateway stopping): it goes unread, not refused.
      ["text/plain", JSON.stringify({ prompt: "x".repeat(100 * 1024), stream: true }), false, -1],
    ] as const;
    for (const [type, body, streams, threadsOrStopped] of cases) {
      const threads = Math.abs(threadsOrStopped);
      const f = await gatewayFixture({ bodyLimit: 1024 * 1024 });
      f.sched.stages = ["starting"];
      f.sched.endpoints.push(w.endpoint);
      // How many bodies went to that thread.
      let offLoop = 0;
      const probe = f.deps.jsonProbe.probe.bind(f.deps.jsonProbe);
      f.deps.jsonProbe.probe = (bytes) => (
        offLoop++, threadsOrStopped < 0 ? Promise.reject(new Error("stopped")) : probe(bytes)
      );
      const r = await f.app.request("/funccall/t/n/f/v1/completions", {
        method: "POST",
        // As a client sends it: a body of unknown length streams to the worker unread.
        headers: {
          "content-type": type,
          "content-length": String(new TextEncoder().encode(body).byteLength),
          "x-inferx-progress": "1",
        },
        body,
      });
      assert.equal(r.status, 200, type);
      assert.equal(r.headers.get("x-inferx-progress"), streams ? "1" : null, body.slice(0, 40));
      const text = await r.text();
      if (streams) assert.match(text, /^: queued\n\n: placing\n\n: starting\n\n: ready\n\ndata: 1/);
      else assert.equal(text, "data: 1\n\ndata: 2\n\ndata: [DONE]\n\n");
      assert.equal(offLoop, threads, body.slice(0, 40));
      await f.close();
    }
    await w.close();
  },
);

t("a call that fails while it waits ends its progress stream with an error event", async () => {
  const f = await gatewayFixture();
  f.sched.failWith = new InferxError("worker_failed", "Worker of t/n/f exited with status 4");
  const r = await stream(f);
  assert.equal(r.status, 200);
  const text = await r.text();
  assert.match(text, /^: queued\n\n: placing\n\nevent: error\ndata: /);
  const data = JSON.parse(text.split("data: ")[1]);
  assert.equal(data.status, 503);
  assert.equal(data.error.code, "worker_failed");
  assert.match(data.error.message, /exited with status 4/);
  assert.deepEqual(f.audit.requests.map((x) => [x.status, x.error]), [[503, "worker_failed"]]);
  // On /v1, in OpenAI's shape, as the answer without a stream would be: its clients read
  // `type` and `param` from the event's `error`.
  const v1 = await f.app.request("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-inferx-progress": "1" },
    body: JSON.stringify({ model: "t/n/f", prompt: "x", stream: true }),
  });
  const openai = JSON.parse((await v1.text()).split("data: ")[1]);
  assert.equal(openai.status, 503);
  assert.equal(openai.error.code, "worker_failed");
  assert.equal(openai.error.type, "server_error");
  assert.equal(openai.error.param, null);
  await f.close();
});

t("a worker's error answer after the stages is sent as an error event", async () => {
  // 400 as well as 500: every error status, the first of them included.
  for (const status of [500, 400]) {
    const f = await gatewayFixture();
    const w = sseWorker(status);
    f.sched.endpoints.push(w.endpoint);
    const text = await (await stream(f)).text();
    assert.ok(text.startsWith(": queued\n\n: placing\n\n: ready\n\nevent: error\n"), text);
    const data = JSON.parse(text.split("data: ")[1]);
    // The answer's own `error`, not wrapped in a second one.
    assert.deepEqual(data, { status, error: "model not loaded" });
    assert.equal(f.cache.agent("t", "n", "f")!.workers[0].inflight, 0, "the slot is back");
    await f.close();
    await w.close();
  }
});

t(
  "a caller that leaves after its worker answered, before the stream read it, frees the slot",
  async () => {
    const f = await gatewayFixture();
    const heard = Promise.withResolvers<void>();
    const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, () => {
      heard.resolve();
      return new Response("data: 1\n\n", { headers: { "content-type": "text/event-stream" } });
    });
    f.sched.stages = ["starting"];
    f.sched.endpoints.push(`127.0.0.1:${server.addr.port}`);
    try {
      const r = await stream(f);
      // Nothing of the stream is read (its first stage waits in its queue, so nothing pulls
      // the answer into it) while the worker answers.
      await heard.promise;
      await new Promise((r) => setTimeout(r, 100));
      await r.body!.cancel();
      await until("the slot back", () => f.cache.agent("t", "n", "f")!.workers[0].inflight === 0);
      assert.deepEqual(f.audit.requests.map((x) => x.error), ["caller_gone"]);
    } finally {
      await f.close();
      await server.shutdown();
    }
  },
);

t(
  "a worker that dies after its stream began ends the progress stream with an error event",
  async () => {
    const f = await gatewayFixture();
    // One event, then its connection closes without the stream's end (its process killed).
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    (async () => {
      for await (const c of listener) {
        await c.read(new Uint8Array(64 * 1024));
        await c.write(new TextEncoder().encode(
          "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" +
            "9\r\ndata: 1\n\n\r\n",
        ));
        c.close();
      }
    })().catch(() => {});
    f.sched.stages = ["starting"];
    f.sched.endpoints.push(`127.0.0.1:${listener.addr.port}`);
    const r = await stream(f);
    assert.equal(r.status, 200);
    const text = await r.text(); // it was cut, with no word of why
    assert.ok(
      text.startsWith(": queued\n\n: placing\n\n: starting\n\n: ready\n\ndata: 1\n\n"),
      text,
    );
    assert.match(text, /\n\nevent: error\ndata: .*\n\n$/);
    const data = JSON.parse(text.split("event: error\ndata: ")[1]);
    assert.equal(data.status, 503);
    assert.equal(data.error.code, "worker_failed");
    assert.deepEqual(f.audit.requests.map((x) => [x.status, x.error]), [[200, "worker_failed"]]);
    await f.close();
    listener.close();
  },
);

t("x-inferx-progress on a call that does not stream changes nothing", async () => {
  const f = await gatewayFixture();
  const w = sseWorker();
  f.sched.endpoints.push(w.endpoint);
  const r = await stream(f, { prompt: "x" });
  assert.equal(r.headers.get("x-inferx-progress"), null);
  assert.equal(r.headers.get("x-inferx-cold-start"), "1");
  assert.equal(await r.text(), "data: 1\n\ndata: 2\n\ndata: [DONE]\n\n");
  await f.close();
  await w.close();
});

t("a caller that leaves while its call waits is recorded as gone and takes no slot", async () => {
  const f = await gatewayFixture();
  f.sched.hang = true;
  const abort = new AbortController();
  const r = await f.app.request("/funccall/t/n/f/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-inferx-progress": "1" },
    body: JSON.stringify({ prompt: "x", stream: true }),
    signal: abort.signal,
  });
  const reader = r.body!.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  assert.match(first, /^: queued/);
  abort.abort();
  await reader.cancel();
  assert.deepEqual(f.audit.requests.map((x) => [x.status, x.error]), [[499, "caller_gone"]]);
  assert.equal(f.cache.agent("t", "n", "f")!.queued, 0, "it left the function's queue");
  await f.close();
});

t(
  "a worker's event stream is one whatever the case of its media type: not wrapped again",
  async () => {
    const f = await gatewayFixture();
    const server = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      () => new Response("data: 1\n\n", { headers: { "content-type": "Text/Event-Stream" } }),
    );
    f.sched.stages = ["starting"];
    f.sched.endpoints.push(`127.0.0.1:${server.addr.port}`);
    const text = await (await stream(f)).text();
    assert.ok(text.endsWith(": ready\n\ndata: 1\n\n"), text);
    await f.close();
    await server.shutdown();
  },
);

t(
  "a worker's answer that is no event stream is sent as one data event after the stages",
  async () => {
    const f = await gatewayFixture();
    const answer = { id: "cmpl-1", choices: [{ text: " a\nb" }] };
    const server = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      () => new Response(JSON.stringify(answer, null, 2) + "\r\n"),
    );
    f.sched.stages = ["starting"];
    f.sched.endpoints.push(`127.0.0.1:${server.addr.port}`);
    const r = await stream(f);
    assert.equal(r.headers.get("content-type"), "text/event-stream");
    const text = await r.text();
    assert.ok(text.startsWith(": queued\n\n: placing\n\n: starting\n\n: ready\n\ndata: {\n"), text);
    const events = text.split("\n\n").filter((e) => e.startsWith("data: "));
    assert.equal(events.length, 1, text);
    // An event stream's reader joins the data lines with LF.
    const data = events[0].split("\n").map((l) => l.replace(/^data: /, "")).join("\n");
    assert.deepEqual(JSON.parse(data), answer);
    assert.deepEqual(f.audit.requests.map((x) => x.status), [200]);
    await f.close();
    await server.shutdown();
  },
);

Deno.test("EventLines puts data: before every line, whatever ends it and wherever a piece ends", () => {
  const read = (pieces: string[]) => {
    const lines = new EventLines();
    const dec = new TextDecoder();
    return pieces.map((p) => dec.decode(lines.push(new TextEncoder().encode(p)))).join("") +
      dec.decode(lines.end());
  };
  assert.equal(read(['{"a":', "1}"]), 'data: {"a":1}\n\n');
  assert.equal(read(["a\r", "\nb"]), "data: a\ndata: b\n\n");
  assert.equal(read(["a\r\nb\rc\nd"]), "data: a\ndata: b\ndata: c\ndata: d\n\n");
  assert.equal(read(["a\r", "b", "\n"]), "data: a\ndata: b\ndata: \n\n");
  assert.equal(read(["a\r\n", "\nb"]), "data: a\ndata: \ndata: b\n\n");
  assert.equal(read(["a\r", "", "\nb"]), "data: a\ndata: b\n\n", "an empty piece between");
  assert.equal(read([]), "data: \n\n");
});
