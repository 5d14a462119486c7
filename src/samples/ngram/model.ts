/**
 * A character-level n-gram language model with backoff: training from text,
 * a compact binary weights format, and seeded sampling. The sample function's
 * model server loads it at start-up.
 *
 * @module
 */

import { rng } from "../../common/random.ts";

const MAGIC = 0x474e5849; // "IXNG" little-endian
const FORMAT_VERSION = 1;

/** Trained counts: for each context (0..order-1 symbols) the next-symbol counts. */
export interface NgramWeights {
  order: number;
  /** Symbol index to Unicode code point. */
  vocab: number[];
  /** Context (as a string of symbols) to [symbol, count] pairs, by symbol. */
  table: Map<string, [number, number][]>;
}

/** Counts every context of length 0..order-1 in `text`. */
export function train(text: string, order: number): NgramWeights {
  const chars = [...text.normalize("NFC")];
  const vocab = [...new Set(chars.map((c) => c.codePointAt(0)!))].sort((a, b) => a - b);
  const counts = new Map<string, Map<number, number>>();
  const index = new Map(vocab.map((cp, i) => [cp, i]));
  for (let i = 0; i < chars.length; i++) {
    const sym = index.get(chars[i].codePointAt(0)!)!;
    for (let k = 0; k < order && k <= i; k++) {
      const ctx = chars.slice(i - k, i).join("");
      let m = counts.get(ctx);
      if (!m) counts.set(ctx, m = new Map());
      m.set(sym, (m.get(sym) ?? 0) + 1);
    }
  }
  const table = new Map<string, [number, number][]>();
  for (const ctx of [...counts.keys()].sort()) {
    table.set(ctx, [...counts.get(ctx)!.entries()].sort((a, b) => a[0] - b[0]));
  }
  return { order, vocab, table };
}

/** Serialises weights to the binary format (little-endian). */
export function encodeWeights(w: NgramWeights): Uint8Array {
  const symbolOf = new Map(w.vocab.map((cp, i) => [String.fromCodePoint(cp), i]));
  let size = 16 + 4 * w.vocab.length + 4;
  for (const [ctx, next] of w.table) size += 1 + 2 * [...ctx].length + 2 + 6 * next.length;
  const buf = new Uint8Array(size);
  const dv = new DataView(buf.buffer);
  let o = 0;
  const u8 = (v: number) => (dv.setUint8(o, v), o += 1);
  const u16 = (v: number) => (dv.setUint16(o, v, true), o += 2);
  const u32 = (v: number) => (dv.setUint32(o, v, true), o += 4);
  u32(MAGIC);
  u32(FORMAT_VERSION);
  u32(w.order);
  u32(w.vocab.length);
  for (const cp of w.vocab) u32(cp);
  u32(w.table.size);
  for (const [ctx, next] of w.table) {
    const syms = [...ctx];
    u8(syms.length);
    for (const c of syms) u16(symbolOf.get(c)!);
    u16(next.length);
    for (const [sym, count] of next) (u16(sym), u32(count));
  }
  return buf;
}

/** A loaded model, ready to sample. */
/** The length of the longest end of `out` that begins one of `stops` (and is not all of it). */
function stopPrefixAtEnd(out: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, out.length); k > best; k--) {
      if (out.endsWith(s.slice(0, k))) {
        best = k;
        break;
      }
    }
  }
  return best;
}

export class NgramModel {
  readonly order: number;
  readonly vocabSize: number;
  readonly contexts: number;
  #chars: string[];
  #table = new Map<string, { syms: Uint16Array; cum: Uint32Array }>();

