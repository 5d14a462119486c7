/**
 * Memory limits and CPU weights for the process runtime's workers, through
 * the kernel's control groups: each pod gets a group of its own under the
 * node agent's (`inferx-{scope tag}/{pod}`), with `resources.Mem` as its
 * memory limit and `resources.CPU` as its share of the node's CPU when
 * workers contend for it (a weight, as Kubernetes gives a CPU request: a
 * worker alone on an idle node is not slowed), and the worker joins it before
 * it runs (a shell that writes its own PID into the group, then execs the
 * worker), so everything it starts is counted there too. Both hierarchies are
 * handled: cgroup v2 (one group, `memory.max` and `cpu.weight`) and v1 (a
 * group in each controller's hierarchy, `memory.limit_in_bytes` and
 * `cpu.shares`). Where the pids controller is mounted too, a group also
 * holds at most {@linkcode WORKER_PIDS_LIMIT} processes and threads
 * (`pids.max`), as the Docker runtime's containers do: a worker that forks
 * without end, or piles up zombies, stops at its own limit rather than the
 * node's. The kernel's OOM kill in a group is counted there
 * (`memory.events` or `memory.oom_control`), so an exit by SIGKILL is told as
 * the memory limit's when it was.
 *
 * Available when the agent may make groups below its own (root, or a
 * delegated group on v2 with the two controllers on for its children); else
 * the runtime runs workers without limits and says why at start.
 *
 * @module
 */

import { parseMountinfo } from "./mounts.ts";
import { logger } from "../common/log.ts";
import { WORKER_PIDS_LIMIT } from "./runtime.ts";

const log = logger("nodeagent", "cgroup");

/** The group the processes of the agent's own group move to on v2 (see {@linkcode giveControllers}). */
export const AGENT_LEAF = "inferx-agent";
/** The end of the path of a group in that leaf (or in a leaf of a leaf). */
const IN_LEAF = new RegExp(`(/${AGENT_LEAF})+$`);

/** A controller the runtime limits workers with (pids where it is there: optional). */
type ControllerName = "memory" | "cpu" | "pids";

/** Where one controller's groups of this agent are made. */
interface Controller {
  names: ControllerName[];
  version: 1 | 2;
  /** The directory the pods' groups go in (`…/{own group}/inferx-{tag}`). */
  base: string;
}

/** {@linkcode planControllers} for this process (`proc`: where `/proc` is), or why there is none. */
async function planOf(tag: string, proc: string): Promise<ReturnType<typeof planControllers>> {
  try {
    const mountinfo = await Deno.readTextFile(`${proc}/self/mountinfo`);
    const own = await Deno.readTextFile(`${proc}/self/cgroup`);
    return planControllers(cgroupMounts(mountinfo), ownGroups(own), tag);
  } catch (err) {
    return `cannot read ${proc}/self: ${(err as Error).message}`;
  }
}

/** Whether pods can be limited on this node, and if not, why. */
export type CgroupCapability =
  | {
    available: true;
    cgroups: PodCgroups;
    /** Why pods' groups hold no process limit where the pids controller is there. */
    noProcessLimit?: string;
  }
  | { available: false; reason: string };

/** One mount of a cgroup hierarchy (`/proc/self/mountinfo`). */
interface CgroupMount {
  version: 1 | 2;
  /** The hierarchy's path mounted there (a container sees its own group as `/`). */
  root: string;
  point: string;
  /** v1: the controllers of the hierarchy. */
  controllers: string[];
}

/**
 * Shell statements that move the shell into the groups whose `cgroup.procs`
 * files are `files`, each taking its file from `$1` and shifting it off;
 * exit 125 when one cannot be joined. A shell that then execs takes its
 * command there.
 */
export function joinLines(files: string[]): string[] {
  return files.map(() => 'echo $$ >"$1" || exit 125; shift');
}

/** The controllers a cgroup v1 hierarchy can hold (the kernel's). */
const V1_CONTROLLERS: ReadonlySet<string> = new Set([
  "cpu",
  "cpuacct",
  "cpuset",
  "memory",
  "devices",
  "freezer",
  "net_cls",
  "net_prio",
  "blkio",
  "perf_event",
  "hugetlb",
  "pids",
  "rdma",
  "misc",
]);

