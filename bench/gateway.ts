/**
 * Warm-path benchmark: the same worker called directly and through the
 * gateway, in one run, with the same client (keep-alive fetch, fixed
 * concurrency, fixed duration). Prints throughput and latency for both and
 * the ratios. DESIGN.md budget: at least 60% of direct throughput, added
 * p50 under 0.3 ms.
 *
 * Run: `deno run -A bench/gateway.ts [seconds] [concurrency]` (5, 16).
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { load } from "./load.ts";
import { createNamespace, putObject, request, startPlatform } from "../tests/e2e/helpers.ts";

const seconds = Number(Deno.args[0] ?? 5);
const concurrency = Number(Deno.args[1] ?? 16);
const BODY = JSON.stringify({ prompt: "The GPU", max_tokens: 1, temperature: 0 });

const run = (url: string) => load(url, seconds, concurrency, BODY);

const p = await startPlatform({ LOG_LEVEL: "warning" });
try {
  const put = (body: unknown) => putObject(p.url, body);
  await createNamespace(p.url, "bench", "gw");
  await put({
    type: "function",
    tenant: "bench",
    namespace: "gw",
    name: "lm",
    object: {
      image: "inferx/ngram:latest",
      commands: NGRAM_COMMANDS,
      resources: { CPU: 500, Mem: 256 },
      policy: { Obj: { parallel: 64, max_replica: 1, scalein_timeout: 600 } },
    },
  });
  const viaGateway = `${p.url}/funccall/bench/gw/lm/v1/completions`;
  const warm = await request(viaGateway, { body: JSON.parse(BODY) });
  if (warm.status !== 200) throw new Error(`warm-up failed: ${JSON.stringify(warm.body)}`);
  const [pod] = (await request(`${p.url}/pods/bench/gw/lm`)).body;
  const direct = `http://${pod.endpoint}/v1/completions`;
  await run(direct); // warm both paths
  const d = await run(direct);
  const g = await run(viaGateway);
  const f = (x: number) => x.toFixed(3);
  console.log(
    `gateway warm-path benchmark: ${seconds} s per path, ${concurrency} concurrent, deno ${Deno.version.deno}`,
  );
  console.log(
    `direct:  ${d.rps.toFixed(0)} req/s, p50 ${f(d.p50)} ms, p99 ${
      f(d.p99)
    } ms, ${d.errors} errors`,
  );
  console.log(
    `gateway: ${g.rps.toFixed(0)} req/s, p50 ${f(g.p50)} ms, p99 ${
      f(g.p99)
    } ms, ${g.errors} errors`,
  );
  console.log(
    `throughput ratio gateway/direct: ${(g.rps / d.rps).toFixed(3)} (target >= 0.6); added p50: ${
      f(g.p50 - d.p50)
    } ms (target < 0.3)`,
  );
} finally {
  await p.stop();
  await Deno.remove(p.dataDir, { recursive: true });
}
