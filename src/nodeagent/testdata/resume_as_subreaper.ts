/**
 * Run by process_runtime_test.ts in a process of its own: as a node agent
 * that is a child subreaper (as PID 1 of a container is init), starts a GPU
 * worker (fake driver at LIBCUDA, pod namespaces), then parks it in a file
 * and resumes it three times. A restored worker becomes this process's
 * child when CRIU exits, and comes back with the PID it had: each resume
 * needs the previous copy reaped. Prints one JSON line: the resume times.
 *
 * Args: LIBCUDA SNAPSHOT_DIR
 */
import { becomeSubreaper } from "../../ffi/libc.ts";
import { openLibCuda } from "../../ffi/libcuda.ts";
import { Criu, locateCriu } from "../criu.ts";
import { PodNetworks } from "../pod_net.ts";
import { ProcessRuntime } from "../process_runtime.ts";

const [lib, dir] = Deno.args;
if (!becomeSubreaper()) throw new Error("prctl(PR_SET_CHILD_SUBREAPER) failed");
const { cuda } = openLibCuda(lib);
const rt = new ProcessRuntime({
  cuda,
  criu: new Criu(locateCriu()!),
  podNetworks: new PodNetworks({ prefix: "ixtest" }),
  snapshotDir: dir,
});
const worker = `const r = Deno.dlopen(Deno.env.get("LIBCUDA"),
  { cuInit: { parameters: ["u32"], result: "i32" } }).symbols.cuInit(0);
  if (r !== 0) Deno.exit(3);
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
    () => new Response("ok"));`;
const pod = await rt.start({
  podId: "pod-reap",
  func: "t/n/f",
  funcVersion: 1,
  template: {
    image: "img",
    commands: ["deno", "eval", worker],
    envs: [["LIBCUDA", lib]],
    mounts: [],
    port: 8000,
    probe: "/",
    startupTimeoutS: 20,
  },
  cpuMillis: 500,
  memMB: 256,
  gpus: [{ index: 0, vramMB: 1000 }],
});
const resumeMs: number[] = [];
try {
  for (let i = 0; i < 3; i++) {
    await rt.park("pod-reap", "file");
    const t0 = performance.now();
    await rt.resume("pod-reap");
    resumeMs.push(Math.round(performance.now() - t0));
    const res = await fetch(`http://${pod.endpoint}/`, { headers: { connection: "close" } });
    if (await res.text() !== "ok") throw new Error("the restored worker does not answer");
  }
} finally {
  await rt.stop("pod-reap");
  cuda!.close();
}
console.log(JSON.stringify({ resumeMs }));
