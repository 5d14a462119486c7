import assert from "node:assert/strict";
import { Counter, Histogram, Registry } from "prom-client";
import { GroupMetrics, type MetricsJson } from "./group.ts";

/** A member's registry: a counter and a histogram it can add to or lose (a restart). */
function member() {
  let registry = new Registry();
  let calls: Counter;
  let seconds: Histogram;
  const make = () => {
    registry = new Registry();
    calls = new Counter({ name: "calls_total", help: "c", registers: [registry] });
    seconds = new Histogram({
      name: "call_seconds",
      help: "s",
      buckets: [1],
      registers: [registry],
    });
  };
  make();
  return {
    add(n: number) {
      calls.inc(n);
      for (let i = 0; i < n; i++) seconds.observe(0.5);
    },
    restart: make,
    json: () => registry.getMetricsAsJSON() as Promise<MetricsJson>,
    get registry() {
      return registry;
    },
  };
}

async function total(group: GroupMetrics, local: Registry) {
  const text = await (await group.registry(local)).metrics();
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
  return [value("calls_total"), value("call_seconds_count")];
}

Deno.test("the group's counters never go down: a member slow to answer, or restarted, counts what it had", async () => {
  const here = member();
  const other = member();
  let down = false;
  const group = new GroupMetrics(
    { index: 0, ports: [1, 2] },
    () => down ? Promise.reject(new Error("slow")) : other.json(),
  );
  here.add(100);
  other.add(100);
  assert.deepEqual(await total(group, here.registry), [200, 200]);
  down = true; // the other member misses a scrape: its last answer counts
  here.add(1);
  assert.deepEqual(await total(group, here.registry), [201, 201]);
  down = false;
  other.add(1);
  assert.deepEqual(await total(group, here.registry), [202, 202]);
  other.restart(); // back at 0: what it had counted is carried
  other.add(3);
  assert.deepEqual(await total(group, here.registry), [205, 205]);
});
