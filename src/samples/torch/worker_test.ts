import assert from "node:assert/strict";
import { freePort } from "../../common/net.ts";
import { generateTorchWeights, TORCH_COMMANDS, torchUnavailable } from "./mod.ts";
import { REPO_ROOT } from "../../common/config.ts";

const skip = torchUnavailable();
if (skip) console.log(`skipping the torch worker tests: ${skip}`);

const sha256 = async (path: string) =>
  Array.from(
    new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path))),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");

Deno.test({
  name: "The torch worker's weights are generated the same, byte for byte, every time",
  ignore: skip !== undefined,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await generateTorchWeights(`${dir}/a.pt`);
      await generateTorchWeights(`${dir}/b.pt`);
      assert.equal(await sha256(`${dir}/a.pt`), await sha256(`${dir}/b.pt`));
      assert.ok((await Deno.stat(`${dir}/a.pt`)).size > 40_000_000, "10.9 M float32 parameters");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "The torch worker loads its weights, answers /health, completes deterministically and counts what it served",
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const port = freePort();
    const proc = new Deno.Command(TORCH_COMMANDS[0], {
      args: TORCH_COMMANDS.slice(1),
      cwd: REPO_ROOT,
      env: { PORT: String(port), HOST: "127.0.0.1", TORCH_WEIGHTS: `${dir}/w.pt` },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const url = `http://127.0.0.1:${port}`;
    try {
      let health: Response | undefined;
      for (let i = 0; i < 600 && !health; i++) {
        health = await fetch(`${url}/health`).catch(() => undefined);
        if (!health) await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(await health!.json(), { status: "ok", model: "tiny-lm" });
      const complete = (body: unknown) =>
        fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify(body) });
      const a = await complete({ prompt: "The GPU", max_tokens: 3 });
      const b = await complete({ prompt: "The GPU", max_tokens: 3 });
      const [ja, jb] = [await a.json(), await b.json()];
      assert.equal(ja.choices[0].text, jb.choices[0].text, "greedy decoding of fixed weights");
      assert.equal(ja.usage.completion_tokens, 3);
      assert.deepEqual([a.headers.get("x-worker-requests"), b.headers.get("x-worker-requests")], [
        "1",
        "2",
      ]);
      const bad = await complete({ prompt: "x", max_tokens: 0 });
      assert.equal(bad.status, 400);
      assert.match((await bad.json()).error.message, /max_tokens must be an integer/);
      const missing = await fetch(`${url}/nope`);
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
    } finally {
      proc.kill("SIGTERM");
      const status = await proc.status;
      await proc.stdout.cancel();
      await proc.stderr.cancel();
      assert.equal(status.success, true, "SIGTERM shuts it down cleanly");
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "The torch worker that cannot write its weights says so in one line, not a traceback",
  ignore: skip !== undefined,
  async fn() {
    const out = await new Deno.Command(TORCH_COMMANDS[0], {
      args: TORCH_COMMANDS.slice(1),
      cwd: REPO_ROOT,
      env: { PORT: String(freePort()), HOST: "127.0.0.1", TORCH_WEIGHTS: "/proc/ixno/w.pt" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const said = new TextDecoder().decode(out.stderr);
    assert.equal(out.success, false);
    assert.match(
      said,
      /^cannot write the weights to \/proc\/ixno\/w\.pt \(.+\): make them once with `deno task torch-weights`, or set TORCH_WEIGHTS to a writable path\n$/,
    );
    assert.doesNotMatch(said, /Traceback/);
  },
});
