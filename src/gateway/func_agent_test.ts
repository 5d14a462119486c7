import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import { FuncPolicySchema } from "../model/schemas.ts";
import { FuncAgent, type Slot } from "./func_agent.ts";
import { FakeScheduler } from "./testing.ts";
import type { Lease, LeaseRequest, SchedulerClient } from "../rpc/types.ts";

function agent(policy: Record<string, unknown> = {}, endpoints = 4) {
  const sched = new FakeScheduler();
  for (let i = 0; i < endpoints; i++) sched.endpoints.push(`127.0.0.1:${9000 + i}`);
  const a = new FuncAgent(
    { tenant: "t", namespace: "n", name: "f", version: 1 },
    FuncPolicySchema.parse(policy),
    { scheduler: sched, gatewayId: "gw" },
  );
  return { a, sched };
}

const tick = () => new Promise((r) => setTimeout(r, 0));
const settle = async () => {
  for (let i = 0; i < 5; i++) await tick();
};

Deno.test("acquire() leases a worker for the first call, then serves from its free slots", async () => {
  const { a, sched } = agent({ parallel: 2, max_replica: 2 });
  const s1 = await a.acquire();
  assert.equal(s1.coldStart, true, "the first call waited for a worker started for it");
  const s2 = await a.acquire();
  assert.equal(s2.worker, s1.worker, "a second slot on the same worker");
  assert.equal(s2.coldStart, false);
  assert.equal(sched.leases.length, 1, "no scheduler call while a slot is free");
  assert.equal(s1.worker.inflight, 2);
  a.release(s1);
  a.release(s2);
  assert.equal(s1.worker.inflight, 0);
});

Deno.test("a full queue answers queue_full, and waiters are served first come, first served", async () => {
  const { a, sched } = agent({ parallel: 1, queue_len: 2, max_replica: 1 });
  const first = await a.acquire();
  const order: number[] = [];
  const w1 = a.acquire().then((s) => (order.push(1), s));
  const w2 = a.acquire().then((s) => (order.push(2), s));
  await assert.rejects(a.acquire(), (e: InferxError) => e.code === "queue_full");
  assert.equal(a.queued, 2);
  a.release(first);
  a.release(await w1);
  a.release(await w2);
  assert.deepEqual(order, [1, 2]);
  assert.equal(sched.leases.length, 1, "max_replica 1: no second lease");
});

Deno.test("wait_ratio decides when queued calls lease another worker", async () => {
  // Table: calls waiting beyond the leased slots, and whether a second worker is leased.
  const cases: [number, number, boolean][] = [
    // [wait_ratio, calls waiting, second lease expected]
    [0.5, 1, false], // 1 waiting <= 0.5 * 2 slots
    [0.5, 2, true], // 2 > 1
    [0, 1, true], // any wait scales out
    [1, 2, false], // 2 <= 1 * 2
  ];
  for (const [ratio, waiting, expected] of cases) {
    const { a, sched } = agent({
      parallel: 2,
      max_replica: 3,
      queue_len: 10,
      scaleout_policy: { wait_ratio: ratio },
    });
    const held = [await a.acquire(), await a.acquire()];
    const queued = Array.from({ length: waiting }, () => a.acquire());
    await settle();
    assert.equal(
      sched.leases.length === 2,
      expected,
      `wait_ratio ${ratio} with ${waiting} waiting: leases ${sched.leases.length}`,
    );
    for (const s of held) a.release(s);
    for (const s of await Promise.all(queued)) a.release(s);
  }
});

Deno.test("no more workers than max_replica, however long the queue", async () => {
  const { a, sched } = agent({ parallel: 1, max_replica: 2, queue_len: 50 });
  const slots = Array.from({ length: 20 }, () => a.acquire());
  await settle();
  assert.equal(a.workers.length, 2);
  assert.equal(sched.leases.length, 2);
  for (const p of slots) a.release(await p);
});

