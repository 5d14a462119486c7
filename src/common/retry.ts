/**
 * Compare-and-swap retries, as client-go's `util/retry.RetryOnConflict`: run
 * a read-modify-write again, after a short growing pause, while it fails
 * because the object moved; rethrow anything else at once. Also the capped
 * backoff the etcd clients' watches reconnect with.
 *
 * @module
 */
import { InferxError } from "./errors.ts";
import type { MetaClient, MetaRecord, ObjectRef } from "../rpc/types.ts";

/** Options for {@linkcode retryOnConflict} and {@linkcode updateWithRetry}. */
export interface RetryOptions {
  /** Tries in all, the first included. @default 10 */
  attempts?: number;
  /** Pause before the second try (ms); it doubles with every try. @default 5 */
  delayMs?: number;
  /** The longest pause (ms). @default 200 */
  maxDelayMs?: number;
  /** Waits `ms`; injected by tests. @default a timer */
  sleep?: (ms: number) => Promise<void>;
}

/**
 * Whether `err` says a compare-and-swap lost a race: the revision moved, or
 * (for a create) the object appeared meanwhile. True across gRPC too, where
 * errors arrive as an `InferxError` carrying the code.
 */
export function isConflict(err: unknown): boolean {
  return err instanceof InferxError && (err.code === "conflict" || err.code === "already_exists");
}

const timer = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Runs `fn` until it succeeds, retrying with backoff while it throws a
 * conflict; any other error is rethrown at once, and the last conflict when
 * the tries run out.
 */
export async function retryOnConflict<T>(
  fn: () => Promise<T>,
  options: RetryOptions = {},
): Promise<T> {
  const attempts = options.attempts ?? 10;
  const sleep = options.sleep ?? timer;
  let delay = options.delayMs ?? 5;
  for (let attempt = 1;; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isConflict(err) || attempt >= attempts) throw err;
    }
    // Up to 10% more, so that writers who collided do not collide again.
    await sleep(delay * (1 + Math.random() / 10));
    delay = Math.min(delay * 2, options.maxDelayMs ?? 200);
  }
}

/**
 * The new value of an object from its current record (undefined when it does
 * not exist), or undefined to leave it as it is.
 */
export type Mutate = (current: MetaRecord | undefined) => unknown;

/**
 * Reads `ref`, asks `mutate` for its new value and writes it at the revision
 * read (a create when it did not exist), again from a fresh read whenever
 * another writer got there first. Resolves with the record written, or
 * undefined when `mutate` wanted no write.
 *
 * @example
 * ```ts
 * await updateWithRetry(meta, ref, (cur) => {
 *   if (!cur) return undefined; // gone: nothing to do
 *   return { ...decodePod(cur.value), desired: "Terminated" };
 * });
 * ```
 */
export function updateWithRetry(
  meta: MetaClient,
  ref: ObjectRef,
  mutate: Mutate,
  options: RetryOptions = {},
): Promise<MetaRecord | undefined> {
  const target: ObjectRef = {
    type: ref.type,
    tenant: ref.tenant,
    namespace: ref.namespace,
    name: ref.name,
  };
  return retryOnConflict(async () => {
    const current = await meta.get(target);
    const object = mutate(current);
    if (object === undefined) return undefined;
    if (!current) return await meta.create({ ...target, object });
    return await meta.update({ ...target, object, revision: current.revision });
  }, options);
}

/** A backoff as `npm:etcd3` takes one for its watches: this wait, and the one after. */
export interface Backoff {
  readonly duration: number;
  next(): Backoff;
}

/** An exponential backoff from `firstMs`, doubling up to `maxMs`, with ±20% jitter. */
export function cappedBackoff(firstMs: number, maxMs: number): Backoff {
  const at = (ms: number): Backoff => ({
    duration: ms * (0.8 + Math.random() * 0.4),
    next: () => at(Math.min(ms * 2, maxMs)),
  });
  return at(firstMs);
}
