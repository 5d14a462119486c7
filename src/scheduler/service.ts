/**
 * The scheduler shell around the pure core: informers turn store changes into
 * core events, a ticker sends ticks, and the core's actions become pod writes
 * and lease answers. It decides nothing itself; its clock and ticker are
 * injected. Implements {@linkcode SchedulerClient} in-process.
 *
 * @module
 */
import {
  type Clock,
  steadyClock,
  systemClock,
  systemTicker,
  type Ticker,
} from "../common/clock.ts";
import { InferxError, NotFoundError, ValidationError } from "../common/errors.ts";
import { updateWithRetry } from "../common/retry.ts";
import { newId } from "../common/ids.ts";
import { logger } from "../common/log.ts";
import {
  decodeNode,
  decodePod,
  type NodeInfo,
  type PodInfo,
  sampleRequest,
} from "../model/cluster.ts";
import { decodeSnapshot } from "../model/snapshot.ts";
import { funcId } from "../model/keys.ts";
import {
  decodeStoredUserObject,
  type FuncPolicy,
  type FunctionSpec,
  resolvePolicy,
  tenantQuota,
  tenantWeight,
} from "../model/schemas.ts";
import { type FunctionObject, specOfVersion, trafficSplit } from "../model/versions.ts";
import { type Informer, startInformer } from "../rpc/informer.ts";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { WORKER_OUTPUT } from "../rpc/types.ts";
import { CallRates } from "./core/call_rates.ts";
import type {
  CallDemand,
  FuncLoad,
  GatewayAdvice,
  Lease,
  LeaseRequest,
  LeaseStage,
  MetaClient,
  MetaRecord,
  ObjectRef,
  SchedulerClient,
} from "../rpc/types.ts";
import {
  activeCurrent,
  type CoreAction,
  type CoreEvent,
  type CorePodState,
  type CorePolicy,
  type CoreState,
  fairShare,
  fairView,
  type FuncReport,
  leaseTarget,
  newCoreState,
  type NodeReport,
  type PodDemand,
  type PodPlacement,
  step,
} from "./core/mod.ts";
import { ConditionWriter } from "./conditions.ts";

/** The most of a failed worker's output (its end) a lease's error carries: gRPC metadata is small. */
const OUTPUT_MAX = 4096;

const log = logger("scheduler");

/** Options for {@linkcode SchedulerService}. */
export interface SchedulerOptions {
  /** Tick period (ms). @default 250 */
  tickMs?: number;
  /** A node whose heartbeat is older than this (ms) is not ready. @default 10000 */
  nodeTimeoutMs?: number;
  /** A gateway silent this long (ms) loses its leases. @default 10000 */
  gatewayTimeoutMs?: number;
  /**
   * A worker reclaimed for another tenant's fair share ends this long (ms)
   * after, its calls done or not. @default 10000
   */
  reclaimGraceMs?: number;
  /** What time it is, for spans of time (silences, deadlines). @default steadyClock */
  clock?: Clock;
  /** Runs the tick and the lease deadlines. @default systemTicker */
  ticker?: Ticker;
  /** When a node's snapshot serves a new pod (`INFERX_SNAPSHOT_START`). @default "auto" */
  snapshotStart?: "auto" | "always";
  /**
   * Pod records are listed again this often (ms): a pod write lost while the
   * store was away (a termination, a record the core dropped) is acted on
   * again. @default 10000
   */
  podResyncMs?: number;
  /**
   * How long a Ready pod rebuilt at start waits for a gateway to claim it
   * (ms); 0 where no gateway outlives this scheduler (`All`: they restart
   * together). @default 5000
   */
  recoveryGraceMs?: number;
}

/** Scheduler shell: owns the core state and carries out its actions. */
export class SchedulerService implements SchedulerClient {
  #meta: MetaClient;
  #core: CoreState;
  #options: SchedulerOptions;
  #pending = new Map<string, { resolve(l: Lease): void; reject(e: Error): void }>();
  /** Waiting leases whose requester follows their progress. */
  #progress = new Map<
    string,
    { func: string; version?: number; stage?: LeaseStage; report(s: LeaseStage): void }
  >();
  /** Function versions short of the workers they need: why, as last logged. */
  #short = new Map<string, { func: string; version: number; why: string }>();
  #funcs = new Map<string, FunctionObject>();
  #policies = new Map<string, FuncPolicy>();
  /** Pod records as last seen, for writes. */
  #podRefs = new Map<string, ObjectRef>();
  /**
   * Pods whose latest park the store refused with nothing written (its disk
   * full, say), no park asked since: their records still say they run.
   */
  #parkUnwritten = new Set<string>();
  #informers: Informer[] = [];
  #clock: Clock;
  /** The time nodes write their heartbeats in (the injected clock in tests). */
  #wall: Clock;
  #ticker: Ticker;
  /**
   * Each node's last heartbeat as the node wrote it (its own clock), and when
   * this scheduler first saw that value (its clock): a node's silence is
   * counted from the latter, so that neither a step of a clock nor nodes'
   * clocks set apart make a live node look silent.
   */
  #heard = new Map<string, { wrote: number; at: number }>();
  /** Pods that came up, and how long they took (with {@linkcode registerMetrics}). */
  #starts?: Counter<"function" | "from">;
  #startSeconds?: Histogram<"from">;
  #stopTicking?: () => void;
  #conditions: ConditionWriter;
  /** Snapshot records by store key, to know what a deleted one was. */
  #snapshots = new Map<string, { func: string; version: number; node: string }>();
  /** The tenants' call rates, shared out between the gateways at their heartbeats. */
  #rates: CallRates;

