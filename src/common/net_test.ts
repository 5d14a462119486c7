import assert from "node:assert/strict";
import { FETCH_BLOCKED_PORTS, freePort, listening } from "./net.ts";

Deno.test("freePort() returns a port nothing listens on, that can be listened on", () => {
  const port = freePort();
  assert.ok(port > 0);
  const l = Deno.listen({ hostname: "127.0.0.1", port });
  l.close();
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

Deno.test("freePort() passes over the ports fetch refuses, which fetch does refuse", async () => {
  for (const port of FETCH_BLOCKED_PORTS) {
    await assert.rejects(fetch(`http://127.0.0.1:${port}/`), /blocked/, `${port}`);
  }
  const lo = Number(
    Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").split(/\s+/)[0],
  );
  if (!(lo > 12_000)) return console.log(`skipped: the range begins at ${lo}`);
  // Its first pick 10080, then another.
  const random = Math.random;
  let picks = 0;
  Math.random = () => picks++ === 0 ? 80.5 / (lo - 10_000) : random();
  try {
    const port = freePort();
    assert.notEqual(port, 10080);
    assert.ok(picks >= 2, "it picked again");
  } finally {
    Math.random = random;
  }
});
