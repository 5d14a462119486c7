/**
 * What asynchronous calls with large bodies cost everyone else, on
 * `RUN_SERVICE=All` (embedded store, synced on every write).
 *
 * A probe makes small synchronous calls of one function, one at a time,
 * for the whole run; its latencies alone (the baseline, same run) are set
 * against its latencies while `calls` asynchronous calls of another
 * function, each with a body of `mb` MB, are accepted (`concurrency` at a
 * time) and run. Every such body is stored before its 202 and read back
 * to run it, so what the store does with it on the event loop shows up as
 * the probe's tail. Printed: the probe's p50, p99 and worst alone and under
 * the load, their ratios, and the accepted MB/s.
 *
 * Run: `deno run -A bench/calls_bodies.ts [calls] [mb] [concurrency]` (300, 1, 8).
 * `BODIES_DENO_FLAGS="--v8-flags=--prof"` runs the platform with those
 * runtime flags (a profile in the working directory, for
 * `node --prof-process`); `BODIES_OUTPUT=1` prints its output after;
 * `BODIES_BASELINE=<checkout>` runs that checkout's platform instead.
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { request, startPlatform } from "../tests/e2e/helpers.ts";
import { probeCalls, quantile } from "./probe.ts";

const calls = Number(Deno.args[0] ?? 300);
const mb = Number(Deno.args[1] ?? 1);
const concurrency = Number(Deno.args[2] ?? 8);

const runtimeArgs = Deno.env.get("BODIES_DENO_FLAGS")?.split(/\s+/).filter(Boolean) ?? [];
// Another checkout's platform (a baseline from before a change): BODIES_BASELINE=<its root>.
const baseline = Deno.env.get("BODIES_BASELINE");
const main = baseline && `${baseline}/main.ts`;
const p = await startPlatform({ LOG_LEVEL: "warning" }, undefined, { runtimeArgs, main });
try {
  const fn = (name: string) => ({
    type: "function",
    tenant: "bench",
    namespace: "bodies",
    name,
    object: {
      image: "inferx/ngram:latest",
      commands: NGRAM_COMMANDS,
      resources: { CPU: 500, Mem: 256 },
      policy: { Obj: { min_replica: 1, max_replica: 1, parallel: 16, queue_len: 10_000 } },
    },
  });
  for (
    const o of [
      { type: "tenant", tenant: "system", namespace: "system", name: "bench", object: {} },
      { type: "namespace", tenant: "bench", namespace: "system", name: "bodies", object: {} },
      fn("probe"),
      fn("bulk"),
    ]
  ) {
    const r = await request(`${p.url}/object/`, { method: "PUT", body: o });
    if (r.status !== 201) throw new Error(`Cannot create ${o.name}: ${JSON.stringify(r.body)}`);
  }
  const url = (f: string) => `${p.url}/funccall/bench/bodies/${f}/v1/completions`;
  const small = JSON.stringify({ prompt: "The GPU", max_tokens: 4, temperature: 0 });
  for (const f of ["probe", "bulk"]) {
    const r = await request(url(f), { body: small });
    if (r.status !== 200) throw new Error(`warm-up of ${f} failed: ${JSON.stringify(r.body)}`);
  }

  const probe = () => probeCalls(url("probe"), small);
  const stats = (ms: number[]) => ({
    n: ms.length,
    p50: quantile(ms, 0.5),
    p99: quantile(ms, 0.99),
    max: Math.max(...ms),
  });

  const alone = probe();
  await new Promise((r) => setTimeout(r, 5000));
  await alone.stop();

  // The size in a field the n-gram sample passes over (OpenAI's `user`): the worker's own
  // work stays small, and what is measured is the platform's. Sent from a thread of its own,
  // so that making and sending them does not delay the probe's own event loop.
  const loader = `
    self.onmessage = async ({ data: { url, calls, size, concurrency } }) => {
      const big = JSON.stringify({ prompt: "The GPU", max_tokens: 1, user: "x".repeat(size) });
      let next = 0;
      try {
        await Promise.all(Array.from({ length: concurrency }, async () => {
          while (next < calls) {
            next++;
            const r = await fetch(url, {
              method: "POST",
              body: big,
              headers: { prefer: "respond-async", "content-type": "application/json" },
            });
            const b = await r.text();
            if (r.status !== 202) throw new Error("async call: " + r.status + " " + b);
          }
        }));
        self.postMessage({ ok: true });
      } catch (err) {
        self.postMessage({ ok: false, error: String(err) });
      }
    };`;
  const worker = new Worker(
    URL.createObjectURL(new Blob([loader], { type: "application/javascript" })),
    { type: "module" },
  );
  const loaded = probe();
  const t0 = performance.now();
  const sent = new Promise<{ ok: boolean; error?: string }>((resolve) =>
    worker.onmessage = (e) => resolve(e.data)
  );
  worker.postMessage({
    url: url("bulk"),
    calls,
    size: Math.max(1, Math.floor(mb * 1_000_000) - 50),
    concurrency,
  });
  const outcome = await sent;
  worker.terminate();
  if (!outcome.ok) throw new Error(outcome.error);
  const acceptS = (performance.now() - t0) / 1000;
  const open = async () => {
    let n = 0;
    for (const s of ["queued", "running"]) {
      n += (await request(`${p.url}/calls?func=bench/bodies/bulk&status=${s}&limit=1`)).body
        .count as number;
    }
    return n;
  };
  while (await open() > 0) {
    if (performance.now() - t0 > 600_000) throw new Error("the queue did not drain");
    await new Promise((r) => setTimeout(r, 250));
  }
  const totalS = (performance.now() - t0) / 1000;
  await loaded.stop();
  const failed = (await request(`${p.url}/calls?func=bench/bodies/bulk&status=failed&limit=1`))
    .body.count as number;

  const a = stats(alone.ms);
  const l = stats(loaded.ms);
  const f = (x: number, n = 1) => x.toFixed(n);
  console.log(
    `large asynchronous bodies: deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores, ` +
      `All on the embedded store; ${calls} calls of ${mb} MB, ${concurrency} at a time`,
  );
  console.log(
    `accepted in ${f(acceptS, 2)} s (${f(calls * mb / acceptS)} MB/s), all ended after ` +
      `${f(totalS, 2)} s, ${failed} failed`,
  );
  console.log("| probe (small sync calls) | calls | p50 ms | p99 ms | worst ms |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const [name, s] of [["alone", a], ["beside the large calls", l]] as const) {
    console.log(`| ${name} | ${s.n} | ${f(s.p50, 2)} | ${f(s.p99, 2)} | ${f(s.max, 2)} |`);
  }
  console.log(
    `under load / alone: p50 ${f(l.p50 / a.p50, 2)}x, p99 ${f(l.p99 / a.p99, 2)}x, worst ${
      f(l.max / a.max, 2)
    }x`,
  );
} finally {
  await p.stop();
  if (Deno.env.get("BODIES_OUTPUT")) console.log(p.output());
}
