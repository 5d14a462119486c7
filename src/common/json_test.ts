import assert from "node:assert/strict";
import { jsonEqual, nestsDeeperThan, stableJson } from "./json.ts";

Deno.test("stableJson() sorts keys at every depth and keeps array order", () => {
  assert.equal(stableJson({ b: 1, a: { d: [2, 1], c: null } }), '{"a":{"c":null,"d":[2,1]},"b":1}');
});

Deno.test("jsonEqual() ignores key order and undefined fields, not values or array order", () => {
  const cases: [unknown, unknown, boolean][] = [
    [{ a: 1, b: 2 }, { b: 2, a: 1 }, true],
    [{ a: 1, u: undefined }, { a: 1 }, true],
    [{ a: [1, 2] }, { a: [2, 1] }, false],
    [{ a: 1 }, { a: "1" }, false],
    [{ a: { x: 1 } }, { a: { x: 1, y: 2 } }, false],
  ];
  for (const [a, b, want] of cases) assert.equal(jsonEqual(a, b), want, stableJson([a, b]));
});

Deno.test("nestsDeeperThan() counts arrays and objects, at any depth without recursion", () => {
  assert.equal(nestsDeeperThan(1, 0), false);
  assert.equal(nestsDeeperThan({}, 0), true);
  assert.equal(nestsDeeperThan({ a: [[1]] }, 3), false);
  assert.equal(nestsDeeperThan({ a: [[1]] }, 2), true);
  assert.equal(nestsDeeperThan({ a: 1, b: [1, { c: {} }] }, 2), true);
  const deep = JSON.parse("[".repeat(100_000) + "]".repeat(100_000));
  assert.equal(nestsDeeperThan(deep, 64), true);
  assert.equal(nestsDeeperThan(deep, 100_000), false);
});
