import assert from "node:assert/strict";
import { reset } from "@logtape/logtape";
import {
  AGENT_LEAF,
  cgroupMounts,
  cpuShares,
  cpuWeight,
  giveControllers,
  ownGroups,
  planControllers,
  PodCgroups,
} from "./cgroup.ts";
import { ProcessRuntime } from "./process_runtime.ts";
import type { PodSpec } from "./runtime.ts";
import { Criu, criuCapability, locateCriu } from "./criu.ts";
import { PodNetworks } from "./pod_net.ts";
import { logLines, until } from "../common/testing.ts";
import { procState } from "../ffi/libc.ts";
import { openLibCuda } from "../ffi/libcuda.ts";
import { buildFakeLibCuda, fakeLibCudaUnavailable } from "../ffi/testing.ts";

/** One slice of GPU 0, of 300 MB. */
const GPU = [{ index: 0, vramMB: 300 }];

const V1_MOUNTS = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw`;
const V1_OWN = `4:memory:/system.slice/agent.service
2:cpu,cpuacct:/system.slice/agent.service
0::/system.slice/agent.service`;

Deno.test("cgroups: on v1 each controller's groups go below the agent's own in its hierarchy", () => {
  const plan = planControllers(cgroupMounts(V1_MOUNTS), ownGroups(V1_OWN), "ixabc");
  assert.deepEqual(plan, [
    {
      version: 1,
      name: "memory",
      parent: "/sys/fs/cgroup/memory/system.slice/agent.service",
      base: "/sys/fs/cgroup/memory/system.slice/agent.service/inferx-ixabc",
    },
    {
      version: 1,
      name: "cpu",
      parent: "/sys/fs/cgroup/cpu,cpuacct/system.slice/agent.service",
      base: "/sys/fs/cgroup/cpu,cpuacct/system.slice/agent.service/inferx-ixabc",
    },
  ]);
});

Deno.test("cgroups: on v2 both controllers share one group; a container sees its own as the root", () => {
  // A container's namespace: its group mounted as the root, /proc/self/cgroup saying "/".
  const mounts = cgroupMounts(
    `30 23 0:27 /kubepods/pod1/c1 /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate`,
  );
  const plan = planControllers(mounts, ownGroups("0::/kubepods/pod1/c1\n"), "ixabc");
  assert.ok(typeof plan !== "string");
  assert.deepEqual(plan.map((p) => [p.version, p.name, p.base]), [
    [2, "memory", "/sys/fs/cgroup/inferx-ixabc"],
    [2, "cpu", "/sys/fs/cgroup/inferx-ixabc"],
    [2, "pids", "/sys/fs/cgroup/inferx-ixabc"], // taken when the group offers it (open())
  ]);
  // A named v1 hierarchy with no controller beside it (systemd's, the agent's for
  // favordynmods) makes no hybrid host: pids is still v2's.
  const named = cgroupMounts([
    `30 23 0:27 /kubepods/pod1/c1 /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate`,
    "45 27 0:40 / /run/inferx/cgroup-favordynmods rw,relatime - cgroup inferx-favordynmods " +
    "rw,favordynmods,name=inferx-favordynmods",
    "46 27 0:41 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
  ].join("\n"));
  const withNamed = planControllers(named, ownGroups("0::/kubepods/pod1/c1\n"), "ixabc");
  assert.ok(typeof withNamed !== "string");
  assert.deepEqual(withNamed.map((p) => [p.version, p.name]), [
    [2, "memory"],
    [2, "cpu"],
    [2, "pids"],
  ]);
  // A group outside what the mount shows: no place to make groups in, said so.
  const outside = planControllers(mounts, ownGroups("0::/system.slice/x\n"), "ixabc");
  assert.match(String(outside), /not under \/sys\/fs\/cgroup/);
  assert.match(String(planControllers([], ownGroups(""), "t")), /no cgroup hierarchy/);
  // Octal escapes in mount points (a space).
  assert.equal(
    cgroupMounts(`1 2 0:3 / /mnt/a\\040b rw - cgroup2 cgroup2 rw`)[0].point,
    "/mnt/a b",
  );
});

Deno.test("cgroups: the pids controller limits processes where v1 mounts it, and is optional", () => {
  const withPids = `${V1_MOUNTS}
