import assert from "node:assert/strict";
import { forEachLimit } from "./limit.ts";

Deno.test("forEachLimit runs each item once, never more than the limit at a time, and refills as one ends", async () => {
  let running = 0;
  let most = 0;
  const done: number[] = [];
  const items = Array.from({ length: 20 }, (_, i) => i);
  await forEachLimit(items, 4, async (i) => {
    running++;
    most = Math.max(most, running);
    // Item 0 is slow: the others must not wait for it batch by batch.
    await new Promise((r) => setTimeout(r, i === 0 ? 60 : 1));
    running--;
    done.push(i);
  });
  assert.equal(most, 4);
  assert.deepEqual([...done].sort((a, b) => a - b), items);
  assert.equal(done.at(-1), 0, "the slow first item ends last");
});

Deno.test("forEachLimit stops starting work at the first failure and rejects with it once the rest settled", async () => {
  const started: number[] = [];
  let settled = 0;
  await assert.rejects(
    forEachLimit(Array.from({ length: 10 }, (_, i) => i), 3, async (i) => {
      started.push(i);
      await new Promise((r) => setTimeout(r, 5));
      settled++;
      if (i === 1) throw new Error("boom 1");
      if (i === 2) throw new Error("boom 2");
    }),
    /boom 1/,
  );
  assert.equal(settled, started.length, "nothing left running");
  assert.ok(started.length <= 4, `started ${started.length}`);
});

Deno.test("forEachLimit with nothing to do, or a limit under one, still works", async () => {
  await forEachLimit([], 8, () => Promise.reject(new Error("never")));
  const seen: string[] = [];
  await forEachLimit(["a", "b"], 0, (s) => Promise.resolve(void seen.push(s)));
  assert.deepEqual(seen, ["a", "b"]);
});
