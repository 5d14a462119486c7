import assert from "node:assert/strict";
import { acceptLoop, type Http1ServerOptions, serveHttp1 } from "./server.ts";
import { rng } from "../../common/random.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** An echo server: method, target, headers and body length, as JSON. */
function echo(opts: Partial<Http1ServerOptions> = {}) {
  return serveHttp1({
    port: 0,
    handler: async (req, res) => {
      if (req.url === "/stream") {
        await res.start(200, [["content-type", "text/plain"]]);
        for (const part of ["one ", "two ", "three"]) {
          await res.write(enc.encode(part));
          await new Promise((r) => setTimeout(r, 5));
        }
        return await res.end();
      }
      const body = await req.readAll(opts.maxHeadBytes === 1 ? 0 : 1000);
      await res.send(
        200,
        [["content-type", "application/json"]],
        JSON.stringify({ method: req.method, url: req.url, body: dec.decode(body) }),
      );
    },
    ...opts,
  });
}

/** Writes `raw` on a fresh connection and reads until the server closes it or `ms` pass. */
async function exchange(port: number, raw: string | string[], ms = 1500): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  const parts = Array.isArray(raw) ? raw : [raw];
  let out = "";
  const reading = (async () => {
    const buf = new Uint8Array(65536);
    while (true) {
      const n = await c.read(buf).catch(() => null);
      if (n === null) return;
      out += dec.decode(buf.subarray(0, n));
    }
  })();
  for (const p of parts) {
    await c.write(enc.encode(p)).catch(() => {});
    await new Promise((r) => setTimeout(r, 20));
  }
  const timer = setTimeout(() => {
    try {
      c.close();
    } catch { /* closed by the server */ }
  }, ms);
  await reading;
  clearTimeout(timer);
  try {
    c.close();
  } catch { /* already */ }
  return out;
}

/** The answers in a byte stream: status lines and bodies (JSON bodies parsed). */
function answers(text: string): { status: number; head: string; body: string }[] {
  const out = [];
  let rest = text;
  while (rest.startsWith("HTTP/1.1 ")) {
    const end = rest.indexOf("\r\n\r\n");
    const head = rest.slice(0, end);
    rest = rest.slice(end + 4);
    const len = /content-length: (\d+)/i.exec(head);
    let body = "";
    if (len) {
      body = rest.slice(0, Number(len[1]));
      rest = rest.slice(Number(len[1]));
    } else if (/transfer-encoding: chunked/i.test(head)) {
      while (true) {
        const eol = rest.indexOf("\r\n");
        const size = parseInt(rest.slice(0, eol), 16);
        rest = rest.slice(eol + 2);
        if (size === 0) {
          rest = rest.slice(2);
          break;
        }
        body += rest.slice(0, size);
        rest = rest.slice(size + 2);
      }
    } else if (!/^HTTP\/1.1 1\d\d/.test(head)) {
      body = rest;
      rest = "";
    }
    out.push({ status: Number(head.slice(9, 12)), head, body });
  }
  return out;
}

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

