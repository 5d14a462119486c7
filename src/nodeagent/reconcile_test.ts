import assert from "node:assert/strict";
import type { PodInfo } from "../model/cluster.ts";
import { type LocalPod, type ReconcileAction, reconcileAction } from "./reconcile.ts";

const running: LocalPod = { phase: "running", endpoint: "127.0.0.1:9" };
const starting: LocalPod = { phase: "starting" };
const parked: LocalPod = { phase: "parked", endpoint: "127.0.0.1:9" };
const stopping: LocalPod = { phase: "stopping" };

Deno.test("reconcileAction() decides each pod's next step from its record and the local worker", () => {
  // [case, desired, recorded state, local worker, action]
  const cases: [
    string,
    PodInfo["desired"],
    PodInfo["state"],
    LocalPod | undefined,
    ReconcileAction,
  ][] = [
    ["a new pod is started", "Running", "Creating", undefined, "start"],
    ["a starting pod is left to start", "Running", "Creating", starting, "none"],
    ["a lost Ready report is made again", "Running", "Creating", running, "reportReady"],
    [
      "a running worker without an endpoint waits",
      "Running",
      "Creating",
      { phase: "running" },
      "none",
    ],
    ["a ready pod that runs here is left alone", "Running", "Ready", running, "none"],
    [
      "a ready pod without its worker is reported lost",
      "Running",
      "Ready",
      undefined,
      "reportLost",
    ],
    [
      "a resuming pod without its worker is reported lost",
      "Running",
      "Resuming",
      undefined,
      "reportLost",
    ],
    [
      "a failed pod without a worker waits for the scheduler",
      "Running",
      "Failed",
      undefined,
      "none",
    ],
    ["a pod to park that runs is parked", "Standby", "Ready", running, "park"],
    ["a pod to park that is parked is left alone", "Standby", "Standby", parked, "none"],
    ["a pod to park still starting waits", "Standby", "Creating", starting, "none"],
    [
      "a pod to park without its worker is reported lost",
      "Standby",
      "Ready",
      undefined,
      "reportLost",
    ],
    [
      "a parked pod whose worker is gone (an agent restart) is reported lost",
      "Standby",
      "Standby",
      undefined,
      "reportLost",
    ],
    [
      "a parked pod wanted running whose worker is gone is reported lost",
      "Running",
      "Standby",
      undefined,
      "reportLost",
    ],
    ["a pod to park that failed waits for the scheduler", "Standby", "Failed", undefined, "none"],
    ["a parked pod wanted running is resumed", "Running", "Standby", parked, "resume"],
    ["a pod to end that runs is stopped", "Terminated", "Ready", running, "stop"],
    ["a pod to end that is stopping is stopped (once)", "Terminated", "Ready", stopping, "stop"],
    ["a pod to end without a worker loses its record", "Terminated", "Failed", undefined, "delete"],
  ];
  for (const [what, desired, state, local, want] of cases) {
    assert.equal(reconcileAction({ desired, state }, local), want, what);
  }
});

Deno.test("reconcileAction() reports Standby again for a parked worker whose record missed it", () => {
  const rec = { desired: "Standby", state: "Ready" } as const;
  assert.equal(reconcileAction(rec, { phase: "parked" }), "reportStandby");
  assert.equal(reconcileAction(rec, { phase: "parked", parking: true }), "none", "on its way");
  assert.equal(reconcileAction({ ...rec, state: "Standby" }, { phase: "parked" }), "none");
});

Deno.test("reconcileAction() reports Ready again, the tier cleared, for a running worker whose record names a park's tier", () => {
  // Asked to park, then to run, before this agent heard of the park (one record, read whole):
  // the scheduler waits for a Ready without the tier.
  const rec = { desired: "Running", state: "Ready", standbyTier: "file" } as const;
  assert.equal(reconcileAction(rec, running), "reportReady");
  assert.equal(reconcileAction({ desired: "Running", state: "Ready" }, running), "none");
  assert.equal(reconcileAction(rec, { ...running, resuming: true }), "none", "its resume reports");
  // Recorded parked, running here (adopted running after a restart): Ready, not waited on.
  assert.equal(reconcileAction({ desired: "Running", state: "Standby" }, running), "reportReady");
});
