/**
 * Object model: zod schemas that accept InferX's field names, the domain
 * types they produce, and one decode/encode pair per stored object. Raw JSON
 * from HTTP or the store is validated here and nowhere else.
 *
 * @module
 */
import { z } from "zod";
import { invalidInput, ValidationError, type ValidationIssues } from "../common/errors.ts";
import { jsonEqual, nestsDeeperThan, protoKeyPath } from "../common/json.ts";
import { ambiguousPath } from "../common/net.ts";
import { isUserType, isValidName, SYSTEM } from "./keys.ts";
import {
  type FunctionStatus,
  FunctionStatusSchema,
  metadataEmpty,
  type ObjectMetadata,
  ObjectMetadataSchema,
} from "./metadata.ts";

// ---------------------------------------------------------------- FuncPolicy

/** Priorities of functions within their tenant, first served first. */
export const PRIORITIES = ["high", "normal", "batch"] as const;
/** One of {@linkcode PRIORITIES}. */
export type Priority = typeof PRIORITIES[number];

/**
 * A policy's `answer_timeout` when it sets none: ten minutes, room for a long
 * answer that is not streamed (it comes whole when generation ends).
 */
export const DEFAULT_ANSWER_TIMEOUT_S = 600;

/** Scaling policy schema with InferX's defaults. */
export const FuncPolicySchema = z.strictObject({
  min_replica: z.int().min(0).default(0),
  max_replica: z.int().min(1).max(10_000).default(1),
  standby_per_node: z.int().min(0).default(1),
  parallel: z.int().min(1).max(100_000).default(50),
  // At least 1 in a write (writeChecks): a call that finds no free worker waits for one.
  queue_len: z.int().min(0).max(1_000_000).default(100),
  /** Seconds a request may wait in the queue. */
  queue_timeout: z.number().positive().max(3600).default(30),
  /**
   * Seconds a worker may send nothing while answering a call (before its
   * answer's head, or between two pieces of it) before the gateway cuts it.
   */
  answer_timeout: z.number().positive().max(86_400).default(DEFAULT_ANSWER_TIMEOUT_S),
  scaleout_policy: z.strictObject({
    wait_ratio: z.number().min(0).max(100).default(0.1),
    /** Scale out when a call has waited this long (ms) in a gateway's queue. */
    queue_ms: z.number().positive().max(3_600_000).optional(),
    /** Scale out when the tokens in-flight calls asked for (`max_tokens`) exceed this per worker. */
    inflight_tokens: z.int().min(1).max(100_000_000).optional(),
  }).prefault({}),
  /** Seconds a leased worker may stay idle before the gateway returns it. */
  scalein_timeout: z.number().min(0).max(86_400).default(1),
  /**
   * Order of this function's waiting calls among its tenant's when the GPU
   * pool is full.
   */
  priority: z.enum(PRIORITIES).default("normal"),
  /**
   * Share of calls per version (percent, summing to 100). Names versions of
   * one function, so only in a function's inline policy.
   */
  traffic: z.array(z.strictObject({
    version: z.int().min(1),
    percent: z.int().min(0).max(100),
  })).min(1).max(16).optional(),
  /** Percent of calls the newest version takes while the stable version keeps the rest. */
  canary_percent: z.int().min(0).max(100).optional(),
}).refine((p) => p.min_replica <= p.max_replica, {
  message: "min_replica must not exceed max_replica",
  path: ["min_replica"],
}).refine((p) => !p.traffic || p.traffic.reduce((n, t) => n + t.percent, 0) === 100, {
  message: "traffic percents must add up to 100",
  path: ["traffic"],
}).refine((p) => !p.traffic || new Set(p.traffic.map((t) => t.version)).size === p.traffic.length, {
  message: "traffic names a version twice",
  path: ["traffic"],
}).refine((p) => !(p.traffic && p.canary_percent !== undefined), {
  message: "set traffic or canary_percent, not both",
  path: ["canary_percent"],
});

/** A function's scaling policy, all defaults filled in. */
export type FuncPolicy = z.infer<typeof FuncPolicySchema>;

/** The policy a function gets when it names none. */
export const DEFAULT_POLICY: FuncPolicy = FuncPolicySchema.parse({});

// ------------------------------------------------------------------ Function

const StandbyTier = z.enum(["Mem", "File"]);

const EnvName = z.string().min(1);
const EnvPairs = z.array(z.tuple([EnvName, z.string()]));
// A mapping has no order: its entries by name, so that reordering it changes nothing.
const EnvMap = z.record(EnvName, z.string()).transform((r) => byName(Object.entries(r)));
/** `[[name, value], ...]` or `{name: value}`: the form read by its shape, so errors name the field. */
const EnvsSchema = z.unknown().transform((v, ctx): [string, string][] => {
  const r = (Array.isArray(v) ? EnvPairs : EnvMap).safeParse(v);
  if (r.success) return r.data;
  for (const issue of r.error.issues) {
    ctx.issues.push({ code: "custom", message: issue.message, path: issue.path, input: v });
  }
  return z.NEVER;
}).default([]);

