/**
 * Embedded audit (SQLite) at 1 million request rows: fills the database
 * through the backend the platform uses (SQLite in a worker) in batches of
 * 1,000 (as the batching buffer writes), then times `/audit/requests?tenant=…&namespace=…&func=…&limit=50` two ways:
 * the `AuditLog.query()` the route calls, and the route itself through the
 * gateway's Hono app (`app.request()`: auth, validation, JSON; no socket).
 * Target: under 20 ms at 1 M rows.
 *
 * Baselines in the same run: the same queries at 10,000 rows (the ratio
 * shows how query time grows with the table); for the fill, what the audit
 * before SQLite did per row (`JSON.stringify` and an append to a file); and
 * the longest stall of the main thread's event loop while filling, with the
 * database in the worker and in the main thread.
 *
 * Run: `deno run -A bench/audit.ts [rows]` (default 1000000).
 */
import { BatchingAuditLog } from "../src/audit/batching.ts";
import { type AuditBackend } from "../src/audit/batching.ts";
import { openSqliteAudit } from "../src/audit/sqlite.ts";
import { openWorkerAudit } from "../src/audit/sqlite_worker.ts";
import type { AuditQuery, RequestRow } from "../src/audit/types.ts";
import { createGatewayApp } from "../src/gateway/app.ts";
import { FuncCache } from "../src/gateway/func_cache.ts";
import type { SchedulerClient } from "../src/rpc/types.ts";
import { StateService } from "../src/statesvc/service.ts";
import { openSqliteStore } from "../src/store/sqlite.ts";

const ROWS = Number(Deno.args[0] ?? 1_000_000);
const SMALL = 10_000;
const BATCH = 1000;
const TENANTS = 10;
const NAMESPACES = 10;
const FUNCS = 100; // per namespace: 10,000 functions, 100 rows each at 1 M rows
const now = Date.now();

function row(i: number, total: number): RequestRow {
  const f = i % (TENANTS * NAMESPACES * FUNCS);
  return {
    // Spread over the last 7 days, oldest first.
    time: now - Math.round((total - i) * (7 * 86_400_000 / total)),
    gateway: "gw-bench",
    principal: `key:k${i % 50}`,
    tenant: `t${f % TENANTS}`,
    namespace: `ns${Math.floor(f / TENANTS) % NAMESPACES}`,
    func: `f${Math.floor(f / (TENANTS * NAMESPACES))}`,
    method: "POST",
    path: `/funccall/t${f % TENANTS}/ns/f/v1/completions`,
    status: i % 97 === 0 ? 503 : 200,
    latencyMs: 3 + (i % 40),
    ttfbMs: 1 + (i % 20),
    coldStart: i % 500 === 0,
    resumed: false,
    pod: `pod-${(i % 4096).toString(16)}`,
  };
}

const noScheduler: SchedulerClient = {
  leaseWorker: () => Promise.reject(new Error("not in this benchmark")),
  returnWorker: () => Promise.resolve(),
  refreshGateway: () => Promise.resolve({ reclaim: [], scaleOut: [] }),
  killPod: () => Promise.resolve(),
};

interface Timing {
  p50: number;
  p99: number;
}

async function time(fn: () => Promise<unknown>, n = 200): Promise<Timing> {
  for (let i = 0; i < 20; i++) await fn();
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return { p50: t[Math.floor(n / 2)], p99: t[Math.floor(n * 0.99)] };
}

const QUERIES: [string, AuditQuery][] = [
  ["tenant+namespace+func", { tenant: "t3", namespace: "ns4", func: "f17", limit: 50 }],
  ["tenant+func", { tenant: "t3", func: "f17", limit: 50 }],
  ["tenant", { tenant: "t3", limit: 50 }],
  ["none", { limit: 50 }],
  ["tenant+func, since 1 h", { tenant: "t3", func: "f17", since: now - 3_600_000, limit: 50 }],
];

/** Fills `backend` with `rows` rows; returns the time and the longest event-loop stall. */
async function fill(backend: AuditBackend, rows: number) {
  let last = performance.now();
  const gaps: number[] = [];
  const probe = setInterval(() => {
    const t = performance.now();
    gaps.push(t - last);
    last = t;
  }, 1);
  const t0 = performance.now();
  for (let i = 0; i < rows; i += BATCH) {
    const requests = [];
    for (let j = i; j < Math.min(rows, i + BATCH); j++) requests.push(row(j, rows));
    await backend.write({ id: `b${i}`, requests, pods: [] });
    await new Promise((r) => setTimeout(r, 0)); // let the probe run between batches
  }
  const ms = performance.now() - t0;
  clearInterval(probe);
  gaps.sort((a, b) => a - b);
  return { ms, stall: { p99: gaps[Math.floor(gaps.length * 0.99)], max: gaps.at(-1)! } };
}

