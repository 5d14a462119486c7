import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { CallbackSender, signature } from "./callback.ts";

const names: Record<string, string[]> = {
  "public.test": ["93.184.215.14"],
  "mixed.test": ["93.184.215.14", "10.0.0.7"],
  "inside.test": ["192.168.4.4"],
  "v6.test": ["2001:4860:4860::8888"],
};
const resolve = (host: string) =>
  host in names ? Promise.resolve(names[host]) : Promise.reject(new Error("ENOTFOUND"));

Deno.test("check() resolves the host and refuses it when any address is not public", async () => {
  const s = new CallbackSender({ resolve });
  assert.deepEqual((await s.check("https://public.test/hook")).addresses, ["93.184.215.14"]);
  assert.equal((await s.check("http://v6.test/")).host, "v6.test");
  await assert.rejects(s.check("https://mixed.test/hook"), /resolves to 10\.0\.0\.7/);
  await assert.rejects(
    s.check("https://inside.test/hook"),
    /192\.168\.4\.4.*INFERX_CALLBACK_ALLOW/,
  );
  await assert.rejects(s.check("https://nowhere.test/hook"), /cannot resolve nowhere\.test/);
  await assert.rejects(s.check("http://[fe80::1]/x"), /fe80::1/);
  await assert.rejects(s.check("javascript:alert(1)"), /only http and https/);
});

Deno.test("INFERX_CALLBACK_ALLOW lets chosen non-public ranges through, and only those", async () => {
  const s = new CallbackSender({
    resolve,
    allow: [{ address: "192.168.4.0", prefix: 24, family: "ipv4" }],
  });
  assert.ok(await s.check("http://inside.test/x"));
  assert.equal(s.allows("192.168.4.200"), true);
  assert.equal(s.allows("192.168.5.1"), false);
  assert.equal(s.allows("127.0.0.1"), false);
  await assert.rejects(s.check("http://mixed.test/x"), /10\.0\.0\.7/);
});

Deno.test("signature() is the hex HMAC-SHA256 of the body, prefixed sha256=", () => {
  const body = '{"id":"t:n:c1","status":"succeeded"}';
  const want = createHmac("sha256", "s3cret").update(body).digest("hex");
  assert.equal(signature("s3cret", body), `sha256=${want}`);
  assert.equal(signature("s3cret", new TextEncoder().encode(body)), `sha256=${want}`);
});

Deno.test("post() sends to the checked addresses only, whatever the name resolves to later", async () => {
  const got: { host: string | null; sig: string | null; body: string }[] = [];
  const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    got.push({
      host: req.headers.get("host"),
      sig: req.headers.get("x-inferx-signature"),
      body: await req.text(),
    });
    return new Response(null, { status: 204 });
  });
  let calls = 0;
  const s = new CallbackSender({
    allow: [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }],
    // The first lookup (the check) says 127.0.0.1; any later one would say 10.0.0.1.
    resolve: () => Promise.resolve([calls++ === 0 ? "127.0.0.1" : "10.0.0.1"]),
  });
  const port = receiver.addr.port;
  const status = await s.post(`http://hook.test:${port}/cb`, '{"a":1}', "k", {
    "x-inferx-call": "c",
  });
  assert.equal(status, 204);
  assert.equal(calls, 1, "resolved once, then pinned");
  assert.deepEqual(got, [{
    host: `hook.test:${port}`,
    sig: signature("k", '{"a":1}'),
    body: '{"a":1}',
  }]);
  await receiver.shutdown();
});

Deno.test("post() takes the receiver's status as its answer, without waiting for a body that never ends", async () => {
  const receiver = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => new Response(new ReadableStream({ start() {} }), { status: 200 }), // never closes
  );
  const s = new CallbackSender({
    allow: [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }],
    timeoutMs: 300,
  });
  try {
    // Before: "no answer within 300 ms", and the delivery tried again.
    assert.equal(await s.post(`http://127.0.0.1:${receiver.addr.port}/cb`, "{}", "k"), 200);
  } finally {
    await receiver.shutdown();
  }
});

Deno.test("post() gives up at its time limit on a receiver that sends its head a byte at a time", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const serving = (async () => {
    for await (const c of listener) {
      conns.push(c);
      (async () => {
        await c.write(new TextEncoder().encode("HTTP/1.1 200 OK\r\nX-Drip: "));
        // Never quiet for the socket's idle limit, never done.
        for (let i = 0; i < 100; i++) {
          await new Promise((r) => setTimeout(r, 50));
          if (!await c.write(new TextEncoder().encode("a")).catch(() => 0)) return;
        }
      })();
    }
  })();
  const s = new CallbackSender({
    allow: [{ address: "127.0.0.1", prefix: 32, family: "ipv4" }],
    timeoutMs: 300,
  });
  try {
    const t0 = performance.now();
    await assert.rejects(
      s.post(`http://127.0.0.1:${listener.addr.port}/cb`, "{}", "k"),
      /no answer within 300 ms/,
    );
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `gave up after ${Math.round(ms)} ms`);
  } finally {
    listener.close();
    for (const c of conns) c.close();
    await serving.catch(() => {});
  }
});
