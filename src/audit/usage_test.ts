import assert from "node:assert/strict";
import { tokenRows } from "./testing.ts";
import { summarizeUsage, usageOrder } from "./usage.ts";

Deno.test("summarizeUsage() sums tokens and ranks latencies per function version and per tenant", () => {
  const s = summarizeUsage(tokenRows(), { since: 1000 });
  assert.deepEqual(s.functions, [
    {
      tenant: "t",
      namespace: "n",
      func: "f",
      version: 1,
      calls: 2,
      promptTokens: 12,
      completionTokens: 30,
      ttftP50Ms: 100,
      ttftP99Ms: 300,
      itlP50Ms: 10,
      itlP99Ms: 90,
      tokensPerS: 40,
    },
    {
      tenant: "t",
      namespace: "n",
      func: "f",
      version: 2,
      calls: 1,
      promptTokens: 3,
      completionTokens: 4,
      ttftP50Ms: 50,
      ttftP99Ms: 50,
      tokensPerS: 100,
    },
    {
      tenant: "u",
      namespace: "n",
      func: "g",
      version: 1,
      calls: 1,
      promptTokens: 0,
      completionTokens: 6,
      ttftP50Ms: 80,
      ttftP99Ms: 80,
    },
  ]);
  assert.deepEqual(
    s.tenants.map((u) => [u.tenant, u.calls, u.promptTokens, u.completionTokens, u.ttftP50Ms]),
    [["t", 3, 15, 34, 100], ["u", 1, 0, 6, 80]],
  );
  assert.equal(s.rowsRead, 6);
});

Deno.test("summarizeUsage() keeps to one tenant when asked", () => {
  const s = summarizeUsage(tokenRows(), { since: 1000, tenant: "u" });
  assert.deepEqual(s.functions.map((u) => u.func), ["g"]);
  assert.deepEqual(s.tenants.map((u) => u.tenant), ["u"]);
});

Deno.test("usageOrder() orders by tenant, namespace, function and version, as tuples", () => {
  const u = (tenant: string, namespace: string, func: string, version?: number) => ({
    tenant,
    namespace,
    func,
    version,
    calls: 1,
    promptTokens: 0,
    completionTokens: 0,
  });
  const sorted = [
    u("a-b", "n", "f", 3),
    u("a", "n-x", "f", 3),
    u("a", "n", "f.2", 3),
    u("a", "n", "f", 12),
    u("a", "n", "f-1", 3),
    u("a", "n", "f", 3),
  ].sort(usageOrder).map((x) => `${x.tenant}/${x.namespace}/${x.func}@${x.version}`);
  assert.deepEqual(sorted, [
    "a/n/f@3",
    "a/n/f@12",
    "a/n/f-1@3",
    "a/n/f.2@3",
    "a/n-x/f@3",
    "a-b/n/f@3",
  ]);
});
