/**
 * The node agent's reconcile decision, apart from its I/O: given a pod's
 * record (what the scheduler wants, what was last reported) and what this
 * agent runs for it, what to do next. Level-triggered: the same record and
 * the same local state always give the same answer.
 *
 * @module
 */
import type { PodInfo } from "../model/cluster.ts";

/** What the agent runs for one pod. */
export interface LocalPod {
  phase: "starting" | "running" | "parked" | "stopping";
  /** Its park is under way (phase `parked` from the decision on). */
  parking?: boolean;
  /** Its resume is under way (phase `running` from the decision on). */
  resuming?: boolean;
  /** Where the worker answers, once it does. */
  endpoint?: string;
}

/** What {@linkcode reconcileAction} asks of the agent. */
export type ReconcileAction =
  /** Stop the worker, then delete the record. */
  | "stop"
  /** Delete the record: there is no worker. */
  | "delete"
  /** Park the running worker in a standby tier. */
  | "park"
  /** Bring the parked worker back. */
  | "resume"
  /** Start a worker. */
  | "start"
  /** Report Ready again: the first report was lost. */
  | "reportReady"
  /** Report Standby: the worker is parked, its record does not say so (a report lost). */
  | "reportStandby"
  /** Report the pod Failed: the record says it runs, but no worker is here (agent restart). */
  | "reportLost"
  /** Nothing: the worker is where it should be, or on its way. */
  | "none";

/** The next step for a pod of this node. */
export function reconcileAction(
  pod: Pick<PodInfo, "desired" | "state" | "standbyTier">,
  local: LocalPod | undefined,
): ReconcileAction {
  if (pod.desired === "Terminated") return local ? "stop" : "delete";
  // Running, parking or parked, by its record, with nothing here (an agent restart ends its
  // workers and their parked images): lost, or the scheduler would wait for it forever.
  const lost = !local && pod.state !== "Creating" && pod.state !== "Failed" &&
    pod.state !== "Terminated";
  if (pod.desired === "Standby") {
    if (local?.phase === "running") return "park";
    // Parked (an agent restart adopted it so, or its report went with the agent before).
    if (local?.phase === "parked" && !local.parking && pod.state !== "Standby") {
      return "reportStandby";
    }
    return lost ? "reportLost" : "none";
  }
  if (local?.phase === "parked") return "resume";
  // The worker runs here, its record not saying so: its Ready was lost; or the record says parked
  // (adopted running at a restart), or names the tier a park was asked for (asked to run before
  // this agent parked it). The scheduler waits for a Ready without the tier. (Not while a resume
  // is under way: that one reports when done.)
  const parkedOnRecord = pod.state === "Standby" ||
    (pod.state === "Ready" && pod.standbyTier !== undefined);
  if (
    local?.phase === "running" && local.endpoint && !local.resuming &&
    (pod.state === "Creating" || parkedOnRecord)
  ) {
    return "reportReady";
  }
  if (local) return "none";
  if (pod.state === "Creating") return "start";
  return lost ? "reportLost" : "none";
}
