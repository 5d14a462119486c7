import assert from "node:assert/strict";
import { RESTART, restartDelay } from "./_gateway_group.ts";

Deno.test("a member failing at start waits longer each time; one that ran a while comes back at once", () => {
  // Each pause within the backoff's ±20% of its step.
  const near = (ms: number, want: number) => ms >= want * 0.8 && ms <= want * 1.2;
  let last;
  const want = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000];
  for (const w of want) {
    last = restartDelay(last, 200); // dies 200 ms in
    assert.ok(near(last.duration, w), `${last.duration} for ${w}`);
  }
  const again = restartDelay(last, RESTART.maxMs);
  assert.ok(near(again.duration, RESTART.firstMs), "it had run a minute");
});