/** The cgroup hierarchies mounted, from `/proc/self/mountinfo`'s text. */
export function cgroupMounts(mountinfo: string): CgroupMount[] {
  return parseMountinfo(mountinfo)
    .filter((m) => m.fstype === "cgroup" || m.fstype === "cgroup2")
    .map((m) => ({
      version: m.fstype === "cgroup2" ? 2 : 1,
      root: m.root,
      point: m.point,
      controllers: m.fstype === "cgroup" ? m.superOpts.split(",") : [],
    }));
}

/**
 * This process's group in each hierarchy, from `/proc/self/cgroup`'s text:
 * by controller name for v1 (`memory`, `cpu`...), `""` for v2.
 */
export function ownGroups(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = line.match(/^\d+:([^:]*):(.*)$/);
    if (!m) continue;
    if (m[1] === "") out.set("", m[2]);
    else for (const c of m[1].split(",")) out.set(c, m[2]);
  }
  return out;
}

/** The directory of group `path` in a mount, when the mount shows it. */
function dirOf(mount: CgroupMount, path: string): string | undefined {
  const root = mount.root === "/" ? "" : mount.root;
  if (root && path !== root && !path.startsWith(`${root}/`)) return undefined;
  return `${mount.point}${path.slice(root.length)}`.replace(/\/+$/, "");
}

/**
 * Where each controller's groups for this agent would go: v1's hierarchy of
 * the controller when it has one, else v2's. Pure, for tests.
 */
export function planControllers(
  mounts: CgroupMount[],
  own: Map<string, string>,
  tag: string,
): { version: 1 | 2; name: ControllerName; parent: string; base: string }[] | string {
  const out = [];
  for (const name of ["memory", "cpu", "pids"] as const) {
    const v1 = mounts.find((m) => m.version === 1 && m.controllers.includes(name));
    const v2 = mounts.find((m) => m.version === 2);
    // v1 hierarchies for memory and cpu but none for pids: the v2 mount there holds no
    // controller a v1 hierarchy has (a hybrid host), so pids goes without. A named v1
    // hierarchy with no controller (systemd's, the node agent's for favordynmods) makes no host
    // hybrid.
    const hybrid = name === "pids" && !v1 &&
      mounts.some((m) => m.version === 1 && m.controllers.some((c) => V1_CONTROLLERS.has(c)));
    const mount = hybrid ? undefined : v1 ?? v2;
    // v2: a process in the leaf an earlier start moved its group's processes to (the agent
    // started again by the same launcher) belongs to the group above it.
    const given = mount && own.get(v1 ? name : "");
    const path = !v1 && given !== undefined ? given.replace(IN_LEAF, "") : given;
    const parent = mount && path !== undefined ? dirOf(mount, path) : undefined;
    if (name === "pids" && !parent) continue; // optional: workers go without a process limit
    if (!mount) return `no cgroup hierarchy has the ${name} controller mounted`;
    if (path === undefined) return `this process is in no group of the ${name} hierarchy`;
    if (!parent) return `this process's ${name} group ${path} is not under ${mount.point}`;
    out.push({ version: mount.version, name, parent, base: `${parent}/inferx-${tag}` });
  }
  return out;
}

/** The groups of this agent's pods: made, limited, joined and removed here. */
export class PodCgroups {
  readonly #controllers: Controller[];

  private constructor(controllers: Controller[]) {
    this.#controllers = controllers;
  }