Deno.test("a burst leases the workers it needs at once; calls a lease under way takes ask for no other", async () => {
  // 40 calls at zero, one a worker: four leases asked together, not one after another.
  const burst = agent({ parallel: 1, max_replica: 4, queue_len: 50 }, 0);
  burst.sched.hang = true;
  const calls = Array.from({ length: 40 }, () => burst.a.acquire().catch(() => {}));
  await settle();
  assert.equal(burst.sched.leases.length, 4);
  burst.a.close();
  await Promise.all(calls);
  // One call, four a worker: one lease, whatever wait_ratio says of the slots to come.
  const one = agent({ parallel: 4, max_replica: 4, scaleout_policy: { wait_ratio: 0 } }, 0);
  one.sched.hang = true;
  const call = one.a.acquire().catch(() => {});
  await settle();
  assert.equal(one.sched.leases.length, 1);
  // Five more: the lease under way takes three of them, so one more worker.
  const more = Array.from({ length: 5 }, () => one.a.acquire().catch(() => {}));
  await settle();
  assert.equal(one.sched.leases.length, 2);
  one.a.close();
  await Promise.all([call, ...more]);
});

Deno.test("a queued call times out with the reason of the last failed lease", async () => {
  const { a, sched } = agent({ queue_timeout: 0.2 }, 0);
  sched.hang = true;
  await assert.rejects(
    a.acquire(),
    (e: InferxError) => e.code === "timeout" && /within 200 ms/.test(e.message),
  );
});

Deno.test("sweep() returns workers idle past scalein_timeout, never busy ones", async () => {
  const { a, sched } = agent({ parallel: 2, max_replica: 2, scalein_timeout: 1 });
  const s = await a.acquire();
  a.sweep(performance.now() + 5_000);
  assert.equal(a.workers.length, 1, "busy: kept");
  a.release(s);
  a.sweep(performance.now() + 500);
  assert.equal(a.workers.length, 1, "idle for less than scalein_timeout: kept");
  a.sweep(performance.now() + 1_500);
  assert.equal(a.workers.length, 0);
  assert.deepEqual(sched.returns, [{ podId: "pod-1", failed: false }]);
});

Deno.test("sweep() keeps idle workers the tokens of calls in flight call for (inflight_tokens)", async () => {
  const { a, sched } = agent({
    parallel: 10,
    max_replica: 3,
    scalein_timeout: 1,
    scaleout_policy: { inflight_tokens: 100 },
  });
  // Four calls of 60 tokens on the first worker: 240 tokens, three workers' worth.
  const slots = [];
  for (let i = 0; i < 4; i++) slots.push(await a.acquire(undefined, undefined, undefined, 60));
  a.advise(1, 2); // as the scheduler advises, for the calls after these
  await settle();
  assert.equal(a.workers.length, 3);
  a.sweep(performance.now() + 5_000);
  assert.equal(a.workers.length, 3, "kept while the calls in flight call for them");
  a.release(slots.pop()!); // 180 tokens: two workers' worth
  a.sweep(performance.now() + 5_000);
  assert.equal(a.workers.length, 2);
  for (const s of slots.splice(0)) a.release(s);
  a.sweep(performance.now() + 5_000);
  assert.equal(a.workers.length, 0, "no calls: all go back");
  assert.equal(sched.returns.length, 3);
});

Deno.test("sweep() keeps no more workers for inflight_tokens than calls: one asking for a billion holds one", async () => {
  const { a } = agent({
    parallel: 10,
    max_replica: 3,
    scalein_timeout: 1,
    scaleout_policy: { inflight_tokens: 100 },
  });
  const huge = await a.acquire(undefined, undefined, undefined, 1e9);
  a.advise(1, 2); // leased before the scheduler capped its advice by calls
  await settle();
  assert.equal(a.workers.length, 3);
  a.sweep(performance.now() + 5_000);
  // Before, all three were kept while the call ran: its tokens called for ten million.
  assert.equal(a.workers.length, 1, "the call's own worker alone");
  a.release(huge);
});

