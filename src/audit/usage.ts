/**
 * Token usage from the request audit: per function version and per tenant,
 * the OpenAI-style calls read, their prompt and completion tokens, time to
 * first token, gaps between tokens and output rate. A backend that can
 * aggregate itself (PostgreSQL) does; for the others {@linkcode summarizeUsage}
 * aggregates the rows in memory with the same definitions.
 *
 * @module
 */
import type { RequestRow } from "./types.ts";

/** Which rows a usage summary covers. */
export interface UsageQuery {
  /** Rows at or after this time (ms since the epoch). */
  since: number;
  /** Only this tenant's calls. */
  tenant?: string;
}

/** Token figures of one group of calls. */
export interface TokenUsage {
  tenant: string;
  /** Set for a function's row; absent for a tenant's. */
  namespace?: string;
  func?: string;
  /** The function version whose workers answered (function rows only). */
  version?: number;
  /** OpenAI-style calls whose answers were read. */
  calls: number;
  promptTokens: number;
  completionTokens: number;
  /** Time to first token over the calls (ms): median and 99th percentile. */
  ttftP50Ms?: number;
  ttftP99Ms?: number;
  /** Median of the calls' median gaps between tokens (ms). */
  itlP50Ms?: number;
  /** 99th percentile of the calls' 99th percentile gaps (ms). */
  itlP99Ms?: number;
  /** Mean of the calls' output tokens per second. */
  tokensPerS?: number;
}

/** Token usage by function version and by tenant. */
export interface UsageSummary {
  since: number;
  functions: TokenUsage[];
  tenants: TokenUsage[];
  /** When aggregated in memory: the audit rows read (at most the read limit). */
  rowsRead?: number;
  /**
   * The read limit cut the rows: the figures cover from `since` (then the
   * oldest row read) on, not the whole period asked for.
   */
  truncated?: boolean;
}

/** Whether a row carries token figures (an OpenAI-style answer that was read). */
export function hasTokens(r: RequestRow): boolean {
  return r.ttftMs !== undefined || r.completionTokens !== undefined;
}

/** The value at quantile `q` of `values` (nearest rank, as SQL's `percentile_disc`). */
function rank(values: number[], q: number): number | undefined {
  if (!values.length) return undefined;
  values.sort((a, b) => a - b);
  return values[Math.min(values.length - 1, Math.max(0, Math.ceil(q * values.length) - 1))];
}

interface Acc {
  key: TokenUsage;
  calls: number;
  prompt: number;
  completion: number;
  ttft: number[];
  itl50: number[];
  itl99: number[];
  rates: number[];
}

function add(acc: Acc, r: RequestRow) {
  acc.calls++;
  acc.prompt += r.promptTokens ?? 0;
  acc.completion += r.completionTokens ?? 0;
  if (r.ttftMs !== undefined) acc.ttft.push(r.ttftMs);
  if (r.itlP50Ms !== undefined) acc.itl50.push(r.itlP50Ms);
  if (r.itlP99Ms !== undefined) acc.itl99.push(r.itlP99Ms);
  if (r.tokensPerS !== undefined) acc.rates.push(r.tokensPerS);
}

function done(acc: Acc): TokenUsage {
  const out: TokenUsage = {
    ...acc.key,
    calls: acc.calls,
    promptTokens: acc.prompt,
    completionTokens: acc.completion,
    ttftP50Ms: rank(acc.ttft, 0.5),
    ttftP99Ms: rank(acc.ttft, 0.99),
    itlP50Ms: rank(acc.itl50, 0.5),
    itlP99Ms: rank(acc.itl99, 0.99),
    tokensPerS: acc.rates.length
      ? acc.rates.reduce((a, b) => a + b, 0) / acc.rates.length
      : undefined,
  };
  for (const k of Object.keys(out) as (keyof TokenUsage)[]) {
    if (out[k] === undefined) delete out[k];
  }
  return out;
}

/** Aggregates request rows into a {@linkcode UsageSummary}: rows without tokens are passed over. */
export function summarizeUsage(rows: Iterable<RequestRow>, q: UsageQuery): UsageSummary {
  const funcs = new Map<string, Acc>();
  const tenants = new Map<string, Acc>();
  const acc = (m: Map<string, Acc>, id: string, key: TokenUsage) => {
    let a = m.get(id);
    if (!a) {
      m.set(
        id,
        a = { key, calls: 0, prompt: 0, completion: 0, ttft: [], itl50: [], itl99: [], rates: [] },
      );
    }
    return a;
  };
  let read = 0;
  for (const r of rows) {
    read++;
    if (r.time < q.since || (q.tenant !== undefined && r.tenant !== q.tenant) || !hasTokens(r)) {
      continue;
    }
    const fkey: TokenUsage = {
      tenant: r.tenant,
      namespace: r.namespace,
      func: r.func,
      version: r.version,
      calls: 0,
      promptTokens: 0,
      completionTokens: 0,
    };
    add(acc(funcs, `${r.tenant}/${r.namespace}/${r.func}@${r.version ?? ""}`, fkey), r);
    add(
      acc(tenants, r.tenant, { tenant: r.tenant, calls: 0, promptTokens: 0, completionTokens: 0 }),
      r,
    );
  }
  return {
    since: q.since,
    functions: [...funcs.values()].map(done).sort(usageOrder),
    tenants: [...tenants.values()].map(done).sort(usageOrder),
    rowsRead: read,
  };
}

/**
 * The order of usage figures, whichever store summed them: by tenant,
 * namespace, function (code-point order, not a locale's or a database's
 * collation), then version (none first).
 */
export function usageOrder(a: TokenUsage, b: TokenUsage): number {
  const cmp = (x = "", y = "") => x < y ? -1 : x > y ? 1 : 0;
  return cmp(a.tenant, b.tenant) || cmp(a.namespace, b.namespace) || cmp(a.func, b.func) ||
    (a.version ?? -1) - (b.version ?? -1);
}
