/**
 * A function's agent in the gateway: its request queue and the workers it has
 * leased. A request takes a free slot of a leased worker (`parallel` per
 * worker) without any remote call; only when none is free and the queue is
 * over `wait_ratio` does the agent ask the scheduler for another worker. A
 * worker idle for `scalein_timeout` goes back. While no node could ever hold
 * a worker (the function's `Schedulable` condition, or a lease refused as
 * `unschedulable`), calls that find no free slot are refused at once.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import type { FuncPolicy } from "../model/schemas.ts";
import type { LeaseStage, SchedulerClient } from "../rpc/types.ts";

const log = logger("gateway", "agent");

/**
 * How long (ms) a lease refused as `unschedulable` refuses calls without
 * asking the scheduler again; the function's condition, when recorded,
 * holds until it clears.
 */
export const UNSCHEDULABLE_RECHECK_MS = 2000;

/** A leased worker. */
export interface Worker {
  podId: string;
  endpoint: string;
  version: number;
  inflight: number;
  /** When it last became idle (ms). */
  idleSince: number;
  /** Set for workers of an old version: no new requests, returned when idle. */
  draining: boolean;
  /** Requests not yet served by this worker since it was cold-started for them. */
  coldRequests: number;
  /** Likewise for a worker resumed from standby for them. */
  resumedRequests: number;
}

/** A slot on a worker, held for one request. */
export interface Slot {
  worker: Worker;
  /** This request waited for a worker started for it. */
  coldStart: boolean;
  /** This request waited for a worker resumed from standby for it. */
  resumed: boolean;
  /** Time spent waiting in the queue (ms). */
  queuedMs: number;
}

/**
 * Where a waiting request stands: in the queue, the scheduler placing a
 * worker, a worker starting or being restored, and a slot taken.
 */
export type CallStage = "queued" | LeaseStage | "ready";

interface Waiter {
  /** Hears the stages of this request's wait, when it asked to. */
  onProgress?: (stage: CallStage) => void;
  resolve(slot: Slot): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
  since: number;
  deadline: number;
}

/** Dependencies of a {@linkcode FuncAgent}. */
export interface FuncAgentDeps {
  scheduler: SchedulerClient;
  gatewayId: string;
  /**
   * How long (ms) a lease refused as `unschedulable` refuses calls without
   * asking the scheduler again. @default UNSCHEDULABLE_RECHECK_MS
   */
  unschedulableRecheckMs?: number;
}

/** One function's queue and leased workers in one gateway. */
export class FuncAgent {
  readonly tenant: string;
  readonly namespace: string;
  readonly name: string;
  readonly id: string;
  policy: FuncPolicy;
  version: number;
  #deps: FuncAgentDeps;
  #workers: Worker[] = [];
  #queue: Waiter[] = [];
  #pendingLeases = 0;
  /** What the pending lease waits for, while one is pending. */
  #leaseStage?: LeaseStage;
  #leaseAbort = new AbortController();
  #closed = false;
  #unschedulable?: InferxError;
  /** Until when (performance.now() ms) `#unschedulable` holds. */
  #unschedulableUntil = 0;

  constructor(
    ref: { tenant: string; namespace: string; name: string; version: number },
    policy: FuncPolicy,
    deps: FuncAgentDeps,
  ) {
    this.tenant = ref.tenant;
    this.namespace = ref.namespace;
    this.name = ref.name;
    this.id = `${ref.tenant}/${ref.namespace}/${ref.name}`;
    this.version = ref.version;
    this.policy = policy;
    this.#deps = deps;
  }

