import assert from "node:assert/strict";
import { ReadAhead, ReadAheadBudget } from "./read_ahead.ts";

/** A source of `n` pieces of `size` bytes (piece i filled with i), counting its reads. */
function source(n: number, size: number) {
  let i = 0;
  const s = {
    reads: 0,
    fail: undefined as Error | undefined,
    read: () => {
      s.reads++;
      if (s.fail && i === n) return Promise.reject(s.fail);
      return Promise.resolve(i < n ? new Uint8Array(size).fill(++i) : null);
    },
  };
  return s;
}

const settle = () => new Promise((r) => setTimeout(r, 0));

Deno.test("an answer that fits is read whole ahead of its caller, and then ends", async () => {
  const src = source(4, 1000);
  const budget = new ReadAheadBudget(1 << 20);
  let ended = 0;
  const ahead = new ReadAhead(src.read, budget, () => ended++, 10_000);
  await settle();
  assert.equal(ended, 1, "the worker's answer was read to its end with no caller reading");
  assert.equal(ahead.queued, 4000);
  assert.equal(budget.held, 4000);
  const got: number[] = [];
  for (let c; (c = await ahead.read()) !== null;) got.push(c[0]);
  assert.deepEqual(got, [1, 2, 3, 4], "in order, whole");
  assert.equal(budget.held, 0, "all of it given back");
  assert.equal(ended, 1);
});

Deno.test("a call reads no further ahead than its share, then as its caller takes it", async () => {
  const src = source(10, 1000);
  const budget = new ReadAheadBudget(1 << 20);
  let ended = false;
  const ahead = new ReadAhead(src.read, budget, () => ended = true, 2500);
  await settle();
  assert.equal(ahead.queued, 3000, "up to its share (the last piece may pass it)");
  assert.equal(ended, false);
  assert.equal((await ahead.read())![0], 1);
  await settle();
  assert.equal(ahead.queued, 3000, "one more read for the one taken");
  while (await ahead.read() !== null);
  assert.equal(ended, true);
  assert.equal(budget.held, 0);
});

Deno.test("past the gateway's budget a call reads only as its caller takes it, never less", async () => {
  const budget = new ReadAheadBudget(1500);
  const a = source(10, 1000);
  const b = source(10, 1000);
  const first = new ReadAhead(a.read, budget, () => {}, 10_000);
  await settle();
  assert.equal(first.queued, 2000, "the budget holds two pieces at most (the last past it)");
  const second = new ReadAhead(b.read, budget, () => {}, 10_000);
  await settle();
  assert.equal(second.queued, 1000, "none left: one piece, read for the caller waiting on it");
  // Its caller still gets every piece, one by one, as without reading ahead.
  const got: number[] = [];
  for (let i = 0; i < 3; i++) got.push((await second.read())![0]);
  assert.deepEqual(got, [1, 2, 3]);
  // The first caller takes what it held: the budget frees, and the second reads ahead again.
  await first.read();
  await first.read();
  first.stop();
  await settle();
  assert.ok(second.queued >= 1000, `read ahead again (${second.queued})`);
  second.stop();
  assert.equal(budget.held, 0, "stopping gives back what was held");
});

Deno.test("a source that fails: the worker is done at once; what came before is handed out, then the error; a stop is quiet", async () => {
  const src = source(2, 10);
  src.fail = new Error("broke off");
  const budget = new ReadAheadBudget(1 << 20);
  let ended = false;
  const ahead = new ReadAhead(src.read, budget, () => ended = true);
  await settle();
  assert.equal(ended, true, "the worker that broke off is done with it before its caller reads");
  assert.equal(ahead.ended, false, "an answer broken off did not end");
  assert.equal((await ahead.read())![0], 1);
  assert.equal((await ahead.read())![0], 2);
  await assert.rejects(ahead.read(), /broke off/);
  assert.equal(budget.held, 0);
  ended = false;

  // Stopped while a read is under way: that read's end or failure goes nowhere.
  let reject!: (e: Error) => void;
  const hanging = new ReadAhead(
    () => new Promise((_, r) => reject = r),
    budget,
    () => ended = true,
  );
  const waiting = hanging.read();
  hanging.stop();
  await assert.rejects(waiting, /given up/, "the caller waiting learns it, never as an end");
  reject(new Error("closed"));
  await settle();
  await assert.rejects(hanging.read(), /given up/);
  assert.equal(ended, false);
});

