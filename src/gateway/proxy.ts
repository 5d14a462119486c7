/**
 * The forward-and-retry loop of a call: take a slot on a leased worker, send
 * the request through the upstream pool, and retry on another worker when
 * the first cannot be reached (or answers 502/503/504 while another is free)
 * and the body can be sent again. Transport-neutral: the raw listener and the
 * Hono routes both write what {@linkcode forward} returns.
 *
 * @module
 */
import { type ErrorCode, InferxError, NotFoundError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { DEFAULT_ANSWER_TIMEOUT_S } from "../model/schemas.ts";
import { OUTPUT_TAIL } from "../model/cluster.ts";
import { WORKER_OUTPUT } from "../rpc/types.ts";
import { allows, type Principal } from "./auth.ts";
import type { FuncCache } from "./func_cache.ts";
import type { CallStage, Slot } from "./func_agent.ts";
import {
  AnswerBroken,
  AnswerTimeout,
  ConnectError,
  type HttpPool,
  type UpstreamAnswer,
} from "./http_pool.ts";
import { HOP_BY_HOP, withoutConnectionNamed } from "./http1/fields.ts";
import { ConnectionClosed } from "./http1/server.ts";
import { ReadAhead, type ReadAheadBudget } from "./read_ahead.ts";

const log = logger("gateway");

/** A function by name. */
export interface FuncTarget {
  tenant: string;
  namespace: string;
  func: string;
}

/** Something that reports a caller going away. */
export interface AbortSource {
  onAbort(fn: () => void): void;
}

/** One call, ready to forward. */
export interface CallInput {
  target: FuncTarget;
  method: string;
  /** Path and query on the worker. */
  path: string;
  /** Headers to forward: lower-case names, no hop-by-hop fields or credentials. */
  headers: [string, string][];
  body: Uint8Array | AsyncIterable<Uint8Array> | null;
  /** Whether the body can be sent again (a retry on another worker). */
  replayable: boolean;
  /** The caller's own wait limit (ms), capped by the policy's `queue_timeout`. */
  timeoutMs?: number;
  /** Tokens the call asks for (`max_tokens` of a JSON body), counted in flight while it runs. */
  tokens?: number;
  /** Whether its JSON body asks for a streamed answer (`"stream": true`). */
  stream?: boolean;
  /** When the gateway received the call (`performance.now()`). */
  t0: number;
  /** Hears the stages of the wait for a worker, for callers that show them. */
  onProgress?: (stage: CallStage) => void;
  /**
   * Who calls: a worker's failed start shows its last output only to a caller
   * who may read the function's namespace (none given: to nobody).
   */
  principal?: Principal;
}

/** A worker's answer to a call, with the `x-inferx-*` fields added. */
export interface CallAnswer {
  status: number;
  statusText: string;
  headers: [string, string][];
  /** The body's declared length, when sized. */
  length: number | undefined;
  /** The whole body, when it came at once. */
  bytes?: Uint8Array;
  /** The next piece of a streamed body; null at its end. */
  read(): Promise<Uint8Array | null>;
  slot: Slot;
  ttfbMs: number;
  /**
   * Call once when the answer has been delivered (`true`) or abandoned
   * (`false`: the worker connection is closed): frees the worker's slot.
   */
  finish(delivered: boolean): void;
}

/** Where {@linkcode onWorker} keeps the worker an error came from. */
const WORKER_SLOT = Symbol("workerSlot");

/**
 * `err`, marked as what the worker of `slot` (which had the call) gave: the
 * call's audit row and an asynchronous call's attempt name that pod, as they
 * do for an answer.
 */
function onWorker<E extends Error>(err: E, slot: Slot): E {
  (err as E & { [WORKER_SLOT]?: Slot })[WORKER_SLOT] = slot;
  return err;
}

/** The slot of the worker an error of {@linkcode forward} came from, when one had the call. */
export function workerSlotOf(err: unknown): Slot | undefined {
  return err instanceof Error ? (err as Error & { [WORKER_SLOT]?: Slot })[WORKER_SLOT] : undefined;
}

/**
 * The worker of `slot` had the call and failed it (`err`: it closed without
 * answering, or broke off its answer): it may have run it.
 */
function workerFailed(slot: Slot, func: string, err: Error): InferxError {
  return onWorker(
    new InferxError(
      "worker_failed",
      `Worker ${slot.worker.podId} of ${func}: ${err.message}${reclaimedNote(slot)}`,
      { cause: err, details: MAY_HAVE_RUN },
    ),
    slot,
  );
}

/** What is left of the caller's own wait limit (at least 1 ms), if it set one. */
function timeLeft(call: CallInput): number | undefined {
  if (call.timeoutMs === undefined) return undefined;
  return Math.max(1, call.timeoutMs - (performance.now() - call.t0));
}

/** What {@linkcode forward} needs. */
export interface ProxyDeps {
  cache: FuncCache;
  pool: HttpPool;
  /**
   * What streamed answers may hold read ahead of slow callers, so that their
   * workers go back when they are done (src/gateway/read_ahead.ts); none: an
   * answer is read only as its caller takes it.
   */
  readAhead?: ReadAheadBudget;
}

const RETRY_STATUSES = new Set([502, 503, 504]);
const MAX_ATTEMPTS = 3;
/**
 * The details of an error after the worker had the request: it may have run
 * the call, so the caller is told not to send it again on its own
 * (`x-should-retry: false`, which OpenAI's client libraries obey).
 */
const MAY_HAVE_RUN: Readonly<Record<string, unknown>> = Object.freeze({ may_have_run: true });

/**
 * Why a worker may have gone while it answered: the scheduler took it back
 * for another tenant's fair share (it is ended `RECLAIM_GRACE_MS` later,
 * its calls done or not).
 */
function reclaimedNote(slot: Slot): string {
  return slot.worker.reclaimed
    ? " (the worker was reclaimed for another tenant's fair share, and ended as its grace period ran out)"
    : "";
}

/**
 * A lease's error as `call`'s caller gets it. A failed worker's last output
 * (which may print its environment, secrets and all) is shown only to a
 * caller who may read the function's namespace, as its pods' logs are;
 * others are told where readers find it.
 */
export function forCaller(err: unknown, call: CallInput): unknown {
  const output = err instanceof InferxError ? err.details?.[WORKER_OUTPUT] : undefined;
  if (typeof output !== "string") return err;
  const e = err as InferxError;
  const { [WORKER_OUTPUT]: _, ...details } = e.details!;
  const { tenant, namespace } = call.target;
  const reads = call.principal !== undefined && allows(call.principal, "read", tenant, namespace);
  const message = reads
    ? `${e.message}${OUTPUT_TAIL}${output}`
    : `${e.message} (its last output is for readers of ${tenant}/${namespace}: GET /audit/pods)`;
  return new InferxError(e.code, message, {
    cause: e,
    retryable: e.retryable,
    details: Object.keys(details).length ? details : undefined,
  });
}

/** The worker could not be reached: the connection was refused or reset before an answer. */
export class UpstreamUnreachable extends InferxError {
  constructor(worker: string, cause: unknown) {
    // Named, not addressed: its address (a node's, a pod's) is the cluster's, not the caller's.
    super("unavailable", `Cannot reach worker ${worker}: ${(cause as Error).message}`, {
      cause,
      retryable: true,
    });
    this.name = "UpstreamUnreachable";
  }
}

/** The caller went away before an answer. */
export class CallerGone extends InferxError {
  constructor(target: string) {
    super("unavailable", `The caller of ${target} went away`);
    this.name = "CallerGone";
  }
}

/**
 * What a call the gateway will not run any more hears (it is stopping): it
 * went to no worker, so it may be sent again.
 */
export const STOPPING = new InferxError(
  "unavailable",
  "The gateway is stopping: the call was not sent to a worker; try again",
  { retryable: true },
);

/**
 * Whether `err` says the caller went away: a {@linkcode CallerGone}, or its
 * connection closed under a read of its request (a JSON body is read whole
 * before the call goes anywhere). Recorded 499, not the gateway's failure.
 */
export function callerLeft(err: unknown): boolean {
  return err instanceof CallerGone || err instanceof ConnectionClosed;
}

/**
 * Forwards `call` to a worker of its function and resolves with the answer
 * head (and the whole body when it came at once). Throws an
 * {@linkcode InferxError} the caller answers as JSON.
 */
export async function forward(
  deps: ProxyDeps,
  call: CallInput,
  caller?: AbortSource,
): Promise<CallAnswer> {
  const { tenant, namespace, func } = call.target;
  const agent = deps.cache.agent(tenant, namespace, func);
  if (!agent) throw new NotFoundError(`Function ${tenant}/${namespace}/${func} does not exist`);
  let gone = false;
  let onGone: (() => void) | undefined;
  caller?.onAbort(() => {
    gone = true;
    onGone?.();
  });
  let slot: Slot;
  const free = agent.tryAcquire(call.tokens);
  if (free) slot = free;
  else {
    try {
      slot = await agent.acquire(call.timeoutMs, call.onProgress, caller, call.tokens);
    } catch (err) {
      throw gone ? new CallerGone(agent.id) : forCaller(err, call);
    }
  }
  let upstream: UpstreamAnswer | undefined;
  for (let attempt = 1;; attempt++) {
    if (gone) {
      agent.release(slot);
      throw new CallerGone(agent.id);
    }
    try {
      upstream = await deps.pool.send(slot.worker.endpoint, {
        method: call.method,
        path: call.path,
        headers: call.headers,
        body: call.body,
        answerTimeoutMs: (agent.policy.answer_timeout ?? DEFAULT_ANSWER_TIMEOUT_S) * 1000,
      }, caller && ((cancel) => gone ? cancel() : onGone = cancel));
    } catch (err) {
      onGone = undefined;
      if (gone) {
        agent.release(slot);
        throw new CallerGone(agent.id);
      }
      if (err instanceof AnswerTimeout) {
        // Hung, or slower than its policy allows: it had the request, so it is not sent again.
        agent.release(slot);
        throw onWorker(
          new InferxError(
            "timeout",
            `Worker ${slot.worker.podId} of ${agent.id}: ${err.message} (the policy's answer_timeout)`,
            { cause: err, details: MAY_HAVE_RUN },
          ),
          slot,
        );
      }
      if (err instanceof AnswerBroken) {
        // It had the request (it may have run it): not sent again, the worker not dropped.
        agent.release(slot);
        throw workerFailed(slot, agent.id, err);
      }
      if (!(err instanceof ConnectError)) {
        agent.release(slot);
        throw err;
      }
      log.warn("Worker {pod} of {func} at {endpoint} unreachable: {error}", {
        pod: slot.worker.podId,
        func: agent.id,
        endpoint: slot.worker.endpoint,
        error: err.message,
      });
      agent.release(slot, true);
      // Another worker may take it when nothing of it went out (a streamed body too: none of
      // it was read), or when it can be sent again whole.
      if ((err.sent && !call.replayable) || attempt >= MAX_ATTEMPTS) {
        // A worker that had the request and closed without answering failed (crashed, killed):
        // as for a request that cannot be sent again, whichever attempt it was.
        if (err.sent) throw workerFailed(slot, agent.id, err);
        throw onWorker(new UpstreamUnreachable(`${slot.worker.podId} of ${agent.id}`, err), slot);
      }
      try {
        slot = await agent.acquire(timeLeft(call), call.onProgress, caller, call.tokens);
      } catch (err) {
        throw gone ? new CallerGone(agent.id) : forCaller(err, call);
      }
      continue;
    }
    if (RETRY_STATUSES.has(upstream.status) && call.replayable && attempt < MAX_ATTEMPTS) {
      const other = agent.tryAcquireOther(slot.worker.podId, call.tokens);
      if (other) {
        upstream.cancel();
        agent.release(slot);
        slot = other;
        continue;
      }
    }
    break;
  }
  const ttfbMs = performance.now() - call.t0;
  const held = slot;
  const answer = upstream;
  const headers = answer.headers;
  headers.push(
    ["x-inferx-cold-start", held.coldStart ? "1" : "0"],
    ["x-inferx-resumed", held.resumed ? "1" : "0"],
    ["x-inferx-ttfb-ms", ttfbMs.toFixed(2)],
    ["x-inferx-queue-ms", held.queuedMs.toFixed(2)],
    ["x-inferx-pod", held.worker.podId],
    ["x-inferx-version", String(held.worker.version)],
    // Every function answers on the dashboard's origin: a document it serves runs in an
    // origin of its own (no access to the dashboard's stored credential), never sniffed.
    ["content-security-policy", WORKER_CSP],
    ["x-content-type-options", "nosniff"],
  );
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    agent.release(held);
  };
  // A streamed answer is read ahead of its caller: the worker goes back when it is done.
  const ahead = answer.bytes || !deps.readAhead?.limit
    ? undefined
    : new ReadAhead(answer.read, deps.readAhead, release);
  let finished = false;
  const finish = (delivered: boolean) => {
    if (finished) return;
    finished = true;
    onGone = undefined;
    ahead?.stop();
    if (!delivered) answer.cancel();
    release();
  };
  if (answer.bytes) onGone = undefined;
  else onGone = () => finish(false);
  if (gone) finish(false);
  return {
    status: answer.status,
    statusText: answer.statusText,
    headers,
    length: answer.length,
    bytes: answer.bytes,
    read: ahead ? () => ahead.read() : answer.read,
    slot: held,
    ttfbMs,
    finish,
  };
}

