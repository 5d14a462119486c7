/**
 * Model-aware serving on a running platform (`RUN_SERVICE=All`, the n-gram
 * sample worker): token figures of real completions in headers, metrics and
 * `/audit/stats`; a canary split between two versions, rolled back and
 * promoted with `ctl rollout`; a function scaled out on queue time by the
 * scheduler's advice (a worker that answers in 300 ms); and a tenant
 * within its share served while another tenant's burst holds the whole GPU
 * pool.
 */
import assert from "node:assert/strict";
import {
  createNamespace,
  eventually,
  type Json,
  ngramFunction,
  putObject,
  request,
  startPlatform,
} from "./helpers.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

async function ctl(gateway: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "ctl", "--gateway", gateway, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A worker whose every answer takes 300 ms. */
const SLOW_WORKER = `
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} }, async (req) => {
  if (new URL(req.url).pathname === "/health") return new Response("ok");
  await req.arrayBuffer();
  await new Promise((r) => setTimeout(r, 300));
  return Response.json({ choices: [{ text: "slow" }] });
});`;

function series(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? NaN : Number(line.split(" ")[1]);
}

Deno.test({
  name: "a canary serves both versions by share with token figures, and ctl rolls it back and out",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform();
    try {
      await createNamespace(p.url, "ma", "ns");
      const policy = { Obj: { canary_percent: 50, scalein_timeout: 60 } };
      const v1 = ngramFunction("ma", "ns", "lm", { envs: { MODEL_NAME: "v1" }, policy });
      assert.equal((await putObject(p.url, v1)).status, 201);
      const chat = (stream: boolean) =>
        request(`${p.url}/v1/chat/completions`, {
          body: {
            model: "ma/ns/lm",
            messages: [{ role: "user", content: "The GPU" }],
            max_tokens: 6,
            stream,
          },
        });
      assert.equal((await chat(false)).body.model, "v1");

      // Version 2 takes half the calls; version 1, stable, keeps the rest and its warm pod.
      const cur = await request(`${p.url}/object/function/ma/ns/lm`);
      const v2 = ngramFunction("ma", "ns", "lm", { envs: { MODEL_NAME: "v2" }, policy });
      const up = await request(`${p.url}/object/`, {
        body: { ...v2, revision: cur.body.revision },
      });
      assert.equal(up.status, 200, JSON.stringify(up.body));
      const status = await ctl(p.url, "rollout", "status", "ma/ns/lm");
      assert.equal(
        status.stdout.trim(),
        "ma/ns/lm: version 2, stable 1, traffic v2 50%, v1 50%",
        status.stderr,
      );
      // The gateway learns of version 2 through its watch.
      await eventually(
        "calls to reach version 2",
        async () => (await chat(false)).body.model === "v2",
      );
      const seen: string[] = [];
      for (let i = 0; i < 6; i++) {
        const r = await chat(false);
        assert.equal(r.status, 200);
        assert.equal(
          `v${r.headers.get("x-inferx-version")}`,
          r.body.model,
          "the header names the version",
        );
        assert.ok(
          Number(r.headers.get("x-inferx-ttft-ms")) > 0,
          "a whole answer says its time to first token",
        );
        seen.push(r.body.model);
      }
      assert.deepEqual(seen.filter((m) => m === "v2").length, 3, seen.join(" "));
      const streamed = await chat(true);
      // A short stream can arrive whole before its head goes out: then its TTFT is known.
      const streamedTtft = streamed.headers.get("x-inferx-ttft-ms");
      assert.ok(streamedTtft === null || Number(streamedTtft) > 0, String(streamedTtft));
      assert.match(streamed.body, /data: \[DONE\]/);

      const metrics = await (await fetch(`${p.url}/metrics`)).text();
      for (const v of [1, 2]) {
        const labels = `{function="ma/ns/lm",version="${v}"`;
        assert.ok(series(metrics, `inferx_version_requests_total${labels},code="200"}`) >= 3);
        assert.ok(series(metrics, `inferx_completion_tokens_total${labels}}`) >= 18);
        assert.ok(series(metrics, `inferx_time_to_first_token_seconds_count${labels}}`) >= 3);
      }
      await eventually("the audit to sum the tokens of both versions", async () => {
        const s = await request(`${p.url}/audit/stats?tenant=ma`);
        const fns = (s.body.usage?.functions ?? []) as Json[];
        return fns.length === 2 && fns.every((u) => u.completionTokens >= 18 && u.ttftP50Ms > 0);
      });

      // Roll back: version 1 again, from its warm pod.
      const back = await ctl(p.url, "rollout", "rollback", "ma/ns/lm");
      assert.equal(back.code, 0, back.stderr);
      assert.equal(back.stdout.trim(), "ma/ns/lm: version 1, stable 1, traffic v1 100%");
      await eventually("every call to reach version 1", async () => {
        const rs = await Promise.all([chat(false), chat(false)]);
        return rs.every((r) => r.body.model === "v1");
      });
      const warm = await chat(false);
      assert.equal(warm.headers.get("x-inferx-cold-start"), "0");
      const none = await ctl(p.url, "rollout", "promote", "ma/ns/lm");
      assert.equal(none.code, 1);
      assert.match(
        none.stderr,
        /409 Cannot promote ma\/ns\/lm: version 1 already takes every call/,
      );
      await eventually("version 2's pod to drain", async () => {
        const pods = (await request(`${p.url}/pods/ma/ns/lm`)).body as Json[];
        return pods.every((pod) => pod.funcVersion === 1 || pod.desired === "Terminated");
      });

      // A new version (3, never 2 again) canaries, then takes every call.
      const now = await request(`${p.url}/object/function/ma/ns/lm`);
      const v3 = ngramFunction("ma", "ns", "lm", { envs: { MODEL_NAME: "v3" }, policy });
      await request(`${p.url}/object/`, { body: { ...v3, revision: now.body.revision } });
      // Promoting the version one saw, when another came since, is refused.
      const stale = await ctl(p.url, "rollout", "promote", "ma/ns/lm", "--version", "1");
      assert.equal(stale.code, 1);
      assert.match(stale.stderr, /409 Cannot promote ma\/ns\/lm: its newest version is 3, not 1/);
      const promoted = await ctl(p.url, "rollout", "promote", "ma/ns/lm", "--version", "3");
      assert.equal(promoted.stdout.trim(), "ma/ns/lm: version 3, stable 3, traffic v3 100%");
      await eventually(
        "every call to reach version 3",
        async () => (await chat(false)).body.model === "v3",
      );
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a tenant within its share gets a worker while another tenant's burst holds every GPU",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // One 80 GB GPU: two 40 GB workers fit.
    const dir = await Deno.makeTempDir({ prefix: "inferx-fair-" });
    const nodeConfig = `${dir}/node.json`;
    await Deno.writeTextFile(
      nodeConfig,
      JSON.stringify({
        name: "node1",
        address: "127.0.0.1",
        cpuMillis: "auto",
        memMB: "auto",
        gpus: [{ index: 0, type: "H100", vramMB: 81_920 }],
        contextOverheadMB: 512,
      }),
    );
    const p = await startPlatform({ NODE_CONFIG: nodeConfig });
    let bursting = true;
    const burst: Promise<number[]>[] = [];
    try {
      const gpu = { CPU: 200, Mem: 256, GPU: { Count: 1, vRam: 40_000 } };
      await createNamespace(p.url, "burst", "ns");
      await createNamespace(p.url, "steady", "ns");
      // The steady tenant gives its worker back a second after its call; the burst keeps its own.
      const functions: [string, string, number][] = [
        ["burst", "a", 60],
        ["burst", "b", 60],
        ["steady", "s", 1],
      ];
      for (const [t, name, keep] of functions) {
        const policy = { Obj: { parallel: 1, scalein_timeout: keep, queue_len: 1000 } };
        const r = await putObject(p.url, ngramFunction(t, "ns", name, { resources: gpu, policy }));
        assert.equal(r.status, 201, JSON.stringify(r.body));
      }
      const call = (t: string, name: string) =>
        request(`${p.url}/funccall/${t}/ns/${name}/v1/completions`, {
          body: { prompt: "The GPU", max_tokens: 64 },
        });
      // The burst: several callers per function, never letting a worker go idle.
      for (const name of ["a", "b", "a", "b"]) {
        burst.push((async () => {
          const codes: number[] = [];
          while (bursting) {
            const r = await call("burst", name);
            codes.push(r.status);
            if (r.status !== 200) console.log("burst", name, r.status, JSON.stringify(r.body));
          }
          return codes;
        })());
      }
      await eventually("the burst to hold the GPU", async () => {
        const m = await (await fetch(`${p.url}/metrics`)).text();
        return series(m, 'inferx_leased_workers{function="burst/ns/a"}') === 1 &&
          series(m, 'inferx_leased_workers{function="burst/ns/b"}') === 1;
      });
      const t0 = performance.now();
      const steady = await call("steady", "s");
      const waited = performance.now() - t0;
      assert.equal(steady.status, 200, JSON.stringify(steady.body));
      assert.ok(waited < 25_000, `the steady tenant waited ${waited} ms`);
      const m = await (await fetch(`${p.url}/metrics`)).text();
      assert.ok(series(m, 'inferx_tenant_pool_share{tenant="burst"}') > 0);
      assert.ok(series(m, 'inferx_tenant_fair_share{tenant="burst"}') >= 0.5);
    } finally {
      bursting = false;
      const codes = (await Promise.all(burst)).flat();
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
      await Deno.remove(dir, { recursive: true });
      // The burst lost a worker for a while and got the room back once the steady tenant
      // was done: its calls waited, none failed.
      assert.ok(codes.length > 0 && codes.every((c) => c === 200), JSON.stringify(codes.slice(-5)));
    }
  },
});

Deno.test({
  name:
    "calls waiting past queue_ms make the scheduler advise another worker, which wait_ratio never would",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform();
    let running = true;
    let calls: Promise<number>[] = [];
    try {
      await createNamespace(p.url, "qs", "ns");
      // wait_ratio 100: the gateway alone leases one worker for a queue of up to 100 calls.
      const policy = {
        Obj: {
          parallel: 1,
          max_replica: 3,
          scalein_timeout: 30,
          scaleout_policy: { wait_ratio: 100, queue_ms: 200 },
        },
      };
      // Each call takes 300 ms, so with four callers on one worker a queued
      // call has always waited past queue_ms, however fast the machine.
      const r = await putObject(
        p.url,
        ngramFunction("qs", "ns", "lm", { policy, commands: ["deno", "eval", SLOW_WORKER] }),
      );
      assert.equal(r.status, 201, JSON.stringify(r.body));
      calls = Array.from({ length: 4 }, async () => {
        let n = 0;
        while (running) {
          const c = await request(`${p.url}/funccall/qs/ns/lm/v1/completions`, {
            body: { prompt: "The GPU", max_tokens: 16 },
          });
          assert.equal(c.status, 200);
          n++;
        }
        return n;
      });
      await eventually("the scheduler's advice to lease more workers", async () => {
        const m = await (await fetch(`${p.url}/metrics`)).text();
        return series(m, 'inferx_leased_workers{function="qs/ns/lm"}') >= 2;
      }, 20_000);
      running = false;
      assert.ok((await Promise.all(calls)).every((n) => n > 0));
    } finally {
      running = false;
      await Promise.allSettled(calls);
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
