import assert from "node:assert/strict";
import { hasPython } from "../common/testing.ts";
import { freePort } from "../common/net.ts";
import {
  httpCall,
  PROBE_FAST_FOR_MS,
  PROBE_FAST_MS,
  PROBE_FIRST_FOR_MS,
  PROBE_FIRST_MS,
  PROBE_SLOW_MS,
  probeInterval,
  waitForProbe,
} from "./probe.ts";

const python = hasPython();
if (!python) console.log("skipping the unanswered-connect probe test: no python3 here");

Deno.test("a starting worker is probed often at first, then less often", () => {
  assert.equal(probeInterval(0), PROBE_FIRST_MS);
  assert.equal(probeInterval(PROBE_FIRST_FOR_MS - 1), PROBE_FIRST_MS);
  assert.equal(probeInterval(PROBE_FIRST_FOR_MS), PROBE_FAST_MS);
  assert.equal(probeInterval(PROBE_FAST_FOR_MS - 1), PROBE_FAST_MS);
  assert.equal(probeInterval(PROBE_FAST_FOR_MS), PROBE_SLOW_MS);
  assert.equal(probeInterval(60_000), PROBE_SLOW_MS);
  assert.ok(PROBE_FIRST_MS < PROBE_FAST_MS && PROBE_FAST_MS < PROBE_SLOW_MS);
  assert.ok(PROBE_FIRST_FOR_MS < PROBE_FAST_FOR_MS);
});

Deno.test("httpCall() answers status and body of one call on its own connection", async () => {
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    async (req) => new Response(`${req.method} ${await req.text()}`, { status: 201 }),
  );
  const a = await httpCall("127.0.0.1", server.addr.port, "/x", { method: "POST", json: { a: 1 } });
  assert.deepEqual(a, { status: 201, body: 'POST {"a":1}' });
  await server.shutdown();
});

Deno.test({
  name: "httpCall() gives up within its time limit on a connect that is never answered",
  ignore: !python,
  async fn() {
    // A listener whose accept queue is full: the kernel drops further connects unanswered.
    const py = new Deno.Command("python3", {
      args: [
        "-c",
        "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(0)\n" +
        "print(s.getsockname()[1],flush=True)\nsys.stdin.read()",
      ],
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    const reader = py.stdout.getReader();
    const port = Number(new TextDecoder().decode((await reader.read()).value).trim());
    const held = await Deno.connect({ hostname: "127.0.0.1", port }); // fills the queue
    try {
      await assert.rejects(
        httpCall("127.0.0.1", port, "/ready", { timeoutMs: 300 }),
        /No answer to \/ready within 300 ms$/,
      );
    } finally {
      held.close();
      await py.stdin.close();
      reader.releaseLock();
      await py.stdout.cancel();
      await py.status;
    }
  },
});

Deno.test("httpCall() ends an answer by its framing, not only by the close: a worker that keeps the connection", async () => {
  const answers = [
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n",
    "HTTP/1.1 204 No Content\r\n\r\n",
  ];
  const want = [{ status: 200, body: "ok" }, { status: 200, body: "ok!!!" }, {
    status: 204,
    body: "",
  }];
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  (async () => {
    let i = 0;
    for await (const c of listener) {
      held.push(c); // answered, never closed
      const a = answers[i++];
      const buf = new Uint8Array(4096);
      await c.read(buf);
      // In two pieces: the framing must be waited for, not taken from the first read.
      const bytes = new TextEncoder().encode(a);
      await c.write(bytes.subarray(0, a.length - 3));
      await new Promise((r) => setTimeout(r, 30));
      await c.write(bytes.subarray(a.length - 3));
    }
  })().catch(() => {});
  try {
    for (const w of want) {
      assert.deepEqual(
        await httpCall("127.0.0.1", listener.addr.port, "/health", { timeoutMs: 2000 }),
        w,
      );
    }
  } finally {
    listener.close();
    for (const c of held) c.close();
  }
});

Deno.test("httpCall() reads a large answer to its end (its worker done with it), keeping its start", async () => {
  const size = 32 * 1024 * 1024; // past what the sockets buffer
  let written = 0;
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  (async () => {
    for await (const c of listener) {
      held.push(c); // never closed by the worker
      await c.read(new Uint8Array(4096));
      await c.write(new TextEncoder().encode(`HTTP/1.1 200 OK\r\ncontent-length: ${size}\r\n\r\n`));
      const piece = new Uint8Array(64 * 1024).fill(0x61);
      while (written < size) written += await c.write(piece.subarray(0, size - written));
    }
  })().catch(() => {});
  try {
    const a = await httpCall("127.0.0.1", listener.addr.port, "/sample", { timeoutMs: 5000 });
    assert.equal(a.status, 200);
    assert.equal(written, size, "the whole answer was taken before the call ended");
    assert.ok(a.body.length >= 1024 * 1024 && a.body.startsWith("aaa"));
  } finally {
    listener.close();
    for (const c of held) c.close();
  }
});

Deno.test("httpCall() follows a chunked answer past 1 MiB to its last chunk, the connection kept open", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const enc = new TextEncoder();
  (async () => {
    for await (const c of listener) {
      held.push(c); // keeps it open despite connection: close
      await c.read(new Uint8Array(4096));
      await c.write(enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"));
      const piece = "a".repeat(64 * 1024);
      // 2 MiB in chunks, their size lines and CRLFs split across writes here and there.
      for (let i = 0; i < 32; i++) {
        const chunk = `${piece.length.toString(16)}\r\n${piece}\r\n`;
        await c.write(enc.encode(chunk.slice(0, 3)));
        await c.write(enc.encode(chunk.slice(3)));
      }
      await c.write(enc.encode("0\r\n\r\n"));
    }
  })().catch(() => {});
  try {
    const a = await httpCall("127.0.0.1", listener.addr.port, "/sample", { timeoutMs: 3000 });
    assert.equal(a.status, 200);
    assert.equal(a.body.length, 1024 * 1024, "its first MiB kept");
    assert.ok(/^a+$/.test(a.body));
  } finally {
    listener.close();
    for (const c of held) c.close();
  }
});

Deno.test("httpCall() refuses a chunk size that is no hex number at once (a -1 kept it reading nothing for ever)", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  (async () => {
    for await (const c of listener) {
      held.push(c);
      await c.read(new Uint8Array(4096));
      await c.write(
        new TextEncoder().encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-1\r\nxyz"),
      );
    }
  })().catch(() => {});
  // In a process of its own: a loop that never yields would hang this one.
  const code = `import { httpCall } from "${new URL("./probe.ts", import.meta.url).href}";
await httpCall("127.0.0.1", ${listener.addr.port}, "/probe", { timeoutMs: 1000 })
  .then((a) => console.log("answered", a.status), (e) => console.log("failed:", e.message));`;
  const child = new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped" })
    .spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  try {
    const out = new TextDecoder().decode((await child.output()).stdout);
    assert.match(out, /failed: Not an HTTP answer \(.*chunk size.*\) \(the answer to \/probe\)/);
  } finally {
    clearTimeout(timer);
    listener.close();
    for (const c of held) c.close();
  }
});

Deno.test("waitForProbe() resolves once the worker answers 2xx", async () => {
  let calls = 0;
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => new Response(null, { status: ++calls < 3 ? 503 : 200 }),
  );
  try {
    await waitForProbe("127.0.0.1", server.addr.port, "/", new Promise(() => {}), {
      timeoutMs: 5000,
      intervalMs: 1,
    });
    assert.equal(calls, 3);
  } finally {
    await server.shutdown();
  }
});

