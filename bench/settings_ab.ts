/**
 * Cold starts under two sets of node settings, side by side: two platforms
 * run at once on this machine, one with settings A and one with B, and the
 * same worker is started cold on each in alternating rounds (A, B, B, A), so
 * that both arms meet the same drift of the host. Fresh starts (snapshots
 * off) and restores from a snapshot, for the n-gram worker and, with
 * `python3-torch`, the PyTorch one: the time to the first byte of a call
 * that starts its pod, as its client sees it.
 *
 * `AB_BASELINE=DIR` runs A's platform from another checkout (say `git
 * worktree add DIR HEAD~1`, with its `node_modules`): two versions of the
 * code side by side, under settings A and B (give both the same, or none:
 * `""`). With neither, an A/A run (`"" ""`) shows the bench's own noise.
 *
 * A setting that is the kernel's or the node's as a whole (CRIU's kernel
 * cache, `favordynmods`) cannot be compared this way: both platforms would
 * share it (see `criu_cache.ts` and `favor_dynmods.ts`).
 *
 * Run: `deno run -A bench/settings_ab.ts [rounds] [workers] [A] [B]` (8,
 * ngram,torch, `INFERX_POD_NETNS_SPARES=0`, `INFERX_POD_NETNS_SPARES=2`; a
 * set is `KEY=VALUE` pairs split by commas; needs root and CRIU from
 * `deno task criu` for the restores).
 */
import { createNamespace, type Platform, putObject, startPlatform } from "../tests/e2e/helpers.ts";
import {
  atZero,
  callSample,
  coldCall,
  coldFunction,
  coldKinds,
  median,
  msList,
  runnableWorkers,
} from "./sample_workers.ts";

const rounds = Number(Deno.args[0] ?? 8);
const wanted = (Deno.args[1] ?? "ngram,torch").split(",");
const sets = [
  Deno.args[2] ?? "INFERX_POD_NETNS_SPARES=0",
  Deno.args[3] ?? "INFERX_POD_NETNS_SPARES=2",
];
/** Another checkout, whose platform is A's. */
const baseline = Deno.env.get("AB_BASELINE");

function settingsOf(set: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of set.split(",").filter(Boolean)) {
    const i = pair.indexOf("=");
    if (i < 1) throw new Error(`"${pair}" is not KEY=VALUE`);
    out[pair.slice(0, i)] = pair.slice(i + 1);
  }
  return out;
}

/** The ms of each `Pod ... of {func} ready at ... in N ms` line of a platform's log, in order. */
function agentReadyMs(log: string, func: string): number[] {
  const re = new RegExp(`Pod \\S+ of ${func} ready at \\S+ in (\\d+) ms`, "g");
  return [...log.matchAll(re)].map((m) => Number(m[1]));
}

console.log(
  `settings A/B: cold starts with A (${sets[0]}${
    baseline ? `, the code of ${baseline}` : ""
  }) and B (${
    sets[1]
  }), ${rounds} alternating rounds each (linux ${Deno.osRelease()}, ${navigator.hardwareConcurrency} cores)`,
);
const workers = await runnableWorkers(wanted, console.log);
const kinds = await coldKinds(console.log);

for (const kind of kinds) {
  const base = {
    // Info: each agent's "Pod ... ready ... in N ms" is read back (agentReadyMs).
    LOG_LEVEL: "info",
    INFERX_RUNTIME: "process",
    ...(kind === "fresh" ? { INFERX_SNAPSHOTS: "off" } : { INFERX_SNAPSHOT_START: "always" }),
  };
  const platforms: Platform[] = [];
  try {
    for (const [i, set] of sets.entries()) {
      const main = i === 0 && baseline ? { main: `${baseline}/main.ts` } : {};
      platforms.push(await startPlatform({ ...base, ...settingsOf(set) }, undefined, main));
    }
    // Both arms must start pods the same way (a baseline checkout without `.criu` finds no
    // CRIU, so no snapshots and no pod namespaces): the settings are the difference, not that.
    const nodes = await Promise.all(
      platforms.map(async (p) => (await (await fetch(`${p.url}/nodes`)).json())[0]),
    );
    const how = (n: { criu?: { available: boolean }; snapshots?: { reason?: string } }) =>
      `CRIU ${n.criu?.available ? "on" : "off"}, snapshots ${n.snapshots?.reason ?? "on"}`;
    if (how(nodes[0]) !== how(nodes[1])) {
      throw new Error(`the arms differ: A ${how(nodes[0])}; B ${how(nodes[1])}`);
    }
    for (const p of platforms) await createNamespace(p.url, "bench", "lab");
    for (const w of workers) {
      const func = `${w.name}-${kind}`;
      for (const p of platforms) {
        await putObject(p.url, coldFunction(w, func));
        await callSample(p.url, func, w.body); // the version's first start (and its snapshot)
      }
      const t: number[][] = [[], []];
      for (let i = 0; i < rounds * 2; i++) {
        const arm = i % 4 === 0 || i % 4 === 3 ? 0 : 1;
        const p = platforms[arm];
        for (const q of platforms) await atZero(q.url, func);
        try {
          t[arm].push(await coldCall(p.url, func, w.body, kind));
        } catch (err) {
          throw new Error(`round ${i} (${"AB"[arm]}): ${(err as Error).message}`);
        }
      }
      const [a, b] = t.map(median);
      console.log(
        `${w.name} ${kind === "fresh" ? "fresh start" : "restore"} to first byte: A ${
          a.toFixed(2)
        } ms, B ${b.toFixed(2)} ms (medians); B/A ${(b / a).toFixed(3)}, ${
          (a - b).toFixed(2)
        } ms less with B`,
      );
      console.log(`    A: ${msList(t[0])}\n    B: ${msList(t[1])}`);
      // The agents' own count, from the pod's record to Ready: no gateway, client or scheduler.
      const [ra, rb] = platforms.map((p) => agentReadyMs(p.output(), func).slice(1));
      if (ra.length && rb.length) {
        console.log(
          `    each node agent's pod start to Ready (its log, whole ms): A ${median(ra)} ms, B ${
            median(rb)
          } ms (medians of ${ra.length} and ${rb.length})`,
        );
      }
    }
  } finally {
    for (const p of platforms) {
      await p.stop();
      await Deno.remove(p.dataDir, { recursive: true });
    }
  }
}