Deno.test("an idle worker the scheduler cannot take back is kept and serves on, and given back later", async () => {
  const { a, sched } = agent({ parallel: 2, max_replica: 2, scalein_timeout: 1 });
  a.release(await a.acquire());
  const away = new InferxError("unavailable", "Cannot reach the scheduler at 127.0.0.1:1");
  sched.returnWorker = () => Promise.reject(away);
  a.sweep(performance.now() + 1_500);
  await settle();
  assert.equal(a.workers.length, 1, "kept");
  const s = await a.acquire();
  assert.equal(s.coldStart, false);
  assert.equal(sched.leases.length, 1, "served without a lease");
  a.release(s);
  // The scheduler is back: the next idle sweep gives it back.
  delete (sched as { returnWorker?: unknown }).returnWorker;
  a.sweep(performance.now() + 1_500);
  await settle();
  assert.equal(a.workers.length, 0);
  assert.deepEqual(sched.returns.map((r) => r.podId), ["pod-1"]);
});

Deno.test("a new version drains old workers: no new calls, returned when idle", async () => {
  const { a, sched } = agent({ parallel: 2, max_replica: 2 });
  const old = await a.acquire();
  a.setVersion(2, a.policy);
  sched.version = 2;
  assert.equal(old.worker.draining, true);
  const fresh = await a.acquire(); // the old worker takes no new call: a new lease
  assert.notEqual(fresh.worker, old.worker);
  assert.equal(sched.leases.length, 2);
  a.release(old);
  assert.equal(sched.returns[0].podId, old.worker.podId, "returned once idle");
  a.release(fresh);
});

Deno.test("a worker that refused its connection is dropped as failed", async () => {
  const { a, sched } = agent({ parallel: 4 });
  const s = await a.acquire();
  a.release(s, true);
  assert.equal(a.workers.length, 0);
  assert.deepEqual(sched.returns, [{ podId: "pod-1", failed: true }]);
});

Deno.test("a start failure fails every queued call with its reason; close() refuses the rest", async () => {
  const { a, sched } = agent({ max_replica: 1 }, 0);
  sched.failWith = new InferxError("worker_failed", "Worker crashed: no weights");
  const calls = [a.acquire(), a.acquire()];
  for (const c of calls) {
    await assert.rejects(c, (e: InferxError) => /no weights/.test(e.message));
  }
  sched.failWith = undefined;
  sched.hang = true;
  const waiting = a.acquire();
  a.close();
  await assert.rejects(waiting, (e: InferxError) => e.code === "not_found");
  await assert.rejects(a.acquire(), (e: InferxError) => /was removed/.test(e.message));
});

Deno.test("a start the store refused fails queued calls at once; an unreachable scheduler is asked again", async () => {
  const { a, sched } = agent({ max_replica: 1, queue_timeout: 0.5 }, 0);
  sched.failWith = new InferxError("unavailable", "the store refused its pod (space exceeded)", {
    details: { retry_after_s: 2 },
  });
  const t0 = performance.now();
  await assert.rejects(
    a.acquire(),
    (e: InferxError) => e.code === "unavailable" && /space exceeded/.test(e.message),
  );
  assert.ok(performance.now() - t0 < 400, "at once");
  // A scheduler out of reach: asked every 100 ms until the queue's deadline, then 503 (another
  // role away), not a 504 that blames the function.
  sched.failWith = new InferxError("unavailable", "Cannot reach the scheduler");
  await assert.rejects(
    a.acquire(),
    (e: InferxError) =>
      e.code === "unavailable" && e.retryable &&
      /no worker was free within 500 ms; last lease attempt: Cannot reach the scheduler$/.test(
        e.message,
      ),
  );
  assert.ok(sched.leases.length > 2, `asked again: ${sched.leases.length}`);
  // Once it answers again, a call whose lease reached it and waits there (a worker starting)
  // and finds no worker in time is a timeout, its last failure to reach it history by then.
  sched.failWith = undefined;
  sched.hang = true;
  await new Promise((r) => setTimeout(r, 400));
  await assert.rejects(a.acquire(200), (e: InferxError) => e.code === "timeout");
});

Deno.test("a scheduler away whose failures are slow to come is still the reason calls end (503)", async () => {
  const { a, sched } = agent({ max_replica: 1, queue_timeout: 1.3 }, 0);
  // Every lease fails after 400 ms (a connection timing out), not at once.
  sched.leaseWorker = () =>
    new Promise((_, reject) =>
      setTimeout(() => reject(new InferxError("unavailable", "Cannot reach the scheduler")), 400)
    );
  for (let i = 0; i < 3; i++) {
    await assert.rejects(a.acquire(), (e: InferxError) => e.code === "unavailable", `call ${i}`);
  }
  a.close();
});

