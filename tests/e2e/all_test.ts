/**
 * End to end, as a user: start `RUN_SERVICE=All`, register a function over
 * HTTP, call it cold and warm, watch it scale to zero, restart and find the
 * objects, and check every error answer.
 */
import assert from "node:assert/strict";
import { eventually, type Json, type Platform, request, startPlatform } from "./helpers.ts";
import { NGRAM_COMMANDS } from "../../src/samples/ngram/image.ts";

function fn(name: string, spec: Record<string, unknown>, revision?: number) {
  return {
    type: "function",
    tenant: "public",
    namespace: "demo",
    name,
    revision,
    object: { spec: { image: "inferx/ngram", ...spec } },
  };
}

async function register(p: Platform) {
  for (
    const obj of [
      { type: "tenant", tenant: "system", namespace: "system", name: "public", object: {} },
      { type: "namespace", tenant: "public", namespace: "system", name: "demo", object: {} },
      fn("lm", {
        commands: NGRAM_COMMANDS,
        resources: { CPU: 500, Mem: 256 },
        policy: { Obj: { max_replica: 1, scalein_timeout: 0.5, standby_per_node: 0 } },
      }),
      fn("stuck", {
        commands: ["deno", "eval", "setInterval(() => {}, 1000)"],
        startup_timeout: 60,
        resources: { CPU: 100, Mem: 64 },
        policy: { Obj: { queue_len: 1, queue_timeout: 30 } },
      }),
      fn("broken", {
        commands: [
          "deno",
          "eval",
          "console.error('cannot load weights: no such file'); Deno.exit(4)",
        ],
        resources: { CPU: 100, Mem: 64 },
      }),
    ]
  ) {
    const r = await request(`${p.url}/object/`, { method: "PUT", body: obj });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }
}

const complete = (
  p: Platform,
  func = "lm",
  body: unknown = { prompt: "The GPU", max_tokens: 16 },
  headers = {},
) => request(`${p.url}/funccall/public/demo/${func}/v1/completions`, { body, headers });

