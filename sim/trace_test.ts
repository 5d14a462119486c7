import assert from "node:assert/strict";
import { generateTrace, loadAzureCsv, ticksPerMs, traceStats } from "./trace.ts";

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
  assert.throws(() => loadAzureCsv("a,b,c\n1,2,3", 1), /header must be HashOwner,HashApp/);
  assert.throws(() => loadAzureCsv(`${header}\no,a,f,http,1,2`, 1), /row 2 has 6 columns, not 7/);
  for (
    const [cell, shown] of [["x", "x"], ["", ""], ["1e3", "1e3"], ["0x10", "0x10"], [" 2", " 2"]]
  ) {
    assert.throws(
      () => loadAzureCsv(`${header}\no,a,f,http,1,${cell},2`, 1),
      new RegExp(`minute 2: "${shown}" is not a count`),
      JSON.stringify(cell),
    );
  }
  // Minutes not numbered 1, 2, ... in order; an empty column after a trailing comma.
  for (const h of ["1,5,3", "1,2,3,", "2,3,4"]) {
    assert.throws(
      () => loadAzureCsv(`HashOwner,HashApp,HashFunction,Trigger,${h}\no,a,f,http,1,2,3`, 1),
      /minutes numbered from 1, in order/,
      h,
    );
  }
  // The same function twice is refused; the same hash of another app's is a function of its own.
  assert.throws(
    () => loadAzureCsv(`${header}\no,a,f,http,1,0,0\no,a,f,http,0,1,0`, 1),
    /row 3 is the function of row 2 again \(o,a,f\)/,
  );
  const two = loadAzureCsv(`${header}\no,a,f,http,1,0,0\no,b,f,http,0,1,0`, 1);
  assert.deepEqual(two.functions.map((f) => f.id), ["f", "f-2"]);
  // A byte-order mark and CRLF line ends, as spreadsheet programs write.
  const bom = loadAzureCsv(`\uFEFF${header}\r\no,a,f,http,1,0,0\r\n`, 1);
  assert.equal(bom.times.length, 1);
});

Deno.test("a trace longer than 38 h keeps every call with its own function", () => {
  // At microseconds, 72 h of times times 65,536 function slots would pass 2^53.
  const hours = 72;
  const t = generateTrace({ functions: 4, seed: 1, durationMs: hours * 3_600_000, maxLog10: 1 });
  assert.ok(t.times.length > 1000, `${t.times.length} calls`);
  const late = new Set<number>();
  for (let i = 0; i < t.times.length; i++) {
    assert.ok(t.func[i] < 4, `call ${i} names function ${t.func[i]}`);
    if (t.times[i] > 40 * 3_600_000) late.add(t.func[i]);
    if (i) assert.ok(t.times[i - 1] <= t.times[i]);
  }
  assert.ok(late.size >= 2, "calls of several functions after 40 h");
  assert.equal(ticksPerMs(24 * 3_600_000), 1000);
  assert.equal(ticksPerMs(hours * 3_600_000), 100);
  assert.throws(() => ticksPerMs(50_000 * 3_600_000), /Cannot build a trace of 50000 h: at most/);
  // The same for a CSV of more minutes than 38 h has.
  const minutes = 3000;
  const csv =
    `HashOwner,HashApp,HashFunction,Trigger,${
      Array.from({ length: minutes }, (_, i) => i + 1).join(",")
    }\n` + ["f0", "f1", "f2"].map((f) => `o,a,${f},http,${Array(minutes).fill(1).join(",")}`)
      .join("\n");
  const c = loadAzureCsv(csv, 1);
  const counts = [0, 0, 0];
  for (let i = 0; i < c.times.length; i++) counts[c.func[i]]++;
  assert.deepEqual(counts, [minutes, minutes, minutes]);
});
