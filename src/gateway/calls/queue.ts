/**
 * The durable queue of asynchronous calls, shared by every gateway through
 * the state service. A call is stored before its `202` goes out; from then
 * on any gateway may run it, and exactly one does at a time:
 *
 * - **Claim.** A gateway runs a call only while it holds the claim: its id
 *   in the record's `owner` and a `leaseUntil` deadline, written by a
 *   compare-and-swap on the record's revision, so of two gateways claiming
 *   at once one wins. The owner renews the lease (every third of it) while
 *   it runs the call or delivers its callback. A claim whose deadline has
 *   passed (its gateway was killed, or lost the store) is taken over: the
 *   attempt it was running is recorded as lost and the call runs again. A
 *   gateway that cannot renew lets the call go (its worker request aborted)
 *   a sixth of the lease before its claim runs out, so no call runs on two
 *   gateways at once; until then its writes are tried again.
 * - **Attempts.** Every attempt is written to the record (`running`, its
 *   number, this gateway) before the worker sees the request, so each
 *   attempt runs at most once. A worker failure (no worker, an unreachable
 *   or failing worker, 502/503/504) is tried again after a doubling backoff,
 *   up to `maxAttempts` tries; the claim is let go meanwhile, so the next
 *   attempt may run on any gateway. Each attempt is also a row in the
 *   request audit (with the call's id and attempt number).
 * - **Runs** go through the same `forward()` as synchronous calls and are
 *   recorded by the same `CallRecord`. A gateway runs at most
 *   `parallel × max_replica` calls of a function at once (what its workers
 *   can take); the rest wait in the store, where any gateway may claim them.
 * - **Results** are kept until `expiresAt` (`INFERX_CALL_TTL_S` after the
 *   call ended), then deleted by whichever gateway sees it first. A result
 *   over `maxBytes` is not kept: the call fails and says so.
 * - **Bodies** over {@linkcode CALL_INLINE_MAX} are kept apart from the
 *   record, each written once ({@linkcode callBodyRef}): the request's before
 *   the record (it goes when the call ends), the answer's before the record
 *   says the call ended. The record, rewritten at each renewal and sent to
 *   every gateway's watch, then holds only their sizes; the state service
 *   deletes a call's bodies with its record. Smaller bodies ride in the
 *   record.
 * - **Cancellation** marks the record `cancelled`; the gateway running it
 *   hears it (at once when the cancel came through it, else through its
 *   watch or its next lease renewal) and aborts the upstream request.
 *
 * Each gateway follows the records through a watch and keeps in memory only
 * what it needs to schedule (no bodies).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  AlreadyExistsError,
  type ErrorCode,
  InferxError,
  NotFoundError,
  toInferxError,
} from "../../common/errors.ts";
import { isConflict } from "../../common/retry.ts";
import { logger } from "../../common/log.ts";
import { nextTurn } from "../../common/clock.ts";
import {
  CALL_INLINE_MAX,
  type CallBodyPart,
  callBodyRef,
  callId,
  type CallRecord,
  type CallStatus,
  decodeCall,
  decodeCallBody,
  FINAL_STATUSES,
  parseCallId,
} from "../../model/call.ts";
import { type Informer, startInformer } from "../../rpc/informer.ts";
import type { MetaClient, MetaRecord, ObjectRef } from "../../rpc/types.ts";
import { HOP_BY_HOP } from "../http1/fields.ts";
import { CallRecord as Observed, type ObserveOptions } from "../middleware/observe.ts";
import {
  type CallAnswer,
  CallerGone,
  type CallInput,
  cutShortCode,
  forward,
  type ProxyDeps,
  STOPPING,
  workerSlotOf,
} from "../proxy.ts";
import { signalSource } from "../routes/_call.ts";
import { type CallbackSender, tenantSecret, UnresolvedHost } from "./callback.ts";
import { callViewText } from "./view.ts";
import type { JsonProbe } from "../json_probe.ts";

const log = logger("gateway", "calls");

/** Settings of a {@linkcode CallQueue}. */
export interface CallQueueOptions {
  /** This gateway's id: the owner of the calls it claims. */
  gatewayId: string;
  /** How long a call's record and result are kept after it ends (ms). @default 24 h */
  ttlMs?: number;
  /** How long a claim holds without renewal (ms). @default 15000 */
  leaseMs?: number;
  /** Tries per call, the first included. @default 3 */
  maxAttempts?: number;
  /** The largest request body and result of a call (bytes). @default 1 MiB */
  maxBytes?: number;
  /** Pause before the second try (ms); it doubles with each try. @default 1000 */
  backoffMs?: number;
  /**
   * Calls of one tenant accepted and not ended, where its quota sets no
   * `max_open_calls`. @default 10000
   */
  openMax?: number;
  /**
   * Their requests together (bodies, headers and paths; bytes), where no
   * `max_open_call_mb`. @default 256 MiB
   */
  openMaxBytes?: number;
  /** Ended calls of one tenant kept until they expire, where no `max_kept_calls`. @default 100000 */
  keptMax?: number;
  /** Their answers together (bytes), where no `max_kept_call_mb`. @default 1 GiB */
  keptMaxBytes?: number;
  /** Tries to deliver a callback. @default 5 */
  deliveryTries?: number;
  /** Sends callbacks. @default a sender that allows public addresses only */
  callbacks: CallbackSender;
  /** Epoch milliseconds. @default Date.now */
  now?: () => number;
}

/** What a {@linkcode CallQueue} needs from the gateway. */
export interface CallQueueDeps extends ProxyDeps {
  meta: MetaClient;
  observe: ObserveOptions;
  /** The thread that reads large JSON (a callback's large answer is checked there). */
  probe?: JsonProbe;
}

/**
 * What the queue keeps of every stored call (no bodies): enough to list
 * calls (`GET /calls`) without reading their records.
 */
export interface ListedCall {
  ref: ObjectRef;
  revision: number;
  /** `tenant/namespace/name`. */
  func: string;
  principal: string;
  status: CallStatus;
  acceptedAt: number;
  expiresAt: number;
  /**
   * The order this gateway learned of it (its watch brings calls in the order
   * they were stored): calls accepted in one millisecond still list in order
   * (those stored before the gateway started come in key order, which is
   * none).
   */
  seq: number;
}

/** What the queue keeps of a call that still needs work. */
interface Open extends ListedCall {
  owner?: string;
  leaseUntil?: number;
  notBefore?: number;
  /** What its request holds (body, headers, path), counted against its tenant until it ends. */
  bytes: number;
}

/** What the queue keeps of an ended call: what it lists, and the bytes its answer holds. */
interface Done extends ListedCall {
  bytes: number;
}

/** What some of a tenant's calls hold: how many, and their bytes. */
interface Held {
  calls: number;
  bytes: number;
}

/** A call this gateway holds the claim of. */
class Claim {
  rec: CallRecord;
  revision: number;
  readonly ref: ObjectRef;
  readonly abort = new AbortController();
  /** Counts against the function's limit (it runs, or may run, an attempt). */
  counted = false;
  /** Writes to the record, one at a time. */
  lock: Promise<unknown> = Promise.resolve();
  /** Set when another gateway took the claim: no more writes. */
  lost = false;
  /**
   * Set when the claim ran out unrenewed (the store took no writes): an
   * attempt's outcome in hand may still be stored (`CallQueue.#settleLapsed`).
   */
  lapsed = false;
  /**
   * Fires when this gateway lets the claim go (lost, run out, handed back):
   * a callback try under way is broken off. (`abort` also fires for a cancel,
   * which ends the worker's request, not the claim: its callback still goes.)
   */
  readonly release = new AbortController();
  /** The request body, once read from the store (null: the call has none). */
  body?: Uint8Array | null;
  /** The answer's body, once stored or read. */
  result?: Uint8Array;
  /** The record has ended (its request body dropped by whoever ended it). */
  ended: boolean;
  /** Fires when the claim the store confirmed runs out (`#hold`). */
  deadline?: ReturnType<typeof setTimeout>;
  /** Holds one of the gateway's places for callbacks tried at once (`CallQueue.#deliveries`). */
  delivers = false;

  constructor(rec: CallRecord, revision: number) {
    this.rec = rec;
    this.revision = revision;
    this.ref = refOf(rec);
    this.ended = FINAL_STATUSES.has(rec.status);
  }
}