Deno.test("waitForProbe() rejects with the reason when the worker dies first, or at the timeout, naming no address", async () => {
  const port = freePort();
  await assert.rejects(
    waitForProbe("127.0.0.1", port, "/health", Promise.resolve("exit code 3"), {
      timeoutMs: 5000,
    }),
    /worker exited before it was ready \(exit code 3\)/,
  );
  await assert.rejects(
    waitForProbe("127.0.0.1", port, "/health", new Promise(() => {}), {
      timeoutMs: 50,
      intervalMs: 5,
    }),
    (e: Error) =>
      /^worker did not answer its probe, GET \/health on its \$PORT, within 50 ms/.test(
        e.message,
      ) &&
      !e.message.includes(`127.0.0.1:${port}`) && !e.message.includes(String(port)) &&
      !e.message.includes("unreachable"),
  );
  // In a network of its own, a worker on 127.0.0.1 is the likely cause: said.
  await assert.rejects(
    waitForProbe("127.0.0.1", port, "/health", new Promise(() => {}), {
      timeoutMs: 50,
      intervalMs: 5,
      ownNetwork: "pod",
    }),
    /one bound to 127\.0\.0\.1 is unreachable in its pod's network\)$/,
  );
});

Deno.test("waitForProbe() names the last answer of a worker that answered, but not 2xx", async () => {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("warming up", { status: 503 }),
  );
  try {
    await assert.rejects(
      waitForProbe(
        "127.0.0.1",
        (server.addr as Deno.NetAddr).port,
        "/health",
        new Promise(() => {}),
        { timeoutMs: 100, intervalMs: 10, ownNetwork: "pod" },
      ),
      (e: Error) => {
        assert.equal(
          e.message,
          "worker did not answer its probe, GET /health, with a 2xx within 100 ms (its last answer: 503)",
        );
        return true;
      },
    );
  } finally {
    await server.shutdown();
  }
});
