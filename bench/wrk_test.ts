import assert from "node:assert/strict";
import { childPids, mainThreadSched } from "./wrk.ts";

const linux = Deno.build.os === "linux";

Deno.test({
  name: "mainThreadSched reads a main thread's time on a core, its waits and preemptions",
  ignore: !linux,
  async fn() {
    // A process on a core all the time; the kernel adds a running thread's time at its ticks
    // and switches, so it is read until the reading moves (a thread reading its own is stale).
    const busy = new Deno.Command("sh", { args: ["-c", "while :; do :; done"] }).spawn();
    try {
      const before = await mainThreadSched([busy.pid]);
      let after = before;
      for (const end = Date.now() + 10_000; after.run <= before.run && Date.now() < end;) {
        await new Promise((r) => setTimeout(r, 20));
        after = await mainThreadSched([busy.pid]);
      }
      assert.ok(after.run > before.run, `${after.run} > ${before.run}`);
      assert.ok(before.wait >= 0 && after.wait >= before.wait);
      assert.ok(Number.isInteger(after.preempted) && after.preempted >= before.preempted);
    } finally {
      busy.kill("SIGKILL");
      await busy.status;
    }
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

Deno.test({
  name: "childPids finds a process's children",
  ignore: !linux,
  async fn() {
    const parent = new Deno.Command("sh", { args: ["-c", "sleep 30 & sleep 30 & wait"] }).spawn();
    let kids: number[] = [];
    try {
      for (const end = Date.now() + 10_000; kids.length < 2 && Date.now() < end;) {
        await new Promise((r) => setTimeout(r, 20));
        kids = await childPids(parent.pid);
      }
      assert.equal(kids.length, 2);
      for (const pid of kids) {
        assert.match(await Deno.readTextFile(`/proc/${pid}/comm`), /^sleep/);
      }
      assert.deepEqual(await childPids(2 ** 22 + 1), []); // no such process
    } finally {
      // The children first, so that the shell's `wait` reaps them and it ends.
      for (const pid of kids) Deno.kill(pid, "SIGKILL");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ended = await Promise.race([
        parent.status.then(() => true),
        new Promise<false>((r) => timer = setTimeout(() => r(false), 2000)),
      ]);
      clearTimeout(timer);
      if (!ended) parent.kill("SIGKILL");
      await parent.status;
    }
  },
});
