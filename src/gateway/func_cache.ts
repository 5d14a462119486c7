/**
 * The gateway's in-memory view of functions and policies, kept current by
 * informers, and the function agents built from it. The warm path reads only
 * this cache.
 *
 * @module
 */
import { InferxError, ValidationError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { funcId } from "../model/keys.ts";
import { findCondition, type FunctionStatus, SCHEDULABLE } from "../model/metadata.ts";
import {
  decodeStoredUserObject,
  type FuncPolicy,
  type FunctionSpec,
  resolvePolicy,
  type TenantQuota,
  tenantQuota,
} from "../model/schemas.ts";
import { type FunctionObject, trafficSplit, type VersionShare } from "../model/versions.ts";
import { type Informer, startInformer } from "../rpc/informer.ts";
import type { FuncLoad, GatewayAdvice, MetaClient } from "../rpc/types.ts";
import { FuncAgent, type FuncAgentDeps } from "./func_agent.ts";
import { CallLimiter } from "./call_limits.ts";

const log = logger("gateway", "cache");

/** How long a call of a function this gateway has not seen yet waits for its watch (ms). */
const CATCH_UP_MS = 2000;
/** Functions looked up in the store at once at most; past it, a miss is a miss. */
const MAX_LOOKUPS = 64;
/**
 * Store lookups a gateway starts per second at most (and in a burst): calls
 * of names that exist nowhere must not become a load on the store.
 */
const LOOKUPS_PER_S = 50;

type Entry = FunctionObject & {
  /** Set while the function's `Schedulable` condition is `False`. */
  unschedulable?: InferxError;
};

/** Functions, policies and agents of one gateway, and the tenants' quotas. */
export class FuncCache {
  /** Set once the gateway stops: what calls are refused with (see {@linkcode drain}). */
  #draining?: InferxError;
  #stopping = new AbortController();
  #funcs = new Map<string, Entry>();
  #policies = new Map<string, FuncPolicy>();
  /** Each tenant's quota (those with none are absent). */
  #quotas = new Map<string, TenantQuota>();
  #agents = new Map<string, FuncAgent>();
  #deps: FuncAgentDeps;
  #informers: Informer[] = [];
  #meta?: MetaClient;
  /** Store lookups after a miss, by function id: callers of one function share one. */
  #lookups = new Map<string, Promise<FuncAgent | undefined>>();
  /** Calls waiting for the watch to bring a function at a revision, by function id. */
  #waiting = new Map<string, Set<{ revision: number; done: (caughtUp: boolean) => void }>>();
  /** The revision of the watch's removal of a function with a lookup in flight, by id. */
  #removed = new Map<string, number>();
  /** Lookups that may start now (a token bucket, `LOOKUPS_PER_S`). */
  #budget = LOOKUPS_PER_S;
  #budgetAt = 0;
  /** The tenants' call rates (`max_calls_per_s`) at this gateway. */
  readonly limits: CallLimiter = new CallLimiter((tenant) => this.tenantQuota(tenant));

  constructor(deps: FuncAgentDeps) {
    this.#deps = deps;
  }

  /** Follows functions and policies through `meta`. */
  async start(meta: MetaClient): Promise<void> {
    this.#meta = meta;
    this.#informers.push(
      await startInformer(meta, "funcpolicy", {
        upsert: (rec) => {
          const o = decodeStoredUserObject(rec.value, rec.revision);
          if (o.type !== "funcpolicy") return;
          this.#policies.set(funcId(o.tenant, o.namespace, o.name), o.spec);
          this.#refreshAgents(o.tenant, o.namespace);
        },
        remove: (ref) => {
          this.#policies.delete(funcId(ref.tenant, ref.namespace, ref.name));
          this.#refreshAgents(ref.tenant, ref.namespace);
        },
      }),
      await startInformer(meta, "tenant", {
        upsert: (rec) => {
          const o = decodeStoredUserObject(rec.value, rec.revision);
          if (o.type !== "tenant") return;
          this.#quotas.set(o.name, tenantQuota(o.spec as Record<string, unknown>));
        },
        remove: (ref) => void this.#quotas.delete(ref.name),
      }),
      await startInformer(meta, "function", {
        upsert: (rec) => {
          const o = decodeStoredUserObject(rec.value, rec.revision);
          if (o.type !== "function") return;
          const id = funcId(o.tenant, o.namespace, o.name);
          const unschedulable = unschedulableError(id, o.status);
          this.#funcs.set(id, { ...o, unschedulable });
          const policy = this.policyOf(id)!;
          const agent = this.#agents.get(id);
          agent?.setVersion(o.version, policy, trafficSplit(o, policy));
          agent?.setUnschedulable(unschedulable, o.version);
          this.#wake(id, o.revision);
        },
        remove: (ref, revision) => {
          const id = funcId(ref.tenant, ref.namespace, ref.name);
          const had = this.#funcs.delete(id);
          this.#agents.get(id)?.close();
          this.#agents.delete(id);
          // A lookup in flight must know the watch went past its revision: the function is gone.
          if (this.#lookups.has(id)) this.#removed.set(id, revision);
          this.#wake(id, revision);
          if (had) { for (const f of this.#onRemoved) f(id); }
        },
      }),
    );
  }

  /**
   * Aborted when the gateway begins to stop ({@linkcode drain}): what holds a
   * connection open for good (the dashboard's event streams) ends then, so
   * as not to hold the stop for its whole drain.
   */
  get stopping(): AbortSignal {
    return this.#stopping.signal;
  }

  /**
   * The gateway stops: calls waiting for a worker, and new ones, are refused
   * with `why` (never sent to one); calls under way go on, and each worker
   * is returned once it has none.
   */
  drain(why: InferxError): void {
    this.#draining = why;
    this.#stopping.abort(why);
    for (const a of this.#agents.values()) a.close(why);
  }

  /** Stops following and returns every leased worker. */
  stop(): void {
    for (const i of this.#informers) i.stop();
    for (const a of this.#agents.values()) a.close(this.#draining);
    // Calls still waiting for the watch get their answer now: it will not come.
    for (const waiters of [...this.#waiting.values()]) for (const w of waiters) w.done(false);
  }

  /** Tenant `tenant`'s quota as stored (empty: none set, or no such tenant). */
  tenantQuota(tenant: string): TenantQuota {
    return this.#quotas.get(tenant) ?? {};
  }

  /** The spec of a function, or undefined. */
  spec(id: string): FunctionSpec | undefined {
    return this.#funcs.get(id)?.spec;
  }

  /** The policy in force for a function, or undefined when it does not exist. */
  policyOf(id: string): FuncPolicy | undefined {
    const f = this.#funcs.get(id);
    return f &&
      resolvePolicy(f.spec, (name) => this.#policies.get(funcId(f.tenant, f.namespace, name)));
  }

  /** The agent of a function (made on first use), or undefined when it does not exist. */
  agent(tenant: string, namespace: string, name: string): FuncAgent | undefined {
    const id = funcId(tenant, namespace, name);
    let a = this.#agents.get(id);
    if (a) return a;
    const f = this.#funcs.get(id);
    if (!f) return undefined;
    const policy = this.policyOf(id)!;
    a = new FuncAgent(f, policy, this.#deps, trafficSplit(f, policy));
    if (this.#draining) a.close(this.#draining);
    if (f.unschedulable) a.setUnschedulable(f.unschedulable, f.version);
    this.#agents.set(id, a);
    return a;
  }

  /**
   * The agent of a function, looked up in the store when this gateway has
   * not seen it: a function created a moment ago is called before the watch
   * brings it here. The store says whether it exists and at which revision;
   * the call then waits for the watch to bring that revision (at most
   * `waitMs`), so the cache stays the watch's alone and a function deleted
   * meanwhile is not brought back. Resolves undefined when the function does
   * not exist, and when the cache's answer must do: the store cannot be read,
   * or lookups are over their rate (`LOOKUPS_PER_S`, so that calls of names
   * that exist nowhere do not load the store); rejects `unavailable` when
   * the watch does not bring an existing function in time.
   */
  lookup(
    tenant: string,
    namespace: string,
    name: string,
    waitMs = CATCH_UP_MS,
  ): FuncAgent | undefined | Promise<FuncAgent | undefined> {
    const known = this.agent(tenant, namespace, name);
    if (known || !this.#meta) return known;
    const id = funcId(tenant, namespace, name);
    let p = this.#lookups.get(id);
    if (p) return p;
    if (this.#lookups.size >= MAX_LOOKUPS || !this.#spend()) return undefined;
    p = this.#lookup(this.#meta, tenant, namespace, name, waitMs)
      .finally(() => {
        this.#lookups.delete(id);
        this.#removed.delete(id);
      });
    this.#lookups.set(id, p);
    return p;
  }

  async #lookup(
    meta: MetaClient,
    tenant: string,
    namespace: string,
    name: string,
    waitMs: number,
  ): Promise<FuncAgent | undefined> {
    const id = funcId(tenant, namespace, name);
    let rec;
    try {
      rec = await meta.get({ type: "function", tenant, namespace, name });
    } catch (err) {
      // The cache's answer stands, as it did before there were lookups.
      log.debug("Cannot look up function {id}: {error}", {
        id,
        error: (err as Error).message,
      });
      return undefined;
    }
    if (!rec) return undefined;
    // How far the watch has come for this function: its entry, or its removal since the lookup began.
    const seen = Math.max(this.#funcs.get(id)?.revision ?? -1, this.#removed.get(id) ?? -1);
    if (seen < rec.revision) {
      const caughtUp = await new Promise<boolean>((resolve) => {
        const waiters = this.#waiting.get(id) ?? new Set();
        this.#waiting.set(id, waiters);
        const w = {
          revision: rec.revision,
          done: (caughtUp: boolean) => {
            clearTimeout(timer);
            waiters.delete(w);
            if (!waiters.size && this.#waiting.get(id) === waiters) this.#waiting.delete(id);
            resolve(caughtUp);
          },
        };
        const timer = setTimeout(() => w.done(false), waitMs);
        waiters.add(w);
      });
      if (!caughtUp) {
        throw new InferxError(
          "unavailable",
          `Function ${id} exists, but this gateway has not received it yet: try again`,
          { retryable: true },
        );
      }
    }
    return this.agent(tenant, namespace, name);
  }

  /** Takes one lookup from the budget; false when it is spent. */
  #spend(now = performance.now()): boolean {
    this.#budget = Math.min(
      LOOKUPS_PER_S,
      this.#budget + (now - this.#budgetAt) * LOOKUPS_PER_S / 1000,
    );
    this.#budgetAt = now;
    if (this.#budget < 1) return false;
    this.#budget--;
    return true;
  }

  /** The watch brought function `id` (or its removal) at `revision`. */
  #wake(id: string, revision: number): void {
    for (const w of [...this.#waiting.get(id) ?? []]) if (w.revision <= revision) w.done(true);
  }

  /** Which versions of a function take calls and their shares, or undefined when it does not exist. */
  split(id: string): VersionShare[] | undefined {
    const f = this.#funcs.get(id);
    return f && trafficSplit(f, this.policyOf(id)!);
  }

  #onRemoved: ((id: string) => void)[] = [];

  /** Calls `f` with the id of each function the watch removes from now on. */
  onRemoved(f: (id: string) => void): void {
    this.#onRemoved.push(f);
  }

  /** `tenant/namespace/name` of every function, sorted. */
  functionIds(): string[] {
    return [...this.#funcs.keys()].sort();
  }

  /** When function `id` was created (epoch ms), when known. */
  createdAt(id: string): number | undefined {
    return this.#funcs.get(id)?.createdAt;
  }

  /**
   * The function an OpenAI-style `model` names: `tenant/namespace/name`, or a
   * bare name that only one function `visible` to the caller has (400
   * `invalid`, naming them, when several have it).
   */
  resolveModel(
    model: string,
    visible: (tenant: string, namespace: string) => boolean = () => true,
  ): { tenant: string; namespace: string; func: string } | undefined {
    const parts = model.split("/");
    if (parts.length === 3) {
      const [tenant, namespace, func] = parts;
      return this.#funcs.has(model) ? { tenant, namespace, func } : undefined;
    }
    if (parts.length !== 1) return undefined;
    const matches = [...this.#funcs.values()].filter((f) =>
      f.name === model && visible(f.tenant, f.namespace)
    );
    if (matches.length > 1) {
      const ids = matches.map((f) => funcId(f.tenant, f.namespace, f.name)).sort();
      throw new ValidationError(
        `Invalid request: model: ${model} names ${ids.length} functions (${
          ids.slice(0, 5).join(", ")
        }${ids.length > 5 ? ", ..." : ""}): use tenant/namespace/name`,
        "model",
      );
    }
    if (!matches.length) return undefined;
    const f = matches[0];
    return { tenant: f.tenant, namespace: f.namespace, func: f.name };
  }

  /** Whether function `id` (`tenant/namespace/name`) exists, as far as this gateway has heard. */
  has(id: string): boolean {
    return this.#funcs.has(id);
  }

  /** Pod ids of every worker leased by this gateway, for heartbeats. */
  leasedPods(): string[] {
    const ids: string[] = [];
    for (const a of this.#agents.values()) for (const w of a.workers) ids.push(w.podId);
    return ids;
  }

  /** Every agent, for the scale-in sweep. */
  agents(): IterableIterator<FuncAgent> {
    return this.#agents.values();
  }

  /** The load of every function version with calls or workers here, for heartbeats. */
  load(): FuncLoad[] {
    const out: FuncLoad[] = [];
    const now = performance.now();
    for (const a of this.#agents.values()) {
      for (const l of a.load(now)) {
        if (!l.queued && !l.inflight && !l.workers) continue;
        out.push({ tenant: a.tenant, namespace: a.namespace, func: a.name, ...l });
      }
    }
    return out;
  }

  /**
   * Acts on the scheduler's answer to a heartbeat: workers to give back,
   * versions to scale out, this gateway's shares of the call rates.
   */
  advise(advice: GatewayAdvice): void {
    this.limits.advise(advice.rates ?? [], advice.gateways);
    for (const podId of advice.reclaim) {
      for (const a of this.#agents.values()) if (a.reclaim(podId)) break;
    }
    for (const s of advice.scaleOut) {
      this.#agents.get(funcId(s.tenant, s.namespace, s.func))?.advise(s.version, s.workers);
    }
  }

  #refreshAgents(tenant: string, namespace: string): void {
    for (const a of this.#agents.values()) {
      if (a.tenant !== tenant || a.namespace !== namespace) continue;
      const f = this.#funcs.get(a.id);
      const policy = this.policyOf(a.id);
      if (f && policy) a.setVersion(a.version, policy, trafficSplit(f, policy));
      else log.warn("Function {id} has no policy in force", { id: a.id });
    }
  }
}

/** The error calls get while a function's `Schedulable` condition is `False`. */
function unschedulableError(id: string, status?: FunctionStatus): InferxError | undefined {
  const c = findCondition(status, SCHEDULABLE);
  if (c?.status !== "False") return undefined;
  return new InferxError("unschedulable", `Cannot call ${id}: ${c.message}`, {
    details: { reason: c.reason },
  });
}
