/**
 * Token figures of OpenAI-style answers, read from a copy of what the
 * gateway already forwarded: time to first token, the gaps between tokens,
 * output tokens per second, and prompt and completion tokens (from `usage`,
 * or counted from a stream's chunks when it has none).
 *
 * Which answers are read is decided once per call, from what is already at
 * hand: a 2xx answer to a call whose path ends in `/completions`
 * (`/v1/completions`, `/v1/chat/completions`, through `/v1` or `/funccall`)
 * with `content-type: application/json` (a whole answer: only its `usage` is
 * read) or `text/event-stream` (a stream: every event is read). Anything else
 * is never looked at. Nothing here can fail a call: a body that does not
 * parse only yields fewer figures.
 *
 * @module
 */
import type { TokenFigures } from "../audit/types.ts";
import { concatBytes } from "./http1/bytes.ts";

/** How an answer carries its tokens. */
export type TokenFormat = "json" | "sse";

/** What one call's answer said about its tokens. */
export interface TokenStats extends TokenFigures {
  /**
   * The gaps between successive tokens (ms) the p50 and p99 come from: all
   * of them up to {@linkcode MAX_GAPS_KEPT}, a uniform sample of them past it.
   */
  gapsMs: readonly number[];
}

const SUFFIX = "/completions";

/**
 * Whether `path` names a completion, spelled out or percent-encoded
 * (`/v1/%63ompletions`: a worker that decodes its path, as most servers do,
 * serves the same completion, which is metered the same).
 */
function isCompletion(path: string): boolean {
  if (path.endsWith(SUFFIX)) return true;
  if (!path.includes("%")) return false;
  try {
    return decodeURIComponent(path).endsWith(SUFFIX);
  } catch {
    return false; // not valid percent-encoding: no worker reads it as a completion
  }
}

/**
 * The format to read an answer's tokens in, or undefined for an answer that
 * is not read (not 2xx, not a completion, neither JSON nor an event stream).
 * `path` is the call's path without its query.
 */
export function tokenFormat(
  path: string,
  status: number,
  headers: readonly (readonly [string, string])[],
): TokenFormat | undefined {
  if (status < 200 || status > 299 || !isCompletion(path)) return undefined;
  let format: TokenFormat | undefined;
  for (const [k, v] of headers) {
    // An encoded body (gzip...) is not read: its figures would be wrong, not missing.
    if (k === "content-encoding" && v.trim().toLowerCase() !== "identity") return undefined;
    if (k !== "content-type") continue;
    // Media types are case-insensitive (lowered only when the usual spelling does not match).
    const type = v.startsWith("text/event-stream") || v.includes("json") ? v : v.toLowerCase();
    format = type.startsWith("text/event-stream")
      ? "sse"
      : type.includes("json")
      ? "json"
      : undefined;
  }
  return format;
}

/** What one kept line of an event counts for against MAX_EVENT_BYTES, beyond its bytes. */
const LINE_COST = 32;

const USAGE = bytesOf('"usage"');
const PROMPT = bytesOf('"prompt_tokens"');
const COMPLETION = bytesOf('"completion_tokens"');

