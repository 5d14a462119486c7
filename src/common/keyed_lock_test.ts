import assert from "node:assert/strict";
import { KeyedLock } from "./keyed_lock.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("KeyedLock runs work one at a time per key, in order, and keys apart at once", async () => {
  const lock = new KeyedLock();
  const log: string[] = [];
  const job = (key: string, name: string, ms: number) =>
    lock.run(key, async () => {
      log.push(`${name}+`);
      await sleep(ms);
      log.push(`${name}-`);
      return name;
    });
  const done = await Promise.all([job("a", "a1", 30), job("a", "a2", 0), job("b", "b1", 10)]);
  assert.deepEqual(done, ["a1", "a2", "b1"]);
  assert.deepEqual(log, ["a1+", "b1+", "b1-", "a1-", "a2+", "a2-"]);
  assert.equal(lock.size, 0, "nothing left behind");
});

Deno.test("KeyedLock goes on after work that fails", async () => {
  const lock = new KeyedLock();
  await assert.rejects(lock.run("k", () => Promise.reject(new Error("no"))), /no/);
  assert.equal(await lock.run("k", () => Promise.resolve(7)), 7);
  assert.equal(lock.size, 0);
});
