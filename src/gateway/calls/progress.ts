/**
 * Cold-start progress for streaming calls (`x-inferx-progress: 1`): while
 * the call waits for a worker, the answer is already a server-sent event
 * stream whose comment lines name each stage of the wait as it happens —
 * `: queued` (in the function's queue), `: placing` (the scheduler looks for
 * room), `: starting` (a worker is starting), `: restoring` (a parked worker
 * is being restored), `: ready` (a worker took the call) — and then the
 * worker's own stream follows (an answer that is no event stream, a JSON
 * answer to a streaming call, as one `data:` event). The stages come from
 * the function agent's queue and the scheduler's lease answer. A call that finds a free worker at
 * once gets the worker's answer unchanged, and so does a non-streaming call.
 *
 * Once the stream has begun its status is 200; a worker that then answers
 * with an error, or a call that fails while waiting, ends the stream with an
 * `event: error` whose data is `{"status", "error"}` (a worker's answer's
 * own `error`, when it has one).
 *
 * @module
 */
import { httpStatus, InferxError, toInferxError } from "../../common/errors.ts";
import { errorObject } from "../middleware/errors.ts";
import type { CallStage } from "../func_agent.ts";
import type { CallRecord } from "../middleware/observe.ts";
import {
  type CallAnswer,
  callerLeft,
  type CallInput,
  cutShortCode,
  forward,
  type ProxyDeps,
  WORKER_CSP,
} from "../proxy.ts";
import { callResponse, signalSource } from "../routes/_call.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
/** The most of a worker's error answer put into the `error` event. */
const ERROR_BODY_MAX = 64 * 1024;

/**
 * Whether `input` asks for a streamed answer: `Accept: text/event-stream` or `"stream": true` (as
 * the gateway read its JSON body, a large one off the event loop).
 */
export function isStreaming(input: CallInput, accept: string | null): boolean {
  return accept?.toLowerCase().includes("text/event-stream") === true || input.stream === true;
}

/**
 * Forwards `input`, answering with progress comments while it waits for a
 * worker (see the module's description).
 */
export async function progressResponse(
  deps: ProxyDeps,
  input: CallInput,
  rec: CallRecord,
  signal: AbortSignal,
  openai = false,
): Promise<Response> {
  // The platform's error, in OpenAI's shape on its routes (as their answers are).
  const errorOf = (e: InferxError) => errorObject(e, openai);
  const stages: CallStage[] = [];
  let wake: (() => void) | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  input.onProgress = (stage) => {
    stages.push(stage);
    poke();
  };
  let outcome: { answer: CallAnswer } | { error: unknown } | undefined;
  const forwarded = forward(deps, input, signalSource(signal)).then(
    (answer) => outcome = { answer },
    (error) => outcome = { error },
  ).finally(poke);
  if (!stages.length) {
    await Promise.race([forwarded, new Promise<void>((r) => wake = r)]);
    wake = undefined;
  }
  if (!stages.length && outcome) {
    // A free worker took it at once: its answer as it is.
    if ("error" in outcome) throw outcome.error;
    rec.answered(outcome.answer);
    return callResponse(outcome.answer, rec, signal);
  }

  /** The worker's stream, once it answered: the same as a call without progress. */
  let worker: ReadableStreamDefaultReader<Uint8Array> | undefined;
  /** Set when the worker's answer is no event stream: it is sent as one `data:` event. */
  let asEvent: EventLines | undefined;
  let done = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (!worker) {
        if (stages.length) {
          controller.enqueue(enc.encode(stages.splice(0).map((s) => `: ${s}\n\n`).join("")));
          return;
        }
        if (!outcome) {
          await new Promise<void>((r) => wake = r);
          continue;
        }
        done = true;
        if ("error" in outcome) return failed(controller, rec, outcome.error, errorOf);
        const answer = outcome.answer;
        rec.answered(answer);
        if (answer.status >= 400) {
          let [text, whole] = ["", false];
          try {
            [text, whole] = await readSome(answer, ERROR_BODY_MAX);
          } catch {
            // The worker's error answer broke off: say what came.
          }
          answer.finish(whole);
          rec.finished();
          controller.enqueue(errorEvent(answer.status, workerError(text)));
          return controller.close();
        }
        const res = callResponse(answer, rec, signal);
        if (!res.body) return controller.close(); // 204 and the like
        worker = res.body.getReader();
        // The stream already says it is one of events: an answer of
        // another kind (a JSON answer to a streaming call) goes as one.
        if (!res.headers.get("content-type")?.toLowerCase().includes("text/event-stream")) {
          asEvent = new EventLines();
        }
      }
      try {
        const r = await worker.read();
        if (r.done) {
          if (asEvent) controller.enqueue(asEvent.end());
          controller.close();
        } else controller.enqueue(asEvent ? asEvent.push(r.value) : r.value);
      } catch (err) {
        const code = signal.aborted ? undefined : cutShortCode(err);
        if (!code) return controller.error(err);
        // The worker broke its answer off (it died, or sent nothing for answer_timeout): with the
        // status long sent, the stream ends with an error event, after a blank line that ends an
        // event the worker half sent.
        const e = new InferxError(code, (err as Error).message);
        controller.enqueue(enc.encode("\n\n"));
        controller.enqueue(errorEvent(httpStatus(code), errorOf(e)));
        controller.close();
      }
    },
    async cancel(reason) {
      if (worker) return await worker.cancel(reason);
      if (done) return;
      done = true;
      // The caller left while waiting: forward() sees the request's signal
      // and leaves the queue; a worker that answered meanwhile is let go.
      rec.callerGone();
      forwarded.then(() => {
        if (outcome && "answer" in outcome) outcome.answer.finish(false);
      });
    },
  });
  return new Response(body, {
    status: 200,
    headers: {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      "x-inferx-progress": "1",
      // What every answer on /funccall carries (proxy.ts), the worker's stream being in it.
      "content-security-policy": WORKER_CSP,
      "x-content-type-options": "nosniff",
    },
  });
}

