/**
 * What reading tokens costs the gateway per call, in one process without
 * sockets: a call recorded the way the warm path records it (`CallRecord`:
 * metrics, audit row into a discarding log), for an answer that is not read
 * (the baseline), for a whole JSON completion (its `usage` is read), and for
 * a streamed 64-token completion (every event is read), with the ratio
 * against the baseline. The warm-path budget is 60 µs of gateway CPU per
 * call (DESIGN.md); `bench/gateway.ts` measures the whole of it.
 *
 * Run: `deno run -A bench/tokens.ts [calls]` (default 200000).
 */
import type { AuditLog } from "../src/audit/types.ts";
import type { FuncCache } from "../src/gateway/func_cache.ts";
import { GatewayMetrics } from "../src/gateway/metrics.ts";
import { CallRecord } from "../src/gateway/middleware/observe.ts";
import type { CallAnswer } from "../src/gateway/proxy.ts";
import type { Worker } from "../src/gateway/func_agent.ts";

const calls = Number(Deno.args[0] ?? 200_000);
const enc = new TextEncoder();
const completion = enc.encode(JSON.stringify({
  id: "cmpl-1",
  object: "text_completion",
  created: 1700000000,
  model: "ngram",
  choices: [{ index: 0, text: " is copi", logprobs: null, finish_reason: "length" }],
  usage: { prompt_tokens: 7, completion_tokens: 4, total_tokens: 11 },
}));
const events: Uint8Array[] = [];
for (let i = 0; i < 64; i++) {
  events.push(enc.encode(`data: ${
    JSON.stringify({
      id: "cmpl-1",
      object: "text_completion",
      created: 1700000000,
      model: "ngram",
      choices: [{ index: 0, text: "a", logprobs: null, finish_reason: null }],
    })
  }\n\n`));
}
events.push(enc.encode("data: [DONE]\n\n"));

let rows = 0;
const audit = {
  request: () => void rows++,
  pod: () => {},
  stats: () => ({ backend: "embedded", buffered: 0, written: rows, dropped: 0, healthy: true }),
} as unknown as AuditLog;
const cache = { agents: () => [][Symbol.iterator]() } as unknown as FuncCache;
const metrics = new GatewayMetrics(cache, audit);
const observed = { metrics, audit, gatewayId: "bench" };
const worker: Worker = {
  podId: "pod-1",
  endpoint: "127.0.0.1:1",
  version: 1,
  inflight: 0,
  tokens: 0,
  idleSince: 0,
  draining: false,
  coldRequests: 0,
  resumedRequests: 0,
};
const target = { tenant: "bench", namespace: "gw", func: "lm" };

function answer(contentType: string, bytes?: Uint8Array): CallAnswer {
  return {
    status: 200,
    statusText: "OK",
    headers: [["content-type", contentType], ["content-length", "200"]],
    length: bytes?.byteLength,
    bytes,
    read: () => Promise.resolve(null),
    slot: { worker, coldStart: false, resumed: false, queuedMs: 0, tokens: 0 },
    ttfbMs: 1,
    finish: () => {},
  };
}

/** CPU µs per call of `body`, best of 3 runs of `n` calls. */
function measure(name: string, n: number, body: () => void): number {
  for (let i = 0; i < n / 10; i++) body(); // warm up
  let best = Infinity;
  for (let run = 0; run < 3; run++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) body();
    best = Math.min(best, ((performance.now() - t0) * 1000) / n);
  }
  console.log(`| ${name} | ${best.toFixed(2)} |`);
  return best;
}

const path = "/funccall/bench/gw/lm/v1/completions";
console.log(`token reading cost: ${calls} calls each, best of 3; deno ${Deno.version.deno}`);
console.log("| call | µs per call |\n| --- | ---: |");
const base = measure("JSON answer, not a completion route (not read)", calls, () => {
  const rec = new CallRecord(observed, "POST", "/funccall/bench/gw/lm/generate", 0);
  rec.setTarget(target, true);
  rec.answered(answer("application/json", completion));
  rec.finished();
});
const json = measure("JSON completion (usage read)", calls, () => {
  const rec = new CallRecord(observed, "POST", path, 0);
  rec.setTarget(target, true);
  rec.answered(answer("application/json", completion));
  rec.finished();
});
const stream = measure("streamed completion, 64 tokens (every event read)", calls / 20, () => {
  const rec = new CallRecord(observed, "POST", path, 0);
  rec.setTarget(target, true);
  rec.answered(answer("text/event-stream"));
  for (const e of events) rec.tokens?.chunk(e, 1);
  rec.finished();
});
console.log(
  `reading a JSON completion's usage adds ${(json - base).toFixed(2)} µs per call (${
    (json / base).toFixed(2)
  }x the recording of an unread answer); a 64-token stream adds ${
    ((stream - base) / 64).toFixed(2)
  } µs per token`,
);
