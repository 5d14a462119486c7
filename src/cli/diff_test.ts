import assert from "node:assert/strict";
import { fieldDiff, formatChange } from "./diff.ts";

Deno.test("fieldDiff() names each added, removed and changed field by its path", () => {
  const cases: [string, unknown, unknown, string[]][] = [
    ["equal values", { a: { b: [1, 2] } }, { a: { b: [1, 2] } }, []],
    ["key order does not count", { a: { x: 1, y: 2 } }, { a: { y: 2, x: 1 } }, []],
    ["a changed leaf", { spec: { n: 1 } }, { spec: { n: 2 } }, ["~ spec.n: 1 -> 2"]],
    ["an added field", { spec: {} }, { spec: { labels: { a: "b" } } }, [
      '+ spec.labels: {"a":"b"}',
    ]],
    ["a removed field", { spec: { x: "y" } }, { spec: {} }, ['- spec.x: "y"']],
    ["array elements by index", { c: ["a", "b"] }, { c: ["a", "c", "d"] }, [
      '~ c[1]: "b" -> "c"',
      '+ c[2]: "d"',
    ]],
    ["nested arrays", { envs: [["A", "1"]] }, { envs: [["A", "2"]] }, ['~ envs[0][1]: "1" -> "2"']],
    ["a type change is one change", { a: { b: 1 } }, { a: [1] }, ['~ a: {"b":1} -> [1]']],
    ["after's key order, then removed keys", { z: 1, a: 1 }, { b: 2, a: 2 }, [
      "+ b: 2",
      "~ a: 1 -> 2",
      "- z: 1",
    ]],
  ];
  for (const [what, before, after, want] of cases) {
    assert.deepEqual(fieldDiff(before, after).map(formatChange), want, what);
  }
});

Deno.test("formatChange() cuts long values", () => {
  const line = formatChange({ path: "p", kind: "added", to: "x".repeat(500) });
  assert.ok(line.length < 130);
  assert.ok(line.endsWith("…"));
});
