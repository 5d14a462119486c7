/**
 * Builds the sample model's weights from its corpus:
 * `deno task train [corpus.txt] [weights.bin] [order]`.
 *
 * @module
 */
import { encodeWeights, train } from "./model.ts";

/** Default order of the shipped model. */
export const DEFAULT_ORDER = 7;

/** Paths of the shipped corpus and weights. */
export const CORPUS_PATH = new URL("./corpus.txt", import.meta.url).pathname;
export const WEIGHTS_PATH = new URL("./weights.bin", import.meta.url).pathname;

if (import.meta.main) {
  const [corpus = CORPUS_PATH, out = WEIGHTS_PATH, order = String(DEFAULT_ORDER)] = Deno.args;
  const text = await Deno.readTextFile(corpus);
  const bytes = encodeWeights(train(text, Number(order)));
  await Deno.writeFile(out, bytes);
  console.log(`wrote ${out}: ${bytes.byteLength} bytes, order ${order}`);
}
