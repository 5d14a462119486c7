/**
 * Audit rows and the log they go to. Two kinds: one row per request through
 * the gateway, one per pod state change. Writers never wait for storage:
 * rows are buffered and written in batches off the hot path.
 *
 * @module
 */
import type { UsageQuery, UsageSummary } from "./usage.ts";

export type { TokenUsage, UsageQuery, UsageSummary } from "./usage.ts";

/** Token figures of an OpenAI-style answer (see `src/gateway/tokens.ts`); absent for others. */
export interface TokenFigures {
  /** From receiving the call to its first token (ms); a whole answer: to the answer. */
  ttftMs?: number;
  /** Median gap between streamed tokens (ms). */
  itlP50Ms?: number;
  /** 99th percentile gap between streamed tokens (ms). */
  itlP99Ms?: number;
  /** Completion tokens per second of the call's time on its worker. */
  tokensPerS?: number;
  promptTokens?: number;
  completionTokens?: number;
}

/** The principal of a call whose credential was not accepted (no one, as far as the gateway knows). */
export const UNAUTHENTICATED = "unauthenticated";

/** One request through the gateway. */
export interface RequestRow extends TokenFigures {
  /** When it arrived (ms since the epoch). */
  time: number;
  gateway: string;
  /**
   * Who called (`admin`, `key:{id}`, `oidc:{sub}`, `anonymous`, {@linkcode UNAUTHENTICATED});
   * never a secret.
   */
  principal: string;
  tenant: string;
  namespace: string;
  func: string;
  method: string;
  path: string;
  status: number;
  latencyMs: number;
  /** Time to the upstream's first byte, when there was an upstream answer. */
  ttfbMs?: number;
  coldStart: boolean;
  resumed: boolean;
  pod?: string;
  /** The function version whose worker answered. */
  version?: number;
  /** The error code when the gateway answered an error itself. */
  error?: string;
  /** The asynchronous call the request accepted, or the run is an attempt of. */
  call?: string;
  /** Which attempt of `call` a run is. */
  attempt?: number;
}

/** One pod state change. */
export interface PodRow {
  time: number;
  pod: string;
  tenant: string;
  namespace: string;
  func: string;
  node: string;
  state: string;
  prevState?: string;
  /** Why it changed, when known (a failure's error). */
  reason?: string;
}

/** The two kinds of rows. */
export type AuditKind = "requests" | "pods";

/** A filter for {@linkcode AuditLog.query}. */
export interface AuditQuery {
  tenant?: string;
  namespace?: string;
  func?: string;
  /** Request rows whose status is in this range, both ends included. */
  status?: { min: number; max: number };
  /** Rows at or after this time (ms). */
  since?: number;
  /** Rows before this time (ms): with `since`, a window; the next page of a list. */
  until?: number;
  /** Newest first, at most this many. @default 100 */
  limit?: number;
}

/** How the log is doing. */
export interface AuditStats {
  backend: "postgres" | "embedded";
  /** Rows waiting to be written. */
  buffered: number;
  /** Rows written since start. */
  written: number;
  /** Rows dropped because the buffer was full. */
  dropped: number;
  /**
   * Rows of calls refused before they reached a function (401, 403, and a
   * 404 no worker gave: `refusedRow`) not written
   * because they came faster than `refusedPerS`: a flood of them would
   * otherwise push every tenant's rows out of the retention.
   */
  refusedDropped: number;
  /** Whether the last write succeeded. */
  healthy: boolean;
  /**
   * The young generation's pages of the backend's own thread (bytes), for
   * one in a worker thread (the embedded audit), as of its last answer.
   */
  youngGenerationBytes?: number;
}

/** Where audit rows go. */
export interface AuditLog {
  request(row: RequestRow): void;
  pod(row: PodRow): void;
  query(kind: "requests", q?: AuditQuery): Promise<RequestRow[]>;
  query(kind: "pods", q?: AuditQuery): Promise<PodRow[]>;
  stats(): AuditStats;
  /** Token usage by function version and by tenant, from the request rows. */
  usage(q: UsageQuery): Promise<UsageSummary>;
  /** Writes what is buffered now (fails when the backend is down). */
  flush(): Promise<void>;
  /** Writes what it can and closes the backend. */
  close(): Promise<void>;
}
