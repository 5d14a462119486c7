import assert from "node:assert/strict";
import { RESTART, restartDelay } from "./_gateway_group.ts";

Deno.test("a member failing at start waits longer each time; one that ran a while comes back at once", () => {
  let last = 0;
  const waits: number[] = [];
  for (let i = 0; i < 9; i++) waits.push(last = restartDelay(last, 200)); // dies 200 ms in
  assert.deepEqual(waits, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
  assert.equal(restartDelay(last, RESTART.maxMs), RESTART.firstMs, "it had run a minute");
});
