import assert from "node:assert/strict";
import { encodeWeights, NgramModel, train } from "./model.ts";
import { createModelHandler, MAX_ALL_CHOICES, MAX_BODY_BYTES, MAX_PROMPT_CHARS } from "./server.ts";

const model = new NgramModel(
  encodeWeights(train("the gpu waits. the gpu works. the gpu rests.", 5)),
);
const handle = createModelHandler(model, { modelName: "tiny" });
const post = (path: string, body: unknown) =>
  handle(
    new Request(`http://w${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: typeof body === "string" ? body : JSON.stringify(body),
    }),
  );

Deno.test("model server answers a completion with text and usage", async () => {
  const res = await post("/v1/completions", { prompt: "the g", max_tokens: 5, temperature: 0 });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.object, "text_completion");
  assert.equal(body.model, "tiny");
  assert.equal(body.choices[0].text, "pu wa");
  assert.equal(body.choices[0].finish_reason, "length");
  assert.deepEqual(body.usage, { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 });
});

Deno.test("model server answers a chat completion", async () => {
  const res = await post("/v1/chat/completions", {
    messages: [{ role: "user", content: "the gpu" }],
    max_tokens: 3,
    seed: 1,
  });
  const body = await res.json();
  assert.equal(body.object, "chat.completion");
  assert.equal(body.choices[0].message.role, "assistant");
  assert.equal([...body.choices[0].message.content].length, 3);
});

Deno.test("model server streams completions as server-sent events ending in [DONE]", async () => {
  const res = await post("/v1/completions", { prompt: "the", max_tokens: 4, stream: true });
  assert.equal(res.headers.get("content-type"), "text/event-stream");
  const events = (await res.text()).split("\n\n").filter(Boolean).map((e) => e.slice(6));
  assert.equal(events.at(-1), "[DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
  assert.equal(chunks.length, 5);
  assert.equal(chunks.slice(0, 4).map((c) => c.choices[0].text).join("").length, 4);
  assert.equal(chunks[4].choices[0].finish_reason, "length");
});

Deno.test("model server streams chat deltas, role first", async () => {
  const res = await post("/v1/chat/completions", {
    messages: [{ role: "user", content: "gpu" }],
    max_tokens: 2,
    stream: true,
  });
  const chunks = (await res.text()).split("\n\n").filter((e) => e && e !== "data: [DONE]")
    .map((e) => JSON.parse(e.slice(6)));
  assert.deepEqual(chunks[0].choices[0].delta, { role: "assistant", content: "" });
  assert.equal(chunks[0].object, "chat.completion.chunk");
  assert.equal(chunks.length, 4);
});

const bad: [string, string, unknown, RegExp, string | null][] = [
  ["malformed JSON", "/v1/completions", "{nope", /not valid JSON/, null],
  ["a missing prompt", "/v1/completions", { max_tokens: 2 }, /prompt/, "prompt"],
  [
    "max_tokens out of range",
    "/v1/completions",
    { prompt: "a", max_tokens: 0 },
    /^max_tokens/,
    "max_tokens",
  ],
  [
    "max_completion_tokens out of range, by its name",
    "/v1/chat/completions",
    { messages: [{ role: "user", content: "a" }], max_completion_tokens: 5000 },
    /^max_completion_tokens must be an integer from 1 to 4096/,
    "max_completion_tokens",
  ],
  [
    "a bad temperature",
    "/v1/completions",
    { prompt: "a", temperature: 5 },
    /temperature/,
    "temperature",
  ],
  ["empty messages", "/v1/chat/completions", { messages: [] }, /messages/, "messages"],
  ["n out of range", "/v1/completions", { prompt: "a", n: 0 }, /n must be an integer/, "n"],
  ["a seed that is not an integer", "/v1/completions", { prompt: "a", seed: 1.5 }, /seed/, "seed"],
  [
    "five stop strings",
    "/v1/completions",
    { prompt: "a", stop: ["a", "b", "c", "d", "e"] },
    /up to 4/,
    "stop",
  ],
  ["an empty stop string", "/v1/completions", { prompt: "a", stop: [""] }, /non-empty/, "stop"],
  [
    "more choices than it makes",
    "/v1/completions",
    { prompt: Array(MAX_ALL_CHOICES / 4 + 1).fill("a"), n: 4 },
    /17 prompts with n 4 make more than 64 choices/,
    "n",
  ],
  [
    "token ids for a prompt",
    "/v1/completions",
    { prompt: [1, 2] },
    /prompt must be a string or a non-empty array of strings/,
    "prompt",
  ],
  [
    "an image content part",
    "/v1/chat/completions",
    { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] },
    /only text parts/,
    "messages",
  ],
  [
    "stream_options without a stream",
    "/v1/completions",
    { prompt: "a", stream_options: { include_usage: true } },
    /only allowed when stream is true/,
    "stream_options",
  ],
  [
    "a stream that is not a boolean",
    "/v1/completions",
    { prompt: "a", stream: "yes" },
    /stream must be a boolean/,
    "stream",
  ],
];
// What the model cannot do is refused, naming the field, rather than answered as plain text.
const chatOf = (extra: Record<string, unknown>) => ({
  messages: [{ role: "user", content: "a" }],
  ...extra,
});
for (
  const [field, value, path] of [
    ["tools", [{ type: "function", function: { name: "f", parameters: {} } }], "chat"],
    ["tool_choice", "required", "chat"],
    ["functions", [{ name: "f", parameters: {} }], "chat"],
    ["function_call", "auto", "chat"],
    ["response_format", { type: "json_object" }, "chat"],
    ["logprobs", true, "chat"],
    ["top_logprobs", 2, "chat"],
    ["logprobs", 2, "completions"],
    ["logprobs", 0, "completions"], // the sampled tokens' own
    ["logit_bias", { "50256": -100 }, "chat"],
    ["logit_bias", { "50256": -100 }, "completions"],
    ["logit_bias", [], "chat"], // not a map of biases: as the torch sample refuses it
    ["echo", true, "completions"],
    ["suffix", "x", "completions"],
    ["best_of", 3, "completions"],
  ] as const
) {
  bad.push([
    `${field} ${JSON.stringify(value)}`,
    `/v1/${path === "chat" ? "chat/completions" : "completions"}`,
    path === "chat" ? chatOf({ [field]: value }) : { prompt: "a", [field]: value },
    new RegExp(`^${field} is not supported: this model`),
    field,
  ]);
}
for (const [title, path, body, re, param] of bad) {
  Deno.test(`model server refuses ${title} with 400`, async () => {
    const res = await post(path, body);
    assert.equal(res.status, 400);
    const { error } = await res.json();
    assert.match(error.message, re);
    assert.equal(error.type, "invalid_request_error");
    assert.equal(error.param, param);
  });
}

Deno.test("model server takes the fields asking for nothing it cannot do, and ignores the rest", async () => {
  const res = await post(
    "/v1/chat/completions",
    chatOf({
      tools: [],
      tool_choice: "none",
      response_format: { type: "text" },
      logprobs: false,
      top_logprobs: 0,
      logit_bias: {},
      user: "u",
      top_p: 0.5,
      presence_penalty: 1,
      max_tokens: 2,
    }),
  );
  assert.equal(res.status, 200);
  assert.equal([...(await res.json()).choices[0].message.content].length, 2);
  const completion = await post("/v1/completions", {
    prompt: "a",
    echo: false,
    suffix: "",
    best_of: 1,
    max_tokens: 2,
  });
  assert.equal(completion.status, 200);
  await completion.body?.cancel();
});

Deno.test("model server answers with its own model's name, whatever the call named", async () => {
  // As OpenAI's API answers with the model that served (a dated snapshot of the one named): here
  // the worker's MODEL_NAME, which tells a canary's versions apart.
  for (const asked of ["public/demo/ngram", undefined]) {
    const res = await post("/v1/completions", { prompt: "a", max_tokens: 2, model: asked });
    assert.equal((await res.json()).model, "tiny");
    const streamed = await post("/v1/chat/completions", {
      ...chatOf({ model: asked }),
      max_tokens: 2,
      stream: true,
    });
    const text = await streamed.text();
    for (const line of text.split("\n").filter((l) => l.startsWith("data: {"))) {
      assert.equal(JSON.parse(line.slice(6)).model, "tiny");
    }
  }
});

Deno.test("model server takes its restore hook (new seeds from the system) and samples on", async () => {
  const hook = await handle(new Request("http://w/restored", { method: "POST" }));
  assert.equal(hook.status, 204);
  const res = await post("/v1/completions", { prompt: "the g", max_tokens: 8, temperature: 1 });
  assert.equal(res.status, 200);
  assert.equal([...(await res.json()).choices[0].text].length, 8);
});

Deno.test("model server answers /health and 404 for unknown routes", async () => {
  assert.equal((await handle(new Request("http://w/health"))).status, 200);
  const res = await handle(new Request("http://w/nope"));
  assert.equal(res.status, 404);
  assert.deepEqual(await res.json(), {
    error: {
      message: "Invalid URL (GET /nope)",
      type: "invalid_request_error",
      param: null,
      code: null,
    },
  });
});

Deno.test("model server makes n completions, each its own choice, usage over all", async () => {
  const res = await post("/v1/completions", { prompt: "the", max_tokens: 3, n: 3, seed: 7 });
  const body = await res.json();
  assert.deepEqual(body.choices.map((c: { index: number }) => c.index), [0, 1, 2]);
  for (const c of body.choices) assert.equal([...c.text].length, 3);
  assert.deepEqual(body.usage, { prompt_tokens: 3, completion_tokens: 9, total_tokens: 12 });
  // Streamed: each choice's events name its index, and each ends with its finish reason.
  const streamed = await post("/v1/chat/completions", {
    messages: [{ role: "user", content: "gpu" }],
    max_tokens: 2,
    n: 2,
    stream: true,
  });
  const chunks = (await streamed.text()).split("\n\n").filter((e) => e && e !== "data: [DONE]")
    .map((e) => JSON.parse(e.slice(6)));
  const text = (i: number) =>
    chunks.filter((c) => c.choices[0].index === i).map((c) => c.choices[0].delta.content ?? "")
      .join("");
  assert.equal([...text(0)].length, 2);
  assert.equal([...text(1)].length, 2);
  assert.equal(chunks.filter((c) => c.choices[0].finish_reason === "length").length, 2);
});

Deno.test("model server ends a stream with its usage when stream_options.include_usage asks", async () => {
  const res = await post("/v1/chat/completions", {
    messages: [{ role: "user", content: "gpu" }],
    max_tokens: 3,
    stream: true,
    stream_options: { include_usage: true },
  });
  const events = (await res.text()).split("\n\n").filter(Boolean).map((e) => e.slice(6));
  assert.equal(events.at(-1), "[DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.deepEqual(last.usage, { prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 });
  assert.ok(chunks.slice(0, -1).every((c) => c.usage === null), "the others carry usage: null");
  // Without it, no usage event.
  const plain = await post("/v1/completions", { prompt: "the", max_tokens: 2, stream: true });
  assert.doesNotMatch(await plain.text(), /usage/);
});

Deno.test("model server takes chat content as text parts or null, as current clients send it", async () => {
  const res = await post("/v1/chat/completions", {
    messages: [
      { role: "user", content: [{ type: "text", text: "the " }, { type: "text", text: "gpu" }] },
      { role: "assistant", content: null, tool_calls: [] },
    ],
    max_tokens: 2,
  });
  assert.equal(res.status, 200);
  // "the gpu" and an empty assistant message, each ending in a newline: 9 characters.
  assert.equal((await res.json()).usage.prompt_tokens, 9);
});

Deno.test("model server refuses a prompt past its context length, and reads a long one by its end", async () => {
  // Characters, not UTF-16 units: an emoji is one.
  const at = "x".repeat(MAX_PROMPT_CHARS - 7) + "the g😀";
  const ok = await post("/v1/completions", { prompt: at, max_tokens: 3, temperature: 0 });
  assert.equal(ok.status, 200);
  const body = await ok.json();
  assert.equal(body.usage.prompt_tokens, MAX_PROMPT_CHARS - 1);
  // Only the prompt's last characters are its context: the same as for them alone.
  const tail = await (await post("/v1/completions", {
    prompt: "the g😀",
    max_tokens: 3,
    temperature: 0,
  })).json();
  assert.equal(body.choices[0].text, tail.choices[0].text);
  // Before, a 15 MB prompt took a 256 MB worker past its memory limit (as characters in arrays).
  const over = await post("/v1/completions", { prompt: "y".repeat(MAX_PROMPT_CHARS + 1) });
  assert.equal(over.status, 400);
  assert.deepEqual((await over.json()).error, {
    message:
      `This model's maximum context length is ${MAX_PROMPT_CHARS} characters; the prompt has ${
        MAX_PROMPT_CHARS + 1
      }`,
    type: "invalid_request_error",
    param: "prompt",
    code: "context_length_exceeded",
  });
});

Deno.test("model server refuses a body past MAX_BODY_BYTES before it parses it, sized or streamed", async () => {
  const big = JSON.stringify({ prompt: "z".repeat(MAX_BODY_BYTES) });
  const sized = await post("/v1/completions", big);
  const streamed = await handle(
    new Request("http://w/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: new Blob([big]).stream(),
    }),
  );
  for (const res of [sized, streamed]) {
    assert.equal(res.status, 413);
    assert.equal((await res.json()).error.code, "request_too_large");
  }
});

Deno.test("model server takes null for every optional field, as OpenAI's API does", async () => {
  const res = await post("/v1/completions", {
    prompt: "the",
    max_tokens: null,
    temperature: null,
    seed: null,
    stop: null,
    n: null,
    stream: null,
    stream_options: null,
  });
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal((await res.json()).choices.length, 1);
});

Deno.test("model server answers each prompt of an array with its own n choices, numbered in turn", async () => {
  const one = async (prompt: string) =>
    (await (await post("/v1/completions", { prompt, max_tokens: 4, temperature: 0 })).json())
      .choices[0].text;
  const res = await post("/v1/completions", {
    prompt: ["the g", "gpu r"],
    max_tokens: 4,
    temperature: 0,
    n: 2,
  });
  const body = await res.json();
  assert.deepEqual(body.choices.map((c: { index: number }) => c.index), [0, 1, 2, 3]);
  // Greedy: choices 0 and 1 are the first prompt's, 2 and 3 the second's, each as if alone.
  const [a, b] = [await one("the g"), await one("gpu r")];
  assert.notEqual(a, b);
  assert.deepEqual(body.choices.map((c: { text: string }) => c.text), [a, a, b, b]);
  // Each prompt counted once.
  assert.deepEqual(body.usage, { prompt_tokens: 10, completion_tokens: 16, total_tokens: 26 });
});
