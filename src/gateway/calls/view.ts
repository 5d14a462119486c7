/**
 * A call as `GET /calls/{id}` shows it and as its callback carries it: the
 * status, timings, attempts and, once done, the worker's status code,
 * headers and body — a JSON body as JSON (`body`), any other as base64
 * (`body_base64`).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { CallAttempt, CallRecord } from "../../model/call.ts";
import { isJsonType } from "../call.ts";

const iso = (ms: number | undefined) => ms === undefined ? undefined : new Date(ms).toISOString();

/** Header pairs as an object; repeated fields joined with `, `. */
function headerObject(headers: [string, string][]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of headers) out[k] = k in out ? `${out[k]}, ${v}` : v;
  return out;
}

function attemptView(a: CallAttempt) {
  return {
    n: a.n,
    gateway: a.gateway,
    started_at: iso(a.startedAt),
    ended_at: iso(a.endedAt),
    status: a.status,
    pod: a.pod,
    error: a.error,
  };
}

/** The body of a result: parsed when it is JSON, else base64. */
function bodyView(headers: [string, string][], bytes: Uint8Array): Record<string, unknown> {
  const type = headers.find(([k]) => k === "content-type")?.[1] ?? "";
  if (isJsonType(type) && bytes.byteLength) {
    try {
      return { body: JSON.parse(new TextDecoder().decode(bytes)) };
    } catch {
      // Declared JSON but is not: show the bytes.
    }
  }
  return { body_base64: Buffer.from(bytes).toString("base64") };
}

/** A call without its result: what `GET /calls` lists. */
export function callSummary(c: CallRecord): Record<string, unknown> {
  const queueMs = c.startedAt === undefined ? undefined : c.startedAt - c.acceptedAt;
  const runMs = c.startedAt === undefined || c.finishedAt === undefined
    ? undefined
    : c.finishedAt - c.startedAt;
  return {
    id: c.id,
    function: `${c.tenant}/${c.namespace}/${c.func}`,
    status: c.status,
    method: c.method,
    path: c.path,
    accepted_at: iso(c.acceptedAt),
    started_at: iso(c.startedAt),
    finished_at: iso(c.finishedAt),
    expires_at: iso(c.expiresAt),
    queue_ms: queueMs,
    run_ms: runMs,
    attempts: c.attempts.length,
    status_code: c.result?.status,
  };
}

/**
 * The whole call: what `GET /calls/{id}` answers and its callback sends.
 * `result` is the answer's body, kept apart from the record (src/model/call.ts).
 */
export function callView(c: CallRecord, result?: Uint8Array): Record<string, unknown> {
  return {
    ...callSummary(c),
    attempts: c.attempts.map(attemptView),
    max_attempts: c.maxAttempts,
    result: c.result && {
      status: c.result.status,
      headers: headerObject(c.result.headers),
      ...bodyView(
        c.result.headers,
        c.result.body === undefined
          ? result ?? new Uint8Array()
          : Buffer.from(c.result.body, "base64"),
      ),
    },
    error: c.error,
    callback: c.callback && {
      url: c.callback,
      state: c.delivery?.state ?? "pending",
      attempts: c.delivery?.attempts ?? 0,
      status: c.delivery?.status,
      last_error: c.delivery?.lastError,
      delivered_at: iso(c.delivery?.state === "delivered" ? c.delivery.at : undefined),
    },
  };
}
