/**
 * The embedded audit under a steady stream of request rows, as a gateway
 * makes them under load: rows go into the batching buffer
 * (`BatchingAuditLog`, a tick every 200 ms) at a fixed rate, and the
 * buffer writes them through the SQLite worker the platform uses. Prints,
 * per row: the process's CPU (all threads: the buffer, the worker, SQLite),
 * the bytes it wrote (`wchar` of `/proc/self/io`: the WAL and the database
 * file, whose writes are most of it), and its write system calls.
 *
 * `AUDIT_BASELINE=DIR` also runs another checkout's audit (say `git worktree
 * add DIR HEAD~1`) in the same process, interleaved round by round, and
 * prints the median of the per-round CPU ratios.
 *
 * Run: `deno run -A bench/audit_stream.ts [rows per second] [seconds] [rounds] [functions]`
 * (10000, 5, 3, 1): rows go to `functions` functions in turn.
 */
import process from "node:process";
import type { RequestRow } from "../src/audit/types.ts";

const rate = Number(Deno.args[0] ?? 10_000);
const seconds = Number(Deno.args[1] ?? 5);
const rounds = Number(Deno.args[2] ?? 3);
const functions = Number(Deno.args[3] ?? 1);
const baseline = Deno.env.get("AUDIT_BASELINE");

interface AuditModules {
  name: string;
  // deno-lint-ignore no-explicit-any
  batching: any;
  // deno-lint-ignore no-explicit-any
  worker: any;
}

async function modules(name: string, root: string): Promise<AuditModules> {
  return {
    name,
    batching: await import(`${root}/src/audit/batching.ts`),
    worker: await import(`${root}/src/audit/sqlite_worker.ts`),
  };
}

/** A row like the gateway's for a warm call of one function. */
function row(i: number): RequestRow {
  return {
    time: Date.now(),
    gateway: "gw-5f3a9c",
    principal: "key:k1b2c3d4",
    tenant: "bench",
    namespace: "gw",
    func: functions > 1 ? `lm${i % functions}` : "lm",
    method: "POST",
    path: "/funccall/bench/gw/lm/v1/completions",
    status: 200,
    latencyMs: 0.7 + (i % 10) / 10,
    ttfbMs: 0.6,
    coldStart: false,
    resumed: false,
    pod: "bench-gw-lm-1-8e2f",
    version: 1,
    ttftMs: 0.6,
    tokensPerS: 5000 + (i % 100),
    promptTokens: 2,
    completionTokens: 4,
  };
}

/** `wchar` and `syscw` of this process. */
async function io(): Promise<{ bytes: number; writes: number }> {
  const text = await Deno.readTextFile("/proc/self/io");
  const field = (k: string) => Number(text.match(new RegExp(`^${k}: (\\d+)`, "m"))![1]);
  return { bytes: field("wchar"), writes: field("syscw") };
}

interface Result {
  rows: number;
  cpuUs: number;
  bytes: number;
  writes: number;
}

async function run(m: AuditModules): Promise<Result> {
  const dir = await Deno.makeTempDir({ prefix: "inferx-audit-stream-" });
  const log = new m.batching.BatchingAuditLog(m.worker.openWorkerAudit(`${dir}/audit.db`, {}));
  try {
    for (let i = 0; i < 2000; i++) log.request(row(i)); // the worker started, statements ready
    await log.flush();
    const c0 = process.cpuUsage();
    const io0 = await io();
    const t0 = performance.now();
    let n = 0;
    while (performance.now() - t0 < seconds * 1000) {
      const due = Math.floor((performance.now() - t0) * rate / 1000);
      for (; n < due; n++) log.request(row(n));
      await new Promise((r) => setTimeout(r, 1));
    }
    await log.flush();
    const c = process.cpuUsage(c0);
    const io1 = await io();
    return {
      rows: n,
      cpuUs: (c.user + c.system) / n,
      bytes: (io1.bytes - io0.bytes) / n,
      writes: (io1.writes - io0.writes) / n,
    };
  } finally {
    await log.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const paths = [
  ...(baseline
    ? [await modules(`baseline (${baseline})`, new URL(`file://${baseline}/`).href)]
    : []),
  await modules("this checkout", new URL("..", import.meta.url).href.replace(/\/$/, "")),
];
const results = paths.map(() => [] as Result[]);
for (let r = 0; r < rounds; r++) {
  for (const [i, m] of paths.entries()) results[i].push(await run(m));
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
console.log(
  `audit stream: ${rate} rows/s to ${functions} function(s) for ${seconds} s, median of ${rounds} rounds; ` +
    `deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores`,
);
console.log("| audit | rows | CPU µs/row | bytes written/row | write calls/row |");
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const [i, m] of paths.entries()) {
  const rs = results[i];
  console.log(
    `| ${m.name} | ${median(rs.map((x) => x.rows))} | ${
      median(rs.map((x) => x.cpuUs)).toFixed(2)
    } | ${median(rs.map((x) => x.bytes)).toFixed(0)} | ${
      median(rs.map((x) => x.writes)).toFixed(3)
    } |`,
  );
}
if (baseline) {
  const ratios = results[1].map((x, r) => x.cpuUs / results[0][r].cpuUs).sort((a, b) => a - b);
  console.log(
    `this checkout vs baseline: CPU per row ${median(ratios).toFixed(3)}x (rounds: ${
      ratios.map((x) => x.toFixed(2)).join(", ")
    })`,
  );
}
