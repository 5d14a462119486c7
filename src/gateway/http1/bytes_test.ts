import assert from "node:assert/strict";
import { copyBytes, SLAB_BYTES } from "./bytes.ts";

Deno.test("copyBytes() copies survive changes to their source and to each other", () => {
  const src = new Uint8Array(100).map((_, i) => i);
  const a = copyBytes(src, 10, 20);
  const b = copyBytes(src, 0, 5);
  src.fill(255);
  assert.deepEqual([...a], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
  assert.deepEqual([...b], [0, 1, 2, 3, 4]);
  b.fill(7);
  assert.deepEqual(a[0], 10);
  assert.deepEqual(copyBytes(src, 3, 3).byteLength, 0);
});

Deno.test("copyBytes() starts a new slab when one is full, and copies large ranges whole", () => {
  const src = new Uint8Array(4096).fill(1);
  const first = copyBytes(src, 0, 4096);
  const copies = [first];
  for (let i = 0; i < SLAB_BYTES / 4096 + 1; i++) copies.push(copyBytes(src, 0, 4096));
  assert.notStrictEqual(copies[0].buffer, copies.at(-1)!.buffer);
  for (const c of copies) assert.deepEqual(c.every((x) => x === 1), true);
  const big = copyBytes(new Uint8Array(10_000).fill(2), 0, 10_000);
  assert.deepEqual(big.byteLength, 10_000);
  assert.deepEqual(big.buffer.byteLength, 10_000);
});
