import { nodeListener, withTmpfs } from "../common/testing.ts";
import assert from "node:assert/strict";
import { InferxError } from "../common/errors.ts";
import type { PodSpec, RunningPod } from "./runtime.ts";
import { findTool, pidFreed, ProcessRuntime } from "./process_runtime.ts";
import { type LibCuda, openLibCuda } from "../ffi/libcuda.ts";
import { Criu, criuCapability, CriuKilled, locateCriu } from "./criu.ts";
import { PodNetworks } from "./pod_net.ts";
import { fenceInterface, POD_HOST_ENDS } from "./worker_fence.ts";
import { procState } from "../ffi/libc.ts";
import { buildFakeLibCuda, fakeLibCudaUnavailable } from "../ffi/testing.ts";

const ENV_SERVER = `
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: "127.0.0.1", onListen() {} },
  () => Response.json(Deno.env.toObject()));`;

function spec(commands: string[], extra: Partial<PodSpec> = {}): PodSpec {
  return {
    podId: "pod-test",
    func: "t/n/f",
    funcVersion: 3,
    template: {
      image: "img",
      commands,
      envs: [["GREETING", "hello"]],
      mounts: [],
      port: 8000,
      probe: "/",
      startupTimeoutS: 20,
    },
    cpuMillis: 500,
    memMB: 256,
    gpus: [],
    ...extra,
  };
}

const t = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });

/** One GPU slice, for the workers parked in host memory. */
const GPU0 = [{ index: 0, vramMB: 1000 }];

t(
  "ProcessRuntime starts a worker on a loopback port with the function's and platform's env",
  async () => {
    const rt = new ProcessRuntime();
    const pod = await rt.start(spec(["deno", "eval", ENV_SERVER], {
      gpus: [{ index: 1, vramMB: 8000 }, { index: 3, vramMB: 8000 }],
    }));
    assert.match(pod.endpoint, /^127\.0\.0\.1:\d+$/);
    const env = await (await fetch(`http://${pod.endpoint}/`)).json();
    assert.equal(env.GREETING, "hello");
    assert.equal(env.PORT, pod.endpoint.split(":")[1]);
    assert.equal(env.CUDA_VISIBLE_DEVICES, "1,3");
    assert.equal(env.CUDA_DEVICE_ORDER, "PCI_BUS_ID", "numbered as nvidia-smi numbers them");
    assert.equal(env.NVIDIA_VISIBLE_DEVICES, "1,3");
    assert.equal(env.INFERX_VRAM_MB, "8000");
    assert.equal(env.INFERX_FUNCTION_VERSION, "3");
    await rt.stop("pod-test");
    assert.deepEqual(rt.running(), []);
  },
);

t("ProcessRuntime tells whether a started worker lives from the system, at once", async () => {
  const rt = new ProcessRuntime();
  const pod = await rt.start(spec(["deno", "eval", ENV_SERVER]));
  try {
    assert.equal(await pod.alive!(), true);
    let exited = false;
    pod.exited.then(() => exited = true);
    Deno.kill(rt.pidOf("pod-test")!, "SIGKILL");
    // Dead as soon as the kernel has it so, whether or not its exit was told yet.
    const t0 = performance.now();
    while (await pod.alive!()) assert.ok(performance.now() - t0 < 5000, "still alive after 5 s");
    await pod.exited;
    assert.ok(exited);
    assert.equal(await pod.alive!(), false);
  } finally {
    await rt.stop("pod-test");
  }
});

t("ProcessRuntime starts a worker whose envs set a PATH without the agent's helpers", async () => {
  const rt = new ProcessRuntime();
  const s = spec(["deno", "eval", ENV_SERVER]);
  s.template = { ...s.template, envs: [["PATH", "/opt/venv/bin"]] };
  const pod = await rt.start(s);
  const env = await (await fetch(`http://${pod.endpoint}/`)).json();
  // The function's own PATH (Deno puts a directory of its own in front).
  assert.match(env.PATH, /(^|:)\/opt\/venv\/bin$/);
  await rt.stop("pod-test");
});

/** A library that, loaded in a process, appends its executable's path to `$IX_PRELOAD_MARKS`. */
const MARKER_C = `#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
  const char *out = getenv("IX_PRELOAD_MARKS");
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (!out || n < 0) return;
  exe[n] = 0;
  FILE *f = fopen(out, "a");
  if (f) { fprintf(f, "%s\\n", exe); fclose(f); }
}
`;

t("ProcessRuntime reports a worker that crashes at start with the tail of its output", async () => {
  const rt = new ProcessRuntime();
  const crash =
    `console.log("loading weights"); console.error("cannot open weights.bin"); Deno.exit(3);`;
  await assert.rejects(rt.start(spec(["deno", "eval", crash])), (err: unknown) => {
    assert.ok(err instanceof InferxError);
    assert.equal(err.code, "worker_failed");
    assert.match(err.message, /exit code 3/);
    assert.match(err.message, /cannot open weights\.bin/);
    return true;
  });
});

t("ProcessRuntime refuses a pod without commands and a missing binary clearly", async () => {
  const rt = new ProcessRuntime();
  await assert.rejects(rt.start(spec([])), /has no commands/);
  await assert.rejects(
    rt.start(spec(["/nonexistent/worker-binary"])),
    /nonexistent\/worker-binary/,
  );
});

t("ProcessRuntime tells the agent when a ready worker dies, with its output", async () => {
  const died = Promise.withResolvers<string>();
  const rt = new ProcessRuntime({ onExit: (_id, why) => died.resolve(why) });
  const code =
    `${ENV_SERVER}\nsetTimeout(() => { console.error("out of memory"); Deno.exit(9); }, 300);`;
  await rt.start(spec(["deno", "eval", code]));
  const why = await died.promise;
  assert.match(why, /exit code 9/);
  assert.match(why, /out of memory/);
});

t("ProcessRuntime tells a worker's own exit when a stop comes before its report", async () => {
  const exits: string[] = [];
  const rt = new ProcessRuntime({ onExit: (_id, why) => exits.push(why) });
  // A helper holds its output open: the exit's report waits up to 500 ms for the last of it.
  const code = `${ENV_SERVER}
new Deno.Command("sleep", { args: ["3"], stdout: "inherit", stderr: "inherit" }).spawn();
setTimeout(() => { console.error("CUDA error: out of memory"); Deno.exit(9); }, 300);`;
  const pod = await rt.start(spec(["deno", "eval", code]));
  await new Promise((r) => setTimeout(r, 450)); // ended; a call saw it and gave its pod back
  await rt.stop("pod-test");
  // It was taken for the stop's: no exit told, its reason and output lost.
  assert.equal(exits.length, 1, "its exit told");
  assert.match(exits[0], /exit code 9/);
  assert.match(exits[0], /CUDA error: out of memory/);
  assert.match(await pod.exited, /exit code 9/);
});

t("ProcessRuntime stop() escalates to SIGKILL after the grace period", async () => {
  const rt = new ProcessRuntime();
  const stubborn = `Deno.addSignalListener("SIGTERM", () => {});
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: "127.0.0.1", onListen() {} }, () => new Response("ok"));`;
  const pod = await rt.start(spec(["deno", "eval", stubborn]));
  const t0 = performance.now();
  // Raced with a deadline: without the SIGKILL the stop would wait for ever, and the suite too.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const never = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("stop() never ended the stubborn worker")), 10_000);
  });
  try {
    await Promise.race([rt.stop("pod-test", 300), never]);
    assert.ok(performance.now() - t0 >= 250);
    assert.match(await Promise.race([pod.exited, never]), /SIGKILL/);
  } finally {
    clearTimeout(timer);
  }
});

/** Processes whose command line holds `mark`. */
async function withMark(mark: string): Promise<number[]> {
  const out = await new Deno.Command("pgrep", { args: ["-f", mark] }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).map(Number)
    .filter((pid) => pid !== Deno.pid);
}

