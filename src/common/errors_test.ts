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

Deno.test("invalidInput() names an unknown key as the field, at any depth", () => {
  const schema = z.strictObject({ image: z.string(), policy: z.strictObject({ max: z.int() }) });
  for (
    const [value, field] of [
      [{ image: "x", env: {}, policy: { max: 1 } }, "env"],
      [{ image: "x", policy: { max: 1, max_replicas: 2 } }, "policy.max_replicas"],
      // Misspelt: the unknown key is named, not the field it left missing.
      [{ imagee: "x", policy: { max: 1 } }, "imagee"],
    ] as const
  ) {
    const r = schema.safeParse(value);
    assert.ok(!r.success);
    const err = invalidInput("function t/n/f", r.error);
    assert.deepEqual(err.details, { field });
    assert.match(err.message, new RegExp(`^Invalid function t/n/f: ${field}: Unrecognized key`));
  }
});