Deno.test({
  name:
    "All: register over HTTP, serve cold then warm, scale to zero, restart keeps objects, errors are clear",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    let p = await startPlatform({ INFERX_BODY_LIMIT: "65536" });
    try {
      await register(p);

      await t.step("a cold call starts a worker and says so; a warm call reuses it", async () => {
        const cold = await complete(p);
        assert.equal(cold.status, 200, JSON.stringify(cold.body));
        assert.equal(cold.headers.get("x-inferx-cold-start"), "1");
        assert.ok(Number(cold.headers.get("x-inferx-ttfb-ms")) > 0);
        assert.equal(cold.body.object, "text_completion");
        assert.equal([...cold.body.choices[0].text].length, 16);
        const warm = await complete(p);
        assert.equal(warm.headers.get("x-inferx-cold-start"), "0");
        assert.equal(warm.headers.get("x-inferx-pod"), cold.headers.get("x-inferx-pod"));
        const pod = warm.headers.get("x-inferx-pod");
        const log = await request(`${p.url}/pods/public/demo/lm/${pod}/log?lines=5`);
        assert.match(log.body, /ngram model \(order 7/);
        assert.equal((await request(`${p.url}/pods/public/demo/lm/nope/log`)).status, 404);
      });

      await t.step("streaming completions and chat arrive as server-sent events", async () => {
        const s = await complete(p, "lm", { prompt: "The GPU", max_tokens: 5, stream: true });
        assert.equal(s.headers.get("content-type"), "text/event-stream");
        assert.ok((s.body as string).trimEnd().endsWith("data: [DONE]"));
        const chat = await request(`${p.url}/funccall/public/demo/lm/v1/chat/completions`, {
          body: { messages: [{ role: "user", content: "What is a cold start?" }], max_tokens: 8 },
        });
        assert.equal(chat.body.choices[0].message.role, "assistant");
      });

      await t.step("an idle function scales to zero", async () => {
        await eventually(
          "scale to zero",
          async () => (await request(`${p.url}/pods/public/demo/lm`)).body.length === 0,
        );
      });

      await t.step("min_replica 1 keeps a worker up; a policy update keeps version", async () => {
        const cur = await request(`${p.url}/object/function/public/demo/lm`);
        const upd = await request(`${p.url}/object/`, {
          body: fn("lm", {
            commands: NGRAM_COMMANDS,
            resources: { CPU: 500, Mem: 256 },
            policy: {
              Obj: { min_replica: 1, max_replica: 1, scalein_timeout: 0.5, standby_per_node: 0 },
            },
          }, cur.body.revision),
        });
        assert.equal(upd.status, 200, JSON.stringify(upd.body));
        assert.equal(upd.body.unchanged, false);
        assert.equal(upd.body.version, cur.body.version, "only the policy changed");
        await eventually("a ready min_replica pod", async () => {
          const pods = (await request(`${p.url}/pods/public/demo/lm`)).body;
          return pods.length === 1 && pods[0].state === "Ready" &&
            pods[0].funcVersion === upd.body.version;
        });
        const call = await complete(p);
        assert.equal(call.headers.get("x-inferx-cold-start"), "0");
        await new Promise((r) => setTimeout(r, 1500));
        assert.equal(
          (await request(`${p.url}/pods/public/demo/lm`)).body.length,
          1,
          "still up after scale-in time",
        );
      });

      await t.step(
        "errors: 404, 400, 413, 503 on a full queue, 504 on a queue timeout, 503 with a crash's output",
        async () => {
          const missing = await complete(p, "nope");
          assert.equal(missing.status, 404);
          assert.match(missing.body.error.message, /public\/demo\/nope does not exist/);
          const bad = await complete(p, "lm", "{not json");
          assert.equal(bad.status, 400);
          assert.match(bad.body.error.message, /not valid JSON/);
          const big = await complete(p, "lm", { prompt: "x".repeat(70_000) });
          assert.equal(big.status, 413);
          assert.match(big.body.error.message, /limit of 65536 bytes/);
          const waiting = complete(p, "stuck", { prompt: "x" }, { "x-inferx-timeout": "1" });
          await new Promise((r) => setTimeout(r, 200));
          const full = await complete(p, "stuck");
          assert.equal(full.status, 503);
          assert.match(full.body.error.message, /queue is full \(1 waiting\)/);
          const timedOut = await waiting;
          assert.equal(timedOut.status, 504);
          assert.match(timedOut.body.error.code, /timeout/);
          const crashed = await complete(p, "broken");
          assert.equal(crashed.status, 503);
          assert.match(crashed.body.error.message, /exit code 4/);
          assert.match(crashed.body.error.message, /cannot load weights: no such file/);
        },
      );

      await t.step("a restart keeps every object", async () => {
        const before = (await request(`${p.url}/object/function/public/demo/lm`)).body;
        const status = await p.stop();
        assert.equal(status.code, 0, p.output());
        p = await startPlatform({}, p.dataDir);
        const after = await request(`${p.url}/object/function/public/demo/lm`);
        assert.deepEqual(after.body, before);
        const tenants = await request(`${p.url}/objects/tenant/system/system`);
        assert.deepEqual(tenants.body.items.map((o: { name: string }) => o.name), ["public"]);
        const call = await complete(p);
        assert.equal(call.status, 200);
      });
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "All killed with SIGKILL: the restart removes its left-over worker and serves again",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let p = await startPlatform();
    try {
      await register(p);
      const first = await complete(p);
      assert.equal(first.status, 200);
      const [pod] = (await request(`${p.url}/pods/public/demo/lm`)).body;
      p.proc.kill("SIGKILL");
      await p.stop().catch(() => {});
      const orphan = await fetch(`http://${pod.endpoint}/health`);
      assert.equal(orphan.status, 200, "the worker outlived the killed platform");
      await orphan.body?.cancel();
      p = await startPlatform({}, p.dataDir);
      await assert.rejects(fetch(`http://${pod.endpoint}/health`), "the restart removed it");
      await eventually("the lost pod replaced or cleaned up", async () => {
        const pods = (await request(`${p.url}/pods/public/demo/lm`)).body;
        return pods.every((q: { id: string }) => q.id !== pod.id);
      });
      const again = await complete(p);
      assert.equal(again.status, 200);
      assert.equal(again.headers.get("x-inferx-cold-start"), "1");
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "All parks an idle worker (paused tier) and resumes the same process, state kept, on the next call",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform();
    try {
      await register(p);
      const r = await request(`${p.url}/object/`, {
        method: "PUT",
        body: fn("parked", {
          commands: NGRAM_COMMANDS,
          resources: { CPU: 500, Mem: 256 },
          policy: { Obj: { scalein_timeout: 0.3, standby_per_node: 1 } },
        }),
      });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const first = await complete(p, "parked");
      assert.equal(first.headers.get("x-inferx-cold-start"), "1");
      assert.equal(first.headers.get("x-worker-requests"), "1");
      const podId = first.headers.get("x-inferx-pod");
      let pod: Json;
      await eventually("the idle worker parked", async () => {
        pod = (await request(`${p.url}/pods/public/demo/parked`)).body[0];
        return pod?.state === "Standby";
      });
      assert.equal(pod.standbyTier, "paused");
      await assert.rejects(
        fetch(`http://${pod.endpoint}/health`, { signal: AbortSignal.timeout(300) }),
        "a paused process does not answer",
      );
      const again = await complete(p, "parked");
      assert.equal(again.status, 200);
      assert.equal(again.headers.get("x-inferx-resumed"), "1");
      assert.equal(again.headers.get("x-inferx-cold-start"), "0");
      assert.equal(again.headers.get("x-inferx-pod"), podId, "the same pod came back");
      assert.equal(again.headers.get("x-worker-requests"), "2", "the same process, its state kept");
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a min_replica no node has room for is said in the log, and when it has its workers again",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_SAMPLES: "none" });
    try {
      const cpu = Math.floor(navigator.hardwareConcurrency * 1000 * 0.6); // one pod fits, not two
      const spec = (min: number) => ({
        commands: NGRAM_COMMANDS,
        resources: { CPU: cpu, Mem: 128 },
        policy: { Obj: { min_replica: min, max_replica: 2, standby_per_node: 0 } },
      });
      for (
        const obj of [
          { type: "tenant", tenant: "system", namespace: "system", name: "public", object: {} },
          { type: "namespace", tenant: "public", namespace: "system", name: "demo", object: {} },
          fn("wide", spec(2)),
        ]
      ) {
        assert.equal((await request(`${p.url}/object/`, { method: "PUT", body: obj })).status, 201);
      }
      await eventually(
        "the shortfall in the log",
        () =>
          Promise.resolve(
            /public\/demo\/wide version 1 is short of workers \(\d of min_replica 2, 0 call\(s\) waiting\): no node fits/
              .test(p.output()),
          ),
      );
      const cur = await request(`${p.url}/object/function/public/demo/wide`);
      const lowered = await request(`${p.url}/object/`, {
        body: fn("wide", spec(1), cur.body.revision),
      });
      assert.equal(lowered.status, 200, JSON.stringify(lowered.body));
      await eventually(
        "the shortfall over",
        () =>
          Promise.resolve(
            /public\/demo\/wide version \d+ has the workers it needs again/.test(p.output()),
          ),
      );
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
