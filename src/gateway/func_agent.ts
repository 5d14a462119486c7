/**
 * A function's agent in the gateway: its request queues and the workers it
 * has leased. A request takes a free slot of a leased worker (`parallel` per
 * worker) without any remote call; only when none is free and the queue is
 * over `wait_ratio` does the agent ask the scheduler for another worker. A
 * worker idle for `scalein_timeout` goes back. While no node could ever hold
 * a worker (the function's `Schedulable` condition, or a lease refused as
 * `unschedulable`), calls that find no free slot are refused at once.
 *
 * When a traffic split keeps several versions serving (docs/traffic.md),
 * each call is routed to a version by smooth weighted round-robin over the
 * split's percents (exact shares, no randomness), and each version has its
 * own queue and workers. Workers of versions that leave the split drain. The
 * scheduler may advise leasing more (queue time, in-flight tokens) or ask a
 * worker back (fair share between tenants): it then takes no new call and is
 * returned when idle.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import type { FuncPolicy } from "../model/schemas.ts";
import { type VersionLoad, type VersionShare, workersForTokens } from "../model/versions.ts";
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
  /** Tokens the calls it is answering asked for (`max_tokens`). */
  tokens: number;
  /** When it last became idle (ms). */
  idleSince: number;
  /** No new requests: its version left the split, or the scheduler asked it back; returned when idle. */
  draining: boolean;
  /** The scheduler asked for it back (fair share). */
  reclaimed?: boolean;
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
  /** Tokens the call asked for (`max_tokens`), counted as in flight while it holds the slot. */
  tokens: number;
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
  tokens: number;
}

/** One serving version: its share of calls, its queue and its leases under way. */
interface Lane {
  version: number;
  percent: number;
  queue: Waiter[];
  pendingLeases: number;
  /** What its pending lease waits for, while one is pending. */
  leaseStage?: LeaseStage;
  /** Smooth weighted round-robin credit. */
  credit: number;
  /** Its version's last lease was refused `unschedulable`: calls routed to it are refused until then. */
  unschedulable?: InferxError;
  /** Until when (performance.now() ms) `unschedulable` holds. */
  unschedulableUntil: number;
  /**
   * The version the scheduler answered this lane's lease with, when another:
   * the lane's own no longer serves there (the scheduler knew before this
   * gateway). Its calls go to workers of that version until the split changes.
   */
  serves?: number;
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

/** One function's queues and leased workers in one gateway. */
export class FuncAgent {
  readonly tenant: string;
  readonly namespace: string;
  readonly name: string;
  readonly id: string;
  policy: FuncPolicy;
  /** The newest version. */
  version: number;
  #deps: FuncAgentDeps;
  #workers: Worker[] = [];
  #lanes: Lane[] = [];
  /** Lanes whose version left the split while leases of theirs were under way. */
  #leaving = new Set<Lane>();
  #leaseAbort = new AbortController();
  /** Closed: what waiters and new calls are refused with. */
  #closed?: InferxError;
  /** The function's status says no node could ever hold a worker of it (all its versions). */
  /** The function's `Schedulable=False` condition and the version it speaks of (the newest). */
  #unschedulable?: { err: InferxError; version: number };

  constructor(
    ref: { tenant: string; namespace: string; name: string; version: number },
    policy: FuncPolicy,
    deps: FuncAgentDeps,
    split?: readonly VersionShare[],
  ) {
    this.tenant = ref.tenant;
    this.namespace = ref.namespace;
    this.name = ref.name;
    this.id = `${ref.tenant}/${ref.namespace}/${ref.name}`;
    this.version = ref.version;
    this.policy = policy;
    this.#deps = deps;
    this.#lanes = lanesOf(split ?? [{ version: ref.version, percent: 100 }]);
  }

