import assert from "node:assert/strict";
import { mainThreadSched } from "./wrk.ts";

const linux = Deno.build.os === "linux";

Deno.test({
  name: "mainThreadSched reads a main thread's time on a core, its waits and preemptions",
  ignore: !linux,
  async fn() {
    const before = await mainThreadSched([Deno.pid]);
    const end = performance.now() + 20;
    while (performance.now() < end) {
      // on a core for a while
    }
    const after = await mainThreadSched([Deno.pid]);
    assert.ok(after.run > before.run, `${after.run} > ${before.run}`);
    assert.ok(before.wait >= 0 && after.wait >= before.wait);
    assert.ok(Number.isInteger(after.preempted) && after.preempted >= before.preempted);
  },
});

Deno.test({
  name: "mainThreadSched sums several processes and counts a gone one as nothing",
  ignore: !linux,
  async fn() {
    const proc = new Deno.Command("sleep", { args: ["0.05"] }).spawn();
    await proc.status;
    assert.deepEqual(await mainThreadSched([proc.pid]), { run: 0, wait: 0, preempted: 0 });
    const one = await mainThreadSched([Deno.pid, proc.pid]);
    const two = await mainThreadSched([Deno.pid, Deno.pid]);
    assert.ok(one.run > 0);
    // The same thread read twice, a moment later: at least twice the first reading.
    assert.ok(two.run >= 2 * one.run, `${two.run} >= 2 * ${one.run}`);
  },
});
