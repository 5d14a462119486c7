/**
 * Run by process_runtime_test.ts in a process of its own: as a node agent
 * that is a child subreaper (as PID 1 of a container is init), starts a GPU
 * worker (fake driver at LIBCUDA, pod namespaces), then parks it in a file
 * and resumes it three times. A restored worker becomes this process's
 * child when CRIU exits, and comes back with the PID it had: each resume
 * needs the previous copy reaped. Prints one JSON line: the resume times.
 *
 * Args: LIBCUDA SNAPSHOT_DIR POD_SPEC_JSON (a worker that initialises the
 * driver, then answers GET /)
 */
import { becomeSubreaper } from "../../ffi/libc.ts";
import { openLibCuda } from "../../ffi/libcuda.ts";
import { Criu, locateCriu } from "../criu.ts";
import { PodNetworks } from "../pod_net.ts";
import { ProcessRuntime } from "../process_runtime.ts";
import type { PodSpec } from "../runtime.ts";

const [lib, dir, specJson] = Deno.args;
if (!becomeSubreaper()) throw new Error("prctl(PR_SET_CHILD_SUBREAPER) failed");
const { cuda } = openLibCuda(lib);
const rt = new ProcessRuntime({
  cuda,
  criu: new Criu(locateCriu()!),
  podNetworks: new PodNetworks({ prefix: "ixtest" }),
  snapshotDir: dir,
});
const spec: PodSpec = JSON.parse(specJson);
const pod = await rt.start(spec);
const resumeMs: number[] = [];
try {
  for (let i = 0; i < 3; i++) {
    await rt.park(spec.podId, "file");
    const t0 = performance.now();
    await rt.resume(spec.podId);
    resumeMs.push(Math.round(performance.now() - t0));
    const res = await fetch(`http://${pod.endpoint}/`, { headers: { connection: "close" } });
    await res.body?.cancel();
    if (!res.ok) throw new Error(`the restored worker answers ${res.status}`);
  }
} finally {
  await rt.stop(spec.podId);
  cuda!.close();
}
console.log(JSON.stringify({ resumeMs }));