36 31 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids`;
  const plan = planControllers(
    cgroupMounts(withPids),
    ownGroups(`${V1_OWN}\n5:pids:/system.slice/agent.service`),
    "ixabc",
  );
  assert.ok(typeof plan !== "string");
  assert.deepEqual(plan.map((p) => [p.version, p.name, p.base]), [
    [1, "memory", "/sys/fs/cgroup/memory/system.slice/agent.service/inferx-ixabc"],
    [1, "cpu", "/sys/fs/cgroup/cpu,cpuacct/system.slice/agent.service/inferx-ixabc"],
    [1, "pids", "/sys/fs/cgroup/pids/system.slice/agent.service/inferx-ixabc"],
  ]);
  // Mounted, but this process in no group of it: memory and CPU limits all the same.
  const noGroup = planControllers(cgroupMounts(withPids), ownGroups(V1_OWN), "ixabc");
  assert.deepEqual(typeof noGroup !== "string" && noGroup.map((p) => p.name), ["memory", "cpu"]);
});

Deno.test("cgroups: on v2 an agent started from the leaf an earlier start moved its group to makes pods' groups where that one did", () => {
  const mounts = cgroupMounts(`30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw`);
  for (const own of ["/svc", `/svc/${AGENT_LEAF}`, `/svc/${AGENT_LEAF}/${AGENT_LEAF}`]) {
    const plan = planControllers(mounts, ownGroups(`0::${own}\n`), "ixabc");
    assert.ok(typeof plan !== "string");
    // Before, each restart from the same launcher nested one group deeper, and the sweep of the
    // pods' groups an earlier run left found none.
    assert.equal(plan[0].base, "/sys/fs/cgroup/svc/inferx-ixabc", own);
  }
});

Deno.test("cgroups: CPU millicores become weights as a request does in Kubernetes", () => {
  assert.equal(cpuShares(1000), 1024);
  assert.equal(cpuShares(500), 512);
  assert.equal(cpuShares(1), 2, "the kernel's least");
  assert.equal(cpuWeight(cpuShares(1000)), 39);
  assert.equal(cpuWeight(2), 1);
  assert.equal(cpuWeight(262_144), 10_000);
});

const cap = await PodCgroups.open("ixcgtest");
if (!cap.available) console.log(`skipping the cgroup runtime tests: ${cap.reason}`);
else globalThis.addEventListener("unload", () => cap.cgroups.close());
const criuCap = await criuCapability();
const netCap = await new PodNetworks({ prefix: "ixcgtst" }).capability();

function spec(podId: string, commands: string[], memMB: number): PodSpec {
  return {
    podId,
    func: "t/n/f",
    funcVersion: 1,
    template: {
      image: "img",
      commands,
      envs: [],
      mounts: [],
      port: 8000,
      probe: "/",
      startupTimeoutS: 20,
    },
    cpuMillis: 250,
    memMB,
    gpus: [],
  };
}

/** Serves `/`; `/hog` makes it take 400 MB of memory. */
const HOG = `
const held = [];
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  (req) => {
    if (new URL(req.url).pathname === "/hog") {
      for (let i = 0; i < 400; i++) held.push(new Uint8Array(1 << 20).fill(1));
    }
    return new Response(String(held.length));
  });`;

/** The directories of pod `podId`'s groups (one per hierarchy). */
function dirsOf(cgroups: PodCgroups, podId: string): string[] {
  return cgroups.of(podId).procsFiles.map((f) => f.replace(/\/cgroup\.procs$/, ""));
}

/** Whether a path exists. */
const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

/**
 * A test of pods in control groups (skipped, with the reason printed above,
 * where groups cannot be made here).
 */
function cgTest(name: string, fn: (cgroups: PodCgroups) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !cap.available,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => cap.available ? fn(cap.cgroups) : Promise.resolve(),
  });
}

/** The groups a process is in, from /proc. */
function groupsOf(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/cgroup`);
}

