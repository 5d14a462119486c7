/**
 * Turning an incoming request into a call of a function ({@linkcode CallInput}):
 * the target from `/funccall/{tenant}/{namespace}/{function}/{path}` or the
 * OpenAI-style body's `model`, the caller's authorization, the body (JSON
 * read whole and checked, so it can be retried; anything else streamed), the
 * headers to forward and the caller's own timeout. Used by the raw warm path
 * and by the Hono routes alike, so both treat a call the same way.
 *
 * @module
 */
import { InferxError, NotFoundError, ValidationError } from "../common/errors.ts";
import {
  type CallFields,
  type JsonProbe,
  OFF_THREAD_BYTES,
  ownBytes,
  probeJson,
  type ProbeResult,
} from "./json_probe.ts";
import { type BodyBudget, BodyTooLarge, UNBOUNDED_BODIES } from "./http1/server.ts";
import { ModelNotFound } from "./middleware/errors.ts";
import { allows, allowsOwn, type Authenticator, authorize, type Principal } from "./auth.ts";
import type { FuncCache } from "./func_cache.ts";
import { type CallInput, forwardHeaders, type FuncTarget } from "./proxy.ts";

/** A request as a call needs it, whatever the transport. */
export interface IncomingCall {
  readonly method: string;
  /** Header fields, names in lower case. */
  readonly headers: Iterable<readonly [string, string]>;
  get(name: string): string | null | undefined;
  readonly hasBody: boolean;
  /** The declared body length, when known. */
  readonly contentLength: number | undefined;
  /** The whole body; 413 past `limit`. */
  readAll(limit: number): Promise<Uint8Array>;
  /** The whole body if it is already in, without waiting (the warm path's usual case). */
  bodyNow?(limit: number): Uint8Array | undefined;
  /** The body as it comes; 413 past `limit`. */
  chunks(limit: number): AsyncIterable<Uint8Array>;
}

/** What preparing a call needs. */
export interface CallContext {
  cache: FuncCache;
  /** Largest request body (bytes). */
  bodyLimit: number;
  /** Auth is on: the platform's credentials are not forwarded. */
  authEnabled: boolean;
  /** Where JSON bodies past `OFF_THREAD_BYTES` are read; none: on the event loop. */
  probe?: JsonProbe;
  /** Checks again, once a body that was not in at the head is, that its caller's key holds. */
  auth?: Pick<Authenticator, "stillHolds">;
}

const CREDENTIALS: ReadonlySet<string> = new Set(["authorization", "x-api-key"]);
const PREFIX = "/funccall/";

/**
 * The function and worker path a `/funccall/...` target names, or undefined
 * when the target is not a complete call path.
 */
export function parseFunccallPath(url: string): { target: FuncTarget; path: string } | undefined {
  if (!url.startsWith(PREFIX)) return undefined;
  const a = url.indexOf("/", PREFIX.length);
  const b = a < 0 ? -1 : url.indexOf("/", a + 1);
  if (a < 0 || b < 0) return undefined;
  let end = url.length;
  for (let i = b + 1; i < url.length; i++) {
    const ch = url.charCodeAt(i);
    if (ch === 47 /* / */ || ch === 63 /* ? */) {
      end = i;
      break;
    }
  }
  const tenant = url.slice(PREFIX.length, a);
  const namespace = url.slice(a + 1, b);
  const func = url.slice(b + 1, end);
  if (!tenant || !namespace || !func) return undefined;
  const rest = url.slice(end);
  return {
    target: { tenant, namespace, func },
    path: rest === "" ? "/" : rest.charCodeAt(0) === 63 ? `/${rest}` : rest,
  };
}

/**
 * A `/funccall` call: authorized, its function known, its body read or
 * streaming. `named` learns the target at once, and whether this gateway
 * knows its function (for the record of a call refused later), then again
 * when a function it had not seen yet is found in the store
 * (`FuncCache.lookup`).
 */
