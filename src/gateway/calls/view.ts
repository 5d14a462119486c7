/**
 * A call as `GET /calls/{id}` shows it and as its callback carries it: the
 * status, timings, attempts and, once done, the worker's status code,
 * headers and body — a JSON body as JSON (`body`), any other as base64
 * (`body_base64`).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { jsonText } from "../../common/json.ts";
import type { CallAttempt, CallRecord } from "../../model/call.ts";
import { isJsonType } from "../call.ts";
import {
  checkJson,
  type JsonProbe,
  OFF_THREAD_BYTES,
  ownBytes,
  type ProbeResult,
} from "../json_probe.ts";

/** For a body already found to be JSON (so UTF-8). */
const dec = new TextDecoder();

/**
 * What stands for a JSON body in a view written out, replaced by the body's own text once it was
 * found to be JSON: no other string of a view is it (made anew by each process, never shown).
 */
const SPLICED = `inferx-body-${crypto.randomUUID()}`;

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

/** Whether a result's headers say its body is JSON. */
const isJsonResult = (headers: [string, string][]) =>
  isJsonType(headers.find(([k]) => k === "content-type")?.[1]);

/** The body of a result: parsed when it is JSON, else base64. */
function bodyView(headers: [string, string][], bytes: Uint8Array): Record<string, unknown> {
  if (isJsonResult(headers) && bytes.byteLength) {
    try {
      return { body: JSON.parse(jsonText(bytes)) };
    } catch {
      // Declared JSON but is not: show the bytes.
    }
  }
  return base64View(bytes);
}

const base64View = (bytes: Uint8Array) => ({ body_base64: Buffer.from(bytes).toString("base64") });

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
  return viewOf(c, c.result && bodyView(c.result.headers, resultBytes(c, result)));
}

/** {@linkcode callView} with its result's `body` (or `body_base64`) made already. */
function viewOf(c: CallRecord, body: Record<string, unknown> | undefined): Record<string, unknown> {
  return {
    ...callSummary(c),
    attempts: c.attempts.map(attemptView),
    max_attempts: c.maxAttempts,
    result: c.result && {
      status: c.result.status,
      headers: headerObject(c.result.headers),
      ...body,
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

/** A call's result body: in its record (base64), or apart (`result`). */
function resultBytes(c: CallRecord, result?: Uint8Array): Uint8Array {
  if (c.result?.body === undefined) return result ?? new Uint8Array();
  return Buffer.from(c.result.body, "base64");
}

/**
 * {@linkcode callView} as JSON text, a JSON answer put in as the worker wrote it (its layout and
 * numbers kept), once found to be JSON: a small one here, one larger than `OFF_THREAD_BYTES` in
 * the gateway's thread for large bodies, whatever it holds (parsed and written again on the event
 * loop, 1.3 MB of small objects held every other call for 8 ms: `bench/call_view.ts`). One that is
 * not JSON is shown as base64.
 */
export function callViewText(
  c: CallRecord,
  result: Uint8Array | undefined,
  probe: JsonProbe | undefined,
): string | Promise<string> {
  if (!c.result) return JSON.stringify(viewOf(c, undefined));
  const bytes = resultBytes(c, result);
  if (!bytes.byteLength || !isJsonResult(c.result.headers)) {
    return JSON.stringify(viewOf(c, base64View(bytes)));
  }
  const shown = (r: ProbeResult) => {
    if (!r.ok) return JSON.stringify(viewOf(c, base64View(bytes)));
    const text = JSON.stringify(viewOf(c, { body: SPLICED }));
    return text.replace(`"${SPLICED}"`, () => dec.decode(bytes));
  };
  if (!probe || bytes.byteLength <= OFF_THREAD_BYTES) return shown(checkJson(bytes));
  // That thread stopped (the gateway stopping): checked here.
  return probe.check(ownBytes(bytes)).then(shown, () => shown(checkJson(bytes)));
}
