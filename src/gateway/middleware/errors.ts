/**
 * Errors as the gateway answers them, in one place for the Hono app and the
 * raw warm path: the status from `httpStatus()`, a JSON body, and the fields
 * a client acts on (`WWW-Authenticate` on 401, `Allow` on 405, `Retry-After`
 * on 429 and 503, `x-should-retry: false` where sending it again would not
 * help or could run it twice).
 *
 * @module
 */
import {
  errorBody,
  type ErrorCode,
  httpStatus,
  type InferxError,
  NotFoundError,
} from "../../common/errors.ts";

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

/**
 * Codes a client should not simply send again: no node can hold the
 * function, or a quota is reached; neither clears within a client's retries.
 */
const NOT_RETRIED: ReadonlySet<ErrorCode> = new Set(["unschedulable", "quota_exceeded"]);

/**
 * The failed starts in a row (`details.failed_starts`) from which a failed start is not sent
 * again by a client on its own: the third (back-off 1, 2, 4 s, or 0, 1, 2 in a run whose first
 * worker was replaced at once). A client's library would wait it out and start another worker
 * that fails, up to a minute a try, where its caller is better told now. (Not the back-off left,
 * `retry_after_s`: a call late in a long one has only seconds left.)
 */
const CRASH_LOOP_STARTS = 3;

/**
 * Whether a failed start's `details` say a crash loop: {@linkcode CRASH_LOOP_STARTS} failed starts
 * in a row, or, from a scheduler of the release before, which tells only the back-off left, one
 * of 4 s or more (the third's, at the earliest).
 */
function isCrashLoop(details: Record<string, unknown> | undefined): boolean {
  const starts = details?.failed_starts;
  if (typeof starts === "number") return starts >= CRASH_LOOP_STARTS;
  const backoff = details?.retry_after_s;
  return typeof backoff === "number" && backoff >= 4;
}

/**
 * OpenAI's error `type` by status, which its client libraries expose
 * (`APIError.type`) beside the status.
 */
function openaiType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

/** A model (`model` of an OpenAI-style call) that is no function the caller may call. */
export class ModelNotFound extends NotFoundError {
  constructor(model: string) {
    super(
      model
        ? `The model ${model} does not exist or you do not have access to it`
        : "No model named: GET /v1/models/{model} (GET /v1/models lists them)",
    );
    this.name = "ModelNotFound";
  }
}

/** Whether `path` is one of the OpenAI-style routes (`/v1/...`): their errors are in OpenAI's shape too. */
export const isOpenaiPath = (path: string): boolean => path.startsWith("/v1/");

/**
 * The answer to `err`. `openai`: for an OpenAI-style route, the body also
 * has OpenAI's `type` and `param` (the field at fault, else null), as its
 * clients read them; `code` and `message` are the same.
 */
export function errorAnswer(err: InferxError, openai = false): ErrorAnswer {
  const status = httpStatus(err.code);
  const headers: [string, string][] = [["content-type", "application/json"]];
  if (status === 401) headers.push(["www-authenticate", 'Bearer realm="inferx"']);
  const allow = err.details?.allow;
  if (status === 405 && Array.isArray(allow)) headers.push(["allow", allow.join(", ")]);
  // The worker had the request (it may have run it): not to be sent again blindly, so no
  // `Retry-After`, and `x-should-retry: false` (OpenAI's client libraries would otherwise send it
  // twice more on their own, as they do any 5xx).
  // So too an asynchronous call that may have been stored (it runs if it was).
  const mayHaveRun = err.details?.may_have_run === true || err.details?.may_be_stored === true;
  if ((status === 429 || status === 503) && !mayHaveRun) {
    headers.push(["retry-after", String(retryAfter(err))]);
    // Finer than whole seconds, as OpenAI's client libraries read it (a call rate's wait).
    const ms = err.details?.retry_after_ms;
    if (typeof ms === "number") headers.push(["retry-after-ms", String(ms)]);
  }
  // A quota that clears by itself as calls end (`retryable`) may be tried again. A 504 waited
  // as long as the function's policy says a call waits (`queue_timeout`, or the caller's own
  // limit): sent twice more, a caller of OpenAI's client would wait three times that.
  const crashLoop = err.code === "worker_failed" && isCrashLoop(err.details);
  if (
    mayHaveRun || (NOT_RETRIED.has(err.code) && !err.retryable) || status === 504 || crashLoop
  ) {
    headers.push(["x-should-retry", "false"]);
  }
  return { status, headers, body: JSON.stringify({ error: errorObject(err, openai) }) };
}

/**
 * The `error` object of the answer to `err` (see {@linkcode errorAnswer}): also what a stream
 * already begun ends with, in its `event: error`.
 */
export function errorObject(err: InferxError, openai = false): Record<string, unknown> {
  const { error } = errorBody(err);
  if (!openai) return error;
  const field = err.details?.field;
  return {
    ...error,
    // OpenAI's own code where it has a narrower one than the platform's (`model_not_found`,
    // `rate_limit_exceeded`).
    code: err instanceof ModelNotFound
      ? "model_not_found"
      : err.details?.limit === "max_calls_per_s"
      ? "rate_limit_exceeded"
      : error.code,
    type: openaiType(httpStatus(err.code)),
    param: typeof field === "string" ? field : null,
  };
}

/** `Retry-After` for `err`: `details.retry_after_s` when the error says, else by its code. */
function retryAfter(err: InferxError): number {
  const given = err.details?.retry_after_s;
  if (typeof given === "number" && Number.isFinite(given) && given >= 0) return Math.ceil(given);
  return RETRY_AFTER_S[err.code] ?? 1;
}
