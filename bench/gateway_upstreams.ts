/**
 * Which upstream client should the gateway use? The same warm worker called
 * directly, and through a bare `Deno.serve` proxy (its own process, like the
 * gateway) built on each candidate: `fetch()`, `node:http` with a keep-alive
 * agent, and the gateway's own pool (`src/gateway/http_pool.ts`). Then the
 * gateway itself. One run, same client, ratios against direct.
 *
 * Run: `deno run -A bench/gateway_upstreams.ts [seconds] [concurrency]` (4, 16).
 */
import http from "node:http";
import { Buffer } from "node:buffer";
import { HttpPool } from "../src/gateway/http_pool.ts";
import { load } from "./load.ts";
import { forwardHeaderList } from "../src/gateway/proxy.ts";
import { freePort } from "../src/common/net.ts";
import {
  createNamespace,
  listening,
  ngramFunction,
  putObject,
  request,
  startPlatform,
} from "../tests/e2e/helpers.ts";

type Kind = "fetch" | "node-http" | "pool";

/** Proxy mode: `--proxy KIND PORT UPSTREAM`, run as a child process. */
if (Deno.args[0] === "--proxy") {
  const [, kind, port, upstream] = Deno.args as [string, Kind, string, string];
  const pool = new HttpPool();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const [host, uport] = upstream.split(":");
  const send: Record<Kind, (req: Request, path: string) => Promise<Response>> = {
    fetch: (req, path) =>
      fetch(`http://${upstream}${path}`, {
        method: req.method,
        headers: forwardHeaderList(req.headers),
        body: req.body,
      }),
    pool: async (req, path) =>
      await pool.request(upstream, {
        method: req.method,
        path,
        headers: forwardHeaderList(req.headers),
        body: new Uint8Array(await req.arrayBuffer()),
      }),
    "node-http": async (req, path) => {
      const body = Buffer.from(await req.arrayBuffer());
      return await new Promise<Response>((resolve, reject) => {
        const headers = Object.fromEntries(forwardHeaderList(req.headers));
        headers["content-length"] = String(body.byteLength);
        const r = http.request(
          { host, port: Number(uport), method: req.method, path, headers, agent },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => {
              const h = new Headers();
              for (const [k, v] of Object.entries(res.headers)) {
                if (typeof v === "string") h.set(k, v);
              }
              resolve(
                new Response(Buffer.concat(chunks), {
                  status: res.statusCode,
                  headers: forwardHeaderList(h),
                }),
              );
            });
            res.on("error", reject);
          },
        );
        r.on("error", reject);
        r.end(body);
      });
    },
  };
  Deno.serve({ hostname: "127.0.0.1", port: Number(port), onListen() {} }, async (req) => {
    const u = new URL(req.url);
    const res = await send[kind](req, u.pathname + u.search);
    return new Response(await res.arrayBuffer(), {
      status: res.status,
      headers: forwardHeaderList(res.headers),
    });
  });
} else {
  await main();
}

async function main() {
  const seconds = Number(Deno.args[0] ?? 4);
  const concurrency = Number(Deno.args[1] ?? 16);
  const body = JSON.stringify({ prompt: "The GPU", max_tokens: 1, temperature: 0 });
  const p = await startPlatform({ LOG_LEVEL: "warning" });
  const children: Deno.ChildProcess[] = [];
  try {
    await createNamespace(p.url, "bench", "gw");
    await putObject(
      p.url,
      ngramFunction("bench", "gw", "lm", {
        policy: { Obj: { parallel: 64, max_replica: 1, scalein_timeout: 600 } },
      }),
    );
    const viaGateway = `${p.url}/funccall/bench/gw/lm/v1/completions`;
    const warm = await request(viaGateway, { body: JSON.parse(body) });
    if (warm.status !== 200) throw new Error(`warm-up failed: ${JSON.stringify(warm.body)}`);
    const [pod] = (await request(`${p.url}/pods/bench/gw/lm`)).body;
    const targets: [string, string][] = [["direct", `http://${pod.endpoint}/v1/completions`]];
    for (const kind of ["fetch", "node-http", "pool"] as Kind[]) {
      const port = freePort();
      children.push(
        new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            new URL(import.meta.url).pathname,
            "--proxy",
            kind,
            String(port),
            pod.endpoint,
          ],
          stdout: "null",
          stderr: "inherit",
        }).spawn(),
      );
      while (!await listening(port)) await new Promise((r) => setTimeout(r, 50));
      targets.push([`bare proxy, ${kind}`, `http://127.0.0.1:${port}/v1/completions`]);
    }
    targets.push(["the gateway (pool, auth, audit, metrics)", viaGateway]);
    for (const [, url] of targets) await load(url, 1, concurrency, body); // warm every path
    console.log(
      `gateway upstream clients: ${seconds} s per path, ${concurrency} concurrent, deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores`,
    );
    let direct = 0;
    let directP50 = 0;
    for (const [name, url] of targets) {
      const r = await load(url, seconds, concurrency, body);
      if (name === "direct") (direct = r.rps, directP50 = r.p50);
      console.log(
        `${name.padEnd(42)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${
          r.p50.toFixed(3)
        } ms  ratio ${(r.rps / direct).toFixed(3)}  added p50 ${
          (r.p50 - directP50).toFixed(3)
        } ms  ${r.errors} errors`,
      );
    }
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await Promise.all(children.map((c) => c.status));
    await p.stop();
    await Deno.remove(p.dataDir, { recursive: true });
  }
}
