/**
 * How long the event loop was held while some work ran: the benchmarks that
 * ask what a piece of work costs every other call a process serves.
 *
 * @module
 */

/**
 * Runs `work`, timing it and the longest gap between the ticks of a 1 ms
 * timer meanwhile (the event loop's longest turn), its end included.
 */
export async function measure(
  work: () => unknown,
): Promise<{ ms: number; stallMs: number }> {
  let last = performance.now();
  let stall = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    stall = Math.max(stall, now - last);
    last = now;
  }, 1);
  const t0 = performance.now();
  await work();
  const ms = performance.now() - t0;
  stall = Math.max(stall, performance.now() - last);
  clearInterval(timer);
  return { ms, stallMs: stall };
}
