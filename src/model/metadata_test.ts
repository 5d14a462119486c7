import assert from "node:assert/strict";
import { parseSelector, selectorMatches } from "./metadata.ts";

Deno.test("selectorMatches() reads key=value, key!=value and bare keys, all of which must hold", () => {
  const labels = { app: "demo", tier: "cpu" };
  const cases: [string, boolean][] = [
    ["app=demo", true],
    ["app==demo", true],
    ["app=other", false],
    ["app=demo,tier=cpu", true],
    ["app=demo,tier=gpu", false],
    ["tier!=gpu", true],
    ["missing!=x", true],
    ["app", true],
    ["missing", false],
    ["inferx.io/owner!=x, app = demo", true],
  ];
  for (const [sel, want] of cases) assert.equal(selectorMatches(sel, labels), want, sel);
});

Deno.test("parseSelector() refuses malformed terms, naming them", () => {
  for (const bad of ["", "app=demo,", "=x", "a b=c", "app=-x"]) {
    assert.throws(() => parseSelector(bad), /Invalid label selector/, bad);
  }
});
