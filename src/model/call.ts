/**
 * Asynchronous calls as the store keeps them: one record per call under
 * `/registry/call/{tenant}/{namespace}/{key}`, holding the request, its
 * state, the attempts, the claim of the gateway running it and, when done,
 * the worker's status and headers. Bodies over {@linkcode CALL_INLINE_MAX}
 * bytes live apart, each written once: the request's at
 * `/registry/callbody/{tenant}/{namespace}/{key}` (until the call ends) and
 * the answer's at `.../{key}.result` — the record is rewritten at every claim
 * renewal (every few seconds while a call runs) and is followed by every
 * gateway's watch, so it stays small; a small body rides in the record,
 * which saves a call two to three store writes. A tenant's
 * callback secret lives under `/registry/callsecret/system/system/{tenant}`.
 * None is a user object type: gateways write them, the state service
 * validates them here.
 *
 * A call's public id is `{tenant}:{namespace}:{key}`, so the gateway can
 * authorize a caller for the call's namespace before reading the store.
 *
 * @module
 */
import { z } from "zod";
import { invalidInput, ValidationError } from "../common/errors.ts";
import { isValidName } from "./keys.ts";

/** Where a call stands. */
export const CALL_STATUSES = [
  "queued",
  "running",
  "succeeded",
  "failed",
  "cancelled",
  "expired",
] as const;
/** One of {@linkcode CALL_STATUSES}. */
export type CallStatus = typeof CALL_STATUSES[number];

/** The statuses a call ends in. */
export const FINAL_STATUSES: ReadonlySet<CallStatus> = new Set([
  "succeeded",
  "failed",
  "cancelled",
  "expired",
]);

const KEY_RE = /^c[0-9a-f]{24}$/;
const Header = z.tuple([z.string().min(1), z.string()]);

/**
 * Padded base64 with no whitespace (`atob` would skip it), as `Buffer`
 * writes it. zod's `base64()` checks the same with two regular expressions
 * over the whole string as well: about 10 ms a MB, on the event loop, each
 * time a large call body was stored or read; this takes well under one.
 */
function isBase64(s: string): boolean {
  if (s.length % 4 !== 0) return false;
  for (const ws of ["\t", "\n", "\f", "\r", " "]) if (s.includes(ws)) return false;
  try {
    atob(s);
    return true;
  } catch {
    return false;
  }
}
const base64 = z.string().refine(isBase64, { message: "Invalid base64" });
const ErrorSchema = z.object({ code: z.string().min(1), message: z.string() });

/** One try at running a call. */
export const CallAttemptSchema = z.object({
  n: z.int().min(1),
  /** The gateway that ran it. */
  gateway: z.string().min(1),
  /** Epoch ms. */
  startedAt: z.number(),
  endedAt: z.number().optional(),
  /** The worker's status code, when it answered. */
  status: z.int().optional(),
  pod: z.string().optional(),
  error: ErrorSchema.optional(),
});
/** One try at running a call. */
export type CallAttempt = z.infer<typeof CallAttemptSchema>;

/** A stored call. Times are epoch milliseconds; bodies are base64. */
export const CallRecordSchema = z.object({
  id: z.string(),
  tenant: z.string(),
  namespace: z.string(),
  func: z.string().min(1),
  /** Who called (`admin`, `key:{id}`, ...): never a secret. */
  principal: z.string().min(1),
  /** The path the caller used (`/funccall/...`, `/v1/...`), for the audit. */
  route: z.string().startsWith("/"),
  method: z.string().min(1),
  /** Path and query on the worker. */
  path: z.string().startsWith("/"),
  headers: z.array(Header),
  /** The request body, when it is small enough to ride in the record. */
  body: base64.optional(),
  /** The request body's size, when it is kept apart ({@linkcode callBodyRef}). */
  bodyBytes: z.int().min(0).optional(),
  /** The caller's wait limit for a worker (ms), per attempt. */
  timeoutMs: z.number().positive().optional(),
  /** Where the result is POSTed when the call ends. */
  callback: z.url({ protocol: /^https?$/ }).optional(),
  status: z.enum(CALL_STATUSES),
  /** The gateway holding the claim, until `leaseUntil`. */
  owner: z.string().min(1).optional(),
  leaseUntil: z.number().optional(),
  /** Not to be tried again before this time (backoff after a failed attempt). */
  notBefore: z.number().optional(),
  maxAttempts: z.int().min(1).max(100),
  attempts: z.array(CallAttemptSchema),
  acceptedAt: z.number(),
  startedAt: z.number().optional(),
  finishedAt: z.number().optional(),
  /** When the record goes (or, unfinished, when the call expires). */
  expiresAt: z.number(),
  result: z.object({
    status: z.int().min(100).max(999),
    headers: z.array(Header),
    /** The answer's body, when it is small enough to ride in the record. */
    body: base64.optional(),
    /** The answer body's size, when it is kept apart ({@linkcode callBodyRef}). */
    bytes: z.int().min(0).optional(),
  }).refine((r) => r.body !== undefined || r.bytes !== undefined, {
    message: "a result has its body or the size of the body kept apart",
    path: ["bytes"],
  }).optional(),
  error: ErrorSchema.optional(),
  delivery: z.object({
    state: z.enum(["pending", "delivered", "failed"]),
    attempts: z.int().min(0),
    /** The receiver's status code on the last try. */
    status: z.int().optional(),
    lastError: z.string().optional(),
    at: z.number().optional(),
  }).optional(),
});
/** A stored call. */
export type CallRecord = z.infer<typeof CallRecordSchema>;

