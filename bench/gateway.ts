/**
 * Warm-path benchmark: one warm worker (kept up by `min_replica: 1`) called
 * directly, through nginx (as many worker processes as the gateway has,
 * keep-alive upstream), through a raw-socket proxy in the same runtime
 * (`raw_proxy.ts`: the floor for JavaScript), through the gateway's HTTP
 * server and pool alone
 * (`framing_proxy.ts`) and through the gateway, in one run, by the same load
 * generator (`wrk`, keep-alive, POST of a 4-token completion). The gateway
 * runs with auth (an API key on every call), audit and metrics on. Prints
 * for each path its throughput, p50/p99, and for each proxy the CPU
 * microseconds it spent per request (utime+stime from /proc over the run)
 * and how many of them in the kernel (stime: the socket sends and receives,
 * loopback TCP's delivery to the peer included); then the ratios against
 * direct and nginx, the gateway's CPU per request by thread (its main
 * thread, the audit's web worker, V8's platform threads, the runtime's
 * other threads), what bounds the two rates (how busy the worker's process,
 * the gateway's main thread and the machine were, and how long the two
 * main threads waited for a core while runnable: a rate is one core's worth
 * of its busiest single thread's work per request when that thread is near
 * one core, running or waiting to), and the time to the first chunk of a
 * streamed answer, direct vs through the gateway.
 *
 * Budget (DESIGN.md): gateway CPU ≤ 60 µs per request, ≥ 0.6 of direct
 * throughput, added p50 ≤ 0.4 ms.
 *
 * Run: `deno run -A bench/gateway.ts [seconds] [connections] [gateway workers] [rounds]`
 * (5, 16, 1, 3). Each path reports the median of its rounds, run interleaved.
 * Needs `wrk` (Debian's `wrk`); nginx (Debian's `nginx-light`) is skipped with
 * a reason when absent.
 *
 * `GATEWAY_BASELINE=DIR` also runs the gateway of another checkout (say
 * `git worktree add DIR HEAD~1`, with its `node_modules`) on the same
 * platform and prints the median of the per-round CPU ratios: a change's
 * effect, measured in the same minutes as its baseline, when the host's
 * speed drifts between runs (the two take turns going first). Two runs of
 * the same checkout this way put rounds 0.82-1.07 apart: a change of under
 * about 3% is not told from the noise. `GATEWAY_PROFILE=DIR` writes the gateway's V8
 * profile there (`node --prof-process DIR/isolate-*.log`); `GATEWAY_V8_FLAGS`
 * runs the gateway under test (not the baseline) with those V8 flags,
 * `GATEWAY_DENO_FLAGS` passes Deno's own flags to it (space-separated: say,
 * `--trace-ops`, which names every runtime call it makes, or
 * `--inspect=127.0.0.1:PORT`). `GATEWAY_LOG=FILE` keeps its output (say, of
 * `--trace-deopt` or `--trace-ops`) there, and
 * `GATEWAY_CPU_PROFILE=FILE` / `GATEWAY_HEAP_PROFILE=FILE` its CPU and
 * heap profiles (`INFERX_CPU_PROFILE`, `INFERX_HEAP_PROFILE`; sum one with
 * `deno run -A bench/profile_summary.ts FILE`). `GATEWAY_ONLY=1` leaves out
 * nginx and the two bench proxies (direct and the gateways only: an A/B run
 * in half the time). `GATEWAY_PERF=1` (needs `perf`) runs every proxy once
 * more after the rounds, not counted in them, with `perf record -g` on its
 * main thread, and splits that thread's µs a request into the kernel, the
 * runtime's native code and generated code (JavaScript, WebAssembly), with
 * the JavaScript functions whose calls into the runtime cost the most
 * (`native_split.ts`; the Deno proxies run with `--perf-basic-prof` then).
 * `GATEWAY_SYSCALLS=1` (needs `perf` too) runs every proxy once more,
 * with the system calls each of its threads makes a request counted
 * (`syscalls.ts`).
 *
 * `GATEWAY_REPLICAS=R` puts R workers behind the function (min and max
 * replicas R, `parallel` the connections over R, so a gateway needs them
 * all), for a machine with cores to spare where one worker would be the
 * ceiling: nginx then balances over the same R workers and is the baseline
 * (the bench proxies, which take one upstream, are left out), and direct is
 * one of the R workers.
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { request, type RoleProcess, type SpawnOptions, spawnRole } from "../tests/e2e/helpers.ts";
import { startNginx } from "./nginx.ts";
import { recordThread, splitLine, topBuiltins, topCallers } from "./native_split.ts";
import { syscallLines, traceSyscalls } from "./syscalls.ts";
import { freePort } from "../src/common/net.ts";
import { listening } from "../tests/e2e/helpers.ts";
import {
  childPids,
  cpuTimes,
  hasCommand,
  listenerPid,
  machineIdle,
  mainThreadSched,
  threadCpu,
  type ThreadKind,
  withCpu,
  wrk,
  type WrkResult,
} from "./wrk.ts";

const seconds = Number(Deno.args[0] ?? 5);
const connections = Number(Deno.args[1] ?? 16);
const gatewayWorkers = Number(Deno.args[2] ?? 1);
const rounds = Number(Deno.args[3] ?? 3);
/** A directory to write the gateway's V8 profile to (`--prof`), for `node --prof-process`. */
const profile = Deno.env.get("GATEWAY_PROFILE");
/** Another checkout (a worktree of an earlier commit) whose gateway is measured alongside. */
const baseline = Deno.env.get("GATEWAY_BASELINE");
/** V8 flags for the gateway under test (not the baseline's), comma-separated. */
const v8Flags = Deno.env.get("GATEWAY_V8_FLAGS");
/** Deno's own flags for the gateway under test (say, `--trace-ops` or `--inspect=127.0.0.1:PORT`), space-separated. */
const denoFlags = Deno.env.get("GATEWAY_DENO_FLAGS")?.split(" ").filter(Boolean) ?? [];
/** A file for the output of the gateway under test (say, of `--trace-deopt`), written at the end. */
const gatewayLog = Deno.env.get("GATEWAY_LOG");
/** Files for the gateway's CPU and heap profiles (`INFERX_*_PROFILE`), for `bench/profile_summary.ts`. */
const cpuProfile = Deno.env.get("GATEWAY_CPU_PROFILE");
const heapProfile = Deno.env.get("GATEWAY_HEAP_PROFILE");
/** Split each proxy's main thread by the kind of code it ran (`native_split.ts`). */
const perfSplit = Deno.env.get("GATEWAY_PERF") === "1" && await hasCommand("perf");
if (Deno.env.get("GATEWAY_PERF") === "1" && !perfSplit) {
  console.log("GATEWAY_PERF: skipped (no perf: apt-get install linux-perf)");
}
/** Count each proxy's system calls a request (`syscalls.ts`). */
const syscalls = Deno.env.get("GATEWAY_SYSCALLS") === "1" && await hasCommand("perf");
if (Deno.env.get("GATEWAY_SYSCALLS") === "1" && !syscalls) {
  console.log("GATEWAY_SYSCALLS: skipped (no perf: apt-get install linux-perf)");
}
/** V8 flags the Deno proxies under test run with: names for JIT code in perf's samples. */
const perfV8 = perfSplit ? ["--perf-basic-prof"] : [];
/** The processes whose JIT code maps (`/tmp/perf-PID.map`, left by V8) go when they stop. */
const perfMaps = new Set<number>();
/** `GATEWAY_ONLY=1`: measure direct and the gateway(s) only (an A/B run in half the time). */
const gatewayOnly = Deno.env.get("GATEWAY_ONLY") === "1";
/** `GATEWAY_REPLICAS=R`: R workers behind the function (nginx balances over them). */
const replicas = Number(Deno.env.get("GATEWAY_REPLICAS") ?? 1);
if (!Number.isInteger(replicas) || replicas < 1 || replicas > 64) {
  console.error(`GATEWAY_REPLICAS must be a whole number from 1 to 64, not ${replicas}`);
  Deno.exit(2);
}
const BODY = JSON.stringify({ prompt: "The GPU", max_tokens: 4, temperature: 0 });
const ADMIN = "bench-admin-key-0123456789";

