/**
 * `GATEWAY_WORKERS=2`: two gateway processes serve one port. Connections
 * reach both; calls work through both on one shared worker; `/metrics`
 * counts the whole group; a member killed is started again; stopping the
 * platform stops every member.
 */
import assert from "node:assert/strict";
import {
  createNamespace,
  eventually,
  ngramFunction,
  putObject,
  request,
  spawnRole,
  startPlatform,
} from "./helpers.ts";
import { childPids } from "../../bench/wrk.ts";
import { GrpcMetaClient } from "../../src/rpc/meta_grpc.ts";

/** The gateway ids that answer `/health` over `n` fresh connections. */
async function gatewayIds(url: string, n = 40): Promise<Set<string>> {
  const ids = new Set<string>();
  for (let i = 0; i < n; i++) {
    const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
    const r = await fetch(`${url}/health`, { client });
    ids.add((await r.json()).gateway);
    client.close();
  }
  return ids;
}

/** A call of `g/n/one` over a connection of its own (so that calls land on both gateways). */
async function freshCall(
  url: string,
): Promise<{ status: number; pod: string | null; text: string }> {
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  try {
    const res = await fetch(`${url}/funccall/g/n/one/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "The GPU", max_tokens: 2 }),
      client,
    });
    return { status: res.status, pod: res.headers.get("x-inferx-pod"), text: await res.text() };
  } finally {
    client.close();
  }
}

/** The member processes of the group `pid` leads. */
async function members(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const c of await childPids(pid)) {
    const env = await Deno.readTextFile(`/proc/${c}/environ`).catch(() => "");
    if (env.includes("INFERX_GATEWAY_GROUP=")) out.push(c);
  }
  return out;
}

Deno.test({
  name: "GATEWAY_WORKERS=2: two gateways share the port, a worker and their metrics",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ GATEWAY_WORKERS: "2" });
    try {
      await eventually("both gateways answering", async () => (await gatewayIds(p.url)).size === 2);
      await createNamespace(p.url, "g", "n");
      // The inner state service the members reach takes calls only with the group's token: any
      // local process reaches the loopback.
      const [first] = await members(p.proc.pid);
      const env = Object.fromEntries(
        (await Deno.readTextFile(`/proc/${first}/environ`)).split("\0").filter(Boolean)
          .map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]),
      );
      assert.ok(env.INFERX_CLUSTER_TOKEN?.length >= 32, "the member has the inner token");
      const bare = new GrpcMetaClient(env.STATESVC_ADDR, { timeoutMs: 3000 });
      const withToken = new GrpcMetaClient(env.STATESVC_ADDR, {
        timeoutMs: 3000,
        clusterToken: env.INFERX_CLUSTER_TOKEN,
      });
      try {
        const refused = await bare.list("tenant").catch((e) => e);
        assert.equal(refused.code, "unavailable");
        assert.match(refused.message, /takes calls only with the cluster's token/);
        assert.ok((await withToken.list("tenant")).items.some((t) => t.name === "g"));
      } finally {
        bare.close();
        withToken.close();
      }
      const r = await putObject(
        p.url,
        ngramFunction("g", "n", "one", {
          policy: { Obj: { max_replica: 1, scalein_timeout: 60 } },
        }),
      );
      assert.equal(r.status, 201, JSON.stringify(r.body));
      // Calls over fresh connections land on both gateways; with max_replica 1
      // they share the one worker instead of one waiting on the other.
      const pods = new Set<string>();
      for (let i = 0; i < 20; i++) {
        const res = await freshCall(p.url);
        assert.equal(res.status, 200, res.text);
        pods.add(res.pod!);
      }
      assert.equal(pods.size, 1, "one worker served both gateways");
      // Its log, from the node agent, over fresh connections that land on both gateways (a
      // member reaches the inner agent service with the group's token).
      for (let i = 0; i < 20; i++) {
        const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
        const res = await fetch(`${p.url}/pods/g/n/one/${[...pods][0]}/log?lines=5`, { client });
        assert.equal(res.status, 200, await res.clone().text());
        await res.body?.cancel();
        client.close();
      }
      const metrics = await (await fetch(`${p.url}/metrics`)).text();
      const line = metrics.split("\n").find((l) =>
        l.startsWith('inferx_requests_total{function="g/n/one",code="200"}')
      );
      assert.equal(line?.split(" ")[1], "20", "the group's count, whichever member answered");
      await eventually("audit rows from both gateways", async () => {
        const audit = await request(`${p.url}/audit/requests?tenant=g&func=one&limit=100`);
        return new Set(audit.body.items.map((x: { gateway: string }) => x.gateway)).size === 2;
      });

      // A member killed is started again.
      const [member] = await members(p.proc.pid);
      Deno.kill(member, "SIGKILL");
      await eventually(
        "the member started again",
        async () => (await members(p.proc.pid)).some((m) => m !== member),
        15_000,
      );
      await eventually("both gateways answering", async () => (await gatewayIds(p.url)).size === 2);
      // The group's count does not go down with the restart, whichever member a scrape reaches.
      for (let i = 0; i < 6; i++) {
        const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
        const text = await (await fetch(`${p.url}/metrics`, { client })).text();
        client.close();
        const n = text.split("\n").find((l) =>
          l.startsWith('inferx_requests_total{function="g/n/one",code="200"}')
        )?.split(" ")[1];
        assert.equal(n, "20", `scrape ${i} after the restart`);
      }
      // The tenant's call rate holds for the group as a whole: the shares the scheduler hands out
      // at the heartbeats add up to the rate, wherever the calls land. (Each gateway held to the
      // whole rate would let through twice as many.)
      const tenant = (await request(`${p.url}/object/tenant/system/system/g`)).body;
      const rated = await request(`${p.url}/object/`, {
        method: "POST",
        body: { ...tenant, object: { spec: { quota: { max_calls_per_s: 2, max_call_burst: 2 } } } },
      });
      assert.equal(rated.status, 200, JSON.stringify(rated.body));
      const t0 = performance.now();
      const seen = new Map<number, number>();
      while (performance.now() - t0 < 8000) {
        const res = await freshCall(p.url);
        seen.set(res.status, (seen.get(res.status) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, 50));
      }
      const s = (performance.now() - t0) / 1000;
      const ok = seen.get(200) ?? 0;
      console.log(
        `call rate 2/s over the group for ${s.toFixed(1)} s: ${JSON.stringify([...seen])}`,
      );
      assert.deepEqual([...seen.keys()].sort(), [200, 429]);
      // The rate over the time, both gateways' bursts, and a share's tokens kept as shares change.
      assert.ok(ok <= 2 * s + 2 + 2, `${ok} calls taken in ${s.toFixed(1)} s at 2 a second`);
      assert.ok(ok >= s, `${ok} calls taken in ${s.toFixed(1)} s: the shares left the rate unused`);

      // Another platform's group cannot take a share of the port.
      const port = new URL(p.url).port;
      const dir = await Deno.makeTempDir({ prefix: "inferx-e2e-" });
      try {
        await assert.rejects(
          spawnRole(
            { GATEWAY_PORT: port, GATEWAY_WORKERS: "2", INFERX_DATA_DIR: dir },
            () => Promise.resolve(false),
          ),
          new RegExp(`Cannot listen on 127\\.0\\.0\\.1:${port} \\(GATEWAY_HOST, GATEWAY_PORT\\)`),
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    } finally {
      const before = await members(p.proc.pid);
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
      for (const m of before) {
        await eventually(`member ${m} stopped`, async () => {
          try {
            return (await Deno.readTextFile(`/proc/${m}/stat`)).includes(") Z");
          } catch {
            return true;
          }
        });
      }
    }
  },
});
