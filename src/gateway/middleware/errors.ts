/**
 * Errors as the gateway answers them, in one place for the Hono app and the
 * raw warm path: the status from `httpStatus()`, a JSON body, and the fields
 * a client acts on (`WWW-Authenticate` on 401, `Allow` on 405, `Retry-After`
 * on 429 and 503).
 *
 * @module
 */
import { errorBody, type ErrorCode, httpStatus, type InferxError } from "../../common/errors.ts";

/** An error answer: status, headers and JSON body text. */
export interface ErrorAnswer {
  status: number;
  headers: [string, string][];
  body: string;
}

/**
 * Seconds a client should wait before trying again, by the reason of a 429
 * or 503: a full queue or a worker being replaced clears soon; a quota or a
 * cluster without room for the function takes longer.
 */
const RETRY_AFTER_S: Partial<Record<ErrorCode, number>> = {
  queue_full: 1,
  unavailable: 1,
  worker_failed: 5,
  unschedulable: 30,
  quota_exceeded: 30,
};

/** The answer to `err`. */
export function errorAnswer(err: InferxError): ErrorAnswer {
  const status = httpStatus(err.code);
  const headers: [string, string][] = [["content-type", "application/json"]];
  if (status === 401) headers.push(["www-authenticate", 'Bearer realm="inferx"']);
  const allow = err.details?.allow;
  if (status === 405 && Array.isArray(allow)) headers.push(["allow", allow.join(", ")]);
  if (status === 429 || status === 503) headers.push(["retry-after", String(retryAfter(err))]);
  return { status, headers, body: JSON.stringify(errorBody(err)) };
}

/** `Retry-After` for `err`: `details.retry_after_s` when the error says, else by its code. */
function retryAfter(err: InferxError): number {
  const given = err.details?.retry_after_s;
  if (typeof given === "number" && Number.isFinite(given) && given >= 0) return Math.ceil(given);
  return RETRY_AFTER_S[err.code] ?? 1;
}
