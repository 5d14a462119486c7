import assert from "node:assert/strict";
import OpenAI from "openai";
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
      // A file there is kept, never replaced: workers map it.
      const before = await Deno.stat(`${dir}/a.pt`);
      await generateTorchWeights(`${dir}/a.pt`);
      assert.equal((await Deno.stat(`${dir}/a.pt`)).ino, before.ino);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["a.pt", "b.pt"]);
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
      // Its weights are the file's own pages, mapped read-only and shared, not a copy.
      const maps = (await Deno.readTextFile(`/proc/${proc.pid}/maps`)).split("\n");
      const mapped = maps.filter((l) => l.endsWith(`${dir}/w.pt`));
      assert.equal(mapped.length, 1, maps.join("\n"));
      assert.match(mapped[0], / r--s /);
      // And no descriptor of it kept open, so that CRIU records the mapping by path.
      for (const fd of Deno.readDirSync(`/proc/${proc.pid}/fd`)) {
        const target = await Deno.readLink(`/proc/${proc.pid}/fd/${fd.name}`).catch(() => "");
        assert.notEqual(target, `${dir}/w.pt`, `fd ${fd.name}`);
      }
      const bad = await complete({ prompt: "x", max_tokens: 0 });
      assert.equal(bad.status, 400);
      assert.match((await bad.json()).error.message, /max_tokens must be an integer/);
      const missing = await fetch(`${url}/nope`);
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
      await speaksOpenai(url);
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