Deno.test("a slot of a resumed worker says so, once per waiting call", async () => {
  const { a, sched } = agent({ parallel: 4 });
  sched.coldStart = false;
  const resumed = sched.leaseWorker.bind(sched);
  sched.leaseWorker = (req, signal) => resumed(req, signal).then((l) => ({ ...l, resumed: true }));
  const [x, y] = await Promise.all([a.acquire(), a.acquire()]);
  const z = await a.acquire();
  assert.deepEqual([x, y, z].map((s: Slot) => s.resumed), [true, true, false]);
});

Deno.test("a traffic split routes calls to versions in exact shares, each on its own workers", async () => {
  const { a, sched } = agent({ parallel: 100, max_replica: 1 });
  a.setVersion(2, a.policy, [{ version: 2, percent: 70 }, { version: 1, percent: 30 }]);
  const slots: Slot[] = [];
  for (let i = 0; i < 20; i++) slots.push(await a.acquire());
  const count = (v: number) => slots.filter((s) => s.worker.version === v).length;
  assert.deepEqual([count(2), count(1)], [14, 6]);
  assert.deepEqual(sched.leases.map((l) => l.version).sort(), [1, 2], "one lease per version");
  for (const s of slots) a.release(s);
});

Deno.test("a version leaving the split drains its workers and its queued calls go to the others", async () => {
  const { a, sched } = agent({ parallel: 1, max_replica: 1 });
  a.setVersion(2, a.policy, [{ version: 2, percent: 50 }, { version: 1, percent: 50 }]);
  const s2 = await a.acquire(); // round-robin: version 2 first, then 1
  const s1 = await a.acquire();
  assert.deepEqual([s2.worker.version, s1.worker.version], [2, 1]);
  const queued = a.acquire(); // version 2's turn, its only worker is busy
  await settle();
  a.setVersion(2, a.policy, [{ version: 1, percent: 100 }]); // e.g. a rollback pinned by traffic
  assert.equal(s2.worker.draining, true);
  a.release(s1); // version 1's worker frees: the queued call takes it
  const moved = await queued;
  assert.equal(moved.worker.version, 1);
  a.release(s2);
  assert.ok(sched.returns.some((r) => r.podId === s2.worker.podId), "the drained worker went back");
  a.release(moved);
});

Deno.test("a reclaimed worker takes no new call and goes back when its calls end", async () => {
  const { a, sched } = agent({ parallel: 4, max_replica: 2 });
  const s = await a.acquire();
  assert.equal(a.reclaim(s.worker.podId), true);
  assert.equal(a.reclaim("pod-other"), false);
  const next = a.acquire(); // cannot use the reclaimed worker: a new lease
  await settle();
  assert.equal(sched.leases.length, 2);
  a.release(s);
  assert.deepEqual(sched.returns, [{ podId: s.worker.podId, failed: false }]);
  a.release(await next);
});

Deno.test("advise() leases more workers of a version within max_replica; load() reports each version", async () => {
  const { a, sched } = agent({ parallel: 2, max_replica: 3 });
  const s = await a.acquire(undefined, undefined, undefined, 300);
  a.advise(1, 5);
  await settle();
  assert.equal(sched.leases.length, 3, "one held, two more up to max_replica");
  a.advise(9, 1); // a version that does not serve: nothing
  assert.equal(sched.leases.length, 3);
  assert.deepEqual(a.load(), [{
    version: 1,
    queued: 0,
    waitMs: 0,
    inflight: 1,
    inflightTokens: 300,
    workers: 3,
  }]);
  a.release(s);
  assert.equal(a.load()[0].inflightTokens, 0);
});

