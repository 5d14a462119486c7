/**
 * Field-by-field differences between two JSON values, as `ctl diff` prints
 * them: one line per field that was added, removed or changed, with its path
 * (`object.spec.policy.Obj.max_replica`, `object.spec.commands[2]`).
 *
 * @module
 */
import { jsonEqual } from "../common/json.ts";

/** One field that differs. */
export interface FieldChange {
  /** Dotted path, `[i]` for array elements. */
  path: string;
  kind: "added" | "removed" | "changed";
  from?: unknown;
  to?: unknown;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  !!v && typeof v === "object" && !Array.isArray(v);

const join = (path: string, key: string) => (path ? `${path}.${key}` : key);

/**
 * The fields in which `after` differs from `before`. Objects and arrays
 * present on both sides are compared member by member; anything else that
 * differs is one change. Object keys come in `after`'s order, then the keys
 * only `before` has.
 *
 * @example
 * ```ts
 * fieldDiff({ spec: { a: 1, b: [1] } }, { spec: { a: 2, b: [1, 2] } });
 * // [{ path: "spec.a", kind: "changed", from: 1, to: 2 },
 * //  { path: "spec.b[1]", kind: "added", to: 2 }]
 * ```
 */
export function fieldDiff(before: unknown, after: unknown, path = ""): FieldChange[] {
  if (before === undefined && after === undefined) return [];
  if (before === undefined) return [{ path, kind: "added", to: after }];
  if (after === undefined) return [{ path, kind: "removed", from: before }];
  if (isObject(before) && isObject(after)) {
    const keys = [...Object.keys(after), ...Object.keys(before).filter((k) => !(k in after))];
    return keys.flatMap((k) => fieldDiff(before[k], after[k], join(path, k)));
  }
  if (Array.isArray(before) && Array.isArray(after)) {
    const n = Math.max(before.length, after.length);
    return Array.from({ length: n }, (_, i) => fieldDiff(before[i], after[i], `${path}[${i}]`))
      .flat();
  }
  return jsonEqual(before, after) ? [] : [{ path, kind: "changed", from: before, to: after }];
}

/** A value as a diff line shows it: JSON, cut at `max` characters. */
function show(v: unknown, max = 120): string {
  const s = JSON.stringify(v) ?? "undefined";
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** One change as a line: `~ path: from -> to`, `+ path: to`, `- path: from`. */
export function formatChange(c: FieldChange): string {
  switch (c.kind) {
    case "added":
      return `+ ${c.path}: ${show(c.to)}`;
    case "removed":
      return `- ${c.path}: ${show(c.from)}`;
    case "changed":
      return `~ ${c.path}: ${show(c.from)} -> ${show(c.to)}`;
  }
}
