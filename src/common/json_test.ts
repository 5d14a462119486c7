import assert from "node:assert/strict";
import {
  jsonEqual,
  jsonText,
  jsonTooHeavy,
  nestsDeeperThan,
  protoKeyPath,
  stableJson,
} from "./json.ts";

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

Deno.test("jsonTooHeavy() counts the arrays, objects and members of JSON text, strings skipped", () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  assert.equal(jsonTooHeavy(enc('{"a":[[1]]}'), 3, 10), undefined);
  assert.equal(
    jsonTooHeavy(enc('{"a":[[1]]}'), 2, 10),
    "nests arrays and objects more than 2 levels deep",
  );
  assert.equal(
    jsonTooHeavy(enc("[[],[],[],{}]"), 5, 4),
    "holds more than 4 arrays, objects and object members",
  );
  assert.equal(jsonTooHeavy(enc("[[],[],{}]"), 5, 4), undefined);
  // An object's members count too (one object of a million keys parses for over a second).
  assert.equal(
    jsonTooHeavy(enc('{"a":1,"b":2,"c":{"d":3}}'), 5, 4),
    "holds more than 4 arrays, objects and object members",
  );
  assert.equal(
    jsonTooHeavy(enc('{"a:b":1,"c":"::"}'), 5, 4),
    undefined,
    "colons in strings are text",
  );
  // Brackets in strings, escaped quotes and backslashes included, are text.
  const texts = JSON.stringify(["[[[[\\", '"[{[{', "\\", 'x\\"]']);
  assert.equal(jsonTooHeavy(enc(texts), 1, 1), undefined);
  // A string ending in an escaped backslash ends there: the array after it counts.
  assert.equal(
    jsonTooHeavy(enc(JSON.stringify(["\\", [1]])), 1, 5),
    "nests arrays and objects more than 1 levels deep",
  );
  // Text shorter than both bounds is not read (it cannot exceed them).
  assert.equal(jsonTooHeavy(enc("[[[]]]"), 6, 6), undefined);
  // A 16 MiB body of empty arrays is told at once, not parsed for seconds.
  const heavy = enc("[" + "[],".repeat(5_000_000) + "[]]");
  assert.equal(
    jsonTooHeavy(heavy, 64),
    "holds more than 100000 arrays, objects and object members",
  );
  assert.equal(
    jsonTooHeavy(enc("[" + "[".repeat(200) + "]".repeat(200) + "]"), 64, 1000),
    "nests arrays and objects more than 64 levels deep",
  );
});

Deno.test("protoKeyPath() names the first __proto__ key of parsed JSON, under objects and arrays", () => {
  assert.equal(protoKeyPath(JSON.parse('{"__proto__":1}')), "__proto__");
  assert.equal(
    protoKeyPath(JSON.parse('{"a":{"b":[1,{"c":2},[{"__proto__":{}}]]}}')),
    "a.b.2.0.__proto__",
  );
  assert.equal(protoKeyPath(JSON.parse('{"a":[1,2,{"__proto__x":3}],"b":"__proto__"}')), undefined);
  assert.equal(protoKeyPath(JSON.parse('[[["x"]]]')), undefined);
  assert.equal(protoKeyPath(null), undefined);
  assert.equal(protoKeyPath("__proto__"), undefined);
  // Past a million numbers (no path is made for any of them).
  const many = Array.from({ length: 1_000_000 }, (_, i) => i);
  assert.equal(protoKeyPath({ x: many, y: { z: JSON.parse('{"__proto__":0}') } }), "y.z.__proto__");
});

Deno.test("jsonText() reads UTF-8, and refuses bytes that are not rather than replace them", () => {
  assert.equal(jsonText(new TextEncoder().encode('{"a":"ÿ€𝄞"}')), '{"a":"ÿ€𝄞"}');
  for (
    const bad of [[0x22, 0xff, 0x22], [0x22, 0xc3, 0x28, 0x22], [0x22, 0xed, 0xa0, 0x80, 0x22]]
  ) {
    assert.throws(() => jsonText(new Uint8Array(bad)), SyntaxError, String(bad));
  }
});