  constructor(meta: MetaClient, options: SchedulerOptions = {}) {
    this.#meta = meta;
    this.#options = options;
    this.#clock = options.clock ?? steadyClock;
    this.#wall = options.clock ?? systemClock;
    this.#ticker = options.ticker ?? systemTicker;
    // Times written for people and other roles to read: the system's clock.
    this.#conditions = new ConditionWriter(meta, systemClock);
    this.#core = newCoreState({
      podIdPrefix: newId("p", 3),
      gatewayTimeoutMs: options.gatewayTimeoutMs ?? 10_000,
      nodeTimeoutMs: options.nodeTimeoutMs ?? 10_000,
      snapshotStart: options.snapshotStart,
      recoveryGraceMs: options.recoveryGraceMs,
      reclaimGraceMs: options.reclaimGraceMs,
    });
    this.#rates = new CallRates(options.gatewayTimeoutMs ?? 10_000);
  }

  /** The core's state, read-only, for views and tests. */
  get state(): Readonly<CoreState> {
    return this.#core;
  }

  /**
   * The accounting as JSON: per node the CPU, memory and vRAM the core
   * charges, the live pods, and the functions (version, policy) as the
   * scheduler knows them. For `/state` and the restart invariants.
   */
  snapshot(): {
    nodes: {
      name: string;
      ready: boolean;
      cpuUsed: number;
      memUsedMB: number;
      vramUsedMB: number[];
    }[];
    pods: {
      id: string;
      func: string;
      node: string;
      state: string;
      leasedBy?: string;
      sharedWith?: string[];
    }[];
    funcs: { id: string; version: number; policy: CorePolicy }[];
  } {
    return {
      nodes: this.#core.nodeList.map((n) => ({
        name: n.name,
        ready: n.ready,
        cpuUsed: n.cpuUsed,
        memUsedMB: n.memUsedMB,
        vramUsedMB: n.gpus.map((g) => g.vramUsedMB),
      })),
      pods: [...this.#core.pods.values()].map((p) => ({
        id: p.id,
        func: p.func,
        node: p.node,
        state: p.state,
        leasedBy: p.leasedBy,
        sharedWith: p.sharedWith,
      })),
      funcs: [...this.#core.funcs.values()].map((f) => ({
        id: f.id,
        version: f.version,
        policy: f.policy,
      })),
    };
  }

  /** Registers the scheduler's gauges (read from the core when scraped) in `registry`. */
  registerMetrics(registry: Registry): void {
    const core = () => this.#core;
    this.#starts = new Counter({
      name: "inferx_pod_starts_total",
      help: "Pods that came up, by function and how: fresh, restored from a snapshot, resumed",
      labelNames: ["function", "from"] as const,
      registers: [registry],
    });
    this.#startSeconds = new Histogram({
      name: "inferx_pod_start_seconds",
      help: "Time from a pod's placement (or its resume's) to ready, by how it came up",
      labelNames: ["from"] as const,
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      registers: [registry],
    });
    new Gauge({
      name: "inferx_pods",
      help: "Pods by state",
      labelNames: ["state"] as const,
      registers: [registry],
      collect() {
        // Every state, at 0 too: a series that goes away reads as no data, not as none.
        const counts = new Map<string, number>(POD_STATES.map((state) => [state, 0]));
        for (const p of core().pods.values()) counts.set(p.state, (counts.get(p.state) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
    new Gauge({
      name: "inferx_leases_granted",
      help: "Workers leased to gateways and not returned yet, as the scheduler counts them",
      registers: [registry],
      collect() {
        let n = 0;
        for (const p of core().pods.values()) if (p.leasedBy) n++;
        this.set(n);
      },
    });
    const perGpu = (
      name: string,
      help: string,
      value: (g: CoreState["nodeList"][0]["gpus"][0]) => number,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ["node", "gpu"] as const,
        registers: [registry],
        collect() {
          this.reset();
          for (const n of core().nodeList) {
            for (const g of n.gpus) this.set({ node: n.name, gpu: String(g.index) }, value(g));
          }
        },
      });
    perGpu(
      "inferx_gpu_vram_used_mb",
      "GPU memory held by pods (MB), context overhead included",
      (g) => g.vramUsedMB,
    );
    perGpu("inferx_gpu_vram_total_mb", "GPU memory (MB)", (g) => g.vramTotalMB);
    const perTenant = (
      name: string,
      help: string,
      pick: (tenant: string, v: ReturnType<typeof fairView>) => number,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ["tenant"] as const,
        registers: [registry],
        collect() {
          this.reset();
          const v = fairView(core());
          for (const tenant of v.active) this.set({ tenant }, pick(tenant, v));
        },
      });
    perTenant(
      "inferx_tenant_pool_share",
      "Dominant share of the pool (CPU, memory or GPU memory) a tenant's pods hold",
      (t, v) => v.usage.get(t) ?? 0,
    );
    perTenant(
      "inferx_tenant_fair_share",
      "The share of a full pool a tenant is due, by weight, among the tenants holding or waiting",
      (t, v) => fairShare(v, t),
    );
  }

  /** Loads the cluster from the store (nodes, pods, then functions) and starts ticking. */
  async start(): Promise<void> {
    this.#informers.push(
      await startInformer(this.#meta, "node", {
        upsert: (rec) =>
          this.#apply({ type: "nodeUpdate", node: this.#nodeReport(decodeNode(rec.value)) }),
        remove: (ref) => {
          this.#heard.delete(ref.name);
          this.#apply({ type: "nodeRemove", name: ref.name });
        },
      }),
    );
    // Judged together once all are known (every one silent is not one silent node), before
    // their pods are recovered.
    this.#apply({ type: "nodesListed" });
    this.#informers.push(
      await startInformer(this.#meta, "pod", {
        upsert: (rec) => {
          let pod: PodInfo;
          try {
            pod = decodePod(rec.value);
          } catch (err) {
            // One record this version cannot read must not stop it following every other.
            return log.warn("Ignoring pod record {pod} that cannot be read: {error}", {
              pod: rec.name,
              error: String(err),
            });
          }
          this.#onPod(rec, pod, rec.revision);
        },
        remove: (ref) => {
          this.#podRefs.delete(ref.name);
          this.#parkUnwritten.delete(ref.name);
          this.#apply({ type: "podStatus", podId: ref.name, state: "Terminated" });
        },
      }, { resyncMs: this.#options.podResyncMs ?? 10_000 }),
      await startInformer(this.#meta, "funcpolicy", {
        upsert: (rec) => {
          const o = decodeStoredUserObject(rec.value, rec.revision);
          if (o.type !== "funcpolicy") return;
          this.#policies.set(funcId(o.tenant, o.namespace, o.name), o.spec);
          this.#refreshLinked(o.tenant, o.namespace, o.name);
        },
        remove: (ref) => {
          this.#policies.delete(funcId(ref.tenant, ref.namespace, ref.name));
          this.#refreshLinked(ref.tenant, ref.namespace, ref.name);
        },
      }),
      await startInformer(this.#meta, "tenant", {
        upsert: (rec) => {
          const o = decodeStoredUserObject(rec.value, rec.revision);
          const q = tenantQuota(o.spec as Record<string, unknown>);
          this.#rates.setQuota(o.name, q);
          this.#apply({
            type: "tenantQuota",
            tenant: o.name,
            limits: { maxGpu: q.max_gpu, maxReplica: q.max_replica },
          });
          const weight = tenantWeight(o.spec as Record<string, unknown>);
          this.#apply({ type: "tenantWeight", tenant: o.name, weight });
        },
        remove: (ref) => {
          this.#rates.setQuota(ref.name, undefined);
          this.#apply({ type: "tenantQuota", tenant: ref.name, limits: {} });
          this.#apply({ type: "tenantWeight", tenant: ref.name, weight: 1 });
        },
      }),
      await startInformer(this.#meta, "function", {
        upsert: (rec) => this.#onFunction(rec),
        remove: (ref) => {
          const id = funcId(ref.tenant, ref.namespace, ref.name);
          this.#funcs.delete(id);
          this.#apply({ type: "funcRemove", id });
          for (const from of ["fresh", "snapshot", "resume"]) {
            this.#starts?.remove({ function: id, from });
          }
        },
      }),
      // After functions: a snapshot counts for its function's current version.
      await startInformer(this.#meta, "snapshot", {
        upsert: (rec) => {
          const s = decodeSnapshot(rec.value);
          const ev = {
            func: funcId(s.tenant, s.namespace, s.func),
            version: s.funcVersion,
            node: s.node,
          };
          this.#snapshots.set(`${rec.tenant}/${rec.namespace}/${rec.name}`, ev);
          this.#apply({ type: "snapshot", ...ev, ready: s.state === "Ready" });
        },
        remove: (ref) => {
          const key = `${ref.tenant}/${ref.namespace}/${ref.name}`;
          const ev = this.#snapshots.get(key);
          this.#snapshots.delete(key);
          if (ev) this.#apply({ type: "snapshot", ...ev, ready: false });
        },
      }),
    );
    this.#stopTicking = this.#ticker.every(
      this.#options.tickMs ?? 250,
      () => this.#apply({ type: "tick" }),
    );
    log.info("Scheduler started: {nodes} node(s), {funcs} function(s), {pods} pod(s)", {
      nodes: this.#core.nodes.size,
      funcs: this.#core.funcs.size,
      pods: this.#core.pods.size,
    });
  }

  /** Resolves once the conditions asked for so far are written (for tests). */
  conditionsWritten(): Promise<void> {
    return this.#conditions.settled();
  }

  /** Stops timers and watches; waiting leases are refused. */
  stop(): void {
    this.#stopTicking?.();
    for (const i of this.#informers) i.stop();
    for (const [reqId, p] of this.#pending) {
      p.reject(new InferxError("unavailable", "Cannot lease worker: the scheduler is stopping"));
      this.#pending.delete(reqId);
    }
  }

  leaseWorker(
    req: LeaseRequest,
    signal?: AbortSignal,
    onProgress?: (stage: LeaseStage) => void,
  ): Promise<Lease> {
    // A lease to no one (an empty gateway id) would look like none and be evicted in use.
    const missing = (["gatewayId", "tenant", "namespace", "func"] as const).find((k) => !req[k]);
    if (missing) {
      return Promise.reject(
        new ValidationError(`Invalid lease request: ${missing} is required`, missing),
      );
    }
    if (!(req.timeoutMs > 0) || req.timeoutMs > MAX_LEASE_WAIT_MS) {
      // Past it a timer fires at once (Node's limit), not at the deadline.
      return Promise.reject(
        new ValidationError(
          `Invalid lease request: timeoutMs must be a number from 1 to ${MAX_LEASE_WAIT_MS}`,
          "timeoutMs",
        ),
      );
    }
    if (req.version !== undefined && !(Number.isSafeInteger(req.version) && req.version >= 1)) {
      return Promise.reject(
        new ValidationError(
          "Invalid lease request: version must be a whole number >= 1",
          "version",
        ),
      );
    }
    // A function this scheduler has not heard of yet (made a moment ago, its watch behind the
    // gateway's; a leader just elected): read from the store once, rather than refused 404.
    if (!this.#funcs.has(funcId(req.tenant, req.namespace, req.func))) {
      return this.#learnFunction(req).then(() => this.#lease(req, signal, onProgress));
    }
    return this.#lease(req, signal, onProgress);
  }

  /** A function's record as the watch brings it (or a lease finds it first). */
  #onFunction(rec: MetaRecord): void {
    const o = decodeStoredUserObject(rec.value, rec.revision);
    if (o.type !== "function") return;
    const id = funcId(o.tenant, o.namespace, o.name);
    const known = this.#funcs.get(id);
    if (known && known.revision > o.revision) return; // read ahead of the watch already
    this.#funcs.set(id, o);
    this.#apply({ type: "funcUpdate", func: this.#funcReport(id) });
    const decided = this.#core.funcs.get(id)?.schedulable;
    if (decided) {
      this.#conditions.reconcile(id, { version: o.version, condition: decided }, o.status);
    }
  }

  async #learnFunction(req: LeaseRequest): Promise<void> {
    const ref = { type: "function" as const, tenant: req.tenant, namespace: req.namespace };
    const rec = await this.#meta.get({ ...ref, name: req.func }).catch(() => undefined);
    if (rec && !this.#funcs.has(funcId(req.tenant, req.namespace, req.func))) {
      this.#onFunction(rec);
    }
  }

  #lease(
    req: LeaseRequest,
    signal?: AbortSignal,
    onProgress?: (stage: LeaseStage) => void,
  ): Promise<Lease> {
    const reqId = newId("l", 6);
    const func = funcId(req.tenant, req.namespace, req.func);
    if (onProgress) {
      this.#progress.set(reqId, { func, version: req.version, report: onProgress });
    }
    return new Promise<Lease>((resolve, reject) => {
      if (signal?.aborted) {
        this.#progress.delete(reqId);
        return reject(signal.reason);
      }
      const onAbort = () => {
        if (!this.#pending.delete(reqId)) return;
        done();
        this.#apply({ type: "cancelLease", reqId, func });
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      // Answer at the deadline itself rather than at the next tick.
      const cancelExpiry = this.#ticker.after(
        req.timeoutMs + 1,
        () => this.#apply({ type: "tick" }),
      );
      const done = () => (
        cancelExpiry(), signal?.removeEventListener("abort", onAbort), this.#progress.delete(reqId)
      );
      this.#pending.set(reqId, {
        resolve: (l) => (done(), resolve(l)),
        reject: (e) => (done(), reject(e)),
      });
      this.#apply({
        type: "lease",
        reqId,
        func,
        gateway: req.gatewayId,
        deadline: this.#clock.now() + req.timeoutMs,
        version: req.version,
      });
    });
  }

  returnWorker(req: { podId: string; gatewayId: string; failed?: boolean }): Promise<void> {
    if (!req.gatewayId || !req.podId) {
      const field = req.gatewayId ? "podId" : "gatewayId";
      return Promise.reject(new ValidationError(`Invalid return: ${field} is required`, field));
    }
    this.#apply({ type: "return", podId: req.podId, gateway: req.gatewayId, failed: req.failed });
    return Promise.resolve();
  }

  refreshGateway(
    gatewayId: string,
    leasedPods?: string[],
    load?: FuncLoad[],
    calls?: CallDemand[],
  ): Promise<GatewayAdvice> {
    if (!gatewayId) {
      return Promise.reject(
        new ValidationError("Invalid heartbeat: gatewayId is required", "gatewayId"),
      );
    }
    // Figures a scale-out decision is made of: counts and times, whole and not negative.
    for (const l of load ?? []) {
      for (
        const k of ["version", "queued", "waitMs", "inflight", "inflightTokens", "workers"] as const
      ) {
        if (!(Number.isFinite(l[k]) && l[k] >= 0)) {
          return Promise.reject(
            new ValidationError(`Invalid heartbeat: load ${k} must be a number >= 0`, k),
          );
        }
      }
    }
    const actions = this.#apply({
      type: "gatewayHeartbeat",
      gateway: gatewayId,
      leases: leasedPods,
      load: load?.map((l) => ({ ...l, func: funcId(l.tenant, l.namespace, l.func) })),
    });
    const { shares, gateways } = this.#rates.heartbeat(gatewayId, calls ?? [], this.#clock.now());
    const advice: GatewayAdvice = { reclaim: [], scaleOut: [], rates: shares, gateways };
    for (const a of actions) {
      if (a.type === "reclaimLease" && a.gateway === gatewayId) advice.reclaim.push(a.podId);
      if (a.type === "scaleOut" && a.gateway === gatewayId) {
        const [tenant, namespace, func] = a.func.split("/");
        advice.scaleOut.push({ tenant, namespace, func, version: a.version, workers: a.workers });
      }
    }
    return Promise.resolve(advice);
  }

  killPod(podId: string): Promise<void> {
    this.#apply({ type: "killPod", podId });
    return Promise.resolve();
  }

  #funcReport(id: string): FuncReport {
    const f = this.#funcs.get(id)!;
    const policy = resolvePolicy(
      f.spec,
      (name) => this.#policies.get(funcId(f.tenant, f.namespace, name)),
    );
    const split = trafficSplit(f, policy);
    const older = split.flatMap((s) => {
      const spec = s.version === f.version ? undefined : specOfVersion(f, s.version);
      return spec ? [{ version: s.version, demand: demandOf(spec) }] : [];
    });
    return {
      id,
      version: f.version,
      demand: demandOf(f.spec),
      older,
      newestTakesNone: !split.some((s) => s.version === f.version),
      policy: {
        minReplica: policy.min_replica,
        maxReplica: policy.max_replica,
        standbyPerNode: policy.standby_per_node,
        scaleinTimeoutS: policy.scalein_timeout,
        // Where the function wants its GPU memory kept while parked.
        standbyTier: f.spec.standby.gpu === "File" ? "file" : "host_memory",
        priority: policy.priority,
        queueMs: policy.scaleout_policy.queue_ms,
        inflightTokens: policy.scaleout_policy.inflight_tokens,
      },
    };
  }

  #refreshLinked(tenant: string, namespace: string, policy: string): void {
    for (const [id, f] of this.#funcs) {
      if (
        f.tenant === tenant && f.namespace === namespace && f.spec.policy?.kind === "link" &&
        f.spec.policy.name === policy
      ) this.#apply({ type: "funcUpdate", func: this.#funcReport(id) });
    }
  }

  #onPod(ref: ObjectRef, pod: PodInfo, revision?: number): void {
    this.#podRefs.set(pod.id, {
      type: "pod",
      tenant: ref.tenant,
      namespace: ref.namespace,
      name: ref.name,
    });
    this.#apply({
      type: "podRecord",
      pod: {
        id: pod.id,
        func: funcId(pod.tenant, pod.namespace, pod.func),
        version: pod.funcVersion,
        node: pod.node,
        cpu: pod.cpuMillis,
        memMB: pod.memMB,
        gpus: pod.gpus,
        desired: pod.desired,
        state: pod.state,
        tier: pod.standbyTier,
        endpoint: pod.endpoint,
        error: pod.error,
        failCode: pod.failCode,
        startedFrom: pod.startedFrom,
        snapshotMs: pod.snapshotMs,
        // A Ready without it did not end a resume its node timed (one re-reported, say).
        resumeMs: pod.resumeMs ?? null,
        revision,
      },
    });
  }

  #apply(event: CoreEvent): CoreAction[] {
    const now = this.#clock.now();
    const podId = event.type === "podStatus"
      ? event.podId
      : event.type === "podRecord"
      ? event.pod.id
      : undefined;
    const before = podId === undefined ? undefined : this.#core.pods.get(podId);
    const [was, since] = [before?.state, before?.since];
    const { actions } = step(this.#core, event, now);
    if ((was === "Creating" || was === "Resuming") && before?.state === "Ready") {
      // A pod came up: counted by how, and timed from its placement (or its resume's).
      const how = event.type === "podStatus"
        ? event.startedFrom
        : event.type === "podRecord"
        ? event.pod.startedFrom
        : undefined;
      const from = was === "Resuming" ? "resume" : how ?? "fresh";
      this.#starts?.inc({ function: before.func, from });
      if (since !== undefined) this.#startSeconds?.observe({ from }, (now - since) / 1000);
    }
    for (const a of actions) this.#carryOut(a);
    if (this.#progress.size) this.#reportProgress();
    if (this.#core.starved.size || this.#short.size) this.#logShortfalls();
    return actions;
  }

  /**
   * Says in the log when a function version cannot have the workers it
   * needs (its `min_replica`, or calls waiting: no node has room, or what it
   * waits for is being freed) and when it has them again: the calls waiting
   * hear why, a `min_replica` short of pods would go unsaid.
   */
  #logShortfalls(): void {
    for (const id of this.#core.starved) {
      const f = this.#core.funcs.get(id);
      const why = f?.lastUnschedulable;
      if (!f || !why || this.#short.get(id)?.why === why) continue;
      this.#short.set(id, { func: f.func, version: f.version, why });
      // Room being freed for it is the normal way of a full pool: said, not warned of.
      log[f.freeing ? "info" : "warn"](
        "{func} version {version} is short of workers ({active} of min_replica {min}, {waiting} call(s) waiting): {why}",
        {
          func: f.func,
          version: f.version,
          active: activeCurrent(this.#core, f),
          min: f.policy.minReplica,
          waiting: f.waiters.length,
          why,
        },
      );
    }
    for (const [id, was] of this.#short) {
      if (this.#core.starved.has(id)) continue;
      this.#short.delete(id);
      // Deleted (or a version gone): nothing to say.
      if (this.#core.funcs.has(id)) {
        log.info("{func} version {version} has the workers it needs again", was);
      }
    }
  }

  /**
   * Tells each followed lease what its function version's pods are doing
   * while it waits: one being restored from standby, one starting, or none yet.
   */
  #reportProgress(): void {
    for (const [reqId, p] of this.#progress) {
      if (!this.#pending.has(reqId)) {
        this.#progress.delete(reqId); // answered or withdrawn
        continue;
      }
      const stage = leaseStage(this.#core, p.func, p.version);
      if (stage === p.stage) continue;
      p.stage = stage;
      p.report(stage);
    }
  }

  #carryOut(a: CoreAction): void {
    switch (a.type) {
      case "leaseGranted": {
        const p = this.#pending.get(a.reqId);
        this.#pending.delete(a.reqId);
        if (p) {
          p.resolve({
            podId: a.podId,
            endpoint: a.endpoint,
            coldStart: a.coldStart,
            resumed: a.resumed,
            version: a.version,
          });
        } else {
          // The requester gave up after the grant was decided: give it back.
          queueMicrotask(() => this.#apply({ type: "return", podId: a.podId, gateway: a.gateway }));
        }
        break;
      }
      case "leaseFailed": {
        const p = this.#pending.get(a.reqId);
        this.#pending.delete(a.reqId);
        p?.reject(
          new InferxError(a.code, a.message, {
            retryable: a.code === "timeout",
            details: leaseDetails(a),
          }),
        );
        break;
      }
      case "createPod":
        this.#createPod(a.pod).catch((err) => {
          log.error("Cannot create pod {pod}: {error}", { pod: a.pod.id, error: String(err) });
          const code = err instanceof InferxError && err.code === "unavailable"
            ? err.code
            : undefined;
          const error = err instanceof Error ? err.message : String(err);
          this.#apply({ type: "podStatus", podId: a.pod.id, state: "Failed", error, code });
        });
        break;
      case "terminatePod":
        log.info("Terminating pod {pod}: {reason}", { pod: a.podId, reason: a.reason });
        if (a.orphan) this.#forget(a.podId);
        else this.#terminate(a.podId);
        break;
      case "parkPod":
        log.info("Parking pod {pod} ({tier})", { pod: a.podId, tier: a.tier });
        // A park under way may land: from here its record may say parked.
        this.#parkUnwritten.delete(a.podId);
        this.#setDesired(a.podId, "Standby", a.tier, (err) => {
          if (err instanceof InferxError && err.details?.not_written === true) {
            this.#parkUnwritten.add(a.podId);
          }
        });
        break;
      case "resumePod":
        log.info("Resuming pod {pod} ({tier})", { pod: a.podId, tier: a.tier });
        this.#setDesired(a.podId, "Running", undefined, (err) => {
          if (!(err instanceof InferxError && err.code === "unavailable")) return;
          const refused = () =>
            this.#apply({ type: "resumeRefused", podId: a.podId, error: err.message });
          // Never sent (no connection to the state service): nothing was written, a refusal.
          if (err.details?.not_written === true) return refused();
          // Refused, or written with its answer lost: the record says which. Only a record
          // read back without the resume is a refusal (a resumed worker taken for parked would
          // have its memory given to another); unread, the re-list settles it.
          const ref = this.#podRefs.get(a.podId);
          if (!ref) return;
          this.#meta.get(ref).then((cur) => {
            const pod = cur && decodePod(cur.value);
            if (pod && pod.desired === "Standby") refused();
          }, () => {});
        }, (pod) => {
          // Its record says Running already because its park was never written (the store
          // refused it, none asked since: one under way could land after this read), so its
          // worker never stopped, and no agent will report a resume. Ready as it is.
          if (!this.#parkUnwritten.delete(a.podId)) return;
          if (pod.state === "Ready" && !pod.standbyTier) {
            this.#apply({
              type: "podStatus",
              podId: a.podId,
              state: "Ready",
              endpoint: pod.endpoint,
            });
          }
        });
        break;
      case "reclaimLease":
        // Asked of the gateway in the answer to its heartbeat, again until it gives the pod back.
        if (a.repeat) break;
        log.info("Reclaiming pod {pod} from gateway {gateway}: {reason}", {
          pod: a.podId,
          gateway: a.gateway,
          reason: a.reason,
        });
        break;
      case "scaleOut":
        break; // the answer to the heartbeat that reported the load
      case "funcCondition":
        log.info("Function {func} Schedulable={status}: {message}", {
          func: a.func,
          status: a.condition.status,
          message: a.condition.message,
        });
        this.#conditions.write(a.func, { version: a.version, condition: a.condition });
        break;
    }
  }

  /** `n` as the core reads it, its heartbeat at when this scheduler first saw it. */
  #nodeReport(n: NodeInfo): NodeReport {
    if (n.heartbeat === undefined) return nodeReport(n, undefined);
    let h = this.#heard.get(n.name);
    if (h?.wrote !== n.heartbeat) {
      const now = this.#clock.now();
      // First seen (this scheduler starting, or leading anew): a heartbeat older than any skew
      // between clocks explains is a node's gone long before, judged by its age at once
      // (counted from now, the node got new pods for a whole NODE_TIMEOUT_MS).
      const age = h ? 0 : this.#wall.now() - n.heartbeat;
      const at = age > STALE_AT_SIGHT * this.#core.config.nodeTimeoutMs ? now - age : now;
      this.#heard.set(n.name, h = { wrote: n.heartbeat, at });
    }
    return nodeReport(n, h.at);
  }

  async #createPod(p: PodPlacement): Promise<void> {
    const [tenant, namespace, name] = p.func.split("/");
    const f = this.#funcs.get(p.func);
    if (!f) throw new Error(`function ${p.func} is gone`);
    const s = specOfVersion(f, p.version);
    if (!s) throw new Error(`version ${p.version} of ${p.func} is no longer kept`);
    const pod: PodInfo = {
      id: p.id,
      tenant,
      namespace,
      func: name,
      funcVersion: p.version,
      node: p.node,
      cpuMillis: p.cpu,
      memMB: p.memMB,
      gpus: p.gpus,
      template: {
        image: s.image,
        commands: s.commands,
        envs: s.envs,
        mounts: s.mounts,
        port: s.endpoint.port,
        probe: s.endpoint.probe,
        startupTimeoutS: s.startup_timeout,
        sampleQuery: sampleRequest(s.sample_query),
        ...(s.endpoint.restore_hook ? { restoreHook: s.endpoint.restore_hook } : {}),
      },
      desired: "Running",
      state: "Creating",
      createdAt: Date.now(),
      ...(p.fromSnapshot ? { fromSnapshot: true } : {}),
    };
    const ref: ObjectRef = { type: "pod", tenant, namespace, name: p.id };
    this.#podRefs.set(p.id, ref);
    await this.#meta.create({ ...ref, object: pod });
  }

  #terminate(podId: string): void {
    this.#setDesired(podId, "Terminated");
  }

  /** Deletes the record of a pod no node agent will ever act on (its node is unknown). */
  #forget(podId: string): void {
    const ref = this.#podRefs.get(podId);
    if (!ref) return;
    this.#meta.delete(ref).catch((err) => {
      if (err instanceof NotFoundError) return;
      log.error("Cannot delete the record of pod {pod}: {error}", {
        pod: podId,
        error: String(err),
      });
    });
  }

  /**
   * Writes a pod's desired state (compare-and-swap, retried on conflicts);
   * the node agent acts. `failed` hears a write that failed.
   */
  #setDesired(
    podId: string,
    desired: PodInfo["desired"],
    tier?: PodInfo["standbyTier"],
    failed?: (err: unknown) => void,
    already?: (pod: PodInfo) => void,
  ): void {
    const ref = this.#podRefs.get(podId);
    if (!ref) return;
    let found: PodInfo | undefined;
    updateWithRetry(this.#meta, ref, (cur) => {
      const pod = cur && decodePod(cur.value);
      found = undefined;
      if (!pod || pod.desired === "Terminated") return undefined;
      if (pod.desired === desired) return void (found = pod);
      return { ...pod, desired, ...(tier ? { standbyTier: tier } : {}) };
    }).then(() => {
      if (found) already?.(found);
    }, (err) => {
      log.error("Cannot set pod {pod} to {desired}: {error}", {
        pod: podId,
        desired,
        error: String(err),
      });
      failed?.(err);
    });
  }
}

