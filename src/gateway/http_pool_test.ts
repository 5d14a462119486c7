import assert from "node:assert/strict";
import {
  AnswerBroken,
  AnswerTimeout,
  ConnectError,
  HttpPool,
  type UpstreamAnswer,
} from "./http_pool.ts";
import { rawWorker, scriptedWorker } from "./testing.ts";
import { BodyTooLarge } from "./http1/server.ts";

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
    if (url.pathname === "/huge") {
      return new Response("y".repeat(3 * 1024 * 1024), { headers: { "x-client": client } });
    }
    if (url.pathname === "/slow") {
      await new Promise((r) => setTimeout(r, 2000));
      return new Response("late");
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
const enc = new TextEncoder();
const post = (
  body: Uint8Array | AsyncIterable<Uint8Array> | null,
  path = "/echo?q=1",
  method = "POST",
) => ({
  method,
  path,
  headers: [["content-type", "application/json"]] as [string, string][],
  body,
});

/** The whole body of an answer, read piece by piece when it was not read at once. */
async function text(a: UpstreamAnswer): Promise<string> {
  if (a.bytes) return new TextDecoder().decode(a.bytes);
  let out = "";
  for (let c; (c = await a.read()) !== null;) out += new TextDecoder().decode(c);
  return out;
}
const header = (a: UpstreamAnswer, name: string) => a.headers.find(([k]) => k === name)?.[1];

t("HttpPool sends a request, reads a sized answer whole and reuses the connection", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    const r1 = await pool.send(ep, post(enc.encode('{"a":1}')));
    assert.equal(r1.status, 200);
    assert.ok(r1.bytes, "a sized answer comes whole");
    assert.deepEqual(JSON.parse(await text(r1)), {
      method: "POST",
      path: "/echo?q=1",
      length: 7,
      body: '{"a":1}',
    });
    assert.equal(r1.headers.some(([k]) => k === "content-length"), false, "framing removed");
    const r2 = await pool.send(ep, post(enc.encode("{}")));
    assert.equal(header(r2, "x-client"), header(r1, "x-client"), "one connection served both");
    const big = await pool.send(ep, post(null, "/big", "GET"));
    assert.equal((await text(big)).length, 300_000);
    const huge = await pool.send(ep, post(null, "/huge", "GET"));
    assert.equal(huge.bytes, undefined, "over 1 MiB is streamed");
    assert.equal(huge.length, 3 * 1024 * 1024);
    assert.equal((await text(huge)).length, 3 * 1024 * 1024);
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t("HttpPool streams a chunked answer and sends a streamed request body chunked", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    const sse = await pool.send(ep, post(null, "/sse", "GET"));
    assert.equal(sse.length, undefined);
    const pieces: string[] = [];
    for (let c; (c = await sse.read()) !== null;) pieces.push(new TextDecoder().decode(c));
    assert.deepEqual(pieces, ["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"], "as they came");
    const r = await pool.send(ep, post(ReadableStream.from([enc.encode("ab"), enc.encode("cd")])));
    assert.equal(JSON.parse(await text(r)).body, "abcd");
    const after = await pool.send(ep, post(enc.encode("z")));
    assert.equal(JSON.parse(await text(after)).body, "z", "usable after a chunked exchange");
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
    const empty = await pool.send(ep, post(null, "/empty", "GET"));
    assert.equal(empty.status, 204);
    assert.equal(empty.bytes?.byteLength, 0);
    const head = await pool.send(ep, post(null, "/echo", "HEAD"));
    assert.equal(head.status, 200);
    assert.equal(head.bytes?.byteLength, 0);
    const next = await pool.send(ep, post(enc.encode("ok")));
    assert.equal(JSON.parse(await text(next)).body, "ok");
    assert.equal(header(next, "x-client"), header(empty, "x-client"));
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t("HttpPool skips interim answers and reads the final one", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    const c = await l.accept();
    await c.read(new Uint8Array(4096));
    await c.write(
      enc.encode(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
      ),
    );
    c.close();
  })();
  const pool = new HttpPool();
  const a = await pool.send(`127.0.0.1:${(l.addr as Deno.NetAddr).port}`, post(enc.encode("x")));
  assert.equal(a.status, 201);
  assert.equal(a.statusText, "Created");
  assert.equal(await text(a), "ok");
  await serving;
  l.close();
  pool.close();
});

