import assert from "node:assert/strict";
import { testCall } from "../common/testing.ts";
import {
  admitCallBody,
  admitCallRecord,
  admitCallSecret,
  newCallKey,
  parseCallId,
} from "./call.ts";

const base = testCall();
const key = parseCallId(base.id).key;
const call = (fields: Record<string, unknown> = {}) => ({ ...base, ...fields });
const at = { tenant: "t", namespace: "n", name: key };

Deno.test("a call id names its tenant, namespace and key, and a malformed one is refused", () => {
  assert.match(key, /^c[0-9a-f]{24}$/);
  assert.deepEqual(parseCallId(`t:n:${key}`), { tenant: "t", namespace: "n", key });
  for (const bad of ["", "t:n", `t:n:${key}:x`, `T:n:${key}`, "t:n:c1", `t::${key}`]) {
    assert.throws(() => parseCallId(bad), /Invalid call id/, bad);
  }
});

Deno.test("admitCallRecord() keeps a valid record and names the first bad field", () => {
  assert.equal(JSON.parse(admitCallRecord(at, call())).status, "queued");
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ status: "done" }, /status/],
    [{ body: "not base64!" }, /body/],
    [{ callback: "ftp://x/y" }, /callback/],
    [{ path: "x" }, /path/],
    [{ maxAttempts: 0 }, /maxAttempts/],
    [{ attempts: [{ n: 0, gateway: "g", startedAt: 1 }] }, /attempts\.0\.n/],
    [{ tenant: "u" }, /tenant, namespace and key must match/],
    [{ id: `t:n:${newCallKey()}` }, /id must be tenant:namespace:key/],
  ];
  for (const [fields, want] of cases) {
    assert.throws(() => admitCallRecord(at, call(fields)), want, JSON.stringify(fields));
  }
  assert.throws(() => admitCallRecord({ ...at, name: "x" }, call()), /must match/);
});

Deno.test("a call body is padded base64 without whitespace, as the gateway writes it", () => {
  const ok = btoa("a body of a call\n");
  assert.equal(JSON.parse(admitCallBody(at, { body: ok })).body, ok);
  assert.ok(admitCallBody(at, { body: "" }), "an empty body");
  for (
    const bad of [
      ok.slice(0, -1),
      ok.slice(0, 8) + " \n\r\t" + ok.slice(8),
      `    ${ok}`,
      "QUJD!A==",
      5,
    ]
  ) {
    assert.throws(() => admitCallBody(at, { body: bad }), /body/, JSON.stringify(bad));
  }
});

Deno.test("admitCallSecret() wants 32 hex bytes for the tenant it is named after", () => {
  const secret = "ab".repeat(32);
  assert.ok(admitCallSecret("t", { tenant: "t", secret, createdAt: 1 }));
  assert.throws(() => admitCallSecret("t", { tenant: "u", secret, createdAt: 1 }), /must match/);
  assert.throws(() => admitCallSecret("t", { tenant: "t", secret: "x", createdAt: 1 }), /secret/);
});
