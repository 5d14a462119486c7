/**
 * `GATEWAY_WORKERS=N`: N gateway processes serve one port. This process is
 * the first; it starts the others as `RUN_SERVICE=Gateway` with the same
 * command line, gives each its place in the group (`INFERX_GATEWAY_GROUP`),
 * restarts one that exits, and stops them with itself. Each member is a
 * whole gateway with leases of its own (a function at `max_replica` shares
 * its workers between gateways); a member whose first process dies — even
 * by SIGKILL — sees its standard input close and stops.
 *
 * @module
 */
import { freePort } from "../common/net.ts";
import { type Backoff, cappedBackoff } from "../common/retry.ts";
import { logger } from "../common/log.ts";
import { REPO_ROOT } from "../common/config.ts";
import { newId } from "../common/ids.ts";
import type { GatewayGroup } from "../gateway/group.ts";

const log = logger("gateway", "group");

/**
 * How many processes `RUN_SERVICE=Gateway` runs: `GATEWAY_WORKERS`, else the
 * core count, or one on a port the system picks (`GATEWAY_PORT=0`), which no
 * other process could share.
 */
export function gatewayProcesses(workers: number | undefined, port: number): number {
  return workers ?? (port === 0 ? 1 : navigator.hardwareConcurrency);
}

/** The group of `workers` gateways this process leads, or undefined for one. */
export function planGroup(workers: number): GatewayGroup | undefined {
  if (workers <= 1) return undefined;
  return {
    index: 0,
    ports: Array.from({ length: workers }, () => freePort()),
    token: newId("group", 32),
  };
}

/**
 * The first and the longest pause before a member that exited is started
 * again, and how long one must have run to have got past its start (a start
 * takes a second or two).
 */
export const RESTART = { firstMs: 1000, maxMs: 60_000, startedMs: 10_000 } as const;

/**
 * The pause before starting again a member that ran `ranMs` and exited,
 * after `last` (none yet: undefined): a member that got past its start is
 * started again after the first pause, however often it has been; one that
 * keeps failing at start waits twice as long each time, up to the longest.
 */
export function restartDelay(last: Backoff | undefined, ranMs: number): Backoff {
  if (!last || ranMs >= RESTART.startedMs) return cappedBackoff(RESTART.firstMs, RESTART.maxMs);
  return last.next();
}

/**
 * Waits for the members' stop and the first process's own, run at once, to
 * end both (the first failing does not cut the other's drain short: what
 * they use, the inner state and scheduler services, is stopped after);
 * rethrows the first failure.
 */
export async function bothStopped(
  members: Promise<void> | undefined,
  own: Promise<void>,
): Promise<void> {
  const [a, b] = await Promise.allSettled([members, own]);
  for (const r of [a, b]) if (r.status === "rejected") throw r.reason;
}

/** The other members, running. */
export interface Members {
  stop(): Promise<void>;
}

/** This process's own command line, so members run exactly as it does. */
function commandLine(): string[] {
  try {
    const args = Deno.readTextFileSync("/proc/self/cmdline").split("\0").filter(Boolean);
    if (args.length) return args;
  } catch {
    // not Linux: fall back to running main.ts with this runtime
  }
  return [Deno.execPath(), "run", "-A", `${REPO_ROOT}/main.ts`];
}

/**
 * Starts members 1..N-1 of `group` with `env` (on top of this process's
 * environment). At their stop each has `drainMs` (its calls' drain) and 5 s
 * more before it is killed.
 */
export function startMembers(
  group: GatewayGroup,
  env: Record<string, string>,
  drainMs: number,
): Members {
  const [cmd, ...args] = commandLine();
  const ports = group.ports.join(",");
  let stopping = false;
  const running = new Map<number, Deno.ChildProcess>();
  const delays = new Map<number, Backoff>();
  const spawn = (index: number) => {
    const started = performance.now();
    const child = new Deno.Command(cmd, {
      args,
      env: {
        ...env,
        RUN_SERVICE: "Gateway",
        GATEWAY_WORKERS: "1",
        INFERX_GATEWAY_GROUP: `${index}:${ports}`,
        // In the environment, not on the command line, where any local user could read it.
        INFERX_GATEWAY_GROUP_TOKEN: group.token,
      },
      stdin: "piped", // closed when this process ends: the member stops then
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    running.set(index, child);
    child.status.then((s) => {
      running.delete(index);
      if (stopping) return;
      const delay = restartDelay(delays.get(index), performance.now() - started);
      delays.set(index, delay);
      log.warn("Gateway member {index} exited ({code}); starting it again in {s} s", {
        index,
        code: s.code,
        s: (delay.duration / 1000).toFixed(1),
      });
      setTimeout(() => !stopping && spawn(index), delay.duration);
    });
  };
  for (let i = 1; i < group.ports.length; i++) spawn(i);
  log.info("Gateway group of {n} processes on one port", { n: group.ports.length });
  return {
    async stop() {
      stopping = true;
      const children = [...running.values()];
      for (const c of children) {
        try {
          c.kill("SIGTERM");
        } catch {
          // already gone
        }
      }
      const timer = setTimeout(() => {
        for (const c of children) {
          try {
            c.kill("SIGKILL");
          } catch { /* gone */ }
        }
      }, drainMs + 5000);
      await Promise.all(children.map((c) => c.status));
      clearTimeout(timer);
    },
  };
}

/** For a member: runs `stop` when the first process goes away (its standard input closes). */
export function stopWithLeader(stop: () => Promise<void>): void {
  (async () => {
    const buf = new Uint8Array(64);
    try {
      while ((await Deno.stdin.read(buf)) !== null) { /* nothing is sent */ }
    } catch {
      // closed
    }
    log.warn("The first gateway of the group is gone: stopping");
    await stop().catch(() => {});
    Deno.exit(0);
  })();
}