/** Name-value pairs ordered by name; pairs of one name keep their order (the last one wins). */
function byName(envs: [string, string][]): [string, string][] {
  return [...envs].sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
}

/** A link to a `funcpolicy`; its tenant and namespace, when given, must be the function's own. */
const PolicyLinkSchema = z.strictObject({
  Link: z.strictObject({
    objType: z.literal("funcpolicy").optional(),
    tenant: z.string().optional(),
    namespace: z.string().optional(),
    name: z.string().min(1),
  }),
}).transform((v) => ({ kind: "link" as const, name: v.Link.name }));
const PolicyObjSchema = z.strictObject({ Obj: FuncPolicySchema }).transform((v) => ({
  kind: "inline" as const,
  policy: v.Obj,
}));
const PolicyBareSchema = FuncPolicySchema.transform((p) => ({
  kind: "inline" as const,
  policy: p,
}));
type PolicyRef = z.output<typeof PolicyLinkSchema> | z.output<typeof PolicyObjSchema>;

/**
 * A function's policy: `{"Link": {...}}`, `{"Obj": {...}}` or the policy's
 * fields bare. The form is chosen by its key, so that a mistake inside one
 * form is reported as such instead of the input passing as another form.
 */
const PolicyRefSchema = z.unknown().transform((v, ctx): PolicyRef => {
  const o = v && typeof v === "object" && !Array.isArray(v) ? v : undefined;
  const schema = o && "Link" in o
    ? PolicyLinkSchema
    : o && "Obj" in o
    ? PolicyObjSchema
    : PolicyBareSchema;
  const r = schema.safeParse(v);
  if (r.success) return r.data;
  for (const issue of r.error.issues) {
    ctx.issues.push({ code: "custom", message: issue.message, path: issue.path, input: v });
  }
  return z.NEVER;
});

/**
 * An image reference as Docker reads one: `[host[:port]/]path[:tag][@digest]`,
 * the path in lowercase components (`distribution/reference`'s grammar: a
 * first component is a host only with a `.` or a `:` in it, or `localhost`).
 * Anything else every Docker node would refuse at each start.
 */
const IMAGE_REF = new RegExp(
  "^(?:(?:(?:[a-zA-Z0-9-]+(?:\\.[a-zA-Z0-9-]+)+|localhost)(?::[0-9]+)?" +
    "|[a-zA-Z0-9-]+:[0-9]+|\\[[0-9a-fA-F:]+\\](?::[0-9]+)?)/)?" +
    "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*" +
    "(?::[\\w][\\w.-]{0,127})?" +
    "(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
);

/** Function spec schema (InferX field names). */
export const FunctionSpecSchema = z.strictObject({
  // At most 512 characters, a reference Docker reads, in a write (writeChecks).
  image: z.string().min(1),
  commands: z.array(z.string()).default([]),
  envs: EnvsSchema,
  mounts: z.array(z.strictObject({
    hostpath: z.string().startsWith("/", "must be an absolute path"),
    mountpath: z.string().startsWith("/", "must be an absolute path"),
    readonly: z.boolean().default(false),
  })).default([]),
  endpoint: z.strictObject({
    port: z.int().min(1).max(65535).default(80),
    schema: z.enum(["Http", "Https"]).default("Http"),
    probe: z.string().startsWith("/").default("/health"),
    /**
     * A path the node POSTs to once a worker is restored from its version's
     * snapshot, before it serves: each copy comes back with the snapshotted
     * process's memory, random generators' state included, and reseeds here.
     */
    restore_hook: z.string().startsWith("/").optional(),
  }).prefault({}),
  resources: z.strictObject({
    /** Millicores; at least 10 in a write (writeChecks). */
    CPU: z.int().min(1, "must be at least 10 (millicores)").max(1_024_000).default(1000),
    /** Megabytes of host memory; at least 6 in a write (writeChecks). */
    Mem: z.int().min(1, "must be at least 6 (MB)").max(16_777_216).default(1024),
    GPU: z.strictObject({
      Type: z.string().min(1).default("Any"),
      Count: z.int().min(0).max(64).default(0),
      /** Megabytes of GPU memory per GPU. */
      vRam: z.int().min(0).max(1_048_576).default(0),
    }).prefault({}),
  }).prefault({}),
  standby: z.strictObject({
    gpu: StandbyTier.default("Mem"),
    pageable: StandbyTier.default("Mem"),
    pinned: StandbyTier.default("Mem"),
  }).prefault({}),
  sample_query: z.looseObject({}).optional(),
  policy: PolicyRefSchema.optional(),
  /** Seconds a worker may take to answer its probe. */
  startup_timeout: z.number().positive().max(3600).default(120),
}).refine((s) => s.resources.GPU.Count === 0 || s.resources.GPU.vRam > 0, {
  message: "vRam must be set (MB per GPU) when Count is above 0",
  path: ["resources", "GPU", "vRam"],
}).refine((s) => s.resources.GPU.vRam === 0 || s.resources.GPU.Count > 0, {
  message: "Count must be set (GPUs per worker) when vRam is",
  path: ["resources", "GPU", "Count"],
});

