/**
 * What showing an asynchronous call's JSON answer (`GET /calls/{id}`, a
 * callback's body) costs the gateway's event loop, which serves every other
 * call meanwhile. For each shape of answer (many small objects, as log
 * probabilities are; long text), the longest turn of the loop while the view
 * is made, timed by a 1 ms interval (`loop_stall.ts`): the baseline, in the same run, parses
 * the answer and writes it again on the loop (`JSON.stringify(callView())`,
 * what the gateway did before); then the gateway's way (`callViewText`: a
 * large answer checked in its thread for large bodies, the worker's own
 * text put in). Medians of `rounds`, the two taking turns.
 *
 * Run: `deno run -A bench/call_view.ts [MB] [rounds]` (1.3, 15).
 *
 * @module
 */
import { callView, callViewText } from "../src/gateway/calls/view.ts";
import { JsonProbe } from "../src/gateway/json_probe.ts";
import type { CallRecord } from "../src/model/call.ts";
import { measure } from "./loop_stall.ts";

const mb = Number(Deno.args[0] ?? 1.3);
const rounds = Number(Deno.args[1] ?? 15);
if (!(mb > 0) || !(rounds >= 1)) {
  console.error("usage: deno run -A bench/call_view.ts [MB] [rounds]");
  Deno.exit(2);
}

/** An answer of about `mb` MB: `n` items made by `item`. */
function answer(item: (i: number) => unknown, itemBytes: number): string {
  const n = Math.round(mb * 1e6 / itemBytes);
  return JSON.stringify({ data: Array.from({ length: n }, (_, i) => item(i)) });
}

const shapes: [string, string][] = [
  [
    "small objects",
    answer((i) => ({ token: "ab", logprob: -i / 7, top: [i, i + 1] }), 61),
  ],
  ["text", answer((i) => ({ index: i, text: "word ".repeat(120), finish_reason: "length" }), 650)],
];

const median = (xs: number[]) => xs.toSorted((a, b) => a - b)[xs.length >> 1];

/** The longest turn of the event loop (ms) while `work` runs. */
const longestTurn = async (work: () => unknown) => (await measure(work)).stallMs;

const probe = new JsonProbe();
console.log(`call view benchmark: ${rounds} rounds, deno ${Deno.version.deno}`);
console.log(
  "| answer | MB | parsed and written again on the loop, ms | the gateway's, ms | ratio |",
);
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const [name, text] of shapes) {
  const bytes = new TextEncoder().encode(text);
  const rec = {
    id: "t:n:c1",
    tenant: "t",
    namespace: "n",
    func: "f",
    status: "succeeded",
    method: "POST",
    path: "/v1/completions",
    headers: [],
    acceptedAt: 0,
    expiresAt: 1,
    attempts: [],
    maxAttempts: 3,
    result: {
      status: 200,
      headers: [["content-type", "application/json"]],
      bytes: bytes.byteLength,
    },
  } as unknown as CallRecord;
  // The two must show the same call.
  const shown = JSON.parse(await callViewText(rec, bytes, probe));
  if (JSON.stringify(shown) !== JSON.stringify(callView(rec, bytes))) {
    throw new Error(`${name}: the two views differ`);
  }
  const before: number[] = [];
  const after: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const old = () => longestTurn(() => JSON.stringify(callView(rec, bytes)));
    const now = () => longestTurn(() => callViewText(rec, bytes, probe));
    if (i % 2) (after.push(await now()), before.push(await old()));
    else (before.push(await old()), after.push(await now()));
  }
  const [b, a] = [median(before), median(after)];
  console.log(
    `| ${name} | ${(bytes.byteLength / 1e6).toFixed(2)} | ${b.toFixed(1)} | ${a.toFixed(1)} | ${
      (a / b).toFixed(2)
    } |`,
  );
}
probe.close();