  /**
   * Finds the hierarchies and makes this agent's base groups (`tag`: the
   * agent's scope tag, so agents sharing a host keep apart). `proc` is where
   * `/proc` is (tests).
   */
  static async open(tag: string, proc = "/proc"): Promise<CgroupCapability> {
    const plan = await planOf(tag, proc);
    if (typeof plan === "string") return { available: false, reason: plan };
    const controllers: Controller[] = [];
    for (const p of plan) {
      // v2 offers pids only where the agent's group has it to give.
      if (p.name === "pids" && p.version === 2 && !await offers(p.parent, "pids")) continue;
      const same = controllers.find((c) => c.base === p.base);
      if (same) {
        same.names.push(p.name);
        continue;
      }
      controllers.push({ names: [p.name], version: p.version, base: p.base });
    }
    const reason = await setUp(controllers);
    if (reason === undefined) return { available: true, cgroups: new PodCgroups(controllers) };
    // The process limit is optional: memory and CPU limits without it (a group delegated for
    // those two alone, say).
    const without = controllers.map((c) => ({ ...c, names: c.names.filter((n) => n !== "pids") }))
      .filter((c) => c.names.length > 0);
    if (controllers.some((c) => c.names.includes("pids")) && await setUp(without) === undefined) {
      return { available: true, cgroups: new PodCgroups(without), noProcessLimit: reason };
    }
    return { available: false, reason };
  }

  /**
   * Removes the groups an agent of `tag` left (its pods' and its base
   * groups, what is still in them killed) without making any: for a start on
   * a runtime that uses none (Docker), where making them would change the
   * host's groups for nothing.
   */
  static async sweepLeftBehind(tag: string, proc = "/proc"): Promise<void> {
    const plan = await planOf(tag, proc);
    if (typeof plan === "string") return;
    const controllers: Controller[] = [];
    for (const p of plan) {
      if (!await Deno.stat(p.base).then((st) => st.isDirectory, () => false)) continue;
      const same = controllers.find((c) => c.base === p.base);
      if (same) same.names.push(p.name);
      else controllers.push({ names: [p.name], version: p.version, base: p.base });
    }
    if (!controllers.length) return;
    const groups = new PodCgroups(controllers);
    await groups.sweep();
    groups.close();
  }

  /** The group of pod `podId` (made or not). */
  of(podId: string): PodCgroup {
    return new PodCgroup(
      this.#controllers.map((c) => ({ ...c, dir: `${c.base}/${podId}` })),
    );
  }

  /** Makes the group of pod `podId` with its limits (0: none). */
  async create(podId: string, limits: { cpuMillis: number; memMB: number }): Promise<PodCgroup> {
    const g = this.of(podId);
    await g.make(limits);
    return g;
  }

  /**
   * Removes the groups of pods that are no more, killing what is still in
   * them (an agent's restart: it has just killed the workers it left, and
   * what it finds in their groups besides is theirs: a daemon one started
   * with an environment of its own, which the search by scope misses).
   */
  async sweep(): Promise<void> {
    const names = new Set<string>();
    for (const c of this.#controllers) {
      try {
        for await (const e of Deno.readDir(c.base)) if (e.isDirectory) names.add(e.name);
      } catch {
        // gone meanwhile
      }
    }
    for (const name of names) {
      const g = this.of(name);
      await g.killAll(1000);
      await g.remove(1000);
    }
  }

  /** Whether pods' groups hold a limit on their processes (the pids controller is there). */
  get limitsProcesses(): boolean {
    return this.#controllers.some((c) => c.names.includes("pids"));
  }

  /** Removes this agent's base groups when no pod's group is left in them (its stop). */
  close(): void {
    for (const c of this.#controllers) {
      try {
        Deno.removeSync(c.base);
      } catch {
        // a pod's group is left (workers outlive a stopped agent until its next start), or gone
      }
    }
  }
}

/**
 * Makes the base groups of `controllers` and a probe group below them (made,
 * limited and removed: a base left by an earlier run, root's say, proves
 * nothing about what this one may do). Returns why it cannot, having removed
 * the bases it made.
 */
