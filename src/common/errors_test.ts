import assert from "node:assert/strict";
import { z } from "zod";
import { httpStatus, invalidInput, ValidationError } from "./errors.ts";

Deno.test("invalidInput() names the first bad field, its message and how many more there were", () => {
  const schema = z.object({ a: z.object({ b: z.int() }), c: z.string() });
  const r = schema.safeParse({ a: { b: "x" }, c: 1 });
  assert.ok(!r.success);
  const err = invalidInput("thing t/n/x", r.error);
  assert.ok(err instanceof ValidationError);
  assert.equal(httpStatus(err.code), 400);
  assert.match(err.message, /^Invalid thing t\/n\/x: a\.b: .+ \(and 1 more\)$/);
  assert.deepEqual(err.details, { field: "a.b" });
});

Deno.test("invalidInput() says object when the whole value is wrong", () => {
  const r = z.object({}).safeParse(7);
  assert.ok(!r.success);
  const err = invalidInput("node config x.json", r.error);
  assert.match(err.message, /^Invalid node config x\.json: object: /);
  assert.equal(err.details, undefined);
});
