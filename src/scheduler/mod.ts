/**
 * The `Scheduler` role: the shell around the pure core.
 *
 * @module
 */
import type { MetaClient } from "../rpc/types.ts";
import { type SchedulerOptions, SchedulerService } from "./service.ts";

export { SchedulerService } from "./service.ts";

/** Configuration of the scheduler role. */
export interface SchedulerConfig extends SchedulerOptions {
  meta: MetaClient;
}

/** A running scheduler. */
export interface SchedulerHandle {
  service: SchedulerService;
  stop(): Promise<void>;
}

/** Starts the scheduler: loads the cluster from the store and follows it. */
export async function start(config: SchedulerConfig): Promise<SchedulerHandle> {
  const service = new SchedulerService(config.meta, config);
  await service.start();
  return { service, stop: () => Promise.resolve(service.stop()) };
}
