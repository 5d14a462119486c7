/**
 * The node agent: registers its node and heartbeats; follows the pods the
 * scheduler placed on it (desired state in the store) and reconciles them
 * with its runtime; writes their observed state back. Level-triggered: the
 * store says what should run, the agent makes it so and reports.
 *
 * @module
 */
import { InferxError, NotFoundError, ValidationError } from "../common/errors.ts";
import { updateWithRetry } from "../common/retry.ts";
import { logger } from "../common/log.ts";
import { splitEndpoint } from "../common/net.ts";
import { decodePod, type NodeInfo, type PodInfo } from "../model/cluster.ts";
import { SYSTEM } from "../model/keys.ts";
import { type Informer, startInformer } from "../rpc/informer.ts";
import type { MetaClient, MetaRecord, NodeAgentClient } from "../rpc/types.ts";
import { type LocalPod as LocalPhase, reconcileAction } from "./reconcile.ts";
import { httpCall, type HttpCallOptions } from "./probe.ts";
import { type PodRuntime, PodSetupFailed, type RunningPod } from "./runtime.ts";
import { BUSY, type SnapshotManager } from "./snapshots.ts";
import { nextTurn } from "../common/clock.ts";

const log = logger("nodeagent");

/** The most log lines one read returns (the gateway's `lines` allows as many). */
const MAX_LOG_LINES = 10_000;

/** Options for {@linkcode NodeAgent}. */
export interface NodeAgentOptions {
  /** Heartbeat period (ms). @default 2000 */
  heartbeatMs?: number;
  /** Grace before SIGKILL when stopping a pod (ms). @default 5000 */
  stopGraceMs?: number;
  /** This node's snapshots, when its runtime takes and restores them. */
  snapshots?: SnapshotManager;
}

/** How a pod came up. */
interface BroughtUp {
  running: RunningPod;
  startedFrom: "fresh" | "snapshot";
  /** What happened to snapshots on the way, when anything did. */
  note?: string;
  /** Time spent warming and snapshotting it (ms). */
  snapshotMs?: number;
}

interface LocalPod extends LocalPhase {
  id: string;
  done?: Promise<void>;
  /** Its record goes once it is stopped (asked by one of the stops under way). */
  deleteRecord?: boolean;
}

/** One node's agent. Implements {@linkcode NodeAgentClient} in-process. */
export class NodeAgent implements NodeAgentClient {
  #meta: MetaClient;
  #runtime: PodRuntime;
  #node: NodeInfo;
  #options: NodeAgentOptions;
  #local = new Map<string, LocalPod>();
  #podRefs = new Map<string, { tenant: string; namespace: string }>();
  #informer?: Informer;
  #heartbeat?: ReturnType<typeof setInterval>;
  #stopped = false;

  constructor(
    meta: MetaClient,
    runtime: PodRuntime,
    node: NodeInfo,
    options: NodeAgentOptions = {},
  ) {
    this.#meta = meta;
    this.#runtime = runtime;
    // A node offers the standby tiers its runtime implements, nothing else.
    this.#node = { ...node, standbyTiers: [...runtime.standbyTiers] };
    this.#options = options;
  }

  /** The node's name. */
  get name(): string {
    return this.#node.name;
  }

  /** Records where this agent's `NodeAgentService` listens, in the node object at once. */
  async setAgentAddr(addr: string): Promise<void> {
    this.#node = { ...this.#node, agentAddr: addr };
    await this.#writeNode(true);
  }

  /** Writes the node record now (after its snapshots changed). */
  refreshNode(): void {
    if (this.#stopped) return;
    this.#writeNode(true).catch((err) =>
      log.warn("Cannot update node {node}: {error}", { node: this.name, error: String(err) })
    );
  }

