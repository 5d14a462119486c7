/**
 * InferX on Deno: one executable, the role chosen by `RUN_SERVICE`
 * (`All` by default). This file only selects the role.
 *
 * @module
 */
import { readEnv } from "./src/common/config.ts";
import { logger, setupLogging } from "./src/common/log.ts";

if (import.meta.main) {
  let env;
  try {
    env = readEnv();
  } catch (err) {
    console.error((err as Error).message);
    Deno.exit(2);
  }
  await setupLogging(env.logLevel);
  if (env.role !== "All") {
    console.error(
      `RUN_SERVICE=${env.role} is not available in this build: the distributed roles need the gRPC transport, which is not built yet. Use RUN_SERVICE=All.`,
    );
    Deno.exit(2);
  }
  const { start } = await import("./src/all/mod.ts");
  const handle = await start(env);
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
