/**
 * A CPU profile of this process (`INFERX_CPU_PROFILE=FILE`): V8's sampling
 * profiler, started with the role and written as a `.cpuprofile` (Chrome
 * DevTools' format; `deno run -A bench/profile_summary.ts FILE` sums it by
 * function) when the role stops. For finding where a role's time goes under
 * a benchmark; sampling costs some CPU of its own.
 *
 * @module
 */
import { Session } from "node:inspector";

/** Starts profiling; the function it returns stops and writes the profile to `path`. */
export async function startCpuProfile(
  path: string,
  intervalUs = 100,
): Promise<() => Promise<void>> {
  const session = new Session();
  session.connect();
  const post = <T>(method: string, params: Record<string, unknown> = {}) =>
    new Promise<T>((resolve, reject) =>
      session.post(method, params, (err, result) => err ? reject(err) : resolve(result as T))
    );
  await post("Profiler.enable");
  await post("Profiler.setSamplingInterval", { interval: intervalUs });
  await post("Profiler.start");
  return async () => {
    const { profile } = await post<{ profile: unknown }>("Profiler.stop");
    session.disconnect();
    await Deno.writeTextFile(path, JSON.stringify(profile));
  };
}
