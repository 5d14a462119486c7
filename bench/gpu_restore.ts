/**
 * GPU restore benchmark (needs a GPU, its driver with the checkpoint API,
 * and PyTorch): starts the GPU sample worker with a model of MODEL_MB
 * (default 8000), then in one run measures
 * - the host-to-device copy bandwidth of this machine (pinned memory),
 * - the host-memory tier's restore (driver checkpoint API) as bandwidth
 *   over the worker's GPU memory, and the ratio (DESIGN.md: at least 0.7),
 * - time to first token fresh (process start) vs restored.
 * Prints the figures; `--record` also writes them to bench/results/.
 *
 * Run: `deno run -A bench/gpu_restore.ts [--record]`
 */
import { openLibCuda } from "../src/ffi/libcuda.ts";
import { ProcessRuntime } from "../src/nodeagent/process_runtime.ts";

const { cuda, reason } = openLibCuda();
if (!cuda) {
  console.log(`gpu_restore: no GPU benchmark here: ${reason}`);
  Deno.exit(0);
}
if (!cuda.hasCheckpointApi || cuda.devices().length === 0) {
  console.log(
    "gpu_restore: no GPU benchmark here: the driver lacks the checkpoint API or reports no GPU",
  );
  Deno.exit(0);
}
const device = cuda.devices()[0];
const modelMB = Number(Deno.env.get("MODEL_MB") ?? 8000);
const rt = new ProcessRuntime({ workDir: new URL("..", import.meta.url).pathname, cuda });
const spec = {
  podId: "bench-gpu",
  func: "bench/gpu/worker",
  funcVersion: 1,
  template: {
    image: "x",
    commands: ["python3", "src/samples/gpu/worker.py"],
    envs: [["MODEL_MB", String(modelMB)]] as [string, string][],
    mounts: [],
    port: 8000,
    probe: "/health",
    startupTimeoutS: 600,
  },
  cpuMillis: 4000,
  memMB: 32_000,
  gpus: [{ index: 0, vramMB: Math.min(device.totalMemMB - 2000, modelMB * 2) }],
};

const completion = async (endpoint: string) => {
  const t0 = performance.now();
  const res = await fetch(`http://${endpoint}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: "The GPU", max_tokens: 1 }),
  });
  await res.json();
  return performance.now() - t0;
};

try {
  const t0 = performance.now();
  const pod = await rt.start(spec);
  const fresh = performance.now() - t0 + await completion(pod.endpoint);
  const h2d = (await (await fetch(`http://${pod.endpoint}/v1/bandwidth`)).json())
    .h2d_gbps as number;
  const rounds: { restoreMs: number; ttft: number }[] = [];
  for (let i = 0; i < 5; i++) {
    await rt.park("bench-gpu", "host_memory");
    const t1 = performance.now();
    await rt.resume("bench-gpu"); // cuCheckpointProcessRestore, then Unlock
    const restoreMs = performance.now() - t1;
    rounds.push({ restoreMs, ttft: restoreMs + await completion(pod.endpoint) });
  }
  rounds.sort((a, b) => a.restoreMs - b.restoreMs);
  const med = rounds[Math.floor(rounds.length / 2)];
  const restoreGbps = modelMB / 1024 / (med.restoreMs / 1000);
  const lines = [
    `gpu_restore on ${device.name} (${device.totalMemMB} MB), driver ${cuda.driverVersion()}, ${
      new Date().toISOString()
    }`,
    `host-to-device copy bandwidth:  ${h2d.toFixed(2)} GB/s`,
    `host-memory tier restore:       ${med.restoreMs.toFixed(1)} ms for ${modelMB} MB = ${
      restoreGbps.toFixed(2)
    } GB/s`,
    `ratio restore / copy bandwidth: ${(restoreGbps / h2d).toFixed(3)} (target >= 0.7)`,
    `time to first token: fresh ${fresh.toFixed(0)} ms, restored ${med.ttft.toFixed(0)} ms (ratio ${
      (med.ttft / fresh).toFixed(3)
    })`,
  ];
  console.log(lines.join("\n"));
  if (Deno.args.includes("--record")) {
    const day = new Date().toISOString().slice(0, 10);
    await Deno.writeTextFile(
      new URL(`./results/gpu_restore-${day}.txt`, import.meta.url),
      lines.join("\n") + "\n",
    );
  }
} finally {
  await rt.stop("bench-gpu");
  cuda.close();
}