t(
  "HttpPool reports a refused connection as ConnectError, a malformed answer as AnswerBroken",
  async () => {
    const s = server();
    const port = s.addr.port;
    await s.shutdown();
    await assert.rejects(
      new HttpPool().send(`127.0.0.1:${port}`, post(null, "/", "GET")),
      ConnectError,
    );
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const serving = (async () => {
      const c = await l.accept();
      await c.read(new Uint8Array(4096));
      await c.write(
        enc.encode("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
      );
      c.close();
    })();
    await assert.rejects(
      new HttpPool().send(`127.0.0.1:${(l.addr as Deno.NetAddr).port}`, post(null, "/", "GET")),
      // The worker had the request: it is not reported unreachable (nor the call sent elsewhere).
      (err: Error) => err instanceof AnswerBroken && /malformed answer/.test(err.message),
    );
    await serving;
    l.close();
  },
);

t("HttpPool hears at once a worker close an idle connection, and does not send on it", async () => {
  let s = server();
  const port = s.addr.port;
  const pool = new HttpPool();
  try {
    await text(await pool.send(`127.0.0.1:${port}`, post(enc.encode("1"))));
    assert.equal(pool.idleConnections, 1);
    await s.shutdown(); // closes the kept-alive connection
    s = server(port);
    for (let i = 0; pool.idleConnections && i < 100; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(pool.idleConnections, 0, "the close was heard while it was idle");
    const r = await pool.send(`127.0.0.1:${port}`, post(enc.encode("2")));
    assert.equal(JSON.parse(await text(r)).body, "2");
  } finally {
    pool.close();
    await s.shutdown();
  }
});

/**
 * A worker that answers the first `answered` requests of each connection,
 * then reads the next one whole and closes it answering nothing (a crash
 * mid-call); it records each request's first line.
 */
function dropsAfter(answered: number) {
  const seen: string[] = [];
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const c of l) {
      (async () => {
        const buf = new Uint8Array(64 * 1024);
        let got = "";
        for (let i = 0;; i++) {
          while (!/\r\n\r\n[^]*\}/.test(got) && !/^GET[^]*\r\n\r\n/.test(got)) {
            const n = await c.read(buf);
            if (n === null) return;
            got += new TextDecoder().decode(buf.subarray(0, n));
          }
          seen.push(got.slice(0, got.indexOf("\r\n")));
          got = "";
          if (i >= answered) return;
          await c.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        }
      })().catch(() => {}).finally(() => c.close());
    }
  })().catch(() => {});
  return { endpoint: `127.0.0.1:${(l.addr as Deno.NetAddr).port}`, seen, close: () => l.close() };
}

t(
  "a POST a worker took whole and closed without answering is not sent again; a GET may be",
  async () => {
    for (const answered of [0, 1]) {
      // 0: on a fresh connection; 1: on one kept alive from an answered call.
      const w = dropsAfter(answered);
      const pool = new HttpPool();
      try {
        for (let i = 0; i < answered; i++) {
          await text(
            await pool.send(w.endpoint, post(enc.encode('{"n":0}'))),
          );
        }
        const err = await pool.send(w.endpoint, post(enc.encode('{"charge":1}'))).catch((e) => e);
        assert.ok(err instanceof AnswerBroken, String(err));
        assert.match(err.message, /closed the connection without answering.*may have run/);
        assert.equal(w.seen.length, answered + 1, `sent once: ${w.seen.join(" | ")}`);
        for (let i = 0; i < answered; i++) {
          await text(
            await pool.send(w.endpoint, post(enc.encode('{"n":0}'))),
          );
        }
        const get = await pool.send(w.endpoint, post(null, "/x", "GET")).catch((e) => e);
        if (answered) {
          // On a kept-alive connection: sent again on a fresh one, which answers it.
          assert.equal(await text(get), "ok");
          assert.deepEqual(w.seen.slice(-2), ["GET /x HTTP/1.1", "GET /x HTTP/1.1"]);
        } else assert.ok(get instanceof ConnectError && get.sent, String(get)); // the gateway may go elsewhere
      } finally {
        pool.close();
        w.close();
      }
    }
  },
);