t("ProcessRuntime ends what a worker started, on stop and when it crashes", async () => {
  const helper = (mark: string) => `(trap '' TERM; exec sleep ${mark}) &`;
  const serve = `exec ${Deno.execPath()} eval '${ENV_SERVER}'`;
  // A helper that ignores SIGTERM outlives its worker unless its group is ended.
  const rt = new ProcessRuntime();
  await rt.start(spec(["/bin/sh", "-c", `${helper("7171")} ${serve}`]));
  assert.equal((await withMark("sleep 7171")).length, 1);
  await rt.stop("pod-test", 1500); // the worker itself ends at once on SIGTERM
  assert.deepEqual(await withMark("sleep 7171"), [], "the helper went with the stopped worker");
  // A worker that crashes leaves its helpers behind unless they are ended with it.
  const died = Promise.withResolvers<string>();
  const crashing = new ProcessRuntime({ onExit: (_id, why) => died.resolve(why) });
  await crashing.start(spec([
    "/bin/sh",
    "-c",
    `${helper("7272")} ${Deno.execPath()} eval '${ENV_SERVER}' & sleep 1; echo fatal >&2; exit 1`,
  ]));
  assert.match(await died.promise, /exit code 1/);
  for (let i = 0; i < 40 && (await withMark("sleep 7272")).length; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual(await withMark("sleep 7272"), [], "the helper went with the crashed worker");
});

Deno.test({
  name:
    "ProcessRuntime parks a worker in host memory through the driver's checkpoint API and brings it back",
  ignore: fakeLibCudaUnavailable() !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { cuda } = openLibCuda(await buildFakeLibCuda());
    assert.ok(cuda);
    const rt = new ProcessRuntime({ cuda });
    assert.deepEqual(rt.standbyTiers, ["paused", "host_memory"]);
    const pod = await rt.start(spec(["deno", "eval", ENV_SERVER], { gpus: GPU0 }));
    try {
      const pid = rt.pidOf("pod-test")!;
      await rt.park("pod-test", "host_memory");
      assert.equal(cuda.processState(pid), "checkpointed", "its GPU memory went to host memory");
      await rt.resume("pod-test");
      assert.equal(cuda.processState(pid), "running");
      assert.equal((await fetch(`http://${pod.endpoint}/`)).status, 200);
      await assert.rejects(rt.park("pod-test", "file"), /offers paused, host_memory/);
    } finally {
      await rt.stop("pod-test");
    }
    // A worker without GPUs has no GPU memory to move: parked in host memory, it is stopped.
    const cpu = await rt.start(spec(["deno", "eval", ENV_SERVER]));
    try {
      const pid = rt.pidOf("pod-test")!;
      await rt.park("pod-test", "host_memory");
      // SIGSTOP takes effect a moment after it is sent.
      for (let i = 0; i < 50 && (await procState(pid))?.state !== "T"; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal((await procState(pid))?.state, "T", "stopped, not asked of the driver");
      await rt.resume("pod-test");
      assert.equal((await fetch(`http://${cpu.endpoint}/`)).status, 200);
    } finally {
      await rt.stop("pod-test");
      cuda.close();
    }
  },
});

Deno.test({
  name:
    "ProcessRuntime: a resume asked for while the driver still checkpoints waits for it, and brings the pod back",
  ignore: fakeLibCudaUnavailable() !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // A checkpoint takes seconds on a real GPU; the fake takes 300 ms a copy.
    Deno.env.set("FAKE_CUDA_COPY_MS", "300");
    const { cuda } = openLibCuda(await buildFakeLibCuda());
    assert.ok(cuda);
    const rt = new ProcessRuntime({ cuda });
    const pod = await rt.start(spec(["deno", "eval", ENV_SERVER], { gpus: GPU0 }));
    try {
      const pid = rt.pidOf("pod-test")!;
      const order: string[] = [];
      const parked = rt.park("pod-test", "host_memory").then(() => order.push("parked"));
      const resumed = rt.resume("pod-test").then(() => order.push("resumed"));
      await Promise.all([parked, resumed]);
      assert.deepEqual(order, ["parked", "resumed"]);
      assert.equal(cuda.processState(pid), "running", "its GPU memory is back");
      assert.equal((await fetch(`http://${pod.endpoint}/`)).status, 200);
      // And it parks again as usual.
      await rt.park("pod-test", "host_memory");
      assert.equal(cuda.processState(pid), "checkpointed");
      await rt.resume("pod-test");
    } finally {
      Deno.env.delete("FAKE_CUDA_COPY_MS");
      await rt.stop("pod-test");
      cuda.close();
    }
  },
});

Deno.test("ProcessRuntime offers only the paused tier without a checkpoint-capable driver", () => {
  assert.deepEqual(new ProcessRuntime().standbyTiers, ["paused"]);
});