/** A function's spec, all defaults filled in. */
export type FunctionSpec = z.infer<typeof FunctionSpecSchema>;

/**
 * The fields of a function spec that are not part of its workers: the
 * scaling `policy` (inline, or a link to a `funcpolicy`) and `sample_query`.
 * Changing them applies to the running version; changing any other field
 * (image, commands, envs, mounts, endpoint, resources, standby,
 * startup_timeout) defines different workers and gives a new version.
 */
export const NON_WORKER_FIELDS = ["policy", "sample_query"] as const;

/** What defines a function's workers: its spec without {@linkcode NON_WORKER_FIELDS}. */
export type WorkerSpec = Omit<FunctionSpec, typeof NON_WORKER_FIELDS[number]>;

/** The part of `spec` that defines the workers. */
export function workerSpec(spec: FunctionSpec): WorkerSpec {
  const { policy: _p, sample_query: _q, ...worker } = spec;
  return worker;
}

/** Whether two specs define the same workers (a new version is needed when not). */
export function sameWorker(a: FunctionSpec, b: FunctionSpec): boolean {
  // Environments in another order are the same (ones stored before mappings were ordered too).
  const ordered = (s: FunctionSpec) => ({ ...workerSpec(s), envs: byName(s.envs) });
  return jsonEqual(ordered(a), ordered(b));
}

/** Namespace specs: free-form, kept as given. */
const LooseSpecSchema = z.looseObject({});

/** A tenant's limits; an absent field is unlimited. */
export const TenantQuotaSchema = z.strictObject({
  /** GPUs the tenant's running pods may hold at once. */
  max_gpu: z.int().min(0).optional(),
  /** Pods the tenant may run at once (parked ones not counted). */
  max_replica: z.int().min(0).optional(),
  /** Functions the tenant may define, across its namespaces. */
  max_functions: z.int().min(0).optional(),
  /** Namespaces the tenant may have; absent: {@linkcode DEFAULT_OBJECT_QUOTA}. */
  max_namespaces: z.int().min(0).optional(),
  /** Function policies, across its namespaces; absent: {@linkcode DEFAULT_OBJECT_QUOTA}. */
  max_funcpolicies: z.int().min(0).optional(),
  /** API keys kept to the tenant (working ones); absent: {@linkcode DEFAULT_OBJECT_QUOTA}. */
  max_api_keys: z.int().min(0).optional(),
  /**
   * Asynchronous calls of the tenant's functions that may wait or run at
   * once (accepted, not ended); absent: `INFERX_CALL_OPEN_MAX`.
   */
  max_open_calls: z.int().min(0).optional(),
  /**
   * Megabytes their requests (bodies, headers, paths) may take together;
   * absent: `INFERX_CALL_OPEN_MAX_MB`.
   */
  max_open_call_mb: z.number().min(0).optional(),
  /** Ended asynchronous calls kept until they expire; absent: `INFERX_CALL_KEPT_MAX`. */
  max_kept_calls: z.int().min(0).optional(),
  /** Megabytes their answers may take together; absent: `INFERX_CALL_KEPT_MAX_MB`. */
  max_kept_call_mb: z.number().min(0).optional(),
  /**
   * Calls of the tenant's functions the gateways take a second, together
   * (synchronous, OpenAI-style and asynchronous ones accepted); absent:
   * unlimited.
   */
  max_calls_per_s: z.number().min(0.0001).max(1_000_000).optional(),
  /**
   * Calls over the rate taken at once after a quiet spell; absent: a
   * second's worth of `max_calls_per_s` (at least 1).
   */
  max_call_burst: z.int().min(1).max(1_000_000).optional(),
}).refine((q) => q.max_call_burst === undefined || q.max_calls_per_s !== undefined, {
  message: "max_call_burst is the burst of max_calls_per_s, which is not set",
  path: ["max_call_burst"],
});
/** A tenant's limits. */
export type TenantQuota = z.infer<typeof TenantQuotaSchema>;

/**
 * Namespaces, function policies and API keys a tenant may have where its
 * quota sets no limit: each object may be 1 MiB, so a tenant's `full` key
 * could otherwise fill the store with them.
 */
export const DEFAULT_OBJECT_QUOTA = 1000;

/** A tenant's share of a full GPU pool, relative to the other tenants' weights. */
const WeightSchema = z.number().positive().max(1_000_000);

/** Tenant specs: free-form, except `quota` and `weight`, which are checked. */
const TenantSpecSchema = z.looseObject({
  quota: TenantQuotaSchema.optional(),
  weight: WeightSchema.optional(),
});