export function funccallInput(
  ctx: CallContext,
  principal: Principal,
  req: IncomingCall,
  target: FuncTarget,
  path: string,
  t0: number,
  named?: (target: FuncTarget, known: boolean) => void,
): CallInput | Promise<CallInput> {
  const known = ctx.cache.agent(target.tenant, target.namespace, target.func);
  named?.(target, known !== undefined);
  authorize(principal, "inference", target.tenant, target.namespace);
  if (known) {
    ctx.cache.limits.admit(target);
    return knownInput(ctx, principal, req, target, path, t0);
  }
  const found = ctx.cache.lookup(target.tenant, target.namespace, target.func);
  if (!(found instanceof Promise)) {
    if (!found) throw notFound(target);
    ctx.cache.limits.admit(target);
    return knownInput(ctx, principal, req, target, path, t0);
  }
  return found.then((a) => {
    if (!a) throw notFound(target);
    named?.(target, true);
    ctx.cache.limits.admit(target);
    return knownInput(ctx, principal, req, target, path, t0);
  });
}

function notFound(t: FuncTarget): NotFoundError {
  return new NotFoundError(`Function ${t.tenant}/${t.namespace}/${t.func} does not exist`);
}

/**
 * The function a bare model name (`ngram`) names for `principal`: among
 * those its own grants reach, else among those every caller may call
 * (`public`'s), so that a tenant's `ngram` is not made ambiguous by
 * `public/demo/ngram`. Throws when several match at the same level.
 */
export function resolveBareModel(
  cache: FuncCache,
  principal: Principal,
  model: string,
): FuncTarget | undefined {
  return cache.resolveModel(model, (t, ns) => allowsOwn(principal, "inference", t, ns)) ??
    cache.resolveModel(model, (t, ns) => allows(principal, "inference", t, ns));
}

/** A `/funccall` call of a function the cache has. */
function knownInput(
  ctx: CallContext,
  principal: Principal,
  req: IncomingCall,
  target: FuncTarget,
  path: string,
  t0: number,
): CallInput | Promise<CallInput> {
  const timeoutMs = timeoutHeader(req);
  const make = (body: BodyRead): CallInput => ({
    target,
    method: req.method,
    path,
    headers: forwardHeaders(req.headers, ctx.authEnabled ? CREDENTIALS : undefined),
    body: body.bytes ?? body.stream ?? null,
    replayable: body.stream === undefined,
    timeoutMs,
    tokens: maxTokens(body.json),
    stream: body.json?.stream === true,
    t0,
    principal,
  });
  const body = readBody(ctx, req);
  return body instanceof Promise ? body.then((b) => make(held(ctx, principal, b))) : make(body);
}

/**
 * `body`, once `principal` is found to hold still (its key not revoked
 * while the body came: a call must not run for a key its owner has taken
 * back, on a function that may be someone else's by then).
 */
function held<T>(ctx: CallContext, principal: Principal, body: T): T {
  ctx.auth?.stillHolds(principal);
  return body;
}

/**
 * Whether a `Content-Type` is JSON: `application/json` or an `application/*+json`
 * type, parameters aside (`application/x-ndjson` is lines of JSON, not JSON).
 */
export function isJsonType(type: string | null | undefined): boolean {
  const media = (type ?? "").split(";")[0].trim().toLowerCase();
  return media === "application/json" ||
    (media.startsWith("application/") && media.endsWith("+json"));
}

/**
 * An OpenAI-style call (`/v1/completions`, `/v1/chat/completions`): the JSON
 * body's `model` names the function, as `tenant/namespace/name` or a name
 * only one function the caller may call has. `named` learns the target as
 * soon as it is known (for the record of a call refused later). The worker
 * gets `path` with `query` (`?api-version=...`, as Azure-style clients send).
 */
export function openaiInput(
  ctx: CallContext,
  principal: Principal,
  req: IncomingCall,
  path: string,
  t0: number,
  named: ((target: FuncTarget, known: boolean) => void) | undefined,
  query: string,
): CallInput | Promise<CallInput> {
  if (!isJsonType(req.get("content-type"))) {
    throw new InferxError(
      "unsupported_media_type",
      `${path} takes a JSON body (Content-Type: application/json)`,
      { details: { field: "content-type" } },
    );
  }
  const body = readBody(ctx, req);
  if (body instanceof Promise) {
    return body.then((b) =>
      openaiTarget(ctx, principal, req, path + query, t0, held(ctx, principal, b), named)
    );
  }
  return openaiTarget(ctx, principal, req, path + query, t0, body, named);
}

