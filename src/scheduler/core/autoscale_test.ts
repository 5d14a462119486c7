import assert from "node:assert/strict";
import { extraWorkers } from "./autoscale.ts";
import { CoreDriver, created, funcReport, lease, nodeReport } from "./testing.ts";
import type { CoreAction, GatewayLoad } from "./types.ts";

const load = (l: Partial<GatewayLoad> = {}): GatewayLoad => ({
  func: "t/n/f",
  version: 1,
  queued: 0,
  waitMs: 0,
  inflight: 0,
  inflightTokens: 0,
  workers: 1,
  ...l,
});

Deno.test("extraWorkers() scales out on queue time and on in-flight tokens per worker", () => {
  // [case, queue_ms, inflight_tokens, load, more workers]
  const cases: [string, number | undefined, number | undefined, Partial<GatewayLoad>, number][] = [
    ["no signal set: wait_ratio alone decides, in the gateway", undefined, undefined, {
      queued: 9,
      waitMs: 9_000,
      inflightTokens: 9_000,
    }, 0],
    ["a call waited past queue_ms", 500, undefined, { queued: 3, waitMs: 600 }, 1],
    ["calls wait, not yet for queue_ms", 500, undefined, { queued: 3, waitMs: 400 }, 0],
    ["nothing queued, whatever the wait", 500, undefined, { queued: 0, waitMs: 900 }, 0],
    ["tokens for three workers on one", undefined, 1000, {
      inflight: 5,
      inflightTokens: 2500,
      workers: 1,
    }, 2],
    // A call runs on one worker: more would sit idle, however many tokens it asked for.
    ["one call asking for a billion tokens", undefined, 100, {
      inflight: 1,
      inflightTokens: 1e9,
      workers: 1,
    }, 0],
    ["three calls, one waiting", undefined, 100, {
      inflight: 2,
      queued: 1,
      inflightTokens: 1e9,
      workers: 1,
    }, 2],
    [
      "tokens within what the workers take",
      undefined,
      1000,
      { inflightTokens: 1800, workers: 2 },
      0,
    ],
    ["both: the larger wins", 100, 1000, {
      queued: 1,
      waitMs: 200,
      inflight: 6,
      inflightTokens: 4000,
    }, 3],
  ];
  for (const [name, queueMs, inflightTokens, l, want] of cases) {
    assert.equal(extraWorkers({ queueMs, inflightTokens }, load(l)), want, name);
  }
});

/** `t/n/f` with one worker leased by gateway g1, under `policy`. */
function leased(policy: Record<string, number>) {
  const d = new CoreDriver();
  d.run({ type: "nodeUpdate", node: nodeReport("n1") });
  d.run({ type: "funcUpdate", func: funcReport("t/n/f", {}, { maxReplica: 3, ...policy }) });
  const pod = created(d.run(lease("r1")))[0];
  d.run({ type: "podStatus", podId: pod.id, state: "Ready", endpoint: "e" });
  return d;
}

const advice = (acts: CoreAction[]) =>
  acts.flatMap((a) => (a.type === "scaleOut" ? [[a.gateway, a.func, a.version, a.workers]] : []));

Deno.test("a heartbeat reporting queue time past queue_ms is answered with advice to lease more", () => {
  const d = leased({ queueMs: 250 });
  const beat = (l: Partial<GatewayLoad>) =>
    d.run({ type: "gatewayHeartbeat", gateway: "g1", load: [load(l)] });
  assert.deepEqual(advice(beat({ queued: 4, waitMs: 100 })), []);
  assert.deepEqual(advice(beat({ queued: 4, waitMs: 300 })), [["g1", "t/n/f", 1, 1]]);
  // The gateway leases: while that lease waits for its pod, no more advice.
  d.run(lease("r2"));
  assert.deepEqual(advice(beat({ queued: 4, waitMs: 900 })), []);
});

Deno.test("advice never goes past max_replica, counting idle pods as room", () => {
  const d = leased({ inflightTokens: 100, maxReplica: 3 });
  const acts = d.run({
    type: "gatewayHeartbeat",
    gateway: "g1",
    load: [load({ inflight: 10, inflightTokens: 1000, workers: 1 })],
  });
  assert.deepEqual(advice(acts), [["g1", "t/n/f", 1, 2]], "9 more wanted, 2 more allowed");
  const unknown = d.run({
    type: "gatewayHeartbeat",
    gateway: "g1",
    load: [
      load({ func: "t/n/nope", inflightTokens: 1000 }),
      load({ version: 7, inflightTokens: 1000 }),
    ],
  });
  assert.deepEqual(advice(unknown), [], "functions or versions that do not serve get none");
});

Deno.test("a parked worker counts as room for advice: a lease would resume it", () => {
  const d = new CoreDriver();
  d.run(
    {
      type: "nodeUpdate",
      node: nodeReport("n1", { gpuCount: 2, vramMB: 80_000, standbyTiers: ["paused"] }),
    },
    {
      type: "funcUpdate",
      func: funcReport("t/n/f", { gpuCount: 1, vramMB: 30_000 }, { maxReplica: 2, queueMs: 100 }),
    },
  );
  const [a, b] = created(d.run(lease("r1"), lease("r2"))).map((p) => p.id);
  d.run(
    { type: "podStatus", podId: a, state: "Ready", endpoint: "ea" },
    { type: "podStatus", podId: b, state: "Ready", endpoint: "eb" },
  );
  d.run({ type: "return", podId: b, gateway: "g1" }); // parked
  const acts = d.run({
    type: "gatewayHeartbeat",
    gateway: "g1",
    leases: [a],
    load: [load({ queued: 20, waitMs: 5000, workers: 1 })],
  });
  assert.deepEqual(advice(acts), [["g1", "t/n/f", 1, 1]]);
});
