/**
 * Profiles of this process, for finding where a role's time or memory goes
 * under a benchmark: V8's sampling CPU profiler (`INFERX_CPU_PROFILE=FILE`,
 * a `.cpuprofile`) and its sampling heap profiler (`INFERX_HEAP_PROFILE=FILE`,
 * a `.heapprofile`: every allocation sampled, those collected since
 * included), both in Chrome DevTools' formats, taken through
 * `node:inspector` from the role's start to its stop.
 * `deno run -A bench/profile_summary.ts FILE` sums either by function and
 * file. Sampling costs some CPU of its own.
 *
 * @module
 */
import { Session } from "node:inspector";

/** Stops a profile and writes it. */
export type StopProfile = () => Promise<void>;

function session(): {
  post: <T>(method: string, params?: Record<string, unknown>) => Promise<T>;
  end(): void;
} {
  const s = new Session();
  s.connect();
  return {
    post: <T>(method: string, params: Record<string, unknown> = {}) =>
      new Promise<T>((resolve, reject) =>
        s.post(method, params, (err, result) => err ? reject(err) : resolve(result as T))
      ),
    end: () => s.disconnect(),
  };
}

/** Throws now when `path` cannot be written, rather than at the stop, with the run's profile. */
async function writable(path: string): Promise<void> {
  await Deno.writeTextFile(path, "");
}

/** Starts the CPU profiler; what it returns stops it and writes the profile to `path`. */
export async function startCpuProfile(path: string, intervalUs = 100): Promise<StopProfile> {
  await writable(path);
  const s = session();
  await s.post("Profiler.enable");
  await s.post("Profiler.setSamplingInterval", { interval: intervalUs });
  await s.post("Profiler.start");
  return async () => {
    const { profile } = await s.post<{ profile: unknown }>("Profiler.stop");
    s.end();
    await Deno.writeTextFile(path, JSON.stringify(profile));
  };
}

/**
 * Starts the heap profiler, sampling an allocation every `intervalBytes` on
 * average; what it returns stops it and writes the profile to `path`.
 */
export async function startHeapProfile(path: string, intervalBytes = 1024): Promise<StopProfile> {
  await writable(path);
  const s = session();
  await s.post("HeapProfiler.enable");
  await s.post("HeapProfiler.startSampling", {
    samplingInterval: intervalBytes,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
  return async () => {
    const { profile } = await s.post<{ profile: unknown }>("HeapProfiler.stopSampling");
    s.end();
    await Deno.writeTextFile(path, JSON.stringify(profile));
  };
}