/** The function an OpenAI-style call names, and the call to `path` (on the worker) of it. */
function openaiTarget(
  ctx: CallContext,
  principal: Principal,
  req: IncomingCall,
  path: string,
  t0: number,
  body: BodyRead,
  named?: (target: FuncTarget, known: boolean) => void,
): CallInput | Promise<CallInput> {
  const model = (body.json as { model?: unknown } | undefined)?.model;
  if (typeof model !== "string" || !model) {
    throw new ValidationError(
      "Invalid request: model: the function to call (tenant/namespace/name)",
      "model",
    );
  }
  const target = model.includes("/")
    ? ctx.cache.resolveModel(model)
    : resolveBareModel(ctx.cache, principal, model);
  if (!target) {
    const parts = model.split("/");
    if (parts.length !== 3) throw new ModelNotFound(model);
    const named3 = { tenant: parts[0], namespace: parts[1], func: parts[2] };
    named?.(named3, false);
    mayCallModel(principal, named3, model);
    // A function this gateway has not seen yet, by its full name: looked up in the store.
    const found = ctx.cache.lookup(parts[0], parts[1], parts[2]);
    const input = (a: unknown) => {
      if (!a) throw new ModelNotFound(model);
      named?.(named3, true);
      return modelInput(req, principal, path, t0, body, named3, ctx);
    };
    return found instanceof Promise ? found.then(input) : input(found);
  }
  named?.(target, true);
  mayCallModel(principal, target, model);
  return modelInput(req, principal, path, t0, body, target, ctx);
}

/**
 * Throws unless `principal` may call `target`, named `model`: as OpenAI's
 * API does, a model the caller cannot reach is one that does not exist for
 * it (404 `model_not_found`, as `GET /v1/models/{model}` answers), whether
 * it exists or not. (Every scope that reads a namespace may call in it, so
 * no caller who could see the function is told less than it could learn.)
 * A caller without credentials is told 401 to send some, as elsewhere.
 */
function mayCallModel(principal: Principal, target: FuncTarget, model: string): void {
  if (allows(principal, "inference", target.tenant, target.namespace)) return;
  if (principal.anonymous) authorize(principal, "inference", target.tenant, target.namespace);
  throw new ModelNotFound(model);
}

/** An OpenAI-style call of `target`, a function the cache has, to `path` (its query kept). */
function modelInput(
  req: IncomingCall,
  principal: Principal,
  path: string,
  t0: number,
  body: BodyRead,
  target: FuncTarget,
  ctx: CallContext,
): CallInput {
  ctx.cache.limits.admit(target);
  return {
    target,
    method: req.method,
    path,
    headers: forwardHeaders(req.headers, ctx.authEnabled ? CREDENTIALS : undefined),
    body: body.bytes!,
    replayable: true,
    timeoutMs: timeoutHeader(req),
    tokens: maxTokens(body.json),
    stream: body.json?.stream === true,
    t0,
    principal,
  };
}

/** The tokens a JSON body asks for (`max_tokens`, `max_completion_tokens`), or 0. */
function maxTokens(json: unknown): number {
  if (!json || typeof json !== "object") return 0;
  const b = json as { max_tokens?: unknown; max_completion_tokens?: unknown };
  const n = b.max_tokens ?? b.max_completion_tokens;
  return typeof n === "number" && n > 0 && n < 1e9 ? Math.floor(n) : 0;
}

/** A call's body as read: bytes (JSON: with its top-level call fields) or a stream. */
interface BodyRead {
  bytes?: Uint8Array;
  stream?: AsyncIterable<Uint8Array>;
  /** Of a JSON body, its `CALL_FIELDS` that are strings, numbers or booleans. */
  json?: CallFields;
}

/**
 * Bodies of other types than JSON up to this size (declared) are read whole
 * before the call goes to a worker; larger ones, and chunked ones, stream.
 */
export const BUFFERED_BYTES = 1024 * 1024;

/**
 * A call's body: JSON read whole and parsed (at once when it came with the
 * head; a large one in the gateway's thread for them: `json_probe.ts`);
 * anything else read whole up to `BUFFERED_BYTES`, streamed past it.
 */
