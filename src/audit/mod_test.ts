import assert from "node:assert/strict";
import { redact } from "./mod.ts";

Deno.test("redact() keeps a PostgreSQL address's password out of the logs", () => {
  assert.equal(
    redact("postgres://audit:PGSECRET@127.0.0.1:5432/audit"),
    "postgres://audit:***@127.0.0.1:5432/audit",
  );
  assert.equal(redact("postgres://127.0.0.1:5432/audit"), "postgres://127.0.0.1:5432/audit");
  assert.equal(redact("not a url :PGSECRET@"), "(unparsable URL)");
});