Deno.test("a lease refused as unschedulable fails queued calls at once, and new ones without asking again for a while", async () => {
  const sched = new FakeScheduler();
  const a = new FuncAgent(
    { tenant: "t", namespace: "n", name: "f", version: 1 },
    FuncPolicySchema.parse({ queue_timeout: 30 }),
    { scheduler: sched, gatewayId: "gw", unschedulableRecheckMs: 50 },
  );
  sched.failWith = new InferxError("unschedulable", "No node could ever hold a pod: no A100");
  const calls = [a.acquire(), a.acquire()];
  for (const c of calls) await assert.rejects(c, (e: InferxError) => e.code === "unschedulable");
  assert.equal(sched.leases.length, 1, "one lease answered for both");
  await assert.rejects(a.acquire(), (e: InferxError) => /no A100/.test(e.message));
  assert.equal(sched.leases.length, 1, "refused without asking the scheduler");
  await new Promise((r) => setTimeout(r, 60));
  sched.failWith = undefined;
  sched.endpoints.push("127.0.0.1:9000");
  const s = await a.acquire();
  assert.equal(sched.leases.length, 2, "asked again once the recheck time passed");
  a.release(s);
});

Deno.test("setUnschedulable() refuses queued and new calls until cleared, and leaves free workers serving", async () => {
  const { a, sched } = agent({ parallel: 1, max_replica: 1 });
  const held = await a.acquire();
  const queued = a.acquire();
  const err = new InferxError("unschedulable", "Cannot call t/n/f: no node fits");
  a.setUnschedulable(err);
  await assert.rejects(queued, (e: InferxError) => e === err);
  await assert.rejects(a.acquire(), (e: InferxError) => e === err);
  a.release(held);
  const warm = await a.acquire();
  assert.equal(warm.worker, held.worker, "a free worker still serves");
  a.release(warm);
  a.setUnschedulable(undefined);
  const busy = await a.acquire();
  const waits = a.acquire();
  a.release(busy);
  a.release(await waits);
  assert.equal(sched.leases.length, 1);
});

Deno.test("an unschedulable canary refuses its own calls only: the split's other version goes on", async () => {
  const { a, sched } = agent({ parallel: 1, max_replica: 1 });
  a.setVersion(2, a.policy, [{ version: 2, percent: 50 }, { version: 1, percent: 50 }]);
  const s2 = await a.acquire(); // version 2 (a worker was free for it then), then version 1
  const s1 = await a.acquire();
  const queued2 = a.acquire(); // version 2's turn: its worker is busy
  const queued1 = a.acquire(); // version 1's turn
  await settle();
  // The function's condition speaks of its newest version: no node can hold version 2 now.
  const err = new InferxError("unschedulable", "Cannot call t/n/f: no node has a B300");
  a.setUnschedulable(err, 2);
  await assert.rejects(queued2, (e: InferxError) => e === err);
  a.release(s1);
  const q1 = await queued1;
  assert.equal(q1.worker.version, 1, "version 1's queued call is served");
  a.release(s2);
  // The round-robin goes on 2, 1, 2: a free worker of version 2 still serves; with it busy,
  // version 2's call is refused at once while version 1's waits for its worker.
  const a2 = await a.acquire();
  assert.equal(a2.worker.version, 2);
  const waits1 = a.acquire();
  await assert.rejects(a.acquire(), (e: InferxError) => e === err);
  a.release(q1);
  assert.equal((await waits1).worker.version, 1);
  assert.deepEqual(sched.leases.map((l) => l.version).sort(), [1, 2]);
});

Deno.test("a policy change on the same version keeps the workers and takes the new numbers", async () => {
  const { a, sched } = agent({ parallel: 1, max_replica: 1 });
  const s1 = await a.acquire();
  a.setVersion(1, FuncPolicySchema.parse({ parallel: 2, max_replica: 1 }));
  assert.equal(s1.worker.draining, false, "not drained");
  const s2 = await a.acquire();
  assert.equal(s2.worker, s1.worker, "the second slot parallel 2 allows, on the same worker");
  assert.equal(sched.leases.length, 1);
  assert.deepEqual(sched.returns, []);
  a.release(s1);
  a.release(s2);
});

Deno.test("acquire() tells a waiting request each stage of its wait: queued, placing, the lease's, ready", async () => {
  const { a, sched } = agent({ parallel: 1, max_replica: 1 });
  sched.stages = ["starting"];
  const heard: string[] = [];
  const slot = await a.acquire(undefined, (s) => heard.push(s));
  assert.deepEqual(heard, ["queued", "placing", "starting", "ready"]);
  // A request that finds a free slot hears nothing.
  a.release(slot);
  const warm: string[] = [];
  a.release(await a.acquire(undefined, (s) => warm.push(s)));
  assert.deepEqual(warm, []);
});

