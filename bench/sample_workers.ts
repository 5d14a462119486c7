/**
 * The two sample workers as the cold start benchmarks register them: the
 * n-gram Deno server and the PyTorch transformer, each with the body of the
 * call they time.
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { TORCH_COMMANDS } from "../src/samples/torch/mod.ts";

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