const noLimits = { retainDays: 0, retainMB: 0 };

async function inThreadFill(rows: number) {
  const dir = await Deno.makeTempDir({ prefix: "inferx-bench-audit-" });
  const backend = openSqliteAudit(`${dir}/audit.db`, noLimits);
  const r = await fill(backend, rows);
  await backend.close();
  await Deno.remove(dir, { recursive: true });
  return r;
}

async function measure(rows: number) {
  const dir = await Deno.makeTempDir({ prefix: "inferx-bench-audit-" });
  const backend = openWorkerAudit(`${dir}/audit.db`, noLimits);
  const filled = await fill(backend, rows);
  const size = (await Deno.stat(`${dir}/audit.db`)).size;
  const log = new BatchingAuditLog(backend, { flushMs: 60_000 });
  const store = await openSqliteStore();
  const meta = new StateService(store);
  const cache = new FuncCache({ scheduler: noScheduler, gatewayId: "gw-bench" });
  await cache.start(meta);
  const app = createGatewayApp({ meta, cache, audit: log });
  const results: Record<string, { query: Timing; route?: Timing; rows: number }> = {};
  for (const [name, q] of QUERIES) {
    const got = await log.query("requests", q);
    const params = new URLSearchParams(
      Object.entries(q).map(([k, v]) => [k, String(v)]),
    );
    results[name] = {
      rows: got.length,
      query: await time(() => log.query("requests", q)),
      route: await time(async () => {
        const res = await app.request(`/audit/requests?${params}`);
        if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
        await res.json();
      }),
    };
  }
  cache.stop();
  await log.close();
  await store.close();
  await Deno.remove(dir, { recursive: true });
  return { fillMs: filled.ms, stall: filled.stall, size, results };
}

async function jsonLinesFill(rows: number): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "inferx-bench-audit-" });
  const t0 = performance.now();
  for (let i = 0; i < rows; i += BATCH) {
    let text = "";
    for (let j = i; j < Math.min(rows, i + BATCH); j++) text += JSON.stringify(row(j, rows)) + "\n";
    await Deno.writeTextFile(`${dir}/requests.jsonl`, text, { append: true });
  }
  const ms = performance.now() - t0;
  await Deno.remove(dir, { recursive: true });
  return ms;
}

const stalls = (s: { p99: number; max: number }) => `${s.p99.toFixed(1)} / ${s.max.toFixed(1)} ms`;
const fmt = (t: Timing) => `p50 ${t.p50.toFixed(2)} ms, p99 ${t.p99.toFixed(2)} ms`;
const rate = (n: number, ms: number) => `${Math.round(n / (ms / 1000))} rows/s`;

console.log(
  `embedded audit benchmark: ${ROWS} request rows, ${TENANTS * NAMESPACES * FUNCS} functions`,
);
const small = await measure(SMALL);
const big = await measure(ROWS);
const jsonl = await jsonLinesFill(ROWS);
const STALL_ROWS = Math.min(ROWS, 200_000);
const inThread = await inThreadFill(STALL_ROWS);
const workerStall = await measure(STALL_ROWS);
console.log(
  `fill: ${(big.fillMs / 1000).toFixed(1)} s, ${rate(ROWS, big.fillMs)} (batches of ${BATCH}), ` +
    `file ${(big.size / 1048576).toFixed(0)} MiB; baseline JSON lines appended: ${
      rate(ROWS, jsonl)
    }; ratio sqlite/baseline ${(jsonl / big.fillMs).toFixed(2)}`,
);
console.log(
  `event-loop stalls (p99 / longest) filling ${STALL_ROWS} rows: database in a worker ${
    stalls(workerStall.stall)
  } (${rate(STALL_ROWS, workerStall.fillMs)}), in the main thread ${stalls(inThread.stall)} (${
    rate(STALL_ROWS, inThread.ms)
  })`,
);
for (const [name] of QUERIES) {
  const b = big.results[name];
  const s = small.results[name];
  console.log(`query ${name} (limit 50, ${b.rows} rows back):`);
  console.log(
    `  AuditLog.query at ${ROWS}: ${fmt(b.query)}; at ${SMALL}: ${fmt(s.query)}; ratio ${
      (b.query.p50 / s.query.p50).toFixed(2)
    }`,
  );
  console.log(
    `  GET /audit/requests (app.request) at ${ROWS}: ${fmt(b.route!)}; at ${SMALL}: ${
      fmt(s.route!)
    }`,
  );
}
const main = big.results["tenant+namespace+func"];
console.log(
  `target: /audit/requests?func=…&limit=50 under 20 ms at ${ROWS} rows: route p99 ${
    main.route!.p99.toFixed(2)
  } ms -> ${main.route!.p99 < 20 ? "met" : "MISSED"}`,
);
