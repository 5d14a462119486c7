/**
 * The gateway's HTTP machinery alone, for the gateway benchmark: its
 * raw-socket server (`src/gateway/http1/server.ts`, llhttp framing) and its
 * upstream pool (`src/gateway/http_pool.ts`) forwarding every request to one
 * worker, with the gateway's header filtering and nothing else (no routing,
 * auth, slots, metrics or audit). Between the raw-socket floor
 * (`raw_proxy.ts`) and the gateway, it splits the gateway's cost into what
 * its framing costs and what its own work per call costs.
 *
 * Run (as a child of bench/gateway.ts): `deno run -A bench/framing_proxy.ts PORT UPSTREAM`.
 *
 * @module
 */
import { serveHttp1 } from "../src/gateway/http1/server.ts";
import { HttpPool } from "../src/gateway/http_pool.ts";
import { forwardHeaders } from "../src/gateway/proxy.ts";

const [port, upstream] = [Number(Deno.args[0]), Deno.args[1]];
const pool = new HttpPool();
const CREDENTIALS = new Set(["authorization", "x-api-key"]);
const LIMIT = 1024 * 1024;

serveHttp1({
  port,
  async handler(req, res) {
    const body = req.bodyNow(LIMIT) ?? await req.readAll(LIMIT);
    const a = await pool.send(upstream, {
      method: req.method,
      path: req.url,
      headers: forwardHeaders(req.headers, CREDENTIALS),
      body,
    });
    if (a.bytes !== undefined) return await res.send(a.status, a.headers, a.bytes, a.statusText);
    await res.start(a.status, a.headers, a.length, a.statusText);
    for (let c; (c = await a.read()) !== null;) await res.write(c);
    await res.end();
  },
});
