/**
 * The GPU sample worker and the GPU paths. Where no GPU (or no PyTorch) is
 * present the GPU cases skip with the reason printed; the start-failure case
 * runs everywhere.
 */
import assert from "node:assert/strict";
import { InferxError } from "../../src/common/errors.ts";
import { openLibCuda } from "../../src/ffi/libcuda.ts";
import { ProcessRuntime } from "../../src/nodeagent/process_runtime.ts";
import type { PodSpec } from "../../src/nodeagent/runtime.ts";
import {
  createNamespace,
  eventually,
  type Json,
  putObject,
  request,
  startPlatform,
} from "./helpers.ts";

const WORKER = ["python3", "src/samples/gpu/worker.py"];
const REPO = new URL("../..", import.meta.url).pathname;

function gpuReason(): string | undefined {
  const { cuda, reason } = openLibCuda();
  if (!cuda) return reason;
  try {
    if (cuda.devices().length === 0) return "the CUDA driver reports no GPU";
    const torch = new Deno.Command("python3", {
      args: ["-c", "import torch; assert torch.cuda.is_available()"],
    })
      .outputSync();
    return torch.success ? undefined : "PyTorch with CUDA is not installed";
  } catch (err) {
    return (err as Error).message;
  } finally {
    cuda.close();
  }
}
const noGpu = gpuReason();
if (noGpu) console.log(`skipping the GPU tests: ${noGpu}`);

function spec(vramMB = 4000): PodSpec {
  return {
    podId: "gpu-pod",
    func: "t/n/gpu",
    funcVersion: 1,
    template: {
      image: "x",
      commands: WORKER,
      envs: [["MODEL_MB", "1000"]],
      mounts: [],
      port: 8000,
      probe: "/health",
      startupTimeoutS: 300,
    },
    cpuMillis: 1000,
    memMB: 4000,
    gpus: [{ index: 0, vramMB }],
  };
}

Deno.test({
  name: "the GPU worker that cannot start says why (no PyTorch, or no CUDA device)",
  ignore: noGpu === undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const rt = new ProcessRuntime({ workDir: REPO });
    await assert.rejects(rt.start(spec()), (err: unknown) => {
      assert.ok(err instanceof InferxError && err.code === "worker_failed");
      assert.match(err.message, /gpu worker: (PyTorch is not installed|no CUDA device)/);
      return true;
    });
  },
});

Deno.test({
  name:
    "GPU: discovery, two workers on one GPU by vRAM slice, host-memory park and restore keep the answers, a third that does not fit runs once an idle one parks, a slice too big is refused",
  ignore: noGpu !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({ INFERX_RUNTIME: "process" });
    try {
      const [node] = (await request(`${p.url}/nodes`)).body as Json[];
      assert.ok(node.gpus.length > 0 && node.gpuDriver.available, JSON.stringify(node));
      const put = (body: unknown) => putObject(p.url, body);
      await createNamespace(p.url, "g", "n");
      const vram = node.gpus[0].vramMB as number;
      // Each parks in host memory (freeing its vRAM) a second after its last call.
      const fns: [string, number][] = [
        ["a", Math.floor(vram / 3)],
        ["b", Math.floor(vram / 3)],
        ["c", Math.floor(vram * 0.7)],
        ["whole", vram],
      ];
      for (const [name, vRam] of fns) {
        const r = await put({
          type: "function",
          tenant: "g",
          namespace: "n",
          name,
          object: {
            image: "x",
            commands: WORKER,
            envs: [["MODEL_MB", "2000"]],
            resources: { CPU: 500, Mem: 4000, GPU: { Count: 1, vRam } },
            startup_timeout: 300,
            policy: { Obj: { scalein_timeout: 1, standby_per_node: 1 } },
          },
        });
        assert.equal(r.status, 201, JSON.stringify(r.body));
      }
      const call = (f: string) =>
        request(`${p.url}/funccall/g/n/${f}/v1/completions`, {
          body: { prompt: "The GPU", max_tokens: 8 },
        });
      const a1 = await call("a");
      const b1 = await call("b");
      assert.equal(a1.status, 200, JSON.stringify(a1.body));
      const gpuOf = async (f: string) =>
        (await request(`${p.url}/pods/g/n/${f}`)).body[0].gpus[0].index;
      assert.equal(await gpuOf("a"), await gpuOf("b"), "both slices share one GPU");
      await eventually("a parked in host memory", async () => {
        const pod = (await request(`${p.url}/pods/g/n/a`)).body[0];
        return pod?.state === "Standby" && pod.standbyTier === "host_memory";
      }, 60_000);
      const a2 = await call("a");
      assert.equal(a2.headers.get("x-inferx-resumed"), "1");
      assert.deepEqual(a2.body.choices, a1.body.choices, "the restored model answers as before");
      assert.equal(b1.status, 200);
      // vRAM runs out: c's slice does not fit beside the resumed a's; c runs once a,
      // idle, parks in host memory and gives its vRAM back.
      const c1 = await call("c");
      assert.equal(c1.status, 200, JSON.stringify(c1.body));
      const holding = async (f: string) =>
        ((await request(`${p.url}/pods/g/n/${f}`)).body as Json[]).filter((pod) =>
          !["Terminated", "Failed"].includes(pod.state) &&
          !(pod.state === "Standby" && ["host_memory", "file"].includes(pod.standbyTier))
        );
      const slices = (pods: Json[]) => pods.reduce((sum, pod) => sum + pod.gpus[0].vramMB, 0);
      const held = slices(await holding("b")) + slices(await holding("c"));
      assert.ok(held <= vram, `slices holding vRAM: ${held} MB of ${vram} MB`);
      assert.deepEqual(await holding("a"), [], "a gave its vRAM up for c");
      // A slice of the whole GPU never fits beside the driver's context: refused at once.
      const whole = await call("whole");
      assert.equal(whole.status, 503, JSON.stringify(whole.body));
      assert.equal(whole.body.error.code, "unschedulable");
      assert.match(whole.body.error.message, /vRAM/);
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
