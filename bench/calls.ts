/**
 * Asynchronous calls benchmark, on `RUN_SERVICE=All` (embedded store, its
 * write-ahead log synced before each write is acknowledged, writes made
 * together sharing a sync) with one warm n-gram worker:
 *
 * 1. Accepted calls per second into the durable queue: `wrk` POSTs
 *    `Prefer: respond-async` calls for `seconds`, each answered 202 only
 *    after its record is stored; the queue runs them meanwhile, on the same
 *    worker. The baseline, in the same run: synchronous calls of the same
 *    completion through the gateway. Then how long the queue takes to finish
 *    what was accepted.
 *    Each call is two synced writes of the store (stored with its first
 *    attempt begun, then its result): the store's own synced writes per
 *    second one at a time, measured in the same run on the same file
 *    system, are printed beside it (concurrent calls' writes share syncs,
 *    so they can pass half of that).
 * 2. The latency async adds for a warm worker, one call at a time: a
 *    synchronous call (request to answer) against an asynchronous one
 *    (request to the signed callback arriving at a receiver on 127.0.0.1,
 *    allowed with `INFERX_CALLBACK_ALLOW`), and the 202 alone.
 *
 * Run: `deno run -A bench/calls.ts [seconds] [connections] [sequential calls]` (5, 16, 200).
 * Needs `wrk` (Debian's).
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { openSqliteStore } from "../src/store/sqlite.ts";
import { request, startPlatform } from "../tests/e2e/helpers.ts";
import { hasCommand, wrk, type WrkResult } from "./wrk.ts";

const seconds = Number(Deno.args[0] ?? 5);
const connections = Number(Deno.args[1] ?? 16);
const sequential = Number(Deno.args[2] ?? 200);
const BODY = JSON.stringify({ prompt: "The GPU", max_tokens: 4, temperature: 0 });

if (!await hasCommand("wrk")) {
  console.error("bench/calls.ts needs wrk: apt-get install wrk");
  Deno.exit(2);
}

const p = await startPlatform({ LOG_LEVEL: "warning", INFERX_CALLBACK_ALLOW: "127.0.0.1/32" });
const arrived = new Map<string, number>();
const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
  const t = performance.now();
  arrived.set(req.headers.get("x-inferx-call") ?? "", t);
  await req.body?.cancel();
  return new Response(null, { status: 204 });
});
try {
  for (
    const o of [
      { type: "tenant", tenant: "system", namespace: "system", name: "bench", object: {} },
      { type: "namespace", tenant: "bench", namespace: "system", name: "calls", object: {} },
      {
        type: "function",
        tenant: "bench",
        namespace: "calls",
        name: "lm",
        object: {
          image: "inferx/ngram:latest",
          commands: NGRAM_COMMANDS,
          resources: { CPU: 500, Mem: 256 },
          policy: {
            Obj: { min_replica: 1, max_replica: 1, parallel: 64, queue_len: 10_000 },
          },
        },
      },
    ]
  ) {
    const r = await request(`${p.url}/object/`, { method: "PUT", body: o });
    if (r.status !== 201) throw new Error(`Cannot create ${o.name}: ${JSON.stringify(r.body)}`);
  }
  const url = `${p.url}/funccall/bench/calls/lm/v1/completions`;
  const warm = await request(url, { body: JSON.parse(BODY) });
  if (warm.status !== 200) throw new Error(`warm-up failed: ${JSON.stringify(warm.body)}`);
  const f = (x: number, n = 2) => x.toFixed(n);
  console.log(
    `asynchronous calls benchmark: deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} ` +
      `cores, All on the embedded store (SQLite, its log synced before a write is acknowledged), ` +
      `one warm n-gram worker`,
  );

  // 1. Throughput: accepted calls per second, against synchronous calls per second.
  const run = (headers: Record<string, string> = {}) =>
    wrk(url, { seconds, connections, body: BODY, headers });
  await run(); // warm the path
  const sync: WrkResult = await run();
  const before = Date.now();
  const accepted: WrkResult = await run({ prefer: "respond-async" });
  const drainStart = performance.now();
  const count = async (status: string) =>
    (await request(`${p.url}/calls?func=bench/calls/lm&status=${status}&limit=1`)).body
      .count as number;
  while (await count("queued") + await count("running") > 0) {
    if (performance.now() - drainStart > 300_000) throw new Error("the queue did not drain");
    await new Promise((r) => setTimeout(r, 500));
  }
  const drainS = (performance.now() - drainStart) / 1000;
  const totalS = (Date.now() - before) / 1000;
  const succeeded = await count("succeeded");
  const failed = await count("failed");
  console.log(`\n${seconds} s of load per path, ${connections} connections (wrk)`);
  console.log("| path | req/s | p50 ms | p99 ms | errors |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  console.log(
    `| sync call (200) | ${f(sync.rps, 0)} | ${f(sync.p50)} | ${f(sync.p99)} | ${sync.errors} |`,
  );
  console.log(
    `| async accept (202, stored) | ${f(accepted.rps, 0)} | ${f(accepted.p50)} | ${
      f(accepted.p99)
    } | ${accepted.errors} |`,
  );
  console.log(
    `accepted/sync throughput: ${
      f(accepted.rps / sync.rps)
    }; ${accepted.requests} accepted calls ` +
      `all ended ${f(drainS, 1)} s after the load stopped (${
        f(accepted.requests / totalS, 0)
      } completed calls/s over load + drain; ${succeeded} succeeded, ${failed} failed)`,
  );

  // The store alone: synced creates of a record of the same size, on the same file system.
  const storeDir = await Deno.makeTempDir({ prefix: "inferx-bench-store-" });
  const store = await openSqliteStore(`${storeDir}/meta.db`);
  const one = (await request(`${p.url}/calls?func=bench/calls/lm&limit=1`)).body.items[0];
  const text = JSON.stringify((await request(`${p.url}/calls/${one.id}`)).body);
  const t0 = performance.now();
  const writes = 1000;
  for (let i = 0; i < writes; i++) await store.create(`/registry/call/b/n/c${i}`, text);
  const storeWps = writes / ((performance.now() - t0) / 1000);
  await store.close();
  await Deno.remove(storeDir, { recursive: true });
  console.log(
    `the store alone, one write at a time: ${
      f(storeWps, 0)
    } synced writes/s (${text.length}-byte ` +
      `records), ${f(storeWps / 2, 0)} calls/s at two writes a call; accepted calls reached ` +
      `${f(accepted.rps / (storeWps / 2))} of that (writes made together share syncs)`,
  );

  // 2. Latency, one call at a time: sync answer vs async callback.
  const hook = `http://127.0.0.1:${receiver.addr.port}/cb`;
  const syncMs: number[] = [];
  const acceptMs: number[] = [];
  const asyncMs: number[] = [];
  const serverMs: number[] = [];
  for (let i = 0; i < sequential; i++) {
    let t0 = performance.now();
    const s = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: BODY,
    });
    await s.arrayBuffer();
    syncMs.push(performance.now() - t0);
    t0 = performance.now();
    const a = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        prefer: "respond-async",
        "x-inferx-callback-url": hook,
      },
      body: BODY,
    });
    const { id } = await a.json();
    acceptMs.push(performance.now() - t0);
    while (!arrived.has(id)) await new Promise((r) => setTimeout(r, 1));
    asyncMs.push(arrived.get(id)! - t0);
    const c = await request(`${p.url}/calls/${id}`);
    serverMs.push(Date.parse(c.body.finished_at) - Date.parse(c.body.accepted_at));
  }
  const pct = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.floor(q * xs.length)];
  console.log(`\n${sequential} calls one at a time, each way`);
  console.log("| measure | p50 ms | p90 ms |");
  console.log("| --- | ---: | ---: |");
  for (
    const [name, xs] of [
      ["sync: request to answer", syncMs],
      ["async: request to 202", acceptMs],
      ["async: request to signed callback received", asyncMs],
      ["async: accepted to finished (server clock, ms resolution)", serverMs],
    ] as const
  ) console.log(`| ${name} | ${f(pct(xs, 0.5))} | ${f(pct(xs, 0.9))} |`);
  console.log(
    `async adds ${f(pct(asyncMs, 0.5) - pct(syncMs, 0.5))} ms at p50 over a synchronous call ` +
      `(${f(pct(asyncMs, 0.5) / pct(syncMs, 0.5))}x)`,
  );
} finally {
  await p.stop();
  await receiver.shutdown();
  await Deno.remove(p.dataDir, { recursive: true });
}
