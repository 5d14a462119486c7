import assert from "node:assert/strict";
import { encode } from "fast-png";
import { pixelStats } from "./browser.ts";

Deno.test("pixelStats() tells a blank screenshot from one that shows something", () => {
  const width = 64, height = 32;
  const blank = new Uint8Array(width * height * 3).fill(246);
  const drawn = blank.slice();
  for (let i = 0; i < width * height; i++) {
    if (i % width < 20) drawn.set([52 + (i % 7) * 20, 86, 209], i * 3);
    if (Math.floor(i / width) % 8 === 0) drawn.set([28, 35, 48], i * 3);
  }
  const s0 = pixelStats(encode({ width, height, data: blank, channels: 3 }));
  assert.deepEqual(s0, { stddev: 0, colors: 1 });
  const s1 = pixelStats(encode({ width, height, data: drawn, channels: 3 }));
  assert.ok(s1.stddev > 8, `stddev ${s1.stddev}`);
  assert.equal(s1.colors, 9);
});
