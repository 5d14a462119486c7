/**
 * InferX on Deno: one executable, the role chosen by `RUN_SERVICE`
 * (`All` by default), or the command line with `ctl`. This file only
 * selects which: each role is a module of `src/roles/` with
 * `start(config) -> { stop() }`.
 *
 * @module
 */
import { dataDirProblem, readConfig } from "./src/common/config.ts";
import { logger, setupLogging } from "./src/common/log.ts";

// Literal specifiers, so that `deno compile` takes every role in.
const ROLES = {
  All: () => import("./src/roles/all.ts"),
  StateSvc: () => import("./src/roles/statesvc.ts"),
  Scheduler: () => import("./src/roles/scheduler.ts"),
  Gateway: () => import("./src/roles/gateway.ts"),
  NodeAgent: () => import("./src/roles/nodeagent.ts"),
};

if (import.meta.main && Deno.args[0] === "ctl") {
  const { runCtl } = await import("./src/cli/mod.ts");
  Deno.exit(await runCtl(Deno.args.slice(1)));
} else if (import.meta.main) {
  let config;
  try {
    config = readConfig();
  } catch (err) {
    console.error((err as Error).message);
    Deno.exit(2);
  }
  const dataDir = dataDirProblem(config.dataDir);
  if (dataDir) {
    console.error(dataDir);
    Deno.exit(2);
  }
  await setupLogging(config.logLevel);
  const profiles = await startProfiles(config.cpuProfile, config.heapProfile);
  // Listened for before the role starts: a stop asked meanwhile waits for the start, then stops
  // what it started (the signal's default action would end the process unsaid, what it had
  // started left running).
  const started = (async () => await (await ROLES[config.role]()).start(config))();
  started.catch((err) => {
    logger().fatal("Cannot start {role}: {error}", {
      role: config.role,
      error: (err as Error).message,
    });
    Deno.exit(1);
  });
  let stoppingSince: number | undefined;
  const member = (config.gateway.group?.index ?? 0) > 0;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, async () => {
      if (stoppingSince !== undefined) {
        // One stop heard twice: a terminal's Ctrl-C reaches `deno task` and this process, and
        // `deno task` passes it on at once (so does a service manager that signals a whole
        // control group). Within a second of the first, a signal is that one again.
        if (performance.now() - stoppingSince < SAME_STOP_MS) return;
        // A gateway group's member hears its leader's SIGTERM after a Ctrl-C that reached the
        // whole group: it goes on draining (its leader kills it when the drain is over). A
        // second Ctrl-C (SIGINT) ends it at once, as it does the leader.
        if (member && sig === "SIGTERM") return;
        // Ctrl-C twice: what was left running is cleaned up by the next start.
        logger().warn(
          "A second signal ({sig}): stopping at once, without waiting for calls and workers",
          {
            sig,
          },
        );
        Deno.exit(sig === "SIGINT" ? 130 : 143);
      }
      stoppingSince = performance.now();
      const drains = config.role === "All" || config.role === "Gateway";
      logger().info("Stopping ({sig}){drain}; a second {sig} stops at once", {
        sig,
        drain: drains ? `: calls under way get ${config.gateway.drainS} s (GATEWAY_DRAIN_S)` : "",
      });
      // No GOAWAY from this process's gRPC servers: it can crash their clients' processes.
      (await import("./src/rpc/grpc.ts")).exitingProcess();
      // A start that does not end (an image being built, a store out of reach) is not waited
      // for past a service manager's patience: the next start cleans up what it left.
      const handle = await Promise.race([
        started,
        new Promise<undefined>((r) => setTimeout(() => r(undefined), START_WAIT_MS)),
      ]);
      if (!handle) {
        logger().warn("The start did not end within {s} s: stopping at once", {
          s: START_WAIT_MS / 1000,
        });
        Deno.exit(sig === "SIGINT" ? 130 : 143);
      }
      await handle.stop().catch((err) =>
        logger().error("Stop failed: {error}", { error: String(err) })
      );
      await profiles();
      Deno.exit(0);
    });
  }
}

/** A stop signal this soon (ms) after the first is the same stop, heard twice. */
const SAME_STOP_MS = 1000;
/** How long (ms) a stop asked during the start waits for it to end, to stop what it started. */
const START_WAIT_MS = 10_000;

/**
 * Starts the profiles asked for (`INFERX_CPU_PROFILE`, `INFERX_HEAP_PROFILE`);
 * what it returns writes them. One that cannot start is logged and skipped.
 */
async function startProfiles(cpu?: string, heap?: string): Promise<() => Promise<void>> {
  const stops: [string, () => Promise<void>][] = [];
  if (cpu || heap) {
    const { startCpuProfile, startHeapProfile } = await import("./src/common/profile.ts");
    for (const [file, start] of [[cpu, startCpuProfile], [heap, startHeapProfile]] as const) {
      if (!file) continue;
      try {
        stops.push([file, await start(file)]);
      } catch (err) {
        logger().error("Cannot start the profile {file}: {error}; running without", {
          file,
          error: String(err),
        });
      }
    }
  }
  return async () => {
    for (const [file, stop] of stops) {
      await stop().catch((err) =>
        logger().error("Cannot write the profile {file}: {error}", { file, error: String(err) })
      );
    }
  };
}
