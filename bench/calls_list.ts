/**
 * What `GET /calls` costs the gateway to find a page among many calls kept
 * (its index, `CallQueue.listed()`): the matches read from the newest end into
 * a bounded heap of the newest `limit` (`Newest`), against every match sorted,
 * over synthetic entries (accepted in order, some in one millisecond). Prints
 * the time each takes, and the longest stretch the listing holds the event
 * loop when it yields every `SLICE` entries as the route does.
 *
 * Run: `deno run -A bench/calls_list.ts [calls] [limit]` (1000000, 100).
 */
import type { ListedCall } from "../src/gateway/calls/queue.ts";
import { Newest } from "../src/gateway/routes/calls.ts";
import { measure } from "./loop_stall.ts";

const n = Number(Deno.args[0] ?? 1_000_000);
const limit = Number(Deno.args[1] ?? 100);
const calls: ListedCall[] = Array.from({ length: n }, (_, i) => ({
  ref: { type: "call", tenant: "t", namespace: `n${i % 10}`, name: `k${i}` },
  revision: i,
  func: `t/n${i % 10}/f`,
  principal: `key:${i % 50}`,
  status: i % 7 ? "succeeded" : "failed",
  acceptedAt: 1_700_000_000_000 + Math.floor(i / 3),
  expiresAt: Infinity,
  seq: i + 1,
}));
const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const time = (f: () => void) => {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
};
const sorted: number[] = [];
const heap: number[] = [];
for (let round = 0; round < 5; round++) {
  sorted.push(time(() => {
    const found: ListedCall[] = [];
    for (const e of calls) if (e.status === "succeeded") found.push(e);
    found.sort((a, b) => b.acceptedAt - a.acceptedAt || b.seq - a.seq);
    found.slice(0, limit);
  }));
  heap.push(time(() => {
    const matches: ListedCall[] = [];
    for (const e of calls) if (e.status === "succeeded") matches.push(e);
    const page = new Newest(limit);
    for (let i = matches.length - 1; i >= 0; i--) page.add(matches[i]);
    page.sorted();
  }));
}
// The longest turn of the event loop while a list runs in slices of 5,000, as the route does.
const { stallMs: longest } = await measure(async () => {
  const matches: ListedCall[] = [];
  let seen = 0;
  for (const e of calls) {
    if (++seen % 5000 === 0) await new Promise((r) => setTimeout(r, 0));
    if (e.status === "succeeded") matches.push(e);
  }
  const page = new Newest(limit);
  for (let i = matches.length - 1; i >= 0; i--) {
    if (i % 5000 === 0) await new Promise((r) => setTimeout(r, 0));
    page.add(matches[i]);
  }
  page.sorted();
});
console.log(
  `${n} calls kept, limit ${limit} (medians of 5): every match sorted ${
    median(sorted).toFixed(1)
  } ms, ` +
    `the newest kept in a heap ${median(heap).toFixed(1)} ms; listed in slices of 5,000, the ` +
    `event loop's longest turn ${longest.toFixed(1)} ms`,
);
