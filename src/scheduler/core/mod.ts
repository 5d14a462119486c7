/**
 * The pure scheduler core: `step(state, event, now) -> { state, actions }`
 * and its placement plugins. Imported by the scheduler shell and by `sim/`.
 *
 * @module
 */
export * from "./types.ts";
export * from "./placement.ts";
export * from "./snapshot.ts";
export { newCoreState, step, type StepResult } from "./step.ts";
