/**
 * The floor of a proxy in Deno, for the gateway benchmark: about forty lines
 * on raw sockets (`Deno.listen`, `Deno.connect`), Content-Length framing
 * only, one upstream connection per client connection, no routing, no
 * checks. It shows what the runtime's socket operations cost per request on
 * this machine; the gateway's cost above it is its own work. Not for use
 * anywhere else: it trusts both peers completely.
 *
 * Run (as a child of bench/gateway.ts): `deno run -A bench/raw_proxy.ts PORT UPSTREAM`.
 *
 * @module
 */
const [port, upstream] = [Number(Deno.args[0]), Deno.args[1]];
const colon = upstream.lastIndexOf(":");
const dec = new TextDecoder();

/** Reads one message (head and Content-Length body) into `buf`; its length, or -1 at close. */
async function message(conn: Deno.Conn, buf: Uint8Array): Promise<number> {
  let n = 0;
  while (true) {
    const r = await conn.read(buf.subarray(n));
    if (r === null) return -1;
    n += r;
    let end = -1;
    for (let i = 3; i < n; i++) {
      if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) {
        end = i + 1;
        break;
      }
    }
    if (end < 0) continue;
    const m = /content-length:\s*(\d+)/i.exec(dec.decode(buf.subarray(0, end)));
    const total = end + (m ? Number(m[1]) : 0);
    while (n < total) {
      const r2 = await conn.read(buf.subarray(n));
      if (r2 === null) return -1;
      n += r2;
    }
    return n;
  }
}

for await (const client of Deno.listen({ hostname: "127.0.0.1", port })) {
  (async () => {
    const up = await Deno.connect({
      hostname: upstream.slice(0, colon),
      port: Number(upstream.slice(colon + 1)),
    });
    client.setNoDelay(true);
    up.setNoDelay(true);
    const a = new Uint8Array(64 * 1024);
    const b = new Uint8Array(64 * 1024);
    for (let n; (n = await message(client, a)) >= 0;) {
      await up.write(a.subarray(0, n));
      const m = await message(up, b);
      if (m < 0) break;
      await client.write(b.subarray(0, m));
    }
    client.close();
    up.close();
  })().catch(() => {});
}