Deno.test("a request joining a lease already under way hears where it stands", async () => {
  const { a, sched } = agent({ parallel: 1, max_replica: 1 }, 0);
  const first = a.acquire(); // no one follows this lease's stages
  const heard: string[] = [];
  const second = a.acquire(undefined, (s) => heard.push(s));
  assert.deepEqual(heard, ["queued", "placing"]);
  assert.equal(sched.leases.length, 1, "one lease serves both");
  a.close();
  await assert.rejects(first);
  await assert.rejects(second);
});

Deno.test("acquire() leaves the queue when its caller goes away, without taking a slot", async () => {
  const { a } = agent({ parallel: 1, max_replica: 1 });
  const held = await a.acquire();
  let gone: (() => void) | undefined;
  const waiting = a.acquire(undefined, undefined, { onAbort: (fn) => gone = fn });
  assert.equal(a.queued, 1);
  gone!();
  await assert.rejects(waiting, (e: InferxError) => e.code === "unavailable");
  assert.equal(a.queued, 0);
  a.release(held);
  assert.equal(held.worker.inflight, 0, "the freed slot went to no one");
});

/** A scheduler whose leases stay pending until the test grants or refuses them. */
class HeldScheduler {
  leases: { version: number; resolve: (l: Lease) => void; reject: (e: Error) => void }[] = [];
  returns: { podId: string; failed?: boolean }[] = [];
  #pods = 0;
  leaseWorker(req: LeaseRequest, signal?: AbortSignal): Promise<Lease> {
    return new Promise((resolve, reject) => {
      this.leases.push({ version: req.version ?? 1, resolve, reject });
      signal?.addEventListener("abort", () => reject(signal.reason));
    });
  }
  grant(i: number, version = this.leases[i].version): void {
    const pod = ++this.#pods;
    this.leases[i].resolve({
      podId: `pod-${pod}`,
      endpoint: `127.0.0.1:${9000 + pod}`,
      coldStart: false,
      resumed: false,
      version,
    });
  }
  returnWorker(req: { podId: string; failed?: boolean }): Promise<void> {
    this.returns.push(req);
    return Promise.resolve();
  }
}

function heldAgent(policy: Record<string, unknown>) {
  const sched = new HeldScheduler();
  const p = FuncPolicySchema.parse(policy);
  const a = new FuncAgent({ tenant: "t", namespace: "n", name: "f", version: 1 }, p, {
    scheduler: sched as unknown as SchedulerClient,
    gatewayId: "gw",
  });
  return { a, sched, p };
}

Deno.test("a call moved off a version leaving the split is not failed by that version's lease", async () => {
  const { a, sched, p } = heldAgent({ parallel: 1, max_replica: 1, queue_timeout: 30 });
  const call = a.acquire().then((s) => s, (e: InferxError) => e.code);
  await settle();
  a.setVersion(2, p); // version 1's lease is pending; the call now waits for version 2
  await settle();
  // The scheduler answers the pending lease with its newest version: no second one yet.
  assert.deepEqual(sched.leases.map((l) => l.version), [1]);
  sched.leases[0].reject(new InferxError("worker_failed", "the old version's pod crashed"));
  await settle();
  assert.equal(a.queued, 1, "still waiting, for version 2");
  assert.deepEqual(sched.leases.map((l) => l.version), [1, 2], "asked for by the call");
  sched.grant(1);
  const slot = await call;
  assert.equal(typeof slot, "object", `served: ${slot}`);
  a.release(slot as Slot);
  assert.equal(a.workers[0].inflight, 0, "no slot held by no one");
});

Deno.test("a version that left the split is not leased again after its lease fails", async () => {
  const { a, sched, p } = heldAgent({ parallel: 1, max_replica: 1, queue_timeout: 1 });
  const call = a.acquire();
  await settle();
  a.setVersion(2, p);
  await settle();
  sched.leases[0].reject(new InferxError("unavailable", "scheduler busy"));
  await settle();
  sched.grant(1);
  a.release(await call);
  await new Promise((r) => setTimeout(r, 350)); // a retry would come after 100 ms
  assert.deepEqual(sched.leases.map((l) => l.version), [1, 2]);
  a.close();
});

