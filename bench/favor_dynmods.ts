/**
 * What `favordynmods` (`src/nodeagent/favor_dynmods.ts`) saves a pod start:
 * with the agent's hierarchy mounted and without it, in alternating rounds
 * (with, without, without, with) on one machine:
 *
 * 1. moving a process into a pod's control group, as every pod start does
 *    (the agent's own `PodCgroups` and join prefix, then `true`), after an
 *    idle 300 ms, against the same shell without the move;
 * 2. cold starts through a platform: fresh starts (snapshots off) and
 *    restores from a snapshot, of the n-gram worker and, with
 *    `python3-torch`, the PyTorch one: the time to the first byte of a call
 *    that starts its pod, as its client sees it.
 *
 * "Without" unmounts the agent's hierarchy; the node is left with it. A node
 * whose own cgroup hierarchy is mounted with the option has nothing to
 * compare: the bench says so and stops. Nor has a kernel that moves
 * processes under a lock of their own (Linux 6.18 and later with the option
 * on) and has said it cannot stop doing so ("per threadgroup rwsem mechanism
 * can't be disabled", in its log once the option went off): from then until
 * the next boot, "without" is the same as "with". On such a kernel the bench
 * runs every "without" round before the first "with" (in sequence, not
 * alternating), and when the option had been on in the boot before it ran
 * says so instead of comparing; it compares on a fresh boot where no agent
 * (nor the test suite, whose node agents mount it) started with the option
 * on (`INFERX_CGROUP_FAVOR_DYNMODS=off` for the agents before it).
 *
 * Run: `deno run -A bench/favor_dynmods.ts [rounds] [workers]` (8,
 * ngram,torch; needs root, and CRIU from `deno task criu` for the restores).
 */
import { createNamespace, type Platform, putObject, startPlatform } from "../tests/e2e/helpers.ts";
import { favorDynmods, favorsDynmods } from "../src/nodeagent/favor_dynmods.ts";
import { parseMountinfo } from "../src/nodeagent/mounts.ts";
import { PodCgroups } from "../src/nodeagent/cgroup.ts";
import {
  atZero,
  callSample,
  coldCall,
  coldFunction,
  type ColdKind,
  coldKinds,
  median,
  msList,
  runnableWorkers,
  type Worker,
} from "./sample_workers.ts";

const rounds = Number(Deno.args[0] ?? 8);
const wanted = (Deno.args[1] ?? "ngram,torch").split(",");

if (Deno.uid() !== 0) {
  console.log("skipped: pod control groups and the hierarchy need root");
  Deno.exit(0);
}
const own = parseMountinfo(await Deno.readTextFile("/proc/self/mountinfo"))
  .find((m) => favorsDynmods(m) && !m.superOpts.includes("name=inferx-favordynmods"));
if (own) {
  console.log(`skipped: ${own.point} (the node's own) favors moves already: nothing to compare`);
  Deno.exit(0);
}

/** The kernel keeps moving processes under their own lock for the rest of this boot. */
async function sticky(): Promise<boolean> {
  const o = await new Deno.Command("dmesg", { stdout: "piped", stderr: "null" }).output()
    .catch(() => undefined);
  return /per threadgroup rwsem mechanism can't be disabled/
    .test(new TextDecoder().decode(o?.stdout ?? new Uint8Array()));
}

type Arm = "with" | "without";
async function arm(a: Arm) {
  const s = await favorDynmods({ enabled: a === "with" });
  const want = a === "with" ? "mounted" : "off";
  if (s.state !== want) throw new Error(`${a}: ${s.state} ${s.reason ?? ""}`);
}
/**
 * From Linux 6.18 the kernel keeps its faster moves for the rest of the boot once the option has
 * been on. There every "without" round goes first, the moves' and the cold starts' (the moves are
 * measured without the option alone: with it, a move costs what the shell without one does), and
 * nothing is compared in a boot where the option has been on already. Elsewhere rounds go with,
 * without, without, with, so that neither arm always goes first.
 */
const [major, minor] = Deno.osRelease().split(".").map(Number);
const oneWay = major > 6 || (major === 6 && minor >= 18);
const onAlready = parseMountinfo(await Deno.readTextFile("/proc/self/mountinfo"))
  .some(favorsDynmods);