  /** Registers the node, starts heartbeats and follows pods. */
  async start(): Promise<void> {
    const { adopted, removed } = await this.#runtime.recover();
    if (adopted.length || removed) {
      log.warn(
        "Recovered after a restart: {adopted} pod(s) adopted, {removed} left-over worker(s) removed",
        {
          adopted: adopted.length,
          removed,
        },
      );
    }
    for (const a of adopted) {
      this.#local.set(a.podId, {
        id: a.podId,
        phase: a.paused ? "parked" : "running",
        endpoint: a.endpoint,
      });
    }
    await this.#options.snapshots?.start();
    await this.#writeNode(true);
    this.#heartbeat = setInterval(() => {
      this.#writeNode(true).then(
        () =>
          this.#resyncPods().then(() => this.#thawPaused()).then(() => this.#endParkedGone())
            .then(() => this.#runtime.sweep?.()),
        (err) =>
          log.warn("Cannot heartbeat node {node}: {error}", {
            node: this.name,
            error: String(err),
          }),
      );
    }, this.#options.heartbeatMs ?? 2000);
    /** Pods the first list named, while it is read (the orphans are found from it). */
    let listed: Set<string> | undefined = new Set<string>();
    this.#informer = await startInformer(this.#meta, "pod", {
      upsert: (rec) => {
        listed?.add(rec.name);
        const pod = this.#decode(rec);
        if (pod) this.#reconcile(pod);
      },
      remove: (ref) => {
        this.#podRefs.delete(ref.name);
        if (this.#local.has(ref.name)) this.#stopPod(ref.name, false);
      },
    });
    // Adopted workers the store no longer knows are orphans. What came in this first list is
    // all that is needed of it: it would otherwise grow with every pod ever seen.
    const known = listed;
    listed = undefined;
    for (const a of adopted) {
      if (known.has(a.podId)) continue;
      if (a.legacy) {
        // Marked as an earlier version marked them: another installation's it may be.
        log.warn("Leaving worker {pod} alone: marked by an earlier version, unknown here", {
          pod: a.podId,
        });
        this.#local.delete(a.podId);
        this.#runtime.forget?.(a.podId);
        continue;
      }
      log.warn("Removing orphan worker {pod}", { pod: a.podId });
      this.#stopPod(a.podId, false);
    }
    log.info("Node {node} ready with runtime {runtime}, {gpus} GPU(s)", {
      node: this.name,
      runtime: this.#runtime.name,
      gpus: this.#node.gpus.length,
    });
  }

  /** Stops every pod, marks the node not ready and stops following. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    this.#informer?.stop();
    this.#options.snapshots?.stop();
    await Promise.all([...this.#local.keys()].map((id) => this.#stopPod(id, true)));
    await this.#writeNode(false).catch(() => {});
  }

  readPodLog(podId: string, lines = 50): Promise<string> {
    if (!Number.isSafeInteger(lines) || lines < 1 || lines > MAX_LOG_LINES) {
      return Promise.reject(
        new ValidationError(
          `Invalid lines ${lines}: a whole number from 1 to ${MAX_LOG_LINES}`,
          "lines",
        ),
      );
    }
    if (!this.#local.has(podId)) {
      return Promise.reject(new NotFoundError(`Pod ${podId} does not run on node ${this.name}`));
    }
    return this.#runtime.logs(podId, lines);
  }

  /** Registers or heartbeats the node; rejects when the write did not happen. */
  async #writeNode(ready: boolean): Promise<void> {
    const ref = { type: "node" as const, tenant: SYSTEM, namespace: SYSTEM, name: this.name };
    const snaps = this.#node.snapshots;
    await updateWithRetry(this.#meta, ref, () => ({
      ...this.#node,
      ready,
      heartbeat: Date.now(),
      snapshots: snaps && this.#options.snapshots
        ? { ...snaps, ...this.#options.snapshots.summary() }
        : snaps,
    }));
  }

  #reconcile(pod: PodInfo): void {
    if (pod.node !== this.name || this.#stopped) return;
    this.#podRefs.set(pod.id, { tenant: pod.tenant, namespace: pod.namespace });
    const local = this.#local.get(pod.id);
    switch (reconcileAction(pod, local)) {
      case "stop":
        this.#stopPod(pod.id, true);
        break;
      case "delete":
        this.#deletePod(pod.id);
        break;
      case "park":
        this.#park(pod, local!);
        break;
      case "resume":
        this.#resume(pod, local!);
        break;
      case "start":
        this.#startPod(pod);
        break;
      case "reportReady":
        this.#reportReadyAgain(pod.id, local!);
        break;
      case "reportStandby":
        this.#setStatus(pod.id, {
          state: "Standby",
          standbyTier: pod.standbyTier ?? this.#node.standbyTiers[0],
        }, this.#stillIn(pod.id, local!, "parked"));
        break;
      case "reportLost":
        // The record says running but this agent has no such process: it was
        // lost (agent restart). Report it so the scheduler replaces it.
        this.#setStatus(pod.id, { state: "Failed", error: "Process lost: node agent restarted" });
        break;
    }
  }

  /**
   * Reports a worker that runs here Ready, its record not saying so (its
   * report lost while the state service restarted, or the record says
   * parked): untimed, no restore time to learn. Not once it is asked to park
   * again, here or in the record it writes over (a Ready without the tier on
   * a pod to park would be taken for running after a scheduler's restart,
   * and its park would lose the tier asked for).
   */
  #reportReadyAgain(podId: string, local: LocalPod): void {
    const running = this.#stillIn(podId, local, "running");
    this.#setStatus(
      podId,
      {
        state: "Ready",
        standbyTier: undefined,
        endpoint: local.endpoint,
        readyAt: Date.now(),
        resumeMs: undefined,
      },
      (p) => running() && p.desired === "Running",
    );
  }

  #park(pod: PodInfo, local: LocalPod): void {
    const tier = pod.standbyTier && this.#node.standbyTiers.includes(pod.standbyTier)
      ? pod.standbyTier
      : this.#node.standbyTiers[0];
    local.phase = "parked";
    local.parking = true;
    this.#runtime.park(pod.id, tier).then(
      () => {
        local.parking = false;
        return this.#setStatus(
          pod.id,
          { state: "Standby", standbyTier: tier },
          this.#stillIn(pod.id, local, "parked"),
        );
      },
      (err: Error) => {
        local.parking = false;
        log.warn("Cannot park pod {pod}: {error}", { pod: pod.id, error: err.message });
        // Stopped meanwhile, or resumed (its resume ran after the park and says how it went).
        if (local.phase !== "parked") return;
        local.phase = "running";
        this.#failStopped(pod.id, `Cannot park: ${err.message}`);
      },
    );
  }

  #resume(pod: PodInfo, local: LocalPod): void {
    local.phase = "running";
    local.resuming = true;
    const t0 = performance.now();
    this.#runtime.resume(pod.id).finally(() => local.resuming = false).then(
      () => {
        const ms = performance.now() - t0;
        log.info("Pod {pod} resumed in {ms} ms", { pod: pod.id, ms: ms.toFixed(1) });
        return this.#setStatus(
          pod.id,
          {
            state: "Ready",
            standbyTier: undefined,
            endpoint: local.endpoint,
            resumeMs: Math.round(ms * 10) / 10,
          },
          this.#stillIn(pod.id, local, "running"),
        );
      },
      (err: Error) => {
        if (this.#local.get(pod.id) !== local || local.phase !== "running") return;
        log.warn("Cannot resume pod {pod}: {error}", { pod: pod.id, error: err.message });
        this.#failStopped(pod.id, `Cannot resume: ${err.message}`);
      },
    );
  }

  /**
   * Reports a pod whose park or resume failed as Failed once its worker is
   * stopped. The worker may run on after such a failure, holding what its
   * pod was charged (a GPU slice whose memory a refused checkpoint left in
   * place, or one a restore put back before its unlock failed), and the
   * scheduler gives that to other pods as soon as it hears of the failure.
   */
  #failStopped(podId: string, error: string): void {
    const entry = this.#local.get(podId);
    this.#stopPod(podId, false).catch((err: Error) =>
      log.warn("Cannot stop pod {pod}: {error}", { pod: podId, error: err.message })
    ).then(() => {
      // Stopped for good meanwhile (the agent's stop, a termination): its record is gone.
      if (entry?.deleteRecord || this.#stopped) return;
      return this.#setStatus(podId, { state: "Failed", error });
    });
  }

  #startPod(pod: PodInfo): void {
    const entry: LocalPod = { id: pod.id, phase: "starting" };
    this.#local.set(pod.id, entry);
    const t0 = performance.now();
    entry.done = this.#bringUp(pod, entry).then(async (up) => {
      const { running, startedFrom } = up;
      if (entry.phase === "stopping") return;
      // It exited while it was being brought up (during its sample query or its dump):
      // reported Failed, with its last output, by podExited (which may come a moment after
      // its exit, once the runtime cleaned up); not Ready.
      if (this.#local.get(pod.id) !== entry || await ended(running)) return;
      entry.phase = "running";
      entry.endpoint = running.endpoint;
      log.info("Pod {pod} of {func} ready at {endpoint} in {ms} ms ({from})", {
        pod: pod.id,
        func: pod.func,
        endpoint: running.endpoint,
        ms: Math.round(performance.now() - t0),
        from: startedFrom === "snapshot" ? "restored from its snapshot" : "fresh start",
      });
      await this.#setStatus(pod.id, {
        state: "Ready",
        endpoint: running.endpoint,
        readyAt: Date.now(),
        startedFrom,
        note: up.note,
        snapshotMs: up.snapshotMs,
      }, this.#stillIn(pod.id, entry, "running"));
    }, async (err: Error) => {
      if (entry.phase === "stopping") return;
      this.#local.delete(pod.id);
      log.warn("Pod {pod} of {func} failed to start: {error}", {
        pod: pod.id,
        func: pod.func,
        error: err.message,
      });
      // The node's own means failing (its engine out of reach) is no crash loop of the worker's.
      const unavailable = err instanceof InferxError && err.code === "unavailable";
      await this.#setStatus(pod.id, {
        state: "Failed",
        error: err.message,
        ...(unavailable ? { failCode: "unavailable" as const } : {}),
      });
    });
  }

  /**
   * Restores the pod from this node's snapshot when the scheduler asked for
   * it and one is here, else starts it fresh; a fresh pod of a version
   * without a snapshot here answers its sample query and is snapshotted
   * before it is reported ready. A snapshot that fails never fails the pod:
   * it starts fresh, with a note saying why.
   */
  async #bringUp(pod: PodInfo, entry: LocalPod): Promise<BroughtUp> {
    const spec = {
      podId: pod.id,
      func: `${pod.tenant}/${pod.namespace}/${pod.func}`,
      funcVersion: pod.funcVersion,
      template: pod.template,
      cpuMillis: pod.cpuMillis,
      memMB: pod.memMB,
      gpus: pod.gpus,
    };
    const snaps = this.#options.snapshots;
    const notes: string[] = [];
    if (snaps && this.#runtime.restore && pod.fromSnapshot) {
      const snap = snaps.hold(pod);
      if (snap) {
        try {
          const running = await this.#runtime.restore(spec, snap.dir);
          await this.#restoreHook(pod, running);
          snaps.used(snap);
          return { running, startedFrom: "snapshot" };
        } catch (err) {
          // Stopped (or forgotten) meanwhile: the restore broke off for that, not for its image
          // (kept), and nothing is started in its place.
          if (entry.phase !== "starting" || this.#local.get(pod.id) !== entry) throw err;
          const why = (err as Error).message;
          log.warn("Pod {pod}: snapshot {snapshot} failed, starting fresh: {error}", {
            pod: pod.id,
            snapshot: snap.ref.name,
            error: why,
          });
          notes.push(`Snapshot ${snap.ref.name} could not be restored, started fresh: ${why}`);
          // An image that fails to restore goes; one that does not fit this pod stays, as does
          // one whose pod the node could not set up (no network left a moment); one whose
          // copies fail their restore hook goes, and its version is not snapshotted again.
          if (err instanceof RestoreHookFailed) await snaps.refuse(snap, pod, why);
          else if (
            !(err instanceof PodSetupFailed) &&
            !(err instanceof InferxError && err.code === "unsupported")
          ) await snaps.discard(snap, why);
        } finally {
          snaps.release(snap);
        }
      } else {
        notes.push(`No snapshot of v${pod.funcVersion} on node ${this.name}; started fresh`);
      }
    }
    const running = await this.#runtime.start(spec);
    let snapshotMs: number | undefined;
    const refusal = this.#runtime.snapshotRefusal?.(pod);
    if (snaps && refusal && snaps.wants(pod)) notes.push(`No snapshot taken: ${refusal}`);
    if (
      snaps && !refusal && this.#runtime.snapshot && snaps.wants(pod) && entry.phase === "starting"
    ) {
      if (snaps.dumping()) notes.push(BUSY);
      else {
        const t0 = performance.now();
        const warm = await this.#sampleQuery(pod, running.endpoint);
        const note = warm ??
          await snaps.take(pod, { alive: () => entry.phase === "starting" });
        if (note) notes.push(note);
        snapshotMs = Math.round(performance.now() - t0);
      }
    }
    return { running, startedFrom: "fresh", note: notes.join("; ") || undefined, snapshotMs };
  }

  /**
   * Tells a copy restored from a snapshot that it is one (`endpoint.restore_hook`), before it
   * serves: it came back with the snapshotted process's memory, its random generators' state
   * included. A copy whose hook does not answer 2xx is stopped, and its restore failed.
   */
  async #restoreHook(pod: PodInfo, running: RunningPod): Promise<void> {
    const path = pod.template.restoreHook;
    if (!path) return;
    let why: string | undefined;
    try {
      const res = await callWorker(running.endpoint, path, {
        method: "POST",
        timeoutMs: pod.template.startupTimeoutS * 1000,
      });
      if (res.status < 200 || res.status >= 300) {
        why = `its restore hook ${path} answered ${res.status}`;
      }
    } catch (err) {
      why = `its restore hook ${path} failed (${(err as Error).message})`;
    }
    if (why === undefined) return;
    await this.#runtime.stop(pod.id, 1000).catch(() => {});
    throw new RestoreHookFailed(`Restored pod ${pod.id}: ${why}`);
  }

  /** Sends the function's sample query once (warming the worker); a note when it failed. */
  async #sampleQuery(pod: PodInfo, endpoint: string): Promise<string | undefined> {
    const q = pod.template.sampleQuery;
    if (!q) return undefined;
    try {
      const res = await callWorker(endpoint, q.path, {
        method: q.body === undefined ? "GET" : "POST",
        json: q.body,
        timeoutMs: pod.template.startupTimeoutS * 1000,
      });
      if (res.status >= 200 && res.status < 300) return undefined;
      return `No snapshot taken: the sample query ${q.path} answered ${res.status}`;
    } catch (err) {
      return `No snapshot taken: the sample query ${q.path} failed (${(err as Error).message})`;
    }
  }

  /**
   * Resumes workers paused from outside (`docker pause` by an operator)
   * while their pods should serve: each call to one would otherwise wait its
   * `answer_timeout`, the pod Ready all along. Looked at each heartbeat.
   */
  async #thawPaused(): Promise<void> {
    if (!this.#runtime.isPaused) return;
    for (const [id, local] of [...this.#local]) {
      if (this.#stopped) return;
      if (local.phase !== "running" || local.resuming) continue;
      const paused = await this.#runtime.isPaused(id).catch(() => false);
      // Parked, resumed or gone meanwhile: this agent's own doing.
      if (!paused || this.#local.get(id) !== local || local.phase !== "running") continue;
      if (local.resuming) continue;
      log.warn("Pod {pod} was paused from outside while it serves; resuming it", { pod: id });
      await this.#runtime.resume(id).catch((err: Error) =>
        log.warn("Cannot resume pod {pod}: {error}", { pod: id, error: err.message })
      );
    }
  }

  /**
   * Ends the parked pods whose worker ended meanwhile (killed from outside):
   * listed as parked, each would fail the resume of the next call to it.
   * Looked at each heartbeat.
   */
  async #endParkedGone(): Promise<void> {
    if (!this.#runtime.endedWhileParked) return;
    for (const [id, local] of [...this.#local]) {
      if (this.#stopped) return;
      if (local.phase !== "parked") continue;
      const why = await this.#runtime.endedWhileParked(id).catch(() => undefined);
      if (!why || this.#local.get(id) !== local || local.phase !== "parked") continue;
      await this.#runtime.stop(id, 0).catch(() => {}); // its init and what is left, stopped too
      this.podExited(id, `its worker ${why}`);
    }
  }

  /** Called by the runtime when a pod's process ends on its own. */
  podExited(podId: string, why: string): void {
    if (!this.#local.delete(podId)) return;
    log.warn("Pod {pod} exited: {why}", { pod: podId, why });
    this.#setStatus(podId, { state: "Failed", error: `Worker exited: ${why}` });
  }

  #stopPod(podId: string, deleteRecord: boolean): Promise<void> {
    const entry = this.#local.get(podId);
    if (!entry) return Promise.resolve();
    // A stop under way deletes the record too when this one asks (the agent's own stop
    // during a failed park's).
    if (deleteRecord) entry.deleteRecord = true;
    if (entry.phase === "stopping") return entry.done ?? Promise.resolve();
    const starting = entry.done;
    entry.phase = "stopping";
    entry.done = (async () => {
      await this.#runtime.stop(podId, this.#options.stopGraceMs ?? 5000);
      await starting?.catch(() => {});
      await this.#runtime.stop(podId, this.#options.stopGraceMs ?? 5000);
      this.#local.delete(podId);
      if (entry.deleteRecord) await this.#deletePod(podId);
    })();
    return entry.done;
  }

  async #deletePod(podId: string): Promise<void> {
    try {
      const rec = await this.#findPod(podId);
      if (rec) await this.#meta.delete(rec);
    } catch (err) {
      if (err instanceof NotFoundError) return;
      log.warn("Cannot delete pod {pod}, will try again: {error}", {
        pod: podId,
        error: String(err),
      });
      this.#resync.add(podId);
    }
  }

  /**
   * Pods whose record could not be deleted (the store away for a moment):
   * reconciled again from their record at the next heartbeat that gets
   * through. Nothing else would bring them back: their records did not
   * change, so the watch has nothing to say. (A report that could not be
   * written is retried itself: `#unsent`.)
   */
  #resync = new Set<string>();

  async #resyncPods(): Promise<void> {
    for (const [podId, report] of [...this.#unsent]) {
      if (this.#stopped) return;
      if (this.#unsent.get(podId) !== report) continue; // a later report came
      await this.#setStatus(podId, report.status, report.still);
      if (this.#unsent.has(podId)) return; // the store is still away
    }
    for (const podId of [...this.#resync]) {
      if (this.#stopped) return;
      this.#resync.delete(podId);
      try {
        const ref = await this.#findPod(podId);
        const rec = ref && await this.#meta.get(ref);
        const pod = rec && this.#decode(rec);
        if (pod) this.#reconcile(pod);
      } catch {
        this.#resync.add(podId);
        return; // still away: the next heartbeat tries again
      }
    }
  }

  async #findPod(podId: string) {
    const where = this.#podRefs.get(podId);
    if (where) {
      return {
        type: "pod" as const,
        tenant: where.tenant,
        namespace: where.namespace,
        name: podId,
      };
    }
    const { items } = await this.#meta.list("pod");
    const rec = items.find((r) => r.name === podId);
    return rec &&
      { type: "pod" as const, tenant: rec.tenant, namespace: rec.namespace, name: podId };
  }

  /**
   * Writes observed fields of a pod with compare-and-swap, retrying on
   * conflicts, while `still` holds of the record it writes over (checked
   * again at each try: a worker that died while its Ready was written is not
   * reported Ready over its failure). A write that fails otherwise is logged and tried again at the
   * next heartbeat, unless a later report of the pod came meanwhile (the
   * latest says what is true): a resume's or a park's report, lost, left the
   * scheduler waiting for the pod for ever.
   */
  async #setStatus(
    podId: string,
    status: Partial<PodInfo>,
    still: (pod: PodInfo) => boolean = () => true,
  ): Promise<void> {
    const report = { status, still };
    this.#unsent.set(podId, report); // until written; a later report takes its place
    try {
      const ref = await this.#findPod(podId);
      if (ref) {
        await updateWithRetry(this.#meta, ref, (cur) => {
          // A record it cannot read (a newer writer's) is not written over: the report goes.
          const pod = cur && this.#decode(cur);
          return pod && still(pod) ? { ...pod, ...status } : undefined;
        });
      }
      if (this.#unsent.get(podId) === report) this.#unsent.delete(podId);
    } catch (err) {
      log.warn("Cannot report pod {pod}, will try again: {error}", {
        pod: podId,
        error: String(err),
      });
    }
  }

  /** Whether `local` is still what this agent runs for `podId`, in `phase`: a report's guard. */
  #stillIn(podId: string, local: LocalPod, phase: LocalPod["phase"]): () => boolean {
    return () => this.#local.get(podId) === local && local.phase === phase;
  }

  /** The latest report of each pod not written yet: tried again at each heartbeat. */
  #unsent = new Map<string, { status: Partial<PodInfo>; still: (pod: PodInfo) => boolean }>();

  /** A pod record, or undefined (logged) when it cannot be read: one bad record blinds nothing else. */
  #decode(rec: MetaRecord): PodInfo | undefined {
    try {
      return decodePod(rec.value);
    } catch (err) {
      log.warn("Ignoring pod record {pod} that cannot be read: {error}", {
        pod: rec.name,
        error: String(err),
      });
      return undefined;
    }
  }
}

/**
 * Whether a pod just brought up has ended: as the runtime reads it from the
 * system, else once the pending callbacks have had a turn of the event loop
 * (a timer's: 1–2 ms in Deno) to settle `exited`.
 */
async function ended(running: RunningPod): Promise<boolean> {
  let done = false;
  running.exited.then(() => done = true, () => done = true);
  if (running.alive) return !(await running.alive()) || done;
  await nextTurn();
  return done;
}

/** A copy restored from a snapshot whose restore hook failed: it never served. */
class RestoreHookFailed extends InferxError {
  constructor(message: string) {
    super("worker_failed", message);
  }
}

/** An HTTP call to the worker at `endpoint` (`host:port`). */
function callWorker(endpoint: string, path: string, options: HttpCallOptions) {
  const { hostname, port } = splitEndpoint(endpoint);
  return httpCall(hostname, port, path, options);
}