async function setUp(controllers: Controller[]): Promise<string | undefined> {
  const made: string[] = [];
  try {
    for (const c of controllers) {
      const existed = await Deno.stat(c.base).then(() => true, () => false);
      if (c.version === 2) {
        // The controllers must be on for the children of the agent's group and of the base.
        await giveControllers(c.base.slice(0, c.base.lastIndexOf("/")), c.names);
        await Deno.mkdir(c.base, { recursive: true });
        if (!existed) made.push(c.base);
        await giveControllers(c.base, c.names);
      } else {
        await Deno.mkdir(c.base, { recursive: true });
        if (!existed) made.push(c.base);
      }
    }
    const probe = new PodCgroup(
      controllers.map((c) => ({ ...c, dir: `${c.base}/probe-${Deno.pid}` })),
    );
    try {
      await probe.make({ cpuMillis: 1000, memMB: 64 });
    } finally {
      await probe.remove(500);
    }
    return undefined;
  } catch (err) {
    for (const dir of made) await Deno.remove(dir).catch(() => {});
    const why = (err as Error).message;
    return err instanceof Deno.errors.PermissionDenied
      ? `this agent may not make control groups there, which needs root or a delegated group (${why})`
      : why;
  }
}

/** Whether v2 group `dir` has controller `name` to give its children. */
async function offers(dir: string, name: ControllerName): Promise<boolean> {
  const text = await Deno.readTextFile(`${dir}/cgroup.controllers`).catch(() => "");
  return text.split(/\s+/).includes(name);
}

/**
 * Turns controllers `names` on for the children of v2 group `dir`, unless
 * they are on already. The kernel gives controllers to the children of a
 * group only while no process is in it (the root group aside), and the
 * agent's own group holds the agent (a service's group delegated to it, a
 * container's): its processes move to a leaf of it first ({@linkcode
 * AGENT_LEAF}), as an init in a container does before it makes groups.
 */