/** The claim went to another gateway (or the record went away, or ran out unrenewed). */
class LostClaim extends Error {}

/** A store failure that may pass: anything but a refusal of what was written. */
function transient(err: unknown): boolean {
  return !(err instanceof InferxError) || err.code === "unavailable" || err.code === "timeout" ||
    err.code === "internal";
}

/** Why a call is tried again: no worker, or a worker that failed. */
const RETRY_CODES: ReadonlySet<string> = new Set([
  "unavailable",
  "worker_failed",
  "timeout",
  "queue_full",
  "unschedulable",
  // The tenant at its replica or GPU quota (its other calls hold them): clears as they end.
  "quota_exceeded",
]);
const RETRY_STATUSES: ReadonlySet<number> = new Set([502, 503, 504]);
/** An attempt this gateway broke off because it was stopping: it does not count against `maxAttempts`. */
const STOPPED = "gateway_stopped";
/**
 * Why a run's attempt was broken off (its abort signal's reason), as its
 * request audit says: the gateway stopping, its claim on the call lost, or
 * the call cancelled.
 */
const LOST = "gateway_lost";
const CANCELLED = "cancelled";

/** Records in `rec` why `signal` broke its attempt off. */
function brokenOff(rec: Observed, signal: AbortSignal): void {
  const why = signal.reason;
  if (why === STOPPED || why === LOST) rec.stopped(why);
  else rec.callerGone(CANCELLED);
}
/**
 * Callbacks of ended calls a gateway takes on at once, and of them one
 * tenant's: a receiver that hangs holds a delivery a minute (five tries of
 * 10 s), and thousands of calls cancelled at once with a callback would
 * otherwise hold as many connections, and every other tenant's callbacks
 * behind them.
 */
const MAX_DELIVERIES = 64;
const MAX_TENANT_DELIVERIES = 16;
/** Expired calls deleted at once, between turns of the event loop. */
const EXPIRY_BATCH = 100;

/** Attempts that count against `maxAttempts`: all but those a stopping gateway broke off. */
function countedAttempts(r: CallRecord): number {
  let n = 0;
  for (const a of r.attempts) if (a.error?.code !== STOPPED) n++;
  return n;
}
/** Result headers not kept: framing, and what no longer describes the stored body. */
const NOT_KEPT: ReadonlySet<string> = new Set([...HOP_BY_HOP, "content-length"]);

/** The store reference of a call. */
export function refOf(c: { tenant: string; namespace: string; id: string }): ObjectRef {
  return { type: "call", tenant: c.tenant, namespace: c.namespace, name: parseCallId(c.id).key };
}

/** The durable queue and runner of asynchronous calls in one gateway. */
export class CallQueue {
  readonly #deps: CallQueueDeps;
  readonly #self: string;
  readonly ttlMs: number;
  readonly leaseMs: number;
  readonly maxAttempts: number;
  readonly maxBytes: number;
  readonly #backoffMs: number;
  readonly #deliveryTries: number;
  readonly callbacks: CallbackSender;
  readonly #now: () => number;
  readonly #openMax: number;
  readonly #openMaxBytes: number;
  readonly #keptMax: number;
  readonly #keptMaxBytes: number;
  /** Calls that need work (queued, running, or a callback to deliver), by id. */
  #open = new Map<string, Open>();
  /**
   * The calls of `#open` not ended, by function, each function's oldest
   * first: a pass over the queue stops at a function's first call it has no
   * room for, rather than walking every call waiting behind it.
   */
  #waiting = new Map<string, Map<string, Open>>();
  /** The calls of `#open` that ended, with work left (a callback, an attempt to close). */
  #endedOpen = new Map<string, Open>();
  /**
   * Calls being stored by `accept`, by id: true once the watch told of the
   * record's deletion meanwhile (it is then not indexed when its create
   * returns: nothing would take it out again).
   */
  #accepting = new Map<string, boolean>();
  /** What each tenant's calls not ended hold (those in `#open`, and accepts under way). */
  #held = new Map<string, Held>();
  /** Ended calls, by id (when each record goes). */
  #done = new Map<string, Done>();
  /** What each tenant's ended calls kept (`#done`) hold. */
  #kept = new Map<string, Held>();
  /** Calls this gateway holds the claim of, by id. */
  #claims = new Map<string, Claim>();
  /** Calls this gateway is claiming now. */
  #claiming = new Set<string>();
  /** Claims counted against each function's limit. */
  #active = new Map<string, number>();
  /** Per function: room taken for calls being claimed or accepted, not running yet. */
  #reserved = new Map<string, number>();
  #runs = new Set<Promise<void>>();
  #informer?: Informer;
  #timer?: ReturnType<typeof setInterval>;
  #kicked = false;
  #stopped = false;
  /** Fires at the stop: wakes what waits to write again. */
  #halt = new AbortController();
  /** Timers of calls whose store did not confirm them (`#confirm`). */
  #confirming = new Set<ReturnType<typeof setTimeout>>();
  /** The earliest `expiresAt` in `#done`. */
  #nextExpiry = Infinity;
  /** An expiry pass runs. */
  #expiring = false;
  /** The last `ListedCall.seq` given. */
  #seq = 0;

  constructor(deps: CallQueueDeps, options: CallQueueOptions) {
    this.#deps = deps;
    this.#self = options.gatewayId;
    this.ttlMs = options.ttlMs ?? 86_400_000;
    this.leaseMs = options.leaseMs ?? 15_000;
    this.maxAttempts = options.maxAttempts ?? 3;
    this.maxBytes = options.maxBytes ?? 1024 * 1024;
    this.#backoffMs = options.backoffMs ?? 1000;
    this.#deliveryTries = options.deliveryTries ?? 5;
    this.callbacks = options.callbacks;
    this.#now = options.now ?? Date.now;
    this.#openMax = options.openMax ?? 10_000;
    this.#openMaxBytes = options.openMaxBytes ?? 256 * 1024 * 1024;
    this.#keptMax = options.keptMax ?? 100_000;
    this.#keptMaxBytes = options.keptMaxBytes ?? 1024 * 1024 * 1024;
  }