  /** Parses the binary weights; throws with a clear message on a bad file. */
  constructor(bytes: Uint8Array) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let o = 0;
    const need = (n: number) => {
      if (o + n > bytes.byteLength) {
        throw new Error("Cannot load n-gram weights: file is truncated");
      }
    };
    const u8 = () => (need(1), o += 1, dv.getUint8(o - 1));
    const u16 = () => (need(2), o += 2, dv.getUint16(o - 2, true));
    const u32 = () => (need(4), o += 4, dv.getUint32(o - 4, true));
    if (u32() !== MAGIC) throw new Error("Cannot load n-gram weights: not an IXNG file");
    const version = u32();
    if (version !== FORMAT_VERSION) {
      throw new Error(`Cannot load n-gram weights: format version ${version} is not supported`);
    }
    this.order = u32();
    this.vocabSize = u32();
    this.#chars = [];
    for (let i = 0; i < this.vocabSize; i++) this.#chars.push(String.fromCodePoint(u32()));
    this.contexts = u32();
    for (let c = 0; c < this.contexts; c++) {
      const len = u8();
      let ctx = "";
      for (let k = 0; k < len; k++) ctx += this.#chars[u16()];
      const n = u16();
      const syms = new Uint16Array(n);
      const cum = new Uint32Array(n);
      let total = 0;
      for (let j = 0; j < n; j++) {
        syms[j] = u16();
        total += u32();
        cum[j] = total;
      }
      this.#table.set(ctx, { syms, cum });
    }
    if (o !== bytes.byteLength) throw new Error("Cannot load n-gram weights: trailing bytes");
  }

  /** Loads a weights file. */
  static async load(path: string): Promise<NgramModel> {
    return new NgramModel(await Deno.readFile(path));
  }

  /**
   * Generates up to `maxTokens` characters after `prompt`, one at a time.
   * Uses the longest context seen in training (backoff); temperature 0 is
   * greedy. Stops early when the output ends with one of `stop`, which is
   * not part of the output (as OpenAI's API does it): characters that may
   * begin one are held back until they turn out not to.
   */
  *generate(prompt: string, options: GenerateOptions): Generator<string> {
    const rand = rng(options.seed ?? (Math.random() * 2 ** 32) >>> 0);
    const stops = options.stop?.filter((s) => s) ?? [];
    // The context is the prompt's last characters: only its end is normalized and split (a
    // whole prompt split into characters takes tens of bytes a character).
    let history = [...prompt.slice(-4 * this.order).normalize("NFC")].slice(-(this.order - 1));
    let out = "";
    const held: string[] = [];
    for (let i = 0; i < options.maxTokens; i++) {
      const ch = this.#next(history, options.temperature, rand);
      history.push(ch);
      if (history.length > this.order - 1) history = history.slice(1);
      if (!stops.length) {
        yield ch;
        continue;
      }
      out += ch;
      held.push(ch);
      if (stops.some((s) => out.endsWith(s))) return;
      // What the output's end may still begin of a stop string stays held.
      const keep = stopPrefixAtEnd(out, stops);
      let n = held.join("").length - keep;
      while (held.length && n >= held[0].length) {
        n -= held[0].length;
        yield held.shift()!;
      }
    }
    yield* held;
  }

  #next(history: string[], temperature: number, rand: () => number): string {
    for (let k = Math.min(history.length, this.order - 1); k >= 0; k--) {
      const e = this.#table.get(history.slice(history.length - k).join(""));
      if (!e) continue;
      if (temperature <= 0) {
        let best = 0;
        let bestCount = 0;
        for (let j = 0; j < e.syms.length; j++) {
          const count = e.cum[j] - (j ? e.cum[j - 1] : 0);
          if (count > bestCount) (best = j, bestCount = count);
        }
        return this.#chars[e.syms[best]];
      }
      const weights = new Float64Array(e.syms.length);
      let total = 0;
      for (let j = 0; j < e.syms.length; j++) {
        const count = e.cum[j] - (j ? e.cum[j - 1] : 0);
        total += weights[j] = count ** (1 / temperature);
      }
      let r = rand() * total;
      for (let j = 0; j < weights.length; j++) {
        r -= weights[j];
        if (r <= 0) return this.#chars[e.syms[j]];
      }
      return this.#chars[e.syms[e.syms.length - 1]];
    }
    return " ";
  }
}

/** Sampling options for {@linkcode NgramModel.generate}. */
export interface GenerateOptions {
  maxTokens: number;
  /** 0 is greedy; higher flattens the distribution. */
  temperature: number;
  /** Fixes the sampling sequence. @default random */
  seed?: number;
  stop?: string[];
}
