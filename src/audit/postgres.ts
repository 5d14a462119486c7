/**
 * The PostgreSQL audit backend (`AUDITDB_ADDR`, a `postgres://` URL) through
 * `npm:postgres`. The schema is created by numbered migrations, applied once
 * each under an advisory lock so that gateways starting together do not
 * race; the applied versions are kept in `inferx_schema_migrations`.
 * Migrations run before the first write, so a database that is down at start
 * only delays them.
 *
 * @module
 */
import postgres from "postgres";
import type { AuditBackend, AuditBatch } from "./batching.ts";
import type { AuditKind, AuditQuery, PodRow, RequestRow } from "./types.ts";
import type { TokenUsage, UsageQuery, UsageSummary } from "./usage.ts";

/** The schema, one step per version; never edit a released step, add one. */
export const MIGRATIONS: readonly { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: "request audit",
    sql: `create table inferx_request_audit (
      id bigserial primary key,
      time timestamptz not null,
      gateway text not null,
      principal text not null,
      tenant text not null,
      namespace text not null,
      func text not null,
      method text not null,
      path text not null,
      status integer not null,
      latency_ms double precision not null,
      ttfb_ms double precision,
      cold_start boolean not null,
      resumed boolean not null,
      pod text,
      error text
    )`,
  },
  {
    version: 2,
    name: "pod audit",
    sql: `create table inferx_pod_audit (
      id bigserial primary key,
      time timestamptz not null,
      pod text not null,
      tenant text not null,
      namespace text not null,
      func text not null,
      node text not null,
      state text not null,
      prev_state text,
      reason text
    )`,
  },
  {
    version: 3,
    name: "lookup indexes",
    sql:
      `create index inferx_request_audit_by_func on inferx_request_audit (tenant, namespace, func, time desc);
      create index inferx_request_audit_by_time on inferx_request_audit (time desc);
      create index inferx_pod_audit_by_func on inferx_pod_audit (tenant, namespace, func, time desc);
      create index inferx_pod_audit_by_pod on inferx_pod_audit (pod, time)`,
  },
  {
    version: 4,
    name: "written batches",
    sql: `create table inferx_audit_batches (
      id text primary key,
      written_at timestamptz not null default now()
    )`,
  },
  {
    version: 5,
    name: "asynchronous calls",
    sql: `alter table inferx_request_audit add column call_id text, add column attempt integer;
      create index inferx_request_audit_by_call on inferx_request_audit (call_id)
        where call_id is not null`,
  },
  {
    version: 6,
    name: "function version and token figures",
    sql: `alter table inferx_request_audit
      add column version integer,
      add column ttft_ms double precision,
      add column itl_p50_ms double precision,
      add column itl_p99_ms double precision,
      add column tokens_per_s double precision,
      add column prompt_tokens integer,
      add column completion_tokens integer`,
  },
];

/** How long a written batch's id is remembered, against retries of it. */
const BATCH_MEMORY = "1 day";

/** The request audit's columns as a batch writes them, with their types. */
const REQUEST_FIELDS: readonly [string, string][] = [
  ["time", "timestamptz"],
  ["gateway", "text"],
  ["principal", "text"],
  ["tenant", "text"],
  ["namespace", "text"],
  ["func", "text"],
  ["method", "text"],
  ["path", "text"],
  ["status", "integer"],
  ["latency_ms", "double precision"],
  ["ttfb_ms", "double precision"],
  ["cold_start", "boolean"],
  ["resumed", "boolean"],
  ["pod", "text"],
  ["error", "text"],
  ["version", "integer"],
  ["ttft_ms", "double precision"],
  ["itl_p50_ms", "double precision"],
  ["itl_p99_ms", "double precision"],
  ["tokens_per_s", "double precision"],
  ["prompt_tokens", "integer"],
  ["completion_tokens", "integer"],
  ["call_id", "text"],
  ["attempt", "integer"],
];

/** The pod audit's columns as a batch writes them, with their types. */
const POD_FIELDS: readonly [string, string][] = [
  ["time", "timestamptz"],
  ["pod", "text"],
  ["tenant", "text"],
  ["namespace", "text"],
  ["func", "text"],
  ["node", "text"],
  ["state", "text"],
  ["prev_state", "text"],
  ["reason", "text"],
];

const names = (fields: readonly [string, string][]) => fields.map(([c]) => c).join(", ");
const typed = (fields: readonly [string, string][]) => fields.map((f) => f.join(" ")).join(", ");

/**
 * A batch in one statement ($1 its id, $2 and $3 its request and pod rows as
 * JSON arrays), so in one implicit transaction on the server: the id (a retry
 * of a batch whose commit went through, its answer lost, writes nothing) and
 * the rows go in together or not at all.
 */