/**
 * Why a worker's streamed answer stopped short, when reading it failed
 * ({@linkcode CallAnswer.read}): `timeout` (quiet past `answer_timeout`) or
 * `worker_failed`; undefined for an error of anything else.
 */
export function cutShortCode(err: unknown): ErrorCode | undefined {
  if (err instanceof AnswerTimeout) return "timeout";
  if (err instanceof AnswerBroken) return "worker_failed";
  return undefined;
}

/**
 * The policy every worker answer carries: its documents are sandboxed in an
 * opaque origin (scripts and forms run, but cannot read the gateway
 * origin's storage or cookies).
 */
export const WORKER_CSP = "sandbox allow-scripts allow-forms allow-popups allow-downloads";

/**
 * Hop-by-hop fields, those the gateway sets itself, and `cookie`: a browser
 * sends the gateway's host every cookie of it (another app's on another
 * port of the host, a parent domain's sign-in), none of them a function's
 * (no worker may set one: `set-cookie` is not passed back).
 */
const NOT_FORWARDED: ReadonlySet<string> = new Set([
  ...HOP_BY_HOP,
  "host",
  "content-length",
  "expect",
  "cookie",
]);

/**
 * The request headers to forward, minus hop-by-hop fields, those its
 * `Connection` names, `drop` (the platform's credentials), and names with an
 * underscore, as nginx drops them: a server that maps names to variables
 * (CGI, WSGI: `Content_Length` and `Content-Length` both `CONTENT_LENGTH`)
 * could take `Transfer_Encoding` for the framing the gateway checked. One
 * pass over the list (a second only where `Connection` names a field).
 */
export function forwardHeaders(
  headers: Iterable<readonly [string, string]>,
  drop?: ReadonlySet<string>,
): [string, string][] {
  const out: [string, string][] = [];
  let connection: string | undefined;
  for (const pair of headers) {
    const k = pair[0];
    if (k === "connection") {
      connection = connection === undefined ? pair[1] : `${connection},${pair[1]}`;
    } else if (!NOT_FORWARDED.has(k) && !drop?.has(k) && !k.includes("_")) {
      out.push([k, pair[1]]);
    }
  }
  return withoutConnectionNamed(out, connection);
}
