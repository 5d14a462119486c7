/**
 * Request rows packed for the embedded audit: one `Float64Array` with a
 * fixed number of slots per row, and the batch's distinct strings once
 * each. Rows wait in the batching buffer and cross to the audit's worker
 * this way rather than as objects: nothing per row for the collector to
 * promote while it waits, and one array for the structured clone to copy
 * instead of an object per row.
 *
 * A string slot holds an index into `strings`, or -1 when the field is
 * absent; a number slot holds NaN when it is absent.
 *
 * @module
 */
import type { RequestRow } from "./types.ts";

/** Request rows packed by {@linkcode encodeRequests}. */
export interface PackedRequests {
  /** `SLOTS` numbers per row. */
  nums: Float64Array<ArrayBuffer>;
  strings: string[];
}

/** The string fields of a row, in slot order after `time`. */
const STRING_FIELDS = [
  "tenant",
  "namespace",
  "func",
  "gateway",
  "principal",
  "method",
  "path",
  "pod",
  "error",
  "call",
] as const satisfies readonly (keyof RequestRow)[];

/** The number fields, in slot order after the strings (booleans as 0/1). */
const NUMBER_FIELDS = [
  "status",
  "latencyMs",
  "coldStart",
  "resumed",
  "ttfbMs",
  "attempt",
  "version",
  "ttftMs",
  "itlP50Ms",
  "itlP99Ms",
  "tokensPerS",
  "promptTokens",
  "completionTokens",
] as const satisfies readonly (keyof RequestRow)[];

/** Numbers per packed row. */
export const SLOTS = 1 + STRING_FIELDS.length + NUMBER_FIELDS.length;

type Field = "time" | typeof STRING_FIELDS[number] | typeof NUMBER_FIELDS[number];

/** Where each field sits within a packed row. */
export const SLOT: Readonly<Record<Field, number>> = Object.fromEntries(
  (["time", ...STRING_FIELDS, ...NUMBER_FIELDS] as Field[]).map((f, i) => [f, i]),
) as Record<Field, number>;

/** Packs `rows`; the batch's strings are kept once each. */
export function encodeRequests(rows: readonly RequestRow[]): PackedRequests {
  const p = new RequestPacker(rows.length);
  for (const r of rows) p.push(r);
  return p.take(rows.length);
}

/** Rows' room a packer keeps once empty (more, grown during an outage, is given back). */
const KEEP_ROWS = 16_384;

/** Strings a packer's table may hold, while rows stay after a batch, before it is rebuilt. */
const REPACK_STRINGS = 1024;

/**
 * Request rows packed as they are made, held until a batch takes them: a
 * buffer of numbers that grows by doubling, and the distinct strings of the
 * rows it holds. Rows kept this way are not objects for the collector to
 * copy and promote while they wait for their batch (up to the flush
 * interval).
 */
export class RequestPacker {
  #nums: Float64Array<ArrayBuffer>;
  #rows = 0;
  #strings: string[] = [];
  #index = new Map<string, number>();

  readonly #initial: number;

  constructor(capacity = 2048) {
    this.#initial = Math.max(1, capacity) * SLOTS;
    this.#nums = new Float64Array(this.#initial);
  }

  /** Rows held. */
  get length(): number {
    return this.#rows;
  }

  /** The string each string slot had in the last row, and its index: most rows repeat it. */
  #lastString: (string | undefined)[] = new Array(STRING_FIELDS.length + 1).fill(undefined);
  #lastIndex: number[] = new Array(STRING_FIELDS.length + 1).fill(-1);

  #str(s: string | undefined): number {
    if (s === undefined) return -1;
    let i = this.#index.get(s);
    if (i === undefined) this.#index.set(s, i = this.#strings.push(s) - 1);
    return i;
  }

  /** `#str` for string slot `slot`, comparing with that slot's last string before hashing. */
  #slot(slot: number, s: string | undefined): number {
    if (s === undefined) return -1;
    if (s === this.#lastString[slot]) return this.#lastIndex[slot];
    const i = this.#str(s);
    this.#lastString[slot] = s;
    this.#lastIndex[slot] = i;
    return i;
  }

  /** Adds a row. */
  push(r: RequestRow): void {
    let nums = this.#nums;
    const o = this.#rows * SLOTS;
    if (o + SLOTS > nums.length) {
      const next = new Float64Array(nums.length * 2);
      next.set(nums);
      this.#nums = nums = next;
    }
    const num = (v: number | boolean | undefined) => v === undefined ? NaN : +v;
    // Written out field by field (in SLOT order): a loop over field names costs twice as much.
    nums[o] = r.time;
    nums[o + 1] = this.#slot(1, r.tenant);
    nums[o + 2] = this.#slot(2, r.namespace);
    nums[o + 3] = this.#slot(3, r.func);
    nums[o + 4] = this.#slot(4, r.gateway);
    nums[o + 5] = this.#slot(5, r.principal);
    nums[o + 6] = this.#slot(6, r.method);
    nums[o + 7] = this.#slot(7, r.path);
    nums[o + 8] = this.#slot(8, r.pod);
    nums[o + 9] = this.#slot(9, r.error);
    nums[o + 10] = this.#slot(10, r.call);
    nums[o + 11] = r.status;
    nums[o + 12] = r.latencyMs;
    nums[o + 13] = r.coldStart ? 1 : 0;
    nums[o + 14] = r.resumed ? 1 : 0;
    nums[o + 15] = num(r.ttfbMs);
    nums[o + 16] = num(r.attempt);
    nums[o + 17] = num(r.version);
    nums[o + 18] = num(r.ttftMs);
    nums[o + 19] = num(r.itlP50Ms);
    nums[o + 20] = num(r.itlP99Ms);
    nums[o + 21] = num(r.tokensPerS);
    nums[o + 22] = num(r.promptTokens);
    nums[o + 23] = num(r.completionTokens);
    this.#rows++;
  }

  /** The first `max` rows (all, when fewer), packed on their own; the rest stay. */
  take(max: number): PackedRequests {
    const n = Math.min(max, this.#rows);
    const nums = this.#nums.slice(0, n * SLOTS);
    const strings = this.#strings.slice();
    this.#rows -= n;
    if (this.#rows === 0) {
      this.#strings = [];
      this.#index.clear();
      this.#lastString.fill(undefined);
      // Grown past a few batches while the backend was away: give the room back.
      if (this.#nums.length > KEEP_ROWS * SLOTS) this.#nums = new Float64Array(this.#initial);
    } else {
      this.#nums.copyWithin(0, n * SLOTS, (n + this.#rows) * SLOTS);
      if (this.#strings.length > REPACK_STRINGS) this.#repack();
    }
    return { nums, strings };
  }

  /** Keeps only the strings the rows still held use (the table must not grow without end). */
  #repack(): void {
    const old = this.#strings;
    this.#strings = [];
    this.#index.clear();
    this.#lastString.fill(undefined);
    const nums = this.#nums;
    for (let r = 0; r < this.#rows; r++) {
      for (let f = 1; f <= STRING_FIELDS.length; f++) {
        const at = r * SLOTS + f;
        if (nums[at] >= 0) nums[at] = this.#str(old[nums[at]]);
      }
    }
  }
}