function failed(
  controller: ReadableStreamDefaultController<Uint8Array>,
  rec: CallRecord,
  err: unknown,
  errorOf: (e: InferxError) => unknown,
) {
  if (callerLeft(err)) {
    rec.callerGone();
    controller.close();
    return;
  }
  const e: InferxError = toInferxError(err);
  rec.failed(e);
  controller.enqueue(errorEvent(rec.status, errorOf(e)));
  controller.close();
}

const CR = 0x0d;
const LF = 0x0a;
const DATA = enc.encode("data: ");
const NEXT_LINE = enc.encode("\ndata: ");

/**
 * A body of any kind as the data of one server-sent event, as it comes:
 * `data: ` before each of its lines. A line may end with CR, LF or CRLF (each
 * is one end of line to an event stream's reader, which joins the lines with
 * LF), so a CRLF split across two pieces is still one end of line.
 */
export class EventLines {
  #started = false;
  #afterCr = false;

  /** `piece`, with `data: ` after each end of line (and first, before the body's first byte). */
  push(piece: Uint8Array): Uint8Array {
    if (!piece.length && this.#started) return piece; // nothing, and a CR before it still pends
    const parts: Uint8Array[] = [];
    if (!this.#started) {
      this.#started = true;
      parts.push(DATA);
    }
    let from = 0;
    if (this.#afterCr && piece[0] === LF) from = 1; // the LF of a CRLF: its end of line is written
    this.#afterCr = false;
    for (let i = from; i < piece.length; i++) {
      const b = piece[i];
      if (b !== CR && b !== LF) continue;
      parts.push(piece.subarray(from, i), NEXT_LINE);
      if (b === CR && i === piece.length - 1) this.#afterCr = true;
      else if (b === CR && piece[i + 1] === LF) i++;
      from = i + 1;
    }
    parts.push(piece.subarray(from));
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** The event's end (and its `data: ` line if the body was empty). */
  end(): Uint8Array {
    return this.#started ? enc.encode("\n\n") : enc.encode("data: \n\n");
  }
}

function errorEvent(status: number, error: unknown): Uint8Array {
  return enc.encode(`event: error\ndata: ${JSON.stringify({ status, error })}\n\n`);
}

/**
 * What an error event says of a worker's error answer: its `error` when it is
 * JSON with one (OpenAI's shape: the event's `error` then reads as the
 * gateway's own do, and OpenAI's clients take its message and code), else
 * the answer, parsed when it is JSON.
 */
function workerError(text: string): unknown {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return text;
  }
  return parsed && typeof parsed === "object" && "error" in parsed
    ? (parsed as { error: unknown }).error
    : parsed;
}

/**
 * Up to `max` bytes of an answer's body as text, and whether that was all
 * of it (the rest is left unread).
 */
async function readSome(answer: CallAnswer, max: number): Promise<[string, boolean]> {
  if (answer.bytes) return [dec.decode(answer.bytes.subarray(0, max)), true];
  let text = "";
  let size = 0;
  while (size < max) {
    const c = await answer.read();
    if (c === null) return [text, true];
    size += c.byteLength;
    text += dec.decode(c, { stream: true });
  }
  return [text.slice(0, max), false];
}
