/**
 * Every call of a function — through `/funccall` or the OpenAI-style `/v1`
 * routes, on the raw warm path or through Hono, answered by a worker or
 * refused by the gateway — is counted in the metrics and written to the
 * request audit the same way: one {@linkcode CallRecord} per call.
 * {@linkcode observe} makes one for each Hono request it wraps.
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import {
  type ErrorCode,
  httpStatus,
  type InferxError,
  toInferxError,
} from "../../common/errors.ts";
import { type AuditLog, UNAUTHENTICATED } from "../../audit/types.ts";
import {
  type FunctionMetrics,
  type GatewayMetrics,
  UNKNOWN_FUNCTION,
  type VersionMetrics,
} from "../metrics.ts";
import type { Principal } from "../auth.ts";
import { type CallAnswer, callerLeft, type FuncTarget, workerSlotOf } from "../proxy.ts";
import { parseFunccallPath } from "../call.ts";
import type { Slot } from "../func_agent.ts";
import type { FuncCache } from "../func_cache.ts";
import { tokenFormat, TokenMeter, type TokenStats } from "../tokens.ts";

/** The most of a call's path (with its query) an audit row keeps, in characters. */
export const AUDIT_PATH_MAX = 512;

/**
 * A call's path as its audit row keeps it: its first `AUDIT_PATH_MAX`
 * characters, and how many more there were (a caller's 16 KiB targets would
 * otherwise fill the audit 30 times as fast as calls do).
 */
export function auditPath(path: string): string {
  if (path.length <= AUDIT_PATH_MAX) return path;
  return `${path.slice(0, AUDIT_PATH_MAX)}…(${path.length - AUDIT_PATH_MAX} more)`;
}

/** Where call outcomes go. */
export interface ObserveOptions {
  metrics: GatewayMetrics;
  /** Where request rows go; none: no request audit. */
  audit?: AuditLog;
  /** This gateway's id, for audit rows. */
  gatewayId: string;
  /** The functions that exist (their metrics are their own; an unknown one's go to `(none)`). */
  cache?: Pick<FuncCache, "agent">;
}

/** The outcome of one call, recorded once. */
export class CallRecord {
  readonly #o: ObserveOptions;
  readonly method: string;
  readonly path: string;
  readonly t0: number;
  principal = UNAUTHENTICATED;
  /** The function the call names (as given, for the audit). */
  target?: FuncTarget;
  #metrics?: FunctionMetrics;
  status = 0;
  /**
   * Reads the tokens of an OpenAI-style answer; undefined for any other.
   * Feed it each streamed piece after writing it to the caller.
   */
  tokens?: TokenMeter;
  /** The asynchronous call this request accepted, or this run is an attempt of. */
  callId?: string;
  /** Which attempt of `callId` this run is. */
  attempt?: number;
  #slot?: Slot;
  #ttfbMs?: number;
  #version?: VersionMetrics;
  /** A whole OpenAI-style answer's body, read for its usage once it has been sent. */
  #whole?: Uint8Array;
  #done = false;

  constructor(o: ObserveOptions, method: string, path: string, t0: number) {
    this.#o = o;
    this.method = method;
    this.path = path;
    this.t0 = t0;
  }

  /**
   * The function the call's target names, before anything is checked: a
   * call refused for its credentials is still its function's (and its
   * tenant's, whose readers see it in the audit).
   */
  named(target: FuncTarget): void {
    const known = this.#o.cache?.agent(target.tenant, target.namespace, target.func);
    this.setTarget(target, known !== undefined);
  }

  /** The function the call names; `known`: it exists (so it gets its own metric series). */
  setTarget(target: FuncTarget, known: boolean): void {
    this.target = target;
    if (known) {
      this.#metrics = this.#o.metrics.of(`${target.tenant}/${target.namespace}/${target.func}`);
    }
  }

