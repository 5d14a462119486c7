/**
 * Soak: `RUN_SERVICE=All` (a subprocess, auth on) under a steady mixed load
 * for a bounded time, sampled at a fixed period:
 * - warm calls (4 callers, one call each per 50 ms at most) to a function
 *   whose one pod (min_replica 1) and a second one stay leased;
 * - cold starts through scale-to-zero: a call every 15 s to a function with
 *   min_replica 0, no standby and a 1 s scale-in timeout;
 * - object updates: a FuncPolicy updated every 5 s (compare-and-swap), the
 *   cold function's spec every 60 s (a new version, the old one drained);
 * - API key churn every 3 s: a key made, used, revoked, refused.
 * Each sample: the platform's resident memory and open file descriptors
 * (`/proc/PID`), its JavaScript heap in use and the buffers its objects
 * hold outside it, leases held by the gateway and granted by the scheduler,
 * pods by state and queue depths (`/metrics`), audit rows buffered.
 *
 * Pass: resident memory outside the JavaScript engine's young generations
 * (the main thread's and the embedded audit's worker thread's) after warm-up
 * grows at most 5%: its floor (the lowest of the readings taken
 * every 5 s; garbage collection makes the readings a saw-tooth, and a leak
 * lifts the floor) over the last third of the time after warm-up against the
 * first third. The young generation's pages are left out because V8 grows
 * them with the rate objects are made, up to a bound, over tens of minutes
 * (`docs/benchmarks.md`): they hold no live objects for long, and what leaks
 * is kept in the old generation, in buffers or in native memory, all counted.
 * Resident memory as a whole is printed beside it, and by kind of mapping
 * (`bench/smaps.ts`: V8's heap and code, malloc's arenas, files, ...) at the
 * two floors, to place what grew. Descriptors flat (at the
 * end at most 5 above the end of warm-up); after the load, leases and pods
 * back to what they were before it; no 5xx.
 * Exits 1 when a criterion fails.
 *
 * Run: `deno run -A bench/soak.ts [--minutes 10] [--sample-s 60] [--warmup-min 2] [--trace-gc]`
 * (`--trace-gc`: the heap each thread of the platform kept after each of its
 * full collections, over the first and last third, tells live objects that
 * pile up from pages V8 keeps)
 * (shorter or longer runs: `--minutes 1`, `--minutes 60`).
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { eventually, type Json, request, startPlatform } from "../tests/e2e/helpers.ts";
import { growthTable, residentByKind } from "./smaps.ts";

function flag(name: string, dflt: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(Deno.args[i + 1]);
  if (!(v > 0)) throw new Error(`Invalid --${name} "${Deno.args[i + 1]}": a positive number`);
  return v;
}

const minutes = flag("minutes", 10);
const sampleS = flag("sample-s", Math.min(60, minutes * 6));
const warmupMin = flag("warmup-min", Math.min(2, minutes / 5));
const ADMIN = `soak-admin-${crypto.randomUUID()}`;
const T = "soak";
const NS = "ns";

/** `--trace-gc`: the platform's collections are traced, and its full ones' results printed. */
const traceGc = Deno.args.includes("--trace-gc");
const spawnedAt = performance.now();
const p = await startPlatform(
  { INFERX_ADMIN_APIKEY: ADMIN, LOG_LEVEL: "warning" },
  undefined,
  traceGc ? { runtimeArgs: ["--v8-flags=--trace-gc"] } : {},
);
const pid = p.proc.pid;
const admin = { authorization: `Bearer ${ADMIN}` };

/** Every answer by status, and the 5xx ones with what they said. */
const statuses = new Map<number, number>();
const serverErrors: string[] = [];
function count(what: string, status: number, body: unknown) {
  statuses.set(status, (statuses.get(status) ?? 0) + 1);
  if (status >= 500) serverErrors.push(`${what}: ${status} ${JSON.stringify(body).slice(0, 200)}`);
}