/** The quota in a stored tenant's value (none: unlimited). */
export function tenantQuota(spec: Record<string, unknown>): TenantQuota {
  const r = TenantQuotaSchema.safeParse(spec.quota ?? {});
  return r.success ? r.data : {};
}

/** A tenant's call rate (`max_calls_per_s`, `max_call_burst`): the whole platform's. */
export interface CallRate {
  /** Calls a second. */
  perS: number;
  /** Calls at once after a quiet spell. */
  burst: number;
}

/** What a gateway reports of a tenant with a call rate: the calls it was asked since its last heartbeat. */
export interface CallDemand {
  tenant: string;
  calls: number;
}

/** A gateway's share of a tenant's call rate, as the scheduler hands it out at a heartbeat. */
export interface CallShare extends CallRate {
  tenant: string;
}

/** The call rate `quota` sets, or undefined for none. */
export function callRate(quota: TenantQuota): CallRate | undefined {
  const perS = quota.max_calls_per_s;
  if (perS === undefined) return undefined;
  return { perS, burst: quota.max_call_burst ?? defaultBurst(perS) };
}

/** `max_call_burst` when a quota sets none: a second's worth of the rate, one call at least. */
export function defaultBurst(perS: number): number {
  return Math.max(1, Math.ceil(perS));
}

/** The weight in a stored tenant's value (default 1). */
export function tenantWeight(spec: Record<string, unknown>): number {
  const r = WeightSchema.safeParse(spec.weight);
  return r.success ? r.data : 1;
}

// ------------------------------------------------------------------ Envelope

/**
 * The envelope every object travels in, over HTTP and in the store.
 * `object` is the spec, or `{metadata?, spec, status?}`.
 */
export const EnvelopeSchema = z.object({
  type: z.string(),
  tenant: z.string(),
  namespace: z.string(),
  name: z.string(),
  object: z.unknown().optional(),
  revision: z.int().min(0).optional(),
});

/**
 * The fields an answer's envelope carries besides the written ones
 * ({@linkcode userObjectToJson}): accepted in a write, so that what was read
 * can be sent back, and ignored there (`revision` excepted: an update's
 * compare-and-swap).
 */
const ENVELOPE_ANSWER_FIELDS = [
  "revision",
  "created_at",
  "version",
  "stable_version",
  "last_version",
  "older_versions",
];
const ENVELOPE_FIELDS: ReadonlySet<string> = new Set([
  "type",
  "tenant",
  "namespace",
  "name",
  "object",
  ...ENVELOPE_ANSWER_FIELDS,
]);

/**
 * The first key of envelope `o` that is none of its fields (undefined when
 * none), with why: a `metadata`, `spec`, `status` or `rollout` there (the
 * habit of Kubernetes' files) would otherwise be lost without a word.
 */
export function strayEnvelopeKey(
  o: Record<string, unknown>,
): { key: string; why: string } | undefined {
  for (const key of Object.keys(o)) {
    if (ENVELOPE_FIELDS.has(key)) continue;
    const why = ["metadata", "spec", "status", "rollout"].includes(key)
      ? `belongs in object, beside spec ({"object": {"metadata": {...}, "spec": {...}}})`
      : "not a field of the envelope (type, tenant, namespace, name, object)";
    return { key, why };
  }
  return undefined;
}

/** A user object with its decoded spec. */
export type UserObject =
  | ObjectMeta & { type: "tenant"; spec: Record<string, unknown> }
  | ObjectMeta & { type: "namespace"; spec: Record<string, unknown> }
  | ObjectMeta & {
    type: "function";
    spec: FunctionSpec;
    version: number;
    /** Conditions the scheduler observed. */
    status?: FunctionStatus;
  } & FunctionVersions
  | ObjectMeta & { type: "funcpolicy"; spec: FuncPolicy };

/** A version of a function that still serves calls, though no longer the newest. */
export interface OlderVersion {
  version: number;
  spec: FunctionSpec;
}

/**
 * The versions of a function the state service keeps (docs/traffic.md): the
 * newest is `version` (its spec is the function's); `stableVersion` is the
 * one a canary leaves the rest of the calls to; `olderVersions` are the older
 * versions still named by the traffic split, with their specs.
 */
export interface FunctionVersions {
  /** Set by the state service; the same as `version` when no canary runs. */
  stableVersion?: number;
  olderVersions?: OlderVersion[];
  /** The highest version ever given (a rollback goes below it; new versions go above). */
  lastVersion?: number;
  /** Asked for in a write: promote the newest version, or roll back to the stable one. */
  rollout?: "promote" | "rollback";
}

/** Fields every stored user object has. */
export interface ObjectMeta {
  tenant: string;
  namespace: string;
  name: string;
  /** Store revision of the last write; 0 before the first. */
  revision: number;
  /**
   * When the state service created it (epoch ms), kept by every later write;
   * never taken from a writer. Absent on objects stored before it was kept.
   */
  createdAt?: number;
  /** Labels and annotations; absent when there are none. */
  metadata?: ObjectMetadata;
}

