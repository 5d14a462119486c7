/**
 * The pure scheduler core: `step(state, event, now) -> { state, actions }`,
 * its placement plugins and the rules it decides by. Imported by the
 * scheduler shell and by `sim/`.
 *
 * @module
 */
export * from "./types.ts";
export * from "./placement.ts";
export * from "./eviction.ts";
export * from "./fairness.ts";
export { activeCurrent } from "./_accounting.ts";
export { extraWorkers } from "./autoscale.ts";
export { leaseTarget, unitId } from "./funcs.ts";
export {
  capacityView,
  REASONS,
  schedulability,
  type SchedulabilityOptions,
} from "./schedulable.ts";
export { chooseTier, expectedRestoreMs, resumeIsFaster, TIER_HOLDS } from "./standby.ts";
export { heartbeatFresh } from "./nodes.ts";
export { recoveredState } from "./pods.ts";
export * from "./snapshot.ts";
export { newCoreState, step, type StepResult } from "./step.ts";
