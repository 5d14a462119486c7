import assert from "node:assert/strict";
import { concatBytes, copyBytes, headText, latin1Into, restOf, SLAB_BYTES } from "./bytes.ts";

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

Deno.test("latin1Into() writes one byte a character, `?` past U+00FF, and nothing outside its range", () => {
  const out = new Uint8Array(16).fill(0xee);
  latin1Into("ab:1", out, 2);
  assert.deepEqual([...out.subarray(0, 8)], [0xee, 0xee, 97, 98, 58, 49, 0xee, 0xee]);
  out.fill(0xee);
  latin1Into("é\u00ff€x", out, 3); // U+00E9 and U+00FF are Latin-1; the euro sign is not
  assert.deepEqual([...out.subarray(0, 9)], [0xee, 0xee, 0xee, 0xe9, 0xff, 63, 120, 0xee, 0xee]);
  out.fill(0xee);
  latin1Into("a\ud83d\ude00", out, 0); // a character outside the BMP: two `?`
  assert.deepEqual([...out.subarray(0, 4)], [97, 63, 63, 0xee]);
});

Deno.test("latin1Into() writes long heads natively and falls back for other characters", () => {
  const out = new Uint8Array(128).fill(0xee);
  const long = "x-field: " + "a".repeat(91);
  latin1Into(long, out, 10);
  assert.equal(new TextDecoder().decode(out.subarray(10, 110)), long);
  assert.deepEqual([out[9], out[110]], [0xee, 0xee]);
  latin1Into("é".repeat(70), out, 0);
  assert.deepEqual([...out.subarray(0, 70)], Array(70).fill(0xe9));
});

Deno.test("headText() reads one character a byte, so offsets in the bytes are offsets in the text", () => {
  const ascii = new TextEncoder().encode("xxGET / HTTP/1.1\r\nHost: h\r\n");
  assert.equal(headText(ascii, 2, ascii.length), "GET / HTTP/1.1\r\nHost: h\r\n");
  // Valid UTF-8 (two bytes a character), an invalid byte, windows-1252's range, U+FFFD's bytes.
  for (
    const bytes of [
      new TextEncoder().encode("X-A: \u00e9\u00e9\r\nX-B: hello"),
      Uint8Array.of(0x41, 0xff, 0x42),
      Uint8Array.of(0x80, 0x81, 0x9f, 0xa0),
      Uint8Array.of(0xef, 0xbf, 0xbd, 0x20),
    ]
  ) {
    const text = headText(bytes, 0, bytes.length);
    assert.equal(text.length, bytes.length);
    assert.deepEqual([...text].map((c) => c.charCodeAt(0)), [...bytes]);
    const back = new Uint8Array(bytes.length);
    latin1Into(text, back, 0);
    assert.deepEqual(back, bytes);
  }
  // Longer than one pass of the byte loop.
  const long = new Uint8Array(10_000).map((_, i) => 0x80 + (i % 128));
  assert.deepEqual([...headText(long, 1, long.length)].map((c) => c.charCodeAt(0)), [
    ...long.subarray(1),
  ]);
});

Deno.test("restOf() is the buffer itself at 0, a view of the rest past it", () => {
  const buf = new Uint8Array(8).map((_, i) => i);
  assert.equal(restOf(buf, 0), buf);
  assert.deepEqual([...restOf(buf, 6)], [6, 7]);
  assert.equal(restOf(buf, 6).buffer, buf.buffer);
});

Deno.test("concatBytes() joins parts in one array, with a separator between them when given", () => {
  const a = Uint8Array.of(1, 2);
  assert.equal(concatBytes([a]), a, "one part is itself");
  assert.deepEqual([...concatBytes([a, Uint8Array.of(3), new Uint8Array(0)])], [1, 2, 3]);
  assert.deepEqual([...concatBytes([a, Uint8Array.of(3)], 10)], [1, 2, 10, 3]);
  assert.equal(concatBytes([]).byteLength, 0);
});
