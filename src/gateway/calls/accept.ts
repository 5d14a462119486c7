/**
 * The call routes' branch for calls that outlive their connection or report
 * their wait: `Prefer: respond-async` (RFC 7240) stores the call in the
 * durable queue and answers `202 Accepted` with `Location: /calls/{id}`;
 * `x-inferx-progress: 1` on a streaming call sends the stages of its wait
 * before the worker's stream. Calls with neither header pass through to
 * the ordinary call routes untouched; the raw listener sends only calls with
 * one of them here ({@linkcode wantsCallPath}).
 *
 * @module
 */
import type { BodyBudget } from "../http1/body.ts";
import type { MiddlewareHandler } from "hono";
import { InferxError, ValidationError } from "../../common/errors.ts";
import { callId, type CallRecord, newCallKey } from "../../model/call.ts";
import {
  type CallContext,
  funccallInput,
  openaiInput,
  parseFunccallPath,
  readLimited,
  requestCall,
} from "../call.ts";
import { BodyTooLarge } from "../http1/server.ts";
import type { CallInput } from "../proxy.ts";
import type { GatewayEnv, RouteDeps } from "../types.ts";
import { isStreaming, progressResponse } from "./progress.ts";
import { forward } from "../proxy.ts";
import { callResponse, signalSource } from "../routes/_call.ts";

/** Fields that steer the gateway, not the worker: never forwarded on an asynchronous call. */
const GATEWAY_FIELDS: ReadonlySet<string> = new Set(["prefer", "x-inferx-callback-url"]);

/**
 * Whether a request (its header list, names in lower case) takes this
 * branch: it carries `Prefer`, `x-inferx-progress` or
 * `x-inferx-callback-url` (refused there without `Prefer: respond-async`).
 * One pass, no allocation, for the warm path's routing.
 */
export function wantsCallPath(headers: readonly (readonly [string, string])[]): boolean {
  for (let i = 0; i < headers.length; i++) {
    const k = headers[i][0];
    if (k === "prefer" || k === "x-inferx-progress" || k === "x-inferx-callback-url") return true;
  }
  return false;
}

/** Whether a `Prefer` field value asks for `respond-async` (RFC 7240: tokens, any case). */
export function prefersAsync(prefer: string | null | undefined): boolean {
  if (!prefer) return false;
  for (const pref of prefer.split(",")) {
    const token = pref.split(/[;=]/, 1)[0].trim().toLowerCase();
    if (token === "respond-async") return true;
  }
  return false;
}

/** The branch, as middleware in front of the call routes (`/funccall/*`, `/v1/...`). */
export function callPaths(deps: RouteDeps): MiddlewareHandler<GatewayEnv> {
  const maxBytes = deps.calls.maxBytes;
  const ctx: CallContext = {
    cache: deps.cache,
    bodyLimit: deps.bodyLimit,
    authEnabled: deps.auth.enabled,
    probe: deps.jsonProbe,
    auth: deps.auth,
  };
  const asyncCtx: CallContext = { ...ctx, bodyLimit: Math.min(deps.bodyLimit, maxBytes) };
  return async function callPaths(c, next) {
    const req = c.req.raw;
    const respondAsync = prefersAsync(req.headers.get("prefer"));
    const progress = req.headers.get("x-inferx-progress");
    if (progress !== null && progress !== "1" && progress !== "0") {
      throw new ValidationError(
        `Invalid x-inferx-progress "${
          progress.slice(0, 100)
        }": 1 (follow the call's progress) or 0`,
        "x-inferx-progress",
      );
    }
    if (!respondAsync && req.headers.has("x-inferx-callback-url")) {
      // Answered where it was sent, the call would have no callback: said, not dropped.
      throw new ValidationError(
        "x-inferx-callback-url is for asynchronous calls: add Prefer: respond-async",
        "x-inferx-callback-url",
      );
    }
    if (!respondAsync && progress !== "1") return await next();
    const rec = c.var.call;
    const url = new URL(req.url);
    const incoming = requestCall(req, deps.bodyBudget);
    let input: CallInput;
    const use = respondAsync ? asyncCtx : ctx;
    try {
      if (url.pathname.startsWith("/funccall/")) {
        const call = parseFunccallPath(url.pathname + url.search);
        if (!call) return await next(); // the route explains the path it wants
        input = await funccallInput(
          use,
          c.var.principal,
          incoming,
          call.target,
          call.path,
          rec.t0,
          (t, k) => rec.setTarget(t, k),
        );
      } else {
        input = await openaiInput(
          use,
          c.var.principal,
          incoming,
          url.pathname,
          rec.t0,
          (t, k) => rec.setTarget(t, k),
          url.search,
        );
      }
      if (!respondAsync) {
        if (isStreaming(input, req.headers.get("accept"))) {
          const openai = !url.pathname.startsWith("/funccall/");
          return await progressResponse(deps, input, rec, req.signal, openai);
        }
        const answer = await forward(deps, input, signalSource(req.signal));
        rec.answered(answer);
        return callResponse(answer, rec, req.signal);
      }
      const body = await wholeBody(input.body, use.bodyLimit, deps.bodyBudget);
      const callback = req.headers.get("x-inferx-callback-url") ?? undefined;
      if (callback !== undefined) await deps.calls.callbacks.check(callback);
      // The body, streamed, and the callback's check took their time: the key may be gone.
      deps.auth.stillHolds(c.var.principal);
      const { tenant, namespace, func } = input.target;
      const key = newCallKey();
      const id = callId(tenant, namespace, key);
      const now = Date.now();
      const record: CallRecord = {
        id,
        tenant,
        namespace,
        func,
        principal: c.var.principal.id,
        route: url.pathname,
        method: input.method,
        path: input.path,
        headers: input.headers.filter(([k]) => !GATEWAY_FIELDS.has(k)),
        timeoutMs: input.timeoutMs,
        callback,
        status: "queued",
        maxAttempts: deps.calls.maxAttempts,
        attempts: [],
        acceptedAt: now,
        expiresAt: now + deps.calls.ttlMs,
      };
      await deps.calls.accept(record, body);
      rec.accepted(id);
      return c.json({ id, status: record.status }, 202, {
        location: `/calls/${id}`,
        "preference-applied": "respond-async",
      });
    } catch (err) {
      if (respondAsync && err instanceof BodyTooLarge && use.bodyLimit === maxBytes) {
        throw new InferxError(
          "too_large",
          `Request body is larger than ${maxBytes} bytes, the most an asynchronous call keeps (INFERX_CALL_MAX_BYTES)`,
          { details: { limit: maxBytes } },
        );
      }
      throw err;
    }
  };
}

/** A call's body read whole (a streamed one included), at most `limit` bytes. */
async function wholeBody(
  body: CallInput["body"],
  limit: number,
  budget: BodyBudget,
): Promise<Uint8Array | undefined> {
  const bytes = body instanceof Uint8Array ? body : await readLimited(body, limit, budget);
  return bytes.byteLength ? bytes : undefined;
}