async function api(
  what: string,
  path: string,
  init: Parameters<typeof request>[1] = {},
  expect?: number,
): Promise<Json> {
  const r = await request(`${p.url}${path}`, { ...init, headers: { ...admin, ...init.headers } });
  count(what, r.status, r.body);
  if (expect !== undefined && r.status !== expect) {
    throw new Error(`${what}: HTTP ${r.status}, expected ${expect}: ${JSON.stringify(r.body)}`);
  }
  return r;
}

const put = (what: string, body: unknown) => api(what, "/object/", { method: "PUT", body }, 201);

function fn(name: string, policy: Record<string, unknown>, envs: [string, string][] = []) {
  return {
    type: "function",
    tenant: T,
    namespace: NS,
    name,
    object: {
      spec: {
        image: "inferx/ngram",
        commands: NGRAM_COMMANDS,
        envs,
        resources: { CPU: 300, Mem: 256 },
        policy: { Obj: policy },
      },
    },
  };
}

const call = (f: string, headers: Record<string, string> = admin) =>
  request(`${p.url}/funccall/${T}/${NS}/${f}/v1/completions`, {
    body: { prompt: "The GPU", max_tokens: 8 },
    headers,
  });

// ---------------------------------------------------------------- sampling

interface Sample {
  t: number;
  rssMB: number;
  heapMB: number;
  externalMB: number;
  fds: number;
  gatewayLeases: number;
  schedulerLeases: number;
  pods: Record<string, number>;
  queued: number;
  auditBuffered: number;
}

function series(text: string, name: string): { labels: string; value: number }[] {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^(\w+)(\{[^}]*\})? (\S+)$/);
    if (m && m[1] === name) out.push({ labels: m[2] ?? "", value: Number(m[3]) });
  }
  return out;
}

const t0 = performance.now();
async function rssMB(): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Math.round(Number(status.match(/VmRSS:\s+(\d+)/)![1]) / 102.4) / 10;
}

/**
 * The young generation's pages of the platform's threads (MB): the main
 * thread's and the embedded audit worker's, from `/metrics`.
 */
async function youngMB(): Promise<number> {
  const res = await fetch(`${p.url}/metrics`, { headers: admin });
  const all = series(await res.text(), "inferx_process_young_generation_bytes");
  return Math.round(all.reduce((n, s) => n + s.value, 0) / 104857.6) / 10;
}

async function sample(): Promise<Sample> {
  let fds = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
  const res = await fetch(`${p.url}/metrics`, { headers: admin });
  const text = await res.text();
  const sum = (name: string) => series(text, name).reduce((n, s) => n + s.value, 0);
  const pods: Record<string, number> = {};
  for (const s of series(text, "inferx_pods")) {
    if (s.value) pods[s.labels.match(/state="(\w+)"/)![1]] = s.value;
  }
  return {
    t: Math.round((performance.now() - t0) / 1000),
    rssMB: await rssMB(),
    heapMB: Math.round(sum("inferx_process_heap_used_bytes") / 104857.6) / 10,
    externalMB: Math.round(sum("inferx_process_external_memory_bytes") / 104857.6) / 10,
    fds,
    gatewayLeases: sum("inferx_leased_workers"),
    schedulerLeases: sum("inferx_leases_granted"),
    pods,
    queued: sum("inferx_queue_depth"),
    auditBuffered: sum("inferx_audit_buffered_rows"),
  };
}

const podText = (pods: Record<string, number>) =>
  Object.entries(pods).map(([s, n]) => `${s} ${n}`).join(", ") || "none";

function row(s: Sample, note = ""): string {
  return `| ${s.t} | ${s.rssMB} | ${s.heapMB} | ${s.externalMB} | ${s.fds} | ${s.gatewayLeases} | ${s.schedulerLeases} | ${
    podText(s.pods)
  } | ${s.queued} | ${s.auditBuffered} | ${note} |`;
}

// ---------------------------------------------------------------- load

let on = true;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Sleeps up to `ms`, waking early when the load stops. */
async function pause(ms: number) {
  const end = Date.now() + ms;
  while (on && Date.now() < end) await sleep(Math.min(250, end - Date.now()));
}
const done = { warm: 0, cold: 0, coldStarts: 0, updates: 0, versions: 0, keys: 0 };