/** Validation issues of a part of the object, their paths starting at that part. */
function under(part: string, error: ValidationIssues): ValidationIssues {
  return { issues: error.issues.map((i) => ({ ...i, path: [part, ...i.path] })) };
}

/** What `object` may hold beside its spec (`rollout` only in a write). */
const OBJECT_PARTS: ReadonlySet<string> = new Set(["spec", "metadata", "status", "rollout"]);

/** The parts of `object`: `{metadata?, spec, status?}`, or a bare spec. */
function unwrapObject(
  object: unknown,
  what: string,
): { spec: unknown; metadata?: unknown; status?: unknown } {
  if (object && typeof object === "object" && !Array.isArray(object)) {
    const o = object as Record<string, unknown>;
    if ("spec" in o) {
      const other = Object.keys(o).find((k) => !OBJECT_PARTS.has(k));
      if (other !== undefined) {
        throw new ValidationError(
          `Invalid ${what}: object.${other}: unknown beside spec (one of ${
            [...OBJECT_PARTS].join(", ")
          })`,
          other,
        );
      }
      return { spec: o.spec, metadata: o.metadata, status: o.status };
    }
    if ("metadata" in o) {
      throw new ValidationError(
        `Invalid ${what}: object.metadata needs the spec beside it: {"metadata": ..., "spec": ...}`,
        "metadata",
      );
    }
  }
  return { spec: object ?? {} };
}

/**
 * Decodes an object as a user sent it: `{type, tenant, namespace, name,
 * object, revision?}`, where `object` is the spec or `{spec}` as InferX sends
 * it. Throws {@linkcode ValidationError} naming the first bad field.
 *
 * @example
 * ```ts
 * const fn = decodeUserObject({
 *   type: "function", tenant: "public", namespace: "demo", name: "ngram",
 *   object: { spec: { image: "inferx/ngram", resources: { CPU: 500 } } },
 * });
 * ```
 */
export function decodeUserObject(
  input: unknown,
  options: { writeChecks?: boolean } = {},
): UserObject {
  if (nestsDeeperThan(input, MAX_OBJECT_DEPTH)) {
    throw new ValidationError(
      `Invalid object: nests arrays and objects more than ${MAX_OBJECT_DEPTH} levels deep`,
      "object",
    );
  }
  const proto = protoKeyPath(input);
  if (proto !== undefined) {
    throw new ValidationError(
      `Invalid object: ${proto}: "__proto__" is not allowed as a key`,
      proto,
    );
  }
  const obj = decodeObject(input);
  if (options.writeChecks !== false) {
    metadataWriteChecks(obj);
    writeChecks(obj);
  }
  return obj;
}

/** The largest user object stored (its JSON, UTF-8 bytes): well under etcd's default request limit. */
export const MAX_USER_OBJECT = 1024 * 1024;

/** The most entries of a function spec's lists: `commands`, `envs`, `mounts`. */
export const MAX_COMMANDS = 1000;
export const MAX_ENVS = 1000;
export const MAX_MOUNTS = 100;

/** The most labels, and the most annotations, of an object. */
export const MAX_LABELS = 256;
export const MAX_ANNOTATIONS = 256;

/**
 * The bounded lists of an object: where each is (`metadata`, or a function's
 * `spec`), its field, and its bound.
 */
const LIST_BOUNDS = [
  ["metadata", "labels", MAX_LABELS],
  ["metadata", "annotations", MAX_ANNOTATIONS],
  ["spec", "commands", MAX_COMMANDS],
  ["spec", "envs", MAX_ENVS],
  ["spec", "mounts", MAX_MOUNTS],
] as const;

type ListPart = (typeof LIST_BOUNDS)[number][0];

/**
 * How many entries each bounded list of an object holds (`parts` of it),
 * decoded or as a writer sent it (`envs` a list of pairs or a mapping):
 * `[field, entries, bound]`, the field named as errors name it.
 */
function listSizes(
  type: string,
  parts: { spec?: unknown; metadata?: unknown },
): [string, number, number][] {
  const field = (v: unknown, k: string) =>
    v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>)[k] : undefined;
  const count = (v: unknown) =>
    Array.isArray(v) ? v.length : v && typeof v === "object" ? Object.keys(v).length : 0;
  return LIST_BOUNDS.filter(([part]) => part === "metadata" || type === "function")
    .map(([part, name, most]) => [
      part === "metadata" ? `metadata.${name}` : name,
      count(field(parts[part], name)),
      most,
    ]);
}

function pastBound(
  o: { type: string; tenant: string; namespace: string; name: string },
  field: string,
  n: number,
  most: number,
): ValidationError {
  return new ValidationError(
    `Invalid ${o.type} ${o.tenant}/${o.namespace}/${o.name}: ${field}: at most ${most} entries (got ${n})`,
    field,
  );
}

