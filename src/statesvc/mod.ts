/**
 * The `StateSvc` role: owns the metadata store. Without etcd it runs on the
 * embedded SQLite store in `{dataDir}/store/meta.db`.
 *
 * @module
 */
import { logger } from "../common/log.ts";
import { typePrefix } from "../model/keys.ts";
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

/**
 * The keys whose superseded changes the embedded store keeps none of: calls' records and
 * bodies, so that what a call held goes with it.
 */
export const PRIVATE_PREFIXES: readonly string[] = [typePrefix("call"), typePrefix("callbody")];

/** A running state service. */
export interface StateSvcHandle {
  service: StateService;
  stop(): Promise<void>;
}

/** Starts the state service. */
export async function start(config: StateSvcConfig): Promise<StateSvcHandle> {
  const path = config.dataDir ? `${config.dataDir}/store/meta.db` : ":memory:";
  const store = config.store ?? await openSqliteStore(path, { privatePrefixes: PRIVATE_PREFIXES });
  logger("statesvc").info("State service on {where}", {
    where: config.store ? "the given store" : path,
  });
  return { service: new StateService(store), stop: () => store.close() };
}