async function warmCaller() {
  while (on) {
    const r = await call("warm");
    count("warm call", r.status, r.body);
    if (r.status === 200) done.warm++;
    await sleep(50);
  }
}

async function coldCaller() {
  while (on) {
    const r = await call("cold");
    count("cold call", r.status, r.body);
    if (r.status === 200) done.cold++;
    if (r.headers.get("x-inferx-cold-start") === "1") done.coldStarts++;
    await pause(15_000);
  }
}

async function updater() {
  let version = 0;
  let last = Date.now();
  while (on) {
    const cur = await api("get knob", `/object/funcpolicy/${T}/${NS}/knob`, {}, 200);
    const q = (cur.body.object.spec.queue_len % 1000) + 1;
    await api("update knob", "/object/", {
      body: { ...cur.body, object: { spec: { ...cur.body.object.spec, queue_len: q } } },
    }, 200);
    done.updates++;
    if (Date.now() - last >= 60_000) {
      last = Date.now();
      const f = await api("get cold", `/object/function/${T}/${NS}/cold`, {}, 200);
      const next = fn("cold", f.body.object.spec.policy.Obj, [["SOAK_VERSION", String(++version)]]);
      await api("update cold", "/object/", {
        body: { ...next, revision: f.body.revision },
      }, 200);
      done.versions++;
    }
    await pause(5_000);
  }
}

async function keyChurn() {
  while (on) {
    const k = await api("make key", "/apikeys", {
      body: { name: "soak", scope: "inference", tenant: T, expires_in_s: 600 },
    }, 201);
    const bearer = { authorization: `Bearer ${k.body.key}` };
    const used = await call("warm", bearer);
    count("call with new key", used.status, used.body);
    if (used.status !== 200) throw new Error(`A new key was refused: ${used.status}`);
    await api("revoke key", `/apikeys/${k.body.id}`, { method: "DELETE" }, 200);
    const refused = await call("warm", bearer);
    if (refused.status !== 401) throw new Error(`A revoked key got ${refused.status}`);
    done.keys++;
    await pause(3_000);
  }
}

// ---------------------------------------------------------------- run