/**
 * The bounds of `obj`'s lists in `part` (see {@linkcode LIST_BOUNDS}), which
 * a write must meet beyond what a stored object is read with (bound after
 * objects were stored: see {@linkcode writeChecks}): past them an object is
 * costly to check and decode in every role that reads it, and no worker
 * needs more.
 */
function listBounds(obj: UserObject, part: ListPart): void {
  const parts = { spec: obj.spec, metadata: obj.metadata };
  for (const [field, n, most] of listSizes(obj.type, parts)) {
    if (n > most && field.startsWith("metadata.") === (part === "metadata")) {
      throw pastBound(obj, field, n, most);
    }
  }
}

/** {@linkcode listBounds} of a write's labels and annotations. */
export function metadataWriteChecks(obj: UserObject): void {
  listBounds(obj, "metadata");
}

/**
 * The first bounded list of a write (`commands`, `envs`, `mounts` of a
 * function's spec; labels and annotations of any object) longer than its
 * bound where `prev`, the object stored, had it within the bound (or there
 * is none): the refusal {@linkcode writeChecks} and
 * {@linkcode metadataWriteChecks} would give, counted on the input as sent,
 * before a schema reads each entry (40,000 `envs` took 25-60 ms to read).
 * A list `prev` already had past its bound is left to those checks, which
 * pass it when unchanged.
 */
export function listPastBound(
  input: { type: string; tenant: string; namespace: string; name: string; object?: unknown },
  prev?: UserObject,
): ValidationError | undefined {
  const o = input.object;
  const wrapped = !!o && typeof o === "object" && !Array.isArray(o) && "spec" in o;
  const sent = wrapped ? o as { spec?: unknown; metadata?: unknown } : { spec: o };
  const before = new Map(
    prev
      ? listSizes(prev.type, { spec: prev.spec, metadata: prev.metadata }).map(([f, n]) => [f, n])
      : [],
  );
  for (const [field, n, most] of listSizes(input.type, sent)) {
    if (n > most && (before.get(field) ?? 0) <= most) return pastBound(input, field, n, most);
  }
  return undefined;
}

/**
 * What a write must meet beyond what a stored object is read with: rules
 * added after objects were stored, which a stored object breaking them must
 * not keep a role from starting (it is read as before, and refused only when
 * its spec is written changed: a status write or a rollout of it passes).
 */
