/**
 * What large object writes cost everyone else, on `RUN_SERVICE=All`.
 *
 * An object write's body (4 MiB at most) is parsed and checked on the event
 * loop. A probe makes small synchronous calls of a warm function, one at a
 * time, for the whole run; its latencies alone (the baseline, same run) are
 * set against its latencies while `rounds` writes of each shape below are
 * made one after another (each created, then deleted). Printed per shape:
 * the body's size, the answer's status, the write's p50, and the probe's
 * p99 and worst while those writes ran.
 *
 * Shapes: 4 MB of numbers in a field a spec does not have (refused after
 * parsing); 40,000 `envs` (past the bound: refused); 1,000 `envs` of 900
 * bytes (1 MB, stored); a `sample_query` of 120,000 numbers (1 MB,
 * stored); 30,000 annotations (1 MB, past the bound: refused); a 0.2 MB
 * spec padded with spaces to 4 MB.
 *
 * Run: `deno run -A bench/object_writes.ts [rounds]` (5).
 * `OBJECTS_BASELINE=<checkout>` runs that checkout's platform instead.
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { request, startPlatform } from "../tests/e2e/helpers.ts";
import { probeCalls, quantile } from "./probe.ts";

const rounds = Number(Deno.args[0] ?? 5);
const baseline = Deno.env.get("OBJECTS_BASELINE");
const main = baseline && `${baseline}/main.ts`;
const p = await startPlatform({ LOG_LEVEL: "warning" }, undefined, { main });
try {
  const many = <T>(n: number, f: (i: number) => T) => Array.from({ length: n }, (_, i) => f(i));
  const fn = (name: string, spec: Record<string, unknown> = {}, metadata?: unknown) => ({
    type: "function",
    tenant: "bench",
    namespace: "objects",
    name,
    object: {
      metadata,
      spec: {
        image: "inferx/ngram:latest",
        commands: NGRAM_COMMANDS,
        resources: { CPU: 500, Mem: 256 },
        ...spec,
      },
    },
  });
  for (
    const o of [
      { type: "tenant", tenant: "system", namespace: "system", name: "bench", object: {} },
      { type: "namespace", tenant: "bench", namespace: "system", name: "objects", object: {} },
      fn("probe", { policy: { Obj: { min_replica: 1, max_replica: 1 } } }),
    ]
  ) {
    const r = await request(`${p.url}/object/`, { method: "PUT", body: o });
    if (r.status !== 201) throw new Error(`Cannot create ${o.name}: ${JSON.stringify(r.body)}`);
  }
  const url = `${p.url}/funccall/bench/objects/probe/v1/completions`;
  const small = JSON.stringify({ prompt: "The GPU", max_tokens: 4, temperature: 0 });
  const warm = await request(url, { body: small });
  if (warm.status !== 200) throw new Error(`warm-up: ${JSON.stringify(warm.body)}`);

  const padded = () => {
    const s = JSON.stringify(fn("padded", { envs: many(1000, (i) => [`K${i}`, "v".repeat(200)]) }));
    return s + " ".repeat(4_000_000 - s.length);
  };
  const shapes: [string, string][] = [
    [
      "4 MB of numbers, unknown field",
      JSON.stringify(fn("numbers", { x: many(500_000, (i) => i * 1.5) })),
    ],
    [
      "40,000 envs",
      JSON.stringify(fn("envs40k", { envs: many(40_000, (i) => [`K${i}`, "v".repeat(10)]) })),
    ],
    [
      "1,000 envs of 900 B",
      JSON.stringify(fn("envs1k", { envs: many(1000, (i) => [`K${i}`, "v".repeat(900)]) })),
    ],
    [
      "sample_query of 120,000 numbers",
      JSON.stringify(
        fn("sample", {
          sample_query: { path: "v1/completions", body: many(120_000, (i) => i * 1.5) },
        }),
      ),
    ],
    [
      "30,000 annotations",
      JSON.stringify(
        fn("annotated", {}, {
          annotations: Object.fromEntries(many(30_000, (i) => [`a${i}`, "v".repeat(20)])),
        }),
      ),
    ],
    ["0.2 MB spec padded to 4 MB", padded()],
  ];

  const probe = () => probeCalls(url, small);

  // The writes go from a thread of their own: sending 4 MB does not delay the probe's loop.
  const writer = `
    self.onmessage = async ({ data: { base, body, rounds } }) => {
      const name = JSON.parse(body.trimEnd()).name;
      const out = { ms: [], status: 0, message: "" };
      for (let i = 0; i < rounds; i++) {
        const t = performance.now();
        const r = await fetch(base + "/object/", {
          method: "PUT", body, headers: { "content-type": "application/json" },
        });
        const text = await r.text();
        out.ms.push(performance.now() - t);
        out.status = r.status;
        if (r.status !== 201) out.message = JSON.parse(text).error?.message ?? text;
        else {
          const d = await fetch(base + "/object/function/bench/objects/" + name, { method: "DELETE" });
          await d.arrayBuffer();
        }
      }
      self.postMessage(out);
    };`;
  const worker = new Worker(
    URL.createObjectURL(new Blob([writer], { type: "application/javascript" })),
    { type: "module" },
  );
  const alone = probe();
  await new Promise((r) => setTimeout(r, 3000));
  await alone.stop();
  const f = (x: number, n = 1) => x.toFixed(n);
  console.log(
    `object writes: deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores, All; ` +
      `${rounds} writes a shape${baseline ? `; platform from ${baseline}` : ""}`,
  );
  console.log(
    `probe alone: ${alone.ms.length} calls, p50 ${f(quantile(alone.ms, 0.5), 2)} ms, p99 ${
      f(quantile(alone.ms, 0.99), 2)
    } ms, worst ${f(Math.max(...alone.ms), 2)} ms`,
  );
  console.log("| body | MB | status | write p50 ms | probe p99 ms | probe worst ms |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  for (const [name, body] of shapes) {
    const loaded = probe();
    const out = await new Promise<{ ms: number[]; status: number; message: string }>((resolve) => {
      worker.onmessage = (e) => resolve(e.data);
      worker.postMessage({ base: p.url, body, rounds });
    });
    await loaded.stop();
    console.log(
      `| ${name} | ${f(body.length / 1e6, 2)} | ${out.status} | ${f(quantile(out.ms, 0.5))} | ${
        f(quantile(loaded.ms, 0.99))
      } | ${f(Math.max(...loaded.ms))} |`,
    );
    if (out.message) console.log(`|  (${out.message.slice(0, 90)}) | | | | | |`);
  }
  worker.terminate();
} finally {
  await p.stop();
}