Deno.test("calls that wait for the budget leave no waiter behind", async () => {
  const budget = new ReadAheadBudget(1000);
  const holder = new ReadAhead(source(5, 1000).read, budget, () => {}, 10_000);
  await settle();
  const waiters = Array.from({ length: 20 }, () => {
    const a = new ReadAhead(source(5, 1000).read, budget, () => {}, 10_000);
    return a;
  });
  await settle();
  for (const a of waiters) a.stop();
  holder.stop();
  await settle();
  assert.equal(budget.held, 0);
  assert.equal(budget.waiting, 0, "no wake-up kept for a call that stopped");
});

/** Reads `ahead` to its end; every byte must be its piece's number (pieces of `size`, from 1). */
async function readAll(ahead: ReadAhead, size: number): Promise<number> {
  let at = 0;
  for (let c; (c = await ahead.read()) !== null;) {
    for (let i = 0; i < c.byteLength; i++) {
      if (c[i] !== Math.floor((at + i) / size) + 1) {
        assert.fail(`byte ${at + i} is ${c[i]}, not ${Math.floor((at + i) / size) + 1}`);
      }
    }
    at += c.byteLength;
  }
  return at;
}

/** Waits (a settled turn at a time, bounded) until `ok`. */
async function until(what: string, ok: () => boolean) {
  for (let i = 0; !ok(); i++) {
    if (i > 2000) assert.fail(`never: ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Runs `test` with a spill directory of its own, removed after. */
async function inSpillDir(test: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "inferx-spill-test-" });
  try {
    await test(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Nothing held, in memory or on disk. */
function assertAllBack(budget: ReadAheadBudget): void {
  assert.equal(budget.held, 0, "memory given back");
  assert.equal(budget.spilled, 0, "disk given back");
}

async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out;
}

Deno.test("past its share in memory an answer goes to disk: it is read to its end before its caller reads, and comes back whole, in order", async () => {
  await inSpillDir(async (dir) => {
    const budget = new ReadAheadBudget(1 << 20, { dir, limit: 1 << 20 });
    let ended = false;
    const ahead = new ReadAhead(source(50, 1000).read, budget, () => ended = true, 2500);
    await until("the worker's answer read whole", () => ended);
    assert.equal(ahead.queued, 3000, "memory holds its share");
    assert.equal(ahead.spilled, 47_000, "the rest is on disk");
    assert.equal(budget.spilled, 47_000);
    assert.deepEqual(await entries(dir), [], "the spill file is unlinked once open");
    assert.equal(await readAll(ahead, 1000), 50_000);
    assert.equal(budget.held, 0);
    assert.equal(budget.spilled, 0, "the file given back at the end");
  });
});

Deno.test("past the disk's limits a call reads as its caller takes it; a file the caller caught up with is emptied, and nothing is lost", async () => {
  await inSpillDir(async (dir) => {
    const budget = new ReadAheadBudget(1 << 20, { dir, limit: 1 << 20, perCall: 4000 });
    let ended = false;
    const ahead = new ReadAhead(source(30, 1000).read, budget, () => ended = true, 2000);
    await settle();
    await until("the disk's share taken", () => ahead.spilled === 4000);
    await settle();
    assert.equal(ended, false, "30 pieces are more than memory's 2 and the disk's 4 hold");
    assert.ok(budget.spilled <= 4000, `${budget.spilled}`);
    let most = 0;
    const watch = setInterval(() => most = Math.max(most, budget.spilled), 0);
    try {
      assert.equal(await readAll(ahead, 1000), 30_000, "memory, disk and memory again, in order");
    } finally {
      clearInterval(watch);
    }
    assert.ok(most <= 4000, `the call's file never grew past its share: ${most}`);
    assert.equal(ended, true);
    assertAllBack(budget);
  });
});

Deno.test("the gateway's disk budget is shared: a call past it holds what memory allows", async () => {
  await inSpillDir(async (dir) => {
    const budget = new ReadAheadBudget(1 << 20, { dir, limit: 5000 });
    const first = new ReadAhead(source(20, 1000).read, budget, () => {}, 1000);
    await until("the first call's spill", () => budget.spilled === 5000);
    const second = new ReadAhead(source(20, 1000).read, budget, () => {}, 1000);
    await settle();
    await settle();
    assert.equal(second.spilled, 0, "no disk left for it");
    assert.equal(second.queued, 1000);
    first.stop();
    assert.equal(budget.spilled, 0, "a stopped call gives its file back at once");
    await until("the second call's spill", () => second.spilled === 5000);
    await assert.rejects(first.read(), /given up/);
    assert.equal(await readAll(second, 1000), 20_000);
    assertAllBack(budget);
  });
});