  /** Follows the stored calls and starts taking the ones that need a gateway. */
  async start(): Promise<void> {
    this.#informer = await startInformer(this.#deps.meta, "call", {
      upsert: (r) => this.#seen(r),
      remove: (ref) => {
        const id = callId(ref.tenant, ref.namespace, ref.name);
        if (this.#accepting.has(id)) this.#accepting.set(id, true);
        this.#setOpen(id, undefined);
        this.#setDone(id, undefined);
        // Deleted (with its namespace, say) while this gateway works on it: its attempt and its
        // callback's tries stop now, not at the next write that finds it gone.
        const mine = this.#claims.get(id);
        if (mine && !mine.lost) {
          mine.lost = true;
          mine.abort.abort(LOST);
          mine.release.abort();
        }
      },
    });
    // The store lists them by key, which is random: oldest first from here on (new calls come
    // in order, and a call keeps its place while it waits again).
    const sorted = [...this.#open].sort(([, a], [, b]) => a.acceptedAt - b.acceptedAt);
    this.#open = new Map();
    this.#waiting = new Map();
    this.#endedOpen = new Map();
    for (const [id, e] of sorted) (this.#open.set(id, e), this.#openIndex(id, e, undefined));
    const every = Math.max(50, Math.min(1000, this.leaseMs / 4));
    this.#timer = setInterval(() => this.#tick(), every);
    this.#kick();
  }

  /**
   * Stops taking calls and lets the running ones finish for `graceMs`; the
   * rest are aborted and handed back (their attempt recorded as stopped).
   */
  async stop(graceMs = 2000): Promise<void> {
    this.#stopped = true;
    this.#halt.abort();
    this.#informer?.stop();
    clearInterval(this.#timer);
    for (const t of this.#confirming) clearTimeout(t);
    const settled = async () => {
      if (!this.#runs.size) return;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.all(this.#runs),
        new Promise((r) => timer = setTimeout(r, graceMs)),
      ]);
      clearTimeout(timer);
    };
    await settled();
    for (const c of this.#claims.values()) (c.abort.abort(STOPPED), c.release.abort());
    // Handing back writes their attempts to the store; one that cannot be reached (its state
    // service down) must not hold the gateway's stop for ever: the claims lapse by themselves.
    await settled();
  }

  /** Calls this gateway is working on now. */
  get claimed(): number {
    return this.#claims.size;
  }

  /** Functions this gateway counts calls running of (none kept once their calls ended). */
  get functionsCounted(): number {
    return this.#active.size;
  }

  /**
   * Stores `rec` and, when this gateway has room for another call of the
   * function, claims it and starts its first attempt at once (`running`);
   * else it waits `queued` for any gateway to claim. Resolves once the
   * record is stored: then the call survives this gateway.
   */
  async accept(rec: CallRecord, body?: Uint8Array): Promise<void> {
    const bytes = requestBytes({ ...rec, bodyBytes: body?.byteLength ?? 0 });
    this.#admit(rec.tenant, bytes);
    // Held while it is stored, so that accepts at once cannot pass the quota together.
    this.#count(rec.tenant, 1, bytes);
    const room = !this.#stopped && this.#hasRoom(funcOf(rec));
    const unreserve = room ? this.#reserve(funcOf(rec)) : undefined;
    this.#accepting.set(rec.id, false);
    try {
      // With room, the record is stored with its first attempt begun: one write fewer.
      if (room) this.#startAttempt(rec);
      const ref = refOf(rec);
      const apart = body !== undefined && body.byteLength > CALL_INLINE_MAX;
      if (apart) {
        rec.bodyBytes = body.byteLength;
        await this.#putBody(ref, "request", body);
      } else if (body?.byteLength) rec.body = Buffer.from(body).toString("base64");
      let created;
      try {
        created = await this.#deps.meta.create({ ...ref, object: rec });
      } catch (err) {
        const e = toInferxError(err);
        // A store out of reach may yet apply a write it was sent (etcd resumed), and one whose
        // disk failed its sync has it committed: the call may run. Told so, with its id, rather
        // than asked to send it again (it would run twice); its body stays for it. A write the
        // store refused whole (a full disk) stored nothing: to be sent again.
        if ((e.code === "unavailable" || e.code === "timeout") && !e.details?.not_written) {
          this.#confirm(ref, room ? body ?? null : undefined, apart);
          throw mayBeStored(rec.id, e);
        }
        if (apart) await this.#dropBody(ref, "request");
        throw err;
      }
      const claim = new Claim(rec, created.revision);
      claim.body = body ?? null;
      if (room) this.#begin(claim);
      // Listed from now on, not only once the watch brings it (unless the watch told of its
      // deletion first: a namespace deleted meanwhile, say).
      if (!this.#accepting.get(rec.id)) this.#index(rec, created.revision);
    } finally {
      this.#accepting.delete(rec.id);
      this.#count(rec.tenant, -1, -bytes);
      unreserve?.();
    }
  }

  /**
   * A call whose store did not confirm it (answered 503 "may have been
   * stored"), looked for until the store answers. Found with its first
   * attempt begun by this gateway (`run`: it had room, and the body), it is
   * run here at once, as its acceptance meant, rather than lost to its own
   * claim's lapse (a phantom attempt, counted). Not there a whole call lease
   * after (any write of it applied by then), its request body, stored apart
   * (`apart`), goes: no call will read it.
   */
  #confirm(ref: ObjectRef, run: Uint8Array | null | undefined, apart: boolean): void {
    const since = this.#now();
    const check = async () => {
      if (this.#stopped) return;
      let cur: MetaRecord | undefined;
      try {
        cur = await this.#deps.meta.get(ref);
      } catch {
        return again(); // the store away still
      }
      if (cur) {
        const c = decodeCall(cur.value);
        const mine = c.owner === this.#self && c.status === "running" &&
          (c.leaseUntil ?? 0) > this.#now() && c.attempts.at(-1)?.endedAt === undefined;
        if (run !== undefined && mine && !this.#claims.has(c.id) && !this.#stopped) {
          const claim = new Claim(c, cur.revision);
          claim.body = run;
          this.#begin(claim);
        }
        return;
      }
      if (this.#now() - since < this.leaseMs) return again();
      if (apart) await this.#dropBody(ref, "request").catch(() => {});
    };
    const again = () => {
      if (this.#stopped || this.#now() - since > 10 * this.leaseMs) return;
      const t = setTimeout(() => {
        this.#confirming.delete(t);
        check();
      }, Math.max(20, this.leaseMs / 10));
      this.#confirming.add(t);
    };
    again();
  }

  /** The call `id`, or undefined. */
  async get(id: string): Promise<CallRecord | undefined> {
    const { tenant, namespace, key } = parseCallId(id);
    const r = await this.#deps.meta.get({ type: "call", tenant, namespace, name: key });
    const c = r && decodeCall(r.value);
    // Past its retention a call is gone, whether or not its record has been removed yet.
    if (c && FINAL_STATUSES.has(c.status) && c.expiresAt <= this.#now()) return undefined;
    return c;
  }

  /**
   * The call `id` with its answer's body, or undefined (also when that body
   * has gone: its record is being deleted).
   */
  async view(id: string): Promise<{ rec: CallRecord; result?: Uint8Array } | undefined> {
    const rec = await this.get(id);
    if (!rec?.result) return rec && { rec };
    const result = await this.#resultOf(rec);
    return result && { rec, result };
  }

  /** The answer's body of an ended call; undefined when it has gone from the store. */
  async #resultOf(rec: CallRecord): Promise<Uint8Array | undefined> {
    const r = rec.result!;
    if (r.body !== undefined) return Buffer.from(r.body, "base64");
    if (!r.bytes) return new Uint8Array();
    const kv = await this.#deps.meta.get(callBodyRef(refOf(rec), "result"));
    return kv && Buffer.from(decodeCallBody(kv.value), "base64");
  }

  /** Stores one body of the call at `ref`, replacing one an earlier attempt left. */
  async #putBody(ref: ObjectRef, part: CallBodyPart, bytes: Uint8Array): Promise<void> {
    const b = callBodyRef(ref, part);
    const object = { body: Buffer.from(bytes).toString("base64") };
    try {
      await this.#deps.meta.create({ ...b, object });
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
      const cur = await this.#deps.meta.get(b);
      if (!cur) return await this.#putBody(ref, part, bytes);
      await this.#deps.meta.update({ ...b, object, revision: cur.revision });
    }
  }

  /** Deletes one body of the call at `ref` (gone already: fine; else logged, its record's delete takes it). */
  async #dropBody(ref: ObjectRef, part: CallBodyPart): Promise<void> {
    await this.#deps.meta.delete(callBodyRef(ref, part)).catch((err) => {
      if (err instanceof NotFoundError) return;
      log.warn("Cannot delete the {part} body of call {name}: {error}", {
        part,
        name: ref.name,
        error: String(err),
      });
    });
  }

  /** After a write that ended `rec`: its request body is no longer needed. */
  #ended(ref: ObjectRef, rec: CallRecord): void {
    if (rec.bodyBytes && FINAL_STATUSES.has(rec.status)) {
      this.#track(this.#dropBody(ref, "request"));
    }
  }

  /**
   * Cancels call `id`: a queued call will not run, a running one is aborted
   * (its worker's request too). Throws 409 when it has already ended.
   */
  async cancel(id: string): Promise<CallRecord> {
    const { tenant, namespace, key } = parseCallId(id);
    const ref: ObjectRef = { type: "call", tenant, namespace, name: key };
    for (let i = 0;; i++) {
      const cur = await this.#deps.meta.get(ref);
      if (!cur) throw new NotFoundError(`Call ${id} does not exist (or its result has expired)`);
      const rec = decodeCall(cur.value);
      if (FINAL_STATUSES.has(rec.status)) {
        throw new InferxError(
          "conflict",
          `Cannot cancel call ${id}: it has already ended (${rec.status})`,
          {
            details: { status: rec.status },
          },
        );
      }
      const now = this.#now();
      // Running on a gateway that still holds its claim; a claim run out is a gateway gone.
      const wasRunning = rec.status === "running" && (rec.leaseUntil ?? 0) > now;
      if (rec.status === "running" && !wasRunning) {
        // Nobody will close its attempt: closed here.
        const open = rec.attempts.at(-1);
        if (open && open.endedAt === undefined) {
          open.endedAt = now;
          open.error = { code: "cancelled", message: "Cancelled after its gateway went away" };
        }
      }
      rec.status = "cancelled";
      rec.finishedAt = now;
      rec.expiresAt = now + this.ttlMs;
      rec.error = { code: "cancelled", message: "The call was cancelled" };
      // It will not run: its request is not needed (nor kept: a call cancelled at once must not
      // keep its request's headers for the whole retention).
      if (!wasRunning) (delete rec.body, rec.headers = []);
      if (rec.callback) rec.delivery = { state: "pending", attempts: 0 };
      // Its runner (if any) keeps the claim to close the attempt; else anyone may deliver.
      if (!wasRunning) (delete rec.owner, delete rec.leaseUntil);
      try {
        await this.#deps.meta.update({ ...ref, object: rec, revision: cur.revision });
      } catch (err) {
        if (isConflict(err) && i < 10) continue;
        throw err;
      }
      if (!wasRunning) this.#ended(ref, rec); // else its runner drops the body when it stops
      this.#claims.get(id)?.abort.abort(CANCELLED);
      return rec;
    }
  }

  // ---------------------------------------------------------------- watch

  #seen(r: MetaRecord): void {
    let c: CallRecord;
    try {
      c = JSON.parse(r.value) as CallRecord;
    } catch {
      return log.warn("Ignoring a malformed call record {name}", { name: r.name });
    }
    const id = c.id;
    this.#index(c, r.revision);
    const mine = this.#claims.get(id);
    if (mine && c.status === "cancelled" && !mine.abort.signal.aborted) mine.abort.abort(CANCELLED);
    this.#kick();
  }

