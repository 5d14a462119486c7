/**
 * The gateway's own work per warm call, without sockets or HTTP framing:
 * what `src/gateway/server.ts` does between parsing a request and writing
 * its answer — route, authenticate an API key, take the body and headers,
 * take a slot and forward (to a pool that answers at once), record the call
 * (metrics, token reading, the audit row packed for the audit's worker) —
 * run back to back in one process. Deterministic where `bench/gateway.ts`
 * depends on the host: it shows what the call's logic costs apart from the
 * runtime's socket operations, the framing and the audit's database.
 *
 * Prints µs per call for the whole path and with parts left out (auth; the
 * record), each the median of 5 runs.
 *
 * Run: `deno run -A bench/warm_call.ts [calls per run]` (default 100000).
 *
 * @module
 */
import { BatchingAuditLog } from "../src/audit/batching.ts";
import { encodeRequests } from "../src/audit/row_codec.ts";
import { ADMIN, type Principal } from "../src/gateway/auth.ts";
import { type CallContext, funccallInput, parseFunccallPath } from "../src/gateway/call.ts";
import { wantsCallPath } from "../src/gateway/calls/accept.ts";
import type { HttpPool, UpstreamAnswer } from "../src/gateway/http_pool.ts";
import { CallRecord, type ObserveOptions } from "../src/gateway/middleware/observe.ts";
import { forward } from "../src/gateway/proxy.ts";
import { gatewayFixture } from "../src/gateway/testing.ts";

const CALLS = Number(Deno.args[0] ?? 100_000);
const ADMIN_KEY = "bench-admin-key-0123456789";
const enc = new TextEncoder();
const BODY = enc.encode(JSON.stringify({ prompt: "The GPU", max_tokens: 4, temperature: 0 }));
// An n-gram worker's answer to a completion, as recorded for the gateway's tests.
const ANSWER = Deno.readFileSync(
  new URL("../src/gateway/testdata/ngram_completion.json", import.meta.url),
);

const fx = await gatewayFixture({ adminKey: ADMIN_KEY, policy: { parallel: 64 } });
fx.sched.endpoints = ["127.0.0.1:9"];
fx.sched.coldStart = false;
// A pool whose worker answers at once, whole.
const pool = {
  send: (): Promise<UpstreamAnswer> =>
    Promise.resolve({
      status: 200,
      statusText: "OK",
      headers: [["content-type", "application/json"], ["date", "Mon, 30 Nov 2026 10:00:00 GMT"]],
      length: ANSWER.byteLength,
      bytes: ANSWER,
      read: () => Promise.resolve(null),
      cancel() {},
    }),
  close() {},
} as unknown as HttpPool;
const deps = { ...fx.deps, pool };
// The audit's batching as the gateway runs it; its writer packs each batch as the worker backend does.
let packed = 0;
const audit = new BatchingAuditLog({
  name: "embedded",
  write(b) {
    packed += encodeRequests(b.requests).nums.length;
    return Promise.resolve();
  },
  query: () => Promise.resolve([]),
  close: () => Promise.resolve(),
});
const observed: ObserveOptions = { metrics: deps.metrics, audit, gatewayId: "gw-bench" };
const ctx: CallContext = { cache: deps.cache, bodyLimit: 1024 * 1024, authEnabled: true };

const created = await fx.app.request("/apikeys", {
  method: "POST",
  headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "application/json" },
  body: JSON.stringify({ scope: "inference", tenant: "t", name: "bench" }),
});
if (created.status !== 201) throw new Error(`Cannot create a key: ${await created.text()}`);
const { key } = await created.json();

const url = "/funccall/t/n/f/v1/completions";
const headers: [string, string][] = [
  ["host", "127.0.0.1:4000"],
  ["content-type", "application/json"],
  ["authorization", `Bearer ${key}`],
  ["content-length", String(BODY.byteLength)],
];
const req = {
  method: "POST",
  url,
  headers,
  hasBody: true,
  contentLength: BODY.byteLength,
  get(name: string) {
    for (const h of headers) if (h[0] === name) return h[1];
    return undefined;
  },
  readAll: () => Promise.resolve(BODY),
  bodyNow: () => BODY,
  async *chunks() {
    yield BODY;
  },
  onAbort(_fn: () => void) {},
};

/** One call as the warm path makes it; `skip` leaves a part out. */
async function call(skip?: "auth" | "record"): Promise<void> {
  const t0 = performance.now();
  const parsed = parseFunccallPath(url)!;
  if (wantsCallPath(req.headers)) throw new Error("not a warm call");
  const rec = new CallRecord(observed, req.method, url, t0);
  const p: Principal | Promise<Principal> = skip === "auth" ? ADMIN : deps.auth.authenticate(req);
  const principal = p instanceof Promise ? await p : p;
  rec.principal = principal.id;
  rec.setTarget(parsed.target, true);
  let input = funccallInput(ctx, principal, req, parsed.target, parsed.path, t0);
  if (input instanceof Promise) input = await input;
  const answer = await forward(deps, input, req);
  if (skip !== "record") rec.answered(answer);
  answer.finish(true);
  if (skip !== "record") rec.finished();
}

async function timed(skip?: "auth" | "record"): Promise<number> {
  const runs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    for (let i = 0; i < CALLS; i++) await call(skip);
    runs.push((performance.now() - t0) * 1000 / CALLS);
  }
  return runs.sort((a, b) => a - b)[2];
}

for (let i = 0; i < 20_000; i++) await call(); // warm up the JIT
const whole = await timed();
const noAuth = await timed("auth");
const noRecord = await timed("record");
await audit.flush();
console.log(
  `warm call without sockets: ${CALLS} calls per run, median of 5 runs; deno ${Deno.version.deno}`,
);
console.log(`whole path: ${whole.toFixed(2)} µs per call`);
console.log(`without auth: ${noAuth.toFixed(2)} µs (auth ${(whole - noAuth).toFixed(2)} µs)`);
console.log(
  `without the record (metrics, tokens, audit row): ${noRecord.toFixed(2)} µs (record ${
    (whole - noRecord).toFixed(2)
  } µs)`,
);
if (packed === 0) throw new Error("no audit row was written");
await audit.close();
await fx.close();