t(
  "ProcessRuntime can send worker output to a file (as the file tier needs) and still reports it",
  async () => {
    const dir = await Deno.makeTempDir();
    const rt = new ProcessRuntime({ outputToFile: true, snapshotDir: dir });
    try {
      const server = `console.log("model loaded"); ${ENV_SERVER}`;
      await rt.start(spec(["deno", "eval", server]));
      const text = await Deno.readTextFile(`${dir}/pod-test.log`);
      assert.match(text, /model loaded/);
      for (let i = 0; i < 50 && !(await rt.logs("pod-test")).includes("model loaded"); i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.match(await rt.logs("pod-test"), /model loaded/);
      await rt.stop("pod-test");
      await assert.rejects(Deno.stat(`${dir}/pod-test.log`), Deno.errors.NotFound);
      const crash = `console.error("cannot open weights.bin"); Deno.exit(3);`;
      await assert.rejects(rt.start(spec(["deno", "eval", crash])), (err: InferxError) => {
        assert.equal(err.code, "worker_failed");
        assert.match(err.message, /exit code 3/);
        return true;
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** A runtime whose workers' output goes to files in a directory of its own, 256 KiB read and kept. */
async function smallOutputRuntime(): Promise<{ dir: string; rt: ProcessRuntime }> {
  const dir = await Deno.makeTempDir();
  const rt = new ProcessRuntime({
    outputToFile: true,
    snapshotDir: dir,
    outputFileMaxBytes: 256 * 1024,
  });
  return { dir, rt };
}

/**
 * Runs `worker` with its output in a file of at most 256 KiB read and kept
 * and returns the most disk the file took (its blocks) until the worker
 * printed `last` (looked at every 20 ms, up to 30 s: a loaded machine runs it
 * far slower), its size then (holes included), and its log.
 */
async function biggestOutputFile(
  worker: string,
  last: string,
): Promise<{ biggest: number; size: number; logs: string }> {
  const { dir, rt } = await smallOutputRuntime();
  try {
    await rt.start(spec(["deno", "eval", worker]));
    let biggest = 0;
    const end = Date.now() + 30_000;
    while (Date.now() < end && !(await rt.logs("pod-test")).includes(last)) {
      biggest = Math.max(biggest, (await Deno.stat(`${dir}/pod-test.log`)).blocks! * 512);
      await new Promise((r) => setTimeout(r, 20));
    }
    const logs = await rt.logs("pod-test");
    assert.ok(logs.includes(last), `no "${last}" in the log`);
    const size = (await Deno.stat(`${dir}/pod-test.log`)).size;
    await rt.stop("pod-test");
    return { biggest, size, logs };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

t(
  "ProcessRuntime gives back disk a worker allocates past its output file's end (fallocate)",
  async () => {
    const { dir, rt } = await smallOutputRuntime();
    try {
      // 200 MiB allocated through its output, the file's size unchanged.
      const script =
        'fallocate -n -l 200M /proc/self/fd/1 && echo allocated && exec "$0" eval "$1"';
      await rt.start(spec(["/bin/sh", "-c", script, Deno.execPath(), ENV_SERVER]));
      const file = `${dir}/pod-test.log`;
      let logs = "";
      const end = Date.now() + 20_000;
      const said = /\d+ bytes of disk allocated outside the output's kept bytes given back/;
      while (Date.now() < end && !said.test(logs)) {
        await new Promise((r) => setTimeout(r, 50));
        logs = await rt.logs("pod-test");
      }
      assert.match(logs, said);
      assert.match(logs, /allocated/, "the worker's own output kept");
      const st = await Deno.stat(file);
      assert.ok(st.blocks! * 512 < 1024 * 1024, `the file still takes ${st.blocks! * 512} bytes`);
      await rt.stop("pod-test");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t(
  "ProcessRuntime keeps a chatty worker's output file bounded, its latest lines in the log",
  async () => {
    // About 4 MiB of output in its first second or two, then a last line.
    const chatty = `${ENV_SERVER}
const line = "x".repeat(199);
let n = 0;
const t = setInterval(() => {
  for (let i = 0; i < 400; i++) console.log(line);
  if (++n === 50) { clearInterval(t); console.log("last line"); }
}, 20);`;
    const { biggest, size, logs } = await biggestOutputFile(chatty, "last line");
    assert.ok(
      biggest < 2 * 1024 * 1024,
      `the file took ${biggest} bytes of disk for about 4 MiB written`,
    );
    // Nothing was thrown away: the blocks read were given back, the file kept its size.
    assert.ok(size >= 50 * 400 * 200, `the file is ${size} bytes`);
    assert.match(logs, /x{199}\nlast line/);
  },
);

t("ProcessRuntime keeps the output file bounded while its worker never stops writing", async () => {
  // A thread writing 64 KiB every millisecond or so (up to ~60 MB/s), without a pause for the
  // follower to catch up, while the main thread answers the probe.
  const writer =
    `const line = "y".repeat(1023) + "\\n"; const chunk = new TextEncoder().encode(line.repeat(64));
const end = Date.now() + 3000; const sab = new Int32Array(new SharedArrayBuffer(4));
while (Date.now() < end) { Deno.stdout.writeSync(chunk); Atomics.wait(sab, 0, 0, 1); }
console.log("writer done");`;
  const chatty = `${ENV_SERVER}
new Worker(URL.createObjectURL(new Blob([${JSON.stringify(writer)}])), { type: "module" });`;
  const { biggest } = await biggestOutputFile(chatty, "writer done");
  assert.ok(biggest < 4 * 1024 * 1024, `the file took ${biggest} bytes of disk`);
});

const criuCap = await criuCapability();
if (!criuCap.available) console.log(`skipping the file-tier and snapshot tests: ${criuCap.reason}`);
const netCap = criuCap.available
  ? await new PodNetworks({ prefix: "ixtest" }).capability()
  : { available: false, reason: "no CRIU" };
if (criuCap.available && !netCap.available) {
  console.log(`skipping the snapshot tests: ${netCap.reason}`);
}

const COUNTER = `let n = 0; ${
  ENV_SERVER.replace(
    "() => Response.json(Deno.env.toObject())",
    '(req) => req.url.endsWith("/n") ? (console.log("served", ++n), Response.json({ n })) : new Response("ok")',
  )
    .replace('hostname: "127.0.0.1"', 'hostname: Deno.env.get("HOST")')
}`;

/** GETs `endpoint` on a connection of its own and returns the counter it answers. */
async function count(endpoint: string): Promise<number> {
  const res = await fetch(`http://${endpoint}/n`, { headers: { connection: "close" } });
  return (await res.json()).n;
}

async function eventually(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!await check()) {
    assert.ok(Date.now() < deadline, "timed out");
    await new Promise((r) => setTimeout(r, 50));
  }
}

t(
  "ProcessRuntime.footprintBytes() counts a worker's own memory, not the pages of a file it maps",
  async () => {
    const dir = await Deno.makeTempDir();
    const weights = `${dir}/weights.bin`;
    await Deno.writeFile(weights, new Uint8Array(96 * 1024 * 1024).fill(7));
    // Maps its "weights" read-only and reads every page, as a model server loading them does.
    const worker = `
import http.server, mmap, os
f = open(${JSON.stringify(weights)}, "rb")
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
total = sum(m[i] for i in range(0, len(m), 4096))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(str(total).encode())
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()`;
    const rt = new ProcessRuntime();
    try {
      await rt.start(spec(["python3", "-c", worker]));
      const pid = rt.pidOf("pod-test")!;
      assert.ok(
        rssKb(pid)! > 96 * 1024,
        `its resident memory holds the file's pages: ${rssKb(pid)} kB`,
      );
      const bytes = await rt.footprintBytes("pod-test");
      assert.ok(bytes > 0 && bytes < 48 * 1024 * 1024, `footprint ${bytes} bytes`);
    } finally {
      await rt.stop("pod-test");
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** Memory (kB) `pid` holds, or undefined when it is gone. */
function rssKb(pid: number): number | undefined {
  try {
    return Number(Deno.readTextFileSync(`/proc/${pid}/status`).match(/^VmRSS:\s+(\d+)/m)?.[1]);
  } catch {
    return undefined;
  }
}

/** The session a process belongs to (field 6 of /proc/PID/stat). */
function sessionOf(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[3]);
}

/** A runtime with CRIU (pod namespaces when `namespaced`, a driver when given) over a temporary directory. */
async function criuRuntime(namespaced: boolean, cuda?: LibCuda) {
  const dir = await Deno.makeTempDir();
  const rt = new ProcessRuntime({
    cuda,
    criu: new Criu(locateCriu()!),
    podNetworks: namespaced ? new PodNetworks({ prefix: "ixtest" }) : undefined,
    snapshotDir: dir,
  });
  return { dir, rt };
}

for (const namespaced of [false, true]) {
  Deno.test({
    name:
      `ProcessRuntime gives a function's envs to its worker alone: no helper runs its LD_PRELOAD, no process's arguments hold them${
        namespaced ? ", in its own namespaces" : ""
      }`,
    ignore: namespaced && (!criuCap.available || !netCap.available),
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const noCompiler = fakeLibCudaUnavailable(); // gcc, which builds the library
      if (noCompiler) return console.log(`skipped: ${noCompiler}`);
      const dir = await Deno.makeTempDir({ prefix: "inferx-preload-" });
      const { dir: snapshots, rt } = namespaced
        ? await criuRuntime(true)
        : { dir: undefined, rt: new ProcessRuntime() };
      try {
        await Deno.writeTextFile(`${dir}/marker.c`, MARKER_C);
        const cc = await new Deno.Command("gcc", {
          args: ["-shared", "-fPIC", "-o", `${dir}/marker.so`, `${dir}/marker.c`],
        }).output();
        assert.ok(cc.success, new TextDecoder().decode(cc.stderr));
        const secret = "ix-secret-0451'\"$(x)\nline two";
        const s = spec(["deno", "eval", ENV_SERVER.replace('"127.0.0.1"', 'Deno.env.get("HOST")')]);
        s.template = {
          ...s.template,
          envs: [
            ["LD_PRELOAD", `${dir}/marker.so`],
            ["IX_PRELOAD_MARKS", `${dir}/marks`],
            ["API_TOKEN", secret],
          ],
        };
        const pod = await rt.start(s);
        const env = await (await fetch(`http://${pod.endpoint}/`)).json();
        assert.equal(env.API_TOKEN, secret, "the worker has its environment, quotes and all");
        assert.equal(env.LD_PRELOAD, `${dir}/marker.so`);
        // Before, the helpers (setsid, sh, nsenter, unshare, setpriv) ran it too, as the agent:
        // with INFERX_WORKER_USER, a tenant's code as root.
        const marks = new Set((await Deno.readTextFile(`${dir}/marks`)).trim().split("\n"));
        const worker = [Deno.realPathSync(Deno.execPath()), findTool("tini")].filter(Boolean);
        for (const m of marks) assert.ok(worker.includes(m), `${m} ran the function's library`);
        assert.ok(marks.has(worker[0]!));
        // Any local user reads a process's arguments: none holds the function's values (the
        // helper left over a PID namespace's init, unshare, lives as long as the pod).
        for (const e of Deno.readDirSync("/proc")) {
          if (!/^\d+$/.test(e.name)) continue;
          const args = await Deno.readTextFile(`/proc/${e.name}/cmdline`).catch(() => "");
          assert.ok(!args.includes("ix-secret-0451"), `process ${e.name}: ${args}`);
        }
      } finally {
        for (const id of rt.running()) await rt.stop(id);
        await Deno.remove(dir, { recursive: true });
        if (snapshots) await Deno.remove(snapshots, { recursive: true });
      }
    },
  });
}

t(
  "ProcessRuntime tells a worker stopped from outside (SIGSTOP) from a parked one, and resumes it",
  async () => {
    const dir = await Deno.makeTempDir();
    const rt = new ProcessRuntime({ snapshotDir: dir });
    try {
      const pod = await rt.start(spec(["deno", "eval", COUNTER]));
      assert.equal(await count(pod.endpoint), 1);
      assert.equal(await rt.isPaused("pod-test"), false);
      Deno.kill(rt.pidOf("pod-test")!, "SIGSTOP"); // an operator, say
      await eventually(() => rt.isPaused("pod-test"));
      await rt.resume("pod-test");
      assert.equal(await rt.isPaused("pod-test"), false);
      assert.equal(await count(pod.endpoint), 2, "it serves again");
      // Parked by the runtime itself: not taken for stopped from outside.
      await rt.park("pod-test", "paused");
      assert.equal(await rt.isPaused("pod-test"), false);
      await rt.resume("pod-test");
      await rt.stop("pod-test");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/**
 * A test that needs CRIU and pod networks, given a runtime that makes pod
 * namespaces; what it left running is stopped and its directory removed.
 */
function criuNetTest(
  name: string,
  fn: (x: { dir: string; rt: ProcessRuntime }) => Promise<void>,
): void {
  Deno.test({
    name,
    ignore: !criuCap.available || !netCap.available,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const { dir, rt } = await criuRuntime(true);
      try {
        await fn({ dir, rt });
      } finally {
        for (const id of rt.running()) await rt.stop(id);
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

for (const namespaced of [false, true]) {
  Deno.test({
    name: `ProcessRuntime parks a worker in a file (CRIU dump) and restores it with its state${
      namespaced ? ", in its own namespaces" : ", on the host network"
    }`,
    ignore: !criuCap.available || (namespaced && !netCap.available),
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const { dir, rt } = await criuRuntime(namespaced);
      assert.ok(rt.standbyTiers.includes("file"));
      const pod = await rt.start(spec(["deno", "eval", COUNTER]));
      try {
        assert.equal(await count(pod.endpoint), 1);
        const pid = rt.pidOf("pod-test")!;
        assert.ok(rssKb(pid)! > 0);
        // It leads its own session: CRIU cannot dump a session whose leader
        // it cannot see, as in a container whose session began outside it.
        if (!namespaced) assert.equal(sessionOf(pid), pid);
        await rt.park("pod-test", "file");
        assert.equal(rt.pidOf("pod-test"), undefined, "no process while parked in a file");
        assert.equal(rssKb(pid), undefined, "its memory is freed");
        assert.ok([...Deno.readDirSync(`${dir}/pod-test`)].some((e) => e.name.endsWith(".img")));
        await rt.resume("pod-test");
        // The listening socket is back at the same endpoint, and the worker's own count goes on.
        assert.equal(await count(pod.endpoint), 2);
        assert.equal(await count(pod.endpoint), 3);
      } finally {
        await rt.stop("pod-test");
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

/**
 * A worker that says who it runs as, what it may do, and whether it reached
 * port `TARGET` of its pod pair's host end; counts its calls (`/n`).
 */
const WHOAMI = `
import http.server, json, os, re, socket, subprocess
n = 0
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]
def reach():
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True,
        text=True).stdout
    m = re.search(r"inet (\\d+\\.\\d+\\.\\d+\\.)(\\d+)/", out)
    if not m:
        return "no eth0"
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((m.group(1) + str(int(m.group(2)) - 1), int(os.environ["TARGET"])))
        return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global n
        n += 1
        try:
            open("/proc/%s/environ" % os.environ["AGENT_PID"]).read()
            environ = "read"
        except OSError as e:
            environ = type(e).__name__
        body = json.dumps({"n": n, "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "groups": os.getgroups(), "capEff": status("CapEff"), "capBnd": status("CapBnd"),
            "noNewPrivs": status("NoNewPrivs"), "environ": environ, "home": os.environ["HOME"],
            "hostEnd": reach() if self.path == "/reach" else None})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())
    def log_message(self, *a):
        pass
http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()`;

for (const namespaced of [false, true]) {
  Deno.test({
    name: `ProcessRuntime runs a worker as its worker user, without capabilities${
      namespaced ? ", in its own namespaces under its init, fenced off the node" : ""
    }; it parks paused, not in a file`,
    ignore: Deno.uid() !== 0 || !findTool("setpriv") || (namespaced && !netCap.available),
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const dir = await Deno.makeTempDir();
      const fenced: string[] = [];
      const rt = new ProcessRuntime({
        criu: criuCap.available ? new Criu(locateCriu()!) : undefined,
        podNetworks: namespaced ? new PodNetworks({ prefix: "ixtest" }) : undefined,
        snapshotDir: dir,
        workerUser: { uid: 65534, gid: 65534, home: "/nonexistent" },
        // The node's own fence, asked for (its rules may be there from an earlier run already).
        fence: (name) => (fenced.push(name), fenceInterface(name)),
      });
      // CRIU cannot dump it (its parasite code would run without privileges).
      assert.deepEqual(rt.standbyTiers, ["paused"]);
      assert.equal(rt.snapshots, false);
      const node = nodeListener();
      // Python of the system: the PATH of a test run may lead to a python3 under /root.
      const s = spec(["/usr/bin/python3", "-c", WHOAMI]);
      s.template.envs = [
        ["AGENT_PID", String(Deno.pid)],
        ["TARGET", String(node.port)],
      ];
      const pod = await rt.start(s);
      try {
        const who = async (path = "/n") =>
          await (await fetch(`http://${pod.endpoint}${path}`, { headers: { connection: "close" } }))
            .json();
        const seen = await who();
        let calls = seen.n;
        assert.deepEqual(
          [seen.uid, seen.euid, seen.gid, seen.groups, seen.home],
          [65534, 65534, 65534, [], "/nonexistent"],
        );
        assert.equal(seen.capEff, "0000000000000000");
        assert.equal(seen.capBnd, "0000000000000000");
        assert.equal(seen.noNewPrivs, "1");
        // The platform's own processes' environments (the admin key) are not its to read.
        assert.equal(seen.environ, "PermissionError");
        if (namespaced) {
          if (rt.init) {
            const inNs = await namespaceProcesses(rt.pidOf("pod-test")!);
            assert.equal(inNs.length, 2, JSON.stringify(inNs)); // its init (tini) and itself
          }
          assert.deepEqual(fenced, [POD_HOST_ENDS], "fenced once, before its first pod");
          const reach = await who("/reach");
          calls = reach.n;
          assert.equal(reach.hostEnd, "ConnectionRefusedError");
          assert.equal(node.accepted(), 0);
        }
        await rt.park("pod-test", "paused");
        await rt.resume("pod-test");
        assert.equal((await who()).n, calls + 1, "the same worker, its state kept");
      } finally {
        await rt.stop("pod-test");
        node.listener.close();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test({
  name: "Criu: a dump cut off by its time limit says so (retryable), and the worker runs on",
  ignore: !criuCap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { dir, rt } = await criuRuntime(false);
    try {
      const pod = await rt.start(spec(["deno", "eval", COUNTER]));
      assert.equal(await count(pod.endpoint), 1);
      const err = await new Criu(locateCriu()!).dump(rt.pidOf("pod-test")!, `${dir}/img`, {
        leaveRunning: true,
        timeoutMs: 20,
      }).then(() => undefined, (e) => e);
      assert.equal(err?.code, "timeout", String(err));
      assert.equal(err.retryable, true);
      assert.match(err.message, /CRIU did not finish within 20 ms/);
      await eventually(() => count(pod.endpoint).then((n) => n === 2, () => false));
    } finally {
      await rt.stop("pod-test");
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "ProcessRuntime: a park CRIU refuses, after a park and a resume, leaves the worker serving",
  ignore: !criuCap.available || !netCap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const sock = `${dir}/outside.sock`;
    const listener = Deno.listen({ transport: "unix", path: sock });
    const held: Deno.Conn[] = [];
    (async () => {
      for await (const c of listener) held.push(c);
    })().catch(() => {});
    // Connected to a socket outside its pod once asked: CRIU refuses to dump it from then on.
    const worker = `let c; ${
      COUNTER.replace(
        "(req) => req.url.endsWith",
        `async (req) => req.url.endsWith("/connect") ? (c = await Deno.connect({ transport: "unix", path: ${
          JSON.stringify(sock)
        } }), new Response("connected")) : req.url.endsWith`,
      )
    }`;
    const exits: string[] = [];
    const runtime = new ProcessRuntime({
      criu: new Criu(locateCriu()!),
      podNetworks: new PodNetworks({ prefix: "ixtest" }),
      snapshotDir: dir,
      onExit: (id, why) => exits.push(`${id}: ${why}`),
    });
    try {
      const pod = await runtime.start(spec(["deno", "eval", worker]));
      await runtime.park("pod-test", "file");
      await runtime.resume("pod-test");
      assert.equal(await count(pod.endpoint), 1);
      assert.equal(await (await fetch(`http://${pod.endpoint}/connect`)).text(), "connected");
      await assert.rejects(runtime.park("pod-test", "file"), /Cannot park pod pod-test in file/);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(await count(pod.endpoint), 2, "it serves on");
      assert.deepEqual(exits, []);
    } finally {
      await runtime.stop("pod-test");
      for (const c of held) c.close();
      listener.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Field `i` (after the command) of /proc/PID/stat: 1 the parent, 2 the process group, 3 the session. */
function statField(pid: number, i: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[i]);
}

criuNetTest(
  "ProcessRuntime: no process of a pod is in the agent's process group, paused or not (an orphaned group's stopped members get SIGHUP)",
  async ({ rt }) => {
    const pod = await rt.start(spec(["deno", "eval", COUNTER]));
    const ours = statField(Deno.pid, 2);
    // This process's children (spawned from any of its threads).
    const children = () =>
      [...Deno.readDirSync("/proc")].map((e) => Number(e.name)).filter((pid) => {
        try {
          return Number.isInteger(pid) && statField(pid, 1) === Deno.pid;
        } catch {
          return false; // gone meanwhile
        }
      });
    // The pod's first process (its helpers' chain: it runs unshare now, the worker's parent).
    const wrappers = children();
    assert.ok(wrappers.length >= 1, "the pod's first process is the agent's child");
    for (const pid of wrappers) {
      assert.notEqual(statField(pid, 2), ours, `process ${pid} in the agent's group`);
      assert.equal(statField(pid, 3), pid, `process ${pid} leads a session of its own`);
    }
    await rt.park("pod-test", "paused");
    for (const pid of wrappers) assert.notEqual(statField(pid, 2), ours);
    await rt.resume("pod-test");
    assert.equal(await count(pod.endpoint), 1);
  },
);

criuNetTest(
  "ProcessRuntime: a worker that is its namespace's init and handles no SIGTERM is stopped at once, one that handles it is let end",
  async ({ rt }) => {
    // No handler: as an init it ignored SIGTERM for the whole grace period (5 s at every stop).
    const plain = COUNTER.replace('Deno.addSignalListener("SIGTERM", () => Deno.exit(0));', "");
    assert.notEqual(plain, COUNTER);
    await rt.start(spec(["deno", "eval", plain]));
    let t0 = performance.now();
    await rt.stop("pod-test", 3000);
    assert.ok(performance.now() - t0 < 1500, `stopped in ${Math.round(performance.now() - t0)} ms`);
    // A handler: SIGTERM reaches it, and it ends as it likes (here, 300 ms later).
    const graceful = COUNTER.replace(
      'Deno.addSignalListener("SIGTERM", () => Deno.exit(0));',
      'Deno.addSignalListener("SIGTERM", () => setTimeout(() => Deno.exit(0), 300));',
    );
    assert.notEqual(graceful, COUNTER);
    const pod = await rt.start(spec(["deno", "eval", graceful]));
    t0 = performance.now();
    await rt.stop("pod-test", 3000);
    const took = performance.now() - t0;
    assert.ok(took >= 250 && took < 2500, `stopped in ${Math.round(took)} ms`);
    assert.match(await pod.exited, /exit code 0/);
  },
);

criuNetTest(
  "ProcessRuntime: a restore whose worker's open file is gone fails naming it (not made again, empty), leaving nothing behind",
  async ({ dir, rt }) => {
    const state = `${dir}/state.db`;
    const worker = `const f = Deno.openSync(${
      JSON.stringify(state)
    }, { read: true, write: true, create: true }); f.writeSync(new TextEncoder().encode("kept")); ${COUNTER}`;
    await rt.start(spec(["deno", "eval", worker]));
    await rt.snapshot("pod-test", `${dir}/image`);
    await rt.stop("pod-test");
    await Deno.remove(state);
    const err = await rt.restore(spec([], { podId: "copy" }), `${dir}/image`).catch((e) => e);
    assert.match(String(err), new RegExp(`${state}, which the worker had open, is gone`));
    assert.equal(await Deno.stat(state).then(() => true, () => false), false, "not made again");
    assert.deepEqual(rt.running(), []);
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.startsWith("copy")),
      [],
      "no restore directory or log left",
    );
  },
);

criuNetTest(
  "ProcessRuntime: a restore refuses a file the worker held open read-only that changed since the dump",
  async ({ dir, rt }) => {
    const weights = `${dir}/weights.bin`;
    await Deno.writeTextFile(weights, "0123456789");
    const worker = `const f = Deno.openSync(${
      JSON.stringify(weights)
    }, { read: true }); const b = new Uint8Array(4); f.readSync(b); ${COUNTER}`;
    await rt.start(spec(["deno", "eval", worker]));
    await rt.snapshot("pod-test", `${dir}/image`);
    await rt.stop("pod-test");
    const restore = (podId: string) =>
      rt.restore(spec([], { podId }), `${dir}/image`).then(
        async (pod) => (await rt.stop(podId), pod),
        (e) => e,
      );
    // As it was: restored.
    assert.ok((await restore("same")).endpoint, "restored while the file is as it was");
    // Longer, then as long but written again, then another file under its name: refused.
    await Deno.writeTextFile(weights, "0123456789abc");
    assert.match(
      String(await restore("longer")),
      new RegExp(
        `${weights}, which the worker had open read-only, changed since the dump \\(10 bytes then, 13 now\\)`,
      ),
    );
    await new Promise((r) => setTimeout(r, 20));
    await Deno.writeTextFile(weights, "9876543210");
    assert.match(String(await restore("rewritten")), /\(modified, its size the same\)/);
    await Deno.writeTextFile(`${weights}.new`, "0123456789");
    await Deno.rename(`${weights}.new`, weights);
    assert.match(String(await restore("replaced")), /\(replaced by another file\)/);
    assert.deepEqual(rt.running(), []);
  },
);

Deno.test({
  name:
    "ProcessRuntime ends a worker whose snapshot's CRIU was killed from outside (its code or locks may be left in it)",
  ignore: !netCap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    // A "criu" the OOM killer ends halfway through its dump.
    const criu = new Criu({
      argv: ["bash", "-c", "kill -KILL $$", "criu"],
      path: "bash",
      source: "system",
    });
    const rt = new ProcessRuntime({
      criu,
      podNetworks: new PodNetworks({ prefix: "ixtest" }),
      snapshotDir: dir,
    });
    try {
      const pod = await rt.start(spec(["deno", "eval", COUNTER]));
      assert.equal(await count(pod.endpoint), 1);
      const err = await rt.snapshot("pod-test", `${dir}/image`).catch((e) => e);
      assert.ok(err instanceof CriuKilled, String(err));
      assert.match(err.message, /whose worker is ended .*CRIU was killed \(SIGKILL\)/);
      // Before, it went on serving, CRIU's code or its network lock perhaps left in it.
      await pod.exited;
    } finally {
      for (const id of rt.running()) await rt.stop(id);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

criuNetTest(
  "ProcessRuntime: a snapshot of a worker that died under it fails as the worker's, not as what CRIU cannot dump",
  async ({ dir, rt }) => {
    // A worker that exits a moment after it is asked: while it is being dumped, or before. (30 ms
    // after, on a loaded host CRIU froze it first now and then, and the dump succeeded.)
    const dying = COUNTER.replace(
      "(req) => ",
      '(req) => req.url.endsWith("/die") ? (setTimeout(() => Deno.exit(3), 1), new Response("bye")) : ',
    );
    const pod = await rt.start(spec(["deno", "eval", dying]));
    assert.equal(await (await fetch(`http://${pod.endpoint}/die`)).text(), "bye");
    const err = await rt.snapshot("pod-test", `${dir}/image`).catch((e) => e);
    assert.ok(err instanceof InferxError, String(err));
    assert.ok(
      err.code === "worker_failed" || err.code === "not_found",
      `${err.code}: ${err.message}`,
    );
  },
);

criuNetTest(
  "ProcessRuntime: a restore from a truncated or incomplete image fails at once, naming the file, and leaves nothing behind",
  async ({ dir, rt }) => {
    await rt.start(spec(["deno", "eval", COUNTER]));
    await rt.snapshot("pod-test", `${dir}/image`);
    await rt.stop("pod-test");
    const meta = JSON.parse(await Deno.readTextFile(`${dir}/image/inferx.json`));
    const [pages, size] = Object.entries(meta.images as Record<string, number>)
      .filter(([p]) => p.startsWith("pages-")).sort(([, a], [, b]) => b - a)[0];
    assert.ok(size > 0);
    // A copy stopped half way: what CRIU would read spins until its time limit (60 s).
    await Deno.truncate(`${dir}/image/${pages}`, Math.floor(size / 2));
    const t0 = performance.now();
    const err = await rt.restore(spec([], { podId: "copy" }), `${dir}/image`).catch((e) => e);
    assert.match(
      String(err),
      new RegExp(`${pages} has ${Math.floor(size / 2)} bytes, ${size} when it was dumped`),
    );
    assert.ok(performance.now() - t0 < 5000, `${performance.now() - t0} ms`);
    await Deno.remove(`${dir}/image/${pages}`);
    const gone = await rt.restore(spec([], { podId: "copy" }), `${dir}/image`).catch((e) => e);
    assert.match(String(gone), new RegExp(`${pages} is gone`));
    assert.equal((gone as InferxError).code, "worker_failed");
    assert.deepEqual(rt.running(), []);
  },
);

criuNetTest(
  "ProcessRuntime: recover() removes the images of pods parked in a file, and keeps snapshots",
  async ({ dir, rt }) => {
    await rt.start(spec(["deno", "eval", COUNTER]));
    await rt.park("pod-test", "file");
    await Deno.mkdir(`${dir}/images/a-snapshot`, { recursive: true });
    await Deno.writeTextFile(`${dir}/images/a-snapshot/inferx.json`, "{}");
    await Deno.mkdir(`${dir}/pod-old.restore`);
    assert.ok([...Deno.readDirSync(dir)].some((e) => e.name === "pod-test"));
    // The agent restarted: nothing can resume the parked pod any more.
    await new ProcessRuntime({ criu: new Criu(locateCriu()!), snapshotDir: dir }).recover();
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["images"]);
    assert.ok(Deno.statSync(`${dir}/images/a-snapshot/inferx.json`).isFile);
  },
);

Deno.test({
  name:
    "ProcessRuntime: a park to file that runs out of disk keeps the worker serving, or says it ended",
  ignore: !criuCap.available || !netCap.available || Deno.uid() !== 0,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const sh = (...args: string[]) =>
      new Deno.Command(args[0], { args: args.slice(1) }).outputSync();
    // Disks that run out of room (files) at each step of a park: before CRIU's images, among
    // them, and after them (where the image's description used to be written, the worker ended).
    for (const inodes of [4, 12, 20, 22, 24]) {
      const dir = await Deno.makeTempDir();
      assert.ok(
        sh("mount", "-t", "tmpfs", "-o", `size=512m,nr_inodes=${inodes}`, "tmpfs", dir).success,
      );
      const exits: string[] = [];
      const rt = new ProcessRuntime({
        criu: new Criu(locateCriu()!),
        podNetworks: new PodNetworks({ prefix: "ixtest" }),
        snapshotDir: dir,
        onExit: (id) => exits.push(id),
      });
      try {
        const pod = await rt.start(spec(["deno", "eval", COUNTER]));
        assert.equal(await count(pod.endpoint), 1);
        const parked = await rt.park("pod-test", "file").then(() => true, () => false);
        if (parked) {
          // A disk with room for the image but not for the restore's own files: the resume
          // fails (the agent then starts the pod afresh), and no worker runs meanwhile.
          const resumed = await rt.resume("pod-test").then(() => true, (e) => String(e));
          if (resumed !== true) {
            assert.match(String(resumed), /No space left on device/);
            assert.deepEqual(exits, []);
            continue;
          }
        }
        assert.equal(
          await count(pod.endpoint),
          2,
          `${inodes} files: parked ${parked}, exits ${exits}`,
        );
        assert.deepEqual(exits, []);
      } finally {
        await rt.stop("pod-test");
        sh("umount", dir);
        await Deno.remove(dir, { recursive: true });
      }
    }
  },
});

/** A worker that initialises the (fake) driver at `lib` first, as a CUDA program does, then counts. */
function gpuWorkerSpec(lib: string): PodSpec {
  const worker = `const r = Deno.dlopen(Deno.env.get("LIBCUDA"),
    { cuInit: { parameters: ["u32"], result: "i32" } }).symbols.cuInit(0);
    if (r !== 0) { console.error("cuInit: " + r); Deno.exit(3); }
    ${COUNTER}`;
  const s = spec(["deno", "eval", worker], { gpus: [{ index: 0, vramMB: 1000 }] });
  s.template.envs.push(["LIBCUDA", lib]);
  return s;
}

Deno.test({
  name:
    "ProcessRuntime runs a GPU worker in its own network namespace and the node's PID namespace, where the driver initialises; it parks in a file and resumes",
  ignore: !criuCap.available || !netCap.available || fakeLibCudaUnavailable() !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // The fake driver's cuInit fails, as the real one did on an H200, where
    // the caller's PID does not name it in /proc (a PID namespace of its own).
    const lib = await buildFakeLibCuda();
    const { cuda } = openLibCuda(lib);
    const { dir, rt } = await criuRuntime(true, cuda);
    const gpuSpec = gpuWorkerSpec(lib);
    try {
      const pod = await rt.start(gpuSpec);
      assert.match(pod.endpoint, /^10\./, "in a pod network namespace");
      assert.equal(await count(pod.endpoint), 1);
      const pid = rt.pidOf("pod-test")!;
      const nsOf = (p: number | string, ns: string) => Deno.readLinkSync(`/proc/${p}/ns/${ns}`);
      assert.equal(nsOf(pid, "pid"), nsOf("self", "pid"), "the node's PID namespace");
      assert.notEqual(nsOf(pid, "net"), nsOf("self", "net"), "a network namespace of its own");
      await rt.park("pod-test", "file");
      assert.equal(rt.pidOf("pod-test"), undefined);
      await rt.resume("pod-test");
      assert.equal(rt.pidOf("pod-test"), pid, "CRIU gives it back its PID");
      assert.equal(await count(pod.endpoint), 2);
      // No copy of it could be restored beside it: it is not snapshotted, saying why.
      await assert.rejects(rt.snapshot("pod-test", `${dir}/image`), (err: InferxError) => {
        assert.equal(err.code, "unsupported");
        assert.match(err.message, /shares the node's PID namespace/);
        return true;
      });
      assert.equal(await count(pod.endpoint), 3, "it runs on");
      // Nor is its file image restored as a copy.
      await rt.park("pod-test", "file");
      await assert.rejects(
        rt.restore({ ...gpuSpec, podId: "copy-1" }, `${dir}/pod-test`),
        (err: InferxError) =>
          err.code === "unsupported" && /node's PID namespace/.test(err.message),
      );
      await rt.resume("pod-test");
      assert.equal(await count(pod.endpoint), 4);
    } finally {
      await rt.stop("pod-test");
      cuda!.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(lib.replace(/\/[^/]+$/, ""), { recursive: true });
    }
  },
});

Deno.test({
  name:
    "ProcessRuntime as a subreaper (PID 1 of a container) reaps restored GPU workers: a file-parked one resumes again and again",
  ignore: !criuCap.available || !netCap.available || fakeLibCudaUnavailable() !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const lib = await buildFakeLibCuda();
    const dir = await Deno.makeTempDir();
    try {
      // In a process of its own: being a subreaper is for the whole process.
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("./testdata/resume_as_subreaper.ts", import.meta.url).pathname,
          lib,
          dir,
          JSON.stringify(gpuWorkerSpec(lib)),
        ],
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.ok(out.success, `${text}${new TextDecoder().decode(out.stderr)}`);
      const { resumeMs } = JSON.parse(text.trim().split("\n").at(-1)!);
      // Without reaping, the second resume finds its PID taken by the first copy's zombie.
      assert.equal(resumeMs.length, 3);
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(lib.replace(/\/[^/]+$/, ""), { recursive: true });
    }
  },
});

Deno.test({
  name:
    "ProcessRuntime snapshots a running worker and restores several copies that serve side by side",
  ignore: !criuCap.available || !netCap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { dir, rt } = await criuRuntime(true);
    assert.equal(rt.snapshots, true);
    const ids: string[] = [];
    try {
      const a = await rt.start(spec(["deno", "eval", `console.log("loaded"); ${COUNTER}`]));
      ids.push("pod-test");
      assert.equal(await count(a.endpoint), 1);
      const taken = await rt.snapshot("pod-test", `${dir}/image`);
      assert.ok(taken.bytes > 1_000_000, `an image of ${taken.bytes} bytes`);
      assert.equal(await count(a.endpoint), 2, "the snapshotted worker keeps running");
      const copies: RunningPod[] = [];
      for (const id of ["copy-1", "copy-2"]) {
        copies.push(await rt.restore({ ...spec([]), podId: id }, `${dir}/image`));
        ids.push(id);
      }
      assert.equal(new Set([a.endpoint, ...copies.map((c) => c.endpoint)]).size, 3);
      // Each copy goes on from the count at the snapshot, on its own.
      assert.equal(await count(copies[0].endpoint), 2);
      assert.equal(await count(copies[0].endpoint), 3);
      assert.equal(await count(copies[1].endpoint), 2);
      assert.equal(await count(a.endpoint), 3);
      // Each copy's output goes to a log of its own, from the restore on.
      await eventually(async () => (await rt.logs("copy-1")).includes("served 3"));
      assert.doesNotMatch(await rt.logs("copy-2"), /served 3|loaded/);
      assert.match(await rt.logs("pod-test"), /loaded/);
      const pids = ["copy-1", "copy-2"].map((id) => rt.pidOf(id)!);
      assert.notEqual(pids[0], pids[1]);
      // Each copy (its namespace's init and the worker below it) reads as alive on its own.
      assert.deepEqual(await Promise.all(copies.map((c) => c.alive!())), [true, true]);
      Deno.kill(pids[1], "SIGKILL");
      await eventually(async () => !(await copies[1].alive!()));
      assert.equal(await copies[0].alive!(), true);
      await rt.stop("copy-1");
      assert.equal(await copies[0].alive!(), false);
      assert.equal(await count(a.endpoint), 4, "stopping the copies leaves the original");
      await assert.rejects(rt.restore({ ...spec([]), podId: "copy-3" }, `${dir}/nothing`), {
        name: "InferxError",
        message: /no image/,
      });
    } finally {
      for (const id of ids) await rt.stop(id);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

t(
  "ProcessRuntime stops a worker with the processes it started, and hears it die while they live",
  async () => {
    // A helper found by its odd sleep time.
    const helperAlive = async (secs: string) =>
      (await new Deno.Command("pgrep", { args: ["-f", `sleep ${secs}`], stdout: "null" }).output())
        .success;
    // A shell that starts a helper holding its output pipes, then becomes the worker.
    const worker = (secs: string, code: string) => [
      "sh",
      "-c",
      `sleep ${secs} &\nexec "$0" "$@"`,
      "deno",
      "eval",
      code,
    ];
    const rt = new ProcessRuntime();
    await rt.start(spec(worker("601.123", ENV_SERVER)));
    assert.ok(await helperAlive("601.123"), "the helper runs");
    await rt.stop("pod-test", 1000); // returns: it used to wait for the helper's pipes to close
    assert.equal(await helperAlive("601.123"), false, "stopped with its worker");
    // A worker that dies while its helper lives is reported dead.
    const died = Promise.withResolvers<string>();
    const rt2 = new ProcessRuntime({ onExit: (_id, why) => died.resolve(why) });
    const dies = `${ENV_SERVER}\nsetTimeout(() => Deno.exit(9), 300);`;
    await rt2.start(spec(worker("602.123", dies)));
    assert.match(await died.promise, /exit code 9/);
    assert.equal(await helperAlive("602.123"), false, "its helper went with it");
    await new Deno.Command("pkill", { args: ["-f", "sleep 602.123"] }).output();
  },
);

t(
  "ProcessRuntime removes a crashed worker's output file once told, and old ones at recover()",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const died = Promise.withResolvers<string>();
      const rt = new ProcessRuntime({
        outputToFile: true,
        snapshotDir: dir,
        scope: `test-${crypto.randomUUID()}`,
        onExit: (_id, why) => died.resolve(why),
      });
      const code =
        `${ENV_SERVER}\nsetTimeout(() => { console.error("boom"); Deno.exit(3); }, 300);`;
      await rt.start(spec(["deno", "eval", code]));
      assert.match(await died.promise, /exit code 3[\s\S]*boom/, "told with its output");
      const left = () =>
        [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => /\.log/.test(n));
      for (let i = 0; i < 50 && left().length; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(left(), []);
      // An agent that restarts after a crash of its own: the files of the workers it ended go.
      await Deno.writeTextFile(`${dir}/pod-old.log`, "from before");
      await Deno.writeTextFile(`${dir}/pod-old.log.probe`, "");
      await rt.recover();
      assert.deepEqual(left(), []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t(
  "ProcessRuntime says a worker's output cannot be written (a full disk), not an empty last output",
  async () => {
    await withTmpfs("1m", async (dir) => {
      await Deno.writeFile(`${dir}/filler`, new Uint8Array(1024 * 1024)).catch(() => {});
      const rt = new ProcessRuntime({ outputToFile: true, snapshotDir: dir });
      await assert.rejects(rt.start(spec(["deno", "eval", ENV_SERVER])), (err: InferxError) => {
        assert.equal(err.code, "worker_failed");
        assert.match(err.message, /Cannot write the worker's output to .*pod-test\.log: No space/);
        return true;
      });
    });
  },
);

Deno.test({
  name:
    "ProcessRuntime in a pod's namespaces tells a worker killed by SIGKILL (the OOM killer's) as such",
  ignore: !criuCap.available || !netCap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const died = Promise.withResolvers<string>();
    const rt = new ProcessRuntime({
      criu: new Criu(locateCriu()!),
      podNetworks: new PodNetworks({ prefix: "ixtest" }),
      snapshotDir: dir,
      onExit: (_id, why) => died.resolve(why),
    });
    try {
      await rt.start(spec(["deno", "eval", COUNTER]));
      Deno.kill(rt.pidOf("pod-test")!, "SIGKILL");
      assert.match(await died.promise, /^killed by SIGKILL/);
      // Its namespace went before its end was told: the same pod id may start again at once.
      const listed = new TextDecoder().decode(
        (await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).output())
          .stdout,
      );
      assert.doesNotMatch(listed, /ixtest-pod-test/);
    } finally {
      await rt.stop("pod-test");
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * Serves `/`; `/orphan` starts a shell that leaves a short `sleep` behind (it
 * exits without waiting for it) and answers once the shell is done; on
 * SIGTERM it writes "term" to `$MARK` and exits; `/abort` ends it by SIGABRT.
 */
const ORPHANER = `
Deno.addSignalListener("SIGTERM", () => { Deno.writeTextFileSync(Deno.env.get("MARK"), "term"); Deno.exit(0); });
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/abort") Deno.kill(Deno.pid, "SIGABRT");
    if (path !== "/orphan") return new Response("up");
    await new Deno.Command("/bin/sh", { args: ["-c", "sleep 0.05 & exit 0"] }).output();
    return new Response("left one");
  });`;

/** The processes in the PID namespace of `pid` (the host's view), with their states. */
async function namespaceProcesses(pid: number): Promise<{ pid: number; state: string }[]> {
  const ns = await Deno.readLink(`/proc/${pid}/ns/pid`);
  const out = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    if (await Deno.readLink(`/proc/${e.name}/ns/pid`).catch(() => "") !== ns) continue;
    const state = (await procState(Number(e.name)))?.state;
    if (state) out.push({ pid: Number(e.name), state });
  }
  return out;
}

const tini = new ProcessRuntime({ podNetworks: new PodNetworks({ prefix: "ixtest" }) }).init;
if (netCap.available && !tini) console.log("skipping the pod init's tests: no tini on PATH");

Deno.test({
  name:
    "ProcessRuntime runs tini above a worker in its own namespaces: what the worker leaves behind is reaped, SIGTERM reaches it, a pause stops it, its end by a signal is told",
  ignore: !netCap.available || !tini,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const exits: string[] = [];
    const rt = new ProcessRuntime({
      podNetworks: new PodNetworks({ prefix: "ixtest" }),
      snapshotDir: dir,
      onExit: (_id, why) => exits.push(why),
    });
    const mark = `${dir}/mark`;
    const withMark = (id: string) => {
      const s = spec(["deno", "eval", ORPHANER], { podId: id });
      s.template.envs = [["MARK", mark]];
      return s;
    };
    try {
      const pod = await rt.start(withMark("pod-init"));
      const worker = rt.pidOf("pod-init")!;
      const inNs = await namespaceProcesses(worker);
      assert.equal(inNs.length, 2, JSON.stringify(inNs)); // tini and the worker
      for (let i = 0; i < 5; i++) {
        assert.equal(await (await fetch(`http://${pod.endpoint}/orphan`)).text(), "left one");
      }
      await new Promise((r) => setTimeout(r, 300)); // the sleeps end
      // Before, the worker was the namespace's init: each sleep stayed a zombie until the pod ended.
      assert.deepEqual(
        (await namespaceProcesses(worker)).filter((p) => p.state === "Z"),
        [],
        "no zombie is left in the pod",
      );
      await rt.park("pod-init", "paused");
      await eventually(async () => (await procState(worker))?.state === "T");
      await rt.resume("pod-init");
      assert.equal(await (await fetch(`http://${pod.endpoint}/`)).text(), "up");
      await rt.stop("pod-init");
      assert.equal(await Deno.readTextFile(mark), "term", "the worker's own SIGTERM handler ran");
      assert.equal(await procState(worker), undefined);

      const second = await rt.start(withMark("pod-abort"));
      await fetch(`http://${second.endpoint}/abort`).then((r) => r.body?.cancel(), () => {});
      await eventually(() => Promise.resolve(exits.length > 0));
      assert.match(exits[0], /^killed by SIGABRT/);
    } finally {
      for (const id of rt.running()) await rt.stop(id);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

criuNetTest(
  "a copy restored from a snapshot of a worker under tini finds the worker itself, not what it left behind: a pause stops it, a stop ends it",
  async ({ dir, rt }) => {
    if (!rt.init) return;
    // It leaves a process behind before it serves: tini's child too, listed first once restored.
    const leaver =
      `await new Deno.Command("/bin/sh", { args: ["-c", "sleep 600 >/dev/null 2>&1 & exit 0"] }).output();
${COUNTER}`;
    await rt.start(spec(["deno", "eval", leaver]));
    await rt.snapshot("pod-test", `${dir}/image`);
    await rt.stop("pod-test");
    const copy = await rt.restore(spec([], { podId: "copy-1" }), `${dir}/image`);
    const worker = rt.pidOf("copy-1")!;
    assert.match(await Deno.readTextFile(`/proc/${worker}/cmdline`), /^\S*deno\0/, "the worker");
    await rt.park("copy-1", "paused");
    await eventually(async () => (await procState(worker))?.state === "T");
    await rt.resume("copy-1");
    assert.equal(await count(copy.endpoint), 1);
    // Before, its signals went to the leftover sleep's group (none): the stop never ended.
    const stopped = await Promise.race([
      rt.stop("copy-1", 1000).then(() => true),
      new Promise<false>((r) => setTimeout(() => r(false), 10_000)),
    ]);
    assert.ok(stopped, "the stop ended");
    assert.equal(await procState(worker), undefined);
  },
);

Deno.test({
  name: "a worker under tini whose command cannot run fails its start at once, with its exit code",
  ignore: !netCap.available || !tini,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const rt = new ProcessRuntime({
      podNetworks: new PodNetworks({ prefix: "ixtest" }),
      snapshotDir: dir,
    });
    try {
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        const err = await rt.start(spec(["/nonexistent/worker"])).then(() => undefined, (e) => e);
        assert.match(String(err?.message), /exit code 127/);
        // Before, now and then: "started no worker" after 5 s, its exit code lost.
        assert.ok(performance.now() - t0 < 3000, `${performance.now() - t0} ms`);
      }
    } finally {
      for (const id of rt.running()) await rt.stop(id);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("pidFreed() gives up at once on a PID a live process holds past a moment: not the dumped one", async () => {
  const other = new Deno.Command("sleep", { args: ["30"] }).spawn();
  try {
    const t0 = performance.now();
    await assert.rejects(
      pidFreed(other.pid, 10_000),
      /PID \d+ is taken by another process \(sleep\)/,
    );
    const took = performance.now() - t0;
    assert.ok(took < 5_000, `gave up after ${took} ms, not the 10 s a zombie is given`);
  } finally {
    other.kill("SIGKILL");
    await other.status;
  }
  // Once gone, it is free at once.
  await pidFreed(other.pid, 1000);
});