  /** Keeps what the queue needs of call `c` at `revision` (not over a newer one). */
  #index(c: CallRecord, revision: number): void {
    const id = c.id;
    const known = this.#open.get(id) ?? this.#done.get(id);
    if (known && known.revision > revision) return;
    const listed: ListedCall = {
      ref: known?.ref ?? refOf(c),
      revision,
      func: known?.func ?? funcOf(c),
      principal: c.principal,
      status: c.status,
      acceptedAt: c.acceptedAt,
      expiresAt: c.expiresAt,
      seq: known?.seq ?? ++this.#seq,
    };
    if (!needsWork(c)) {
      this.#setOpen(id, undefined);
      this.#setDone(id, { ...listed, bytes: answerBytes(c) });
      this.#nextExpiry = Math.min(this.#nextExpiry, c.expiresAt);
    } else {
      this.#setDone(id, undefined);
      this.#setOpen(id, {
        ...listed,
        owner: c.owner,
        leaseUntil: c.leaseUntil,
        notBefore: c.notBefore,
        bytes: requestBytes(c),
      });
    }
  }

  /** Puts `d` in `#done` as call `id` (undefined: takes it out), keeping `#kept` in step. */
  #setDone(id: string, d: Done | undefined): void {
    const was = this.#done.get(id);
    if (was) tally(this.#kept, was.ref.tenant, -1, -was.bytes);
    if (d) {
      this.#done.set(id, d);
      tally(this.#kept, d.ref.tenant, 1, d.bytes);
    } else this.#done.delete(id);
  }

  /**
   * Puts `e` in `#open` as call `id` (undefined: takes it out), keeping its
   * tenant's count of calls not ended (`#held`) in step.
   */
  #setOpen(id: string, e: Open | undefined): void {
    const was = this.#open.get(id);
    if (was && !FINAL_STATUSES.has(was.status)) this.#count(was.ref.tenant, -1, -was.bytes);
    if (e) {
      this.#open.set(id, e);
      if (!FINAL_STATUSES.has(e.status)) this.#count(e.ref.tenant, 1, e.bytes);
    } else this.#open.delete(id);
    this.#openIndex(id, e, was);
  }

  /**
   * Keeps `#waiting` and `#endedOpen` in step with call `id` going from
   * `was` to `e` (either undefined: added, or taken out). A call that waits
   * again keeps its place (a Map keeps a key's place when it is set again).
   */
  #openIndex(id: string, e: Open | undefined, was: Open | undefined): void {
    const ended = (o: Open) => FINAL_STATUSES.has(o.status);
    if (was && (!e || ended(e) !== ended(was))) {
      if (ended(was)) this.#endedOpen.delete(id);
      else {
        const calls = this.#waiting.get(was.func);
        calls?.delete(id);
        if (calls?.size === 0) this.#waiting.delete(was.func);
      }
    }
    if (!e) return;
    if (ended(e)) return void this.#endedOpen.set(id, e);
    let calls = this.#waiting.get(e.func);
    if (!calls) this.#waiting.set(e.func, calls = new Map());
    calls.set(id, e);
  }

  /** Adds `calls` and `bytes` (negative: takes them) to what `tenant`'s calls not ended hold. */
  #count(tenant: string, calls: number, bytes: number): void {
    tally(this.#held, tenant, calls, bytes);
  }

  /**
   * Refuses a call of `tenant` whose request holds `bytes` when the
   * tenant's calls not ended, or its ended calls kept, are at its quota
   * (`max_open_calls`, `max_open_call_mb`, `max_kept_calls`,
   * `max_kept_call_mb`, else the gateway's defaults): no caller may fill the
   * store with calls, waiting or ended (a call cancelled at once included).
   * Refused 429, to be tried again once some have ended or expired.
   */
  #admit(tenant: string, bytes: number): void {
    const q = this.#deps.cache.tenantQuota(tenant);
    const mib = 1024 * 1024;
    const open = this.#held.get(tenant) ?? { calls: 0, bytes: 0 };
    const kept = this.#kept.get(tenant) ?? { calls: 0, bytes: 0 };
    const mb = (n: number) => n < mib ? `${Math.ceil(n / 1024)} KB` : `${(n / mib).toFixed(1)} MB`;
    const openCalls = q.max_open_calls ?? this.#openMax;
    const openMB = q.max_open_call_mb ?? this.#openMaxBytes / mib;
    const keptCalls = q.max_kept_calls ?? this.#keptMax;
    const keptMB = q.max_kept_call_mb ?? this.#keptMaxBytes / mib;
    // The first limit this call is past: [limit, its value, what the tenant has, what frees room].
    const past: [string, number, string, string] | undefined = open.calls + 1 > openCalls
      ? [
        "max_open_calls",
        openCalls,
        `${open.calls} asynchronous calls not ended, its limit ${openCalls}`,
        "ended",
      ]
      : open.bytes + bytes > openMB * mib
      ? [
        "max_open_call_mb",
        openMB,
        `asynchronous calls not ended holding ${mb(open.bytes)}, and this one ${
          mb(bytes)
        } more, its limit ${mb(openMB * mib)}`,
        "ended",
      ]
      // Every call not ended will be kept once it ends: counted now, or the kept could pass
      // their bound by as many as may be open.
      : kept.calls + open.calls + 1 > keptCalls
      ? [
        "max_kept_calls",
        keptCalls,
        `${kept.calls} ended asynchronous calls kept and ${open.calls} not ended, its limit ${keptCalls}`,
        open.calls ? "ended and expired (INFERX_CALL_TTL_S)" : "expired (INFERX_CALL_TTL_S)",
      ]
      : kept.bytes >= keptMB * mib
      ? [
        "max_kept_call_mb",
        keptMB,
        `ended asynchronous calls kept whose answers hold ${mb(kept.bytes)}, its limit ${
          mb(keptMB * mib)
        }`,
        "expired (INFERX_CALL_TTL_S)",
      ]
      : undefined;
    if (!past) return;
    const [limit, quota, has, frees] = past;
    // Details as the state service's quotas give them (which limit, its value), and when to try
    // again: it clears as calls end, or expire (not a quota that calls for an operator).
    throw new InferxError(
      "quota_exceeded",
      `Tenant ${tenant} has ${has} (quota ${limit}): try again once some of its calls ${frees}`,
      { details: { limit, quota, retry_after_s: 5 }, retryable: true },
    );
  }

  /**
   * Every stored call this gateway knows of (from its watch, and the ones it
   * accepted): open ones first, then ended ones.
   */
  *listed(): Generator<ListedCall> {
    // A call that ends while the reader pauses between entries moves from the open ones to the
    // ended ones, behind where the reader is: given once, not again among the ended.
    const seen = new Set<ObjectRef>();
    for (const e of this.#open.values()) {
      seen.add(e.ref); // kept by every later entry of the call (#index)
      yield e;
    }
    for (const e of this.#done.values()) if (!seen.has(e.ref)) yield e;
  }

  #kick(): void {
    if (this.#kicked || this.#stopped) return;
    this.#kicked = true;
    setTimeout(() => {
      this.#kicked = false;
      this.#pump();
    }, 0);
  }

  #tick(): void {
    this.#pump();
    const now = this.#now();
    if (now < this.#nextExpiry || this.#expiring) return;
    this.#expiring = true;
    this.#expire(now).finally(() => this.#expiring = false);
  }

  /**
   * Deletes the ended calls past their expiry, a batch at a time, letting
   * other work go on between: a gateway started after a day away finds a
   * day of them.
   */
  async #expire(now: number): Promise<void> {
    this.#nextExpiry = Infinity;
    const due: string[] = [];
    for (const [id, d] of this.#done) {
      if (d.expiresAt > now) this.#nextExpiry = Math.min(this.#nextExpiry, d.expiresAt);
      else due.push(id);
    }
    for (let i = 0; i < due.length && !this.#stopped; i += EXPIRY_BATCH) {
      if (i > 0) await nextTurn();
      await Promise.all(
        due.slice(i, i + EXPIRY_BATCH).map((id) => {
          const d = this.#done.get(id);
          if (!d) return; // gone meanwhile
          this.#setDone(id, undefined);
          return this.#deps.meta.delete(d.ref, d.revision).catch((err) => {
            // Changed or gone meanwhile: its next version is looked at again (the watch brings
            // it). Anything else (the store away): tried again at the next tick.
            if (isConflict(err) || err instanceof NotFoundError) return;
            if (!this.#done.has(id)) this.#setDone(id, d);
            this.#nextExpiry = Math.min(this.#nextExpiry, d.expiresAt); // the next tick
          });
        }),
      );
    }
  }

  /**
   * Claims the calls this gateway may take now, each function's oldest
   * first: ended ones with work left, calls past their expiry (to end
   * them), and as many waiting ones as each function has room for. A
   * function's calls are in the order they were accepted, which is the
   * order they expire in (a gateway with a longer `INFERX_CALL_TTL_S`
   * aside): the pass stops at the first one there is no room for.
   */
  #pump(): void {
    if (this.#stopped) return;
    const now = this.#now();
    const free = (id: string, e: Open) =>
      !this.#claims.has(id) && !this.#claiming.has(id) && !(e.owner && (e.leaseUntil ?? 0) > now);
    // Ended calls with work left, mostly callbacks: a bounded number at once, and of one tenant
    // (those this gateway holds or is claiming count).
    const held = this.#deliveries();
    for (const [id, e] of this.#endedOpen) {
      if (held.all >= MAX_DELIVERIES) break;
      if (held.full(e.ref.tenant) || !free(id, e)) continue;
      this.#takeOver(id, e);
      held.add(e.ref.tenant);
    }
    for (const [func, calls] of this.#waiting) {
      for (const [id, e] of calls) {
        if (!free(id, e)) continue;
        if (e.expiresAt <= now) {
          this.#takeOver(id, e); // ended as expired
          continue;
        }
        if ((e.notBefore ?? 0) > now) continue; // waits to be tried again
        if (!this.#hasRoom(func)) break;
        this.#takeOver(id, e, this.#reserve(func));
      }
    }
  }

  /**
   * The callbacks this gateway tries (its claims that took a place for one) or is claiming
   * ended calls for, all and by tenant, `except` one's; `add` counts one more, `full` says
   * whether one more of `tenant` would pass the bounds.
   */
  #deliveries(except?: Claim) {
    const held = {
      all: 0,
      byTenant: new Map<string, number>(),
      add(tenant: string) {
        held.byTenant.set(tenant, (held.byTenant.get(tenant) ?? 0) + 1);
        held.all++;
      },
      full: (tenant: string) =>
        held.all >= MAX_DELIVERIES || (held.byTenant.get(tenant) ?? 0) >= MAX_TENANT_DELIVERIES,
    };
    for (const c of this.#claims.values()) if (c !== except && c.delivers) held.add(c.rec.tenant);
    for (const id of this.#claiming) {
      const e = this.#endedOpen.get(id);
      if (e && id !== except?.rec.id) held.add(e.ref.tenant);
    }
    return held;
  }

  /** One claim of `func` less in `#active`; none left, its entry goes (functions come and go). */
  #uncount(func: string): void {
    const n = (this.#active.get(func) ?? 1) - 1;
    if (n > 0) this.#active.set(func, n);
    else this.#active.delete(func);
  }

  #hasRoom(func: string): boolean {
    const [t, ns, f] = func.split("/");
    const agent = this.#deps.cache.agent(t, ns, f);
    const limit = agent ? agent.policy.parallel * agent.policy.max_replica : 1;
    return (this.#active.get(func) ?? 0) + (this.#reserved.get(func) ?? 0) < limit;
  }

  /**
   * Takes room for one call of `func` until the returned function is called
   * (by then it runs and counts in `#active`, or it will not run here): one
   * pass over the queue, or accepts in quick succession, must not take more
   * calls than there is room for while their store writes are under way.
   */
  #reserve(func: string): () => void {
    this.#reserved.set(func, (this.#reserved.get(func) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.#reserved.get(func) ?? 1) - 1;
      if (n > 0) this.#reserved.set(func, n);
      else this.#reserved.delete(func);
    };
  }

  /** Claims `id`, closing what a lost claim left open; then runs it. `unreserve` once begun. */
  #takeOver(id: string, e: Open, unreserve?: () => void): void {
    this.#claiming.add(id);
    this.#track(
      this.#claim(e).catch((err) => {
        log.warn("Cannot claim call {id}: {error}", { id, error: String(err) });
      }).finally(() => {
        this.#claiming.delete(id);
        unreserve?.();
      }),
    );
  }

  async #claim(e: Open): Promise<void> {
    const now = this.#now();
    const cur = await this.#deps.meta.get(e.ref);
    if (!cur) {
      // Gone, and the watch did not say so (or said so first): not kept, nor counted.
      return this.#setOpen(callId(e.ref.tenant, e.ref.namespace, e.ref.name), undefined);
    }
    const rec = decodeCall(cur.value);
    const final = FINAL_STATUSES.has(rec.status);
    if (
      !needsWork(rec) || (rec.owner && (rec.leaseUntil ?? 0) > now) ||
      (!final && (rec.notBefore ?? 0) > now && rec.expiresAt > now)
    ) return;
    const last = rec.attempts.at(-1);
    if (last && last.endedAt === undefined) {
      // Its gateway stopped renewing while running it: that attempt is lost (or, cancelled
      // meanwhile, ended by the cancel: its gateway was to close it, and went away first).
      last.endedAt = now;
      const lost = `Gateway ${last.gateway} stopped renewing its claim during this attempt`;
      last.error = rec.status === "cancelled"
        ? { code: "cancelled", message: `The call was cancelled; ${lost.toLowerCase()}` }
        : { code: "gateway_lost", message: lost };
      if (rec.status === "running") this.#afterFailure(rec, now);
    }
    if (!FINAL_STATUSES.has(rec.status) && rec.expiresAt <= now) {
      this.#end(rec, "expired", now, {
        code: "expired",
        message: `The call did not run within ${Math.round(this.ttlMs / 1000)} s of its acceptance`,
      });
    }
    const work = !FINAL_STATUSES.has(rec.status) || rec.delivery?.state === "pending";
    if (work) {
      rec.owner = this.#self;
      rec.leaseUntil = now + this.leaseMs;
      delete rec.notBefore;
    } else (delete rec.owner, delete rec.leaseUntil); // ended, its last attempt now closed
    let revision: number;
    try {
      revision = (await this.#deps.meta.update({ ...e.ref, object: rec, revision: cur.revision }))
        .revision;
    } catch (err) {
      if (isConflict(err)) return; // another gateway claimed it first
      throw err;
    }
    this.#ended(e.ref, rec);
    if (work && !this.#stopped) this.#begin(new Claim(rec, revision));
  }

  #track(p: Promise<unknown>): void {
    const run = p.then(() => {}, () => {});
    this.#runs.add(run);
    run.finally(() => this.#runs.delete(run));
  }

  // ---------------------------------------------------------------- running

  /** Works on a claimed call until it ends (and its callback is delivered) or is handed back. */
  #begin(c: Claim): void {
    const id = c.rec.id;
    this.#claims.set(id, c);
    const func = funcOf(c.rec);
    if (!FINAL_STATUSES.has(c.rec.status)) {
      c.counted = true;
      this.#active.set(func, (this.#active.get(func) ?? 0) + 1);
    }
    this.#hold(c);
    const renew = setInterval(() => {
      this.#save(c, (r) => {
        r.leaseUntil = this.#now() + this.leaseMs;
        return true;
      }).catch(() => {});
    }, Math.max(20, this.leaseMs / 3));
    this.#track(
      this.#work(c).catch((err) => {
        if (!(err instanceof LostClaim)) {
          log.error("Call {id} failed in the gateway: {error}", { id, error: String(err) });
        }
      }).finally(() => {
        clearInterval(renew);
        clearTimeout(c.deadline);
        this.#claims.delete(id);
        if (c.counted) this.#uncount(func);
        this.#kick();
      }),
    );
  }

  /**
   * Arms `c`'s deadline: a sixth of the lease before the claim the store last
   * confirmed runs out, this gateway lets the call go (its worker request
   * aborted), since from then on another gateway may take it over and run
   * it again — a gateway cut off from the store must not run it twice.
   */
  #hold(c: Claim): void {
    clearTimeout(c.deadline);
    const until = c.rec.owner === this.#self ? c.rec.leaseUntil : undefined;
    if (until === undefined) return;
    c.deadline = setTimeout(() => {
      if (c.lost) return;
      log.warn("Letting call {id} go: its claim could not be renewed in time", { id: c.rec.id });
      c.lost = true;
      c.lapsed = true;
      c.abort.abort(LOST);
      c.release.abort();
    }, Math.max(0, until - this.#now() - this.leaseMs / 6));
  }

  async #work(c: Claim): Promise<void> {
    while (!FINAL_STATUSES.has(c.rec.status)) {
      if (c.abort.signal.aborted && this.#stopped) return await this.#handBack(c);
      const last = c.rec.attempts.at(-1);
      const begun = c.rec.status === "running" && last?.gateway === this.#self &&
        last.endedAt === undefined;
      if (!begun) {
        const started = await this.#save(c, (r) => {
          if (FINAL_STATUSES.has(r.status)) return false;
          return (this.#startAttempt(r), true);
        });
        if (!started) break;
      }
      const n = c.rec.attempts.length;
      const outcome = await this.#attempt(c, n);
      if (outcome.kind === "answer") {
        outcome.retry = RETRY_STATUSES.has(outcome.status) &&
          countedAttempts(c.rec) < c.rec.maxAttempts;
      }
      try {
        await this.#storeOutcome(c, n, outcome);
      } catch (err) {
        // The store took no writes for as long as the claim lasted (its disk full, say): the
        // worker's answer is not thrown away, to run the call again.
        if (err instanceof LostClaim && c.lapsed && outcome.kind !== "aborted") {
          return await this.#settleLapsed(c, n, outcome);
        }
        throw err;
      }
      if (c.rec.status === "queued") {
        // Handed back to wait for its next try: look again when it is due.
        const wait = (c.rec.notBefore ?? 0) - this.#now();
        setTimeout(() => this.#kick(), Math.max(0, wait) + 1);
        return;
      }
    }
    if (c.rec.delivery?.state === "pending") {
      // The call has run: its run slot goes to the next call, not held through the callback's
      // tries (up to a minute while a receiver is down).
      if (c.counted) {
        c.counted = false;
        this.#uncount(funcOf(c.rec));
        this.#kick();
      }
      // Past the bounds on deliveries at once (all, and of its tenant: #pump's), it is handed
      // on, for a pass to take in its turn: a tenant's calls ending here hold no more. Counted
      // and taken in one turn of the loop, so that calls ending together cannot all pass.
      if (this.#deliveries(c).full(c.rec.tenant)) return await this.#letDeliveryGo(c);
      c.delivers = true;
      await this.#deliver(c);
    }
  }

  /** Hands the delivery of `c` on unowned, for any gateway to take at once. */
  async #letDeliveryGo(c: Claim): Promise<void> {
    if (c.lost) return;
    await this.#save(c, (r) => (delete r.owner, delete r.leaseUntil, true)).catch(() => {});
  }

  /** Stores how attempt `n` of `c` ended: its answer's body first when large, then the record. */
  async #storeOutcome(c: Claim, n: number, o: Outcome): Promise<void> {
    // Stored before the record says the call ended, so whoever reads that finds it.
    if (storesBody(o)) {
      try {
        await this.#whileHeld(c, () => this.#putBody(c.ref, "result", o.body));
      } catch (err) {
        // Its namespace deleted meanwhile, and the call with it: no answer to keep, nor claim.
        if (err instanceof NotFoundError && !await this.#deps.meta.get(c.ref).catch(() => true)) {
          c.lost = true;
          c.release.abort();
          throw new LostClaim();
        }
        throw err;
      }
      c.result = o.body;
    }
    await this.#save(c, (r) => this.#settle(r, n, o));
  }

  /**
   * Stores how attempt `n` of `c` ended after its claim ran out unrenewed
   * while the store took no writes: tried again until the store takes it,
   * the gateway stops, or the call expires. Written at the record's revision
   * this gateway last wrote, or read again while it still names this gateway
   * the owner: another gateway that took the call over since closed the
   * attempt (`gateway_lost`), and this outcome then goes. Handed on unowned,
   * for any gateway to go on with it (a callback, a next attempt).
   */
  async #settleLapsed(c: Claim, n: number, o: Outcome): Promise<void> {
    log.warn("Cannot store how call {id} ended yet (the store takes no writes): trying again", {
      id: c.rec.id,
    });
    let rec = c.rec;
    let revision = c.revision;
    // Its body stored before the claim ran out, or none to store.
    let bodyStored = !storesBody(o) || c.result !== undefined;
    for (let pause = 100; !this.#stopped && rec.expiresAt > this.#now();) {
      await sleep(pause, this.#halt.signal);
      pause = Math.min(pause * 2, 2000);
      try {
        const draft = structuredClone(rec);
        if (draft.owner !== this.#self || !this.#settle(draft, n, o)) return; // taken over
        delete draft.owner;
        delete draft.leaseUntil;
        if (!bodyStored && storesBody(o)) {
          // Not over the answer of a gateway that took the call over meanwhile.
          const cur = await this.#deps.meta.get(c.ref);
          if (!cur) return;
          if (cur.revision !== revision) {
            (rec = decodeCall(cur.value), revision = cur.revision);
            continue;
          }
          await this.#putBody(c.ref, "result", o.body);
          bodyStored = true;
        }
        const w = await this.#deps.meta.update({ ...c.ref, object: draft, revision });
        c.rec = draft;
        c.revision = w.revision;
        if (!c.ended && FINAL_STATUSES.has(draft.status)) {
          (c.ended = true, this.#ended(c.ref, draft));
        }
        log.info("Stored how call {id} ended, its claim run out meanwhile", { id: c.rec.id });
        return;
      } catch (err) {
        if (err instanceof NotFoundError) return; // deleted meanwhile (its namespace, say)
        if (!isConflict(err) && !transient(err)) throw err;
        if (!isConflict(err)) continue;
      }
      const cur = await this.#deps.meta.get(c.ref).catch(() => undefined);
      if (cur) (rec = decodeCall(cur.value), revision = cur.revision);
    }
  }

  /** Marks the next attempt of `r` begun by this gateway, which holds the claim. */
  #startAttempt(r: CallRecord): void {
    const now = this.#now();
    r.status = "running";
    r.startedAt ??= now;
    r.attempts.push({ n: r.attempts.length + 1, gateway: this.#self, startedAt: now });
    r.owner = this.#self;
    r.leaseUntil = now + this.leaseMs;
    delete r.notBefore;
  }

  /** An attempt aborted because this gateway stops: the call goes back to the queue. */
  async #handBack(c: Claim): Promise<void> {
    await this.#save(c, (r) => {
      if (FINAL_STATUSES.has(r.status)) return false;
      r.status = "queued";
      delete r.owner;
      delete r.leaseUntil;
      return true;
    });
  }

  /** Runs attempt `n` of `c` through `forward()`, recorded like a synchronous call. */
  async #attempt(c: Claim, n: number): Promise<Outcome> {
    const r = c.rec;
    const target = { tenant: r.tenant, namespace: r.namespace, func: r.func };
    const t0 = performance.now();
    const rec = new Observed(this.#deps.observe, r.method, r.route, t0);
    rec.principal = r.principal;
    rec.callId = r.id;
    rec.attempt = n;
    rec.setTarget(target, this.#deps.cache.agent(r.tenant, r.namespace, r.func) !== undefined);
    let body: Uint8Array | null;
    try {
      body = await this.#requestOf(c);
    } catch (err) {
      const e = toInferxError(err);
      rec.failed(e);
      return { kind: "error", error: e };
    }
    const input: CallInput = {
      target,
      method: r.method,
      path: r.path,
      headers: r.headers.map(([k, v]) => [k, v]),
      body,
      replayable: true,
      timeoutMs: r.timeoutMs,
      t0,
    };
    const signal = c.abort.signal;
    let answer: CallAnswer;
    try {
      answer = await forward(this.#deps, input, signalSource(signal));
    } catch (err) {
      // This gateway is stopping (the call went to no worker): handed back, the try not counted.
      if (err === STOPPING) return (rec.stopped(), { kind: "aborted" });
      if (err instanceof CallerGone || signal.aborted) {
        brokenOff(rec, signal);
        return { kind: "aborted" };
      }
      const e = toInferxError(err);
      rec.failed(e);
      return { kind: "error", error: e, pod: workerSlotOf(err)?.worker.podId };
    }
    rec.answered(answer);
    const pod = answer.slot.worker.podId;
    const head = { status: answer.status, pod, headers: keptHeaders(answer.headers) };
    let cut: ErrorCode | undefined;
    try {
      const body = await readBounded(answer, this.maxBytes);
      if (body === undefined) return { kind: "too_large", ...head };
      return { kind: "answer", ...head, body };
    } catch (err) {
      if (signal.aborted) return (brokenOff(rec, signal), { kind: "aborted" });
      cut = cutShortCode(err) ?? "worker_failed";
      return {
        kind: "error",
        pod,
        error: new InferxError(
          cut,
          // The pool's own words say "it broke off its answer" already.
          `The answer of worker ${pod} broke off: ${
            (err as Error).message.replace(/^it broke off its answer: /, "")
          }`,
        ),
      };
    } finally {
      rec.finished(cut);
    }
  }

  /** The request body of the claimed call `c` (null: none), read from the store once. */
  async #requestOf(c: Claim): Promise<Uint8Array | null> {
    if (c.rec.body !== undefined) return Buffer.from(c.rec.body, "base64");
    if (!c.rec.bodyBytes) return null;
    if (c.body) return c.body;
    const kv = await this.#deps.meta.get(callBodyRef(c.ref, "request"));
    if (!kv) {
      throw new InferxError("internal", `The request body of call ${c.rec.id} is not in the store`);
    }
    return c.body = Buffer.from(decodeCallBody(kv.value), "base64");
  }

  /**
   * Runs the store write `write` for claimed call `c`, again after a failure
   * that may pass (the store away for a moment) while the claim holds, as
   * {@linkcode CallQueue.#save} does.
   */
  async #whileHeld<T>(c: Claim, write: () => Promise<T>): Promise<T> {
    for (let pause = 50;; pause = Math.min(pause * 2, 1000)) {
      if (c.lost) throw new LostClaim();
      try {
        return await write();
      } catch (err) {
        if (!transient(err)) throw err;
      }
      await new Promise((r) => setTimeout(r, pause));
    }
  }

  /** Closes attempt `n` with `o` and moves the call on. Returns whether to write. */
  #settle(r: CallRecord, n: number, o: Outcome): boolean {
    const now = this.#now();
    const a = r.attempts[n - 1];
    if (!a || a.gateway !== this.#self || a.endedAt !== undefined) return false;
    a.endedAt = now;
    if (o.kind !== "aborted" && o.pod) a.pod = o.pod;
    if (o.kind === "answer" || o.kind === "too_large") a.status = o.status;
    if (r.status === "cancelled") {
      a.error = { code: "cancelled", message: "The call was cancelled during this attempt" };
      delete r.body;
      r.headers = [];
      if (r.delivery?.state !== "pending") (delete r.owner, delete r.leaseUntil);
      return true;
    }
    switch (o.kind) {
      case "aborted":
        // Not the call's failure: handed back for any gateway at once, the try not counted.
        a.error = { code: STOPPED, message: `Gateway ${this.#self} stopped` };
        r.status = "queued";
        delete r.owner;
        delete r.leaseUntil;
        return true;
      case "error":
        a.error = { code: o.error.code, message: o.error.message };
        if (RETRY_CODES.has(o.error.code) || o.error.retryable) this.#afterFailure(r, now);
        else this.#end(r, "failed", now, a.error);
        return true;
      case "too_large":
        a.error = {
          code: "too_large",
          message: `The worker's answer is larger than ${this.maxBytes} bytes ` +
            `(INFERX_CALL_MAX_BYTES): it was not kept`,
        };
        this.#end(r, "failed", now, a.error);
        return true;
      case "answer":
        if (o.retry) {
          a.error = { code: "worker_failed", message: `The worker answered ${o.status}` };
          return (this.#afterFailure(r, now), true);
        }
        r.result = o.body.byteLength > CALL_INLINE_MAX
          ? { status: o.status, headers: o.headers, bytes: o.body.byteLength }
          : { status: o.status, headers: o.headers, body: Buffer.from(o.body).toString("base64") };
        this.#end(r, o.status < 400 ? "succeeded" : "failed", now);
        return true;
    }
  }

  /** A failed attempt: try again after a backoff, or fail when the tries are spent. */
  #afterFailure(r: CallRecord, now: number): void {
    const n = countedAttempts(r);
    if (n >= r.maxAttempts) {
      const last = r.attempts[n - 1]?.error;
      return this.#end(r, "failed", now, {
        code: last?.code ?? "worker_failed",
        message: `All ${n} attempt(s) failed; the last: ${last?.message ?? "unknown"}`,
      });
    }
    r.status = "queued";
    r.notBefore = now + this.#backoffMs * 2 ** (n - 1);
    delete r.owner;
    delete r.leaseUntil;
  }

  /**
   * Ends the call; its claim stays only to deliver a callback. The request
   * body goes: no attempt needs it any more, and the record holds at most
   * one body (the request's, then the result's).
   */
  #end(r: CallRecord, status: CallStatus, now: number, error?: { code: string; message: string }) {
    r.status = status;
    r.finishedAt = now;
    r.expiresAt = now + this.ttlMs;
    if (error) r.error = error;
    delete r.notBefore;
    // Its request goes: kept until the record expires, it would only hold the store.
    delete r.body;
    r.headers = [];
    if (r.callback) r.delivery = { state: "pending", attempts: 0 };
    else (delete r.owner, delete r.leaseUntil);
  }

  /**
   * Whether this gateway may still act for `c`: its claim neither lost nor
   * let go, and not about to run out (a timer late after a pause, say: the
   * store's lease is what another gateway goes by).
   */
  #holds(c: Claim): boolean {
    return !c.lost && !c.release.signal.aborted && c.rec.owner === this.#self &&
      this.#now() < (c.rec.leaseUntil ?? 0) - this.leaseMs / 6;
  }

  /** Delivers the callback of an ended call, with backoff between tries. */
  async #deliver(c: Claim): Promise<void> {
    const url = c.rec.callback!;
    while (c.rec.delivery?.state === "pending") {
      // A stopping gateway hands it back, between tries too (another takes it at once).
      if (this.#stopped) return await this.#letDeliveryGo(c);
      if (!this.#holds(c)) return;
      // Read for each try: a secret replaced meanwhile signs the tries after it.
      let secret: string;
      try {
        secret = await tenantSecret(this.#deps.meta, c.rec.tenant);
      } catch (err) {
        if (!(err instanceof NotFoundError)) {
          log.warn("Cannot read the callback secret of {tenant}: {error}", {
            tenant: c.rec.tenant,
            error: String(err),
          });
          return; // the claim runs out; a gateway tries again later
        }
        secret = ""; // its tenant is gone: nothing may be signed for it
      }
      if (c.rec.result) c.result ??= await this.#resultOf(c.rec);
      let status: number | undefined;
      let error: string | undefined;
      let refused = false;
      try {
        if (!secret) {
          throw new InferxError("invalid", `Tenant ${c.rec.tenant} no longer exists`);
        }
        if (c.rec.expiresAt <= this.#now()) {
          throw new InferxError("invalid", "Not delivered before the call's retention ran out");
        }
        const body = await callViewText(c.rec, c.result, this.#deps.probe);
        // Its claim let go while the secret or the result was read: another gateway delivers.
        if (!this.#holds(c)) return;
        status = await this.callbacks.post(
          url,
          body,
          secret,
          { "x-inferx-call": c.rec.id },
          c.release.signal,
        );
        if (status < 200 || status > 299) error = `the receiver answered ${status}`;
      } catch (err) {
        // Broken off by this gateway (stopping, or its claim let go), not a try the receiver
        // failed: not counted. A stopping gateway hands the delivery back (another takes it at
        // once); one whose claim went has nothing more to write.
        if (c.release.signal.aborted) {
          if (this.#stopped) await this.#letDeliveryGo(c);
          return;
        }
        error = (err as Error).message;
        // Refused for good: a URL no longer allowed. A name that did not resolve is one try.
        refused = err instanceof InferxError && err.code === "invalid" &&
          !(err instanceof UnresolvedHost);
      }
      const tries = (c.rec.delivery?.attempts ?? 0) + 1;
      await this.#save(c, (r) => {
        const d = r.delivery;
        if (!d || d.state !== "pending") return false;
        d.attempts = tries;
        d.status = status;
        d.at = this.#now();
        if (error === undefined) {
          d.state = "delivered";
          delete d.lastError;
        } else {
          d.lastError = error;
          if (refused || tries >= this.#deliveryTries) d.state = "failed";
        }
        if (d.state !== "pending") (delete r.owner, delete r.leaseUntil);
        return true;
      });
      if (c.rec.delivery?.state !== "pending") return;
      await sleep(this.#backoffMs * 2 ** (tries - 1), c.release.signal);
    }
  }

  /**
   * Changes the claimed record with `change` (false: no write needed) and
   * writes it at the revision held; after a conflict, reads it again and
   * applies `change` to that. Throws {@linkcode LostClaim} once another
   * gateway holds the claim.
   */
  #save(c: Claim, change: (r: CallRecord) => boolean): Promise<boolean> {
    const next = c.lock.then(async () => {
      for (let i = 0; i < 20; i++) {
        if (c.lost) throw new LostClaim();
        const draft = structuredClone(c.rec);
        if (!change(draft)) return false;
        try {
          // The store away for a moment: tried again while the claim holds (#hold gives up).
          const w = await this.#whileHeld(c, () => {
            // Every write that keeps the claim renews it (from when it is made).
            if (draft.owner === this.#self) draft.leaseUntil = this.#now() + this.leaseMs;
            return this.#deps.meta.update({ ...c.ref, object: draft, revision: c.revision });
          });
          if (!c.ended && FINAL_STATUSES.has(draft.status)) {
            (c.ended = true, this.#ended(c.ref, draft));
          }
          c.rec = draft;
          c.revision = w.revision;
          this.#hold(c);
          return true;
        } catch (err) {
          if (!isConflict(err) && !(err instanceof NotFoundError)) throw err;
        }
        const cur = await this.#whileHeld(c, () => this.#deps.meta.get(c.ref));
        const fresh = cur && decodeCall(cur.value);
        if (!cur || !fresh || fresh.owner !== this.#self) {
          c.lost = true;
          c.abort.abort(LOST);
          c.release.abort();
          throw new LostClaim();
        }
        c.rec = fresh;
        c.revision = cur.revision;
        if (fresh.status === "cancelled" && !c.abort.signal.aborted) c.abort.abort(CANCELLED);
      }
      throw new InferxError("conflict", `Cannot update call ${c.rec.id}: it kept changing`);
    });
    c.lock = next.catch(() => {});
    return next;
  }
}

/** How an attempt ended. */
type Outcome =
  | {
    kind: "answer";
    status: number;
    pod: string;
    headers: [string, string][];
    body: Uint8Array;
    /** Decided before the record is written: the answer is a failure to try again. */
    retry?: boolean;
  }
  | { kind: "too_large"; status: number; pod: string; headers: [string, string][] }
  | { kind: "error"; error: InferxError; pod?: string }
  | { kind: "aborted" };

function funcOf(c: { tenant: string; namespace: string; func: string }): string {
  return `${c.tenant}/${c.namespace}/${c.func}`;
}

function keptHeaders(headers: [string, string][]): [string, string][] {
  return headers.filter(([k]) => !NOT_KEPT.has(k));
}

/**
 * The whole body of `answer`, or undefined when it is longer than `max`
 * (the worker's request is then cut off). Frees the slot either way.
 */
async function readBounded(answer: CallAnswer, max: number): Promise<Uint8Array | undefined> {
  if (answer.bytes) {
    answer.finish(true);
    return answer.bytes.byteLength > max ? undefined : answer.bytes;
  }
  if (answer.length !== undefined && answer.length > max) {
    answer.finish(false);
    return undefined;
  }
  const parts: Uint8Array[] = [];
  let size = 0;
  try {
    for (let chunk; (chunk = await answer.read()) !== null;) {
      size += chunk.byteLength;
      if (size > max) {
        answer.finish(false);
        return undefined;
      }
      parts.push(chunk);
    }
  } catch (err) {
    answer.finish(false);
    throw err;
  }
  answer.finish(true);
  const out = new Uint8Array(size);
  let o = 0;
  for (const p of parts) (out.set(p, o), o += p.byteLength);
  return out;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/**
 * Whether a call needs a gateway: to run, to deliver its callback, or to
 * close an attempt its gateway left open (one cancelled while it ran, its
 * gateway gone before it could).
 */
function needsWork(c: CallRecord): boolean {
  if (!FINAL_STATUSES.has(c.status) || c.delivery?.state === "pending") return true;
  const last = c.attempts.at(-1);
  return last !== undefined && last.endedAt === undefined;
}

/** Adds `calls` and `bytes` (negative: takes them) to `tenant`'s entry of `m`. */
function tally(m: Map<string, Held>, tenant: string, calls: number, bytes: number): void {
  const h = m.get(tenant) ?? { calls: 0, bytes: 0 };
  h.calls += calls;
  h.bytes += bytes;
  if (h.calls <= 0) m.delete(tenant);
  else m.set(tenant, h);
}

/** Bytes of the fields `headers` (names and values). */
function headerBytes(headers: readonly (readonly [string, string])[]): number {
  let n = 0;
  for (const [k, v] of headers) n += k.length + v.length;
  return n;
}

/** What a call's request holds in the store: its body, headers and path (bytes, roughly). */
function requestBytes(c: Pick<CallRecord, "body" | "bodyBytes" | "headers" | "path">) {
  return (c.bodyBytes ?? (c.body ? Math.floor(c.body.length * 3 / 4) : 0)) +
    headerBytes(c.headers) + c.path.length;
}

/** What an ended call's answer holds in the store: its body and headers (bytes, roughly). */
function answerBytes(c: CallRecord): number {
  const r = c.result;
  if (!r) return 0;
  return (r.bytes ?? (r.body ? Math.floor(r.body.length * 3 / 4) : 0)) + headerBytes(r.headers);
}

/** Whether outcome `o` ends its call with an answer whose body is stored apart from the record. */
function storesBody(o: Outcome): o is Extract<Outcome, { kind: "answer" }> {
  return o.kind === "answer" && !o.retry && o.body.byteLength > CALL_INLINE_MAX;
}

/** Storing call `id` failed in a way that may have stored it (see `CallQueue.accept`). */
function mayBeStored(id: string, cause: InferxError): InferxError {
  return new InferxError(
    "unavailable",
    `Cannot tell whether call ${id} was stored: ${cause.message}. A call stored runs: ` +
      `GET /calls/${id} says whether it was; send it again only if that answers 404`,
    { cause, retryable: false, details: { call_id: id, may_be_stored: true } },
  );
}
