import assert from "node:assert/strict";
import {
  JSON_TAIL_BYTES,
  MAX_EVENT_BYTES,
  MAX_GAPS_KEPT,
  type TokenFormat,
  tokenFormat,
  TokenMeter,
  usageOf,
} from "./tokens.ts";

const data = (name: string) => Deno.readFile(new URL(`./testdata/${name}`, import.meta.url));
const enc = new TextEncoder();

/** Feeds `bytes` in pieces of `size` bytes, one ms apart from t0 + 100. */
function feed(meter: TokenMeter, bytes: Uint8Array, size: number): number {
  let now = meter.t0 + 100;
  for (let o = 0; o < bytes.length; o += size) meter.chunk(bytes.subarray(o, o + size), now++);
  return now;
}

Deno.test("tokenFormat() reads only 2xx completions answered as JSON or as an event stream", () => {
  const json: [string, string][] = [["content-type", "application/json; charset=utf-8"]];
  const sse: [string, string][] = [["x-a", "1"], ["content-type", "text/event-stream"]];
  const cases: [string, number, [string, string][], TokenFormat | undefined][] = [
    ["/v1/completions", 200, json, "json"],
    ["/v1/chat/completions", 200, sse, "sse"],
    ["/funccall/t/n/f/v1/chat/completions", 200, sse, "sse"],
    ["/funccall/t/n/f/generate", 200, json, undefined], // not a completion route
    ["/v1/completions", 400, json, undefined], // an error body has no tokens
    ["/v1/completions", 200, [["content-type", "text/plain"]], undefined],
    ["/v1/completions", 200, [], undefined],
    // Percent-encoded, as a worker that decodes its path serves it: metered the same.
    ["/funccall/t/n/f/v1/%63ompletions", 200, json, "json"],
    ["/funccall/t/n/f/v1/chat%2Fcompletions", 200, sse, "sse"],
    ["/funccall/t/n/f/%zz/v1/%63ompletions", 200, json, undefined], // no valid encoding
  ];
  for (const [path, status, headers, want] of cases) {
    assert.equal(tokenFormat(path, status, headers), want, `${path} ${status}`);
  }
});

Deno.test("usageOf() finds usage at the end of a completion, nested details included", async () => {
  assert.deepEqual(usageOf(await data("ngram_completion.json")), { prompt: 7, completion: 8 });
  const cases: [string, { prompt?: number; completion?: number }][] = [
    [
      '{"choices":[{"text":"x"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1}}}',
      { prompt: 5, completion: 2 },
    ],
    ['{"usage": {"prompt_tokens": 3, "completion_tokens": 4}, "choices": []}', {
      prompt: 3,
      completion: 4,
    }],
    // "usage" only inside the generated text: no figures, no error.
    ['{"choices":[{"text":"say \\"usage\\": {1}"}]}', {}],
    // A usage nested in the answer after the top-level one is not the answer's.
    [
      '{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[{"meta":{"usage":{"prompt_tokens":900,"completion_tokens":800}}}]}',
      { prompt: 1, completion: 2 },
    ],
    ['{"choices":[{"usage":{"prompt_tokens":9,"completion_tokens":9}}]}', {}],
    // Braces, brackets, quotes and backslashes in strings after it are skipped whole.
    [
      '{"usage":{"prompt_tokens":3,"completion_tokens":4},"text":"} ] \\\\","x":"\\"usage\\":{"}',
      { prompt: 3, completion: 4 },
    ],
    ['[{"usage":{"prompt_tokens":1,"completion_tokens":1}}]', {}], // not an object at the top
    ['{"usage":null}', {}],
    ['{"usage":{"prompt_tokens":-1,"completion_tokens":"x"}}', {}],
    ['{"usage":{"prompt_tokens":1', {}], // cut short
    ["not json at all", {}],
  ];
  for (const [body, want] of cases) assert.deepEqual(usageOf(enc.encode(body)), want, body);
});