/** The largest body kept in a call's record; a larger one is kept apart ({@linkcode callBodyRef}). */
export const CALL_INLINE_MAX = 4096;

/** A request or answer body of a call, kept apart from its record. */
export const CallBodySchema = z.object({ body: base64 });
/** A request or answer body of a call, kept apart from its record. */
export type CallBody = z.infer<typeof CallBodySchema>;

/** Which body of a call: the request's (kept while it may run) or the answer's. */
export type CallBodyPart = "request" | "result";

/** What a call's key is followed by in the name of its answer's body. */
const RESULT_SUFFIX = ".result";

/** The key of the call whose answer's body is named `name`; undefined for any other name. */
export function resultBodyCall(name: string): string | undefined {
  if (!name.endsWith(RESULT_SUFFIX)) return undefined;
  const key = name.slice(0, -RESULT_SUFFIX.length);
  return KEY_RE.test(key) ? key : undefined;
}

/** The store reference of one body of the call stored at `ref` (type `call`, name its key). */
export function callBodyRef(
  ref: { tenant: string; namespace: string; name: string },
  part: CallBodyPart,
): { type: "callbody"; tenant: string; namespace: string; name: string } {
  const name = part === "request" ? ref.name : `${ref.name}${RESULT_SUFFIX}`;
  return { type: "callbody", tenant: ref.tenant, namespace: ref.namespace, name };
}

/** A tenant's callback signing secret. */
export const CallSecretSchema = z.object({
  tenant: z.string(),
  /** 32 random bytes, hex. */
  secret: z.string().regex(/^[0-9a-f]{64}$/),
  createdAt: z.number(),
});
/** A tenant's callback signing secret. */
export type CallSecret = z.infer<typeof CallSecretSchema>;

/** A new store key for a call: `c` and 12 random bytes in hex. */
export function newCallKey(): string {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return `c${Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("")}`;
}

/** The public id of the call stored at `tenant/namespace/key`. */
export function callId(tenant: string, namespace: string, key: string): string {
  return `${tenant}:${namespace}:${key}`;
}

/** The tenant, namespace and store key an id names; throws 404 for a malformed id. */
export function parseCallId(id: string): { tenant: string; namespace: string; key: string } {
  const [tenant, namespace, key, ...rest] = id.split(":");
  if (
    rest.length || !tenant || !namespace || !key || !isValidName(tenant) ||
    !isValidName(namespace) || !KEY_RE.test(key)
  ) {
    throw new ValidationError(
      `Invalid call id "${id}": expected TENANT:NAMESPACE:KEY as returned by the 202 answer`,
      "id",
    );
  }
  return { tenant, namespace, key };
}

/**
 * Validates a call record written at `tenant/namespace/name`; returns the
 * value to store. Throws {@linkcode ValidationError} naming the first bad field.
 */
export function admitCallRecord(
  ref: { tenant: string; namespace: string; name: string },
  object: unknown,
): string {
  const what = `call ${ref.tenant}/${ref.namespace}/${ref.name}`;
  const r = CallRecordSchema.safeParse(object);
  if (!r.success) throw invalidInput(what, r.error);
  const c = r.data;
  if (c.tenant !== ref.tenant || c.namespace !== ref.namespace || !KEY_RE.test(ref.name)) {
    throw new ValidationError(`Invalid ${what}: tenant, namespace and key must match`, "id");
  }
  if (c.id !== callId(ref.tenant, ref.namespace, ref.name)) {
    throw new ValidationError(`Invalid ${what}: id must be tenant:namespace:key`, "id");
  }
  return JSON.stringify(c);
}

/** Validates a call body written at `tenant/namespace/name`; returns the value to store. */
export function admitCallBody(
  ref: { tenant: string; namespace: string; name: string },
  object: unknown,
): string {
  const what = `callbody ${ref.tenant}/${ref.namespace}/${ref.name}`;
  const r = CallBodySchema.safeParse(object);
  if (!r.success) throw invalidInput(what, r.error);
  if (
    !isValidName(ref.tenant) || !isValidName(ref.namespace) ||
    !KEY_RE.test(resultBodyCall(ref.name) ?? ref.name)
  ) {
    throw new ValidationError(
      `Invalid ${what}: the name is a call's key, or it and .result`,
      "name",
    );
  }
  return JSON.stringify(r.data);
}

/** Validates a tenant's callback secret written at `system/system/{tenant}`. */
export function admitCallSecret(name: string, object: unknown): string {
  const r = CallSecretSchema.safeParse(object);
  if (!r.success) throw invalidInput(`callsecret ${name}`, r.error);
  if (r.data.tenant !== name || !isValidName(name)) {
    throw new ValidationError(`Invalid callsecret ${name}: tenant must match the name`, "tenant");
  }
  return JSON.stringify(r.data);
}

/** The base64 body of a stored call body (validated when written). */
export function decodeCallBody(value: string): string {
  const r = CallBodySchema.safeParse(JSON.parse(value));
  if (!r.success) throw invalidInput("stored call body", r.error);
  return r.data.body;
}

/** Decodes a stored call record (validated when written). */
export function decodeCall(value: string): CallRecord {
  const r = CallRecordSchema.safeParse(JSON.parse(value));
  if (!r.success) throw invalidInput("stored call", r.error);
  return r.data;
}