  /** Leased workers (read-only view). */
  get workers(): readonly Worker[] {
    return this.#workers;
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    let n = 0;
    for (const l of this.#lanes) n += l.queue.length;
    return n;
  }

  /** The versions taking calls and their shares. */
  get split(): VersionShare[] {
    return this.#lanes.map((l) => ({ version: l.version, percent: l.percent }));
  }

  /**
   * Takes a free slot now (the warm path), or undefined when the call must
   * wait, or when a split between versions routes it (then `acquire`).
   */
  tryAcquire(tokens = 0): Slot | undefined {
    if (this.#closed || this.#lanes.length !== 1) return undefined;
    const lane = this.#lanes[0];
    if (lane.queue.length) return undefined;
    const w = this.#freeWorker(servedBy(lane));
    return w && this.#take(w, 0, tokens);
  }

  /**
   * Takes a slot for one request, on a worker of the version the split
   * routes it to, waiting up to `timeoutMs` (capped by the policy's
   * `queue_timeout`). Rejects 503 `queue_full` when `queue_len` requests
   * already wait, 504 `timeout` when the wait runs out. A request that has to
   * wait tells `onProgress` each stage of its wait, `ready` last, and leaves
   * the queue when `caller` goes away (rejecting `unavailable`). `tokens`:
   * what the call asked for (`max_tokens`), in flight while it holds the slot.
   */
  acquire(
    timeoutMs?: number,
    onProgress?: (stage: CallStage) => void,
    caller?: { onAbort(fn: () => void): void },
    tokens = 0,
  ): Promise<Slot> {
    if (this.#closed) return Promise.reject(this.#closed);
    const lane = this.#lanes.length === 1 ? this.#lanes[0] : this.#pick();
    if (lane.queue.length === 0) {
      const w = this.#freeWorker(servedBy(lane));
      if (w) return Promise.resolve(this.#take(w, 0, tokens));
    }
    if (this.#unschedulable?.version === lane.version) {
      return Promise.reject(this.#unschedulable.err);
    }
    if (lane.unschedulable && performance.now() < lane.unschedulableUntil) {
      return Promise.reject(lane.unschedulable);
    }
    const queued = this.queued;
    if (queued >= this.policy.queue_len) {
      return Promise.reject(
        new InferxError(
          "queue_full",
          `Cannot call ${this.id}: queue is full (${queued} waiting)`,
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
        tokens,
        deadline: Date.now() + wait,
        timer: setTimeout(() => {
          for (const l of this.#lanes) {
            const i = l.queue.indexOf(waiter);
            if (i >= 0) l.queue.splice(i, 1);
          }
          // The scheduler out of reach (asked again until now, as a failover takes seconds): 503
          // with Retry-After, another role being away, not a 504 that blames the function.
          const away = this.#schedulerAway();
          reject(
            new InferxError(
              away ? "unavailable" : "timeout",
              `Cannot call ${this.id}: no worker was free within ${
                Math.round(wait)
              } ms${this.#lastErrorText()}`,
              { retryable: true },
            ),
          );
        }, wait),
      };
      lane.queue.push(waiter);
      caller?.onAbort(() => {
        // Its version's queue, or another's it moved to when the split changed.
        const l = this.#lanes.find((l) => l.queue.includes(waiter));
        if (!l) return; // served already
        l.queue.splice(l.queue.indexOf(waiter), 1);
        clearTimeout(waiter.timer);
        reject(new InferxError("unavailable", `The caller of ${this.id} left the queue`));
      });
      if (onProgress) {
        onProgress("queued");
        if (lane.leaseStage) onProgress(lane.leaseStage);
      }
      this.#scaleOut(lane);
    });
  }

  /**
   * Takes a free slot on another worker of the same version as `podId` now,
   * or undefined; for retrying a request elsewhere without queueing.
   */
  tryAcquireOther(podId: string, tokens = 0): Slot | undefined {
    const version = this.#workers.find((w) => w.podId === podId)?.version ?? this.version;
    const w = this.#workers.find((w) =>
      w.podId !== podId && w.version === version && !w.draining &&
      w.inflight < this.policy.parallel
    );
    return w && this.#take(w, 0, tokens);
  }

  /** Gives a slot back; `failed` drops the worker (it refused the connection). */
  release(slot: Slot, failed = false): void {
    const w = slot.worker;
    w.inflight--;
    w.tokens -= slot.tokens;
    if (failed) {
      this.#drop(w, true);
    } else if (w.inflight === 0) {
      w.idleSince = performance.now();
      if (w.draining || this.#closed) this.#drop(w, false);
    }
    this.#drain();
  }

  /**
   * Returns workers idle past `scalein_timeout`; called periodically. Not
   * those the tokens of their version's calls in flight still call for
   * (`scaleout_policy.inflight_tokens`): calls under way stay on their
   * workers, so the ones leased for them wait idle for the calls after, and
   * given back they would be advised again at the next heartbeat.
   */
  sweep(now = performance.now()): void {
    const idleMs = this.policy.scalein_timeout * 1000;
    for (const w of [...this.#workers]) {
      if (w.inflight !== 0 || now - w.idleSince < idleMs || this.#tokensHold(w.version)) continue;
      this.#drop(w, false, true);
    }
  }

  /**
   * Whether one worker less of `version` would leave more than
   * `inflight_tokens` a worker, counting no more workers than calls (in
   * flight and queued: a call runs on one worker, so one asking for a billion
   * tokens holds no other idle).
   */
  #tokensHold(version: number): boolean {
    const per = this.policy.scaleout_policy.inflight_tokens;
    if (per === undefined) return false;
    let tokens = 0, workers = 0, calls = 0;
    for (const w of this.#workers) {
      if (w.version !== version) continue;
      tokens += w.tokens;
      calls += w.inflight;
      if (!w.draining) workers++;
    }
    calls += this.#lanes.find((l) => l.version === version)?.queue.length ?? 0;
    return tokens > 0 && workersForTokens(tokens, per, calls) >= workers;
  }

  /**
   * The function's newest version, its policy and which versions take calls
   * (default: the newest alone). Queued calls of versions leaving the split
   * go to the others; their workers drain.
   */
  setVersion(version: number, policy: FuncPolicy, split?: readonly VersionShare[]): void {
    this.policy = policy;
    this.version = version;
    const next = lanesOf(split ?? [{ version, percent: 100 }]);
    const kept = new Map(this.#lanes.map((l) => [l.version, l]));
    this.#lanes = next.map((n) => {
      const l = kept.get(n.version);
      kept.delete(n.version);
      return l ? Object.assign(l, { percent: n.percent, serves: undefined }) : n;
    });
    // Out of the leaving lane (whose pending lease may still settle, and must find no one).
    for (const gone of kept.values()) {
      for (const q of gone.queue.splice(0)) this.#pick().queue.push(q);
      if (gone.pendingLeases > 0) this.#leaving.add(gone);
    }
    for (const w of [...this.#workers]) {
      w.draining = w.reclaimed === true || !this.#serving(w.version);
      if (w.draining && w.inflight === 0) this.#drop(w, false);
    }
    this.#drain();
  }

  /** The scheduler asks for a worker back (fair share): no new calls on it, returned when idle. */
  reclaim(podId: string): boolean {
    const w = this.#workers.find((w) => w.podId === podId);
    if (!w) return false;
    w.reclaimed = true;
    w.draining = true;
    if (w.inflight === 0) this.#drop(w, false);
    this.#drain();
    return true;
  }

  /** The scheduler advises leasing `workers` more of `version` (within `max_replica`). */
  advise(version: number, workers: number): void {
    const lane = this.#lane(version);
    if (!lane || this.#closed) return;
    for (let i = 0; i < workers && this.#active(lane) < this.policy.max_replica; i++) {
      this.#lease(lane);
    }
  }

  /** The load of each version taking calls, for heartbeats. */
  load(now = performance.now()): VersionLoad[] {
    return this.#lanes.map((l) => {
      let inflight = 0, inflightTokens = 0, workers = 0;
      for (const w of this.#workers) {
        if (w.version !== l.version) continue;
        inflight += w.inflight;
        inflightTokens += w.tokens;
        if (!w.draining) workers++;
      }
      const waitMs = l.queue.length ? now - l.queue[0].since : 0;
      return {
        version: l.version,
        queued: l.queue.length,
        waitMs,
        inflight,
        inflightTokens,
        workers,
      };
    });
  }

  /**
   * No node could ever hold a worker of `version` of this function (`err`,
   * code `unschedulable`; the function's `Schedulable` condition, which
   * speaks of its newest version): that version's queued calls and its
   * calls that find no free slot are refused at once until it is cleared
   * (`undefined`). Calls a traffic split routes to another version go on.
   */
  setUnschedulable(err: InferxError | undefined, version = this.version): void {
    this.#unschedulable = err && { err, version };
    if (err) {
      this.#lane(version)?.queue.splice(0).forEach((q) => {
        clearTimeout(q.timer);
        q.reject(err);
      });
    } else for (const l of this.#lanes) l.unschedulable = undefined;
  }

  /**
   * The function is gone (or `why`, the gateway stops): refuse waiters and
   * new calls with it, return workers when idle; calls under way go on.
   */
  close(why?: InferxError): void {
    const err = why ?? new InferxError("not_found", `Cannot call ${this.id}: function was removed`);
    this.#closed = err;
    this.#leaseAbort.abort(err);
    for (const l of this.#lanes) {
      for (const q of l.queue.splice(0)) {
        clearTimeout(q.timer);
        q.reject(err);
      }
    }
    for (const w of [...this.#workers]) if (w.inflight === 0) this.#drop(w, false);
  }

  #lastError?: InferxError;
  /** When (`performance.now()`) `#lastError` came, and how long its attempt took to fail (ms). */
  #lastErrorAt = 0;
  #lastErrorTook = 0;

  /**
   * Whether the scheduler is out of reach still: its last answer said so,
   * recently for the time an attempt takes to fail (attempts follow each
   * other 100 ms apart while it is away; an older failure is history, its
   * lease asked again since and waiting on it).
   */
  #schedulerAway(): boolean {
    return this.#lastError?.code === "unavailable" &&
      performance.now() - this.#lastErrorAt < Math.max(AWAY_MS, 2 * this.#lastErrorTook + 100);
  }

  #lastErrorText(): string {
    return this.#lastError ? `; last lease attempt: ${this.#lastError.message}` : "";
  }

  #lane(version: number): Lane | undefined {
    return this.#lanes.find((l) => l.version === version);
  }

  /** Whether some lane's calls go to workers of `version`. */
  #serving(version: number): boolean {
    return this.#lanes.some((l) => servedBy(l) === version);
  }

  /** The version the next call goes to: smooth weighted round-robin over the percents. */
  #pick(): Lane {
    let best = this.#lanes[0];
    let total = 0;
    for (const l of this.#lanes) {
      l.credit += l.percent;
      total += l.percent;
      if (l.credit > best.credit) best = l;
    }
    best.credit -= total;
    return best;
  }

  #freeWorker(version: number): Worker | undefined {
    let best: Worker | undefined;
    for (const w of this.#workers) {
      if (w.draining || w.version !== version || w.inflight >= this.policy.parallel) continue;
      if (!best || w.inflight < best.inflight) best = w;
    }
    return best;
  }