Deno.test("a disk that fails the spill: the answer is held in memory as without one, nothing lost", async () => {
  await inSpillDir(async (dir) => {
    const notADir = `${dir}/file`;
    await Deno.writeTextFile(notADir, "");
    const budget = new ReadAheadBudget(1 << 20, { dir: notADir, limit: 1 << 20 });
    let ended = false;
    const ahead = new ReadAhead(source(10, 1000).read, budget, () => ended = true, 2500);
    await settle();
    await settle();
    assert.equal(ahead.spilled, 0);
    assert.equal(ahead.queued, 4000, "its share in memory, and the piece the disk refused");
    assert.equal(ended, false);
    assert.equal(await readAll(ahead, 1000), 10_000);
    assertAllBack(budget);
  });
});

Deno.test("a file the caller caught up with is closed at once, its room given back while the answer goes on", async () => {
  await inSpillDir(async (dir) => {
    const budget = new ReadAheadBudget(1 << 20, { dir, limit: 6000 });
    // A burst of 8 pieces, then one at a time as the test lets them come.
    let i = 0;
    let more!: () => void;
    const a = new ReadAhead(
      async () => {
        if (i >= 8) await new Promise<void>((r) => more = r);
        return i < 60 ? new Uint8Array(1000).fill(++i) : null;
      },
      budget,
      () => {},
      2000,
    );
    await until("the burst spilled", () => a.spilled === 6000);
    assert.equal(budget.spilled, 6000);
    // The caller catches up with what was spilled (and what memory holds after it).
    for (let n = 0; n < 8000;) n += (await a.read())!.byteLength;
    assert.equal(a.spilled, 0);
    assert.equal(
      budget.spilled,
      0,
      "caught up: the file's room is given back before it grows again",
    );
    // Another call may now spill all of it.
    const b = new ReadAhead(source(10, 1000).read, budget, () => {}, 1000);
    await until("the other call's spill", () => b.spilled === 6000);
    // The first one's answer goes on, in memory as its caller keeps up, and ends whole.
    const rest = (async () => {
      let got = 0;
      for (let c; (c = await a.read()) !== null;) got += c.byteLength;
      return got;
    })();
    while (i < 60) {
      more();
      await settle();
    }
    more();
    assert.equal(await rest, 52_000);
    assert.equal(await readAll(b, 1000), 10_000);
    assertAllBack(budget);
  });
});

Deno.test("calls spilling at once never pass the disk's limit together", async () => {
  await inSpillDir(async (dir) => {
    const budget = new ReadAheadBudget(1, { dir, limit: 100_000 });
    // Ten calls, each with a first piece for memory and more: their first spills begin together.
    const calls = Array.from(
      { length: 10 },
      () => new ReadAhead(source(5, 60_000).read, budget, () => {}, 1),
    );
    let most = 0;
    const watch = setInterval(() => most = Math.max(most, budget.spilled), 0);
    try {
      await until("one call's spill", () => calls.some((c) => c.spilled > 0));
      for (let k = 0; k < 20; k++) await settle();
    } finally {
      clearInterval(watch);
    }
    assert.ok(most <= 100_000, `at most the limit on disk: ${most}`);
    assert.equal(calls.filter((c) => c.spilled > 0).length, 1, "one piece of 60 KB fits in 100 KB");
    for (const c of calls) c.stop();
    assertAllBack(budget);
    assert.equal(budget.waiting, 0);
  });
});

Deno.test("calls held back by their own share wait for their callers, not on the budget", async () => {
  await inSpillDir(async (dir) => {
    // Room in the budget, none in each call's share (memory and disk).
    const budget = new ReadAheadBudget(1 << 30, { dir, limit: 1 << 30, perCall: 1000 });
    const calls = Array.from(
      { length: 50 },
      () => new ReadAhead(source(10, 1000).read, budget, () => {}, 1000),
    );
    await until(
      "every call's share taken",
      () => calls.every((c) => c.queued === 1000 && c.spilled === 1000),
    );
    assert.equal(budget.waiting, 0, "none is woken by every other call's reads");
    // Each still goes on as its own caller reads.
    for (const c of calls) assert.equal(await readAll(c, 1000), 10_000);
    assertAllBack(budget);
  });
});