export function writeChecks(obj: UserObject): void {
  const what = `${obj.type} ${obj.tenant}/${obj.namespace}/${obj.name}`;
  const refuse = (field: string, why: string): never => {
    throw new ValidationError(`Invalid ${what}: ${field}: ${why}`, field);
  };
  const policy = (p: FuncPolicy, at: string) => {
    // A call that finds no free worker waits for one, and its wait is what leases one.
    if (p.queue_len < 1) refuse(`${at}queue_len`, "must be at least 1");
  };
  if (obj.type === "funcpolicy") policy(obj.spec, "");
  if (obj.type !== "function") return;
  const spec = obj.spec;
  if (spec.policy?.kind === "inline") policy(spec.policy.policy, "policy.");
  // Handed to the operating system (a command line, an environment): no NUL byte, and no '='
  // in a variable's name (it would end the name there).
  const nul = (s: string) => s.includes("\0");
  if (nul(spec.image)) refuse("image", "must not contain a NUL byte");
  // What every Docker node would refuse at each start (each call a retryable 503).
  if (spec.image.length > 512 || !IMAGE_REF.test(spec.image)) {
    refuse(
      "image",
      "must be an image reference ([host[:port]/]path[:tag][@digest], the path in lowercase)",
    );
  }
  // A smaller CPU quota is one the kernel refuses a container; 6 MB is Docker's least memory.
  if (spec.resources.CPU < 10) refuse("resources.CPU", "must be at least 10 (millicores)");
  if (spec.resources.Mem < 6) refuse("resources.Mem", "must be at least 6 (MB)");
  listBounds(obj, "spec");
  spec.commands.forEach((c, i) => nul(c) && refuse(`commands.${i}`, "must not contain a NUL byte"));
  for (const [name, value] of spec.envs) {
    if (/[=\0]/.test(name)) refuse("envs", `"${name}": a name must not contain '=' or a NUL byte`);
    if (nul(value)) refuse("envs", `${name}: its value must not contain a NUL byte`);
  }
  spec.mounts.forEach((m, i) => {
    if (nul(m.hostpath) || nul(m.mountpath)) refuse(`mounts.${i}`, "must not contain a NUL byte");
    // Over the container's whole file system: the engine refuses it only when the pod starts.
    if (/^\/+(\.\/*)*$/.test(m.mountpath)) refuse(`mounts.${i}.mountpath`, "must not be /");
  });
  // The target of the probe's request line: a path on the worker, printable, without spaces.
  if (!/^\/(?!\/)[!-~]*$/.test(spec.endpoint.probe)) {
    refuse("endpoint.probe", "must be a path on the worker: '/' then printable ASCII, no spaces");
  }
  const hook = spec.endpoint.restore_hook;
  if (hook !== undefined && !/^\/(?!\/)[!-~]*$/.test(hook)) {
    refuse(
      "endpoint.restore_hook",
      "must be a path on the worker: '/' then printable ASCII, no spaces",
    );
  }
  // The dashboard's examples and playground call it with the viewer's credential.
  const sample = samplePathProblem(spec.sample_query?.path);
  if (sample) refuse("sample_query.path", sample);
}

/**
 * Why `path` (a `sample_query`'s) is no path of its function, or undefined
 * when it is one (or is not given). It is sent below
 * `/funccall/{tenant}/{namespace}/{name}/`, where a `.` or `..` segment,
 * escaped or not, an escaped slash or a backslash would lead elsewhere: the
 * dashboard shows it in a curl line a viewer copies with their own key.
 */
export function samplePathProblem(path: unknown): string | undefined {
  if (path === undefined) return undefined;
  if (typeof path !== "string" || !/^[!-~]*$/.test(path)) {
    return "must be a path of the function: printable ASCII, no spaces";
  }
  const rel = path.replace(/^\/+/, "");
  const q = rel.indexOf("?");
  if (ambiguousPath(`/${q < 0 ? rel : rel.slice(0, q)}`) || /%2f|%5c/i.test(rel)) {
    return "must be a path of the function: no '.' or '..' segment, backslash, '#' or escaped slash";
  }
  return undefined;
}

/**
 * {@linkcode decodeUserObject} without the depth limit: a stored object
 * admitted before the limit existed stays readable.
 */
function decodeObject(input: unknown): UserObject {
  const env = EnvelopeSchema.safeParse(input);
  if (!env.success) throw invalidInput("object envelope", env.error);
  const { type, tenant, namespace, name } = env.data;
  if (!isUserType(type)) {
    throw new ValidationError(
      `Invalid object envelope: type: must be one of tenant, namespace, function, funcpolicy (got "${type}")`,
      "type",
    );
  }
  for (const [field, value] of [["tenant", tenant], ["namespace", namespace], ["name", name]]) {
    if (!isValidName(value)) {
      throw new ValidationError(
        `Invalid object envelope: ${field}: "${value}" must be 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit`,
        field,
      );
    }
  }
  if (type === "tenant" && (tenant !== SYSTEM || namespace !== SYSTEM)) {
    throw new ValidationError(
      `Invalid tenant ${name}: a tenant lives under tenant "system", namespace "system"`,
      "tenant",
    );
  }
  if (type === "namespace" && namespace !== SYSTEM) {
    throw new ValidationError(
      `Invalid namespace ${tenant}/${name}: a namespace lives under namespace "system" of its tenant`,
      "namespace",
    );
  }
  const what = `${type} ${tenant}/${namespace}/${name}`;
  const parts = unwrapObject(env.data.object, what);
  const raw = parts.spec;
  if (type !== "function" && (env.data.object as { rollout?: unknown } | undefined)?.rollout) {
    // Else dropped without a word, the writer taking it for done.
    throw new ValidationError(`Invalid ${what}: rollout: only a function is rolled out`, "rollout");
  }
  const meta: ObjectMeta = { tenant, namespace, name, revision: env.data.revision ?? 0 };
  if (parts.metadata !== undefined) {
    const m = ObjectMetadataSchema.safeParse(parts.metadata);
    if (!m.success) throw invalidInput(what, under("metadata", m.error));
    if (!metadataEmpty(m.data)) meta.metadata = m.data;
  }
  switch (type) {
    case "tenant":
    case "namespace": {
      const r = (type === "tenant" ? TenantSpecSchema : LooseSpecSchema).safeParse(raw);
      if (!r.success) throw invalidInput(what, r.error);
      return { ...meta, type, spec: r.data };
    }
    case "function": {
      const r = FunctionSpecSchema.safeParse(raw);
      if (!r.success) throw invalidInput(what, r.error);
      const link = (raw as { policy?: { Link?: { tenant?: unknown; namespace?: unknown } } })
        .policy?.Link;
      if (
        link && ((link.tenant ?? tenant) !== tenant || (link.namespace ?? namespace) !== namespace)
      ) {
        throw new ValidationError(
          `Invalid ${what}: policy: Link: a function links to a funcpolicy of its own namespace (${tenant}/${namespace})`,
          "policy",
        );
      }
      const fn: UserObject = { ...meta, type, spec: r.data, version: 0 };
      if (parts.status !== undefined) {
        const st = FunctionStatusSchema.safeParse(parts.status);
        if (!st.success) throw invalidInput(what, under("status", st.error));
        if (st.data.conditions.length) fn.status = st.data;
      }
      const rollout = (env.data.object as { rollout?: unknown } | undefined)?.rollout;
      if (rollout !== undefined && rollout !== "promote" && rollout !== "rollback") {
        throw new ValidationError(
          `Invalid ${what}: rollout: must be "promote" or "rollback"`,
          "rollout",
        );
      }
      if (rollout) fn.rollout = rollout;
      return fn;
    }
    case "funcpolicy": {
      const r = FuncPolicySchema.safeParse(raw);
      if (!r.success) throw invalidInput(what, r.error);
      return { ...meta, type, spec: r.data };
    }
  }
}

/** A function spec in InferX's wire form (policy as `Link` or `Obj`): decodable again. */
export function functionSpecToJson(spec: FunctionSpec): Record<string, unknown> {
  const { policy, ...rest } = spec;
  if (!policy) return rest;
  return {
    ...rest,
    policy: policy.kind === "link"
      ? { Link: { objType: "funcpolicy", name: policy.name } }
      : { Obj: policy.policy },
  };
}

function specToJson(obj: UserObject): unknown {
  return obj.type === "function" ? functionSpecToJson(obj.spec) : obj.spec;
}

/** Encodes a user object as the store's JSON value: the API envelope without the revision. */
export function encodeUserObject(obj: UserObject): string {
  const { revision: _, ...stored } = userObjectToJson(obj);
  return JSON.stringify(stored);
}

/** How deep an object's JSON may nest (envelope included): far beyond any spec's needs. */
export const MAX_OBJECT_DEPTH = 64;

/** Decodes a store value (written by {@linkcode encodeUserObject}) at `revision`. */
export function decodeStoredUserObject(value: string, revision: number): UserObject {
  const parsed = JSON.parse(value) as Record<string, unknown> & {
    version?: number;
    stable_version?: number;
    last_version?: number;
    older_versions?: { version: number; spec: unknown }[];
  };
  const obj = decodeObject({ ...parsed, revision });
  const createdAt = storedCreatedAt(parsed);
  if (createdAt !== undefined) obj.createdAt = createdAt;
  if (obj.type === "function") {
    obj.version = parsed.version ?? revision;
    if (parsed.stable_version !== undefined) obj.stableVersion = parsed.stable_version;
    if (parsed.last_version !== undefined) obj.lastVersion = parsed.last_version;
    if (parsed.older_versions?.length) {
      obj.olderVersions = parsed.older_versions.map((o) => {
        const r = FunctionSpecSchema.safeParse(o.spec);
        if (!r.success) throw invalidInput(`version ${o.version} of ${obj.name}`, r.error);
        return { version: o.version, spec: r.data };
      });
    }
  }
  return obj;
}

/**
 * When a stored user object was created (epoch ms), from its value (the
 * store's JSON text, or that text parsed); undefined when it does not say.
 */
export function storedCreatedAt(value: string | Record<string, unknown>): number | undefined {
  let v: unknown;
  try {
    v = (typeof value === "string" ? JSON.parse(value) : value)?.created_at;
  } catch {
    return undefined;
  }
  const ms = typeof v === "string" ? Date.parse(v) : NaN;
  return Number.isFinite(ms) ? ms : undefined;
}

/** The version recorded in a stored function's value (0 when none). */
export function storedVersion(value: string): number {
  const v = (JSON.parse(value) as { version?: unknown }).version;
  return typeof v === "number" ? v : 0;
}

/** The JSON shape of a user object in API answers (InferX-style envelope). */
export function userObjectToJson(obj: UserObject): Record<string, unknown> {
  const object: Record<string, unknown> = {};
  if (obj.metadata) object.metadata = obj.metadata;
  object.spec = specToJson(obj);
  if (obj.type === "function" && obj.status) object.status = obj.status;
  const out: Record<string, unknown> = {
    type: obj.type,
    tenant: obj.tenant,
    namespace: obj.namespace,
    name: obj.name,
    revision: obj.revision,
    ...(obj.createdAt === undefined ? {} : { created_at: new Date(obj.createdAt).toISOString() }),
    object,
  };
  if (obj.type === "function") {
    out.version = obj.version;
    if (obj.stableVersion !== undefined) out.stable_version = obj.stableVersion;
    if (obj.lastVersion !== undefined) out.last_version = obj.lastVersion;
    if (obj.olderVersions?.length) {
      out.older_versions = obj.olderVersions.map((o) => ({
        version: o.version,
        spec: functionSpecToJson(o.spec),
      }));
    }
  }
  return out;
}

/**
 * The policy in force for a function: inline, linked (looked up with
 * `lookup`), or the default. A dangling link falls back to the default.
 */
export function resolvePolicy(
  spec: FunctionSpec,
  lookup: (name: string) => FuncPolicy | undefined,
): FuncPolicy {
  const ref = spec.policy;
  if (!ref) return DEFAULT_POLICY;
  if (ref.kind === "inline") return ref.policy;
  return lookup(ref.name) ?? DEFAULT_POLICY;
}