cgTest(
  "ProcessRuntime runs each worker in a control group of its own with its memory limit, tells its kill by that limit, and removes the group",
  async (cgroups) => {
    const exits: string[] = [];
    const rt = new ProcessRuntime({
      cgroups: cgroups,
      onExit: (_pod, why) => exits.push(why),
    });
    const pod = await rt.start(spec("pod-cg", ["deno", "eval", HOG], 160));
    const pid = rt.pidOf("pod-cg")!;
    assert.match(groupsOf(pid), /\/inferx-ixcgtest\/pod-cg$/m);
    const g = cgroups.of("pod-cg");
    const memDir = g.procsFiles.find((f) => f.includes("memory"))!.replace(/\/cgroup\.procs$/, "");
    const limit = await Deno.readTextFile(`${memDir}/memory.limit_in_bytes`)
      .catch(() => Deno.readTextFile(`${memDir}/memory.max`));
    assert.equal(limit.trim(), String(160 * 1024 * 1024));
    const pidsDir = g.procsFiles.find((f) => /pids/.test(f))?.replace(/\/cgroup\.procs$/, "") ??
      (cgroups.limitsProcesses ? memDir : undefined); // v2: one group for all
    if (pidsDir) {
      assert.equal((await Deno.readTextFile(`${pidsDir}/pids.max`)).trim(), "4096");
      assert.ok(Number(await Deno.readTextFile(`${pidsDir}/pids.current`)) > 0);
    } else console.log("no pids controller here: the process limit is not checked");
    const usage = await Deno.readTextFile(`${memDir}/memory.usage_in_bytes`)
      .catch(() => Deno.readTextFile(`${memDir}/memory.current`));
    assert.ok(Number(usage) > 0, "its memory is counted in its group");
    assert.equal(await (await fetch(`http://${pod.endpoint}/`)).text(), "0");
    await fetch(`http://${pod.endpoint}/hog`).then((r) => r.body?.cancel(), () => {});
    await until("the worker's exit", () => exits.length > 0, 20_000);
    assert.match(exits[0], /^killed by its memory limit \(160 MB; resources\.Mem\)/);
    await until(
      "its group gone",
      async () => !await exists(memDir),
    );
    assert.deepEqual(rt.running(), []);
  },
);

cgTest(
  "ProcessRuntime removes a stopped worker's control group, and leaves a worker under its limit be",
  async (cgroups) => {
    const rt = new ProcessRuntime({ cgroups: cgroups });
    const pod = await rt.start(spec("pod-cg2", ["deno", "eval", HOG], 1024));
    await fetch(`http://${pod.endpoint}/hog`).then((r) => r.text());
    assert.equal(await (await fetch(`http://${pod.endpoint}/`)).text(), "400", "it runs on");
    const dirs = dirsOf(cgroups, "pod-cg2");
    await rt.stop("pod-cg2");
    for (const d of dirs) assert.equal(await exists(d), false, d);
  },
);

/** Serves `/`; `/spawn` starts a process that takes 400 MB and answers how that process ended. */
const SPAWNER = `
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  async (req) => {
    if (new URL(req.url).pathname !== "/spawn") return new Response("up");
    const hog = "const h = []; for (let i = 0; i < 400; i++) h.push(new Uint8Array(1 << 20).fill(1));";
    const st = await new Deno.Command(Deno.execPath(), { args: ["eval", hog] }).output();
    return new Response(String(st.signal ?? st.code));
  });`;

cgTest(
  "ProcessRuntime says, when a worker is stopped, that a process of it was killed by its memory limit while it ran",
  async (cgroups) => {
    const lines = await logLines();
    try {
      const exits: string[] = [];
      const rt = new ProcessRuntime({ cgroups: cgroups, onExit: (_pod, why) => exits.push(why) });
      const pod = await rt.start(spec("pod-cg3", ["deno", "eval", SPAWNER], 160));
      // The process it started is killed by the group's limit; the worker itself answers on.
      assert.equal(await (await fetch(`http://${pod.endpoint}/spawn`)).text(), "SIGKILL");
      assert.equal(await (await fetch(`http://${pod.endpoint}/`)).text(), "up");
      assert.deepEqual(exits, [], "the worker did not exit");
      await rt.stop("pod-cg3");
      assert.ok(
        lines.includes(
          "Pod pod-cg3: a process of its worker was killed by its memory limit (160 MB; resources.Mem)",
        ),
        lines.join("\n"),
      );
    } finally {
      await reset();
    }
  },
);

