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

Deno.test("KeyedLock runs shared work side by side, between exclusive work before and after it", async () => {
  const lock = new KeyedLock();
  const log: string[] = [];
  const job = (shared: boolean, name: string, ms: number) =>
    (shared ? lock.runShared.bind(lock) : lock.run.bind(lock))("k", async () => {
      log.push(`${name}+`);
      await sleep(ms);
      log.push(`${name}-`);
      return name;
    });
  const done = await Promise.all([
    job(false, "x1", 20),
    job(true, "s1", 30),
    job(true, "s2", 10),
    job(false, "x2", 0),
    job(true, "s3", 0),
  ]);
  assert.deepEqual(done, ["x1", "s1", "s2", "x2", "s3"]);
  // s1 and s2 wait for x1 and run together; x2 waits for both; s3 for x2.
  assert.deepEqual(log, ["x1+", "x1-", "s1+", "s2+", "s2-", "s1-", "x2+", "x2-", "s3+", "s3-"]);
  assert.equal(lock.size, 0, "nothing left behind");
  await assert.rejects(lock.runShared("k", () => Promise.reject(new Error("no"))), /no/);
  assert.equal(await lock.run("k", () => Promise.resolve(7)), 7);
  assert.equal(lock.size, 0);
});
