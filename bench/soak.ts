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
 * (the main thread's and the embedded audit worker thread's), read right
 * after a full garbage collection of every isolate of the platform, grows
 * at most 5% from the end of warm-up to the end. The collections are run at
 * every sample through V8's inspector (the platform runs with
 * `--inspect=127.0.0.1:PORT`; `bench/inspector.ts`): left to itself, V8 may
 * run no full collection in a quarter of an hour, and its old generation
 * then holds every object ever promoted, garbage included, so that resident
 * memory read between collections rises whether anything leaks or not. What
 * survives a full collection is what the platform keeps: a leak lifts it.
 * The young generation's pages are left out because V8 grows them with the
 * rate objects are made, up to a bound, over tens of minutes
 * (`docs/benchmarks.md`): they hold no live objects for long. Printed
 * beside it: the heap in use after each collection, by isolate; the
 * readings taken every 5 s between collections (their floors over the first
 * and last third: what the process holds when V8 decides alone); and
 * resident memory by kind of mapping (`bench/smaps.ts`: V8's heap and code,
 * malloc's arenas, files, ...) after the first and the last collection, to
 * place what grew. Descriptors flat (at the
 * end at most 5 above the end of warm-up); after the load, leases and pods
 * back to what they were before it; no 5xx.
 * Exits 1 when a criterion fails.
 *
 * Run: `deno run -A bench/soak.ts [--minutes 10] [--sample-s 60] [--warmup-min 2] [--trace-gc] [--heap-diff]`
 * (`--trace-gc`: the full collections V8 ran on its own, and the heap each
 * thread kept after them; `--heap-diff`: the kinds of objects each isolate
 * holds more of at the end than at the end of warm-up, from heap snapshots;
 * the memory criterion is then not judged, since the snapshots take memory
 * of their own)
 * (shorter or longer runs: `--minutes 1`, `--minutes 60`).
 */
import { NGRAM_COMMANDS } from "../src/samples/ngram/image.ts";
import { eventually, type Json, request, startPlatform } from "../tests/e2e/helpers.ts";
import { growthTable, residentByKind } from "./smaps.ts";
import { heapGrowth, type HeapKind, Inspector, type IsolateHeap } from "./inspector.ts";
import { freePort } from "../src/common/net.ts";

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
/**
 * `--heap-diff`: a heap snapshot of every isolate at the end of warm-up and
 * at the end, and the kinds of objects that grew between them.
 */
const heapDiff = Deno.args.includes("--heap-diff");
const spawnedAt = performance.now();
const inspectPort = freePort();
const p = await startPlatform(
  { INFERX_ADMIN_APIKEY: ADMIN, LOG_LEVEL: "warning" },
  undefined,
  {
    runtimeArgs: [
      `--inspect=127.0.0.1:${inspectPort}`,
      ...traceGc ? ["--v8-flags=--trace-gc"] : [],
    ],
  },
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
  const inspector = await Inspector.connect(inspectPort);
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
  type Reading = { t: number; mb: number; youngMB: number; kinds: Map<string, number> };
  const reading = async (): Promise<Reading> => {
    const [mb, young, kinds] = await Promise.all([rssMB(), youngMB(), residentByKind(pid)]);
    return { t: (performance.now() - t0) / 1000, mb, youngMB: young, kinds };
  };
  const rss: Reading[] = [];
  const probe = setInterval(async () => rss.push(await reading()), 5000);
  let kindsAtWarm: Map<string, Map<string, HeapKind>> | undefined;
  /** Readings right after full collections of every isolate, with each one's heap in use. */
  const collected: (Reading & { heaps: IsolateHeap[] })[] = [];
  const end = Date.now() + minutes * 60_000;
  let warmed: Sample | undefined;
  while (on && Date.now() < end) {
    await sleep(Math.min(sampleS * 1000, end - Date.now()));
    const s = await sample();
    samples.push(s);
    const first = !warmed && s.t >= warmupMin * 60;
    if (first) warmed = s;
    log(row(s, first ? "end of warm-up" : ""));
    const heaps = await inspector.collect();
    collected.push({ ...await reading(), heaps });
    if (first && heapDiff) kindsAtWarm = await heapsByKind(inspector);
  }
  const kindsAtEnd = kindsAtWarm && await heapsByKind(inspector);
  on = false;
  clearInterval(probe);
  inspector.close();
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
  const mb1 = (n: number) => Math.round(n * 10) / 10;
  const outside = (r: Reading) => r.mb - r.youngMB;
  // The criterion: what the platform keeps, read right after full collections of every isolate.
  const kept = collected.slice(samples.indexOf(warmed)); // one after each sample
  const [first, final] = [kept[0], kept.at(-1)!];
  const [early, late] = [mb1(outside(first)), mb1(outside(final))];
  const growth = (late - early) / early;
  const isolates = [...new Set(kept.flatMap((c) => c.heaps.map((h) => h.isolate)))];
  log("after full collections of every isolate, from the end of warm-up:");
  log(
    `| t (s) | RSS (MB) | outside the young generations (MB) | ${
      isolates.map((i) => `heap in use: ${i} (MB)`).join(" | ")
    } |`,
  );
  log(`| ---: | ---: | ---: | ${isolates.map(() => "---:").join(" | ")} |`);
  for (const c of kept) {
    const used = (i: string) => c.heaps.find((h) => h.isolate === i)?.used;
    log(
      `| ${Math.round(c.t)} | ${c.mb} | ${mb1(outside(c))} | ${
        isolates.map((i) => used(i) === undefined ? "—" : mb1(used(i)! / 1048576)).join(" | ")
      } |`,
    );
  }
  // Where it grew: the first and last of those readings by kind of mapping (the young
  // generation is in V8's heap: its pages at each are given below the table).
  log(`by kind of mapping (${Math.round(first.t)} s and ${Math.round(final.t)} s):`);
  for (const line of growthTable(first.kinds, final.kinds)) log(line);
  log(`of V8's heap, the young generations' pages: ${first.youngMB} MB, then ${final.youngMB} MB`);
  // Between collections, as V8 decides alone: the floors of the 5-s readings.
  /** The reading with the least `mb` from `a` to `b` s. */
  const lowest = (a: number, b: number, mb: (r: Reading) => number) =>
    rss.filter((r) => r.t >= a && r.t <= b).reduce((x, y) => mb(y) < mb(x) ? y : x);
  const floor = (a: number, b: number, mb: (r: Reading) => number) => mb1(mb(lowest(a, b, mb)));
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
    `RSS every 5 s, floor over the first third after warm-up ${rssEarly} MB, over the last ${rssLate} MB (${
      ((rssLate - rssEarly) / rssEarly * 100).toFixed(1)
    }%); outside the young generations ${floor(from, from + third, outside)} and ${
      floor(last.t - third, last.t, outside)
    } MB`,
  );
  if (traceGc) {
    for (const line of fullCollections(p.output(), (t0 - spawnedAt) / 1000, from, last.t)) {
      log(line);
    }
  }
  const heaps = samples.filter((s) => s.t >= from).map((s) => s.heapMB);
  log(
    `JavaScript heap in use after warm-up, between collections (MB): ${heaps.join(" ")}`,
  );
  for (const [isolate, end] of kindsAtEnd ?? []) {
    const start = kindsAtWarm!.get(isolate);
    if (!start) continue;
    log(`what grew in the heap of ${isolate} from the end of warm-up to the end (heap snapshots):`);
    for (const line of heapGrowth(start, end)) log(line);
  }
  const memory: [string, boolean] = [
    `RSS outside the young generations after full collections: growth after warm-up ${
      (growth * 100).toFixed(1)
    }% (${early} MB at ${Math.round(first.t)} s, ${late} MB at ${Math.round(final.t)} s) <= 5%`,
    growth <= 0.05,
  ];
  // A heap snapshot takes memory of its own (hundreds of MB of malloc's arenas, kept).
  if (heapDiff) {
    log(`not judged with --heap-diff (the snapshots take memory of their own): ${memory[0]}`);
  }
  const checks: [string, boolean][] = [
    ...(heapDiff ? [] : [memory]),
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
/** Every isolate's heap snapshot, summed by kind of object, by isolate. */
async function heapsByKind(inspector: Inspector): Promise<Map<string, Map<string, HeapKind>>> {
  const out = new Map<string, Map<string, HeapKind>>();
  for (const [isolate, session] of inspector.isolates()) {
    out.set(isolate, await inspector.heapByKind(session));
  }
  return out;
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
