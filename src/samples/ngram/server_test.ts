import assert from "node:assert/strict";
import { encodeWeights, NgramModel, train } from "./model.ts";
import { createModelHandler } from "./server.ts";

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

const bad: [string, string, unknown, RegExp][] = [
  ["malformed JSON", "/v1/completions", "{nope", /not valid JSON/],
  ["a missing prompt", "/v1/completions", { max_tokens: 2 }, /prompt/],
  ["max_tokens out of range", "/v1/completions", { prompt: "a", max_tokens: 0 }, /max_tokens/],
  ["a bad temperature", "/v1/completions", { prompt: "a", temperature: 5 }, /temperature/],
  ["empty messages", "/v1/chat/completions", { messages: [] }, /messages/],
];
for (const [title, path, body, re] of bad) {
  Deno.test(`model server refuses ${title} with 400`, async () => {
    const res = await post(path, body);
    assert.equal(res.status, 400);
    assert.match((await res.json()).error.message, re);
  });
}

Deno.test("model server answers /health and 404 for unknown routes", async () => {
  assert.equal((await handle(new Request("http://w/health"))).status, 200);
  const res = await handle(new Request("http://w/nope"));
  assert.equal(res.status, 404);
  await res.body?.cancel();
});
