/**
 * Declarative configuration end to end, as a GitOps job drives it: `ctl
 * apply` of an unchanged file changes nothing (the warm worker stays warm),
 * a policy change under a steady stream of calls fails none and starts no
 * worker, `diff`, `--dry-run` and `--prune` work against a running platform,
 * and a function no node could ever hold is refused at once, says why in its
 * condition, and clears when the node that fits comes.
 */
import assert from "node:assert/strict";
import { NGRAM_COMMANDS } from "../../src/samples/ngram/image.ts";
import { ctl, eventually, type Json, type Platform, request, startPlatform } from "./helpers.ts";

const namespace = [
  { type: "tenant", tenant: "system", namespace: "system", name: "ops", object: {} },
  { type: "namespace", tenant: "ops", namespace: "system", name: "prod", object: {} },
];

/** The n-gram sample as `ops/prod/{name}` with `policy`, labelled `app: demo`. */
const lm = (name: string, policy: Record<string, unknown>) => ({
  type: "function",
  tenant: "ops",
  namespace: "prod",
  name,
  object: {
    metadata: { labels: { app: "demo" } },
    spec: {
      image: "inferx/ngram",
      commands: NGRAM_COMMANDS,
      resources: { CPU: 300, Mem: 256 },
      // Leased workers stay with the gateway for a minute: every call after the first is warm.
      policy: { Obj: { scalein_timeout: 60, standby_per_node: 0, ...policy } },
    },
  },
});