const WRITE = `with fresh as (
    insert into inferx_audit_batches (id) values ($1) on conflict do nothing returning id
  ), requests as (
    insert into inferx_request_audit (${names(REQUEST_FIELDS)})
    select ${names(REQUEST_FIELDS)} from jsonb_to_recordset($2::text::jsonb) as r(${
  typed(REQUEST_FIELDS)
})
    where exists (select 1 from fresh)
  ), pods as (
    insert into inferx_pod_audit (${names(POD_FIELDS)})
    select ${names(POD_FIELDS)} from jsonb_to_recordset($3::text::jsonb) as p(${typed(POD_FIELDS)})
    where exists (select 1 from fresh)
  )`;
const WRITE_ONLY = `${WRITE} select count(*) from fresh`;
const WRITE_AND_PRUNE = `${WRITE}, pruned as (
    delete from inferx_audit_batches where written_at < now() - $4::interval
  ) select count(*) from fresh`;

/** An arbitrary constant naming the migration lock. */
const MIGRATION_LOCK = 0x1f3a_7e01;

type Sql = ReturnType<typeof postgres>;

/** Audit rows in PostgreSQL. */
export class PostgresAuditBackend implements AuditBackend {
  readonly name = "postgres";
  #sql: Sql;
  #migrated?: Promise<number[]>;
  #nextPrune = 0;

