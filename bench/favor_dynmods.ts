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
 * the next boot, "without" is the same as "with". The bench then measures
 * the move against the same shell without it, and says why it compares no
 * more; run it on a fresh boot before any agent starts (or with
 * `INFERX_CGROUP_FAVOR_DYNMODS=off` for the agents before it).
 *
 * Run: `deno run -A bench/favor_dynmods.ts [rounds] [workers]` (8,
 * ngram,torch; needs root, and CRIU from `deno task criu` for the restores).
 */
import { createNamespace, eventually, putObject, startPlatform } from "../tests/e2e/helpers.ts";
import { favorDynmods, favorsDynmods } from "../src/nodeagent/favor_dynmods.ts";
import { parseMountinfo } from "../src/nodeagent/mounts.ts";
import { PodCgroups } from "../src/nodeagent/cgroup.ts";
import { criuCapability } from "../src/nodeagent/criu.ts";
import { callSample, coldFunction, podsOf, runnableWorkers } from "./sample_workers.ts";

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
/** Rounds of with, without, without, with: neither arm always goes first. */
const armOf = (i: number): Arm => i % 4 === 0 || i % 4 === 3 ? "with" : "without";
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const list = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(" ");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function report(label: string, t: Record<Arm, number[]>) {
  const a = median(t.with), b = median(t.without);
  console.log(
    `${label}: with ${a.toFixed(2)} ms, without ${b.toFixed(2)} ms (medians); with/without ${
      (a / b).toFixed(3)
    }, ${(b - a).toFixed(2)} ms saved`,
  );
  console.log(`    with: ${list(t.with)}\n    without: ${list(t.without)}`);
}

console.log(
  `favordynmods: pod starts with and without it, ${rounds} alternating rounds each (linux ${Deno.osRelease()}, ${navigator.hardwareConcurrency} cores)`,
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
      for (let i = 0; i < rounds * 2; i++) {
        const a = armOf(i);
        await arm(a);
        moved[a].push(await run([...g.joinPrefix, "true"]));
        plain[a].push(await run(["/bin/sh", "-c", 'exec "$@"', "sh", "true"]));
      }
    } finally {
      await g.remove();
      cap.cgroups.close();
    }
    if (await sticky()) {
      console.log(
        "without: not measurable in this boot: the kernel said it keeps moving processes under " +
          'their own lock ("per threadgroup rwsem mechanism can\'t be disabled"); both arms ' +
          "below are with it",
      );
    }
    report("a shell that moves into a pod's group and execs true", moved);
    report("the same shell without the move", plain);
  }
}
if (await sticky()) {
  console.log("cold starts: skipped, nothing to compare in this boot (see above)");
  await arm("with");
  Deno.exit(0);
}

// 2. Cold starts through a platform.
const workers = await runnableWorkers(wanted, console.log);
const criu = await criuCapability();
const kinds: ("fresh" | "snapshot")[] = criu.available ? ["fresh", "snapshot"] : ["fresh"];
if (!criu.available) console.log(`restores: skipped, ${criu.reason}`);

for (const kind of kinds) {
  const p = await startPlatform({
    LOG_LEVEL: "warning",
    INFERX_RUNTIME: "process",
    ...(kind === "fresh" ? { INFERX_SNAPSHOTS: "off" } : { INFERX_SNAPSHOT_START: "always" }),
  });
  try {
    await createNamespace(p.url, "bench", "lab");
    for (const w of workers) {
      const func = `${w.name}-${kind}`;
      await putObject(p.url, coldFunction(w, func));
      const call = () => callSample(p.url, func, w.body);
      await call(); // the version's first start (and its snapshot)
      const t = { with: [] as number[], without: [] as number[] };
      for (let i = 0; i < rounds * 2; i++) {
        const a = armOf(i);
        await eventually(
          `${func} at zero`,
          async () => (await podsOf(p.url, func)).length === 0,
          60_000,
        );
        await arm(a);
        const r = await call();
        const pod = (await podsOf(p.url, func)).find((q) => q.id === r.pod);
        if (!r.cold || pod?.startedFrom !== kind) {
          throw new Error(`${func} round ${i}: not a ${kind} start (${pod?.note ?? ""})`);
        }
        t[a].push(r.client);
      }
      report(`${w.name} ${kind === "fresh" ? "fresh start" : "restore"} to first byte`, t);
    }
  } finally {
    await p.stop();
    await Deno.remove(p.dataDir, { recursive: true });
  }
}
await arm("with");
