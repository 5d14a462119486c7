/**
 * What a backlog of asynchronous calls costs the gateway: calls are accepted
 * (`Prefer: respond-async`) for a function whose one slot is taken, so each
 * waits in the queue, and the process's CPU time (utime + stime from /proc)
 * is measured over `batch` accepts at each backlog size. Every accept and
 * every tick passes over the queue for calls to claim: the figure at a large
 * backlog against the one at an empty queue says how much a pass costs per
 * waiting call.
 *
 * Run: `deno run -A bench/calls_backlog.ts [largest backlog] [batch]` (20000, 500).
 */
import { gatewayFixture } from "../src/gateway/testing.ts";

const largest = Number(Deno.args[0] ?? 20_000);
const batch = Number(Deno.args[1] ?? 500);
const f = await gatewayFixture({
  calls: { openMax: 1e9, openMaxBytes: 1e15, leaseMs: 60_000 },
  policy: { parallel: 1, max_replica: 1 },
});
f.sched.hang = true; // no worker comes: the first call holds the slot, the rest wait

/** CPU seconds of this process so far. */
function cpuS(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function accept(n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await f.app.request("/funccall/t/n/f/v1/completions", {
      method: "POST",
      headers: { prefer: "respond-async", "content-type": "application/json" },
      body: '{"prompt":"x"}',
    });
    if (r.status !== 202) throw new Error(`accept: ${r.status} ${await r.text()}`);
    await r.body?.cancel();
    // A turn of the event loop between calls, as calls that come over sockets have: the
    // queue's pass that an accept asks for (a timer) runs before the next one.
    await new Promise((r) => setTimeout(r, 0));
  }
}

console.log(`accepting asynchronous calls behind a full function, ${batch} a batch`);
console.log("| calls waiting | CPU µs an accept | wall µs an accept |");
console.log("| ---: | ---: | ---: |");
const rows: [number, number][] = [];
let waiting = 0;
// The first batch warms the code up (measured, not printed).
let warm = false;
for (const size of [0, 0, largest / 8, largest / 4, largest / 2, largest].map(Math.round)) {
  await accept(Math.max(0, size - waiting));
  waiting = Math.max(waiting, size);
  // Settle: the passes the fill kicked off run before the measure begins.
  await new Promise((r) => setTimeout(r, 200));
  const [c0, t0] = [cpuS(), performance.now()];
  await accept(batch);
  const [cpu, wall] = [(cpuS() - c0) * 1e6 / batch, (performance.now() - t0) * 1000 / batch];
  const at = waiting;
  waiting += batch;
  if (!warm) {
    warm = true;
    continue;
  }
  rows.push([at, cpu]);
  console.log(`| ${at} | ${cpu.toFixed(0)} | ${wall.toFixed(0)} |`);
}
const [first, last] = [rows[0], rows.at(-1)!];
console.log(
  `at ${last[0]} waiting: ${(last[1] / first[1]).toFixed(2)}x the CPU an accept costs at ${
    first[0]
  }`,
);
await f.close();
