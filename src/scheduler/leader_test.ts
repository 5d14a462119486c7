import assert from "node:assert/strict";
import { cuttableProxy, hasCode, until } from "../common/testing.ts";
import type { SchedulerClient } from "../rpc/types.ts";
import { etcdUnavailable, startEtcd } from "../store/etcd_server.ts";
import { campaign, leaderOnly } from "./leader.ts";

Deno.test("leaderOnly() refuses calls while the replica does not lead, and passes them on once it does", async () => {
  const now: { leader?: SchedulerClient } = {};
  const calls: string[] = [];
  const gate = leaderOnly("sched-1", () => now.leader);
  const req = { tenant: "t", namespace: "n", func: "f", gatewayId: "g", timeoutMs: 1 };
  await assert.rejects(gate.leaseWorker(req), (e: Error & { retryable?: boolean }) => {
    hasCode("unavailable")(e);
    assert.equal(e.retryable, true);
    assert.match(e.message, /Scheduler sched-1 is not the leader/);
    return true;
  });
  await assert.rejects(gate.returnWorker({ podId: "p", gatewayId: "g" }), hasCode("unavailable"));
  await assert.rejects(gate.refreshGateway("g"), hasCode("unavailable"));
  await assert.rejects(gate.killPod("p"), hasCode("unavailable"));
  now.leader = {
    leaseWorker: (_r, _s, onProgress) => (
      calls.push("lease"), onProgress?.("starting"), Promise.resolve({} as never)
    ),
    returnWorker: () => (calls.push("return"), Promise.resolve()),
    refreshGateway: () => (calls.push("refresh"), Promise.resolve({ reclaim: [], scaleOut: [] })),
    killPod: () => (calls.push("kill"), Promise.resolve()),
  };
  const stages: string[] = [];
  await gate.leaseWorker(req, undefined, (s) => stages.push(s));
  assert.deepEqual(stages, ["starting"], "the lease's progress reaches the caller");
  await gate.returnWorker({ podId: "p", gatewayId: "g" });
  await gate.refreshGateway("g");
  await gate.killPod("p");
  assert.deepEqual(calls, ["lease", "return", "refresh", "kill"]);
});

const noEtcd = etcdUnavailable();
if (noEtcd) console.log(`skipping the leader election test: ${noEtcd}`);

Deno.test({
  name: "campaign() elects one replica at a time, the next once the leader resigns",
  ignore: noEtcd !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const etcd = await startEtcd();
    const elected: string[] = [];
    const lost: Error[] = [];
    const run = (id: string) =>
      campaign(etcd.url, id, {
        ttlS: 2,
        onElected: () => elected.push(id),
        onLost: (e) => lost.push(e),
      });
    const a = run("a");
    try {
      await until("a elected", () => elected.length === 1);
      const b = run("b");
      try {
        await new Promise((r) => setTimeout(r, 500));
        assert.deepEqual(elected, ["a"], "b waits while a leads");
        await a.stop();
        await until("b elected", () => elected.length === 2);
        assert.deepEqual(elected, ["a", "b"]);
        assert.deepEqual(lost, []);
      } finally {
        await b.stop();
      }
    } finally {
      await a.stop();
      await etcd.stop();
    }
  },
});

for (
  const [when, stepMs] of [["", 0], [", its system clock set back a minute", -60_000]] as const
) {
  Deno.test({
    name:
      `a leader cut off from etcd steps down before etcd can elect another (no two leaders)${when}`,
    ignore: etcdUnavailable() !== undefined,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => cutOff(stepMs),
  });
}

/** A leader cut off from etcd, its process's system clock stepped by `stepMs` as it is cut. */
async function cutOff(stepMs: number) {
  const etcd = await startEtcd();
  const proxy = cuttableProxy(Number(new URL(etcd.url).port));
  const leads = { a: false, b: false };
  let overlap = false;
  const lost: Error[] = [];
  const a = campaign(`http://127.0.0.1:${proxy.port}`, "a", {
    onElected: () => leads.a = true,
    onLost: (e) => (leads.a = false, lost.push(e)),
  });
  await until("a elected", () => leads.a);
  const b = campaign(etcd.url, "b", {
    onElected: () => (overlap = leads.a, leads.b = true),
    onLost() {},
  });
  const realNow = Date.now;
  try {
    proxy.cut(); // a partition: no FIN, no RST, the renewals just stop getting through
    if (stepMs) Date.now = () => realNow() + stepMs; // the fence measured it on this clock
    await until("b elected", () => leads.b);
    assert.equal(overlap, false, "a still led when b was elected");
    assert.match(lost[0].message, /No renewal of the leader's etcd lease/);
  } finally {
    Date.now = realNow;
    await b.stop();
    proxy.close();
    a.stop().catch(() => {});
    await etcd.stop();
  }
}

/** etcd's JSON gateway: `body` posted to `/v3/{path}`. */
async function etcdApi(url: string, path: string, body: unknown) {
  const r = await fetch(`${url}/v3/${path}`, { method: "POST", body: JSON.stringify(body) });
  return await r.json();
}

Deno.test({
  name:
    "a follower whose wait on the leader's key broke on a compacted revision (etcd restarted) does not wait for ever",
  ignore: etcdUnavailable() !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const etcd = await startEtcd();
    const elected: string[] = [];
    const lost: string[] = [];
    const run = (id: string) =>
      campaign(etcd.url, id, {
        ttlS: 1,
        onElected: () => elected.push(id),
        onLost: () => lost.push(id),
      });
    const a = run("a");
    await until("a elected", () => elected.length === 1);
    const b = run("b");
    try {
      await new Promise((r) => setTimeout(r, 300)); // b waits on a's key
      // History past b's wait compacted, then etcd killed and started again: b's watch comes back
      // at a revision etcd no longer has.
      const key = btoa("x");
      await etcdApi(etcd.url, "kv/put", { key, value: btoa("1") });
      const { header } = await etcdApi(etcd.url, "kv/put", { key, value: btoa("2") });
      await etcdApi(etcd.url, "kv/compaction", { revision: header.revision, physical: true });
      await etcd.down("SIGKILL");
      await etcd.up();
      await new Promise((r) => setTimeout(r, 1500));
      await a.stop(); // a resigns (its process would have exited): b's key is the only one
      await until(
        "b elected, or its campaign given up (crash-only)",
        () => elected.includes("b") || lost.includes("b"),
        15_000,
      );
    } finally {
      await b.stop();
      await a.stop().catch(() => {});
      await etcd.stop();
    }
  },
});
