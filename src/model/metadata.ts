/**
 * What an object carries beside its spec, as Kubernetes objects do:
 * `metadata` (labels and annotations, written by users and tools) and
 * `status` (conditions, written by the platform). Neither defines a
 * function's workers: changing them never gives a function a new version.
 *
 * In the envelope both sit beside the spec:
 * `{type, tenant, namespace, name, object: {metadata, spec, status}}`.
 *
 * @module
 */
import { z } from "zod";

/** `[prefix/]name`, as Kubernetes label and annotation keys. */
const QUALIFIED_NAME =
  /^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
/** Empty, or up to 63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric. */
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

const keySchema = z.string().regex(
  QUALIFIED_NAME,
  "must be [prefix/]name: a name of 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
);

/** Labels (selectable) and annotations (free text) of an object. */
export const ObjectMetadataSchema = z.strictObject({
  labels: z.record(
    keySchema,
    z.string().regex(
      LABEL_VALUE,
      "must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
    ),
  ).default({}),
  annotations: z.record(keySchema, z.string().max(65_536)).default({}),
});
/** Labels and annotations of an object. */
export type ObjectMetadata = z.infer<typeof ObjectMetadataSchema>;

/** The annotation `ctl apply` puts on every object it writes; `--prune` only deletes those. */
export const APPLIED_BY_ANNOTATION = "inferx.io/applied-by";

/** Whether `m` holds no label and no annotation (stored as absent). */
export function metadataEmpty(m: ObjectMetadata | undefined): boolean {
  return !m || (Object.keys(m.labels).length === 0 && Object.keys(m.annotations).length === 0);
}

/** A condition's truth, as Kubernetes writes it. */
export const CONDITION_STATUSES = ["True", "False", "Unknown"] as const;

/** One observation about an object, as a Kubernetes condition. */
export const ConditionSchema = z.object({
  /** What is observed, e.g. `Schedulable`. */
  type: z.string().min(1),
  status: z.enum(CONDITION_STATUSES),
  /** A CamelCase code, e.g. `InsufficientVRAM`. */
  reason: z.string().default(""),
  /** What a person reads. */
  message: z.string().default(""),
  /** When `status` last changed (ISO 8601). */
  lastTransitionTime: z.string().optional(),
});
/** One observation about an object. */
export type Condition = z.infer<typeof ConditionSchema>;

/** A function's status: written by the scheduler, never by users. */
export const FunctionStatusSchema = z.object({
  conditions: z.array(ConditionSchema).default([]),
});
/** A function's status. */
export type FunctionStatus = z.infer<typeof FunctionStatusSchema>;

/** The condition type that says whether some node could ever hold a pod of the function. */
export const SCHEDULABLE = "Schedulable";

/** The condition of `type` in `status`, if any. */
export function findCondition(
  status: FunctionStatus | undefined,
  type: string,
): Condition | undefined {
  return status?.conditions.find((c) => c.type === type);
}

/**
 * Whether a label selector (`key=value` or `key!=value` terms, or a bare
 * `key` that must exist, comma-separated) matches `labels`.
 * Throws on a malformed selector.
 *
 * @example
 * ```ts
 * selectorMatches("app=demo,tier!=gpu", { app: "demo" }); // true
 * ```
 */
export function selectorMatches(selector: string, labels: Record<string, string>): boolean {
  return parseSelector(selector).every((t) =>
    t.op === "exists"
      ? Object.hasOwn(labels, t.key)
      : (labels[t.key] === t.value) === (t.op === "=")
  );
}

/** One term of a label selector. */
export interface SelectorTerm {
  key: string;
  op: "=" | "!=" | "exists";
  value: string;
}

/** Parses a label selector; throws an `Error` naming the bad term. */
export function parseSelector(selector: string): SelectorTerm[] {
  const terms: SelectorTerm[] = [];
  for (const raw of selector.split(",")) {
    const term = raw.trim();
    const m = term.match(/^([^=!\s]+)\s*(==|=|!=)\s*(\S*)$/) ?? term.match(/^([^=!\s]+)$/);
    if (!m || !QUALIFIED_NAME.test(m[1]) || (m[3] !== undefined && !LABEL_VALUE.test(m[3]))) {
      throw new Error(`Invalid label selector "${selector}": bad term "${term}"`);
    }
    terms.push(
      m[2] === undefined
        ? { key: m[1], op: "exists", value: "" }
        : { key: m[1], op: m[2] === "!=" ? "!=" : "=", value: m[3] },
    );
  }
  return terms;
}

/**
 * `conditions` with `next` recorded, or undefined when nothing needs
 * writing: the same status, reason and message are already there, or the
 * condition was never recorded and `next` is not `False` (a condition is
 * written once something is wrong, and kept from then on).
 * `lastTransitionTime` moves only when the status does, to `at`.
 */
export function setCondition(
  conditions: readonly Condition[],
  next: Omit<Condition, "lastTransitionTime">,
  at: string = new Date().toISOString(),
): Condition[] | undefined {
  const cur = conditions.find((c) => c.type === next.type);
  if (!cur && next.status !== "False") return undefined;
  if (cur && cur.status === next.status && cur.reason === next.reason) {
    if (cur.message === next.message) return undefined;
  }
  const since = cur && cur.status === next.status ? cur.lastTransitionTime : at;
  const c: Condition = { ...next, lastTransitionTime: since };
  return cur ? conditions.map((x) => x === cur ? c : x) : [...conditions, c];
}