t(
  "HttpPool retries on a fresh connection when every idle one was closed by the worker",
  async () => {
    // A worker whose keep-alive timeout is shorter than the pool's idle timeout.
    const w = rawWorker({ idleCloseMs: 150 });
    const pool = new HttpPool();
    try {
      const three = await Promise.all(
        [1, 2, 3].map(() => pool.send(w.endpoint, post(enc.encode("{}")))),
      );
      for (const a of three) assert.equal(await text(a), "ok");
      assert.equal(pool.idleConnections, 3);
      await new Promise((r) => setTimeout(r, 400)); // the worker closed all three
      const r = await pool.send(w.endpoint, post(enc.encode("{}")));
      assert.equal(await text(r), "ok");
      assert.equal(w.connections(), 4, "the retry went on a new connection");
      // A body that cannot be sent twice goes on a fresh connection from the start.
      await new Promise((r) => setTimeout(r, 400));
      const streamed = await pool.send(w.endpoint, post(ReadableStream.from([enc.encode("ab")])));
      assert.equal(await text(streamed), "ok");
    } finally {
      pool.close();
      w.close();
    }
  },
);

t(
  "HttpPool throws the caller's own error when its streamed body fails, not ConnectError",
  async () => {
    const s = server();
    const pool = new HttpPool();
    try {
      const tooLarge = async function* () {
        yield enc.encode("ab");
        throw new BodyTooLarge(1);
      };
      await assert.rejects(
        pool.send(`127.0.0.1:${s.addr.port}`, post(tooLarge())),
        (err) => err instanceof BodyTooLarge,
      );
      const r = await pool.send(`127.0.0.1:${s.addr.port}`, post(enc.encode("z")));
      assert.equal(JSON.parse(await text(r)).body, "z", "the pool still works");
    } finally {
      pool.close();
      await s.shutdown();
    }
  },
);

t("HttpPool names a worker that closed in the middle of its answer's body", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const c of l) {
      await c.read(new Uint8Array(4096));
      await c.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part"));
      c.close();
    }
  })().catch(() => {});
  const pool = new HttpPool();
  try {
    await assert.rejects(
      pool.send(`127.0.0.1:${(l.addr as Deno.NetAddr).port}`, post(enc.encode("{}"))),
      (err) => err instanceof AnswerBroken && /before the body ended/.test(err.message),
    );
  } finally {
    pool.close();
    l.close();
  }
});

t("HttpPool drops a connection whose body was given up half-read", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    const sse = await pool.send(ep, post(null, "/sse", "GET"));
    await sse.read();
    sse.cancel();
    const next = await pool.send(ep, post(enc.encode("fresh")));
    assert.equal(JSON.parse(await text(next)).body, "fresh");
    assert.notEqual(header(next, "x-client"), header(sse, "x-client"));
  } finally {
    pool.close();
    await s.shutdown();
  }
});

t("HttpPool breaks an exchange off when asked while it waits for the answer", async () => {
  const s = server();
  const pool = new HttpPool();
  try {
    let cancel: (() => void) | undefined;
    const t0 = performance.now();
    const pending = pool.send(`127.0.0.1:${s.addr.port}`, post(null, "/slow", "GET"), (c) => {
      cancel = c;
    });
    await new Promise((r) => setTimeout(r, 50));
    cancel!();
    await assert.rejects(pending, /cancelled/);
    assert.ok(performance.now() - t0 < 1500, "did not wait for the answer");
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
      const get = async (s: typeof gone) =>
        await text(await pool.send(`127.0.0.1:${s.addr.port}`, post(null, "/", "GET")));
      await get(gone);
      await get(stays);
      assert.equal(pool.idleConnections, 2);
      await gone.shutdown(); // the worker goes away (scale to zero): its socket is half closed
      await new Promise((r) => setTimeout(r, 120));
      await get(stays);
      assert.equal(pool.idleConnections, 1, "only the connection just used is left");
      await new Promise((r) => setTimeout(r, 120));
      pool.sweep();
      assert.equal(
        pool.idleConnections,
        0,
        "the gateway's sweep closes the rest without a request",
      );
    } finally {
      pool.close();
      await stays.shutdown();
    }
  },
);

