/**
 * A fixed-concurrency, fixed-duration HTTP load for the gateway benchmarks:
 * keep-alive `fetch` POSTs of one JSON body.
 *
 * @module
 */

/** Throughput and latency of one load run. */
export interface LoadResult {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

/** POSTs `body` to `url` from `concurrency` loops for `seconds`. */
export async function load(
  url: string,
  seconds: number,
  concurrency: number,
  body: string,
): Promise<LoadResult> {
  const lat: number[] = [];
  let errors = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body,
        });
        await res.arrayBuffer();
        if (res.ok) lat.push(performance.now() - t0);
        else errors++;
      } catch {
        errors++;
      }
    }
  }));
  lat.sort((a, b) => a - b);
  return {
    rps: lat.length / seconds,
    p50: lat[Math.floor(lat.length / 2)],
    p99: lat[Math.floor(lat.length * 0.99)],
    errors,
  };
}
