/**
 * The OpenAI-compatible routes with the official `openai` client: the
 * request's `model` names the function; streaming arrives unbuffered as
 * server-sent events.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startPlatform } from "./helpers.ts";

Deno.test({
  name: "the official OpenAI client lists models, completes, and streams chat through the gateway",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const p = await startPlatform({
      INFERX_SAMPLES: new URL("../../config/functions", import.meta.url).pathname,
    });
    try {
      const client = new OpenAI({ baseURL: `${p.url}/v1`, apiKey: "not-needed-for-public" });
      const models = await client.models.list();
      assert.ok(models.data.some((m) => m.id === "public/demo/ngram"), JSON.stringify(models.data));

      const completion = await client.completions.create({
        model: "public/demo/ngram",
        prompt: "The GPU",
        max_tokens: 8,
        temperature: 0,
      });
      assert.equal([...completion.choices[0].text].length, 8);
      assert.equal(completion.usage?.completion_tokens, 8);

      const stream = await client.chat.completions.create({
        model: "ngram",
        messages: [{ role: "user", content: "What is a cold start?" }],
        max_tokens: 12,
        stream: true,
      });
      let text = "";
      let chunks = 0;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? "";
        chunks++;
      }
      assert.equal([...text].length, 12);
      assert.ok(chunks >= 12, "one event per token, passed through as it came");

      await assert.rejects(
        client.completions.create({ model: "nope", prompt: "x" }),
        (err: unknown) =>
          err instanceof OpenAI.APIError && err.status === 404 &&
          /nope does not exist/.test(err.message),
      );
      await assert.rejects(
        client.completions.create({ model: "", prompt: "x" }),
        (err: unknown) => err instanceof OpenAI.APIError && err.status === 400,
      );
    } finally {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  },
});
