import assert from "node:assert/strict";
import { serveGateway } from "../server.ts";
import { type GatewayFixture, gatewayFixture } from "../testing.ts";
import { AUDIT_PATH_MAX } from "./observe.ts";

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

const testdata = (name: string) => Deno.readFile(new URL(`../testdata/${name}`, import.meta.url));

/**
 * A worker that replays recorded answers: `/v1/chat/completions` streams the
 * recorded chat (one event every 5 ms), `/v1/completions` answers the
 * recorded JSON completion, anything else a JSON body that is not a completion.
 */
async function recordedWorker() {
  const chat = await testdata("openai_chat_usage.sse");
  const completion = await testdata("ngram_completion.json");
  const text = new TextDecoder().decode(chat);
  const events = text.split("\r\n\r\n").filter((e) => e).map((e) => `${e}\r\n\r\n`);
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    await req.body?.cancel();
    const path = new URL(req.url).pathname;
    if (path === "/v1/chat/completions") {
      let i = 0;
      const enc = new TextEncoder();
      return new Response(
        new ReadableStream({
          async pull(c) {
            if (i >= events.length) return c.close();
            await new Promise((r) => setTimeout(r, 5));
            c.enqueue(enc.encode(events[i++]));
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    if (path === "/v1/completions") {
      return new Response(completion, { headers: { "content-type": "application/json" } });
    }
    return Response.json({ usage: { prompt_tokens: 1, completion_tokens: 1 } });
  });
  return { endpoint: `127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

function series(text: string, name: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
}

async function checkTokens(
  f: GatewayFixture,
  call: (path: string) => Response | Promise<Response>,
) {
  const streamed = await call("/v1/chat/completions");
  assert.equal(streamed.status, 200);
  assert.equal(streamed.headers.get("x-inferx-version"), "1");
  assert.equal(
    streamed.headers.get("x-inferx-ttft-ms"),
    null,
    "a stream's first token comes after its head",
  );
  const body = await streamed.text();
  assert.equal(
    body,
    new TextDecoder().decode(await testdata("openai_chat_usage.sse")),
    "the stream passes unchanged",
  );
  const whole = await call("/v1/completions");
  const ttft = Number(whole.headers.get("x-inferx-ttft-ms"));
  assert.ok(ttft > 0, "a whole answer says its time to first token");
  assert.equal((await whole.json()).usage.completion_tokens, 8);
  const other = await call("/generate");
  assert.equal(other.headers.get("x-inferx-ttft-ms"), null);
  await other.body?.cancel();

  await new Promise((r) => setTimeout(r, 20));
  const rows = f.audit.requests;
  assert.equal(rows.length, 3);
  const [s, w, o] = rows;
  assert.equal(s.promptTokens, 9);
  assert.equal(s.completionTokens, 3);
  assert.ok(s.ttftMs! >= 5 && s.ttftMs! < s.latencyMs, `ttft ${s.ttftMs} of ${s.latencyMs}`);
  assert.ok(s.itlP50Ms! >= 0 && s.itlP99Ms! >= s.itlP50Ms!, `${s.itlP50Ms} ${s.itlP99Ms}`);
  assert.ok(s.tokensPerS! > 0);
  assert.equal(s.version, 1);
  assert.deepEqual([w.promptTokens, w.completionTokens], [7, 8]);
  assert.equal(w.ttftMs!.toFixed(2), ttft.toFixed(2));
  assert.equal(w.itlP50Ms, undefined, "a whole answer has no gaps between tokens");
  assert.deepEqual(
    [o.ttftMs, o.promptTokens, o.completionTokens, o.version],
    [undefined, undefined, undefined, 1],
    "an answer that is not a completion is not read",
  );

  const metrics = await (await f.app.request("/metrics")).text();
  const labels = '{function="t/n/f",version="1"}';
  assert.equal(series(metrics, `inferx_prompt_tokens_total${labels}`), 16);
  assert.equal(series(metrics, `inferx_completion_tokens_total${labels}`), 11);
  assert.equal(series(metrics, `inferx_time_to_first_token_seconds_count${labels}`), 2);
  assert.equal(series(metrics, `inferx_inter_token_seconds_count${labels}`), 2);
  assert.equal(series(metrics, `inferx_output_tokens_per_second_count${labels}`), 2);
  assert.equal(
    series(metrics, 'inferx_version_requests_total{function="t/n/f",version="1",code="200"}'),
    3,
  );

  const stats = await (await f.app.request("/audit/stats?tenant=t")).json();
  assert.deepEqual(
    stats.usage.functions.map((u: Record<string, unknown>) => [u.func, u.version, u.calls]),
    [["f", 1, 2]],
  );
  const tenant = stats.usage.tenants[0];
  assert.deepEqual(
    [tenant.tenant, tenant.calls, tenant.promptTokens, tenant.completionTokens],
    ["t", 2, 16, 11],
  );
}

t(
  "token figures of streamed and whole completions reach the metrics, the audit and /audit/stats (warm path)",
  async () => {
    const f = await gatewayFixture({ policy: { parallel: 4 } });
    const w = await recordedWorker();
    f.sched.endpoints.push(w.endpoint);
    const server = serveGateway(f.app, f.deps, { port: 0 });
    const url = `http://127.0.0.1:${server.addr.port}`;
    await checkTokens(f, (path) =>
      fetch(`${url}/funccall/t/n/f${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "t/n/f", stream: true }),
      }));
    await server.shutdown(500);
    await f.close();
    await w.close();
  },
);

t("token figures are read the same way on the Hono route", async () => {
  const f = await gatewayFixture({ policy: { parallel: 4 } });
  const w = await recordedWorker();
  f.sched.endpoints.push(w.endpoint);
  await checkTokens(
    f,
    (path) =>
      f.app.request(path.startsWith("/v1/") ? path : `/funccall/t/n/f${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "t/n/f", stream: true }),
      }),
  );
  await f.close();
  await w.close();
});

t(
  "an audit row keeps the first 512 characters of a call's path, and says how many more there were",
  async () => {
    const f = await gatewayFixture();
    const long = `/funccall/t/n/nope/${"p".repeat(15_000)}`;
    await (await f.app.request(long)).body?.cancel();
    const [r] = f.audit.requests;
    assert.equal(r.status, 404);
    assert.equal(r.path, `${long.slice(0, AUDIT_PATH_MAX)}…(${long.length - AUDIT_PATH_MAX} more)`);
    await f.close();
  },
);
