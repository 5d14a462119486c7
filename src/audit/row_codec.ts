/**
 * Request rows packed for the trip to the audit worker: one `Float64Array`
 * (transferred, not copied) with a fixed number of slots per row, and the
 * batch's distinct strings once each. Posting the rows as objects made the
 * structured clone and the worker's copies of them the largest single cost
 * of a call on the gateway's warm path; packed, a row costs a few
 * array stores on each side.
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
  const nums = new Float64Array(rows.length * SLOTS);
  const strings: string[] = [];
  const index = new Map<string, number>();
  const str = (s: string | undefined): number => {
    if (s === undefined) return -1;
    let i = index.get(s);
    if (i === undefined) index.set(s, i = strings.push(s) - 1);
    return i;
  };
  const num = (v: number | boolean | undefined) => v === undefined ? NaN : +v;
  let o = 0;
  // Written out field by field (in SLOT order): a loop over field names costs twice as much.
  for (const r of rows) {
    nums[o] = r.time;
    nums[o + 1] = str(r.tenant);
    nums[o + 2] = str(r.namespace);
    nums[o + 3] = str(r.func);
    nums[o + 4] = str(r.gateway);
    nums[o + 5] = str(r.principal);
    nums[o + 6] = str(r.method);
    nums[o + 7] = str(r.path);
    nums[o + 8] = str(r.pod);
    nums[o + 9] = str(r.error);
    nums[o + 10] = str(r.call);
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
    o += SLOTS;
  }
  return { nums, strings };
}