t("http1 serves a sized answer and keeps the connection for the next request", async () => {
  const s = echo();
  const got = answers(
    await exchange(s.addr.port, [
      "POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
      "GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ]),
  );
  assert.deepEqual(got.map((a) => JSON.parse(a.body)), [
    { method: "POST", url: "/a?x=1", body: "hello" },
    { method: "GET", url: "/b", body: "" },
  ]);
  assert.match(got[0].head, /^date: /m);
  assert.doesNotMatch(got[0].head, /connection: close/);
  assert.match(got[1].head, /connection: close/);
  await s.shutdown();
});

t("http1 reads chunked request bodies and streams answers chunked", async () => {
  const s = echo();
  const [a, b] = answers(
    await exchange(s.addr.port, [
      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
      "4;ext=1\r\ndefg\r\n0\r\n\r\n",
      "GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ]),
  );
  assert.equal(JSON.parse(a.body).body, "abcdefg");
  assert.match(b.head, /transfer-encoding: chunked/);
  assert.equal(b.body, "one two three");
  await s.shutdown();
});

t("http1 reads a head byte for byte: a field after non-ASCII bytes stays whole", async () => {
  const s = serveHttp1({
    port: 0,
    handler: (req, res) =>
      res.send(200, [["content-type", "application/json"]], JSON.stringify(req.headers)),
  });
  // UTF-8 (two bytes a character) in one value; the fields after it must not shift.
  const [a] = answers(
    await exchange(
      s.addr.port,
      "GET / HTTP/1.1\r\nHost: h\r\nX-A: \u00e9\u00e9\r\nX-B: hello\r\nConnection: close\r\n\r\n",
    ),
  );
  const latin1 = String.fromCharCode(0xc3, 0xa9, 0xc3, 0xa9); // the value's bytes, one character each
  assert.deepEqual(JSON.parse(a.body), [
    ["host", "h"],
    ["x-a", latin1],
    ["x-b", "hello"],
    ["connection", "close"],
  ]);
  await s.shutdown();
});

t("http1 holds a chunked body to its limit when it came whole with the head", async () => {
  const s = serveHttp1({
    port: 0,
    handler: async (req, res) => {
      const body = await req.readAll(1024).catch((err) => err as Error);
      await res.send(200, [], body instanceof Error ? body.name : `read ${body.byteLength}`);
    },
  });
  const big = "x".repeat(5000);
  const [a] = answers(
    await exchange(
      s.addr.port,
      `POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${
        big.length.toString(16)
      }\r\n${big}\r\n0\r\n\r\n`,
    ),
  );
  assert.equal(a.body, "BodyTooLarge");
  await s.shutdown();
});

t("http1 answers pipelined requests in order", async () => {
  const s = echo();
  const got = answers(
    await exchange(
      s.addr.port,
      "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ),
  );
  assert.deepEqual(got.map((a) => JSON.parse(a.body).url), ["/1", "/2", "/3"]);
  await s.shutdown();
});

t("http1 sends 100 Continue before it reads a body the client holds back", async () => {
  const s = echo();
  const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
  await c.write(
    enc.encode(
      "POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
    ),
  );
  const buf = new Uint8Array(4096);
  const n = await c.read(buf);
  assert.equal(dec.decode(buf.subarray(0, n!)), "HTTP/1.1 100 Continue\r\n\r\n");
  await c.write(enc.encode("abc"));
  let text = "";
  for (let m; (m = await c.read(buf)) !== null;) text += dec.decode(buf.subarray(0, m));
  assert.equal(JSON.parse(answers(text)[0].body).body, "abc");
  c.close();
  await s.shutdown();
});

t(
  "http1 speaks HTTP/1.0: closes unless keep-alive is asked; streamed answers end at close",
  async () => {
    const s = echo();
    const once = answers(await exchange(s.addr.port, "GET /x HTTP/1.0\r\n\r\n"));
    assert.equal(once.length, 1);
    assert.match(once[0].head, /connection: close/);
    const kept = answers(
      await exchange(s.addr.port, [
        "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
      ]),
    );
    assert.equal(kept.length, 2);
    assert.match(kept[0].head, /connection: keep-alive/);
    assert.doesNotMatch(kept[1].head, /chunked/, "no chunked framing for HTTP/1.0");
    assert.equal(kept[1].body, "one two three");
    await s.shutdown();
  },
);

t("http1 answers HEAD with the head only", async () => {
  const s = echo();
  const text = await exchange(
    s.addr.port,
    "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
  );
  const heads = text.split("\r\n\r\n");
  assert.match(heads[0], /content-length: \d+/);
  assert.ok(heads[1].startsWith("HTTP/1.1 200"), "the next answer follows the head at once");
  await s.shutdown();
});

t("http1 refuses request smuggling and malformed framing with 400 and closes", async () => {
  const s = echo();
  const cases = [
    "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "GET / HTTP/1.1\nHost: h\n\n",
    "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
    "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    // HTTP/1.0 has no chunked coding (RFC 9112 §6.1): framing unknown, even kept alive.
    "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  ];
  for (const raw of cases) {
    const got = answers(await exchange(s.addr.port, raw + "GET /next HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert.equal(got.length, 1, `one answer, then the connection closes: ${JSON.stringify(raw)}`);
    assert.equal(got[0].status, 400, JSON.stringify(raw));
    assert.match(got[0].head, /connection: close/);
    assert.equal(JSON.parse(got[0].body).error.code, "invalid");
  }
  await s.shutdown();
});

t(
  "http1 refuses TRACE and CONNECT (501: on no path) and targets that are not paths or http URLs (400)",
  async () => {
    const s = echo();
    const first = async (raw: string) => answers(await exchange(s.addr.port, raw))[0];
    for (const m of ["TRACE", "CONNECT"]) {
      const target = m === "CONNECT" ? "h:443" : "/";
      const a = await first(`${m} ${target} HTTP/1.1\r\nHost: h\r\n\r\n`);
      assert.equal(a.status, 501, m);
      assert.equal(JSON.parse(a.body).error.code, "unsupported");
    }
    // Methods the parser does not know: 501 for a token (methods are case-sensitive), 400 else.
    for (const m of ["FOO", "Get", "X-CUSTOM"]) {
      const a = await first(`${m} / HTTP/1.1\r\nHost: h\r\n\r\n`);
      assert.equal(a.status, 501, m);
      assert.deepEqual(JSON.parse(a.body).error, {
        code: "unsupported",
        message: `${m} is not supported`,
      });
    }
    for (
      const raw of [
        "\u0016\u0003\u0001 / HTTP/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        `${"A".repeat(40)} / HTTP/1.1\r\n\r\n`,
      ]
    ) {
      const a = await first(raw);
      assert.equal(a.status, 400, JSON.stringify(raw));
      assert.match(JSON.parse(a.body).error.message, /^Malformed HTTP request: /);
    }
    for (const target of ["*", "x", "http:///", "ftp://h/x"]) {
      const a = await first(`OPTIONS ${target} HTTP/1.1\r\nHost: h\r\n\r\n`);
      assert.equal(a.status, 400, target);
      assert.equal(JSON.parse(a.body).error.code, "invalid");
    }
    const abs = await first(
      "GET http://h:1/a?b=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert.equal(JSON.parse(abs.body).url, "http://h:1/a?b=1", "an absolute target is served");
    await s.shutdown();
  },
);

t(
  "http1 refuses a transfer coding other than chunked (501) and HTTP versions other than 1.x (505)",
  async () => {
    const s = echo();
    const first = async (raw: string) => answers(await exchange(s.addr.port, raw))[0];
    // llhttp frames `gzip, chunked` as chunked: the gzip coding would reach the handler unsaid.
    for (const te of ["gzip, chunked", "deflate,chunked", "identity, chunked"]) {
      const a = await first(
        `POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ${te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
      );
      assert.equal(a.status, 501, te);
      assert.match(a.head, /connection: close/);
      const e = JSON.parse(a.body).error;
      assert.equal(e.code, "unsupported");
      assert.match(e.message, /Transfer-Encoding ".*" is not supported/);
    }
    // Any case and spacing of chunked alone is chunked.
    const ok = await first(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  Chunked \r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert.equal(ok.status, 200);
    // llhttp reads 0.9 and 2.0 as versions (and refuses others: 400).
    for (const version of ["2.0", "0.9"]) {
      const a = await first(`GET / HTTP/${version}\r\n\r\n`);
      assert.equal(a?.status, 505, version);
      assert.equal(JSON.parse(a.body).error.code, "unsupported");
    }
    assert.equal((await first("GET / HTTP/3.0\r\n\r\n")).status, 400);
    assert.equal((await first("GET / HTTP/1.0\r\n\r\n")).status, 200);
    await s.shutdown();
  },
);

t("http1 limits heads (431), header counts (431), targets (414) and bodies (413)", async () => {
  const s = echo({ maxHeadBytes: 2048, maxHeaders: 10, maxUrlBytes: 100 });
  const status = async (raw: string) => answers(await exchange(s.addr.port, raw))[0]?.status;
  assert.equal(await status(`GET / HTTP/1.1\r\nHost: h\r\nX: ${"a".repeat(4000)}\r\n\r\n`), 431);
  // Ten fields (Host, Connection and eight) pass, eleven do not; a target of 100 bytes passes, 101 does not.
  const fields = (n: number) => Array.from({ length: n }, (_, i) => `X-${i}: v\r\n`).join("");
  const closing = "Connection: close\r\n";
  assert.equal(await status(`GET / HTTP/1.1\r\nHost: h\r\n${closing}${fields(8)}\r\n`), 200);
  assert.equal(await status(`GET / HTTP/1.1\r\nHost: h\r\n${fields(10)}\r\n`), 431);
  assert.equal(await status(`GET /${"u".repeat(99)} HTTP/1.1\r\nHost: h\r\n${closing}\r\n`), 200);
  assert.equal(await status(`GET /${"u".repeat(100)} HTTP/1.1\r\nHost: h\r\n\r\n`), 414);
  // A target past the head's limit too: still a target too long, not a head too large.
  assert.equal(await status(`GET /${"u".repeat(4000)} HTTP/1.1\r\nHost: h\r\n\r\n`), 414);
  assert.equal(await status(`GET /${"u".repeat(200_000)} HTTP/1.1\r\nHost: h\r\n\r\n`), 414);
  const big = `POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n${"b".repeat(5000)}`;
  assert.equal(await status(big), 413, "a handler's BodyTooLarge is answered 413");
  await s.shutdown();
});

t("http1 takes the spaces and tabs after a field's value off it (RFC 9112 §5)", async () => {
  const s = serveHttp1({
    port: 0,
    handler: async (req, res) => {
      const body = await req.readAll(1000);
      const seen = { host: req.header("host"), x: req.header("x-a"), body: dec.decode(body) };
      await res.send(200, [["content-type", "application/json"]], JSON.stringify(seen));
    },
  });
  const [a] = answers(
    await exchange(
      s.addr.port,
      "GET / HTTP/1.1\r\nHost: h \t\r\nX-A: 1 2\t \r\nConnection: close\r\n\r\n",
    ),
  );
  assert.deepEqual(JSON.parse(a.body), { host: "h", x: "1 2", body: "" });
  // `Expect: 100-continue ` is still asked: the client that waits for the 100 gets it.
  const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
  await c.write(
    enc.encode("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue \r\nContent-Length: 2\r\n\r\n"),
  );
  const buf = new Uint8Array(1024);
  const n = await c.read(buf);
  assert.match(dec.decode(buf.subarray(0, n ?? 0)), /^HTTP\/1\.1 100 Continue\r\n/);
  c.close();
  await s.shutdown();
});

t("http1 closes idle keep-alive connections and answers 408 to a stalled head", async () => {
  const s = echo({ keepAliveTimeoutMs: 300, headersTimeoutMs: 300 });
  const t0 = performance.now();
  const idle = await exchange(s.addr.port, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 5000);
  assert.equal(answers(idle).length, 1);
  assert.ok(performance.now() - t0 < 4000, "the server closed the idle connection itself");
  const stalled = answers(await exchange(s.addr.port, "GET / HTTP/1.1\r\nHo", 5000));
  assert.equal(stalled[0].status, 408);
  await s.shutdown();
});

t(
  "http1 closes a connection whose request body stalls between bytes past bodyTimeoutMs",
  async () => {
    const read = Promise.withResolvers<string>();
    const s = serveHttp1({
      port: 0,
      bodyTimeoutMs: 300,
      handler: async (req, res) => {
        read.resolve(await req.readAll(1000).then(() => "whole", (e: Error) => e.name));
        await res.send(200, [], "x").catch(() => {});
      },
    });
    const t0 = performance.now();
    // Ten of a hundred bytes, then nothing: the connection is not held open for ever.
    await exchange(
      s.addr.port,
      "POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 100\r\n\r\n0123456789",
      5000,
    );
    assert.ok(performance.now() - t0 < 4000, `${performance.now() - t0} ms: the server closed it`);
    assert.notEqual(await read.promise, "whole");
    await s.shutdown();
  },
);

t("http1 tells the handler when its client goes away", async () => {
  let aborted = false;
  const done = Promise.withResolvers<void>();
  const s = serveHttp1({
    port: 0,
    handler: async (req, res) => {
      req.onAbort(() => {
        aborted = true;
        done.resolve();
      });
      await done.promise;
      await res.send(200, [], "late").catch(() => {});
    },
  });
  const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
  await c.write(enc.encode("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"));
  await new Promise((r) => setTimeout(r, 50));
  c.close();
  await done.promise;
  assert.ok(aborted);
  await s.shutdown();
});

t(
  "http1 sendResponse sends a complete body sized and streams one still being produced",
  async () => {
    const s = serveHttp1({
      port: 0,
      handler: async (req, res) => {
        if (req.url === "/json") return await res.sendResponse(Response.json({ a: 1 }));
        let i = 0;
        const body = new ReadableStream<Uint8Array>({
          async pull(c) {
            await new Promise((r) => setTimeout(r, 20));
            if (i++ < 3) c.enqueue(enc.encode(`data: ${i}\n\n`));
            else c.close();
          },
        });
        await res.sendResponse(
          new Response(body, { headers: { "content-type": "text/event-stream" } }),
        );
      },
    });
    const [json, sse] = answers(
      await exchange(s.addr.port, [
        "GET /json HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /sse HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
      ]),
    );
    assert.match(json.head, /content-length: 7/);
    assert.equal(json.body, '{"a":1}');
    assert.match(sse.head, /transfer-encoding: chunked/);
    assert.equal(sse.body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    await s.shutdown();
  },
);

t(
  "http1 sendResponse sends the handler's head, then cuts, when the body fails before its first byte",
  async () => {
    const s = serveHttp1({
      port: 0,
      onError() {},
      handler: async (req, res) => {
        const body = new ReadableStream<Uint8Array>({
          start(c) {
            if (req.url === "/some") c.enqueue(enc.encode("data: 1\n\n"));
          },
          pull(c) {
            c.error(new Error("the worker broke its answer off"));
          },
        });
        await res.sendResponse(
          new Response(body, { headers: { "content-type": "text/event-stream" } }),
        );
      },
    });
    for (const [path, came] of [["/none", ""], ["/some", "9\r\ndata: 1\n\n\r\n"]]) {
      const raw = await exchange(s.addr.port, `GET ${path} HTTP/1.1\r\nHost: h\r\n\r\n`);
      // Before: 500 with the gateway's own error, which a client may send again.
      assert.match(raw, /^HTTP\/1\.1 200 OK\r\n/, raw);
      assert.match(raw, /transfer-encoding: chunked/);
      const body = raw.slice(raw.indexOf("\r\n\r\n") + 4);
      assert.equal(body, came, "what came, then the connection cut: no last chunk");
    }
    await s.shutdown();
  },
);

t(
  "http1 survives malformed heads: every mutation gets an answer or a close, never a crash",
  async () => {
    const s = echo();
    const rnd = rng(20261130);
    const valid = "POST /fuzz?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nX-A: b\r\n\r\nbody";
    const alphabet = ["\r", "\n", " ", ":", "\0", "\x7f", "\xff", "0", "-", "chunked", "\t"];
    const mutate = () => {
      const chars = [...valid];
      for (let k = 1 + Math.floor(rnd() * 4); k > 0; k--) {
        const at = Math.floor(rnd() * chars.length);
        const op = rnd();
        if (op < 0.4) chars[at] = alphabet[Math.floor(rnd() * alphabet.length)];
        else if (op < 0.7) chars.splice(at, 1);
        else chars.splice(at, 0, alphabet[Math.floor(rnd() * alphabet.length)]);
      }
      return chars.join("");
    };
    for (let batch = 0; batch < 15; batch++) {
      const texts = await Promise.all(
        Array.from({ length: 20 }, () => exchange(s.addr.port, mutate(), 300)),
      );
      for (const text of texts) {
        for (const a of answers(text)) {
          assert.ok([200, 400, 408, 413, 414, 431, 501, 505].includes(a.status), text);
        }
      }
    }
    // Still serving.
    const ok = answers(await exchange(s.addr.port, valid.replace("HTTP/1.1", "HTTP/1.0")));
    assert.equal(ok[0].status, 200);
    await s.shutdown();
  },
);

t("http1 ignores a protocol upgrade it was asked for and goes on speaking HTTP/1.1", async () => {
  const s = echo();
  const got = answers(
    await exchange(
      s.addr.port,
      "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ),
  );
  assert.deepEqual(got.map((a) => [a.status, JSON.parse(a.body).url]), [[200, "/ws"], [
    200,
    "/after",
  ]]);
  await s.shutdown();
});

Deno.test("acceptLoop pauses after a failed accept, doubling to a cap, and starts over after one succeeds", async () => {
  // Out of descriptors ten times, a connection, twice more, then the listener is closed.
  const script = [...Array(10).fill("EMFILE"), "ok", "EMFILE", "EMFILE", "closed"];
  let closing = false;
  const listener = {
    accept(): Promise<Deno.TcpConn> {
      const step = script.shift()!;
      if (step === "ok") return Promise.resolve({} as Deno.TcpConn);
      if (step === "closed") closing = true;
      return Promise.reject(new Error(step));
    },
  };
  const sleeps: number[] = [];
  const errors: string[] = [];
  let accepted = 0;
  await acceptLoop(listener, () => closing, () => accepted++, {
    onError: (err) => errors.push((err as Error).message),
    sleep: (ms) => (sleeps.push(ms), Promise.resolve()),
  });
  // Each pause within the backoff's ±20% of its step.
  const want = [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 5, 10];
  assert.equal(sleeps.length, want.length);
  sleeps.forEach((ms, i) =>
    assert.ok(ms >= want[i] * 0.8 && ms <= want[i] * 1.2, `${ms}, ${want[i]}`)
  );
  assert.equal(accepted, 1);
  assert.deepEqual(errors, ["EMFILE", "EMFILE"], "the first failure of each run is reported");
});

t("http1 cuts off a client that takes nothing of its answer for sendTimeoutMs", async () => {
  let outcome = "";
  const s = serveHttp1({
    port: 0,
    sendTimeoutMs: 1000,
    handler: async (_req, res) => {
      const chunk = new Uint8Array(1024 * 1024);
      await res.start(200, [["content-type", "application/octet-stream"]]);
      try {
        for (let i = 0; i < 200; i++) await res.write(chunk);
        outcome = "written";
      } catch (err) {
        outcome = (err as Error).name;
        throw err;
      }
    },
  });
  const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
  await c.write(enc.encode("GET / HTTP/1.1\r\nHost: h\r\n\r\n")); // and never reads
  // The server looks once a second: cut off within the timeout and two looks.
  for (let i = 0; i < 40 && (outcome === "" || s.connections); i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(outcome, "ConnectionClosed");
  assert.equal(s.connections, 0);
  c.close();
  await s.shutdown();
});

t(
  "http1 tells a request its caller is gone when the server cuts the connection (a stalled send)",
  async () => {
    // What listens to it (a queued call, a worker's request) must hear it even when the
    // handler lets go at once: the read loop sees the end only after the request is over.
    let aborted = false;
    let outcome = "";
    const s = serveHttp1({
      port: 0,
      sendTimeoutMs: 500,
      handler: async (req, res) => {
        req.onAbort(() => aborted = true);
        const chunk = new Uint8Array(1024 * 1024);
        await res.start(200, [["content-type", "application/octet-stream"]]);
        try {
          for (let i = 0; i < 200; i++) await res.write(chunk);
        } catch (err) {
          outcome = (err as Error).name; // and the handler returns
        }
      },
    });
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    await c.write(enc.encode("GET / HTTP/1.1\r\nHost: h\r\n\r\n")); // and never reads
    for (let i = 0; i < 40 && outcome === ""; i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(outcome, "ConnectionClosed");
    assert.equal(aborted, true);
    c.close();
    await s.shutdown();
  },
);

t("http1 takes trailer fields for no headers, and bounds them and chunk extensions", async () => {
  // A handler that shows the headers it was given.
  const s = serveHttp1({
    port: 0,
    handler: async (req, res) => {
      const body = await req.readAll(1000);
      await res.send(
        200,
        [["content-type", "application/json"]],
        JSON.stringify({
          headers: req.headers.map((h) => h[0]),
          body: dec.decode(body),
        }),
      );
    },
  });
  try {
    // Trailers in the same packet as the head: not headers.
    const one = answers(
      await exchange(
        s.addr.port,
        "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
          "2\r\n{}\r\n0\r\nauthorization: Bearer smuggled\r\nprefer: respond-async\r\n\r\n",
      ),
    );
    assert.equal(one[0].status, 200);
    const seen = JSON.parse(one[0].body);
    assert.equal(seen.body, "{}");
    assert.ok(!seen.headers.includes("authorization") && !seen.headers.includes("prefer"));
    // Endless trailers: refused once past the head's limit, not held.
    const flood = "x-t: " + "a".repeat(1000) + "\r\n";
    const cut = await exchange(s.addr.port, [
      "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n",
      ...Array.from({ length: 100 }, () => flood),
    ]);
    assert.match(cut, /^HTTP\/1.1 4\d\d [\s\S]*trailer fields are too large/);
    // Endless chunk extensions (no body bytes): refused, not read for ever.
    const ext = await exchange(s.addr.port, [
      "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=",
      ...Array.from({ length: 100 }, () => "b".repeat(1000)),
    ]);
    assert.match(ext, /^HTTP\/1.1 400 .*\r\n[\s\S]*chunk extensions too large/);
  } finally {
    await s.shutdown();
  }
});

t("http1 sends no 100 Continue to an HTTP/1.0 client", async () => {
  const s = echo();
  const text = await exchange(
    s.addr.port,
    ["POST /e HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", "abc"],
  );
  assert.doesNotMatch(text, /100 Continue/);
  assert.match(text, /^HTTP\/1.1 200 /);
  await s.shutdown();
});

t(
  "http1 reports a handler's failure, unless its caller had gone (its input ended) first",
  async () => {
    const errors: string[] = [];
    const s = serveHttp1({
      port: 0,
      onError: (err) => errors.push((err as Error).message),
      handler: async (req, res) => {
        await res.start(200, [["content-type", "text/event-stream"]]);
        await res.write(enc.encode("data: 1\n\n"));
        await new Promise((r) => setTimeout(r, 100)); // the caller half-closes meanwhile
        throw new Error(`${req.url} broke off with its caller`);
      },
    });
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    await c.write(enc.encode("GET /gone HTTP/1.1\r\nHost: h\r\n\r\n"));
    await c.closeWrite();
    await c.read(new Uint8Array(4096));
    await new Promise((r) => setTimeout(r, 300));
    c.close();
    // The same failure with the caller there is reported.
    const d = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    await d.write(enc.encode("GET /here HTTP/1.1\r\nHost: h\r\n\r\n"));
    await d.read(new Uint8Array(4096));
    await new Promise((r) => setTimeout(r, 300));
    d.close();
    assert.deepEqual(errors, ["/here broke off with its caller"]);
    await s.shutdown(100);
  },
);