/** A test with a fresh platform and a temporary directory, both removed after it. */
function platformTest(name: string, fn: (p: Platform, dir: string) => Promise<void>) {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const p = await startPlatform();
      const dir = await Deno.makeTempDir({ prefix: "inferx-gitops-" });
      try {
        await fn(p, dir);
      } finally {
        await p.stop();
        await Deno.remove(p.dataDir, { recursive: true });
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

const complete = (url: string, name = "lm") =>
  request(`${url}/funccall/ops/prod/${name}/v1/completions`, {
    body: { prompt: "The GPU", max_tokens: 4 },
  });

platformTest(
  "ctl apply twice: the second says unchanged, keeps revision and version, and the warm worker still answers warm",
  async (p, dir) => {
    const file = `${dir}/objs.json`;
    await Deno.writeTextFile(file, JSON.stringify([...namespace, lm("lm", {})]));
    const first = await ctl(p.url, ["apply", "-f", file]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /^created function ops\/prod\/lm$/m);
    const cold = await complete(p.url);
    assert.equal(cold.headers.get("x-inferx-cold-start"), "1");
    const before = (await request(`${p.url}/object/function/ops/prod/lm`)).body;

    const second = await ctl(p.url, ["apply", "-f", file]);
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual(second.stdout.trim().split("\n"), [
      "unchanged tenant system/system/ops",
      "unchanged namespace ops/system/prod",
      "unchanged function ops/prod/lm",
    ]);
    const after = (await request(`${p.url}/object/function/ops/prod/lm`)).body;
    assert.deepEqual([after.revision, after.version], [before.revision, before.version]);
    const warm = await complete(p.url);
    assert.equal(warm.status, 200);
    assert.equal(warm.headers.get("x-inferx-cold-start"), "0");
    assert.equal(warm.headers.get("x-inferx-resumed"), "0");
    assert.equal(warm.headers.get("x-inferx-pod"), cold.headers.get("x-inferx-pod"));
    const diff = await ctl(p.url, ["diff", "-f", file]);
    assert.equal(diff.code, 0, "no difference: exit 0");
    assert.equal(diff.stdout.trim(), "0 to create, 0 to update, 3 unchanged");
  },
);

platformTest(
  "a policy change under load (parallel and max_replica) fails no request, starts no worker and keeps the version",
  async (p, dir) => {
    const file = `${dir}/objs.json`;
    const write = (policy: Record<string, unknown>) =>
      Deno.writeTextFile(file, JSON.stringify([...namespace, lm("lm", policy)]));
    await write({ max_replica: 1, parallel: 4 });
    assert.equal((await ctl(p.url, ["apply", "-f", file])).code, 0);
    const warmUp = await complete(p.url);
    assert.equal(warmUp.status, 200, JSON.stringify(warmUp.body));
    const pod = warmUp.headers.get("x-inferx-pod");

    // Three callers, each one call after another (never more than `parallel` at once).
    const answers: { status: number; cold: string | null; pod: string | null }[] = [];
    let flowing = true;
    const caller = async () => {
      while (flowing) {
        const r = await complete(p.url);
        answers.push({
          status: r.status,
          cold: r.headers.get("x-inferx-cold-start"),
          pod: r.headers.get("x-inferx-pod"),
        });
      }
    };
    const callers = [caller(), caller(), caller()];
    await eventually("calls flowing", () => Promise.resolve(answers.length >= 10));
    await write({ max_replica: 2, parallel: 8 });
    const applied = await ctl(p.url, ["apply", "-f", file]);
    assert.equal(applied.code, 0, applied.stderr);
    assert.match(applied.stdout, /^updated function ops\/prod\/lm \(version 1 kept\)$/m);
    const during = answers.length;
    await eventually(
      "calls flowing after the change",
      () => Promise.resolve(answers.length >= during + 20),
    );
    flowing = false;
    await Promise.all(callers);

    const failed = answers.filter((a) => a.status !== 200);
    assert.deepEqual(failed, [], "no request failed");
    assert.deepEqual(answers.filter((a) => a.cold !== "0"), [], "no cold start");
    assert.deepEqual(new Set(answers.map((a) => a.pod)), new Set([pod]), "the same worker");
    const fn = (await request(`${p.url}/object/function/ops/prod/lm`)).body;
    assert.equal(fn.version, 1);
    assert.equal(fn.object.spec.policy.Obj.parallel, 8);
    const pods = (await request(`${p.url}/pods/ops/prod/lm`)).body;
    assert.deepEqual(pods.map((x: Json) => [x.id, x.funcVersion]), [[pod, 1]], "not drained");
    console.log(`policy change under load: ${answers.length} calls, ${during} before the change`);
  },
);

platformTest(
  "ctl diff, apply --dry-run and apply --prune against a running platform",
  async (p, dir) => {
    await Deno.writeTextFile(`${dir}/00-namespace.json`, JSON.stringify(namespace));
    await Deno.writeTextFile(`${dir}/a.yaml`, JSON.stringify(lm("a", { max_replica: 1 })));
    await Deno.writeTextFile(`${dir}/b.json`, JSON.stringify(lm("b", {})));
    // A dry run admits each object against what is stored; one whose parent only these files
    // would create is planned after it (the server could not admit it yet).
    const early = await ctl(p.url, ["apply", "-f", dir, "--dry-run"]);
    assert.equal(early.code, 0, early.stderr);
    assert.deepEqual(early.stdout.trim().split("\n"), [
      "created tenant system/system/ops (dry run)",
      "created namespace ops/system/prod (dry run, after tenant system/system/ops)",
      "created function ops/prod/a (dry run, after namespace ops/system/prod)",
      "created function ops/prod/b (dry run, after namespace ops/system/prod)",
    ]);
    assert.equal((await request(`${p.url}/object/tenant/system/system/ops`)).status, 404, "dry");
    assert.equal((await ctl(p.url, ["apply", "-f", `${dir}/00-namespace.json`])).code, 0);
    const dry = await ctl(p.url, ["apply", "-f", dir, "--dry-run"]);
    assert.equal(dry.code, 0, dry.stderr);
    assert.deepEqual(dry.stdout.trim().split("\n"), [
      "unchanged tenant system/system/ops (dry run)",
      "unchanged namespace ops/system/prod (dry run)",
      "created function ops/prod/a (dry run)",
      "created function ops/prod/b (dry run)",
    ]);
    assert.equal((await request(`${p.url}/object/function/ops/prod/a`)).status, 404, "dry");

    assert.equal((await ctl(p.url, ["apply", "-f", dir])).code, 0);
    await Deno.writeTextFile(`${dir}/a.yaml`, JSON.stringify(lm("a", { max_replica: 3 })));
    const diff = await ctl(p.url, ["diff", "-f", dir]);
    assert.equal(diff.code, 1, "differences: exit 1");
    assert.deepEqual(diff.stdout.trim().split("\n"), [
      "function ops/prod/a: would be updated (version 1 kept: its workers keep running)",
      "  ~ object.spec.policy.Obj.max_replica: 1 -> 3",
      "0 to create, 1 to update, 3 unchanged",
    ]);
    await Deno.remove(`${dir}/b.json`);
    const planned = await ctl(p.url, ["diff", "-f", dir, "-l", "app=demo", "--prune"]);
    assert.match(planned.stdout, /^function ops\/prod\/b: would be deleted/m);
    const refused = await ctl(p.url, ["apply", "-f", dir, "-l", "app=demo", "--prune"], "n\n");
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      /no longer has this object \(-l app=demo\):\n {2}function ops\/prod\/b/,
    );
    assert.match(refused.stderr, /Nothing applied: deleting 1 object\(s\) was not confirmed/);
    assert.equal((await request(`${p.url}/object/function/ops/prod/b`)).status, 200);
    const a = (await request(`${p.url}/object/function/ops/prod/a`)).body;
    assert.equal(a.object.spec.policy.Obj.max_replica, 1, "nothing applied after no");
    const pruned = await ctl(p.url, ["apply", "-f", dir, "-l", "app=demo", "--prune"], "y\n");
    assert.equal(pruned.code, 0, pruned.stderr);
    assert.match(pruned.stdout, /^updated function ops\/prod\/a \(version 1 kept\)$/m);
    assert.match(pruned.stdout, /^deleted function ops\/prod\/b$/m);
    assert.equal((await request(`${p.url}/object/function/ops/prod/b`)).status, 404);
    const bad = await ctl(p.url, ["diff", "-f", `${dir}/nope.json`]);
    assert.equal(bad.code, 2, "an error: exit 2");
  },
);

const ENV_WORKER =
  `Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  () => Response.json({ gpus: Deno.env.get("CUDA_VISIBLE_DEVICES") }));`;

Deno.test({
  name:
    "a function no node could hold answers 503 unschedulable at once, shows why as its condition, and clears when a node that fits comes",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let p = await startPlatform();
    const dir = await Deno.makeTempDir({ prefix: "inferx-gitops-" });
    try {
      for (const o of namespace) {
        assert.equal((await request(`${p.url}/object/`, { method: "PUT", body: o })).status, 201);
      }
      const put = await request(`${p.url}/object/`, {
        method: "PUT",
        body: {
          type: "function",
          tenant: "ops",
          namespace: "prod",
          name: "a100",
          object: {
            image: "lab/env",
            commands: ["deno", "eval", ENV_WORKER],
            resources: { CPU: 100, Mem: 64, GPU: { Type: "A100", Count: 1, vRam: 20_000 } },
            // A call that waited would wait a minute and end in 504.
            policy: { Obj: { queue_timeout: 60 } },
          },
        },
      });
      assert.equal(put.status, 201, JSON.stringify(put.body));
      const call = () => request(`${p.url}/funccall/ops/prod/a100/`);
      const refused = await call();
      assert.equal(refused.status, 503, JSON.stringify(refused.body));
      assert.equal(refused.body.error.code, "unschedulable");
      assert.match(
        refused.body.error.message,
        // From the lease answer, or from the condition when the gateway already has it.
        /^Cannot (lease worker for|call) ops\/prod\/a100: No node could ever hold a pod: 1 GPU of type A100 wanted, no node has one/,
      );
      let fn: Json;
      await eventually("the condition recorded", async () => {
        fn = (await request(`${p.url}/object/function/ops/prod/a100`)).body;
        return fn.object.status?.conditions?.[0]?.status === "False";
      });
      const [cond] = fn.object.status.conditions;
      assert.deepEqual([cond.type, cond.reason], ["Schedulable", "GPUTypeUnavailable"]);
      assert.equal(fn.version, 1, "recording a condition is not a new version");
      const again = await call();
      assert.equal(again.status, 503);
      assert.match(again.body.error.message, /^Cannot call ops\/prod\/a100: No node could ever/);

      // The node comes back with an A100 (declared, as a node without a driver may).
      const config = `${dir}/node.json`;
      await Deno.writeTextFile(
        config,
        JSON.stringify({
          name: "node1",
          address: "127.0.0.1",
          cpuMillis: "auto",
          memMB: "auto",
          gpus: [{ index: 0, type: "A100", vramMB: 40_000 }],
        }),
      );
      assert.equal((await p.stop()).code, 0);
      p = await startPlatform({ NODE_CONFIG: config }, p.dataDir);
      await eventually("the condition cleared", async () => {
        fn = (await request(`${p.url}/object/function/ops/prod/a100`)).body;
        return fn.object.status.conditions[0].status === "True";
      });
      assert.equal(fn.object.status.conditions[0].reason, "Fits");
      const served = await call();
      assert.equal(served.status, 200, JSON.stringify(served.body));
      assert.equal(served.body.gpus, "0");
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    }
  },
});