const log = (l: string) => console.log(l);
const failures: string[] = [];
let exitCode = 0;
try {
  await api("tenant", "/object/", {
    method: "PUT",
    body: { type: "tenant", tenant: "system", namespace: "system", name: T, object: {} },
  }, 201);
  await put("namespace", {
    type: "namespace",
    tenant: T,
    namespace: "system",
    name: NS,
    object: {},
  });
  await put("knob", {
    type: "funcpolicy",
    tenant: T,
    namespace: NS,
    name: "knob",
    object: { spec: { queue_len: 1 } },
  });
  await put(
    "warm",
    fn("warm", {
      min_replica: 1,
      max_replica: 2,
      parallel: 8,
      scalein_timeout: 20,
      standby_per_node: 0,
    }),
  );
  await put(
    "cold",
    fn("cold", { min_replica: 0, max_replica: 1, scalein_timeout: 1, standby_per_node: 0 }),
  );
  const settled = async (want?: Sample) => {
    let s: Sample | undefined;
    await eventually("the platform to settle", async () => {
      s = await sample();
      const pods = podText(s.pods);
      return s.gatewayLeases === 0 && s.schedulerLeases === 0 && s.queued === 0 &&
        (want ? pods === podText(want.pods) : pods === "Ready 1");
    }, 90_000).catch(() => {});
    return s!;
  };
  const baseline = await settled();
  log(
    `# deno run -A bench/soak.ts --minutes ${minutes} --sample-s ${sampleS} --warmup-min ${warmupMin}`,
  );
  log(`# ${new Date().toISOString()}, Deno ${Deno.version.deno}, platform pid ${pid}`);
  log("");
  log(
    "| t (s) | RSS (MB) | heap (MB) | external (MB) | fds | leases (gateway) | leases (scheduler) | pods | queued | audit buffered | |",
  );
  log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  log(row(baseline, "baseline, before the load"));

  const load = Promise.all([
    warmCaller(),
    warmCaller(),
    warmCaller(),
    warmCaller(),
    coldCaller(),
    updater(),
    keyChurn(),
  ]).catch((err) => {
    failures.push(`the load stopped: ${(err as Error).message}`);
    on = false;
  });
  const samples: Sample[] = [];
  const rss: { t: number; mb: number; youngMB: number; kinds: Map<string, number> }[] = [];
  const probe = setInterval(async () => {
    const [mb, young, kinds] = await Promise.all([rssMB(), youngMB(), residentByKind(pid)]);
    rss.push({ t: (performance.now() - t0) / 1000, mb, youngMB: young, kinds });
  }, 5000);
  const end = Date.now() + minutes * 60_000;
  let warmed: Sample | undefined;
  while (on && Date.now() < end) {
    await sleep(Math.min(sampleS * 1000, end - Date.now()));
    const s = await sample();
    samples.push(s);
    const first = !warmed && s.t >= warmupMin * 60;
    if (first) warmed = s;
    log(row(s, first ? "end of warm-up" : ""));
  }
  on = false;
  clearInterval(probe);
  await load;
  const last = samples.at(-1)!;
  warmed ??= samples[0];
  const after = await settled(baseline);
  log(row(after, "after the load, settled"));
  log("");
  log(
    `load: ${done.warm} warm calls, ${done.cold} cold-function calls (${done.coldStarts} cold starts), ` +
      `${done.updates} policy updates, ${done.versions} function versions, ${done.keys} API keys made, used, revoked`,
  );
  log(`answers by status: ${JSON.stringify(Object.fromEntries([...statuses].sort()))}`);

  const from = warmed.t;
  const third = (last.t - from) / 3;
  /** The reading with the least `mb` from `a` to `b` s. */
  const lowest = (a: number, b: number, mb: (r: typeof rss[number]) => number) =>
    rss.filter((r) => r.t >= a && r.t <= b).reduce((x, y) => mb(y) < mb(x) ? y : x);
  const floor = (a: number, b: number, mb: (r: typeof rss[number]) => number) =>
    Math.round(mb(lowest(a, b, mb)) * 10) / 10;
  const outside = (r: typeof rss[number]) => r.mb - r.youngMB;
  const early = floor(from, from + third, outside);
  const late = floor(last.t - third, last.t, outside);
  const growth = (late - early) / early;
  const [rssEarly, rssLate] = [
    floor(from, from + third, (r) => r.mb),
    floor(last.t - third, last.t, (r) => r.mb),
  ];
  const after5s = rss.filter((r) => r.t >= from);
  log(`RSS every 5 s after warm-up (MB): ${after5s.map((r) => Math.round(r.mb)).join(" ")}`);
  log(
    `of it the young generation's pages (MB): ${
      after5s.map((r) => Math.round(r.youngMB)).join(" ")
    }`,
  );
  log(
    `RSS as a whole after warm-up: floor ${rssEarly} MB over its first third, ${rssLate} MB over its last (${
      ((rssLate - rssEarly) / rssEarly * 100).toFixed(1)
    }%)`,
  );
  // Where it grew: the two floors' readings by kind of mapping (the young generation is in
  // V8's heap: its pages at each floor are given below the table).
  const [atEarly, atLate] = [
    lowest(from, from + third, outside),
    lowest(last.t - third, last.t, outside),
  ];
  log(`at the floors (${Math.round(atEarly.t)} s and ${Math.round(atLate.t)} s):`);
  for (const line of growthTable(atEarly.kinds, atLate.kinds)) log(line);
  log(
    `of V8's heap, the young generations' pages: ${atEarly.youngMB} MB, then ${atLate.youngMB} MB`,
  );
  if (traceGc) {
    for (const line of fullCollections(p.output(), (t0 - spawnedAt) / 1000, from, last.t)) {
      log(line);
    }
  }
  const heaps = samples.filter((s) => s.t >= from).map((s) => s.heapMB);
  log(
    `JavaScript heap in use after warm-up (MB): ${heaps.join(" ")}; lowest over its first third ${
      Math.min(...heaps.slice(0, Math.max(1, Math.ceil(heaps.length / 3))))
    }, over its last ${Math.min(...heaps.slice(-Math.max(1, Math.ceil(heaps.length / 3))))}`,
  );
  const checks: [string, boolean][] = [
    [
      `RSS outside the young generation: growth after warm-up ${
        (growth * 100).toFixed(1)
      }% (floor ${early} MB over its first third, ${late} MB over its last) <= 5%`,
      growth <= 0.05,
    ],
    [`descriptors flat: ${warmed.fds} -> ${last.fds} (at most +5)`, last.fds <= warmed.fds + 5],
    [
      `leases back to baseline: gateway ${after.gatewayLeases}, scheduler ${after.schedulerLeases}`,
      after.gatewayLeases === baseline.gatewayLeases &&
      after.schedulerLeases === baseline.schedulerLeases,
    ],
    [
      `pods back to baseline: ${podText(after.pods)} (baseline ${podText(baseline.pods)})`,
      podText(after.pods) === podText(baseline.pods),
    ],
    [`no 5xx: ${serverErrors.length}`, serverErrors.length === 0],
  ];
  for (const [what, ok] of checks) {
    log(`${ok ? "PASS" : "FAIL"} ${what}`);
    if (!ok) failures.push(what);
  }
  for (const e of serverErrors.slice(0, 20)) log(`  5xx: ${e}`);
} catch (err) {
  failures.push(String((err as Error).stack ?? err));
} finally {
  on = false;
  await p.stop();
  await Deno.remove(p.dataDir, { recursive: true }).catch(() => {});
}
/**
 * From V8's `--trace-gc` lines in `output`: each thread's (isolate's) heap
 * after its full collections (Mark-Compact) from `from` to `to` s of the
 * soak (`offset`: how long after its start the soak's clock began), the
 * least over the first third against the last.
 */
