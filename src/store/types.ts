/**
 * The `MetaStore` interface: a revisioned key-value store with
 * compare-and-swap writes and prefix watches. Backends: embedded (this
 * process, persisted under the data directory) and etcd.
 *
 * @module
 */
import { InferxError } from "../common/errors.ts";

/** One stored key with its revisions. */
export interface KeyValue {
  key: string;
  value: string;
  /** Revision of the last write to this key (etcd's mod revision). */
  revision: number;
  /** Revision at which the key was created. */
  createRevision: number;
}

/** A change seen by a watch. */
export type WatchEvent =
  | { type: "put"; kv: KeyValue }
  | { type: "delete"; key: string; revision: number };

/** Options for {@linkcode MetaStore.watch}. */
export interface WatchOptions {
  /** Deliver only changes after this revision (the revision a list returned). @default current */
  afterRevision?: number;
  /** Called once per change, in revision order. */
  onEvent(event: WatchEvent): void;
  /**
   * Called when the watch cannot go on; it is then cancelled. A
   * {@linkcode CompactedError} means: list again and watch from that revision.
   */
  onError?(err: Error): void;
}

/** A running watch. */
export interface Watch {
  cancel(): void;
}

/** A list answer: the items and the store revision they are consistent at. */
export interface ListResult {
  items: KeyValue[];
  revision: number;
}

/** Revisioned key-value store with compare-and-swap and watches. */
export interface MetaStore {
  /** The current store revision. */
  revision(): Promise<number>;
  /** One key, or undefined. */
  get(key: string): Promise<KeyValue | undefined>;
  /** All keys under `prefix`, sorted by key. */
  list(prefix: string): Promise<ListResult>;
  /** The keys under `prefix`, sorted, without their values (which may be large). */
  keys(prefix: string): Promise<string[]>;
  /** Creates `key`; throws `AlreadyExistsError` when present. Returns the new revision. */
  create(key: string, value: string): Promise<number>;
  /**
   * Replaces `key` if its revision is still `expectedRevision`; throws
   * `ConflictError` otherwise and `NotFoundError` when absent.
   */
  update(key: string, value: string, expectedRevision: number): Promise<number>;
  /** Deletes `key` (only at `expectedRevision` when given). Returns the new revision. */
  delete(key: string, expectedRevision?: number): Promise<number>;
  /**
   * Deletes those of `keys` that exist, each at a revision of its own, as
   * `delete` would (a key gone already is passed over; not necessarily in
   * the order given), without holding the process up for long however many
   * there are. Returns the store's revision after.
   */
  deleteKeys(keys: readonly string[]): Promise<number>;
  /** Watches changes under `prefix`. */
  watch(prefix: string, options: WatchOptions): Watch;
  /** Releases resources. */
  close(): Promise<void>;
}

/** The requested watch revision has been compacted away. */
export class CompactedError extends InferxError {
  readonly compactedRevision: number;
  /** `compactedRevision`: how far history was compacted, 0 when the store does not say. */
  constructor(requested: number, compactedRevision: number) {
    super(
      "conflict",
      compactedRevision > 0
        ? `Cannot watch from revision ${requested}: history up to ${compactedRevision} was compacted`
        : `Cannot watch from revision ${requested}: that history was compacted`,
      { retryable: true, details: { compactedRevision } },
    );
    this.name = "CompactedError";
    this.compactedRevision = compactedRevision;
  }
}
