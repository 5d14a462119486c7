/**
 * What the runtime's sockets cost a proxy, against the C library's through
 * FFI: the same forty-line proxy on `Deno.listen`/`Deno.connect`
 * (`raw_proxy.ts`, the floor row of `bench/gateway.ts`) and on nonblocking
 * sockets in an epoll set of its own, read and written by synchronous FFI
 * calls (`ffi_proxy.ts`), in front of one ngram worker, by the same load
 * generator (`wrk`, keep-alive, POST of a 4-token completion), rounds
 * interleaved. Prints each path's throughput and p50, each proxy's CPU
 * microseconds per request (utime+stime from /proc over the run), and the
 * median of the per-round ratios FFI/runtime: the most that moving the
 * gateway's sockets to FFI could save per request (docs/benchmarks.md).
 *
 * Run: `deno run -A bench/socket_floor.ts [seconds] [connections] [rounds]` (4, 16, 7).
 * Needs `wrk` (Debian's); x86-64 Linux with glibc.
 */
import { freePort } from "../src/common/net.ts";
import { listening } from "../tests/e2e/helpers.ts";
import { hasCommand, withCpu, wrk, type WrkResult } from "./wrk.ts";

const seconds = Number(Deno.args[0] ?? 4);
const connections = Number(Deno.args[1] ?? 16);
const rounds = Number(Deno.args[2] ?? 7);
const BODY = JSON.stringify({ prompt: "The GPU", max_tokens: 4, temperature: 0 });

if (!await hasCommand("wrk")) {
  console.error("bench/socket_floor.ts needs wrk: apt-get install wrk");
  Deno.exit(2);
}
if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
  console.error("bench/socket_floor.ts: ffi_proxy.ts is written for x86-64 Linux");
  Deno.exit(2);
}

const here = (f: string) => new URL(`./${f}`, import.meta.url).pathname;
const workerPort = freePort();
const worker = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--allow-net",
    "--allow-read",
    "--allow-env",
    here("../src/samples/ngram/server.ts"),
  ],
  env: { PORT: String(workerPort), HOST: "127.0.0.1" },
  stdout: "null",
  stderr: "null",
}).spawn();
const upstream = `127.0.0.1:${workerPort}`;
const proxies = [
  { name: "runtime sockets (raw_proxy.ts)", script: "raw_proxy.ts", port: freePort() },
  { name: "FFI sockets, epoll (ffi_proxy.ts)", script: "ffi_proxy.ts", port: freePort() },
].map((p) => ({
  ...p,
  proc: new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", here(p.script), String(p.port), upstream],
    stdout: "null",
    stderr: "inherit",
  }).spawn(),
}));

type Row = WrkResult & { cpuUsPerRequest: number };
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

try {
  for (const port of [workerPort, ...proxies.map((p) => p.port)]) {
    while (!(await listening(port))) await new Promise((r) => setTimeout(r, 50));
  }
  const url = (port: number) => `http://127.0.0.1:${port}/v1/completions`;
  const run = (port: number) => wrk(url(port), { seconds, connections, body: BODY });
  // Warm-up: the JIT of each process, the worker's model.
  for (const port of [workerPort, ...proxies.map((p) => p.port)]) {
    await wrk(url(port), { seconds: 1, connections, body: BODY });
  }
  const direct: WrkResult[] = [];
  const by: Row[][] = proxies.map(() => []);
  for (let r = 0; r < rounds; r++) {
    direct.push(await run(workerPort));
    for (const [i, p] of proxies.entries()) {
      by[i].push(await withCpu([p.proc.pid], () => run(p.port)));
    }
  }
  const d = median(direct.map((x) => x.rps));
  console.log(
    `socket floor: wrk, ${seconds} s per path, ${connections} connections, median of ${rounds} interleaved rounds, 4-token completion; deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores`,
  );
  console.log("| path | req/s | of direct | p50 ms | CPU µs/req | errors |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  console.log(
    `| direct | ${d.toFixed(0)} | 1.000 | ${median(direct.map((x) => x.p50)).toFixed(3)} | — | ${
      direct.reduce((n, x) => n + x.errors, 0)
    } |`,
  );
  for (const [i, p] of proxies.entries()) {
    const rows = by[i];
    const rps = median(rows.map((x) => x.rps));
    console.log(
      `| ${p.name} | ${rps.toFixed(0)} | ${(rps / d).toFixed(3)} | ${
        median(rows.map((x) => x.p50)).toFixed(3)
      } | ${median(rows.map((x) => x.cpuUsPerRequest)).toFixed(1)} | ${
        rows.reduce((n, x) => n + x.errors, 0)
      } |`,
    );
  }
  const ratios = by[1].map((x, i) => x.cpuUsPerRequest / by[0][i].cpuUsPerRequest);
  console.log(
    `FFI / runtime sockets, CPU per request: ${median(ratios).toFixed(3)}x (rounds: ${
      ratios.map((x) => x.toFixed(2)).sort().join(", ")
    })`,
  );
} finally {
  for (const p of [worker, ...proxies.map((x) => x.proc)]) {
    try {
      p.kill("SIGTERM");
    } catch {
      // already gone
    }
    await p.status;
  }
}
