/**
 * Forwarding a request to a worker: headers without hop-by-hop fields, the
 * body streamed up, the answer streamed back, and the slot released when the
 * answer's body ends (or the caller goes away).
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";
import { ConnectError, type HttpPool } from "./http_pool.ts";

const HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "host",
  "content-length",
]);

/**
 * The headers to forward as a list, minus hop-by-hop ones and `drop`: one
 * pass, no `Headers` copy (it is measurably cheaper on the warm path).
 */
export function forwardHeaderList(h: Headers, drop?: ReadonlySet<string>): [string, string][] {
  const out: [string, string][] = [];
  for (const pair of h) {
    if (!HOP.has(pair[0]) && !drop?.has(pair[0])) out.push(pair);
  }
  return out;
}

/** The worker could not be reached: the connection was refused or reset before an answer. */
export class UpstreamUnreachable extends InferxError {
  constructor(endpoint: string, cause: unknown) {
    super("unavailable", `Cannot reach worker at ${endpoint}: ${(cause as Error).message}`, {
      cause,
      retryable: true,
    });
    this.name = "UpstreamUnreachable";
  }
}

/** Sends one request to `endpoint` through `pool`; throws {@linkcode UpstreamUnreachable} when it cannot connect. */
export async function sendUpstream(
  pool: HttpPool,
  endpoint: string,
  pathAndQuery: string,
  method: string,
  headers: Iterable<[string, string]>,
  body: Uint8Array | ReadableStream<Uint8Array> | null,
): Promise<Response> {
  try {
    return await pool.request(endpoint, { method, path: pathAndQuery, headers, body });
  } catch (err) {
    if (err instanceof ConnectError) throw new UpstreamUnreachable(endpoint, err);
    throw err;
  }
}

/**
 * Wraps a response body so `done` runs exactly once when it has been read to
 * the end, fails, or is cancelled by the caller.
 */
export function onBodyDone(
  body: ReadableStream<Uint8Array> | null,
  done: () => void,
): ReadableStream<Uint8Array> | null {
  let finished = false;
  const finish = () => {
    if (!finished) {
      finished = true;
      done();
    }
  };
  if (!body) {
    finish();
    return null;
  }
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done: end } = await reader.read();
        if (end) {
          controller.close();
          finish();
        } else controller.enqueue(value);
      } catch (err) {
        controller.error(err);
        finish();
      }
    },
    async cancel(reason) {
      finish();
      await reader.cancel(reason).catch(() => {});
    },
  });
}

/**
 * Reads a request body up to `limit` bytes; throws 413 `too_large` past it.
 */
export async function readLimited(
  body: ReadableStream<Uint8Array> | null,
  limit: number,
): Promise<Uint8Array<ArrayBuffer>> {
  if (!body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > limit) throw tooLarge(limit);
    chunks.push(chunk);
  }
  const out = new Uint8Array(size);
  let o = 0;
  for (const c of chunks) (out.set(c, o), o += c.byteLength);
  return out;
}

/** A stream that passes `body` through and errors with 413 past `limit` bytes. */
export function limitStream(
  body: ReadableStream<Uint8Array>,
  limit: number,
): ReadableStream<Uint8Array> {
  let size = 0;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        size += chunk.byteLength;
        if (size > limit) controller.error(tooLarge(limit));
        else controller.enqueue(chunk);
      },
    }),
  );
}

/** The 413 error for a body over `limit` bytes. */
export function tooLarge(limit: number): InferxError {
  return new InferxError("too_large", `Request body is larger than the limit of ${limit} bytes`, {
    details: { limit },
  });
}