  /** Leased workers (read-only view). */
  get workers(): readonly Worker[] {
    return this.#workers;
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Takes a free slot now (the warm path), or undefined when the call must wait. */
  tryAcquire(): Slot | undefined {
    if (this.#closed || this.#queue.length) return undefined;
    const w = this.#freeWorker();
    return w && this.#take(w, 0);
  }

  /**
   * Takes a slot for one request, waiting up to `timeoutMs` (capped by the
   * policy's `queue_timeout`). Rejects 503 `queue_full` when `queue_len`
   * requests already wait, 504 `timeout` when the wait runs out. A request
   * that has to wait tells `onProgress` each stage of its wait, `ready` last,
   * and leaves the queue when `caller` goes away (rejecting `unavailable`).
   */
  acquire(
    timeoutMs?: number,
    onProgress?: (stage: CallStage) => void,
    caller?: { onAbort(fn: () => void): void },
  ): Promise<Slot> {
    if (this.#closed) {
      return Promise.reject(
        new InferxError("not_found", `Cannot call ${this.id}: function was removed`),
      );
    }
    if (this.#queue.length === 0) {
      const w = this.#freeWorker();
      if (w) return Promise.resolve(this.#take(w, 0));
    }
    if (this.#unschedulable && performance.now() < this.#unschedulableUntil) {
      return Promise.reject(this.#unschedulable);
    }
    if (this.#queue.length >= this.policy.queue_len) {
      return Promise.reject(
        new InferxError(
          "queue_full",
          `Cannot call ${this.id}: queue is full (${this.#queue.length} waiting)`,
          { retryable: true, details: { queue_len: this.policy.queue_len } },
        ),
      );
    }
    const limit = this.policy.queue_timeout * 1000;
    const wait = Math.max(1, Math.min(timeoutMs ?? limit, limit));
    return new Promise<Slot>((resolve, reject) => {
      const since = performance.now();
      const waiter: Waiter = {
        onProgress,
        resolve,
        reject,
        since,
        deadline: Date.now() + wait,
        timer: setTimeout(() => {
          const i = this.#queue.indexOf(waiter);
          if (i >= 0) this.#queue.splice(i, 1);
          reject(
            new InferxError(
              "timeout",
              `Cannot call ${this.id}: no worker was free within ${
                Math.round(wait)
              } ms${this.#lastErrorText()}`,
              { retryable: true },
            ),
          );
        }, wait),
      };
      this.#queue.push(waiter);
      caller?.onAbort(() => {
        const i = this.#queue.indexOf(waiter);
        if (i < 0) return; // served already
        this.#queue.splice(i, 1);
        clearTimeout(waiter.timer);
        reject(new InferxError("unavailable", `The caller of ${this.id} left the queue`));
      });
      if (onProgress) {
        onProgress("queued");
        if (this.#leaseStage) onProgress(this.#leaseStage);
      }
      this.#scaleOut();
    });
  }

  /**
   * Takes a free slot on a worker other than `podId` now, or undefined; for
   * retrying a request elsewhere without queueing.
   */
  tryAcquireOther(podId: string): Slot | undefined {
    const w = this.#workers.find((w) =>
      w.podId !== podId && !w.draining && w.inflight < this.policy.parallel
    );
    return w && this.#take(w, 0);
  }

  /** Gives a slot back; `failed` drops the worker (it refused the connection). */
  release(slot: Slot, failed = false): void {
    const w = slot.worker;
    w.inflight--;
    if (failed) {
      this.#drop(w, true);
    } else if (w.inflight === 0) {
      w.idleSince = performance.now();
      if (w.draining || this.#closed) this.#drop(w, false);
    }
    this.#drain();
  }

  /** Returns workers idle past `scalein_timeout`; called periodically. */
  sweep(now = performance.now()): void {
    const idleMs = this.policy.scalein_timeout * 1000;
    for (const w of [...this.#workers]) {
      if (w.inflight === 0 && now - w.idleSince >= idleMs) this.#drop(w, false);
    }
  }

  /** A new spec version: workers of older versions drain. */
  setVersion(version: number, policy: FuncPolicy): void {
    this.policy = policy;
    if (version === this.version) return this.#drain();
    this.version = version;
    for (const w of [...this.#workers]) {
      if (w.version < version) {
        w.draining = true;
        if (w.inflight === 0) this.#drop(w, false);
      }
    }
    this.#drain();
  }

  /**
   * No node could ever hold a worker of this function (`err`, code
   * `unschedulable`): queued calls and calls that find no free slot are
   * refused at once until it is cleared (`undefined`).
   */
  setUnschedulable(err: InferxError | undefined): void {
    this.#unschedulable = err;
    this.#unschedulableUntil = err ? Infinity : 0;
    if (err) this.#rejectQueue(err);
  }

  /** The function is gone: refuse waiters, return workers when idle. */
  close(): void {
    this.#closed = true;
    this.#leaseAbort.abort(
      new InferxError("not_found", `Cannot call ${this.id}: function was removed`),
    );
    for (const q of this.#queue.splice(0)) {
      clearTimeout(q.timer);
      q.reject(new InferxError("not_found", `Cannot call ${this.id}: function was removed`));
    }
    for (const w of [...this.#workers]) if (w.inflight === 0) this.#drop(w, false);
  }

  #lastError?: InferxError;

  #rejectQueue(err: InferxError): void {
    for (const q of this.#queue.splice(0)) {
      clearTimeout(q.timer);
      q.reject(err);
    }
  }

  #lastErrorText(): string {
    return this.#lastError ? `; last lease attempt: ${this.#lastError.message}` : "";
  }

  #freeWorker(): Worker | undefined {
    let best: Worker | undefined;
    for (const w of this.#workers) {
      if (w.draining || w.inflight >= this.policy.parallel) continue;
      if (!best || w.inflight < best.inflight) best = w;
    }
    return best;
  }

  #take(w: Worker, queuedMs: number): Slot {
    w.inflight++;
    const coldStart = w.coldRequests > 0;
    if (coldStart) w.coldRequests--;
    const resumed = !coldStart && w.resumedRequests > 0;
    if (resumed) w.resumedRequests--;
    return { worker: w, coldStart, resumed, queuedMs };
  }

  #drain(): void {
    while (this.#queue.length) {
      const w = this.#freeWorker();
      if (!w) break;
      const q = this.#queue.shift()!;
      clearTimeout(q.timer);
      q.onProgress?.("ready");
      q.resolve(this.#take(w, performance.now() - q.since));
    }
    if (this.#queue.length) this.#scaleOut();
  }

  #drop(w: Worker, failed: boolean): void {
    const i = this.#workers.indexOf(w);
    if (i < 0) return;
    this.#workers.splice(i, 1);
    this.#deps.scheduler.returnWorker({ podId: w.podId, gatewayId: this.#deps.gatewayId, failed })
      .catch((err) =>
        log.warn("Cannot return {pod}: {error}", { pod: w.podId, error: String(err) })
      );
  }

  /** The pending lease reached `stage`: the waiters that follow their wait hear it. */
  #stage = (stage: LeaseStage): void => {
    if (stage === this.#leaseStage) return;
    this.#leaseStage = stage;
    for (const q of this.#queue) q.onProgress?.(stage);
  };

  /** Leases another worker when the queue calls for it. */
  #scaleOut(): void {
    if (this.#closed || this.#queue.length === 0) return;
    const active = this.#workers.filter((w) => !w.draining).length;
    if (active + this.#pendingLeases >= this.policy.max_replica) return;
    const capacity = active * this.policy.parallel;
    const pressure = active === 0 ||
      this.#queue.length > this.policy.scaleout_policy.wait_ratio * capacity;
    if (!pressure || this.#pendingLeases > 0) return;
    this.#pendingLeases++;
    this.#stage("placing");
    // Ask the scheduler to give up a little before the queue does, so its
    // reason (e.g. no node has the vRAM) reaches the caller's 504.
    const left = Math.max(...this.#queue.map((q) => q.deadline)) - Date.now();
    const waitMs = Math.max(1, left > 200 ? left - 100 : left);
    const progress = this.#queue.some((q) => q.onProgress) ? this.#stage : undefined;
    this.#deps.scheduler.leaseWorker(
      {
        tenant: this.tenant,
        namespace: this.namespace,
        func: this.name,
        gatewayId: this.#deps.gatewayId,
        timeoutMs: waitMs,
      },
      this.#leaseAbort.signal,
      progress,
    ).then((lease) => {
      this.#pendingLeases--;
      this.#leaseStage = undefined;
      this.#lastError = undefined;
      const w: Worker = {
        podId: lease.podId,
        endpoint: lease.endpoint,
        version: lease.version,
        inflight: 0,
        idleSince: performance.now(),
        draining: lease.version < this.version,
        coldRequests: lease.coldStart ? Math.min(this.#queue.length, this.policy.parallel) : 0,
        resumedRequests: lease.resumed ? Math.min(this.#queue.length, this.policy.parallel) : 0,
      };
      this.#workers.push(w);
      if (this.#closed || w.draining) return this.#drop(w, false);
      this.#drain();
    }, (err: Error) => {
      this.#pendingLeases--;
      this.#leaseStage = undefined;
      const e = err instanceof InferxError ? err : new InferxError("unavailable", err.message);
      this.#lastError = e;
      if (e.code === "unschedulable") {
        this.#unschedulable = e;
        this.#unschedulableUntil = Math.max(
          this.#unschedulableUntil,
          performance.now() + (this.#deps.unschedulableRecheckMs ?? UNSCHEDULABLE_RECHECK_MS),
        );
      }
      if (
        e.code === "worker_failed" || e.code === "not_found" || e.code === "quota_exceeded" ||
        e.code === "unschedulable"
      ) {
        this.#rejectQueue(e);
        return;
      }
      if (!this.#closed) setTimeout(() => this.#scaleOut(), 100);
    });
  }
}
