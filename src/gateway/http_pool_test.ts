import assert from "node:assert/strict";
import { ConnectError, HttpPool } from "./http_pool.ts";

function server(port = 0) {
  return Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, async (req, info) => {
    const url = new URL(req.url);
    const client = String((info.remoteAddr as Deno.NetAddr).port);
    if (url.pathname === "/sse") {
      let i = 0;
      return new Response(
        new ReadableStream({
          async pull(c) {
            await new Promise((r) => setTimeout(r, 5));
            if (i++ < 3) c.enqueue(new TextEncoder().encode(`data: ${i}\n\n`));
            else c.close();
          },
        }),
        { headers: { "content-type": "text/event-stream", "x-client": client } },
      );
    }
    if (url.pathname === "/empty") {
      return new Response(null, { status: 204, headers: { "x-client": client } });
    }
    if (url.pathname === "/big") {
      return new Response("x".repeat(300_000), { headers: { "x-client": client } });
    }
    const body = await req.text();
    return Response.json({
      method: req.method,
      path: url.pathname + url.search,
      length: body.length,
      body,
    }, {
      headers: { "x-client": client },
    });
  });
}

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeResources: false, sanitizeOps: false });
const post = (
  body: Uint8Array | ReadableStream<Uint8Array> | null,
  path = "/echo?q=1",
  method = "POST",
) => ({
  method,
  path,
  headers: new Headers({ "content-type": "application/json" }),
  body,
});

t("HttpPool sends a request, reads a sized answer and reuses the connection", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    const r1 = await pool.request(ep, post(new TextEncoder().encode('{"a":1}')));
    assert.equal(r1.status, 200);
    const b1 = await r1.json();
    assert.deepEqual(b1, { method: "POST", path: "/echo?q=1", length: 7, body: '{"a":1}' });
    const r2 = await pool.request(ep, post(new TextEncoder().encode("{}")));
    await r2.json();
    assert.equal(
      r2.headers.get("x-client"),
      r1.headers.get("x-client"),
      "the same connection served both",
    );
    const big = await pool.request(ep, post(null, "/big", "GET"));
    assert.equal((await big.text()).length, 300_000);
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t("HttpPool streams a chunked answer and a streamed request body", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    const sse = await pool.request(ep, post(null, "/sse", "GET"));
    assert.equal(await sse.text(), "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    const stream = ReadableStream.from([
      new TextEncoder().encode("ab"),
      new TextEncoder().encode("cd"),
    ]);
    const r = await pool.request(ep, post(stream));
    assert.equal((await r.json()).body, "abcd");
    const after = await pool.request(ep, post(new TextEncoder().encode("z")));
    assert.equal(
      (await after.json()).body,
      "z",
      "the connection is usable after a chunked exchange",
    );
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t("HttpPool handles answers without a body and keeps the connection", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    const empty = await pool.request(ep, post(null, "/empty", "GET"));
    assert.equal(empty.status, 204);
    assert.equal(empty.body, null);
    const head = await pool.request(ep, post(null, "/echo", "HEAD"));
    assert.equal(head.status, 200);
    const next = await pool.request(ep, post(new TextEncoder().encode("ok")));
    assert.equal((await next.json()).body, "ok");
    assert.equal(next.headers.get("x-client"), empty.headers.get("x-client"));
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t("HttpPool reports a refused connection as ConnectError", async () => {
  const s = server();
  const port = s.addr.port;
  await s.shutdown();
  await assert.rejects(
    new HttpPool().request(`127.0.0.1:${port}`, post(null, "/", "GET")),
    ConnectError,
  );
});

t("HttpPool retries once when a pooled connection was closed by the worker", async () => {
  let s = server();
  const port = s.addr.port;
  const pool = new HttpPool();
  try {
    await (await pool.request(`127.0.0.1:${port}`, post(new TextEncoder().encode("1")))).json();
    await s.shutdown(); // closes the kept-alive connection
    s = server(port);
    const r = await pool.request(`127.0.0.1:${port}`, post(new TextEncoder().encode("2")));
    assert.equal((await r.json()).body, "2");
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t("HttpPool drops a connection whose body was cancelled half-read", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    const sse = await pool.request(ep, post(null, "/sse", "GET"));
    const reader = sse.body!.getReader();
    await reader.read();
    await reader.cancel();
    const next = await pool.request(ep, post(new TextEncoder().encode("fresh")));
    assert.equal((await next.json()).body, "fresh");
    assert.notEqual(next.headers.get("x-client"), sse.headers.get("x-client"));
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t(
  "HttpPool closes connections idle past its timeout, so a worker gone leaves none open",
  async () => {
    const gone = server();
    const stays = server();
    const pool = new HttpPool({ idleTimeoutMs: 50 });
    try {
      const get = (s: typeof gone) =>
        pool.request(`127.0.0.1:${s.addr.port}`, post(null, "/", "GET")).then((r) => r.text());
      await get(gone);
      await get(stays);
      assert.equal(pool.idleConnections, 2);
      await gone.shutdown(); // the worker goes away (scale to zero): its socket is half closed
      await new Promise((r) => setTimeout(r, 120));
      await get(stays);
      assert.equal(pool.idleConnections, 1, "only the connection just used is left");
    } finally {
      pool.close();
      await stays.shutdown();
    }
  },
);
