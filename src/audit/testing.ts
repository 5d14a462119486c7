/**
 * Rows for audit tests.
 *
 * @module
 */
import type { RequestRow } from "./types.ts";

/** A request row numbered `i` (its path is `/r{i}`, its time `time`). */
export function sampleRequest(i: number, time = i): RequestRow {
  return {
    time,
    gateway: "g",
    principal: "anonymous",
    tenant: "t",
    namespace: "n",
    func: "f",
    method: "POST",
    path: `/r${i}`,
    status: 200,
    latencyMs: 1,
    coldStart: false,
    resumed: false,
  };
}
