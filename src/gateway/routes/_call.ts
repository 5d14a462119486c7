/**
 * A worker's answer as a `Response`, for the Hono call routes: the slot is
 * freed and the call recorded when the body has been read to its end, or
 * when the caller stops reading.
 *
 * @module
 */
import type { CallRecord } from "../middleware/observe.ts";
import { type AbortSource, type CallAnswer, cutShortCode } from "../proxy.ts";

const NULL_BODY = new Set([101, 204, 205, 304]);

/**
 * The `Response` for `answer`. `signal`: the caller's request's, which says
 * whether a read that broke off did so because the caller left (its
 * connection to the worker is closed then).
 */
export function callResponse(
  answer: CallAnswer,
  rec: CallRecord,
  signal?: AbortSignal,
): Response {
  const init = { status: answer.status, statusText: answer.statusText, headers: answer.headers };
  if (answer.bytes || NULL_BODY.has(answer.status)) {
    answer.finish(true);
    rec.finished();
    return new Response(NULL_BODY.has(answer.status) ? null : answer.bytes as BodyInit, init);
  }
  if (answer.length !== undefined) answer.headers.push(["content-length", String(answer.length)]);
  let done = false;
  const end = (delivered: boolean, err?: unknown, gone = false) => {
    if (done) return;
    done = true;
    answer.finish(delivered);
    if (gone) rec.callerGone();
    else rec.finished(cutShortCode(err));
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const chunk = await answer.read();
        if (chunk === null) {
          controller.close();
          end(true);
        } else {
          controller.enqueue(chunk);
          rec.tokens?.chunk(chunk, performance.now()); // read after it was passed on
        }
      } catch (err) {
        // The caller left (its going closed the worker's connection): not the worker's failure.
        end(false, err, signal?.aborted === true);
        controller.error(err);
      }
    },
    cancel() {
      end(false, undefined, true); // the caller stopped reading: gone, as on the raw path
    },
  });
  return new Response(body, init);
}

/** A request's signal as an {@linkcode AbortSource}. */
export function signalSource(signal: AbortSignal): AbortSource {
  return {
    onAbort(fn) {
      if (signal.aborted) fn();
      else signal.addEventListener("abort", fn, { once: true });
    },
  };
}