Deno.test({
  name: "ProcessRuntime restores a snapshot's copy into the copy's own control group",
  ignore: !cap.available || !criuCap.available || !netCap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (!cap.available) return;
    const dir = await Deno.makeTempDir();
    const rt = new ProcessRuntime({
      cgroups: cap.cgroups,
      criu: new Criu(locateCriu()!),
      podNetworks: new PodNetworks({ prefix: "ixcgtst" }),
      snapshotDir: dir,
    });
    try {
      await rt.start(spec("pod-src", ["deno", "eval", HOG], 256));
      await rt.snapshot("pod-src", `${dir}/image`);
      await rt.restore(spec("pod-copy", [], 256), `${dir}/image`);
      const pid = rt.pidOf("pod-copy")!;
      assert.match(groupsOf(pid), /\/inferx-ixcgtest\/pod-copy$/m);
      await rt.park("pod-copy", "file");
      await rt.resume("pod-copy");
      assert.match(groupsOf(rt.pidOf("pod-copy")!), /\/inferx-ixcgtest\/pod-copy$/m);
    } finally {
      for (const id of rt.running()) await rt.stop(id);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

cgTest(
  "ProcessRuntime's stop ends what the worker started in a session of its own, and its group goes",
  async (cgroups) => {
    const rt = new ProcessRuntime({ cgroups: cgroups });
    const spawner = `
const helper = new Deno.Command("setsid", { args: ["sleep", "300"], stdout: "null", stderr: "null" }).spawn();
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  () => new Response(String(helper.pid)));`;
    const pod = await rt.start(spec("pod-cg3", ["deno", "eval", spawner], 256));
    const helper = Number(await (await fetch(`http://${pod.endpoint}/`)).text());
    assert.ok(await cgroups.of("pod-cg3").pids().then((p) => p.includes(helper)));
    const dirs = dirsOf(cgroups, "pod-cg3");
    await rt.stop("pod-cg3");
    // Gone, or a zombie its new parent has not reaped yet: not running.
    const state = await Deno.readTextFile(`/proc/${helper}/stat`).then(
      (t) => t.slice(t.lastIndexOf(")") + 2, t.lastIndexOf(")") + 3),
      () => "gone",
    );
    assert.ok(state === "gone" || state === "Z", `the helper outlived its pod (state ${state})`);
    for (const d of dirs) assert.equal(await exists(d), false, d);
  },
);

/** The state letter of a process (`R`, `S`, `T`...), or undefined once it is gone. */
const stateOf = async (pid: number) => (await procState(pid))?.state;

/** Serves `/`; `/spin` starts a busy loop in a session of its own and answers its pid. */
const SPINNER = `
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: Deno.env.get("HOST"), onListen() {} },
  (req) => {
    if (new URL(req.url).pathname !== "/spin") return new Response("up");
    const p = new Deno.Command("setsid", { args: ["/bin/sh", "-c", "while :; do :; done"] }).spawn();
    return new Response(String(p.pid));
  });`;

cgTest(
  "a pod parked in the paused tier stops all of it, a process in a session of its own included, and resumes it all",
  async (cgroups) => {
    const rt = new ProcessRuntime({ cgroups });
    const pod = await rt.start(spec("pod-cg4", ["deno", "eval", SPINNER], 256));
    try {
      const spinner = Number(await (await fetch(`http://${pod.endpoint}/spin`)).text());
      assert.equal(await stateOf(spinner), "R");
      await rt.park("pod-cg4", "paused");
      // Before, it spun on at a core's worth while its pod was counted as holding no CPU. (A
      // signal lands a moment after it is sent.)
      await until("the spinner stopped", async () => await stateOf(spinner) === "T", 2000);
      await until(
        "the worker stopped",
        async () => await stateOf(rt.pidOf("pod-cg4")!) === "T",
        2000,
      );
      await rt.resume("pod-cg4");
      await until("the spinner runs again", async () => await stateOf(spinner) !== "T", 2000);
      assert.equal(await (await fetch(`http://${pod.endpoint}/`)).text(), "up");
      await rt.park("pod-cg4", "paused");
      await rt.stop("pod-cg4"); // stopped while parked: all of it ends
      // Gone, or a zombie a PID 1 that does not reap keeps.
      await until(
        "the spinner gone",
        async () => [undefined, "Z"].includes(await stateOf(spinner)),
      );
    } finally {
      await rt.stop("pod-cg4");
    }
  },
);

Deno.test({
  name:
    "sweepLeftBehind() ends an earlier agent's pods' groups and its base groups, and makes none",
  ignore: !cap.available,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (!cap.available) return;
    // Nothing of this tag: nothing is made.
    await PodCgroups.sweepLeftBehind("ixcgnone");
    const none = dirsOf(cap.cgroups, "x").map((d) => d.replace(/ixcgtest\/x$/, "ixcgnone"));
    for (const d of none) assert.equal(await exists(d), false, d);
    // An earlier agent's groups, one with a process in it.
    const earlier = await PodCgroups.open("ixcgleft");
    assert.ok(earlier.available);
    const g = await earlier.cgroups.create("pod-left", { cpuMillis: 100, memMB: 64 });
    const [cmd, ...args] = [...g.joinPrefix, "sleep", "600"];
    const p = new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).spawn();
    await until("it joined", async () => (await g.pids()).includes(p.pid));
    const bases = dirsOf(earlier.cgroups, "pod-left").map((d) => d.replace(/\/pod-left$/, ""));
    try {
      await PodCgroups.sweepLeftBehind("ixcgleft");
      assert.equal((await p.status).signal, "SIGKILL");
      for (const d of bases) assert.equal(await exists(d), false, d);
    } finally {
      await g.killAll(1000).catch(() => {});
      await g.remove(1000).catch(() => {});
      earlier.cgroups.close();
    }
  },
});

cgTest(
  "a restarted agent's sweep kills what is left in its pods' groups and removes them",
  async (cgroups) => {
    const g = await cgroups.create("pod-left", { cpuMillis: 100, memMB: 64 });
    // A daemon a worker left: it carries no scope in its environment, so only its group finds it.
    const [cmd, ...args] = [...g.joinPrefix, "sleep", "600"];
    const p = new Deno.Command(cmd, { args, clearEnv: true, stdout: "null", stderr: "null" })
      .spawn();
    await until("it joined", async () => (await g.pids()).includes(p.pid));
    try {
      await cgroups.sweep();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ended = await Promise.race([
        p.status,
        new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), 5000)),
      ]);
      clearTimeout(timer);
      assert.equal(ended?.signal, "SIGKILL", "the daemon was killed");
      for (const d of dirsOf(cgroups, "pod-left")) assert.equal(await exists(d), false, d);
    } finally {
      await g.killAll(1000);
      await g.remove(1000);
    }
  },
);