Deno.test("a recorded chat stream: usage from its last event, tokens and gaps from the rest, in any chunking", async () => {
  const bytes = await data("openai_chat_usage.sse");
  for (const size of [1, 7, 64, bytes.length]) {
    const meter = new TokenMeter("sse", 1000);
    const end = feed(meter, bytes, size);
    const r = meter.result(end);
    assert.equal(
      meter.tokens,
      3,
      `pieces of ${size}: the role-only and finish events carry no token`,
    );
    assert.equal(r.promptTokens, 9);
    assert.equal(r.completionTokens, 3);
    assert.ok(r.ttftMs! >= 100, `ttft ${r.ttftMs}`);
    assert.equal(r.gapsMs.length, 2);
  }
});

Deno.test("a stream without usage counts one completion token per content chunk", async () => {
  const cases: [string, number][] = [["ngram_completions.sse", 8], ["ngram_chat.sse", 6]];
  for (const [file, tokens] of cases) {
    const meter = new TokenMeter("sse", 0);
    const bytes = await data(file);
    feed(meter, bytes, 50);
    const r = meter.result(10_000, 1000);
    assert.equal(r.completionTokens, tokens, file);
    assert.equal(r.promptTokens, undefined, `${file}: a stream without usage has no prompt count`);
    assert.equal(r.tokensPerS, tokens / 9, `${file}: per second of time on the worker`);
  }
});

Deno.test("inter-token gaps give the call's p50 and p99; time to first token is from the call's start", () => {
  const meter = new TokenMeter("sse", 500);
  const event = (text: string) =>
    enc.encode(`data: {"choices":[{"index":0,"text":${JSON.stringify(text)}}]}\n\n`);
  const times = [520, 530, 540, 550, 600]; // gaps 10, 10, 10, 50
  times.forEach((t, i) => meter.chunk(event(`t${i}`), t));
  meter.chunk(enc.encode("data: [DONE]\n\n"), 601);
  const r = meter.result(601);
  assert.equal(r.ttftMs, 20);
  assert.deepEqual(r.gapsMs, [10, 10, 10, 50]);
  assert.equal(r.itlP50Ms, 10);
  assert.equal(r.itlP99Ms, 50);
  assert.equal(r.completionTokens, 5);
  // Nearest rank: of gaps 20, 30, 40, 40 the median is the second, 30 (not the third).
  const ranked = new TokenMeter("sse", 0);
  [10, 30, 60, 100, 140].forEach((t, i) => ranked.chunk(event(`r${i}`), t));
  const q = ranked.result(141);
  assert.deepEqual(q.gapsMs, [20, 30, 40, 40]);
  assert.equal(q.itlP50Ms, 30);
});

Deno.test("a whole JSON answer has its tokens when it arrives, and its usage", async () => {
  const meter = new TokenMeter("json", 100);
  meter.whole(await data("ngram_completion.json"), 140);
  const r = meter.result(150, 10);
  assert.deepEqual(
    { ...r, gapsMs: [...r.gapsMs] },
    {
      ttftMs: 40,
      itlP50Ms: undefined,
      itlP99Ms: undefined,
      tokensPerS: 8 / 0.04,
      promptTokens: 7,
      completionTokens: 8,
      gapsMs: [],
    },
  );
});

