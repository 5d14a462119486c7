/**
 * Calls that outlive their connection, end to end. On `RUN_SERVICE=All`: a
 * gateway killed (SIGKILL) holding 20 accepted calls loses none of them and
 * runs each exactly once after its restart; a callback reaches a receiver
 * on 127.0.0.1 (allowed explicitly) signed with the tenant's secret; a
 * streaming call's cold start shows its real stages. In distributed mode
 * (etcd, roles over gRPC): another gateway takes over the calls of a killed
 * one, and cold-start stages come over the scheduler's gRPC stream.
 */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { freePort } from "../../src/common/net.ts";
import { etcdUnavailable, startEtcd } from "../../src/store/etcd_server.ts";
import {
  createNamespace,
  eventually,
  type Json,
  listening,
  ngramFunction,
  putObject,
  request,
  type RoleProcess,
  spawnRole,
  startPlatform,
} from "./helpers.ts";

/** A worker that starts slowly, then appends the `n` of each call's body to COUNT_FILE. */
const COUNTING_WORKER = `
const file = Deno.env.get("COUNT_FILE");
await new Promise((r) => setTimeout(r, Number(Deno.env.get("START_DELAY_MS"))));
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} }, async (req) => {
  if (new URL(req.url).pathname === "/health") return new Response("ok");
  const { n } = await req.json();
  await Deno.writeTextFile(file, n + "\\n", { append: true });
  return Response.json({ n, pid: Deno.pid });
});`;

const ASYNC = { prefer: "respond-async" };

async function lines(path: string): Promise<string[]> {
  try {
    return (await Deno.readTextFile(path)).split("\n").filter(Boolean);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
}

/** The counting worker as function `q/ns/counter`, writing to `counts`. */
function counterFunction(counts: string, startDelayMs: number) {
  return {
    type: "function",
    tenant: "q",
    namespace: "ns",
    name: "counter",
    object: {
      spec: {
        image: "counter",
        commands: ["deno", "eval", COUNTING_WORKER],
        envs: [["COUNT_FILE", counts], ["START_DELAY_MS", String(startDelayMs)]],
        resources: { CPU: 100, Mem: 64 },
        policy: { Obj: { max_replica: 1, queue_timeout: 60, standby_per_node: 0 } },
      },
    },
  };
}

/**
 * Accepts `n` asynchronous calls of q/ns/counter at `url`, bodies `{n: 0..}`; their ids. The
 * function was just created: a gateway whose watch has not brought it yet looks it up.
 */
async function acceptCounted(url: string, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await request(`${url}/funccall/q/ns/counter/count`, {
      body: { n: i },
      headers: ASYNC,
    });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    ids.push(r.body.id);
  }
  return ids;
}

/** Waits until every call in `ids` succeeded at `url`; fails at once on a failed one. */
async function allSucceeded(url: string, ids: string[]): Promise<Map<string, Json>> {
  const calls = new Map<string, Json>();
  await eventually("every call to end", async () => {
    for (const id of ids) {
      if (calls.get(id)?.status === "succeeded") continue;
      const r = await request(`${url}/calls/${id}`);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.ok(r.body.status !== "failed", JSON.stringify(r.body));
      calls.set(id, r.body);
    }
    return ids.every((id) => calls.get(id).status === "succeeded");
  }, 90_000);
  return calls;
}

