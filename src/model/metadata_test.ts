import assert from "node:assert/strict";
import { parseSelector, selectorMatches, setCondition } from "./metadata.ts";

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

Deno.test("setCondition() writes once something is wrong, keeps it, and moves the time on status changes only", () => {
  const f = { type: "Schedulable", status: "False" as const, reason: "R", message: "m" };
  assert.equal(
    setCondition([], { ...f, status: "True" }, "t0"),
    undefined,
    "never wrong: no write",
  );
  const first = setCondition([], f, "t1")!;
  assert.deepEqual(first, [{ ...f, lastTransitionTime: "t1" }]);
  assert.equal(setCondition(first, f, "t2"), undefined, "the same: no write");
  const reworded = setCondition(first, { ...f, message: "m2" }, "t3")!;
  assert.equal(reworded[0].lastTransitionTime, "t1");
  const cleared = setCondition(reworded, { ...f, status: "True", reason: "Fits" }, "t4")!;
  assert.deepEqual([cleared[0].status, cleared[0].lastTransitionTime], ["True", "t4"]);
  const other = { type: "Other", status: "True" as const, reason: "", message: "" };
  assert.equal(setCondition([other], f, "t5")!.length, 2, "other conditions are kept");
});