  #take(w: Worker, queuedMs: number, tokens: number): Slot {
    w.inflight++;
    w.tokens += tokens;
    const coldStart = w.coldRequests > 0;
    if (coldStart) w.coldRequests--;
    const resumed = !coldStart && w.resumedRequests > 0;
    if (resumed) w.resumedRequests--;
    return { worker: w, coldStart, resumed, queuedMs, tokens };
  }

  #drain(): void {
    for (const l of this.#lanes) {
      while (l.queue.length) {
        const w = this.#freeWorker(servedBy(l));
        if (!w) break;
        const q = l.queue.shift()!;
        clearTimeout(q.timer);
        q.onProgress?.("ready");
        q.resolve(this.#take(w, performance.now() - q.since, q.tokens));
      }
      if (l.queue.length) this.#scaleOut(l);
    }
  }

  /**
   * Gives `w` back to the scheduler. An idle worker (`idle`: scaled in) the
   * scheduler cannot take back is kept and serves on: the warm path needs no
   * scheduler, and its hand-back is tried again after another
   * `scalein_timeout`. Kept when the scheduler did take it after all, the
   * next heartbeat's list of leases settles it (claimed again, or asked back).
   */
  #drop(w: Worker, failed: boolean, idle = false): void {
    const i = this.#workers.indexOf(w);
    if (i < 0) return;
    this.#workers.splice(i, 1);
    this.#deps.scheduler.returnWorker({ podId: w.podId, gatewayId: this.#deps.gatewayId, failed })
      .catch((err) => {
        log.warn("Cannot return {pod}: {error}", { pod: w.podId, error: String(err) });
        if (!idle || this.#closed || this.#workers.includes(w)) return;
        w.draining = w.reclaimed === true || !this.#serving(w.version);
        if (w.draining) return;
        w.idleSince = performance.now();
        this.#workers.push(w);
        this.#drain();
      });
  }

