/**
 * The `StateSvc` role: owns the metadata store. Without etcd it runs on the
 * embedded SQLite store in `{dataDir}/store/meta.db`.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import { openSqliteStore } from "../store/sqlite.ts";
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
  const path = config.dataDir ? `${config.dataDir}/store/meta.db` : ":memory:";
  const store = config.store ?? await openSqliteStore(path);
  logger("statesvc").info("State service on {where}", {
    where: config.store ? "the given store" : path,
  });
  return { service: new StateService(store), stop: () => store.close() };
}
