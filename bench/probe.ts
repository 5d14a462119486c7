/**
 * The probe the benchmarks of large bodies share: small synchronous calls
 * of a warm function, one after another, whose latencies tell what other
 * work cost every other caller.
 *
 * @module
 */

/** A running probe: the latencies so far (ms), and how to stop it. */
export interface Probe {
  ms: number[];
  stop(): Promise<void>;
}

/** POSTs `body` to `url` one call at a time until `stop()`; each must answer 200. */
export function probeCalls(url: string, body: string): Probe {
  const ms: number[] = [];
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const t = performance.now();
      const r = await fetch(url, { method: "POST", body });
      await r.arrayBuffer();
      if (r.status !== 200) throw new Error(`probe call: ${r.status}`);
      ms.push(performance.now() - t);
    }
  })();
  return { ms, stop: async () => (stopped = true, await done) };
}

/** The `at` quantile (0 to 1) of `ms`. */
export function quantile(ms: number[], at: number): number {
  const s = [...ms].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(at * s.length))];
}