Deno.test("a call whose version left the split while its lease was under way is served by that lease: one worker, not two", async () => {
  const { a, sched, p } = heldAgent({ parallel: 1, max_replica: 2, queue_timeout: 30 });
  const call = a.acquire();
  await settle();
  a.setVersion(2, p);
  await settle();
  // It leased again for the moved call: two new-version workers started for one call.
  assert.equal(sched.leases.length, 1);
  sched.grant(0, 2); // the scheduler moved the waiter to its newest version
  const slot = await call;
  assert.equal(slot.worker.version, 2);
  await settle();
  assert.equal(sched.leases.length, 1);
  assert.equal(a.workers.length, 1);
  a.release(slot);
  // Answered with the old version instead (the scheduler behind): dropped, and the call leases.
  const late = heldAgent({ parallel: 1, max_replica: 2, queue_timeout: 30 });
  const waiting = late.a.acquire();
  await settle();
  late.a.setVersion(2, late.p);
  await settle();
  late.sched.grant(0);
  await settle();
  assert.deepEqual(late.sched.returns.map((r) => r.podId), ["pod-1"]);
  assert.deepEqual(late.sched.leases.map((l) => l.version), [1, 2]);
  late.sched.grant(1);
  assert.equal((await waiting).worker.version, 2);
  a.close();
  late.a.close();
});

Deno.test("a version refused as unschedulable refuses its own calls, not another version's", async () => {
  const { a, sched, p } = heldAgent({ parallel: 2, max_replica: 2, queue_timeout: 30 });
  a.setVersion(2, p, [{ version: 1, percent: 50 }, { version: 2, percent: 50 }]);
  const calls = [a.acquire().catch((e) => e.code), a.acquire().catch((e) => e.code)];
  await settle();
  const v2 = sched.leases.findIndex((l) => l.version === 2);
  sched.leases[v2].reject(new InferxError("unschedulable", "version 2 needs 200 GiB"));
  await settle();
  // The next two calls go one to each version: version 1's waits (its lease is under way).
  const next = [a.acquire().catch((e) => e.code), a.acquire().catch((e) => e.code)];
  await settle();
  sched.grant(sched.leases.findIndex((l) => l.version === 1));
  const codes = (await Promise.all([...calls, ...next])).map((r) =>
    typeof r === "string" ? r : `slot v${r.worker.version}`
  );
  assert.deepEqual(codes.sort(), ["slot v1", "slot v1", "unschedulable", "unschedulable"].sort());
  a.close();
});

Deno.test("a lease answered with another version (the scheduler ahead of a split) serves the lane's calls, within max_replica", async () => {
  // The scheduler no longer serves version 1: every lease gets its newest, version 2.
  class Ahead extends FakeScheduler {
    override leaseWorker(req: LeaseRequest, signal?: AbortSignal): Promise<Lease> {
      return super.leaseWorker({ ...req, version: 2 }, signal);
    }
  }
  for (
    const split of [[{ version: 1, percent: 100 }], [{ version: 2, percent: 50 }, {
      version: 1,
      percent: 50,
    }]]
  ) {
    const sched = new Ahead();
    for (let i = 1; i <= 50; i++) sched.endpoints.push(`127.0.0.1:${9000 + i}`);
    const a = new FuncAgent(
      { tenant: "t", namespace: "n", name: "f", version: 2 },
      FuncPolicySchema.parse({ parallel: 1, max_replica: 2, queue_timeout: 5 }),
      { scheduler: sched, gatewayId: "gw" },
      split,
    );
    // Ten calls at once, each done a moment after it got its worker.
    const served = await Promise.all(
      Array.from({ length: 10 }, () =>
        a.acquire().then(async (s) => {
          await tick();
          a.release(s);
          return s.worker.version;
        })),
    );
    assert.deepEqual(served, Array(10).fill(2), JSON.stringify(split));
    assert.ok(sched.leases.length <= 2 * split.length, `${sched.leases.length} leases`);
    a.close();
  }
});
