/**
 * Work over many items with a bound on how much of it is in flight.
 *
 * @module
 */

/**
 * Runs `fn` on each of `items`, at most `limit` at a time (a new one starts
 * as soon as one ends, not batch by batch). On the first failure no more
 * start; it rejects with that failure once those in flight have settled.
 */
export async function forEachLimit<T>(
  items: Iterable<T>,
  limit: number,
  fn: (item: T) => Promise<unknown>,
): Promise<void> {
  const it = items[Symbol.iterator]();
  let failed: { err: unknown } | undefined;
  const lane = async () => {
    while (!failed) {
      const next = it.next();
      if (next.done) return;
      try {
        await fn(next.value);
      } catch (err) {
        failed ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, lane));
  if (failed) throw failed.err;
}