/** Runs `code` in Python with the worker's module as `w`; what it printed. */
async function withWorker(code: string): Promise<string> {
  const script = `import importlib.util, sys
sys.argv = ["worker"]
spec = importlib.util.spec_from_file_location("w", "${REPO_ROOT}/src/samples/torch/worker.py")
w = importlib.util.module_from_spec(spec)
spec.loader.exec_module(w)
import torch
${code}`;
  const out = await new Deno.Command(TORCH_COMMANDS[0], { args: ["-c", script] }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return text.trim();
}

Deno.test({
  name:
    "The torch worker's mapped weights are the saved ones, and weights that do not fit its model are refused",
  ignore: skip !== undefined,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await generateTorchWeights(`${dir}/w.pt`);
      const same = await withWorker(`
mapped = w.load_model("${dir}/w.pt")
copied = w.TinyLM()
copied.load_state_dict(torch.load("${dir}/w.pt", map_location="cpu"))
copied.eval()
ids = torch.tensor([[ord(c) for c in "The GPU"]])
with torch.no_grad():
    print(torch.equal(mapped(ids), copied(ids)), w.complete(mapped, "The GPU", 8) == w.complete(copied, "The GPU", 8))`);
      assert.equal(same, "True True");
      const refused = await withWorker(`
small = w.TinyLM(d=192, heads=6, layers=6, ff=768)
torch.save(small.state_dict(), "${dir}/small.pt")
fewer = w.TinyLM(layers=5)
torch.save(fewer.state_dict(), "${dir}/fewer.pt")
torch.save(w.TinyLM().double().state_dict(), "${dir}/double.pt")
for path in ("${dir}/small.pt", "${dir}/fewer.pt", "${dir}/double.pt"):
    try:
        w.place_weights(w.TinyLM(), w.mapped_state(path))
        print("placed")
    except ValueError as err:
        print(err)`);
      const [small, fewer, double] = refused.split("\n");
      assert.match(
        small,
        /weights do not fit the model: tok\.weight is \(256, 192\) torch\.float32, the model's \(256, 384\) torch\.float32/,
      );
      assert.match(
        double,
        /tok\.weight is \(256, 384\) torch\.float64, the model's \(256, 384\) torch\.float32/,
      );
      assert.match(fewer, /weights do not fit the model: missing \['body\.layers\.5\./);
    } finally {
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

/** What OpenAI's own client gets from the worker at `url`: the routes a user reaches through /v1. */
async function speaksOpenai(url: string) {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ["tiny-lm"]);
  // Greedy by default: the same text every time, usage in bytes.
  const one = await client.completions.create({
    model: "tiny-lm",
    prompt: "The GPU",
    max_tokens: 6,
  });
  const text = one.choices[0].text;
  assert.deepEqual(one.usage, { prompt_tokens: 7, completion_tokens: 6, total_tokens: 13 });
  assert.equal(one.choices[0].finish_reason, "length");
  // A list of prompts: each its own n choices, numbered in turn; null fields are absent ones.
  const many = await client.completions.create({
    model: "tiny-lm",
    prompt: ["The GPU", "A cold"],
    max_tokens: 6,
    n: 2,
    seed: null,
    stop: null,
  });
  assert.deepEqual(many.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.deepEqual(many.choices.slice(0, 2).map((c) => c.text), [text, text]);
  assert.equal(many.usage?.prompt_tokens, 13);
  // A stop string ends the text before it.
  const cut = [...text].find((ch, i) => i > 0 && ch !== text[0]);
  if (cut !== undefined) {
    const stopped = await client.completions.create({
      model: "tiny-lm",
      prompt: "The GPU",
      max_tokens: 6,
      stop: cut,
    });
    assert.equal(stopped.choices[0].text, text.slice(0, text.indexOf(cut)));
    assert.equal(stopped.choices[0].finish_reason, "stop");
  }
  // Sampled with a seed: the same seed, the same text.
  const sampled = () =>
    client.chat.completions.create({
      model: "tiny-lm",
      messages: [{ role: "user", content: [{ type: "text", text: "hi" }] }],
      max_tokens: 5,
      temperature: 1,
      seed: 11,
    });
  const [a, b] = [await sampled(), await sampled()];
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.equal(a.object, "chat.completion");
  // Streamed chat, usage last: the pieces are the text whole.
  const stream = await client.chat.completions.create({
    model: "tiny-lm",
    messages: [{ role: "user", content: "The GPU" }],
    max_tokens: 6,
    n: 2,
    stream: true,
    stream_options: { include_usage: true },
  });
  const pieces = ["", ""];
  let usage;
  const finished: (string | null)[] = [];
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      pieces[c.index] += c.delta.content ?? "";
      if (c.finish_reason) finished.push(c.finish_reason);
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.deepEqual(finished, ["length", "length"]);
  assert.equal(pieces[0], pieces[1], "greedy: both choices alike");
  assert.ok(pieces[0].length > 0);
  assert.equal(usage?.completion_tokens, 12);
  // OpenAI's error shape, which the client turns into its error classes.
  const err = await client.completions.create({ model: "tiny-lm", prompt: 5 as never }).then(
    () => assert.fail("answered"),
    (e) => e,
  );
  assert.ok(err instanceof OpenAI.BadRequestError);
  assert.equal(err.param, "prompt");
  // A seed torch cannot take is refused, not the connection dropped; a large one works.
  const big = await client.completions.create({
    model: "tiny-lm",
    prompt: "x",
    max_tokens: 1,
    temperature: 1,
    n: 2,
    seed: Number.MAX_SAFE_INTEGER,
  });
  assert.equal(big.choices.length, 2);
  const over = await client.completions.create({
    model: "tiny-lm",
    prompt: "x",
    max_tokens: 1,
    temperature: 1,
    seed: 2 ** 64,
  }).then(() => assert.fail("answered"), (e) => e);
  assert.ok(over instanceof OpenAI.BadRequestError);
  assert.equal(over.param, "seed");
  // What the model cannot do is refused, naming the field, as the n-gram server refuses it.
  for (
    const extra of [
      { tools: [{ type: "function" as const, function: { name: "f", parameters: {} } }] },
      { response_format: { type: "json_object" as const } },
      { logprobs: true },
      { logit_bias: { "50256": -100 } },
      { stream_options: { include_usage: true } }, // without a stream
    ]
  ) {
    const refused = await client.chat.completions.create({
      model: "tiny-lm",
      messages: [{ role: "user", content: "x" }],
      max_tokens: 1,
      ...extra,
    }).then(() => assert.fail(`answered ${JSON.stringify(extra)}`), (e) => e);
    assert.ok(refused instanceof OpenAI.BadRequestError);
    assert.equal(refused.param, Object.keys(extra)[0]);
  }
  // A completion's logprobs, 0 too, asks for the sampled tokens' own.
  const zero = await client.completions.create({
    model: "tiny-lm",
    prompt: "x",
    max_tokens: 1,
    logprobs: 0,
  }).then(() => assert.fail("answered logprobs 0"), (e) => e);
  assert.ok(zero instanceof OpenAI.BadRequestError);
  assert.equal(zero.param, "logprobs");
  // The model that answered, whatever the call named (as OpenAI's API names its snapshot).
  const named = await client.completions.create({
    model: "public/demo/torch",
    prompt: "x",
    max_tokens: 1,
  });
  assert.equal(named.model, "tiny-lm");
  const lost = await fetch(`${url}/v1/nope`, { method: "POST", body: "{}" });
  assert.equal(lost.status, 404);
  assert.deepEqual((await lost.json()).error, {
    message: "Invalid URL (POST /v1/nope)",
    type: "invalid_request_error",
    param: null,
    code: null,
  });
}