  /** `url`: `postgres://user:password@host:port/database`. */
  constructor(url: string) {
    this.#sql = postgres(url, {
      max: 4,
      connect_timeout: 3,
      idle_timeout: 30,
      // Reconnect after 0.03, 0.09, 0.27, 0.81 s, then every 1–2 s (the library's own waits grow
      // to 10–20 s, so rows waited that long after PostgreSQL was back).
      backoff: (retries: number) => (0.5 + Math.random() / 2) * Math.min(3 ** retries / 100, 2),
      onnotice: () => {},
      connection: { application_name: "inferx-audit" },
    });
  }

  /** Applies missing migrations (once per backend); returns the versions it applied. */
  migrate(): Promise<number[]> {
    this.#migrated ??= this.#migrate().catch((err) => {
      this.#migrated = undefined; // try again on the next write
      throw err;
    });
    return this.#migrated;
  }

  async #migrate(): Promise<number[]> {
    return await this.#sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(${MIGRATION_LOCK})`;
      await tx`create table if not exists inferx_schema_migrations (
        version integer primary key,
        name text not null,
        applied_at timestamptz not null default now()
      )`;
      const done = new Set(
        (await tx<{ version: number }[]>`select version from inferx_schema_migrations`)
          .map((r) => r.version),
      );
      const applied: number[] = [];
      for (const m of MIGRATIONS) {
        if (done.has(m.version)) continue;
        await tx.unsafe(m.sql);
        await tx`insert into inferx_schema_migrations (version, name) values (${m.version}, ${m.name})`;
        applied.push(m.version);
      }
      return applied;
    });
  }

  async write(batch: AuditBatch): Promise<void> {
    await this.migrate();
    const sql = this.#sql;
    const requests = batch.requests.map((r) => ({
      time: new Date(r.time).toISOString(),
      gateway: r.gateway,
      principal: r.principal,
      tenant: r.tenant,
      namespace: r.namespace,
      func: r.func,
      method: r.method,
      path: r.path,
      status: r.status,
      latency_ms: r.latencyMs,
      ttfb_ms: r.ttfbMs ?? null,
      cold_start: r.coldStart,
      resumed: r.resumed,
      pod: r.pod ?? null,
      error: r.error ?? null,
      version: r.version ?? null,
      ttft_ms: r.ttftMs ?? null,
      itl_p50_ms: r.itlP50Ms ?? null,
      itl_p99_ms: r.itlP99Ms ?? null,
      tokens_per_s: r.tokensPerS ?? null,
      prompt_tokens: r.promptTokens ?? null,
      completion_tokens: r.completionTokens ?? null,
      call_id: r.call ?? null,
      attempt: r.attempt ?? null,
    }));
    const pods = batch.pods.map((p) => ({
      time: new Date(p.time).toISOString(),
      pod: p.pod,
      tenant: p.tenant,
      namespace: p.namespace,
      func: p.func,
      node: p.node,
      state: p.state,
      prev_state: p.prevState ?? null,
      reason: p.reason ?? null,
    }));
    const prune = Date.now() >= this.#nextPrune;
    // One statement (WRITE), not sql.begin(): when the connection dropped inside a client-side
    // transaction (PostgreSQL restarting), the library's rollback wrote to a socket already gone
    // and threw where nothing could catch it, which ended the gateway.
    await sql.unsafe(prune ? WRITE_AND_PRUNE : WRITE_ONLY, [
      batch.id,
      JSON.stringify(requests),
      JSON.stringify(pods),
      ...(prune ? [BATCH_MEMORY] : []),
    ]);
    if (prune) this.#nextPrune = Date.now() + 3_600_000;
  }

  async query(kind: AuditKind, q: AuditQuery): Promise<(RequestRow | PodRow)[]> {
    await this.migrate();
    const sql = this.#sql;
    const table = kind === "requests" ? sql`inferx_request_audit` : sql`inferx_pod_audit`;
    const rows = await sql<Record<string, unknown>[]>`
      select * from ${table}
      where true
        ${q.tenant !== undefined ? sql`and tenant = ${q.tenant}` : sql``}
        ${q.namespace !== undefined ? sql`and namespace = ${q.namespace}` : sql``}
        ${q.func !== undefined ? sql`and func = ${q.func}` : sql``}
        ${q.since !== undefined ? sql`and time >= ${new Date(q.since)}` : sql``}
        ${q.status ? sql`and status between ${q.status.min} and ${q.status.max}` : sql``}
      order by time desc, id desc
      limit ${q.limit ?? 100}`;
    return rows.map((r) => kind === "requests" ? requestFromDb(r) : podFromDb(r));
  }

  /** Token usage aggregated in the database, as {@linkcode summarizeUsage} defines it. */
  async summarize(q: UsageQuery): Promise<UsageSummary> {
    await this.migrate();
    const sql = this.#sql;
    const figures = sql`count(*) as calls,
        coalesce(sum(prompt_tokens), 0) as prompt_tokens,
        coalesce(sum(completion_tokens), 0) as completion_tokens,
        percentile_disc(0.5) within group (order by ttft_ms) as ttft_p50,
        percentile_disc(0.99) within group (order by ttft_ms) as ttft_p99,
        percentile_disc(0.5) within group (order by itl_p50_ms) as itl_p50,
        percentile_disc(0.99) within group (order by itl_p99_ms) as itl_p99,
        avg(tokens_per_s) as tokens_per_s`;
    const where = sql`where time >= ${new Date(q.since)}
        and (ttft_ms is not null or completion_tokens is not null)
        ${q.tenant !== undefined ? sql`and tenant = ${q.tenant}` : sql``}`;
    const functions = await sql<Record<string, unknown>[]>`
      select tenant, namespace, func, version, ${figures} from inferx_request_audit ${where}
      group by tenant, namespace, func, version
      order by tenant, namespace, func, version nulls first`;
    const tenants = await sql<Record<string, unknown>[]>`
      select tenant, ${figures} from inferx_request_audit ${where}
      group by tenant order by tenant`;
    return {
      since: q.since,
      functions: functions.map((r) => usageFromDb(r, true)),
      tenants: tenants.map((r) => usageFromDb(r, false)),
    };
  }

  /** The applied migration versions, ascending. */
  async versions(): Promise<number[]> {
    const rows = await this.#sql<{ version: number }[]>`
      select version from inferx_schema_migrations order by version`;
    return rows.map((r) => r.version);
  }

  async close(): Promise<void> {
    await this.#sql.end({ timeout: 2 });
  }
}

const opt = <T>(v: unknown): T | undefined => (v === null ? undefined : v as T);

function requestFromDb(r: Record<string, unknown>): RequestRow {
  return {
    time: (r.time as Date).getTime(),
    gateway: r.gateway as string,
    principal: r.principal as string,
    tenant: r.tenant as string,
    namespace: r.namespace as string,
    func: r.func as string,
    method: r.method as string,
    path: r.path as string,
    status: r.status as number,
    latencyMs: r.latency_ms as number,
    ttfbMs: opt(r.ttfb_ms),
    coldStart: r.cold_start as boolean,
    resumed: r.resumed as boolean,
    pod: opt(r.pod),
    version: opt(r.version),
    error: opt(r.error),
    ttftMs: opt(r.ttft_ms),
    itlP50Ms: opt(r.itl_p50_ms),
    itlP99Ms: opt(r.itl_p99_ms),
    tokensPerS: opt(r.tokens_per_s),
    promptTokens: opt(r.prompt_tokens),
    completionTokens: opt(r.completion_tokens),
    call: opt(r.call_id),
    attempt: opt(r.attempt),
  };
}

/** A `summarize` result row as {@linkcode TokenUsage}, absent figures left out. */
function usageFromDb(r: Record<string, unknown>, withFunction: boolean): TokenUsage {
  const num = (v: unknown) => (v === null || v === undefined ? undefined : Number(v));
  const out: Record<string, unknown> = { tenant: r.tenant };
  if (withFunction) {
    out.namespace = r.namespace;
    out.func = r.func;
    out.version = num(r.version);
  }
  Object.assign(out, {
    calls: Number(r.calls),
    promptTokens: Number(r.prompt_tokens),
    completionTokens: Number(r.completion_tokens),
    ttftP50Ms: num(r.ttft_p50),
    ttftP99Ms: num(r.ttft_p99),
    itlP50Ms: num(r.itl_p50),
    itlP99Ms: num(r.itl_p99),
    tokensPerS: num(r.tokens_per_s),
  });
  for (const k of Object.keys(out)) if (out[k] === undefined) delete out[k];
  return out as unknown as TokenUsage;
}

function podFromDb(r: Record<string, unknown>): PodRow {
  return {
    time: (r.time as Date).getTime(),
    pod: r.pod as string,
    tenant: r.tenant as string,
    namespace: r.namespace as string,
    func: r.func as string,
    node: r.node as string,
    state: r.state as string,
    prevState: opt(r.prev_state),
    reason: opt(r.reason),
  };
}
