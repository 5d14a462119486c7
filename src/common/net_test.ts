import assert from "node:assert/strict";
import { freePort, listening, waitForProbe } from "./net.ts";

Deno.test("freePort() returns a port nothing listens on, that can be listened on", () => {
  const port = freePort();
  assert.ok(port > 0);
  const l = Deno.listen({ hostname: "127.0.0.1", port });
  l.close();
});

Deno.test("waitForProbe() resolves once the URL answers 2xx", async () => {
  let calls = 0;
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => new Response(null, { status: ++calls < 3 ? 503 : 200 }),
  );
  try {
    await waitForProbe(`http://127.0.0.1:${server.addr.port}/`, new Promise(() => {}), {
      timeoutMs: 5000,
      intervalMs: 1,
    });
    assert.equal(calls, 3);
  } finally {
    await server.shutdown();
  }
});

Deno.test("waitForProbe() rejects with the reason when the worker dies first, or at the timeout", async () => {
  const url = `http://127.0.0.1:${freePort()}/health`;
  await assert.rejects(
    waitForProbe(url, Promise.resolve("exit code 3"), { timeoutMs: 5000 }),
    /worker exited before it was ready \(exit code 3\)/,
  );
  await assert.rejects(
    waitForProbe(url, new Promise(() => {}), { timeoutMs: 50, intervalMs: 5 }),
    /did not answer .* within 50 ms/,
  );
});

Deno.test("listening() names the address and the setting when a port is taken", () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  try {
    assert.throws(
      () =>
        listening(
          "GATEWAY_PORT",
          "127.0.0.1",
          port,
          () => Deno.listen({ hostname: "127.0.0.1", port }),
        ),
      (e: Error & { code?: string }) =>
        e.code === "unavailable" &&
        e.message.startsWith(`Cannot listen on 127.0.0.1:${port} (GATEWAY_PORT): `),
    );
  } finally {
    taken.close();
  }
});

Deno.test("freePort() keeps below the kernel's range of connections' own ports where there is one", () => {
  const lo = Number(
    Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").split(/\s+/)[0],
  );
  if (!(lo > 12_000)) return console.log(`skipped: the range begins at ${lo}`);
  for (let i = 0; i < 20; i++) {
    const port = freePort();
    assert.ok(port >= 10_000 && port < lo, `${port}`);
  }
});