function bytesOf(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** Whether `b` holds `word` at `at`. */
function holds(b: Uint8Array, at: number, word: Uint8Array): boolean {
  if (at + word.length > b.length) return false;
  for (let i = 0; i < word.length; i++) if (b[at + i] !== word[i]) return false;
  return true;
}

const isSpace = (c: number) => c === 32 || c === 9 || c === 10 || c === 13;

/** The index after `:` and the whitespace around it, from `at`; -1 when there is no colon. */
function afterColon(b: Uint8Array, at: number): number {
  while (at < b.length && isSpace(b[at])) at++;
  if (b[at] !== 58 /* : */) return -1;
  at++;
  while (at < b.length && isSpace(b[at])) at++;
  return at;
}

/** The most tokens one call may count: more is a worker's mistake, not a figure. */
const MAX_TOKENS = 2 ** 31 - 1;

/** The non-negative integer at `at` (up to {@linkcode MAX_TOKENS}), or undefined. */
function integerAt(b: Uint8Array, at: number): number | undefined {
  let n = 0;
  let digits = 0;
  for (; at < b.length && b[at] >= 48 && b[at] <= 57; at++, digits++) n = n * 10 + b[at] - 48;
  const next = b[at];
  // A fraction or an exponent is not a count of tokens; nor is a number no call could reach
  // (summed into the metrics, one turned them to +Inf for good).
  return digits && next !== 46 && next !== 101 && next !== 69 && n <= MAX_TOKENS ? n : undefined;
}

/**
 * Prompt and completion tokens from the top-level `usage` object of a JSON
 * answer. Read from the bytes, without decoding or parsing the body: read
 * backwards from the end (where servers put `usage`), strings skipped whole
 * and nesting counted, to the top-level `usage` key (not one nested later in
 * the answer, nor the word inside generated text), then its two top-level
 * counts forwards; so the cost is a few hundred byte comparisons whatever
 * the completion's length.
 */
export function usageOf(body: Uint8Array): { prompt?: number; completion?: number } {
  let depth = 0;
  for (let i = body.length - 1; i >= 0; i--) {
    const c = body[i];
    if (c === 125 /* } */ || c === 93 /* ] */) depth++;
    else if (c === 123 /* { */ || c === 91 /* [ */) {
      if (--depth < 0) return {}; // not one JSON value: no figures
    } else if (c === 34 /* " */) {
      const end = i;
      // Back to the string's opening quote: one after an even number of backslashes.
      for (i--; i >= 0; i--) {
        if (body[i] !== 34) continue;
        let k = i - 1;
        while (k >= 0 && body[k] === 92 /* \ */) k--;
        if ((i - 1 - k) % 2 === 0) break;
      }
      if (i < 0) return {};
      if (depth === 1 && end - i + 1 === USAGE.length && holds(body, i, USAGE)) {
        const open = afterColon(body, end + 1);
        if (open >= 0) return countsAt(body, open);
      }
    }
  }
  return {};
}

/** The two counts of the `usage` object that opens at `open`. */
function countsAt(body: Uint8Array, open: number): { prompt?: number; completion?: number } {
  if (body[open] !== 123 /* { */) return {};
  const out: { prompt?: number; completion?: number } = {};
  let depth = 0;
  for (let i = open; i < body.length; i++) {
    const c = body[i];
    if (c === 123 /* { */ || c === 91 /* [ */) depth++;
    else if (c === 125 /* } */ || c === 93 /* ] */) {
      if (--depth === 0) return out;
    } else if (c === 34 /* " */) {
      if (depth === 1 && (holds(body, i, PROMPT) || holds(body, i, COMPLETION))) {
        const key = body[i + 1] === 112 /* p */ ? PROMPT : COMPLETION;
        const v = afterColon(body, i + key.length);
        const n = v < 0 ? undefined : integerAt(body, v);
        if (n !== undefined) out[key === PROMPT ? "prompt" : "completion"] = n;
      }
      // Skip the string, escapes included.
      for (i++; i < body.length && body[i] !== 34; i++) if (body[i] === 92) i++;
    }
  }
  return {}; // cut short
}

const DATA = bytesOf("data:");
const DONE = bytesOf("[DONE]");
/** Keys whose non-empty string value is generated text. */
const TEXT_KEYS = ['"text"', '"content"', '"reasoning_content"', '"reasoning"'].map(bytesOf);
const TOOL_CALLS = bytesOf('"tool_calls"');

/** Whether the string from `from` to the quote at `to` is `word` (quotes included). */
const isKey = (b: Uint8Array, from: number, to: number, word: Uint8Array) =>
  to - from + 1 === word.length && holds(b, from, word);

/**
 * What one stream event says, read from its bytes: whether it carries a
 * token (a non-empty `text`, `content` or reasoning string, or tool calls),
 * and whether it has a `usage` object. Keys are matched at any depth, so
 * completions (`choices[].text`) and chat (`choices[].delta.content`) read
 * alike; `logprobs.content`, an array, is not text.
 */
function scanEvent(b: Uint8Array): { token: boolean; usage: boolean } {
  let token = false;
  let usage = false;
  for (let i = 0; i < b.length; i++) {
    if (b[i] !== 34) continue;
    let j = i + 1;
    for (; j < b.length && b[j] !== 34; j++) if (b[j] === 92) j++;
    const v = afterColon(b, j + 1);
    if (v >= 0) {
      if (!token && b[v] === 34 && b[v + 1] !== 34) {
        for (const k of TEXT_KEYS) if (isKey(b, i, j, k)) token = true;
      } else if (!token && b[v] === 91 && isKey(b, i, j, TOOL_CALLS)) {
        let k = v + 1;
        while (k < b.length && isSpace(b[k])) k++;
        token = b[k] !== 93;
      } else if (b[v] === 123 && isKey(b, i, j, USAGE)) usage = true;
    }
    i = j;
  }
  return { token, usage };
}

/** A blank line, to end the last event (a new `Uint8Array` costs an `ArrayBuffer` each time). */
const NO_BYTES = new Uint8Array(0);

/**
 * The most bytes of one line or one event read: a worker's stream is its
 * function's, and a line that never ends must neither grow the gateway's
 * memory nor its time a piece (what is past it yields no figures).
 */
export const MAX_EVENT_BYTES = 1024 * 1024;

/**
 * How much of the end of a JSON answer that comes in pieces (chunked, or too
 * large to be read whole) is kept for its `usage`, which servers put last.
 */
export const JSON_TAIL_BYTES = 64 * 1024;

/**
 * The most gaps between tokens one answer keeps for its quantiles: a stream
 * of millions of tiny events must not grow the gateway's memory with it.
 * Past it, a uniform sample (reservoir) of this size is kept.
 */
export const MAX_GAPS_KEPT = 10_000;

/** The value at quantile `q` of ascending `sorted` (nearest rank). */
function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/**
 * Reads one answer's tokens. Feed it what was forwarded, after it was
 * written ({@linkcode chunk} for a stream, {@linkcode whole} for a body that
 * came at once), then ask for the {@linkcode result}.
 *
 * @example
 * ```ts
 * const meter = new TokenMeter("sse", t0);
 * for (let c; (c = await answer.read()) !== null;) {
 *   await res.write(c);
 *   meter.chunk(c, performance.now());
 * }
 * const stats = meter.result(performance.now(), queuedMs);
 * ```
 */
export class TokenMeter {
  readonly format: TokenFormat;
  /** When the call was received (`performance.now()` scale). */
  readonly t0: number;
  #first?: number;
  #last = 0;
  #tokens = 0;
  /** A `data:` line was seen. */
  #events = false;
  #gaps: number[] = [];
  #gapCount = 0;
  readonly #onGap?: (ms: number) => void;
  #prompt?: number;
  #completion?: number;
  /** The unfinished last line of the stream so far: copies of its pieces. */
  #line: Uint8Array[] = [];
  #lineBytes = 0;
  /** Payloads of the `data:` lines of the event being read. */
  #data: Uint8Array[] = [];
  #dataBytes = 0;
  /** `#data` from this index on may still point into the piece being read (copied at its end). */
  #fresh = 0;
  /** The line, or the event, being read went past {@linkcode MAX_EVENT_BYTES}: skipped to its end. */
  #skipLine = false;
  #skipEvent = false;
  /** A JSON answer in pieces: copies of its last pieces, {@linkcode JSON_TAIL_BYTES} and less than one more. */
  #tail: Uint8Array[] = [];
  #tailBytes = 0;
  /** A stream's first line was read (its byte order mark, if any, dropped). */
  #begun = false;
  /** The last piece ended with a CR: an LF starting the next one ends no second line. */
  #afterCr = false;

  /** `onGap` hears every gap between tokens as it is read (for a histogram). */
  constructor(format: TokenFormat, t0: number, onGap?: (ms: number) => void) {
    this.#onGap = onGap;
    this.format = format;
    this.t0 = t0;
  }

  /** Tokens seen so far in a stream. */
  get tokens(): number {
    return this.#tokens;
  }

  /** A whole answer's body, which arrived at `now`. */
  whole(body: Uint8Array, now: number): void {
    if (this.format === "sse") return this.chunk(body, now);
    this.#first = now;
    const u = usageOf(body);
    this.#prompt = u.prompt;
    this.#completion = u.completion;
  }

  /**
   * A piece of a stream, already forwarded, at `now`. Read as bytes: lines
   * split at ends of line (LF, CRLF or CR), events at blank lines; what must outlive the call is
   * copied (the caller may reuse its buffer). A JSON answer that comes in
   * pieces (chunked, or too large to come whole) keeps its end for `usage`.
   */
  chunk(bytes: Uint8Array, now: number): void {
    if (this.format === "json") return this.#keepTail(bytes, now);
    bytes = this.#lineEnds(bytes);
    let start = 0;
    let nl = bytes.indexOf(10);
    if (this.#lineBytes || this.#skipLine) {
      if (nl < 0) return this.#keepLine(bytes);
      this.#keepLine(bytes.subarray(0, nl));
      const skipped = this.#skipLine;
      const line = concatBytes(this.#line);
      this.#line = [];
      this.#lineBytes = 0;
      this.#skipLine = false;
      if (!skipped) this.#onLine(line, now);
      start = nl + 1;
      nl = bytes.indexOf(10, start);
    }
    for (; nl >= 0; nl = bytes.indexOf(10, start)) {
      this.#onLine(bytes.subarray(start, nl), now);
      start = nl + 1;
    }
    if (start < bytes.length) this.#keepLine(bytes.subarray(start));
    // An event cut by the end of this piece keeps copies of the lines it got from it.
    for (let i = this.#fresh; i < this.#data.length; i++) this.#data[i] = this.#data[i].slice();
    this.#fresh = this.#data.length;
  }

  /**
   * `bytes` with every end of line an event stream allows (CRLF, LF, or CR
   * alone) as LF: a copy only when it holds a CR. A CRLF split between two
   * pieces is one end.
   */
  #lineEnds(bytes: Uint8Array): Uint8Array {
    if (!bytes.length) return bytes; // nothing, and a CR before it still pends
    if (this.#afterCr && bytes[0] === 10) bytes = bytes.subarray(1);
    this.#afterCr = false;
    let cr = bytes.indexOf(13);
    if (cr < 0) return bytes;
    const out = new Uint8Array(bytes.length);
    let n = 0;
    let from = 0;
    for (; cr >= 0; cr = bytes.indexOf(13, from)) {
      out.set(bytes.subarray(from, cr), n);
      n += cr - from;
      out[n++] = 10;
      from = cr + 1;
      if (from === bytes.length) this.#afterCr = true;
      else if (bytes[from] === 10) from++;
    }
    out.set(bytes.subarray(from), n);
    return out.subarray(0, n + bytes.length - from);
  }

  /** A piece of a JSON answer: its time to first token is the first piece's; its end is kept. */
  #keepTail(bytes: Uint8Array, now: number): void {
    this.#first ??= now;
    if (!bytes.length) return;
    const piece = bytes.length > JSON_TAIL_BYTES ? bytes.subarray(-JSON_TAIL_BYTES) : bytes;
    this.#tail.push(piece.slice());
    this.#tailBytes += piece.length;
    while (this.#tailBytes - this.#tail[0].length >= JSON_TAIL_BYTES) {
      this.#tailBytes -= this.#tail.shift()!.length;
    }
  }

  /** Keeps a copy of a piece of the unfinished line, up to the limit. */
  #keepLine(piece: Uint8Array): void {
    if (this.#skipLine || !piece.length) return;
    if (this.#lineBytes + piece.length > MAX_EVENT_BYTES) {
      this.#skipLine = true;
      this.#line = [];
      this.#lineBytes = 0;
      return;
    }
    this.#line.push(piece.slice());
    this.#lineBytes += piece.length;
  }

  #onLine(line: Uint8Array, now: number): void {
    if (!this.#begun) {
      this.#begun = true;
      if (line[0] === 0xef && line[1] === 0xbb && line[2] === 0xbf) line = line.subarray(3);
    }
    if (line.length === 0) {
      // A blank line ends an event.
      const data = this.#data;
      const skipped = this.#skipEvent;
      this.#data = [];
      this.#dataBytes = 0;
      this.#fresh = 0;
      this.#skipEvent = false;
      if (!data.length || skipped) return;
      this.#onEvent(concatBytes(data, 10), now);
      return;
    }
    if (!holds(line, 0, DATA) || this.#skipEvent) return; // comments, event names, ids
    const payload = line.subarray(line[5] === 32 ? 6 : 5);
    // Each line costs what keeping it costs, not its bytes alone: an event of endless empty
    // `data:` lines grew without bound (nothing of it counted) until the gateway ran out of
    // memory. So an event holds at most MAX_EVENT_BYTES / LINE_COST lines.
    if (this.#dataBytes + payload.length + LINE_COST > MAX_EVENT_BYTES) {
      this.#skipEvent = true;
      this.#data = [];
      this.#dataBytes = 0;
      this.#fresh = 0;
      return;
    }
    this.#data.push(payload);
    this.#dataBytes += payload.length + LINE_COST;
    this.#events = true;
  }

  #onEvent(data: Uint8Array, now: number): void {
    if (data.length === DONE.length && holds(data, 0, DONE)) return;
    const { token, usage } = scanEvent(data);
    if (usage) {
      const u = usageOf(data);
      this.#prompt = u.prompt ?? this.#prompt;
      this.#completion = u.completion ?? this.#completion;
    }
    if (!token) return;
    this.#tokens++;
    if (this.#first === undefined) this.#first = now;
    else this.#gap(now - this.#last);
    this.#last = now;
  }

  #gap(ms: number): void {
    this.#onGap?.(ms);
    const n = ++this.#gapCount;
    if (n <= MAX_GAPS_KEPT) this.#gaps.push(ms);
    else {
      const i = Math.floor(Math.random() * n);
      if (i < MAX_GAPS_KEPT) this.#gaps[i] = ms;
    }
  }

  /**
   * The figures of an answer that ended at `end`, after `queuedMs` in the
   * function's queue.
   */
  result(end: number, queuedMs = 0): TokenStats {
    if (this.#tail.length) {
      const u = usageOf(concatBytes(this.#tail));
      this.#prompt = u.prompt;
      this.#completion = u.completion;
      this.#tail = [];
      this.#tailBytes = 0;
    }
    // A stream that ended without its final newline or blank line.
    if (this.#lineBytes && !this.#skipLine) this.#onLine(concatBytes(this.#line), end);
    this.#line = [];
    this.#lineBytes = 0;
    this.#onLine(NO_BYTES, end);
    // Counted from the events only when there were events to count (a stream not read as one
    // has no figure, not zero).
    const completion = this.#completion ??
      (this.format === "sse" && this.#events ? this.#tokens : undefined);
    const gaps = this.#gaps;
    const sorted = gaps.length > 1 ? [...gaps].sort((a, b) => a - b) : gaps;
    const onWorkerS = (end - this.t0 - queuedMs) / 1000;
    return {
      ttftMs: this.#first === undefined ? undefined : this.#first - this.t0,
      itlP50Ms: sorted.length ? quantile(sorted, 0.5) : undefined,
      itlP99Ms: sorted.length ? quantile(sorted, 0.99) : undefined,
      tokensPerS: completion && onWorkerS > 0 ? completion / onWorkerS : undefined,
      promptTokens: this.#prompt,
      completionTokens: completion,
      gapsMs: gaps,
    };
  }
}