t(
  "HttpPool out of descriptors says the gateway cannot connect, not that the worker failed",
  async () => {
    // In a child process under a low descriptor limit, with every descriptor taken.
    const script = await Deno.makeTempFile({ suffix: ".ts" });
    await Deno.writeTextFile(
      script,
      `import { ConnectError, HttpPool } from ${
        JSON.stringify(new URL("./http_pool.ts", import.meta.url).href)
      };
const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const held = [];
try { for (;;) held.push(Deno.openSync("/dev/null")); } catch { /* none left */ }
const pool = new HttpPool();
const req = { method: "GET", path: "/", headers: [], body: null };
const err = await pool.send(\`127.0.0.1:\${l.addr.port}\`, req).then(() => undefined, (e) => e);
console.log(JSON.stringify({ connectError: err instanceof ConnectError, code: err?.code, retryable: err?.retryable }));
`,
    );
    try {
      const config = new URL("../../deno.json", import.meta.url).pathname;
      const out = await new Deno.Command("sh", {
        args: [
          "-c",
          'ulimit -n 64 && exec "$0" run -A --config "$1" "$2"',
          Deno.execPath(),
          config,
          script,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout).trim();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      assert.deepEqual(JSON.parse(text), {
        connectError: false,
        code: "unavailable",
        retryable: true,
      });
    } finally {
      await Deno.remove(script);
    }
  },
);

t("HttpPool sends again on a fresh connection when writing to a pooled one fails", async () => {
  // A worker that closes each connection once it has answered (no Connection: close said).
  const w = scriptedWorker(async (c, got) => {
    const len = Number(/content-length: (\d+)/i.exec(got)?.[1] ?? 0);
    let body = got.length - got.indexOf("\r\n\r\n") - 4;
    const buf = new Uint8Array(64 * 1024);
    for (let n; body < len && (n = await c.read(buf)) !== null;) body += n;
    await c.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
  });
  const ep = w.endpoint;
  const pool = new HttpPool();
  try {
    assert.equal(await text(await pool.send(ep, post(enc.encode("{}")))), "ok");
    await new Promise((r) => setTimeout(r, 100)); // the worker has closed the pooled one
    // A body large enough to take several writes: a later one fails (EPIPE, ECONNRESET).
    // Before, what the connection had heard of its previous answer made this one look
    // answered and broken off: not sent again.
    const big = enc.encode(JSON.stringify({ x: "y".repeat(4 * 1024 * 1024) }));
    assert.equal(await text(await pool.send(ep, post(big))), "ok");
  } finally {
    pool.close();
    w.close();
  }
});

t("HttpPool does not count against answerTimeoutMs the time its caller takes to read", async () => {
  const worker = scriptedWorker(async (c) => {
    await c.write(enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"));
    for (let i = 0; i < 4; i++) {
      await c.write(enc.encode("1\r\nx\r\n"));
      await new Promise((r) => setTimeout(r, 20));
    }
    await c.write(enc.encode("0\r\n\r\n"));
    await c.read(new Uint8Array(1)); // keeps the connection open
  });
  const pool = new HttpPool();
  const sweep = setInterval(() => pool.sweep(), 20);
  try {
    const a = await pool.send(worker.endpoint, { ...post(enc.encode("{}")), answerTimeoutMs: 200 });
    assert.equal(new TextDecoder().decode((await a.read())!), "x");
    // A caller that takes its time (a slow reader of a stream): the worker answered meanwhile.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await text(a), "xxx");
  } finally {
    clearInterval(sweep);
    pool.close();
    worker.close();
  }
});

t(
  "HttpPool cuts an exchange quiet past its answerTimeoutMs, before or within the body",
  async () => {
    const quiet = (c: Deno.Conn) => c.read(new Uint8Array(1)).then(() => {}); // until cut
    const noHead = scriptedWorker(quiet);
    const stalled = scriptedWorker(async (c) => {
      await c.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome"));
      await quiet(c);
    });
    const stalledStream = scriptedWorker(async (c) => {
      await c.write(enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n"));
      await quiet(c);
    });
    // A chunk every 60 ms: slower than the limit in all, never quiet as long as it.
    const steady = scriptedWorker(async (c) => {
      await c.write(enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"));
      for (let i = 0; i < 8; i++) {
        await new Promise((r) => setTimeout(r, 60));
        await c.write(enc.encode("1\r\nx\r\n"));
      }
      await c.write(enc.encode("0\r\n\r\n"));
      await quiet(c); // keeps the connection open
    });
    const pool = new HttpPool();
    const sweep = setInterval(() => pool.sweep(), 20);
    const limited = (req: ReturnType<typeof post>) => ({ ...req, answerTimeoutMs: 200 });
    try {
      const t0 = performance.now();
      await assert.rejects(
        pool.send(noHead.endpoint, limited(post(enc.encode("{}")))),
        (err) => err instanceof AnswerTimeout && /sent nothing for 0.2 s/.test(err.message),
      );
      const waited = performance.now() - t0;
      assert.ok(waited >= 200 && waited < 2000, `cut after ${waited} ms`);

      // A sized answer is read whole before send() resolves; a streamed one as it comes.
      await assert.rejects(
        pool.send(stalled.endpoint, limited(post(enc.encode("{}")))),
        AnswerTimeout,
      );
      const half = await pool.send(stalledStream.endpoint, limited(post(enc.encode("{}"))));
      assert.equal(half.status, 200);
      assert.equal(new TextDecoder().decode((await half.read())!), "x");
      await assert.rejects(half.read(), AnswerTimeout);

      const slow = await pool.send(steady.endpoint, limited(post(enc.encode("{}"))));
      assert.equal(await text(slow), "x".repeat(8));
      assert.equal(pool.idleConnections, 1, "the steady worker's connection went back");
      // Idle in the pool, it is never cut, however long it waits.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(pool.idleConnections, 1);
    } finally {
      clearInterval(sweep);
      pool.close();
      noHead.close();
      stalled.close();
      stalledStream.close();
      steady.close();
    }
  },
);

t("HttpPool bounds a worker's answer head and takes its trailers for no fields", async () => {
  // A head that never ends: refused past the limit, not buffered for ever.
  const endless = scriptedWorker(async (c) => {
    await c.write(enc.encode("HTTP/1.1 200 OK\r\n"));
    const line = enc.encode(`x-filler: ${"a".repeat(1000)}\r\n`);
    for (let i = 0; i < 2000; i++) if (!(await c.write(line).catch(() => 0))) return;
  });
  // Trailers in the same packet as the head.
  const trailers = scriptedWorker(async (c) => {
    await c.write(enc.encode(
      "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n" +
        "2\r\nok\r\n0\r\ncontent-type: text/evil\r\nx-trailer: t\r\n\r\n",
    ));
  });
  const pool = new HttpPool();
  try {
    await assert.rejects(
      pool.send(endless.endpoint, post(enc.encode("{}"))),
      (err) => err instanceof AnswerBroken && /head is too large/.test(err.message),
    );
    const a = await pool.send(trailers.endpoint, post(enc.encode("{}")));
    assert.equal(await text(a), "ok");
    assert.deepEqual(a.headers, [["content-type", "text/plain"]]);
  } finally {
    pool.close();
    endless.close();
    trailers.close();
  }
});

t("HttpPool: a worker that answers before it read a large body, and closes, is heard", async () => {
  // It refuses the upload at its head (413) and closes without reading the rest.
  const early = scriptedWorker(async (c) => {
    await c.write(
      enc.encode(
        "HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbig",
      ),
    );
  });
  const pool = new HttpPool();
  try {
    const big = new Uint8Array(8 * 1024 * 1024).fill(120);
    const r = await pool.send(early.endpoint, post(big)).then(
      (a) => `answer ${a.status}`,
      (err) => `${err.name}`,
    );
    // Its answer, or at worst a broken-off exchange: never "unreachable" (which drops the worker).
    assert.ok(r === "answer 413" || r === "AnswerBroken", r);
  } finally {
    pool.close();
    early.close();
  }
});

t("HttpPool cuts off a worker that sends interim answers without end", async () => {
  const chatty = scriptedWorker(async (c) => {
    const interim = enc.encode("HTTP/1.1 100 Continue\r\n\r\n".repeat(100));
    for (let i = 0; i < 10_000; i++) if (!(await c.write(interim).catch(() => 0))) return;
  });
  const pool = new HttpPool();
  try {
    await assert.rejects(
      pool.send(chatty.endpoint, post(enc.encode("{}"))),
      (err) => err instanceof AnswerBroken && /too many interim answers/.test(err.message),
    );
  } finally {
    pool.close();
    chatty.close();
  }
});

t(
  "HttpPool refuses an answer with a status below 100, or a coding other than chunked",
  async () => {
    const heads: [string, RegExp][] = [
      ["HTTP/1.1 099 Weird\r\ncontent-length: 2\r\n\r\nok", /invalid status \(99\)/],
      ["HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nGZIP", /Transfer-Encoding "gzip"/],
      [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nGZ\r\n0\r\n\r\n",
        /Transfer-Encoding "gzip, chunked"/,
      ],
    ];
    const pool = new HttpPool();
    for (const [raw, why] of heads) {
      const w = scriptedWorker(async (c) => {
        await c.write(enc.encode(raw));
      });
      try {
        await assert.rejects(
          pool.send(w.endpoint, post(enc.encode("{}"))),
          (err) => err instanceof AnswerBroken && why.test(err.message),
          raw,
        );
      } finally {
        w.close();
      }
    }
    // Chunked, its spaces after it and its case aside, is framed and passed on.
    const ok = scriptedWorker(async (c) => {
      await c.write(
        enc.encode("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n2\r\nok\r\n0\r\n\r\n"),
      );
    });
    try {
      assert.equal(await text(await pool.send(ok.endpoint, post(enc.encode("{}")))), "ok");
    } finally {
      pool.close();
      ok.close();
    }
  },
);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test({
  name:
    "HttpPool cuts no exchange early: a wait begun just after a sweep gets its whole answerTimeoutMs",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    let go!: () => void;
    const next = new Promise<void>((r) => go = r);
    const worker = scriptedWorker(async (c) => {
      await c.write(enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n"));
      await next;
      await c.write(enc.encode("1\r\ny\r\n0\r\n\r\n"));
      await c.read(new Uint8Array(1));
    });
    const pool = new HttpPool();
    try {
      const a = await pool.send(worker.endpoint, {
        method: "POST",
        path: "/",
        headers: [],
        body: enc.encode("{}"),
        answerTimeoutMs: 250,
      });
      assert.equal(new TextDecoder().decode((await a.read())!), "x");
      // The gateway's sweep, every 100 ms; the caller (slow) asks for more 95 ms after one.
      await sleep(60);
      pool.sweep(performance.now()); // sees what the head's read stirred
      await sleep(100);
      const s0 = performance.now();
      pool.sweep(s0); // the caller holds the answer: not waiting on the worker
      await sleep(95);
      const started = performance.now();
      const reading = a.read();
      // The worker answers 220 ms after the gateway began to wait on it (< 250 ms).
      setTimeout(go, 220);
      for (const at of [100, 200, 300]) {
        await sleep(s0 + at - performance.now());
        pool.sweep(performance.now());
      }
      let err: unknown;
      const got = await reading.catch((e) => {
        err = e;
        return null;
      });
      const quiet = performance.now() - started;
      assert.equal(
        err,
        undefined,
        `cut after ${quiet.toFixed(0)} ms of waiting on the worker, limit 250`,
      );
      assert.equal(new TextDecoder().decode(got!), "y");
    } finally {
      pool.close();
      worker.close();
    }
  },
});

t("HttpPool keeps at most 64 idle connections to one endpoint after a burst", async () => {
  const s = server();
  const ep = `127.0.0.1:${s.addr.port}`;
  const pool = new HttpPool();
  try {
    // Seventy at once: seventy connections, each back once its sized answer is read.
    const answers = await Promise.all(
      Array.from({ length: 70 }, () => pool.send(ep, post(null, "/slow", "GET"))),
    );
    assert.equal(new Set(answers.map((a) => a.status)).size, 1);
    for (const a of answers) assert.equal(await text(a), "late");
    assert.equal(pool.idleConnections, 64, "the rest closed, not kept open for ever");
  } finally {
    pool.close();
    await s.shutdown();
  }
});
