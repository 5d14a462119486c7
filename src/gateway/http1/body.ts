/**
 * What request bodies the gateway may hold while they arrive, all requests
 * together. A body read whole (JSON, for a call's `model` and `max_tokens`,
 * an object) is held until its last byte: each is bounded by
 * `INFERX_BODY_LIMIT`, but a client that opens a hundred connections and
 * sends most of a 16 MiB body on each, then a byte a minute, held 1.6 GB.
 * Past the budget (`INFERX_BODY_BUFFER_MB`), a body that would add to it is
 * refused 503 with `Retry-After` (it went to no worker) and its connection
 * closed. A body that came whole with its head is not counted: it is the
 * connection's read-ahead, which has its own bound.
 *
 * @module
 */
import { InferxError } from "../../common/errors.ts";
import { concatBytes } from "./bytes.ts";

/** A request body over its limit (413 `too_large`). */
export class BodyTooLarge extends InferxError {
  readonly limit: number;
  constructor(limit: number) {
    super("too_large", `Request body is larger than the limit of ${limit} bytes`, {
      details: { limit },
    });
    this.name = "BodyTooLarge";
    this.limit = limit;
  }
}

/** Request bodies being received, in bytes, up to a limit. */
export class BodyBudget {
  /** Bytes held now. */
  held = 0;

  constructor(readonly limit: number) {}

  /**
   * `chunks` read whole (at most `limit` bytes: 413 past it), their bytes
   * held against the budget until the last one came (503 when it is spent).
   */
  async readAll(
    chunks: AsyncIterable<Uint8Array>,
    limit: number,
  ): Promise<Uint8Array<ArrayBuffer>> {
    const parts: Uint8Array[] = [];
    let size = 0; // taken from the budget: every part so far
    try {
      for await (const c of chunks) {
        if (size + c.byteLength > limit) throw new BodyTooLarge(limit);
        if (this.held + c.byteLength > this.limit) throw new BodiesBusy(this.limit);
        size += c.byteLength;
        this.held += c.byteLength;
        parts.push(c);
      }
    } finally {
      this.held -= size;
    }
    return concatBytes(parts) as Uint8Array<ArrayBuffer>;
  }
}

/** The budget of a reader given none: bodies are bounded by their own limit only. */
export const UNBOUNDED_BODIES: BodyBudget = new BodyBudget(Infinity);

/** The gateway holds as many request bodies as it may: try again soon. */
export class BodiesBusy extends InferxError {
  constructor(limit: number) {
    super(
      "unavailable",
      `The gateway is receiving ${
        Math.round(limit / 1024 / 1024)
      } MiB of request bodies, as much as it holds at once (INFERX_BODY_BUFFER_MB): the call went to no worker; try again`,
      { retryable: true },
    );
    this.name = "BodiesBusy";
  }
}
