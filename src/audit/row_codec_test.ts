import assert from "node:assert/strict";
import { encodeRequests, RequestPacker, SLOT, SLOTS } from "./row_codec.ts";
import type { RequestRow } from "./types.ts";

const full: RequestRow = {
  time: 1_700_000_000_123,
  gateway: "gw-1",
  principal: "key:k1",
  tenant: "t1",
  namespace: "ns1",
  func: "f1",
  method: "POST",
  path: "/v1/completions",
  status: 200,
  latencyMs: 3.25,
  ttfbMs: 1.5,
  coldStart: true,
  resumed: false,
  pod: "t1/ns1/f1/1/abc",
  version: 7,
  error: "timeout",
  call: "call-1",
  attempt: 2,
  ttftMs: 1.75,
  itlP50Ms: 0.5,
  itlP99Ms: 0.9,
  tokensPerS: 812.5,
  promptTokens: 11,
  completionTokens: 4,
};

Deno.test("encodeRequests() puts every field in its slot, strings once per batch", () => {
  const bare: RequestRow = {
    time: 5,
    gateway: "gw-1",
    principal: "anonymous",
    tenant: "t1",
    namespace: "ns1",
    func: "f1",
    method: "GET",
    path: "/",
    status: 404,
    latencyMs: 0.25,
    coldStart: false,
    resumed: true,
  };
  const { nums, strings } = encodeRequests([full, bare]);
  assert.equal(nums.length, 2 * SLOTS);
  // Each string field's slot names its value; each number field's slot holds it.
  for (const [field, slot] of Object.entries(SLOT)) {
    const v = full[field as keyof RequestRow];
    const got = nums[slot];
    if (typeof v === "string") assert.equal(strings[got], v, field);
    else if (typeof v === "boolean") assert.equal(got, v ? 1 : 0, field);
    else assert.equal(got, v, field);
  }
  assert.equal(new Set(strings).size, strings.length);
  assert.equal(strings.filter((s) => s === "gw-1").length, 1);
  // Absent fields: -1 for strings, NaN for numbers.
  const o = SLOTS;
  for (const f of ["pod", "error", "call"] as const) assert.equal(nums[o + SLOT[f]], -1, f);
  for (const f of ["ttfbMs", "version", "attempt", "ttftMs", "completionTokens"] as const) {
    assert.ok(Number.isNaN(nums[o + SLOT[f]]), f);
  }
  assert.equal(nums[o + SLOT.resumed], 1);
  assert.equal(strings[nums[o + SLOT.principal]], "anonymous");
});

Deno.test("RequestPacker hands out batches in order and keeps only the strings it still needs", () => {
  const rows = Array.from({ length: 2000 }, (_, i): RequestRow => ({
    ...full,
    time: i,
    path: `/p${i}`,
    pod: i % 2 ? undefined : `pod-${i % 7}`,
  }));
  const packer = new RequestPacker(4); // grows as rows come
  for (const r of rows) packer.push(r);
  assert.equal(packer.length, 2000);
  // Each batch reads as the same rows packed on their own would.
  const view = (p: { nums: Float64Array; strings: string[] }) =>
    Array.from({ length: p.nums.length / SLOTS }, (_, i) =>
      Object.entries(SLOT).map(([, slot]) => {
        const v = p.nums[i * SLOTS + slot];
        return slot >= 1 && slot <= 10 ? (v < 0 ? null : p.strings[v]) : v;
      }));
  const first = packer.take(500);
  assert.equal(packer.length, 1500);
  assert.deepEqual(view(first), view(encodeRequests(rows.slice(0, 500))));
  // The last row's path again: its index changed when the table was rebuilt.
  packer.push({ ...full, time: 2000, path: "/p1999" });
  const rest = packer.take(2000);
  assert.equal(packer.length, 0);
  assert.deepEqual(
    view(rest),
    view(encodeRequests([...rows.slice(500), { ...full, time: 2000, path: "/p1999" }])),
  );
  // Past 1,024 strings the rest's table was rebuilt: it holds its own strings, not the
  // first batch's paths.
  assert.ok(!rest.strings.includes("/p0"));
  assert.equal(packer.take(10).nums.length, 0);
  // The strings of the last row again, after the table was emptied: written anew.
  packer.push({ ...full, time: 2001, path: "/late" });
  assert.deepEqual(
    view(packer.take(10)),
    view(encodeRequests([{ ...full, time: 2001, path: "/late" }])),
  );
});