  /**
   * Leases under way for `lane`: its own, and for the newest version's lane
   * those of lanes whose version left the split, which the scheduler answers
   * with its newest version (their calls moved here; leasing again for them
   * started a second worker for one call).
   */
  #pending(lane: Lane): number {
    let n = lane.pendingLeases;
    if (servedBy(lane) === this.version) { for (const l of this.#leaving) n += l.pendingLeases; }
    return n;
  }

  /** A lease of `lane` settled: a lane that left the split and waits on none is forgotten. */
  #settled(lane: Lane): void {
    lane.pendingLeases--;
    lane.leaseStage = undefined;
    if (lane.pendingLeases === 0) this.#leaving.delete(lane);
  }

  /** Workers that take `lane`'s calls, and leases for it under way. */
  #active(lane: Lane): number {
    const version = servedBy(lane);
    let n = this.#pending(lane);
    for (const w of this.#workers) if (w.version === version && !w.draining) n++;
    return n;
  }

  /** `lane`'s pending lease reached `stage`: its waiters that follow their wait hear it. */
  #stage(lane: Lane, stage: LeaseStage): void {
    if (stage === lane.leaseStage) return;
    lane.leaseStage = stage;
    for (const q of lane.queue) q.onProgress?.(stage);
  }

  /**
   * Leases more workers when the queue calls for them, several at once for a
   * burst (it asked for one at a time: a burst at zero brought its workers up
   * one after another). The calls a lease under way will take (`parallel`
   * each) do not call for another.
   */
  #scaleOut(lane: Lane): void {
    if (this.#closed || lane.queue.length === 0) return;
    if (!this.#lanes.includes(lane)) return; // its version left the split
    const { parallel, max_replica } = this.policy;
    for (let active = this.#active(lane); active < max_replica; active++) {
      const uncovered = lane.queue.length - this.#pending(lane) * parallel;
      if (uncovered <= 0) return;
      const capacity = active * parallel;
      if (active > 0 && uncovered <= this.policy.scaleout_policy.wait_ratio * capacity) return;
      this.#lease(lane);
    }
  }

  /** Asks the scheduler for a worker of `lane`'s version. */
  #lease(lane: Lane): void {
    lane.pendingLeases++;
    const sent = performance.now();
    this.#stage(lane, "placing");
    // Ask the scheduler to give up a little before the queue does, so its
    // reason (e.g. no node has the vRAM) reaches the caller's 504.
    const left = lane.queue.length
      ? Math.max(...lane.queue.map((q) => q.deadline)) - Date.now()
      : this.policy.queue_timeout * 1000;
    const waitMs = Math.max(1, left > 200 ? left - 100 : left);
    const progress = lane.queue.some((q) => q.onProgress)
      ? (stage: LeaseStage) => this.#stage(lane, stage)
      : undefined;
    this.#deps.scheduler.leaseWorker(
      {
        tenant: this.tenant,
        namespace: this.namespace,
        func: this.name,
        gatewayId: this.#deps.gatewayId,
        timeoutMs: waitMs,
        version: lane.version,
      },
      this.#leaseAbort.signal,
      progress,
    ).then((lease) => {
      this.#settled(lane);
      this.#lastError = undefined;
      // The scheduler gave its newest version: the lane's no longer serves there (this
      // gateway has not heard yet). The lane's calls take such workers rather than lease
      // again and again (each answered so), until the split changes.
      if (lease.version !== lane.version && this.#lanes.includes(lane)) lane.serves = lease.version;
      let waiting = 0;
      for (const l of this.#lanes) if (servedBy(l) === lease.version) waiting += l.queue.length;
      const w: Worker = {
        podId: lease.podId,
        endpoint: lease.endpoint,
        version: lease.version,
        inflight: 0,
        tokens: 0,
        idleSince: performance.now(),
        draining: !this.#serving(lease.version),
        coldRequests: lease.coldStart ? Math.min(waiting, this.policy.parallel) : 0,
        resumedRequests: lease.resumed ? Math.min(waiting, this.policy.parallel) : 0,
      };
      this.#workers.push(w);
      if (this.#closed) return this.#drop(w, false);
      if (w.draining) this.#drop(w, false); // the calls it was counted for lease again
      this.#drain();
    }, (err: Error) => {
      this.#settled(lane);
      const e = err instanceof InferxError ? err : new InferxError("unavailable", err.message);
      this.#lastError = e;
      this.#lastErrorAt = performance.now();
      this.#lastErrorTook = this.#lastErrorAt - sent;
      // A lane whose version left the split: the calls it was counted for lease again.
      if (!this.#lanes.includes(lane)) return void (this.#closed || this.#drain());
      if (e.code === "unschedulable") {
        // This version's: another version of a split may well fit.
        lane.unschedulable = e;
        lane.unschedulableUntil = Math.max(
          lane.unschedulableUntil,
          performance.now() + (this.#deps.unschedulableRecheckMs ?? UNSCHEDULABLE_RECHECK_MS),
        );
      }
      if (
        e.code === "worker_failed" || e.code === "not_found" || e.code === "quota_exceeded" ||
        e.code === "unschedulable" || refusedStart(e)
      ) {
        for (const q of lane.queue.splice(0)) {
          clearTimeout(q.timer);
          q.reject(e);
        }
        return;
      }
      if (!this.#closed) setTimeout(() => this.#scaleOut(lane), 100);
    });
  }
}

/**
 * How recent (ms) a lease's failure to reach the scheduler must be for a
 * call's timeout to blame it, at least: three of the 100 ms between attempts
 * while it is away (more when attempts are slow to fail).
 */
const AWAY_MS = 300;

/**
 * Whether `e` is the scheduler's answer that a start could not be made for a
 * reason other than the worker (the store refused the pod: out of space), with
 * when it tries again; an `unavailable` without it is a scheduler out of
 * reach, which the lane asks again.
 */
function refusedStart(e: InferxError): boolean {
  return e.code === "unavailable" && e.details?.retry_after_s !== undefined;
}

/** The version whose workers take `lane`'s calls. */
function servedBy(lane: Lane): number {
  return lane.serves ?? lane.version;
}

function lanesOf(split: readonly VersionShare[]): Lane[] {
  return split.map((s) => ({
    version: s.version,
    percent: s.percent,
    queue: [],
    pendingLeases: 0,
    credit: 0,
    unschedulableUntil: 0,
  }));
}
