/**
 * The `StateSvc` role: owns the metadata store. In `All` mode it runs on the
 * embedded store under the data directory.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import { openEmbeddedStore } from "../store/embedded.ts";
import type { MetaStore } from "../store/types.ts";
import { StateService } from "./service.ts";

export { SERVICE_VERSION, StateService } from "./service.ts";

/** Configuration of the state service role. */
export interface StateSvcConfig {
  /** Directory of the embedded store; in memory when absent. */
  dataDir?: string;
  /** A store to use instead of the embedded one. */
  store?: MetaStore;
}

/** A running state service. */
export interface StateSvcHandle {
  service: StateService;
  stop(): Promise<void>;
}

/** Starts the state service. */
export async function start(config: StateSvcConfig): Promise<StateSvcHandle> {
  const store = config.store ??
    await openEmbeddedStore({ dir: config.dataDir ? `${config.dataDir}/store` : undefined });
  logger("statesvc").info("State service on {where}", {
    where: config.store ? "the given store" : config.dataDir ? `${config.dataDir}/store` : "memory",
  });
  return { service: new StateService(store), stop: () => store.close() };
}
