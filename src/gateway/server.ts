/**
 * The gateway's listener, on the raw HTTP/1.1 server (`http1/server.ts`):
 * calls of functions (`/funccall/...`, `POST /v1/completions`,
 * `POST /v1/chat/completions`) take the warm path — authenticate from the
 * key cache, take a slot, forward, write the worker's answer, release,
 * count — without `Request`/`Response` objects; every other route (and a
 * call with `Prefer` or `x-inferx-progress`: `calls/accept.ts`) is built
 * into a `Request` and answered by the Hono app. Both paths prepare calls
 * (`call.ts`), forward them (`proxy.ts`) and record them
 * (`middleware/observe.ts`) with the same code.
 *
 * @module
 */
import type { Hono } from "hono";
import { InferxError, toInferxError, ValidationError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { ambiguousPath } from "../common/net.ts";
import { type CallContext, funccallInput, openaiInput, parseFunccallPath } from "./call.ts";
import {
  ConnectionClosed,
  hostProblem,
  type Http1Limits,
  type Http1Request,
  type Http1Response,
  type Http1Server,
  serveHttp1,
  toRequest,
} from "./http1/server.ts";
import { localOnly } from "./local_only.ts";
import type { FuncCache } from "./func_cache.ts";
import { errorAnswer, isOpenaiPath } from "./middleware/errors.ts";
import { CallRecord, type ObserveOptions } from "./middleware/observe.ts";
import {
  type CallAnswer,
  callerLeft,
  type CallInput,
  cutShortCode,
  forward,
  type FuncTarget,
  STOPPING,
} from "./proxy.ts";
import { OPENAI_CALL_PATHS } from "./routes/openai.ts";
import { wantsCallPath } from "./calls/accept.ts";
import type { GatewayEnv, RouteDeps } from "./types.ts";

const log = logger("gateway");

/** Options of {@linkcode serveGateway}. */
export interface GatewayServerOptions extends Partial<Http1Limits> {
  /** @default "127.0.0.1" */
  hostname?: string;
  port: number;
  /** Share the port with other gateway processes (SO_REUSEPORT). @default false */
  reusePort?: boolean;
}

/** Serves `app` on a socket, with calls of functions on the warm path. */
export function serveGateway(
  app: Hono<GatewayEnv>,
  deps: RouteDeps,
  options: GatewayServerOptions,
): Http1Server {
  const ctx: CallContext = {
    cache: deps.cache,
    bodyLimit: deps.bodyLimit,
    authEnabled: deps.auth.enabled,
    probe: deps.jsonProbe,
    auth: deps.auth,
  };
  // Without auth, web pages of other sites are kept out (see the module).
  const guard = deps.auth.enabled ? undefined : localOnly(options.hostname ?? "127.0.0.1");
  const observed: ObserveOptions = {
    metrics: deps.metrics,
    audit: deps.audit,
    gatewayId: deps.gatewayId,
    cache: deps.cache,
  };

  async function call(
    req: Http1Request,
    res: Http1Response,
    path: string,
    parsed?: { target: FuncTarget; path: string },
    query = "",
  ) {
    const t0 = performance.now();
    const rec = new CallRecord(observed, req.method, path, t0);
    let answer: CallAnswer;
    try {
      const p = deps.auth.authenticate(req);
      const principal = p instanceof Promise ? await p : p;
      rec.principal = principal.id;
      let input: CallInput | Promise<CallInput>;
      if (parsed) {
        input = funccallInput(
          ctx,
          principal,
          req,
          parsed.target,
          parsed.path,
          t0,
          (t, k) => rec.setTarget(t, k),
        );
      } else {
        input = openaiInput(
          ctx,
          principal,
          req,
          path,
          t0,
          (t, k) => rec.setTarget(t, k),
          query,
        );
      }
      if (input instanceof Promise) input = await input;
      answer = await forward(deps, input, req);
      rec.answered(answer);
    } catch (err) {
      if (callerLeft(err)) return callerGone(rec, req);
      const e = toInferxError(err);
      if (e.code === "internal") log.error("Call failed: {error}", { error: String(err) });
      // Refused before its target was looked at (its credentials): still its function's call.
      if (parsed && !rec.target) rec.named(parsed.target);
      rec.failed(e);
      const a = errorAnswer(e, !parsed);
      return await res.send(a.status, a.headers, a.body);
    }
    if (answer.bytes !== undefined) {
      answer.finish(true);
      try {
        // HEAD: the head alone, with the length the worker declared.
        if (req.method === "HEAD") {
          await res.start(answer.status, answer.headers, answer.length, answer.statusText);
        } else await res.send(answer.status, answer.headers, answer.bytes, answer.statusText);
      } finally {
        rec.finished();
      }
      return;
    }
    // A caller that goes away mid-stream cuts the answer short (the worker's request is
    // broken off): recorded as 499, as nginx logs it, and not ended as if it were whole.
    let gone = false;
    req.onAbort(() => gone = true);
    try {
      await res.start(answer.status, answer.headers, answer.length, answer.statusText);
      for (let c; (c = await answer.read()) !== null;) {
        await res.write(c);
        rec.tokens?.chunk(c, performance.now()); // a copy of what went out, read after it did
      }
      if (gone) {
        answer.finish(false);
        return callerGone(rec, req);
      }
      await res.end();
      answer.finish(true);
    } catch (err) {
      answer.finish(false);
      if (gone || err instanceof ConnectionClosed) return callerGone(rec, req);
      rec.finished(cutShortCode(err));
      throw err;
    } finally {
      rec.finished();
    }
  }

  /** Refuses a request before it is routed; a call's refusal is recorded as any call's is. */
  function refuse(req: Http1Request, res: Http1Response, path: string, e: InferxError) {
    if (req.url.startsWith("/funccall/") || req.url.startsWith("/v1/")) {
      new CallRecord(observed, req.method, path, performance.now()).failed(e);
    }
    const a = errorAnswer(e, isOpenaiPath(req.url));
    return res.send(a.status, a.headers, a.body);
  }

  async function viaApp(req: Http1Request, res: Http1Response) {
    const abort = new AbortController();
    req.onAbort(() => abort.abort());
    let request: Request;
    try {
      request = toRequest(req, deps.bodyLimit, abort.signal);
    } catch (err) {
      const a = errorAnswer(toInferxError(err), isOpenaiPath(req.url));
      return await res.send(a.status, a.headers, a.body);
    }
    const response = await app.fetch(request);
    await res.sendResponse(response);
  }

  return serveHttp1({
    bodyBudget: deps.bodyBudget,
    hostname: options.hostname,
    port: options.port,
    reusePort: options.reusePort,
    maxHeadBytes: options.maxHeadBytes,
    maxHeaders: options.maxHeaders,
    maxUrlBytes: options.maxUrlBytes,
    headersTimeoutMs: options.headersTimeoutMs,
    keepAliveTimeoutMs: options.keepAliveTimeoutMs,
    bodyTimeoutMs: options.bodyTimeoutMs,
    sendTimeoutMs: options.sendTimeoutMs,
    onError: (err) => log.error("Request failed: {error}", { error: String(err) }),
    handler(req, res) {
      const url = req.url;
      const q = url.indexOf("?");
      const path = q < 0 ? url : url.slice(0, q);
      if (guard) {
        // A Host that is none (two of them, say) is malformed before it is anyone's.
        const malformed = url.startsWith("/") ? hostProblem(req.headers) : undefined;
        if (malformed) return refuse(req, res, path, new ValidationError(malformed, "host"));
        const refused = guard(req.method, req.header("host"), req.header("origin"));
        if (refused !== undefined) {
          return refuse(req, res, path, new InferxError("forbidden", refused));
        }
      }
      if (ambiguousPath(path)) {
        // Resolved by a URL (the app's routes) but not by the warm path's split: one target
        // would name two functions.
        return refuse(
          req,
          res,
          path,
          new ValidationError(
            `Invalid request target: a path with a "." or ".." segment, a "\\" or a "#"`,
            "path",
          ),
        );
      }
      if (url.startsWith("/funccall/")) {
        const parsed = parseFunccallPath(url);
        if (parsed && !wantsCallPath(req.headers)) return call(req, res, path, parsed);
      } else if (
        req.method === "POST" && OPENAI_CALL_PATHS.has(path) && !wantsCallPath(req.headers)
      ) {
        return call(req, res, path, undefined, q < 0 ? "" : url.slice(q));
      }
      // Everything else, and calls that asked to go async or to see their
      // wait (`Prefer`, `x-inferx-progress`), through the app.
      return viaApp(req, res);
    },
  });
}

/** A call whose connection ended before its answer was whole: by its caller, or by the gateway's stop. */
function callerGone(rec: CallRecord, req: Http1Request): void {
  if (req.cutByStop) rec.stopped();
  else rec.callerGone();
}

/**
 * A gateway's stop, as far as calls go: calls waiting for a worker, and new
 * ones, are answered 503 at once; those under way get `drainMs` to finish,
 * then their connections close (recorded as `gateway_stopped`).
 */
export async function drainCalls(
  cache: Pick<FuncCache, "drain">,
  server: Pick<Http1Server, "shutdown">,
  drainMs: number,
): Promise<void> {
  // The server first: its connections are marked to close before the waiting calls' 503s.
  const shutdown = server.shutdown(drainMs);
  cache.drain(STOPPING);
  await shutdown;
}
