/**
 * Bytes from streams.
 *
 * @module
 */

/** Reads `body` whole into one array, or undefined once it passes `limit` bytes (read no further). */
export async function readUpTo(
  body: AsyncIterable<Uint8Array> | null,
  limit: number,
): Promise<Uint8Array<ArrayBuffer> | undefined> {
  if (!body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  const out = new Uint8Array(size);
  let o = 0;
  for (const c of chunks) (out.set(c, o), o += c.byteLength);
  return out;
}
