/**
 * What CRIU's kernel cache (`/run/criu.kdat`, `src/nodeagent/criu_cache.ts`)
 * saves a cold start: restores from a snapshot with the cache and without
 * it, in alternating rounds on one platform, for the n-gram and the PyTorch
 * worker: the time to the first byte of a call that restores its pod, as
 * its client sees it, in rounds of with, without, without, with.
 *
 * "Without" leaves CRIU a cache it cannot use (see `withoutCache`); "with"
 * makes it again the way the agent does at its start. The node is left with
 * its cache.
 *
 * Run: `deno run -A bench/criu_cache.ts [rounds] [workers]` (8, ngram,torch;
 * needs root, CRIU from `deno task criu`, and `python3-torch` for torch).
 */
import { createNamespace, putObject, startPlatform } from "../tests/e2e/helpers.ts";
import { Criu, criuCapability, locateCriu } from "../src/nodeagent/criu.ts";
import { fsTypeOf, KDAT_FILE, prepareCriuCache } from "../src/nodeagent/criu_cache.ts";
import {
  atZero,
  callSample,
  coldCall,
  coldFunction,
  median,
  runnableWorkers,
} from "./sample_workers.ts";

const rounds = Number(Deno.args[0] ?? 8);
const wanted = (Deno.args[1] ?? "ngram,torch").split(",");

const binary = locateCriu();
const cap = await criuCapability(binary ?? null);
if (!binary || !cap.available) {
  console.log(`skipped: ${cap.reason}`);
  Deno.exit(0);
}
const criu = new Criu(binary);
const criuName = `${cap.version} ${binary.path}`;
const tmpfs = fsTypeOf("/run", await Deno.readTextFile("/proc/self/mountinfo")) === "tmpfs";

/**
 * Leaves CRIU no cache it can use, so that the next run probes the kernel: a
 * file of the wrong size, which CRIU removes as it loads it (the agent, which
 * makes the cache again once it is gone, sees one there), and
 * `criu.kdat.tmp`, so that the run keeps no new one.
 */
async function withoutCache() {
  await Deno.writeFile(KDAT_FILE, new Uint8Array([0]));
  await Deno.writeFile(`${KDAT_FILE}.tmp`, new Uint8Array());
}

/** Gives the cache back, as an agent's start does. */
async function withCache() {
  await Deno.remove(KDAT_FILE).catch(() => {});
  if (tmpfs) await Deno.remove(`${KDAT_FILE}.tmp`).catch(() => {});
  const s = await prepareCriuCache(criu, { criu: criuName });
  if (s.state === "tmpfs") await criu.check(); // CRIU writes its own
  if (!await criu.loadsKernelCache()) throw new Error(`no cache: ${s.state} ${s.reason ?? ""}`);
}

const workers = await runnableWorkers(wanted, console.log);

console.log(
  `CRIU's kernel cache: restores from a snapshot with and without it, ${rounds} alternating rounds each; /run ${
    tmpfs ? "is" : "is not"
  } a tmpfs; CRIU ${criuName}`,
);
const p = await startPlatform({ LOG_LEVEL: "warning", INFERX_SNAPSHOT_START: "always" });
try {
  await createNamespace(p.url, "bench", "lab");
  for (const w of workers) {
    const func = `${w.name}-cache`;
    await putObject(p.url, coldFunction(w, func));
    await callSample(p.url, func, w.body); // the version's first start: fresh, then its snapshot
    const times = { with: [] as number[], without: [] as number[] };
    for (let i = 0; i < rounds * 2; i++) {
      const arm = i % 4 === 0 || i % 4 === 3 ? "with" : "without"; // ABBA
      await atZero(p.url, func);
      await (arm === "with" ? withCache() : withoutCache());
      times[arm].push(await coldCall(p.url, func, w.body, "snapshot"));
    }
    const a = median(times.with), b = median(times.without);
    const f = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(" ");
    console.log(
      `${w.name.padEnd(6)} restore to first byte: with the cache ${a.toFixed(1)} ms, without ${
        b.toFixed(1)
      } ms (medians); with/without ${(a / b).toFixed(3)}, ${(b - a).toFixed(1)} ms saved`,
    );
    console.log(`       with: ${f(times.with)}\n       without: ${f(times.without)}`);
  }
} finally {
  await p.stop();
  await Deno.remove(p.dataDir, { recursive: true });
  await withCache().catch((err) => console.log(`cache not given back: ${err.message}`));
}
