import assert from "node:assert/strict";
import { prefersAsync, wantsCallPath } from "./accept.ts";

Deno.test("prefersAsync() finds respond-async among the preferences, in any case", () => {
  const table: [string | null, boolean][] = [
    ["respond-async", true],
    ["Respond-Async", true],
    ["wait=10, respond-async", true],
    ["respond-async; foo=bar", true],
    ["return=minimal", false],
    ["respond-asynchronously", false],
    ["", false],
    [null, false],
  ];
  for (const [value, want] of table) assert.equal(prefersAsync(value), want, String(value));
});

Deno.test("wantsCallPath() picks calls that carry Prefer, x-inferx-progress or a callback URL", () => {
  assert.equal(wantsCallPath([["host", "h"], ["content-type", "application/json"]]), false);
  assert.equal(wantsCallPath([["host", "h"], ["prefer", "respond-async"]]), true);
  assert.equal(wantsCallPath([["x-inferx-progress", "1"]]), true);
  assert.equal(wantsCallPath([["x-inferx-callback-url", "https://e.test/"]]), true);
  assert.equal(wantsCallPath([]), false);
});
