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

/** How an answer carries its tokens. */
export type TokenFormat = "json" | "sse";

/** What one call's answer said about its tokens. */
export interface TokenStats extends TokenFigures {
  /** Every gap between successive tokens (ms), for the histogram. */
  gapsMs: readonly number[];
}

const SUFFIX = "/completions";

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
  if (status < 200 || status > 299 || !path.endsWith(SUFFIX)) return undefined;
  for (const [k, v] of headers) {
    if (k !== "content-type") continue;
    if (v.startsWith("text/event-stream")) return "sse";
    return v.includes("json") ? "json" : undefined;
  }
  return undefined;
}

const latin1 = new TextDecoder("latin1");
const USAGE = '"usage"';

/**
 * Prompt and completion tokens from the `usage` object of a JSON answer. Only
 * the `usage` object is parsed (found from the end, where servers put it), so
 * the cost does not grow with the completion's text.
 */
export function usageOf(body: Uint8Array): { prompt?: number; completion?: number } {
  // Field names and numbers are ASCII: latin1 keeps byte offsets and never fails.
  const text = latin1.decode(body);
  let at = text.lastIndexOf(USAGE);
  while (at > 0 && text.charCodeAt(at - 1) === 92 /* \ */) {
    at = text.lastIndexOf(USAGE, at - 1); // inside a string, escaped
  }
  if (at < 0) return {};
  const open = text.indexOf("{", at + USAGE.length);
  if (open < 0 || text.slice(at + USAGE.length, open).trim() !== ":") return {};
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 123 /* { */) depth++;
    else if (c === 125 /* } */ && --depth === 0) {
      return counts(parse(text.slice(open, i + 1)));
    }
  }
  return {};
}

function parse(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}

function counts(usage: unknown): { prompt?: number; completion?: number } {
  if (!usage || typeof usage !== "object") return {};
  const u = usage as { prompt_tokens?: unknown; completion_tokens?: unknown };
  const out: { prompt?: number; completion?: number } = {};
  const prompt = count(u.prompt_tokens);
  const completion = count(u.completion_tokens);
  if (prompt !== undefined) out.prompt = prompt;
  if (completion !== undefined) out.completion = completion;
  return out;
}

const count = (v: unknown) => (Number.isInteger(v) && (v as number) >= 0 ? v as number : undefined);

/** Whether a stream event's choices carry generated content (text, a delta, a tool call). */
function carriesToken(event: { choices?: unknown }): boolean {
  const choices = event.choices;
  if (!Array.isArray(choices)) return false;
  for (const c of choices) {
    if (!c || typeof c !== "object") continue;
    const { text, delta } = c as { text?: unknown; delta?: Record<string, unknown> };
    if (typeof text === "string" && text.length > 0) return true;
    if (!delta || typeof delta !== "object") continue;
    const content = delta.content ?? delta.reasoning_content ?? delta.reasoning;
    if (typeof content === "string" && content.length > 0) return true;
    if (Array.isArray(delta.tool_calls) && delta.tool_calls.length > 0) return true;
  }
  return false;
}

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
  #gaps: number[] = [];
  #prompt?: number;
  #completion?: number;
  #decoder?: TextDecoder;
  /** The unfinished last line of the stream so far. */
  #line = "";
  /** `data:` lines of the event being read. */
  #data: string[] = [];

  constructor(format: TokenFormat, t0: number) {
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

  /** A piece of a stream, already forwarded, at `now`. */
  chunk(bytes: Uint8Array, now: number): void {
    this.#decoder ??= new TextDecoder();
    const text = this.#decoder.decode(bytes, { stream: true });
    let start = 0;
    for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n", start)) {
      let line = start === 0 && this.#line ? this.#line + text.slice(0, nl) : text.slice(start, nl);
      if (start === 0) this.#line = "";
      start = nl + 1;
      if (line.endsWith("\r")) line = line.slice(0, -1);
      this.#onLine(line, now);
    }
    this.#line = start === 0 ? this.#line + text : text.slice(start);
  }

  #onLine(line: string, now: number): void {
    if (line === "") {
      // A blank line ends an event.
      if (this.#data.length) {
        const data = this.#data.length === 1 ? this.#data[0] : this.#data.join("\n");
        this.#data = [];
        this.#onEvent(data, now);
      }
      return;
    }
    if (!line.startsWith("data:")) return; // comments, event names, ids
    this.#data.push(line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5));
  }

  #onEvent(data: string, now: number): void {
    if (data === "[DONE]") return;
    const event = parse(data) as { choices?: unknown; usage?: unknown } | undefined;
    if (!event || typeof event !== "object") return;
    if (event.usage) {
      const u = counts(event.usage);
      this.#prompt = u.prompt ?? this.#prompt;
      this.#completion = u.completion ?? this.#completion;
    }
    if (!carriesToken(event)) return;
    this.#tokens++;
    if (this.#first === undefined) this.#first = now;
    else this.#gaps.push(now - this.#last);
    this.#last = now;
  }

  /**
   * The figures of an answer that ended at `end`, after `queuedMs` in the
   * function's queue.
   */
  result(end: number, queuedMs = 0): TokenStats {
    // A stream that ended without its final newline or blank line.
    if (this.#line) {
      this.#onLine(this.#line.endsWith("\r") ? this.#line.slice(0, -1) : this.#line, end);
    }
    this.#line = "";
    this.#onLine("", end);
    const completion = this.#completion ?? (this.format === "sse" ? this.#tokens : undefined);
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
