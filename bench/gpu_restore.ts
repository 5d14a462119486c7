/**
 * GPU restore benchmark (needs a GPU, its driver with the checkpoint API,
 * and PyTorch). For each model size it starts the GPU sample worker
 * (`src/samples/gpu/worker.py`, random fp16 weights made on the GPU) and in
 * the same run measures
 * - the copy bandwidths of this machine (host to device from pinned and from
 *   pageable memory, device to host), in the worker, on a 4 GB buffer;
 * - the host-memory tier (the driver's checkpoint API): the park (lock +
 *   checkpoint) and the restore (restore + unlock), the restore as
 *   bandwidth over the GPU memory the worker holds, and its ratio to the
 *   pinned host-to-device bandwidth (DESIGN.md: at least 0.7);
 * - time to the first answer fresh (process start, CUDA context, weights
 *   made on the GPU, first answer) vs restored (restore, first answer), and
 *   whether every restored answer equals the one before the park.
 *
 * Then the file tier after a GPU checkpoint: the driver moves the worker's
 * GPU memory into its host memory and CRIU dumps the process to disk (pod
 * namespaces, as the node agent runs it), then CRIU restores it and the
 * driver copies the memory back; timings and the answer before and after, or
 * the exact reason it failed.
 *
 * Run: `deno run -A bench/gpu_restore.ts [--sizes=MB,MB] [--rounds=N] [--file-mb=MB]
 * [--file-netns=on|off|both] [--weights-dir=DIR] [--record]` (defaults 8000, 3, 2000, on;
 * `--file-mb=0` skips the file tier). With `--weights-dir` a first start
 * writes the weights to a file there and the measured fresh start loads them
 * from it (through the page cache), as a model server loads its weights;
 * without it the fresh start makes them on the GPU (a lower bound). `--record`
 * also writes the figures to `bench/results/gpu_restore-DAY.txt`.
 */
import { openLibCuda } from "../src/ffi/libcuda.ts";
import { Criu, criuCapability, locateCriu } from "../src/nodeagent/criu.ts";
import { PodNetworks } from "../src/nodeagent/pod_net.ts";
import { dirBytes, ProcessRuntime } from "../src/nodeagent/process_runtime.ts";
import type { PodSpec } from "../src/nodeagent/runtime.ts";
import { measure } from "./loop_stall.ts";

const arg = (name: string, fallback: string) =>
  Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
const sizes = arg("sizes", "8000").split(",").map(Number).filter((n) => n > 0);
const rounds = Number(arg("rounds", "3"));
const fileMB = Number(arg("file-mb", "2000"));
/** Where the weights files go (`--weights-dir`): a fresh start then loads its weights from one. */
const weightsDir = arg("weights-dir", "");
/** `--file-netns=on|off|both`: the file tier in pod namespaces, in the host's, or both. */
const fileNetns = arg("file-netns", "on");
const BANDWIDTH_MB = 4096;
const REPO = new URL("..", import.meta.url).pathname;

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
const lines: string[] = [];
const say = (line: string) => {
  console.log(line);
  lines.push(line);
};
say(
  `gpu_restore on ${device.name} (${device.totalMemMB} MB, ${device.uuid}), CUDA driver API ${cuda.driverVersion()}, ${
    new Date().toISOString()
  }`,
);

function spec(podId: string, modelMB: number): PodSpec {
  const envs: [string, string][] = [["MODEL_MB", String(modelMB)]];
  if (weightsDir) envs.push(["WEIGHTS_FILE", `${weightsDir}/gpu-weights-${modelMB}.bin`]);
  return {
    podId,
    func: "bench/gpu/worker",
    funcVersion: 1,
    template: {
      image: "x",
      commands: ["python3", "src/samples/gpu/worker.py"],
      envs,
      mounts: [],
      port: 8000,
      probe: "/health",
      startupTimeoutS: 600,
    },
    cpuMillis: 4000,
    memMB: 32_000,
    gpus: [{ index: 0, vramMB: Math.min(device.totalMemMB - 4000, modelMB + BANDWIDTH_MB + 4000) }],
  };
}

