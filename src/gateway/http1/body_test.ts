import assert from "node:assert/strict";
import { BodiesBusy, BodyBudget, BodyTooLarge } from "./body.ts";

async function* pieces(...sizes: number[]): AsyncGenerator<Uint8Array> {
  for (const n of sizes) {
    await Promise.resolve();
    yield new Uint8Array(n).fill(7);
  }
}

Deno.test("BodyBudget holds a body's bytes while it arrives, and gives them back at its end", async () => {
  const budget = new BodyBudget(100);
  let seen = 0;
  const watched = async function* () {
    for await (const c of pieces(30, 30, 30)) {
      yield c;
      seen = Math.max(seen, budget.held);
    }
  };
  const body = await budget.readAll(watched(), 1000);
  assert.equal(body.byteLength, 90);
  assert.equal(seen, 90, "held as it came");
  assert.equal(budget.held, 0);
});

Deno.test("BodyBudget refuses a body that would take it past its limit, 413 past the body's own", async () => {
  const budget = new BodyBudget(100);
  // One body arriving slowly holds 60 bytes...
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const slow = budget.readAll(
    (async function* () {
      yield new Uint8Array(60);
      await gate;
      yield new Uint8Array(10);
    })(),
    1000,
  );
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(budget.held, 60);
  // ...so another of 50 does not fit: refused, what it took given back.
  const err = await budget.readAll(pieces(25, 25), 1000).then(() => assert.fail("read"), (e) => e);
  assert.ok(err instanceof BodiesBusy);
  assert.equal(err.code, "unavailable");
  assert.equal(budget.held, 60);
  await assert.rejects(budget.readAll(pieces(20, 20), 30), BodyTooLarge);
  assert.equal(budget.held, 60);
  release();
  assert.equal((await slow).byteLength, 70);
  assert.equal(budget.held, 0);
  // Room again.
  assert.equal((await budget.readAll(pieces(25, 25), 1000)).byteLength, 50);
});