if (!await hasCommand("wrk")) {
  console.error("bench/gateway.ts needs wrk: apt-get install wrk");
  Deno.exit(2);
}

const p = await startRoles();
const nginxPath = await hasCommand("nginx");
let nginx: Awaited<ReturnType<typeof startNginx>> | undefined;
let raw: Deno.ChildProcess | undefined;
let framing: Deno.ChildProcess | undefined;
try {
  const admin = { authorization: `Bearer ${ADMIN}` };
  const put = (o: unknown) =>
    request(`${p.url}/object/`, { method: "PUT", body: o, headers: admin });
  for (
    const o of [
      { type: "tenant", tenant: "system", namespace: "system", name: "bench", object: {} },
      { type: "namespace", tenant: "bench", namespace: "system", name: "gw", object: {} },
      {
        type: "function",
        tenant: "bench",
        namespace: "gw",
        name: "lm",
        object: {
          image: "inferx/ngram:latest",
          commands: NGRAM_COMMANDS,
          resources: { CPU: 500, Mem: 256 },
          policy: {
            Obj: {
              min_replica: replicas,
              max_replica: replicas,
              parallel: replicas === 1 ? 64 : Math.ceil(connections / replicas),
              scalein_timeout: 600,
            },
          },
        },
      },
    ]
  ) {
    const r = await put(o);
    if (r.status !== 201) throw new Error(`Cannot create ${o.name}: ${JSON.stringify(r.body)}`);
  }
  const key = await request(`${p.url}/apikeys`, {
    body: { scope: "inference", tenant: "bench", name: "bench" },
    headers: admin,
  });
  if (key.status !== 201) throw new Error(`Cannot create a key: ${JSON.stringify(key.body)}`);
  const auth = { authorization: `Bearer ${key.body.key}` };
  const viaGateway = `${p.url}/funccall/bench/gw/lm/v1/completions`;
  const warm = await request(viaGateway, { body: JSON.parse(BODY), headers: auth });
  if (warm.status !== 200) throw new Error(`warm-up failed: ${JSON.stringify(warm.body)}`);
  // Every replica up and answering (min_replica starts them; one answered the warm-up).
  let endpoints: string[] = [];
  for (const deadline = Date.now() + 120_000;;) {
    const pods: { endpoint?: string }[] =
      (await request(`${p.url}/pods/bench/gw/lm`, { headers: admin })).body;
    const up = await Promise.all(
      pods.map((q) =>
        q.endpoint
          ? request(`http://${q.endpoint}/v1/completions`, { body: JSON.parse(BODY) })
            .then((r) => r.status === 200, () => false)
          : false
      ),
    );
    endpoints = pods.filter((_, k) => up[k]).map((q) => q.endpoint!);
    if (endpoints.length >= replicas) break;
    if (Date.now() > deadline) {
      throw new Error(`${replicas} workers not up: ${JSON.stringify(pods)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const pod = { endpoint: endpoints[0] };
  const direct = `http://${pod.endpoint}/v1/completions`;
  /** A gateway role's process and the gateway processes it started (GATEWAY_WORKERS > 1). */
  const gatewayPids = (role: RoleProcess, strict = true) => async () => {
    let members = await gatewayChildren(role.proc.pid);
    // A member being started again (it exited) is waited for, 10 s at most.
    for (let i = 0; strict && i < 100 && members.length !== gatewayWorkers - 1; i++) {
      await new Promise((r) => setTimeout(r, 100));
      members = await gatewayChildren(role.proc.pid);
    }
    // Every member's CPU counts: one missed would make the gateway look cheaper than it is.
    // A baseline checkout may predate INFERX_GATEWAY_GROUP: it is counted as found, with a warning.
    if (members.length !== gatewayWorkers - 1) {
      const what = `${members.length} of ${gatewayWorkers - 1} gateway member processes found`;
      if (strict) {
        throw new Error(
          `${what} (GATEWAY_WORKERS=${gatewayWorkers}); the gateway's log ends:\n${
            role.output().slice(-4000)
          }`,
        );
      }
      console.warn(`baseline: ${what}; its CPU counts those`);
    }
    return [role.proc.pid, ...members];
  };

  const run = (url: string) => wrk(url, { seconds, connections, body: BODY, headers: auth });
  // The bench proxies take one upstream: with several replicas nginx alone stands beside the gateway.
  const benchProxies = !gatewayOnly && replicas === 1;
  if (!gatewayOnly && !benchProxies) {
    console.log("bench proxies: skipped (GATEWAY_REPLICAS > 1: they take one upstream)");
  }
  // The floor: a forty-line proxy on raw sockets in the same runtime.
  const rawPort = freePort();
  // The gateway's HTTP server and upstream pool with nothing else: its framing's share.
  const framingPort = freePort();
  if (benchProxies) {
    raw = startProxy("raw_proxy.ts", rawPort, pod.endpoint);
    framing = startProxy("framing_proxy.ts", framingPort, pod.endpoint);
    while (!(await listening(rawPort)) || !(await listening(framingPort))) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  if (nginxPath && !gatewayOnly) nginx = await startNginx(endpoints, gatewayWorkers);
  else if (!nginxPath) console.log("nginx: skipped (not installed: apt-get install nginx-light)");
  const rawPid = raw?.pid ?? 0;
  const framingPid = framing?.pid ?? 0;
  if (perfSplit && benchProxies) perfMaps.add(rawPid).add(framingPid); // run with --perf-basic-prof even when not measured
  const paths: { name: string; url: string; pids?: () => Promise<number[]> }[] = [
    { name: replicas > 1 ? `direct (one of ${replicas} workers)` : "direct", url: direct },
    ...(nginx
      ? [{
        name: replicas > 1 ? `nginx (over ${replicas} workers)` : "nginx",
        url: `${nginx.url}/v1/completions`,
        pids: nginx.pids,
      }]
      : []),
    ...(!benchProxies ? [] : [
      {
        name: "raw-socket JS proxy (floor)",
        url: `http://127.0.0.1:${rawPort}/v1/completions`,
        pids: () => Promise.resolve([rawPid]),
      },
      {
        name: "gateway's HTTP server + pool alone",
        url: `http://127.0.0.1:${framingPort}/v1/completions`,
        pids: () => Promise.resolve([framingPid]),
      },
    ]),
    ...(p.baselineGateway
      ? [{
        name: `baseline gateway (${baseline})`,
        url: viaGateway.replace(p.url, p.baselineGateway.url),
        pids: gatewayPids(p.baselineGateway.role, false),
      }]
      : []),
    {
      name: `gateway (${gatewayWorkers} worker${gatewayWorkers > 1 ? "s" : ""})`,
      url: viaGateway,
      pids: gatewayPids(p.gateway),
    },
  ];
  for (const path of paths) await run(path.url); // warm every path once
  // Rounds interleave the paths, so a burst of other load on the machine
  // touches them alike; each path reports its median round.
  type Row = WrkResult & { cpuUsPerRequest?: number; sysUsPerRequest?: number };
  /**
   * Shares of one core: the worker's process, the gateway's main thread; the machine's idle
   * cores; the time the worker's and the gateway's main threads spent runnable but waiting for
   * a core, and how often the gateway's main thread was preempted (per call).
   */
  type Busy = {
    worker: number;
    main: number;
    idle: number;
    wall: number;
    workerWait: number;
    mainWait: number;
    preemptions: number;
  };
  const results = paths.map(() => [] as Row[]);
  // The gateway under test's CPU per request by thread kind, each round.
  const byThread: Record<ThreadKind, number>[] = [];
  // What bounds each path's rate: how busy the worker's process, the gateway's main thread
  // and the machine were over the run (direct's and the gateway under test's).
  const [podHost, podPort] = pod.endpoint.split(":");
  const workerPid = await listenerPid(podHost, Number(podPort));
  const busy: Busy[][] = [[], []];
  // With several replicas: each worker's process, found by its port, and how busy each was
  // while the gateway was measured (whether the gateway spread its calls over them).
  const replicaPids = replicas === 1 ? [] : (await Promise.all(
    endpoints.map((e) => listenerPid(e.split(":")[0], Number(e.split(":")[1]))),
  )).filter((pid): pid is number => pid !== undefined);
  const spread: number[][] = [];
  const workerPids = workerPid === undefined ? [] : [workerPid];
  const measured = async <T extends { requests: number }>(
    load: () => Promise<T>,
    mains: number[] = [],
  ): Promise<[T, Busy]> => {
    const w0 = workerPid === undefined ? undefined : await cpuTimes(workerPid);
    const ws0 = await mainThreadSched(workerPids);
    const g0 = await mainThreadSched(mains);
    const [i0, t0] = [await machineIdle(), performance.now()];
    const r = await load();
    const wall = (performance.now() - t0) / 1000;
    const i1 = await machineIdle();
    const g1 = await mainThreadSched(mains);
    const ws1 = await mainThreadSched(workerPids);
    const w1 = workerPid === undefined ? undefined : await cpuTimes(workerPid);
    const worker = w0 && w1 ? (w1.user + w1.sys - w0.user - w0.sys) / wall : NaN;
    const b = {
      worker,
      idle: (i1 - i0) / wall,
      wall,
      main: NaN,
      workerWait: (ws1.wait - ws0.wait) / wall,
      mainWait: (g1.wait - g0.wait) / wall,
      preemptions: (g1.preempted - g0.preempted) / Math.max(1, r.requests),
    };
    return [r, b];
  };
  const last = paths.length - 1;
  for (let round = 0; round < rounds; round++) {
    // The baseline gateway and the gateway under test take turns going first, so that
    // neither always runs on a machine the other has just left busy.
    const order = [...paths.keys()];
    if (p.baselineGateway && round % 2 === 1) [order[last - 1], order[last]] = [last, last - 1];
    for (const i of order) {
      const path = paths[i];
      if (i === 0) {
        const [r, b] = await measured(() => run(path.url));
        results[i].push(r);
        busy[0].push(b);
        continue;
      }
      if (i < last) {
        results[i].push(
          path.pids ? await withCpu(await path.pids(), () => run(path.url)) : await run(path.url),
        );
        continue;
      }
      const pids = await path.pids!();
      const before = await threadCpu(pids);
      const spread0 = await Promise.all(replicaPids.map((pid) => cpuTimes(pid)));
      const [r, b] = await measured(() => withCpu(pids, () => run(path.url)), pids);
      const spread1 = await Promise.all(replicaPids.map((pid) => cpuTimes(pid)));
      spread.push(
        spread1.map((t, k) => (t.user + t.sys - spread0[k].user - spread0[k].sys) / b.wall),
      );
      const after = await threadCpu(pids);
      results[i].push(r);
      busy[1].push({ ...b, main: (after.main - before.main) / b.wall });
      const per = (k: ThreadKind) => ((after[k] - before[k]) * 1e6) / Math.max(1, r.requests);
      byThread.push({
        main: per("main"),
        workers: per("workers"),
        v8: per("v8"),
        other: per("other"),
      });
    }
  }
  const median = (rs: Row[]) => [...rs].sort((x, y) => x.rps - y.rps)[rs.length >> 1];
  const midOf = (rs: Row[], k: "cpuUsPerRequest" | "sysUsPerRequest") =>
    rs[0][k] === undefined ? undefined : rs.map((r) => r[k]!).sort((x, y) => x - y)[rs.length >> 1];
  const rows: [string, Row][] = paths.map((p, i) => [
    p.name,
    {
      ...median(results[i]),
      cpuUsPerRequest: midOf(results[i], "cpuUsPerRequest"),
      sysUsPerRequest: midOf(results[i], "sysUsPerRequest"),
    },
  ]);

  const d = rows[0][1];
  const f = (x: number, n = 3) => x.toFixed(n);
  console.log(
    `gateway warm-path benchmark: wrk, ${seconds} s per path, ${connections} connections, ` +
      `median of ${rounds} interleaved rounds, ` +
      `4-token completion, auth+audit+metrics on, ${
        replicas > 1 ? `${replicas} workers behind the function` : "one worker"
      }; deno ${Deno.version.deno}, ` +
      `${navigator.hardwareConcurrency} cores`,
  );
  console.log(
    "| path | req/s | of direct | p50 ms | added p50 ms | p99 ms | CPU µs/req | of it kernel | errors |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const [name, r] of rows) {
    console.log(
      `| ${name} | ${r.rps.toFixed(0)} | ${f(r.rps / d.rps)} | ${f(r.p50)} | ${
        r === d ? "—" : f(r.p50 - d.p50)
      } | ${f(r.p99)} | ${r.cpuUsPerRequest === undefined ? "—" : f(r.cpuUsPerRequest, 1)} | ${
        r.sysUsPerRequest === undefined ? "—" : f(r.sysUsPerRequest, 1)
      } | ${r.errors} |`,
    );
  }
  const gw = rows[rows.length - 1][1];
  const ng = nginxPath && !gatewayOnly ? rows[1][1] : undefined;
  console.log(
    `gateway: ${f(gw.rps / d.rps)} of direct (budget >= 0.6), added p50 ${
      f(gw.p50 - d.p50)
    } ms (budget <= 0.4), ${f(gw.cpuUsPerRequest!, 1)} µs CPU per request (budget <= 60)` +
      (ng ? `, ${f(gw.cpuUsPerRequest! / ng.cpuUsPerRequest!, 2)}x nginx's CPU` : ""),
  );
  if (ng && replicas > 1) {
    console.log(
      `gateway against nginx over the same ${replicas} workers: ${f(gw.rps / ng.rps)} of its ` +
        `throughput, ${f(gw.p50 - ng.p50)} ms at p50`,
    );
  }
  const mid = (k: ThreadKind) => f(byThread.map((t) => t[k]).sort((x, y) => x - y)[rounds >> 1], 1);
  console.log(
    `gateway CPU µs per request by thread (medians of rounds${
      gatewayWorkers > 1 ? ", all its processes" : ""
    }): main ${mid("main")}, web workers (audit) ${mid("workers")}, ` +
      `V8 platform (GC, compilers) ${mid("v8")}, runtime's other threads ${mid("other")}`,
  );
  if (replicas > 1) {
    console.log(
      `what bounds throughput: skipped (GATEWAY_REPLICAS > 1: several workers); the ${replicaPids.length} ` +
        `workers found were busy ${
          spread.map((r) => r.map((x) => f(x, 2)).join(", ")).join("; ")
        } of a core while the gateway was measured (each round)`,
    );
  } else if (workerPid === undefined) {
    console.log("what bounds throughput: skipped (the worker's process was not found in /proc)");
  } else {
    // A path whose busiest single thread is near one core is bound by that thread, not by the
    // machine: its rate is one core's worth of that thread's work per request.
    const med = (xs: number[]) => xs.sort((x, y) => x - y)[xs.length >> 1];
    const bd = (k: keyof Busy) => med(busy[0].map((b) => b[k]));
    const bg = (k: keyof Busy) => med(busy[1].map((b) => b[k]));
    const workerUs = (bd("worker") * 1e6) / d.rps;
    const mainUs = (bg("main") * 1e6) / gw.rps;
    const n = gatewayWorkers;
    const mains = n === 1 ? "its main thread" : `its ${n} processes' main threads together`;
    console.log(
      `what bounds throughput (share of one core busy over a run, medians; "waiting": ` +
        `runnable but waiting for a core): direct: worker ${f(bd("worker"), 2)} (waiting ${
          f(bd("workerWait"), 2)
        }), machine idle ${f(bd("idle"), 2)} of ${navigator.hardwareConcurrency} cores; ` +
        `gateway: ${mains} ${f(bg("main"), 2)} (waiting ${f(bg("mainWait"), 2)}, preempted ${
          f(bg("preemptions"), 2)
        } times a call), worker ${f(bg("worker"), 2)} (waiting ${
          f(bg("workerWait"), 2)
        }), machine idle ${f(bg("idle"), 2)}; ${
          n === 1 ? "the gateway's main thread" : "its main threads"
        } running or waiting ${f(bg("main") + bg("mainWait"), 2)} of ${
          n === 1 ? "a core" : `${n} cores`
        }. Worker ${f(workerUs, 1)} µs a request, gateway main thread ${f(mainUs, 1)}: ` +
        `${
          n === 1
            ? "a single-threaded gateway with a core to itself reaches"
            : `${n} gateway processes with a core each reach`
        } at most ${
          f(Math.min(1, (n * workerUs) / mainUs), 2)
        } of direct against a single-threaded worker with one`,
    );
  }
  if (p.baselineGateway) {
    // Each round's pair ran back to back: the median of their ratios, less shaken by the host.
    const bi = rows.length - 2;
    const ratios = results[bi].map((b, i) =>
      results[rows.length - 1][i].cpuUsPerRequest! / b.cpuUsPerRequest!
    )
      .sort((x, y) => x - y);
    console.log(
      `gateway vs baseline: CPU per request ${f(ratios[ratios.length >> 1])}x (rounds: ${
        ratios.map((r) => f(r, 2)).join(", ")
      }), throughput ${f(gw.rps / rows[bi][1].rps)}x`,
    );
  }

  /**
   * One more run of each proxy, not counted above, with `measure` on its process (nginx: its
   * worker process) from half a second in, for a second less than the run; `report` prints it.
   */
  const onceMore = async <T>(
    measure: (pid: number, secs: number) => Promise<T>,
    report: (name: string, isNginx: boolean, requests: number, result: T) => void,
  ) => {
    const secs = Math.max(1, seconds - 1);
    for (const path of paths.slice(1)) {
      const pids = await path.pids!();
      const isNginx = path.name.startsWith("nginx");
      if (perfSplit && !isNginx) pids.forEach((pid) => perfMaps.add(pid));
      const [r, result] = await Promise.all([
        run(path.url),
        new Promise((res) => setTimeout(res, 500)).then(() => measure(pids[isNginx ? 1 : 0], secs)),
      ]);
      report(
        `${path.name}${isNginx ? " (its worker process)" : ""}`,
        isNginx,
        r.rps * secs,
        result,
      );
    }
  };
  if (perfSplit) {
    // Its main thread sampled (999 Hz).
    console.log(
      "where each proxy's main thread spends a request (one more run each, under perf; " +
        "µs of the main thread a request in that run; the functions below are shares of all its " +
        "samples spent in the runtime's native code on their behalf, then V8's builtins by " +
        "their own share):",
    );
    await onceMore(recordThread, (name, isNginx, requests, split) => {
      console.log(`- ${name}: ${splitLine(split, (split.samples / 999 / requests) * 1e6)}`);
      if (isNginx) return;
      for (const line of topCallers(split, 10)) console.log(`    ${line}`);
      for (const line of topBuiltins(split, 12)) console.log(`    builtin ${line}`);
    });
  }
  if (syscalls) {
    console.log(
      "system calls a request, by thread (one more run each, counted by perf stat; its calls of " +
        "each kind a request, down to 0.05):",
    );
    await onceMore(traceSyscalls, (name, _isNginx, requests, counts) => {
      console.log(`- ${name}:`);
      for (const line of syscallLines(counts, requests)) console.log(`    ${line}`);
    });
  }

  // Streaming: time to the first chunk of a 1024-token streamed completion (long enough that
  // the worker sends it in many pieces).
  const STREAM = JSON.stringify({ prompt: "A cold start", max_tokens: 1024, stream: true });
  const firstChunk = async (url: string) => {
    const times: number[] = [];
    const totals: number[] = [];
    let chunks = 0;
    for (let i = 0; i < 40; i++) {
      const t0 = performance.now();
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", ...auth },
        body: STREAM,
      });
      const reader = res.body!.getReader();
      let first = true;
      while (true) {
        const { done } = await reader.read();
        if (done) break;
        if (first) times.push(performance.now() - t0), first = false;
        chunks++;
      }
      totals.push(performance.now() - t0);
    }
    const med = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1];
    return { first: med(times), total: med(totals), chunks: chunks / 40 };
  };
  const sd = await firstChunk(direct);
  const sg = await firstChunk(viaGateway);
  console.log(
    `streaming (1024 tokens, 40 sequential calls, medians): direct first chunk ${
      f(sd.first)
    } ms, ` +
      `total ${f(sd.total)} ms, ${f(sd.chunks, 1)} reads/answer; gateway first chunk ${
        f(sg.first)
      } ms (${sg.first >= sd.first ? "+" : ""}${f(sg.first - sd.first)}), total ${
        f(sg.total)
      } ms, ${f(sg.chunks, 1)} reads/answer`,
  );
} finally {
  for (const child of [raw, framing]) {
    child?.kill("SIGTERM");
    await child?.status;
  }
  await nginx?.stop();
  await p.stop();
  for (const pid of perfMaps) await Deno.remove(`/tmp/perf-${pid}.map`).catch(() => {});
  // V8 also logs to isolate-*-PID-v8.log in the working directory under --perf-basic-prof.
  if (perfMaps.size) {
    for (const e of Deno.readDirSync(".")) {
      if (
        [...perfMaps].some((pid) =>
          e.name.startsWith("isolate-") && e.name.endsWith(`-${pid}-v8.log`)
        )
      ) {
        await Deno.remove(e.name).catch(() => {});
      }
    }
  }
  if (gatewayLog) await Deno.writeTextFile(gatewayLog, p.gateway.output());
}

/**
 * The platform as separate role processes, as it runs in production: the
 * gateway's process does nothing but the gateway, so its CPU is the
 * gateway's alone. The state service keeps an embedded store (no etcd).
 */
async function startRoles() {
  const dir = await Deno.makeTempDir({ prefix: "inferx-bench-" });
  const port = { statesvc: freePort(), sched: freePort(), schedHttp: freePort(), gw: freePort() };
  const common = {
    LOG_LEVEL: "warning",
    INFERX_DATA_DIR: dir,
    STATESVC_ADDR: `127.0.0.1:${port.statesvc}`,
    SCHEDULER_ADDR: `127.0.0.1:${port.sched}`,
  };
  const roles: RoleProcess[] = [];
  // A role that does not start stops those started before it: left running, their output's
  // pipe gone with this process, they would die at their next log line, leaving what they made
  // (a node agent's pod namespaces) behind.
  try {
    roles.push(
      await spawnRole(
        { ...common, RUN_SERVICE: "StateSvc", STATESVC_PORT: String(port.statesvc) },
        () => listening(port.statesvc),
      ),
    );
    roles.push(
      await spawnRole(
        {
          ...common,
          RUN_SERVICE: "Scheduler",
          SCHEDULER_PORT: String(port.sched),
          SCHEDULER_HTTP_PORT: String(port.schedHttp),
        },
        // Ready when both its ports answer: the node agent's readiness is read from the HTTP one.
        async () => {
          if (!await listening(port.sched)) return false;
          const r = await fetch(`http://127.0.0.1:${port.schedHttp}/health`);
          await r.body?.cancel();
          return r.ok;
        },
      ),
    );
    roles.push(
      await spawnRole(
        { ...common, RUN_SERVICE: "NodeAgent", NODEAGENT_PORT: "0" },
        async () =>
          (await fetch(`http://127.0.0.1:${port.schedHttp}/state`).then((r) => r.json()))
            .nodes?.length > 0,
      ),
    );
    const v8 = [v8Flags, profile && `--prof,--logfile=${profile}/isolate-%p.log`, ...perfV8]
      .filter(Boolean);
    const startGateway = (
      gwPort: number,
      options: SpawnOptions,
      env: Record<string, string> = {},
    ) =>
      spawnRole(
        {
          ...common,
          ...env,
          RUN_SERVICE: "Gateway",
          GATEWAY_PORT: String(gwPort),
          GATEWAY_WORKERS: String(gatewayWorkers),
          INFERX_ADMIN_APIKEY: ADMIN,
        },
        () => listening(gwPort),
        options,
      );
    const gateway = await startGateway(port.gw, {
      runtimeArgs: [...(v8.length ? [`--v8-flags=${v8.join(",")}`] : []), ...denoFlags],
    }, {
      ...(cpuProfile ? { INFERX_CPU_PROFILE: cpuProfile } : {}),
      ...(heapProfile ? { INFERX_HEAP_PROFILE: heapProfile } : {}),
    });
    roles.push(gateway);
    // Another checkout's gateway on the same platform (its own audit file), measured alongside.
    let baselineGateway: { url: string; role: RoleProcess } | undefined;
    if (baseline) {
      const bport = freePort();
      const role = await startGateway(bport, { main: `${baseline}/main.ts` }, {
        INFERX_DATA_DIR: `${dir}/baseline`,
      });
      roles.push(role);
      baselineGateway = { url: `http://127.0.0.1:${bport}`, role };
    }
    return {
      url: `http://127.0.0.1:${port.gw}`,
      gateway,
      baselineGateway,
      async stop() {
        for (const r of roles.reverse()) await r.stop();
        await Deno.remove(dir, { recursive: true });
      },
    };
  } catch (err) {
    for (const r of roles.reverse()) await r.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
}

/** Runs one of the benchmark's own proxies (`bench/{script}`) on `port`, forwarding to `upstream`. */
function startProxy(script: string, port: number, upstream: string): Deno.ChildProcess {
  const v8 = perfV8.length ? [`--v8-flags=${perfV8.join(",")}`] : [];
  const path = new URL(`./${script}`, import.meta.url).pathname;
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...v8, path, String(port), upstream],
    stdout: "null",
    stderr: "null",
  }).spawn();
}

/**
 * Gateway member processes the platform started (GATEWAY_WORKERS > 1; each
 * has its place in `INFERX_GATEWAY_GROUP`), not function workers.
 */
async function gatewayChildren(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const c of await childPids(pid)) {
    const env = await Deno.readTextFile(`/proc/${c}/environ`).catch(() => "");
    if (env.split("\0").some((kv) => kv.startsWith("INFERX_GATEWAY_GROUP="))) out.push(c);
  }
  return out;
}