/** The states of the core's pods, each one series of `inferx_pods`. */
const POD_STATES: readonly CorePodState[] = [
  "Creating",
  "Ready",
  "Standby",
  "Resuming",
  "Terminating",
];

/** The longest a lease may wait for a worker (ms): a day, within a timer's reach. */
const MAX_LEASE_WAIT_MS = 86_400_000;

/**
 * The `details` of a failed lease: a crash loop's back-off (`Retry-After` says
 * when a start is tried again) and its failed starts in a row, the tenant
 * quota that refused it, and the worker's output apart (the gateway shows it
 * to its readers only).
 */
function leaseDetails(
  a: Extract<CoreAction, { type: "leaseFailed" }>,
): Record<string, unknown> | undefined {
  if (a.retryAfterS === undefined && a.output === undefined && a.quota === undefined) {
    return undefined;
  }
  return {
    ...(a.retryAfterS === undefined ? {} : { retry_after_s: a.retryAfterS }),
    ...(a.failures === undefined ? {} : { failed_starts: a.failures }),
    ...a.quota,
    ...(a.output === undefined ? {} : { [WORKER_OUTPUT]: a.output.slice(-OUTPUT_MAX) }),
  };
}

/** What one pod of a function spec needs. */
function demandOf(spec: FunctionSpec): PodDemand {
  const r = spec.resources;
  return {
    cpu: r.CPU,
    memMB: r.Mem,
    gpuType: r.GPU.Type,
    gpuCount: r.GPU.Count,
    vramMB: r.GPU.vRam,
  };
}

/**
 * A heartbeat first seen older than this many `NODE_TIMEOUT_MS` keeps its
 * age (its node gone before this scheduler started); a younger one, which
 * clocks set apart could make, counts from when it is seen.
 */
const STALE_AT_SIGHT = 10;

/** A stored node as the core reads it, its heartbeat at `heardAt`. */
function nodeReport(n: NodeInfo, heardAt: number | undefined): NodeReport {
  return {
    name: n.name,
    ready: n.ready,
    heartbeat: heardAt,
    cpuMillis: n.cpuMillis,
    memMB: n.memMB,
    gpus: n.gpus,
    contextOverheadMB: n.contextOverheadMB,
    standbyTiers: n.standbyTiers,
  };
}

/** The stage of a lease of `func` waiting now. */
export function leaseStage(
  core: Readonly<CoreState>,
  func: string,
  version?: number,
): LeaseStage {
  const f = leaseTarget(core.units.get(func), version);
  let starting = false;
  for (const id of f?.pods ?? []) {
    const state = core.pods.get(id)?.state;
    if (state === "Resuming") return "restoring";
    if (state === "Creating") starting = true;
  }
  return starting ? "starting" : "placing";
}