Deno.test("a JSON answer in pieces (chunked, or too large to come whole) has its usage from its end", async () => {
  const body = await data("ngram_completion.json");
  for (const size of [1, 7, 64, body.length]) {
    const meter = new TokenMeter("json", 100);
    feed(meter, body, size); // the first piece at 200
    const r = meter.result(300);
    assert.deepEqual(
      [r.ttftMs, r.promptTokens, r.completionTokens],
      [100, 7, 8],
      `pieces of ${size}`,
    );
  }
  // Past JSON_TAIL_BYTES: the completion's text fills megabytes, usage is still found at the end.
  const text = "x".repeat(3 * JSON_TAIL_BYTES);
  const big = enc.encode(
    JSON.stringify({ choices: [{ text }], usage: { prompt_tokens: 3, completion_tokens: 9000 } }),
  );
  const meter = new TokenMeter("json", 0);
  feed(meter, big, 10_000);
  const r = meter.result(500);
  assert.deepEqual([r.promptTokens, r.completionTokens], [3, 9000]);
  // A body with no usage, or cut before its end, yields none.
  const cut = new TokenMeter("json", 0);
  feed(cut, body.subarray(0, body.length - 20), 50);
  assert.equal(cut.result(10).completionTokens, undefined);
});

Deno.test("a stream of very many tokens keeps a bounded sample of its gaps, and tells each one", () => {
  const heard: number[] = [];
  const meter = new TokenMeter("sse", 0, (ms) => heard.push(ms));
  const event = enc.encode('data: {"choices":[{"text":"x"}]}\n\n');
  const events = 3 * MAX_GAPS_KEPT;
  // Gaps of 1 ms, then 2, 3, ... 10 ms, again and again.
  for (let i = 0, now = 0; i < events; i++) meter.chunk(event, now += 1 + (i % 10));
  const r = meter.result(1e9);
  assert.equal(r.completionTokens, events);
  assert.equal(heard.length, events - 1, "every gap was told");
  assert.equal(r.gapsMs.length, MAX_GAPS_KEPT, "a bounded sample was kept");
  assert.ok(r.itlP50Ms! >= 4 && r.itlP50Ms! <= 7, `p50 ${r.itlP50Ms}`);
  assert.equal(r.itlP99Ms, 10);
});

Deno.test("comments, other fields, multi-line data and bad JSON in a stream are passed over", () => {
  const meter = new TokenMeter("sse", 0);
  const text = [
    ": keep-alive",
    "event: message",
    "id: 1",
    'data: {"choices":[{"delta":{"content":"a"}}]}',
    "",
    "data: {not json",
    "",
    'data: {"choices":',
    'data: [{"delta":{"tool_calls":[{"index":0}]}}]}',
    "",
    'data: {"choices":[{"delta":{"content":"b"}}]}',
  ].join("\n");
  meter.chunk(enc.encode(text), 5);
  const r = meter.result(6);
  assert.equal(
    r.completionTokens,
    3,
    "a, the tool call, and b (its event ended by the stream's end)",
  );
});

Deno.test("a line or an event past MAX_EVENT_BYTES is passed over, and what follows is read", () => {
  const meter = new TokenMeter("sse", 0);
  const token = (c: string) => `data: {"choices":[{"delta":{"content":"${c}"}}]}\n\n`;
  meter.chunk(enc.encode(token("a")), 1);
  // A line that never ends, in pieces, past the limit; then its newline and a token.
  const piece = enc.encode("x".repeat(64 * 1024));
  for (let i = 0; i < (MAX_EVENT_BYTES >> 16) + 4; i++) meter.chunk(piece, 2);
  meter.chunk(enc.encode(`\n\n${token("b")}`), 3);
  // One event of data lines past the limit (no blank line between them), then a token.
  const line = enc.encode(`data: ${"y".repeat(1000)}\n`);
  for (let i = 0; i < (MAX_EVENT_BYTES / 1000) + 10; i++) meter.chunk(line, 4);
  meter.chunk(enc.encode(`\n${token("c")}`), 5);
  assert.equal(meter.result(6).completionTokens, 3, "a, b and c; the oversized line and event not");
});

Deno.test("an event of many data lines in many pieces is read whole", () => {
  const meter = new TokenMeter("sse", 0);
  // {"choices":[{"delta":{"content":"z"}}]} split over 20,000 data lines of a few bytes.
  const json = `{"choices":[{"delta":{"content":"z"}}]}`;
  const lines = [json.slice(0, 10), ...Array(19_998).fill(" "), json.slice(10)];
  for (const l of lines) meter.chunk(enc.encode(`data: ${l}\n`), 1);
  meter.chunk(enc.encode("\n"), 2);
  assert.equal(meter.result(3).completionTokens, 1);
});

