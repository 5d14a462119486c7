/**
 * The PyTorch sample worker (`worker.py`): a byte-level transformer language
 * model on Debian's `python3-torch` (CPU) that loads its weights from a file
 * and serves `/v1/completions` and `/health`. Its fresh start takes seconds
 * (importing torch, building the network, loading the weights), which is what
 * a snapshot restore saves.
 *
 * @module
 */
import { REPO_ROOT } from "../../common/config.ts";

/** Debian's Python, the one `python3-torch` installs into. */
export const TORCH_PYTHON = "/usr/bin/python3";

/** The worker's start command, relative to the repository root. */
export const TORCH_COMMANDS = [TORCH_PYTHON, "src/samples/torch/worker.py"];

/** Where the worker looks for its weights by default. */
export const TORCH_WEIGHTS = `${REPO_ROOT}/src/samples/torch/weights.pt`;

/** Why the torch worker cannot run here, or undefined when it can. */
export function torchUnavailable(): string | undefined {
  try {
    const out = new Deno.Command(TORCH_PYTHON, {
      args: ["-c", "import torch"],
      stdout: "null",
      stderr: "piped",
    }).outputSync();
    if (out.success) return undefined;
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").pop();
    return `${TORCH_PYTHON} cannot import torch (apt-get install python3-torch): ${err}`;
  } catch (err) {
    return `Cannot run ${TORCH_PYTHON}: ${(err as Error).message}`;
  }
}

/** Writes the worker's weights (deterministic: the same bytes every time) to `path`. */
export async function generateTorchWeights(path = TORCH_WEIGHTS): Promise<void> {
  const out = await new Deno.Command(TORCH_PYTHON, {
    args: [`${REPO_ROOT}/src/samples/torch/worker.py`, "--generate", path],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`Cannot generate the torch weights: ${new TextDecoder().decode(out.stderr)}`);
  }
}

if (import.meta.main) {
  await generateTorchWeights(Deno.args[0]);
  console.log(`Weights written to ${Deno.args[0] ?? TORCH_WEIGHTS}`);
}