  /**
   * A worker answered (its head). An OpenAI-style answer gets a token meter;
   * a whole one also its time to first token as `x-inferx-ttft-ms` (`a`'s
   * headers have not gone out yet).
   */
  answered(a: CallAnswer): void {
    this.status = a.status;
    this.#slot = a.slot;
    this.#ttfbMs = a.ttfbMs;
    const m = this.#series();
    m.ttfb.observe(a.ttfbMs / 1000);
    if (a.slot.coldStart) m.coldStarts++;
    if (a.slot.resumed) m.resumes++;
    if (this.#metrics) this.#version = m.version(a.slot.worker.version);
    const format = tokenFormat(this.path, a.status, a.headers);
    if (!format) return;
    const gaps = this.#version?.tokenGap;
    this.tokens = new TokenMeter(format, this.t0, gaps && ((ms) => gaps.observe(ms / 1000)));
    if (a.bytes) {
      this.#whole = a.bytes;
      a.headers.push(["x-inferx-ttft-ms", a.ttfbMs.toFixed(2)]);
    }
  }

  /**
   * The answer has been delivered, or broke off after its head (`cutShort`:
   * why, for the audit row; the status stays the one the worker answered):
   * the call counted once, its duration, token figures and audit row.
   */
  finished(cutShort?: ErrorCode): void {
    if (this.#done) return;
    this.#done = true;
    if (cutShort) {
      const cut = this.#series().cut;
      cut.set(cutShort, (cut.get(cutShort) ?? 0) + 1);
    }
    this.#end(cutShort);
  }

  /** Counts a call a worker answered (its status now), with what its answer brought. */
  #end(error?: string): void {
    const now = performance.now();
    const ms = now - this.t0;
    const m = this.#series();
    m.request(this.status);
    this.#version?.request(this.status);
    let tokens: TokenStats | undefined;
    if (this.#slot) {
      m.duration.observe(ms / 1000);
      if (this.tokens) {
        if (this.#whole) this.tokens.whole(this.#whole, this.t0 + this.#ttfbMs!);
        tokens = this.tokens.result(now, this.#slot.queuedMs);
        if (this.#version) countTokens(this.#version, tokens);
      }
    }
    this.#audit(ms, error, tokens);
  }

  /** The gateway answered an error itself. */
  failed(err: InferxError): void {
    if (this.#done) return;
    this.#done = true;
    // A worker that had the call and failed it: named in the row, as one that answered is.
    this.#slot ??= workerSlotOf(err);
    this.status = httpStatus(err.code);
    const m = this.#series();
    m.request(this.status);
    this.#audit(performance.now() - this.t0, err.code);
  }

  /**
   * The caller went away before the answer was whole (or cancelled the call:
   * `reason` `cancelled`): counted once, as 499 as nginx logs it, with what
   * the answer brought until then when a worker had answered.
   */
  callerGone(reason = "caller_gone"): void {
    if (this.#done) return;
    this.#done = true;
    this.status = 499;
    this.#end(reason);
  }

  /**
   * The gateway's stop closed the connection before the answer was whole
   * (calls under way get `GATEWAY_DRAIN_S`), or broke off an asynchronous
   * call's attempt (`gateway_lost`: the gateway let the call go, its claim
   * not renewed in time): counted once, with the status sent (503 when none
   * was), `reason` in the audit row.
   */
  stopped(reason: "gateway_stopped" | "gateway_lost" = "gateway_stopped"): void {
    if (this.#done) return;
    this.#done = true;
    if (this.status === 0) this.status = 503;
    this.#end(reason);
  }

  /** The call was stored to run later as `id`: answered 202. */
  accepted(id: string): void {
    if (this.#done) return;
    this.#done = true;
    this.callId = id;
    this.status = 202;
    this.#series().request(202);
    this.#audit(performance.now() - this.t0);
  }

  #series(): FunctionMetrics {
    return this.#metrics ?? this.#o.metrics.of(UNKNOWN_FUNCTION);
  }

  #audit(latencyMs: number, error?: string, tokens?: TokenStats): void {
    const audit = this.#o.audit;
    if (!audit) return;
    const t = this.target;
    const slot = this.#slot;
    audit.request({
      time: Math.round(Date.now() - latencyMs),
      gateway: this.#o.gatewayId,
      principal: this.principal,
      tenant: t?.tenant ?? "",
      namespace: t?.namespace ?? "",
      func: t?.func ?? "",
      method: this.method,
      path: auditPath(this.path),
      status: this.status,
      latencyMs,
      ttfbMs: this.#ttfbMs,
      coldStart: slot?.coldStart ?? false,
      resumed: slot?.resumed ?? false,
      pod: slot?.worker.podId,
      version: slot?.worker.version,
      error,
      ttftMs: tokens?.ttftMs,
      itlP50Ms: tokens?.itlP50Ms,
      itlP99Ms: tokens?.itlP99Ms,
      tokensPerS: tokens?.tokensPerS,
      promptTokens: tokens?.promptTokens,
      completionTokens: tokens?.completionTokens,
      call: this.callId,
      attempt: this.attempt,
    });
  }
}

/** Adds one call's token figures to its version's series. */
function countTokens(m: VersionMetrics, t: TokenStats): void {
  if (t.ttftMs !== undefined) m.ttft.observe(t.ttftMs / 1000);
  if (t.tokensPerS !== undefined) m.tokenRate.observe(t.tokensPerS);
  m.promptTokens += t.promptTokens ?? 0;
  m.completionTokens += t.completionTokens ?? 0;
}

/** Hono variables the gateway's middleware set. */
export interface GatewayVars {
  principal: Principal;
  t0: number;
  call: CallRecord;
}

/**
 * Records every call the wrapped routes answer: the route sets the target
 * and the answer; a failure anywhere (authentication included) is recorded
 * here with its status.
 */
export function observe(opts: ObserveOptions): MiddlewareHandler<{ Variables: GatewayVars }> {
  return async function observe(c, next) {
    const rec = new CallRecord(opts, c.req.method, c.req.path, c.var.t0 ?? performance.now());
    const parsed = parseFunccallPath(c.req.path);
    if (parsed) rec.named(parsed.target);
    c.set("call", rec);
    await next();
    if (callerLeft(c.error)) rec.callerGone();
    else if (c.error) rec.failed(toInferxError(c.error));
  };
}
