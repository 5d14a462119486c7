import assert from "node:assert/strict";
import { generateTrace, loadAzureCsv, traceStats } from "./trace.ts";

Deno.test("generateTrace() reproduces the published shape of the Azure Functions 2019 trace", () => {
  const s = traceStats(generateTrace({ functions: 1000, seed: 7, durationMs: 86_400_000 }));
  assert.ok(s.atMostHourly > 0.4 && s.atMostHourly < 0.5, `at most hourly: ${s.atMostHourly}`);
  assert.ok(
    s.atMostMinutely > 0.76 && s.atMostMinutely < 0.86,
    `at most per minute: ${s.atMostMinutely}`,
  );
  assert.ok(s.topShareFor996 < 0.2, `functions making 99.6% of calls: ${s.topShareFor996}`);
  assert.ok(s.rateOrders >= 7.5, `orders of magnitude: ${s.rateOrders}`);
  assert.ok(s.medianCv > 1, `median CV: ${s.medianCv}`);
});

Deno.test("generateTrace() is deterministic for a seed and sorted by time", () => {
  const a = generateTrace({ functions: 50, seed: 3, durationMs: 3_600_000 });
  const b = generateTrace({ functions: 50, seed: 3, durationMs: 3_600_000 });
  assert.deepEqual(a, b);
  for (let i = 1; i < a.times.length; i++) assert.ok(a.times[i - 1] <= a.times[i]);
  const c = generateTrace({ functions: 50, seed: 4, durationMs: 3_600_000 });
  assert.notDeepEqual(a.times, c.times);
});

const header = "HashOwner,HashApp,HashFunction,Trigger," +
  Array.from({ length: 3 }, (_, i) => i + 1).join(",");

Deno.test("loadAzureCsv() turns per-minute counts into invocations within each minute", () => {
  const t = loadAzureCsv(`${header}\no1,a1,fa,http,2,0,1\no1,a1,fb,timer,0,3,0\n`, 1);
  assert.deepEqual(t.functions.map((f) => f.id), ["fa", "fb"]);
  assert.equal(t.durationMs, 180_000);
  assert.equal(t.times.length, 6);
  const perMinute = (f: number) =>
    [0, 1, 2].map((m) =>
      [...t.times].filter((x, i) => t.func[i] === f && x >= m * 60_000 && x < (m + 1) * 60_000)
        .length
    );
  assert.deepEqual(perMinute(0), [2, 0, 1]);
  assert.deepEqual(perMinute(1), [0, 3, 0]);
  assert.equal(t.functions[0].ratePerMin, 1);
});

Deno.test("loadAzureCsv() refuses a wrong header, short rows and bad counts clearly", () => {
  assert.throws(() => loadAzureCsv("a,b,c\n1,2,3", 1), /header must start HashOwner/);
  assert.throws(() => loadAzureCsv(`${header}\no,a,f,http,1,2`, 1), /row 2 has 6 columns, not 7/);
  assert.throws(
    () => loadAzureCsv(`${header}\no,a,f,http,1,x,2`, 1),
    /minute 2: "x" is not a count/,
  );
});
