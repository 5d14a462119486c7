/**
 * Pod starts without the kernel's wait in a control group move.
 *
 * Every pod of the process runtime starts in a control group of its own: a
 * shell writes its PID to the group's `cgroup.procs`, then execs the worker
 * (or CRIU, for a restore). Moving a process between groups takes the
 * kernel's `cgroup_threadgroup_rwsem` for writing, and that lock by default
 * keeps its readers (every fork and exit) on a fast path that a writer must
 * first wait out: a whole RCU grace period. Writes close together share one
 * wait; the next pod start, a while later, waits again. Measured on a
 * 2-core VM (`bench/results/favordynmods-2026-12-04.txt`): a shell that
 * joins a pod's groups and execs `true` took 9–10 ms after an idle 300 ms,
 * 1.4–2.4 ms back to back, and 2.0 ms after the idle 300 ms with the option
 * below; in a restore under way, the wrappers before CRIU took 13–24 ms, and
 * 4.5–5.3 ms with it.
 *
 * Linux 6.0's `favordynmods` mount option of a cgroup hierarchy keeps that
 * lock on its slow path for readers, so that a move waits for no grace
 * period, at the cost of forks and exits taking it a little more slowly
 * (0.72 ms a fork and exec of `true` here with it on; the same machine
 * without it was not measured). The lock is one for the whole kernel, so
 * any hierarchy mounted with the option serves every group move of the node
 * while it stays mounted. From Linux 6.18 a move under the option takes a
 * lock of the moved process's own instead, and the kernel keeps doing so for
 * the rest of the boot once the option has been on.
 *
 * At its start the agent ({@linkcode favorDynmods}) leaves the node as it
 * is when a cgroup hierarchy is mounted with the option already (the
 * node's own `cgroup2` mount, say), and otherwise mounts one of its own: a
 * named cgroup v1 hierarchy with no controllers
 * ({@linkcode FAVOR_DYNMODS_NAME}, at {@linkcode FAVOR_DYNMODS_DIR}), which
 * holds no groups (every process's `/proc/PID/cgroup` shows one more line,
 * `N:name=inferx-favordynmods:/`). It stays mounted until the node's next
 * boot, or until an agent starts with `INFERX_CGROUP_FAVOR_DYNMODS=off`,
 * which unmounts it (on Linux 6.18 and later, moves stay without the wait
 * until the next boot all the same). The setting is the host's: the agents
 * of several platforms on one host share the hierarchy, and one started with
 * `off` unmounts it for all.
 *
 * @module
 */
import { run as runCommand } from "../common/rootfs.ts";
import { type Mount, parseMountinfo } from "./mounts.ts";

/** The name of the agent's hierarchy (a v1 hierarchy's `name=`). */
export const FAVOR_DYNMODS_NAME = "inferx-favordynmods";

/** Where the agent mounts it. */
export const FAVOR_DYNMODS_DIR = "/run/inferx/cgroup-favordynmods";

/** What an agent switched off says (it cannot tell whether the kernel went on without the wait). */
export const OFF_REASON = "INFERX_CGROUP_FAVOR_DYNMODS=off (a kernel from 6.18 on keeps moves " +
  "without the wait until the next boot once the option has been on)";

/** Whether group moves wait for a grace period on this node. */
export interface FavorDynmodsState {
  /**
   * `node`: a hierarchy of the node's own is mounted with `favordynmods`;
   * `mounted`: the agent's hierarchy is (by this agent or an earlier one);
   * `off`: moves wait (`reason` says why nothing was done).
   */
  state: "node" | "mounted" | "off";
  reason?: string;
  /** Where the hierarchy that holds the option is mounted. */
  mountPoint?: string;
}

export interface FavorDynmodsOptions {
  /** `INFERX_CGROUP_FAVOR_DYNMODS`: `false` mounts none and unmounts the agent's. @default true */
  enabled?: boolean;
  /** The hierarchy's name (tests use others). @default {@linkcode FAVOR_DYNMODS_NAME} */
  name?: string;
  /** Where to mount it. @default {@linkcode FAVOR_DYNMODS_DIR} */
  dir?: string;
  /** `/proc/self/mountinfo`'s text, read again after each change. @default read */
  mountinfo?: () => Promise<string>;
  /** Runs a command (`mount`, `umount`); throws with what it said when it fails. */
  run?: (cmd: string, args: string[]) => Promise<unknown>;
  /** Whether the agent runs as root. @default `Deno.uid() === 0` */
  root?: boolean;
}

/** Whether a mount is a cgroup hierarchy mounted with `favordynmods`. */
export function favorsDynmods(m: Mount): boolean {
  return (m.fstype === "cgroup" || m.fstype === "cgroup2") &&
    m.superOpts.split(",").includes("favordynmods");
}

/** Whether a mount is the hierarchy named `name`. */
function isNamed(m: Mount, name: string): boolean {
  return m.fstype === "cgroup" && m.superOpts.split(",").includes(`name=${name}`);
}

/**
 * Makes group moves on this node wait for no grace period, unless a
 * hierarchy already sees to it or `enabled` is false (see the module).
 */
export async function favorDynmods(options: FavorDynmodsOptions = {}): Promise<FavorDynmodsState> {
  const name = options.name ?? FAVOR_DYNMODS_NAME;
  const dir = options.dir ?? FAVOR_DYNMODS_DIR;
  const read = options.mountinfo ?? (() => Deno.readTextFile("/proc/self/mountinfo"));
  const run = options.run ?? runCommand;
  const mounts = parseMountinfo(await read());
  const ours = mounts.filter((m) => isNamed(m, name));
  if (options.enabled === false) {
    // Each of the agent's mounts, the last on a point first.
    for (const m of ours.reverse()) {
      try {
        await run("umount", [m.point]);
      } catch (err) {
        return {
          state: "mounted",
          reason: `INFERX_CGROUP_FAVOR_DYNMODS=off, but ${m.point} cannot be unmounted: ${
            (err as Error).message
          }`,
          mountPoint: m.point,
        };
      }
    }
    const left = parseMountinfo(await read()).find(favorsDynmods);
    if (left) return { state: "node", mountPoint: left.point };
    return { state: "off", reason: OFF_REASON };
  }
  const favoring = mounts.find(favorsDynmods);
  if (favoring) {
    return { state: isNamed(favoring, name) ? "mounted" : "node", mountPoint: favoring.point };
  }
  if (!(options.root ?? Deno.uid() === 0)) {
    return { state: "off", reason: "mounting a cgroup hierarchy needs root" };
  }
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o755 });
  } catch (err) {
    return { state: "off", reason: `cannot make ${dir}: ${(err as Error).message}` };
  }
  try {
    await run("mount", ["-t", "cgroup", "-o", `none,name=${name},favordynmods`, name, dir]);
  } catch (err) {
    await Deno.remove(dir).catch(() => {});
    return {
      state: "off",
      reason: `cannot mount a cgroup hierarchy with favordynmods (it needs Linux 6.0 or later, ` +
        `with cgroup v1 named hierarchies allowed): ${(err as Error).message}`,
    };
  }
  const now = parseMountinfo(await read()).find((m) => m.point === dir && favorsDynmods(m));
  if (!now) {
    // A hierarchy of that name mounted before without the option: the mount took it as it was.
    await run("umount", [dir]).catch(() => {});
    return {
      state: "off",
      reason:
        `${dir} was mounted without favordynmods (a hierarchy named ${name} without it was there)`,
    };
  }
  return { state: "mounted", mountPoint: dir };
}