function fullCollections(output: string, offset: number, from: number, to: number): string[] {
  const re =
    /\[\d+:(0x[0-9a-f]+)\]\s+(\d+) ms: Mark-Compact[^\d]*[\d.]+ \(([\d.]+)\) -> ([\d.]+) \(([\d.]+)\) MB/g;
  const byIsolate = new Map<string, { t: number; after: number; committed: number }[]>();
  for (const m of output.matchAll(re)) {
    const t = Number(m[2]) / 1000 - offset;
    if (t < from || t > to) continue;
    const list = byIsolate.get(m[1]) ?? [];
    list.push({ t, after: Number(m[4]), committed: Number(m[5]) });
    byIsolate.set(m[1], list);
  }
  const all = [...output.matchAll(/ ms: (Scavenge|Mark-Compact|Minor Mark-Sweep)/g)];
  const lines = [
    `--trace-gc: ${all.length} collections traced, ${
      all.filter((m) => m[1] === "Mark-Compact").length
    } of them full; of these ${[...byIsolate.values()].flat().length} after warm-up`,
  ];
  const third = (to - from) / 3;
  const least = (l: { t: number; after: number }[], a: number, b: number) =>
    Math.min(...l.filter((x) => x.t >= a && x.t <= b).map((x) => x.after));
  return [
    ...lines,
    ...[...byIsolate].map(([isolate, l]) =>
      `full collections of isolate ${isolate} after warm-up: ${l.length}; heap kept (MB): ${
        l.map((x) => x.after).join(" ")
      }; least over the first third ${least(l, from, from + third)}, over the last ${
        least(l, to - third, to)
      }; committed ${l[0].committed} -> ${l.at(-1)!.committed}`
    ),
  ];
}

if (failures.length) {
  console.log(`soak FAILED:\n${failures.join("\n")}`);
  exitCode = 1;
} else console.log("soak passed");
Deno.exit(exitCode);