Deno.test({
  name:
    "cgroups: a pids hierarchy the agent cannot make groups in leaves pods their memory and CPU limits, without a process limit",
  ignore: !cap.available || !cap.cgroups.limitsProcesses,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // This host's own hierarchies, but the pids one mounted where no group can be made.
    const proc = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${proc}/self`);
      const mounts = (await Deno.readTextFile("/proc/self/mountinfo")).split("\n").map((l) =>
        / - cgroup cgroup .*\bpids\b/.test(l)
          ? l.replace(/^(\S+ \S+ \S+ \S+) \S+/, "$1 /proc/ixnopids")
          : l
      );
      await Deno.writeTextFile(`${proc}/self/mountinfo`, mounts.join("\n"));
      await Deno.copyFile("/proc/self/cgroup", `${proc}/self/cgroup`);
      const c = await PodCgroups.open("ixcgtestp", proc);
      // Before, the whole capability failed: no memory limit for any pod.
      assert.ok(c.available, c.available ? "" : c.reason);
      assert.equal(c.cgroups.limitsProcesses, false);
      assert.match(String(c.noProcessLimit), /ixnopids/);
      const g = await c.cgroups.create("pod-np", { cpuMillis: 500, memMB: 64 });
      assert.ok(g.procsFiles.some((f) => f.includes("memory")), g.procsFiles.join());
      await g.remove();
      c.cgroups.close();
    } finally {
      await Deno.remove(proc, { recursive: true });
    }
  },
});

/** A v2 hierarchy here, and a controller its root group can give its children, if any. */
async function v2Controller(): Promise<{ root: string; name: string } | undefined> {
  const v2 = cgroupMounts(await Deno.readTextFile("/proc/self/mountinfo"))
    .find((m) => m.version === 2 && m.root === "/");
  if (!v2 || Deno.uid() !== 0) return undefined;
  const offered = (await Deno.readTextFile(`${v2.point}/cgroup.controllers`)).split(/\s+/);
  const name = ["pids", "hugetlb", "memory"].find((n) => offered.includes(n));
  return name ? { root: v2.point, name } : undefined;
}
const v2 = await v2Controller();
if (!v2) console.log("skipping the cgroup v2 delegation test: no v2 controller to give here");

Deno.test({
  name:
    "cgroups: on v2 a group that holds processes (the agent's own) gives its children controllers once they moved to a leaf of it",
  ignore: !v2,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { root, name } = v2!;
    const rootControl = `${root}/cgroup.subtree_control`;
    const wasOn = (await Deno.readTextFile(rootControl)).split(/\s+/).includes(name);
    if (!wasOn) await Deno.writeTextFile(rootControl, `+${name}`);
    const group = `${root}/ixcgtest-give-${Deno.pid}`;
    // A process whose short-lived children come and go while the group's processes move: one
    // gone between the listing and its move was taken for a failure (ESRCH) in 8 of 20 tries.
    const churn = ["-c", "while :; do /bin/true; done"];
    try {
      for (let i = 0; i < 10; i++) {
        await Deno.mkdir(group);
        const shell = new Deno.Command("/bin/sh", { args: churn }).spawn();
        try {
          await Deno.writeTextFile(`${group}/cgroup.procs`, String(shell.pid));
          // Before, this failed at once (EBUSY: a group with processes gives no controllers).
          await giveControllers(group, [name]);
          assert.ok((await Deno.readTextFile(`${group}/cgroup.subtree_control`)).includes(name));
          assert.equal((await Deno.readTextFile(`${group}/cgroup.procs`)).trim(), "");
          const moved = await Deno.readTextFile(`${group}/${AGENT_LEAF}/cgroup.procs`);
          assert.ok(moved.split("\n").includes(String(shell.pid)), moved);
          await giveControllers(group, [name]); // on already: nothing to do
        } finally {
          shell.kill("SIGKILL");
          await shell.status;
          await until(
            "the leaf empty",
            async () =>
              (await Deno.readTextFile(`${group}/${AGENT_LEAF}/cgroup.procs`)).trim() === "",
          );
          await Deno.remove(`${group}/${AGENT_LEAF}`);
          await Deno.remove(group);
        }
      }
    } finally {
      await Deno.remove(`${group}/${AGENT_LEAF}`).catch(() => {});
      await Deno.remove(group).catch(() => {});
      if (!wasOn) await Deno.writeTextFile(rootControl, `-${name}`);
    }
  },
});

cgTest(
  "a GPU worker's memory limit holds its GPU memory too while the driver keeps that in host memory, and only then",
  async (cgroups) => {
    if (fakeLibCudaUnavailable()) return console.log(`skipped: ${fakeLibCudaUnavailable()}`);
    for (const refused of [false, true]) {
      const lib = await buildFakeLibCuda(refused ? ["-DCHECKPOINT_RESULT=801"] : []);
      const { cuda } = openLibCuda(lib);
      assert.ok(cuda);
      const rt = new ProcessRuntime({ cgroups, cuda });
      const withGpu: PodSpec = { ...spec("pod-gpu", ["deno", "eval", HOG], 160), gpus: GPU };
      await rt.start(withGpu);
      const memDir = dirsOf(cgroups, "pod-gpu").find((d) => /memory|inferx-ixcgtest/.test(d))!;
      const limitMB = async () =>
        Number(
          await Deno.readTextFile(`${memDir}/memory.limit_in_bytes`)
            .catch(() => Deno.readTextFile(`${memDir}/memory.max`)),
        ) / 1024 / 1024;
      try {
        assert.equal(await limitMB(), 160);
        if (refused) {
          await assert.rejects(rt.park("pod-gpu", "host_memory"), /CUDA_ERROR_NOT_SUPPORTED/);
          assert.equal(await limitMB(), 160, "a refused checkpoint leaves the limit as it was");
          continue;
        }
        await rt.park("pod-gpu", "host_memory");
        assert.equal(await limitMB(), 160 + 300, "its own and its slice's");
        await rt.resume("pod-gpu");
        assert.equal(await limitMB(), 160, "back on the GPU: its own");
      } finally {
        await rt.stop("pod-gpu");
        cuda.close();
        await Deno.remove(lib.replace(/\/[^/]+$/, ""), { recursive: true });
      }
    }
  },
);