const PROMPT = { prompt: "The GPU", max_tokens: 8 };

/** One completion: its time (ms) and its tokens. */
async function completion(endpoint: string): Promise<{ ms: number; text: string }> {
  const t0 = performance.now();
  const res = await fetch(`http://${endpoint}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(PROMPT),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`completion: ${res.status} ${JSON.stringify(body)}`);
  return { ms: performance.now() - t0, text: body.choices[0].text };
}

/** The GPU memory (MB) process `pid` holds, as nvidia-smi reports it; undefined when it cannot. */
async function gpuMemoryOf(pid: number): Promise<number | undefined> {
  try {
    const out = await new Deno.Command("nvidia-smi", {
      args: ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
      stderr: "null",
    }).output();
    for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
      const [p, mb] = line.split(",").map((s) => Number(s.trim()));
      if (p === pid) return mb;
    }
  } catch {
    // no nvidia-smi
  }
  return undefined;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f = (x: number, d = 1) => x.toFixed(d);

async function hostTier(modelMB: number): Promise<void> {
  const rt = new ProcessRuntime({ workDir: REPO, cuda });
  const podId = `bench-gpu-${modelMB}`;
  try {
    if (weightsDir) {
      // A first start makes the weights and writes them; the measured one loads them.
      const t = performance.now();
      await rt.start(spec(podId, modelMB));
      await rt.stop(podId);
      say(`  weights file of ${modelMB} MB written in ${f(performance.now() - t, 0)} ms`);
    }
    const t0 = performance.now();
    const pod = await rt.start(spec(podId, modelMB));
    const startMs = performance.now() - t0;
    const first = await completion(pod.endpoint);
    const freshMs = startMs + first.ms;
    const health = await (await fetch(`http://${pod.endpoint}/health`)).json();
    const bw = await (await fetch(`http://${pod.endpoint}/v1/bandwidth?mb=${BANDWIDTH_MB}`)).json();
    const pid = rt.pidOf(podId)!;
    const smiMB = await gpuMemoryOf(pid);
    const heldMB = smiMB ?? health.reserved_mb;
    const parks: number[] = [];
    const restores: number[] = [];
    const ttfts: number[] = [];
    /** The event loop's longest turn during each park and restore (the driver's calls run off it). */
    const stalls: number[] = [];
    let same = 0;
    for (let i = 0; i < rounds; i++) {
      const park = await measure(() => rt.park(podId, "host_memory")); // lock, checkpoint
      parks.push(park.ms);
      stalls.push(park.stallMs);
      const parkedMB = await gpuMemoryOf(pid);
      if (i === 0 && parkedMB !== undefined) say(`  GPU memory while parked: ${parkedMB} MB`);
      const resume = await measure(() => rt.resume(podId)); // restore, unlock
      const restoreMs = resume.ms;
      restores.push(restoreMs);
      stalls.push(resume.stallMs);
      const answer = await completion(pod.endpoint);
      ttfts.push(restoreMs + answer.ms);
      if (answer.text === first.text) same++;
    }
    const restoreMs = median(restores);
    const restoreGbps = heldMB / 1024 / (restoreMs / 1000);
    const parkGbps = heldMB / 1024 / (median(parks) / 1000);
    say(
      `model ${health.model_mb} MB (${weightsDir ? "loaded from a file" : "made"} in ${
        f(health.load_s, 2)
      } s); GPU memory held ${heldMB} MB (${
        smiMB !== undefined ? "nvidia-smi" : "allocator reserve"
      }); ${rounds} rounds, medians`,
    );
    say(
      `  copy bandwidth (${bw.mb} MB): host to device pinned ${f(bw.h2d_gbps, 2)} GB/s, pageable ${
        f(bw.h2d_pageable_gbps, 2)
      } GB/s; device to host ${f(bw.d2h_gbps, 2)} GB/s`,
    );
    say(
      `  park (lock + checkpoint):   ${f(median(parks))} ms = ${f(parkGbps, 2)} GB/s (all: ${
        parks.map((x) => f(x, 0)).join(", ")
      })`,
    );
    say(
      `  restore (restore + unlock): ${f(restoreMs)} ms = ${f(restoreGbps, 2)} GB/s (all: ${
        restores.map((x) => f(x, 0)).join(", ")
      })`,
    );
    say(
      `  the event loop's longest turn during a park or restore: ${
        f(Math.max(...stalls), 1)
      } ms (all: ${stalls.map((x) => f(x, 1)).join(", ")})`,
    );
    say(
      `  restore / pinned host-to-device: ${
        f(restoreGbps / bw.h2d_gbps, 3)
      } (goal >= 0.7); / pageable: ${f(restoreGbps / bw.h2d_pageable_gbps, 3)}`,
    );
    say(
      `  first answer: fresh ${f(freshMs, 0)} ms (weights ${
        weightsDir ? "loaded from a file in the page cache" : "made on the GPU"
      }; start ${f(startMs, 0)} + answer ${f(first.ms, 0)}), restored ${f(median(ttfts), 0)} ms: ${
        f(median(ttfts) / freshMs, 3)
      } of fresh`,
    );
    say(`  answers after restore equal to the first: ${same}/${rounds}`);
  } catch (err) {
    say(`model ${modelMB} MB: FAILED: ${(err as Error).message}`);
  } finally {
    await rt.stop(podId).catch(() => {});
  }
}

