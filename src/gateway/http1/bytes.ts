/**
 * Copies of small byte ranges, cut from shared slabs. A new `ArrayBuffer`
 * costs about 1.3 µs in Deno whatever its size (its backing store is
 * allocated and accounted for outside the JavaScript heap), more than
 * parsing the request it holds; a body copied out of a connection's read
 * buffer on every call paid it twice per proxied request. A slab is never
 * written twice, so a copy stays valid for as long as it is referenced
 * (and keeps its slab alive: at most {@linkcode SLAB_BYTES} per copy held).
 *
 * @module
 */

/** Size of one slab. */
export const SLAB_BYTES = 64 * 1024;
/** Copies larger than this get their own buffer (their size outweighs the allocation). */
const SMALL = 4 * 1024;

let slab = new Uint8Array(SLAB_BYTES);
let used = 0;

/** A copy of `src[start, end)` that nothing else writes to. */
export function copyBytes(src: Uint8Array, start: number, end: number): Uint8Array<ArrayBuffer> {
  const n = end - start;
  if (n > SMALL) return src.slice(start, end) as Uint8Array<ArrayBuffer>;
  if (used + n > SLAB_BYTES) {
    slab = new Uint8Array(SLAB_BYTES);
    used = 0;
  }
  const out = slab.subarray(used, used + n);
  out.set(src.subarray(start, end));
  used += n;
  return out;
}

const UTF8 = new TextEncoder();
/** Shorter strings (a chunk's size line) go by the loop: the native call costs more than they do. */
const NATIVE_FROM = 64;

/**
 * Writes `s` into `out` at `at` as Latin-1, the bytes of HTTP heads: one
 * byte a character, `?` for any past U+00FF. `out` must have room for
 * `s.length` bytes there. For a head, the native UTF-8 encoder writes the
 * same bytes when every character is ASCII, several times faster than a
 * loop over the characters; any other character makes it stop short, and
 * the loop writes the string again.
 */
export function latin1Into(s: string, out: Uint8Array, at: number): void {
  if (s.length >= NATIVE_FROM) {
    const r = UTF8.encodeInto(s, out.subarray(at, at + s.length));
    if (r.read === s.length && r.written === s.length) return;
  }
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out[at + i] = c < 256 ? c : 63;
  }
}

const UTF8_DECODER = new TextDecoder();
const REPLACEMENT = "\uFFFD";

/**
 * `bytes[start, end)` as a string of one character per byte (ISO-8859-1),
 * the way HTTP heads are read: a field's offsets in the bytes are its
 * offsets in the string, and {@linkcode latin1Into} writes the same bytes
 * back. The native UTF-8 decoder reads an all-ASCII head (nearly every one)
 * several times faster than a loop; it yields exactly one character a byte
 * and no replacement character only when every byte is ASCII (a valid
 * multi-byte sequence gives fewer characters, an invalid byte U+FFFD), and
 * anything else is read again byte by byte. (`TextDecoder("latin1")` is
 * windows-1252: it maps 0x80–0x9F elsewhere.)
 */
export function headText(bytes: Uint8Array, start: number, end: number): string {
  const text = UTF8_DECODER.decode(bytes.subarray(start, end));
  if (text.length === end - start && !text.includes(REPLACEMENT)) return text;
  let out = "";
  for (let i = start; i < end; i += 4096) {
    out += String.fromCharCode(...bytes.subarray(i, Math.min(end, i + 4096)));
  }
  return out;
}

/** `buf` from `at` on, for a read into it: the buffer itself at 0 (a view costs ~0.1 µs). */
export function restOf(buf: Uint8Array, at: number): Uint8Array {
  return at ? buf.subarray(at) : buf;
}

/**
 * `parts` in one array, `sep` between them when given: one pass, whatever
 * their number (the one part itself when there is one).
 */
export function concatBytes(parts: readonly Uint8Array[], sep?: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  let size = sep === undefined ? 0 : Math.max(0, parts.length - 1);
  for (const p of parts) size += p.byteLength;
  const out = new Uint8Array(size);
  let o = 0;
  for (let i = 0; i < parts.length; i++) {
    if (i && sep !== undefined) out[o++] = sep;
    out.set(parts[i], o);
    o += parts[i].byteLength;
  }
  return out;
}

/**
 * Where the value of the field at `ranges[i]` (name start, name end, value
 * start, value end: llhttp's spans) ends without the spaces and tabs after
 * it, which are no part of it (RFC 9112 §5: `Host: a  ` is `a`). llhttp
 * skips those before a value, not those after.
 */
export function valueEnd(bytes: Uint8Array, ranges: ArrayLike<number>, i: number): number {
  const start = ranges[i + 2];
  let end = ranges[i + 3];
  while (end > start && (bytes[end - 1] === 32 || bytes[end - 1] === 9)) end--;
  return end;
}