Deno.test("the meter stays bounded by MAX_EVENT_BYTES on endless empty data lines, and drops counts no call has", () => {
  // 8 MiB of `data:` lines without a blank one: each empty, none counted before.
  const meter = new TokenMeter("sse", 0);
  const line = enc.encode("data:\n".repeat(64 * 1024));
  const before = Deno.memoryUsage().heapUsed;
  for (let i = 0; i < 21; i++) meter.chunk(line, 1);
  assert.ok(Deno.memoryUsage().heapUsed - before < 64 * 1024 * 1024, "a bounded event");
  meter.result(2);
  const huge = enc.encode(
    `{"usage":{"prompt_tokens":${
      "9".repeat(400)
    },"completion_tokens":1000000000000000000000000000000}}`,
  );
  assert.deepEqual(usageOf(huge), {});
  assert.deepEqual(usageOf(enc.encode('{"usage":{"prompt_tokens":2147483647}}')), {
    prompt: 2147483647,
  });
});

Deno.test("tokenFormat() reads media types in any case, and no encoded body", () => {
  const path = "/v1/completions";
  assert.equal(tokenFormat(path, 200, [["content-type", "Text/Event-Stream"]]), "sse");
  assert.equal(tokenFormat(path, 200, [["content-type", "application/JSON"]]), "json");
  const gzip: [string, string][] = [["content-encoding", "gzip"], [
    "content-type",
    "text/event-stream",
  ]];
  assert.equal(tokenFormat(path, 200, gzip), undefined);
  // A stream with no event in it: no figure, not a count of zero.
  const meter = new TokenMeter("sse", 0);
  meter.chunk(enc.encode('{"usage":{"completion_tokens":9}}'), 1);
  assert.equal(meter.result(2).completionTokens, undefined);
});

Deno.test("a stream whose lines end in CR or CRLF, or that starts with a byte order mark, reads the same", async () => {
  const lf = await data("openai_chat_usage.sse");
  const text = new TextDecoder().decode(lf);
  const variants = {
    crlf: enc.encode(text.replaceAll("\n", "\r\n")),
    cr: enc.encode(text.replaceAll("\n", "\r")),
    bom: enc.encode("\uFEFF" + text),
    "bom+cr": enc.encode("\uFEFF" + text.replaceAll("\n", "\r")),
  };
  for (const [name, bytes] of Object.entries(variants)) {
    // Every size, so that each CRLF is also split between two pieces (and with an empty piece
    // after each: a CR still pends across it).
    for (const size of [1, 2, 3, 7, 64, bytes.length]) {
      const empty = new TokenMeter("sse", 1000);
      for (let o = 0; o < bytes.length; o += size) {
        empty.chunk(bytes.subarray(o, o + size), o);
        empty.chunk(new Uint8Array(0), o);
      }
      assert.equal(empty.tokens, 3, `${name}, pieces of ${size} with empty ones between`);
      const meter = new TokenMeter("sse", 1000);
      const r = meter.result(feed(meter, bytes, size));
      const what = `${name}, pieces of ${size}`;
      assert.equal(meter.tokens, 3, what);
      assert.deepEqual([r.promptTokens, r.completionTokens, r.gapsMs.length], [9, 3, 2], what);
    }
  }
  // Its first event carries a token: a byte order mark split between pieces is dropped too.
  const bom = enc.encode("\uFEFF" + new TextDecoder().decode(await data("ngram_completions.sse")));
  for (const size of [1, 2, 64]) {
    const meter = new TokenMeter("sse", 1000);
    meter.result(feed(meter, bom, size));
    assert.equal(meter.tokens, 8, `pieces of ${size}`);
  }
});