async function fileTier(modelMB: number, namespaced: boolean): Promise<void> {
  const cap = await criuCapability();
  if (!cap.available) return say(`file tier: not run: ${cap.reason}`);
  const podNetworks = namespaced ? new PodNetworks({ prefix: "ixbench" }) : undefined;
  const net = await podNetworks?.capability();
  if (net && !net.available) return say(`file tier: not run: no pod namespaces: ${net.reason}`);
  const snapshotDir = await Deno.makeTempDir({ prefix: "gpu-file-tier-" });
  const rt = new ProcessRuntime({
    workDir: REPO,
    cuda,
    criu: new Criu(locateCriu()!),
    podNetworks,
    snapshotDir,
  });
  const podId = "bench-gpu-file";
  say(
    `file tier (CRIU ${cap.version}, ${cap.path}), model ${modelMB} MB, ${
      namespaced ? "in pod namespaces" : "in the host's namespaces"
    }:`,
  );
  try {
    const pod = await rt.start(spec(podId, modelMB));
    const before = await completion(pod.endpoint);
    const t1 = performance.now();
    await rt.park(podId, "file");
    const parkMs = performance.now() - t1;
    const imageMB = Math.round((await dirBytes(`${snapshotDir}/${podId}`)) / 1048576);
    const t2 = performance.now();
    await rt.resume(podId);
    const resumeMs = performance.now() - t2;
    const after = await completion(pod.endpoint);
    say(
      `  park (GPU checkpoint + CRIU dump): ${f(parkMs, 0)} ms, image ${imageMB} MB on disk`,
    );
    say(
      `  resume (CRIU restore + GPU restore): ${f(resumeMs, 0)} ms; first answer ${
        f(resumeMs + after.ms, 0)
      } ms`,
    );
    say(`  answer after restore equal to the one before: ${after.text === before.text}`);
  } catch (err) {
    say(`  FAILED: ${(err as Error).message}`);
  } finally {
    await rt.stop(podId).catch(() => {});
    await Deno.remove(snapshotDir, { recursive: true }).catch(() => {});
  }
}

try {
  for (const mb of sizes) await hostTier(mb);
  if (fileMB > 0 && fileNetns !== "off") await fileTier(fileMB, true);
  if (fileMB > 0 && fileNetns !== "on") await fileTier(fileMB, false);
  if (Deno.args.includes("--record")) {
    const day = new Date().toISOString().slice(0, 10);
    await Deno.writeTextFile(
      new URL(`./results/gpu_restore-${day}.txt`, import.meta.url),
      lines.join("\n") + "\n",
    );
  }
} finally {
  cuda.close();
}
