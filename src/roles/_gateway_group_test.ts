import assert from "node:assert/strict";
import { gatewayProcesses, RESTART, restartDelay } from "./_gateway_group.ts";

Deno.test("a member failing at start waits longer each time; one that ran a while comes back at once", () => {
  // Each pause within the backoff's ±20% of its step.
  const near = (ms: number, want: number) => ms >= want * 0.8 && ms <= want * 1.2;
  let last;
  const want = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000];
  for (const w of want) {
    last = restartDelay(last, 200); // dies 200 ms in
    assert.ok(near(last.duration, w), `${last.duration} for ${w}`);
  }
  const again = restartDelay(last, RESTART.startedMs);
  assert.ok(near(again.duration, RESTART.firstMs), "it had got past its start");
  // One that crashes after running a while, again and again: the first pause each time.
  for (let i = 0, d = again; i < 3; i++) {
    d = restartDelay(d, 25_000);
    assert.ok(near(d.duration, RESTART.firstMs), `crash ${i + 2}: ${d.duration} ms`);
  }
});

Deno.test("a Gateway role runs GATEWAY_WORKERS processes, else the core count, else one on port 0", () => {
  assert.equal(gatewayProcesses(3, 4000), 3);
  assert.equal(gatewayProcesses(undefined, 4000), navigator.hardwareConcurrency);
  // A port the system picks is one process's: others would each get one of their own.
  assert.equal(gatewayProcesses(undefined, 0), 1);
});