if (oneWay && (onAlready || await sticky())) {
  console.log(
    `skipped: Linux ${Deno.osRelease()} keeps its faster moves until the next boot once ` +
      "favordynmods has been on, as it has in this boot (an agent, the test suite): nothing " +
      "to compare. Run it on a fresh boot before any agent starts with the option on",
  );
  Deno.exit(0);
}
const armOf = (i: number): Arm =>
  oneWay ? (i < rounds ? "without" : "with") : i % 4 === 0 || i % 4 === 3 ? "with" : "without";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function report(label: string, t: Record<Arm, number[]>) {
  if (!t.with.length) {
    console.log(`${label}, without: ${median(t.without).toFixed(2)} ms (median)`);
    console.log(`    without: ${msList(t.without)}`);
    return;
  }
  const a = median(t.with), b = median(t.without);
  console.log(
    `${label}: with ${a.toFixed(2)} ms, without ${b.toFixed(2)} ms (medians); with/without ${
      (a / b).toFixed(3)
    }, ${(b - a).toFixed(2)} ms saved`,
  );
  console.log(`    with: ${msList(t.with)}\n    without: ${msList(t.without)}`);
}

console.log(
  `favordynmods: pod starts with and without it, ${rounds} ${
    oneWay ? "rounds each, every one without it first" : "alternating rounds each"
  } (linux ${Deno.osRelease()}, ${navigator.hardwareConcurrency} cores)`,
);

// 1. The move alone.
{
  const cap = await PodCgroups.open("bench-dynmods");
  if (!cap.available) {
    console.log(`control group move: skipped, no pod control groups: ${cap.reason}`);
  } else {
    const g = await cap.cgroups.create("p-bench", { cpuMillis: 1000, memMB: 256 });
    const run = async (argv: string[]) => {
      await sleep(300); // the grace periods of earlier moves are over
      const t0 = performance.now();
      const s = await new Deno.Command(argv[0], { args: argv.slice(1) }).output();
      if (!s.success) throw new Error(`${argv.join(" ")}: exit ${s.code}`);
      return performance.now() - t0;
    };
    const moved = { with: [] as number[], without: [] as number[] };
    const plain = { with: [] as number[], without: [] as number[] };
    try {
      // On a one-way kernel the "with" rounds would turn the option on before the cold
      // starts' "without" rounds: the moves are measured without it alone there.
      for (let i = 0; i < (oneWay ? rounds : rounds * 2); i++) {
        const a = armOf(i);
        await arm(a);
        moved[a].push(await run([...g.joinPrefix, "true"]));
        plain[a].push(await run(["/bin/sh", "-c", 'exec "$@"', "sh", "true"]));
      }
    } finally {
      await g.remove();
      cap.cgroups.close();
    }
    report("a shell that moves into a pod's group and execs true", moved);
    report("the same shell without the move", plain);
  }
}

// 2. Cold starts through a platform.
const workers = await runnableWorkers(wanted, console.log);
const kinds = await coldKinds(console.log);

// Both platforms at once, their agents leaving the option to the bench; every round calls each
// worker of each once, so that on a one-way kernel every "without" round comes first.
const platforms: { kind: ColdKind; p: Platform }[] = [];
try {
  for (const kind of kinds) {
    const p = await startPlatform({
      LOG_LEVEL: "warning",
      INFERX_RUNTIME: "process",
      INFERX_CGROUP_FAVOR_DYNMODS: "off",
      ...(kind === "fresh" ? { INFERX_SNAPSHOTS: "off" } : { INFERX_SNAPSHOT_START: "always" }),
    });
    platforms.push({ kind, p });
    await createNamespace(p.url, "bench", "lab");
  }
  const rows: { kind: ColdKind; p: Platform; w: Worker; t: Record<Arm, number[]> }[] = [];
  for (const { kind, p } of platforms) {
    for (const w of workers) {
      await putObject(p.url, coldFunction(w, `${w.name}-${kind}`));
      await callSample(p.url, `${w.name}-${kind}`, w.body); // its first start (and snapshot)
      rows.push({ kind, p, w, t: { with: [], without: [] } });
    }
  }
  for (let i = 0; i < rounds * 2; i++) {
    const a = armOf(i);
    await arm(a);
    for (const { kind, p, w, t } of rows) {
      const func = `${w.name}-${kind}`;
      await atZero(p.url, func);
      t[a].push(await coldCall(p.url, func, w.body, kind));
    }
  }
  for (const { kind, w, t } of rows) {
    report(`${w.name} ${kind === "fresh" ? "fresh start" : "restore"} to first byte`, t);
  }
} finally {
  for (const { p } of platforms) {
    await p.stop();
    await Deno.remove(p.dataDir, { recursive: true });
  }
}
await arm("with");
