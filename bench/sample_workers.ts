/**
 * The two sample workers as the cold start benchmarks register them (the
 * n-gram Deno server and the PyTorch transformer, each with the body of the
 * call they time), and how those benchmarks call them in tenant `bench`,
 * namespace `lab`.
 */
import { eventually, type Json, request } from "../tests/e2e/helpers.ts";
import { criuCapability } from "../src/nodeagent/criu.ts";
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import {
  generateTorchWeights,
  TORCH_COMMANDS,
  torchUnavailable,
} from "../src/samples/torch/mod.ts";

export interface Worker {
  name: string;
  spec: Record<string, unknown>;
  body: Record<string, unknown>;
}

export const WORKERS: Worker[] = [
  {
    name: "ngram",
    spec: {
      image: "inferx/ngram:latest",
      commands: NGRAM_COMMANDS,
      endpoint: { port: 8000, probe: "/health" },
      resources: { CPU: 250, Mem: 128 },
      sample_query: { path: "v1/completions", body: { prompt: "The GPU", max_tokens: 8 } },
    },
    body: { prompt: "The GPU", max_tokens: 8 },
  },
  {
    name: "torch",
    spec: {
      image: "inferx/torch:latest",
      commands: TORCH_COMMANDS,
      envs: [["TORCH_THREADS", "1"]],
      endpoint: { port: 8000, probe: "/health" },
      resources: { CPU: 250, Mem: 1024 },
      startup_timeout: 120,
      sample_query: { path: "v1/completions", body: { prompt: "The GPU", max_tokens: 1 } },
    },
    body: { prompt: "The GPU", max_tokens: 1 },
  },
];

/**
 * The workers of `names` that can run here, their weights made; `skipped`
 * hears why one cannot.
 */
export async function runnableWorkers(
  names: string[],
  skipped: (why: string) => void,
): Promise<Worker[]> {
  const out = WORKERS.filter((w) => names.includes(w.name));
  const noTorch = torchUnavailable();
  if (noTorch && out.some((w) => w.name === "torch")) {
    out.splice(out.findIndex((w) => w.name === "torch"), 1);
    skipped(`torch: skipped, ${noTorch}`);
  }
  if (out.some((w) => w.name === "torch")) await generateTorchWeights();
  return out;
}

/**
 * Function `name` of `w` in `bench/lab` for cold starts: one pod at most,
 * none parked, back at zero 0.2 s after its last call.
 */
export function coldFunction(w: Worker, name: string) {
  return {
    type: "function",
    tenant: "bench",
    namespace: "lab",
    name,
    object: {
      spec: {
        ...w.spec,
        policy: {
          Obj: { parallel: 1, max_replica: 1, scalein_timeout: 0.2, standby_per_node: 0 },
        },
      },
    },
  };
}

/** Calls `bench/lab/{func}`'s completions; its time to the whole answer and what the gateway said. */
export async function callSample(url: string, func: string, body: unknown) {
  const t0 = performance.now();
  const res = await fetch(`${url}/funccall/bench/lab/${func}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const client = performance.now() - t0;
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${func}: HTTP ${res.status} ${text}`);
  return {
    client,
    gateway: Number(res.headers.get("x-inferx-ttfb-ms")),
    cold: res.headers.get("x-inferx-cold-start") === "1",
    resumed: res.headers.get("x-inferx-resumed") === "1",
    pod: res.headers.get("x-inferx-pod") ?? "",
  };
}

/** A function's pods; none once it is deleted and its last pod gone (404). */
export async function podsOf(url: string, func: string): Promise<Json[]> {
  const res = await request(`${url}/pods/bench/lab/${func}`);
  if (res.status === 404) return [];
  if (res.status !== 200) {
    throw new Error(`pods of ${func}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  }
  return res.body;
}

/** The median of times (the upper one of an even count). */
export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Times in ms, one decimal each, for a bench's raw rows. */
export const msList = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(" ");

/** How a cold start begins: a fresh start, or a restore from a snapshot. */
export type ColdKind = "fresh" | "snapshot";

/** The kinds of cold start this node can make: restores where CRIU works (`skipped` hears why not). */
export async function coldKinds(skipped: (why: string) => void): Promise<ColdKind[]> {
  const criu = await criuCapability();
  if (criu.available) return ["fresh", "snapshot"];
  skipped(`restores: skipped, ${criu.reason}`);
  return ["fresh"];
}

/** Waits until `bench/lab/{func}` has no pod (back at zero after its last call). */
export async function atZero(url: string, func: string): Promise<void> {
  await eventually(`${func} at zero`, async () => (await podsOf(url, func)).length === 0, 60_000);
}

/**
 * Calls `bench/lab/{func}`, which must start a pod of `kind` for it (at
 * zero before): its time to the whole answer, as its client saw it.
 */
export async function coldCall(
  url: string,
  func: string,
  body: unknown,
  kind: ColdKind,
): Promise<number> {
  const r = await callSample(url, func, body);
  const pod = (await podsOf(url, func)).find((q) => q.id === r.pod);
  if (!r.cold || pod?.startedFrom !== kind) {
    const was = { cold: r.cold, pod: r.pod, startedFrom: pod?.startedFrom, note: pod?.note };
    throw new Error(`${func}: not a ${kind} start: ${JSON.stringify(was)}`);
  }
  return r.client;
}