function readBody(ctx: CallContext, req: IncomingCall): BodyRead | Promise<BodyRead> {
  if (!req.hasBody || req.method === "GET" || req.method === "HEAD") return {};
  if ((req.contentLength ?? 0) > ctx.bodyLimit) throw new BodyTooLarge(ctx.bodyLimit);
  if (!isJsonType(req.get("content-type"))) {
    // A small body is read whole before a worker's slot is taken, as nginx buffers bodies: one
    // sent a byte a minute would hold the slot (each of a function's, with as many callers).
    const len = req.contentLength;
    if (len === undefined || len > BUFFERED_BYTES) return { stream: req.chunks(ctx.bodyLimit) };
    const whole = req.bodyNow?.(ctx.bodyLimit);
    return whole ? loosely(ctx, whole) : req.readAll(ctx.bodyLimit).then((b) => loosely(ctx, b));
  }
  const now = req.bodyNow?.(ctx.bodyLimit);
  return now ? parsed(ctx, now) : req.readAll(ctx.bodyLimit).then((b) => parsed(ctx, b));
}

/**
 * A buffered body of another type than JSON, with its call fields when it is a JSON object all
 * the same (`curl -d '{"stream": true}'` sends `application/x-www-form-urlencoded`, and a worker
 * may read it as JSON): never refused for not being JSON, it goes to the worker as it came.
 */
function loosely(ctx: CallContext, bytes: Uint8Array): BodyRead | Promise<BodyRead> {
  if (!startsObject(bytes)) return { bytes };
  const fields = (r: ProbeResult): BodyRead => r.ok ? { bytes, json: r.fields } : { bytes };
  if (bytes.byteLength > OFF_THREAD_BYTES && ctx.probe) {
    // That thread stopped (the gateway stopping): the body goes unread, as it came.
    return ctx.probe.probe(ownBytes(bytes)).then(fields, () => ({ bytes }));
  }
  return fields(probeJson(bytes));
}

/** Whether `bytes` begin, past JSON's whitespace, with `{`. */
function startsObject(bytes: Uint8Array): boolean {
  for (const b of bytes) {
    if (b !== 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d) return b === 0x7b;
  }
  return false;
}

function parsed(ctx: CallContext, bytes: Uint8Array): BodyRead | Promise<BodyRead> {
  if (!bytes.byteLength) return { bytes };
  if (bytes.byteLength > OFF_THREAD_BYTES && ctx.probe) {
    return ctx.probe.probe(ownBytes(bytes)).then((r) => bodyRead(bytes, r));
  }
  return bodyRead(bytes, probeJson(bytes));
}

function bodyRead(bytes: Uint8Array, r: ProbeResult): BodyRead {
  if (r.ok) return { bytes, json: r.fields };
  if (r.heavy !== undefined) {
    throw new ValidationError(
      `Request body ${r.heavy}, more than the gateway reads in a JSON body (a /funccall body of another Content-Type goes to the worker unparsed)`,
    );
  }
  throw new ValidationError(`Request body is not valid JSON: ${r.invalid}`);
}

/** `x-inferx-timeout` in milliseconds, when the caller sent one. */
function timeoutHeader(req: IncomingCall): number | undefined {
  const raw = req.get("x-inferx-timeout");
  if (raw === null || raw === undefined) return undefined;
  // Decimal only: Number() also reads "0x10" (16), "1e3" and " " (0).
  const s = /^\s*(?:\d+\.?\d*|\.\d+)\s*$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isFinite(s) || s <= 0 || !Number.isFinite(s * 1000)) {
    throw new ValidationError(
      `Invalid X-Inferx-Timeout "${raw}": must be a positive decimal number of seconds (2, 0.5)`,
      "X-Inferx-Timeout",
    );
  }
  return s * 1000;
}

/** Reads a stream whole, up to `limit` bytes; 413 past it. */
export async function readLimited(
  body: AsyncIterable<Uint8Array> | null,
  limit: number,
  budget?: BodyBudget,
): Promise<Uint8Array<ArrayBuffer>> {
  if (!body) return new Uint8Array(0);
  return await (budget ?? UNBOUNDED_BODIES).readAll(body, limit);
}

/** An incoming call over a `Request` (the Hono routes). */
export function requestCall(req: Request, budget?: BodyBudget): IncomingCall {
  const len = req.headers.get("content-length");
  const headers: [string, string][] = [];
  for (const pair of req.headers) headers.push(pair);
  return {
    method: req.method,
    headers,
    get: (name) => req.headers.get(name),
    hasBody: req.body !== null,
    contentLength: len === null ? undefined : Number(len),
    readAll: (limit) => readLimited(req.body, limit, budget),
    async *chunks(limit) {
      let size = 0;
      for await (const chunk of req.body ?? []) {
        size += chunk.byteLength;
        if (size > limit) throw new BodyTooLarge(limit);
        yield chunk;
      }
    },
  };
}
