import assert from "node:assert/strict";
import { freePort, listening } from "./net.ts";

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