Deno.test({
  name:
    "All: a gateway killed with 20 accepted calls runs every one of them exactly once after a restart",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const env = { INFERX_CALL_LEASE_S: "2" };
    let p = await startPlatform(env);
    const dir = p.dataDir;
    const counts = `${dir}/counts.txt`;
    try {
      await createNamespace(p.url, "q", "ns");
      const fn = await putObject(p.url, counterFunction(counts, 3000));
      assert.equal(fn.status, 201, JSON.stringify(fn.body));
      const ids = await acceptCounted(p.url, 20);
      // Killed while its worker is still starting: no call has reached it.
      p.proc.kill("SIGKILL");
      await p.proc.status;
      assert.deepEqual(await lines(counts), [], "no call ran before the kill");

      p = await startPlatform(env, dir);
      const calls = await allSucceeded(p.url, ids);
      const seen = await lines(counts);
      assert.deepEqual(
        seen.map(Number).sort((a, b) => a - b),
        Array.from({ length: 20 }, (_, i) => i),
        "the worker saw each call exactly once",
      );
      for (const [i, id] of ids.entries()) {
        const c = calls.get(id);
        assert.deepEqual(c.result.body.n, i);
        const last = c.attempts.at(-1);
        assert.equal(last.status, 200);
        for (const lost of c.attempts.slice(0, -1)) assert.equal(lost.error.code, "gateway_lost");
      }
      const lost = ids.filter((id) => calls.get(id).attempts.length > 1).length;
      console.log(`${lost} of 20 calls were running when the gateway was killed`);
      assert.ok(lost > 0, "attempts running at the kill were taken over");
      const list = await request(`${p.url}/calls?func=q/ns/counter&status=succeeded`);
      assert.equal(list.body.count, 20);
    } finally {
      await p.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "All: a callback reaches a receiver on 127.0.0.1 that checks its signature; a cold streaming call shows its stages",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_CALLBACK_ALLOW: "127.0.0.1/32" });
    const received = Promise.withResolvers<{ ok: boolean; body: Json; id: string | null }>();
    let secret = "";
    const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
      const text = await req.text();
      const want = `sha256=${createHmac("sha256", secret).update(text).digest("hex")}`;
      const ok = req.headers.get("x-inferx-signature") === want;
      received.resolve({ ok, body: JSON.parse(text), id: req.headers.get("x-inferx-call") });
      return new Response(null, { status: ok ? 204 : 401 });
    });
    try {
      await createNamespace(p.url, "cb", "ns");
      const fn = await putObject(
        p.url,
        ngramFunction("cb", "ns", "lm", {
          policy: { Obj: { max_replica: 1, standby_per_node: 0 } },
        }),
      );
      assert.equal(fn.status, 201, JSON.stringify(fn.body));

      // Cold: the stream tells where the call stands before the worker's events.
      const res = await fetch(`${p.url}/funccall/cb/ns/lm/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-inferx-progress": "1" },
        body: JSON.stringify({ prompt: "The GPU", max_tokens: 4, stream: true }),
      });
      assert.equal(res.status, 200);
      const text = await res.text();
      const stages = [...text.matchAll(/^: (\w+)$/gm)].map((m) => m[1]);
      assert.deepEqual(stages, ["queued", "placing", "starting", "ready"], text);
      assert.ok(text.trimEnd().endsWith("data: [DONE]"), text);

      secret = (await request(`${p.url}/calls/callback-secret/cb`)).body.secret;
      const hook = `http://127.0.0.1:${receiver.addr.port}/done`;
      const r = await request(`${p.url}/funccall/cb/ns/lm/v1/completions`, {
        body: { prompt: "The GPU", max_tokens: 4 },
        headers: { ...ASYNC, "x-inferx-callback-url": hook },
      });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const got = await received.promise;
      assert.ok(got.ok, "the signature matches the tenant's secret");
      assert.equal(got.id, r.body.id);
      assert.equal(got.body.status, "succeeded");
      assert.equal(got.body.result.body.object, "text_completion");
      await eventually("the delivery to be recorded", async () => {
        const c = await request(`${p.url}/calls/${r.body.id}`);
        return c.body.callback?.state === "delivered";
      });
      // Anywhere else than what the operator allowed is refused.
      const refused = await request(`${p.url}/funccall/cb/ns/lm/v1/completions`, {
        body: { prompt: "x" },
        headers: { ...ASYNC, "x-inferx-callback-url": "http://10.0.0.1/hook" },
      });
      assert.equal(refused.status, 400);
      assert.match(refused.body.error.message, /not a public address/);
    } finally {
      await p.stop();
      await receiver.shutdown();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

const noEtcd = etcdUnavailable();
if (noEtcd) console.log(`skipping the distributed asynchronous calls test: ${noEtcd}`);

Deno.test({
  name:
    "distributed: another gateway runs the accepted calls of a killed one exactly once; stages come over gRPC",
  ignore: noEtcd !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const etcd = await startEtcd();
    const dir = await Deno.makeTempDir({ prefix: "inferx-calls-dist-" });
    const counts = `${dir}/counts.txt`;
    const port = {
      statesvc: freePort(),
      sched: freePort(),
      http: freePort(),
      a: freePort(),
      b: freePort(),
    };
    const common = {
      ETCD_ADDRS: etcd.url,
      STATESVC_ADDR: `127.0.0.1:${port.statesvc}`,
      SCHEDULER_ADDR: `127.0.0.1:${port.sched}`,
      INFERX_CALL_LEASE_S: "2",
      LOG_LEVEL: "warning",
    };
    const gateway = (p: number) =>
      spawnRole(
        { ...common, RUN_SERVICE: "Gateway", GATEWAY_PORT: String(p) },
        async () => (await fetch(`http://127.0.0.1:${p}/health`)).ok,
      );
    const procs: RoleProcess[] = [];
    const a = `http://127.0.0.1:${port.a}`;
    const b = `http://127.0.0.1:${port.b}`;
    try {
      procs.push(
        await spawnRole({
          ...common,
          RUN_SERVICE: "StateSvc",
          STATESVC_PORT: String(port.statesvc),
          INFERX_DATA_DIR: `${dir}/s`,
        }, () => listening(port.statesvc)),
        await spawnRole(
          {
            ...common,
            RUN_SERVICE: "Scheduler",
            SCHEDULER_PORT: String(port.sched),
            SCHEDULER_HTTP_PORT: String(port.http),
          },
          async () => (await fetch(`http://127.0.0.1:${port.http}/health`)).ok,
        ),
      );
      const gwA = await gateway(port.a);
      procs.push(await gateway(port.b));
      procs.push(
        await spawnRole({
          ...common,
          RUN_SERVICE: "NodeAgent",
          INFERX_DATA_DIR: `${dir}/n`,
          NODEAGENT_PORT: "0",
        }, async () => (await request(`${a}/nodes`)).body?.some?.((n: Json) => n.ready)),
      );
      await createNamespace(a, "q", "ns");
      assert.equal((await putObject(a, counterFunction(counts, 3000))).status, 201);
      const ids = await acceptCounted(a, 10);
      await gwA.kill();
      assert.deepEqual(await lines(counts), [], "no call ran before the kill");
      const calls = await allSucceeded(b, ids);
      const seen = (await lines(counts)).map(Number).sort((x, y) => x - y);
      assert.deepEqual(seen, Array.from({ length: 10 }, (_, i) => i), "each ran exactly once");
      for (const id of ids) {
        const c = calls.get(id);
        assert.notEqual(c.attempts.at(-1).gateway, c.attempts[0].gateway, "another gateway ran it");
      }

      // A cold streaming call through the surviving gateway hears the scheduler's stages.
      const lm = ngramFunction("q", "ns", "lm", { policy: { Obj: { queue_timeout: 120 } } });
      assert.equal((await putObject(b, lm)).status, 201);
      const res = await fetch(`${b}/funccall/q/ns/lm/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-inferx-progress": "1" },
        body: JSON.stringify({ prompt: "The GPU", max_tokens: 3, stream: true }),
      });
      const text = await res.text();
      const stages = [...text.matchAll(/^: (\w+)$/gm)].map((m) => m[1]);
      assert.deepEqual(stages, ["queued", "placing", "starting", "ready"], text);
    } finally {
      for (const p of procs.reverse()) await p.stop().catch(() => {});
      await etcd.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
