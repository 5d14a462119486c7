/**
 * InferX on Deno: one executable, the role chosen by `RUN_SERVICE`
 * (`All` by default), or the command line with `ctl`. This file only
 * selects which.
 *
 * @module
 */
import { readEnv } from "./src/common/config.ts";
import { logger, setupLogging } from "./src/common/log.ts";

if (import.meta.main && Deno.args[0] === "ctl") {
  const { runCtl } = await import("./src/cli/mod.ts");
  Deno.exit(await runCtl(Deno.args.slice(1)));
} else if (import.meta.main) {
  let env;
  try {
    env = readEnv();
  } catch (err) {
    console.error((err as Error).message);
    Deno.exit(2);
  }
  await setupLogging(env.logLevel);
  const roles = await import("./src/all/roles.ts");
  const starters = {
    All: async () => (await import("./src/all/mod.ts")).start(env),
    StateSvc: () => roles.startStateSvc(env),
    Scheduler: () => roles.startScheduler(env),
    Gateway: () => roles.startGateway(env),
    NodeAgent: () => roles.startNodeAgent(env),
  };
  let handle: { stop(): Promise<void> };
  try {
    handle = await starters[env.role]();
  } catch (err) {
    logger().fatal("Cannot start {role}: {error}", {
      role: env.role,
      error: (err as Error).message,
    });
    Deno.exit(1);
  }
  let stopping = false;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, async () => {
      if (stopping) return;
      stopping = true;
      await handle.stop().catch((err) =>
        logger().error("Stop failed: {error}", { error: String(err) })
      );
      Deno.exit(0);
    });
  }
}
