/**
 * Named errors shared by every role. Each carries a machine-readable `code`;
 * the HTTP and (later) gRPC edges map codes to status codes in one place:
 * {@linkcode httpStatus}.
 *
 * @module
 */

/** Error codes, one per kind of failure a caller can act on. */
export type ErrorCode =
  | "invalid"
  | "not_found"
  | "method_not_allowed"
  | "conflict"
  | "already_exists"
  | "queue_full"
  | "timeout"
  | "too_large"
  | "unsupported_media_type"
  | "unavailable"
  | "worker_failed"
  | "unschedulable"
  | "unsupported"
  | "unauthenticated"
  | "forbidden"
  | "quota_exceeded"
  | "internal";

/** Options for {@linkcode InferxError}. */
export interface InferxErrorOptions {
  /** The underlying error. */
  cause?: unknown;
  /** Whether the same call may succeed if tried again. @default false */
  retryable?: boolean;
  /** Structured details for clients (field name, limit, ...). */
  details?: Record<string, unknown>;
}

/** Base error of the platform: a code, a message, and whether to retry. */
export class InferxError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: InferxErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = "InferxError";
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = options.details;
  }
}

/** A request or object failed validation; `details.field` names the field. */
export class ValidationError extends InferxError {
  constructor(message: string, field?: string) {
    super("invalid", message, { details: field ? { field } : undefined });
    this.name = "ValidationError";
  }
}

/** What {@linkcode invalidInput} reads of a failed validation (a `ZodError` has it). */
export interface ValidationIssues {
  issues: readonly {
    path: readonly PropertyKey[];
    message: string;
    /** Zod's issue code; `unrecognized_keys` names its keys apart from its path. */
    code?: string;
    keys?: readonly string[];
  }[];
}

/**
 * The one way a failed schema validation becomes an error: the first issue's
 * field and message (the first unknown key's, if any), and how many more
 * there were.
 *
 * @example
 * ```ts
 * const r = NodeConfigSchema.safeParse(raw);
 * if (!r.success) throw invalidInput(`node config ${path}`, r.error);
 * // Invalid node config config/node.json: cpuMillis: Too small: expected number to be >=1
 * ```
 */
export function invalidInput(what: string, error: ValidationIssues): ValidationError {
  // An unknown key first: a misspelt field explains the others (`imagee`, then `image` missing).
  const issue = error.issues.find((i) => i.code === "unrecognized_keys") ?? error.issues[0];
  // An unknown key's issue has the object holding it as its path: the field is the key.
  const path = issue?.code === "unrecognized_keys" && issue.keys?.length
    ? [...issue.path, issue.keys[0]]
    : issue?.path ?? [];
  const field = path.map(String).join(".");
  const more = error.issues.length > 1 ? ` (and ${error.issues.length - 1} more)` : "";
  return new ValidationError(
    `Invalid ${what}: ${field || "object"}: ${issue?.message ?? "invalid"}${more}`,
    field || undefined,
  );
}

/** The object does not exist. */
export class NotFoundError extends InferxError {
  constructor(message: string) {
    super("not_found", message);
    this.name = "NotFoundError";
  }
}

/** A compare-and-swap failed: the object changed since it was read. */
export class ConflictError extends InferxError {
  constructor(message: string, details?: Record<string, unknown>) {
    super("conflict", message, { retryable: true, details });
    this.name = "ConflictError";
  }
}

/** A create found the object already there. */
export class AlreadyExistsError extends InferxError {
  constructor(message: string) {
    super("already_exists", message);
    this.name = "AlreadyExistsError";
  }
}

const STATUS: Record<ErrorCode, number> = {
  invalid: 400,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  already_exists: 409,
  too_large: 413,
  unsupported_media_type: 415,
  queue_full: 503,
  unavailable: 503,
  worker_failed: 503,
  unschedulable: 503,
  timeout: 504,
  unsupported: 501,
  unauthenticated: 401,
  forbidden: 403,
  quota_exceeded: 429,
  internal: 500,
};

/** The HTTP status for an error code; the single place that decides it. */
export function httpStatus(code: ErrorCode): number {
  return STATUS[code];
}

/** Wraps anything thrown into an {@linkcode InferxError}. */
export function toInferxError(err: unknown): InferxError {
  if (err instanceof InferxError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new InferxError("internal", `Internal error: ${message}`, { cause: err });
}

/** The JSON body every error answer carries. */
export function errorBody(err: InferxError): {
  error: { code: ErrorCode; message: string; details?: Record<string, unknown> };
} {
  return { error: { code: err.code, message: err.message, details: err.details } };
}

/** `text` without the empty `Resolution note: ` gRPC ends its connection errors with. */
export function withoutResolutionNote(text: string): string {
  return text.replace(/\.? Resolution note: *$/, "");
}

/**
 * A connection error's text for callers: `ip:port`, `[v6]:port` and
 * `dns.name:port` taken out (a role's or a store's address is the cluster's,
 * not a caller's), and gRPC's empty resolution note.
 */
export function connectionText(text: string): string {
  return withoutResolutionNote(text)
    .replace(
      / ?(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:.]+\]|[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)+):\d{1,5}\b/gi,
      "",
    );
}