export async function giveControllers(dir: string, names: readonly string[]): Promise<void> {
  const control = `${dir}/cgroup.subtree_control`;
  const on = (await Deno.readTextFile(control)).split(/\s+/);
  if (names.every((n) => on.includes(n))) return;
  const want = names.map((n) => `+${n}`).join(" ");
  try {
    await Deno.writeTextFile(control, want);
    return;
  } catch (err) {
    if ((err as { code?: string }).code !== "EBUSY") throw cannotGive(dir, names, err);
  }
  try {
    const leaf = `${dir}/${AGENT_LEAF}`;
    await Deno.mkdir(leaf, { recursive: true });
    // Until none is left and the kernel takes the write: a process may fork, or be exiting
    // (still listed, no longer movable), while they move.
    const deadline = Date.now() + 2000;
    while (true) {
      const pids = (await Deno.readTextFile(`${dir}/cgroup.procs`)).split("\n").filter(Boolean);
      for (const pid of pids) {
        await Deno.writeTextFile(`${leaf}/cgroup.procs`, pid).catch((err) => {
          // ESRCH, gone meanwhile (Deno gives it no code: its message names it).
          if (!/\(os error 3\)/.test((err as Error).message)) throw err;
        });
      }
      try {
        await Deno.writeTextFile(control, want);
        break;
      } catch (err) {
        if ((err as { code?: string }).code !== "EBUSY" || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    log.info("Moved the processes of control group {dir} to {leaf}, to give its children {names}", {
      dir,
      leaf,
      names: names.join(" and "),
    });
  } catch (err) {
    throw cannotGive(dir, names, err);
  }
}

function cannotGive(dir: string, names: readonly string[], err: unknown): Error {
  return new Error(
    `cannot turn on ${names.join(" and ")} for the groups below ${dir} (${
      (err as Error).message
    }): the agent needs root, or a delegated group of its own`,
  );
}

/**
 * CPU shares (v1's `cpu.shares`) for `cpuMillis`: 1,024 a core, as the
 * kernel weighs a group with no setting, and as Kubernetes weighs a request.
 */
export function cpuShares(cpuMillis: number): number {
  return Math.min(262_144, Math.max(2, Math.round(cpuMillis * 1024 / 1000)));
}

/** v2's `cpu.weight` for the same shares (Kubernetes' mapping: 2..262144 onto 1..10000). */
export function cpuWeight(shares: number): number {
  return 1 + Math.floor((shares - 2) * 9999 / 262_142);
}

/** A pod's group (one per hierarchy). */
export class PodCgroup {
  readonly #dirs: (Controller & { dir: string })[];

  constructor(dirs: (Controller & { dir: string })[]) {
    this.#dirs = dirs;
  }

  /** The files a process writes its PID to, to join the group. */
  get procsFiles(): string[] {
    return this.#dirs.map((d) => `${d.dir}/cgroup.procs`);
  }

  /**
   * A command prefix that runs the rest of the command line in this group:
   * a shell joins it and execs the rest (exit 125 when it cannot).
   */
  get joinPrefix(): string[] {
    const files = this.procsFiles;
    return ["/bin/sh", "-c", [...joinLines(files), 'exec "$@"'].join("; "), "sh", ...files];
  }

  /** Makes the groups and sets the memory limit, the CPU weight and the process limit. */
  async make(limits: { cpuMillis: number; memMB: number }): Promise<void> {
    for (const d of this.#dirs) await Deno.mkdir(d.dir, { recursive: true });
    await this.limitMemory(limits.memMB);
    for (const d of this.#dirs) {
      const set = (file: string, value: string) => Deno.writeTextFile(`${d.dir}/${file}`, value);
      if (d.names.includes("cpu") && limits.cpuMillis > 0) {
        const shares = cpuShares(limits.cpuMillis);
        if (d.version === 2) await set("cpu.weight", String(cpuWeight(shares)));
        else await set("cpu.shares", String(shares));
      }
      if (d.names.includes("pids")) await set("pids.max", String(WORKER_PIDS_LIMIT));
    }
  }

  /**
   * Sets the group's memory limit (0: none set), with no swap beyond it (a
   * worker past it is killed, as a container is).
   */
  async limitMemory(memMB: number): Promise<void> {
    if (memMB <= 0) return;
    const bytes = String(memMB * 1024 * 1024);
    for (const d of this.#dirs) {
      if (!d.names.includes("memory")) continue;
      const set = (file: string, value: string) => Deno.writeTextFile(`${d.dir}/${file}`, value);
      if (d.version === 2) {
        await set("memory.max", bytes);
        await set("memory.swap.max", "0").catch(() => {});
      } else if (Number(await Deno.readTextFile(`${d.dir}/memory.limit_in_bytes`)) < +bytes) {
        // v1 refuses a memory limit above the memory+swap one: raised in that order.
        await set("memory.memsw.limit_in_bytes", bytes).catch(() => {});
        await set("memory.limit_in_bytes", bytes);
      } else {
        await set("memory.limit_in_bytes", bytes);
        await set("memory.memsw.limit_in_bytes", bytes).catch(() => {});
      }
    }
  }

  /** The memory limit's kills in the group so far (0 when none, or none can tell). */
  async oomKills(): Promise<number> {
    const d = this.#dirs.find((x) => x.names.includes("memory"));
    if (!d) return 0;
    const file = d.version === 2 ? "memory.events" : "memory.oom_control";
    const text = await Deno.readTextFile(`${d.dir}/${file}`).catch(() => "");
    return Number(text.match(/^oom_kill (\d+)$/m)?.[1] ?? 0);
  }

  /** The processes in the group now. */
  async pids(): Promise<number[]> {
    const out = new Set<number>();
    for (const f of this.procsFiles) {
      const text = await Deno.readTextFile(f).catch(() => "");
      for (const line of text.split("\n")) if (line) out.add(Number(line));
    }
    return [...out];
  }

  /**
   * Kills what is left in the group (SIGKILL), until nothing is, for up to
   * `waitMs`: a process the worker started in a session of its own outlives
   * the worker's group signal, and would keep the group (and its memory).
   */
  async killAll(waitMs = 2000): Promise<void> {
    const deadline = Date.now() + waitMs;
    while (true) {
      const pids = await this.pids();
      if (pids.length === 0 || Date.now() > deadline) return;
      for (const pid of pids) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /**
   * Removes the groups. A group goes only once no process is in it: tried
   * for up to `waitMs` (the worker's last processes exiting).
   */
  async remove(waitMs = 2000): Promise<void> {
    const deadline = Date.now() + waitMs;
    for (const d of this.#dirs) {
      while (true) {
        try {
          await Deno.remove(d.dir);
          break;
        } catch (err) {
          if (err instanceof Deno.errors.NotFound || Date.now() > deadline) break;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
  }
}
