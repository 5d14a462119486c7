import assert from "node:assert/strict";
import { encodeWeights, NgramModel, train } from "./model.ts";
import { CORPUS_PATH, DEFAULT_ORDER, WEIGHTS_PATH } from "./train.ts";

Deno.test("the shipped weights are what training the shipped corpus produces", async () => {
  const built = encodeWeights(train(await Deno.readTextFile(CORPUS_PATH), DEFAULT_ORDER));
  assert.deepEqual(built, await Deno.readFile(WEIGHTS_PATH));
});

Deno.test("NgramModel round-trips trained weights and continues a seen context greedily", () => {
  const m = new NgramModel(encodeWeights(train("abcabcabd", 3)));
  assert.equal(m.order, 3);
  assert.equal(m.vocabSize, 4);
  assert.equal([...m.generate("ab", { maxTokens: 4, temperature: 0 })].join(""), "cabc");
});

Deno.test("NgramModel sampling is reproducible with a seed and honours stop", () => {
  const m = new NgramModel(
    encodeWeights(train("the cat sat on the mat. the dog sat on the log.", 4)),
  );
  const a = [...m.generate("the ", { maxTokens: 30, temperature: 1, seed: 42 })].join("");
  const b = [...m.generate("the ", { maxTokens: 30, temperature: 1, seed: 42 })].join("");
  assert.equal(a, b);
  const stopped = [...m.generate("the ", { maxTokens: 100, temperature: 0, stop: ["on"] })]
    .join("");
  // The stop string ends the output and is not part of it, as in OpenAI's API.
  assert.equal(stopped, "cat ");
  const text = (stop: string[]) =>
    [...m.generate("the ", { maxTokens: 100, temperature: 0, stop })].join("");
  // Characters that begin a stop string but do not finish it are passed on.
  assert.equal(text(["cab"]), [...m.generate("the ", { maxTokens: 100, temperature: 0 })].join(""));
  assert.equal(text(["xyz", "t on"]), "ca");
  assert.equal(text([""]), text([]), "an empty stop string stops nothing");
});

Deno.test("NgramModel refuses files that are not weights, or truncated", () => {
  assert.throws(() => new NgramModel(new Uint8Array(16)), /not an IXNG file/);
  const good = encodeWeights(train("hello", 2));
  assert.throws(() => new NgramModel(good.slice(0, good.length - 3)), /truncated/);
});
