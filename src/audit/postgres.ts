/**
 * The PostgreSQL audit backend (`AUDITDB_ADDR`, a `postgres://` URL) through
 * `npm:postgres`. The schema is created by numbered migrations, applied once
 * each under an advisory lock so that gateways starting together do not
 * race, all in one script (one transaction on the server); the applied
 * versions are kept in `inferx_schema_migrations`. Migrations run before the
 * first write or read, so a database that is down at start only delays them.
 *
 * @module
 */
import postgres from "postgres";
import type { AuditBackend, AuditBatch } from "./batching.ts";
import type { AuditKind, AuditQuery, PodRow, RequestRow } from "./types.ts";
import { type TokenUsage, usageOrder, type UsageQuery, type UsageSummary } from "./usage.ts";

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

/** A column a batch writes: its name, its type, and its value in a row. */
type Column<Row> = readonly [name: string, type: string, value: (row: Row) => unknown];

const iso = (ms: number) => new Date(ms).toISOString();

const REQUEST_COLUMNS: readonly Column<RequestRow>[] = [
  ["time", "timestamptz", (r) => iso(r.time)],
  ["gateway", "text", (r) => r.gateway],
  ["principal", "text", (r) => r.principal],
  ["tenant", "text", (r) => r.tenant],
  ["namespace", "text", (r) => r.namespace],
  ["func", "text", (r) => r.func],
  ["method", "text", (r) => r.method],
  ["path", "text", (r) => r.path],
  ["status", "integer", (r) => r.status],
  ["latency_ms", "double precision", (r) => r.latencyMs],
  ["ttfb_ms", "double precision", (r) => r.ttfbMs],
  ["cold_start", "boolean", (r) => r.coldStart],
  ["resumed", "boolean", (r) => r.resumed],
  ["pod", "text", (r) => r.pod],
  ["error", "text", (r) => r.error],
  ["version", "integer", (r) => r.version],
  ["ttft_ms", "double precision", (r) => r.ttftMs],
  ["itl_p50_ms", "double precision", (r) => r.itlP50Ms],
  ["itl_p99_ms", "double precision", (r) => r.itlP99Ms],
  ["tokens_per_s", "double precision", (r) => r.tokensPerS],
  ["prompt_tokens", "integer", (r) => r.promptTokens],
  ["completion_tokens", "integer", (r) => r.completionTokens],
  ["call_id", "text", (r) => r.call],
  ["attempt", "integer", (r) => r.attempt],
];

const POD_COLUMNS: readonly Column<PodRow>[] = [
  ["time", "timestamptz", (p) => iso(p.time)],
  ["pod", "text", (p) => p.pod],
  ["tenant", "text", (p) => p.tenant],
  ["namespace", "text", (p) => p.namespace],
  ["func", "text", (p) => p.func],
  ["node", "text", (p) => p.node],
  ["state", "text", (p) => p.state],
  ["prev_state", "text", (p) => p.prevState],
  ["reason", "text", (p) => p.reason],
];

/**
 * `v` as a column of `type` holds it: text without NUL (which PostgreSQL's
 * text and JSON refuse) and with any lone surrogate (a text cut inside a
 * character) replaced; an integer out of `integer`'s range left out (null:
 * a figure no call has). SQLite holds them all, so that the one row the
 * store would refuse does not hold up every row behind it.
 */
function storable(type: string, v: unknown): unknown {
  if (typeof v === "string") return v.replaceAll("\0", "").toWellFormed();
  if (type === "integer" && typeof v === "number") {
    return Number.isInteger(v) && v >= -2147483648 && v <= 2147483647 ? v : null;
  }
  return v;
}

/** `rows` as the JSON array `jsonb_to_recordset` reads (a missing value is null). */
function asJson<Row>(columns: readonly Column<Row>[], rows: Row[]): string {
  return JSON.stringify(
    rows.map((row) =>
      Object.fromEntries(columns.map(([name, type, value]) => [name, storable(type, value(row))]))
    ),
  );
}

/**
 * Whether PostgreSQL refused what was written rather than failed to write it
 * (SQLSTATE classes 22, data exception, and 23, integrity): writing it again
 * would fail again.
 */
function refusedData(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" && /^2[23][0-9A-Z]{3}$/.test(code);
}

/** `insert … select` of the rows in JSON parameter `param`, if the batch is fresh. */
function insertFresh<Row>(table: string, columns: readonly Column<Row>[], param: string): string {
  const names = columns.map(([name]) => name).join(", ");
  const typed = columns.map(([name, type]) => `${name} ${type}`).join(", ");
  return `insert into ${table} (${names})
    select ${names} from jsonb_to_recordset(${param}::text::jsonb) as r(${typed})
    where exists (select 1 from fresh)`;
}

/**
 * A batch in one statement ($1 its id, $2 and $3 its request and pod rows as
 * JSON arrays; with `prune`, $4 how long ids are kept), so in one implicit
 * transaction on the server: the id (a retry of a batch whose commit went
 * through, its answer lost, writes nothing) and the rows go in together or
 * not at all.
 */
function writeStatement(prune: boolean): string {
  return `with fresh as (
    insert into inferx_audit_batches (id) values ($1) on conflict do nothing returning id
  ), ${
    prune
      ? `pruned as (delete from inferx_audit_batches where written_at < now() - $4::interval), `
      : ""
  }requests as (${insertFresh("inferx_request_audit", REQUEST_COLUMNS, "$2")})
  ${insertFresh("inferx_pod_audit", POD_COLUMNS, "$3")}`;
}

const WRITE = writeStatement(false);
const WRITE_AND_PRUNE = writeStatement(true);

/** An arbitrary constant naming the migration lock. */
export const MIGRATION_LOCK = 0x1f3a_7e01;

/**
 * The migrations as one script: under the advisory lock (held to the end of
 * the script's transaction), each step not yet recorded runs and is recorded;
 * the last statement lists the versions this transaction recorded.
 */
function migrationScript(): string {
  const steps = MIGRATIONS.map((m) => {
    const tag = `$step${m.version}$`;
    if (m.sql.includes(tag)) throw new Error(`migration ${m.version} contains ${tag}`);
    return `  if not exists (select 1 from inferx_schema_migrations where version = ${m.version}) then
    execute ${tag}${m.sql}${tag};
    insert into inferx_schema_migrations (version, name) values (${m.version}, ${pgString(m.name)});
  end if;`;
  });
  return `select pg_advisory_xact_lock(${MIGRATION_LOCK});
create table if not exists inferx_schema_migrations (
  version integer primary key,
  name text not null,
  applied_at timestamptz not null default now()
);
do $migrate$ begin
${steps.join("\n")}
end $migrate$;
select version from inferx_schema_migrations where xmin = pg_current_xact_id()::xid order by version`;
}

/** `s` as an SQL string literal. */
function pgString(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}

const MIGRATE = migrationScript();

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
      // No array-type lookup on each new connection: the audit sends and reads no arrays, and
      // the library starts that query without handling its failure, so a connection cut
      // during it (PostgreSQL restarting, a session ended) ended the gateway.
      fetch_types: false,
      // A statement held up (a table locked by VACUUM FULL or an ALTER) fails after 30 s, and
      // the batch is tried again, rather than holding every row behind it and the stop.
      connection: { application_name: "inferx-audit", statement_timeout: 30_000 },
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
    // One message of several statements, so one implicit transaction on the server (not
    // sql.begin(): a connection cut inside a client-side transaction, PostgreSQL restarting or
    // an administrator ending the session, made the library's rollback throw where nothing could
    // catch it, which ended the gateway).
    const results = await this.#sql.unsafe(MIGRATE) as unknown as { version: number }[][];
    return results[results.length - 1].map((r) => r.version);
  }

  async write(batch: AuditBatch): Promise<number | void> {
    try {
      await this.#write(batch);
    } catch (err) {
      if (!refusedData(err)) throw err;
      // One row it cannot hold (no case known once rows are made storable): each is written on
      // its own, under an id of its own, and those it refuses again are left out.
      let refused = 0;
      const one = async (id: string, requests: RequestRow[], pods: PodRow[]) => {
        await this.#write({ id, requests, pods }).catch((e) => {
          if (!refusedData(e)) throw e;
          refused++;
        });
      };
      for (const [i, r] of batch.requests.entries()) await one(`${batch.id}.r${i}`, [r], []);
      for (const [i, p] of batch.pods.entries()) await one(`${batch.id}.p${i}`, [], [p]);
      return refused;
    }
  }

  async #write(batch: AuditBatch): Promise<void> {
    await this.migrate();
    const prune = Date.now() >= this.#nextPrune;
    // One statement (writeStatement), not sql.begin(): when the connection dropped inside a
    // client-side transaction (PostgreSQL restarting), the library's rollback wrote to a socket
    // already gone and threw where nothing could catch it, which ended the gateway.
    await this.#sql.unsafe(prune ? WRITE_AND_PRUNE : WRITE, [
      batch.id,
      asJson(REQUEST_COLUMNS, batch.requests),
      asJson(POD_COLUMNS, batch.pods),
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
        ${q.until !== undefined ? sql`and time < ${new Date(q.until)}` : sql``}
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
    // One statement, so one snapshot: a tenant's totals are the sum of its functions' even
    // while rows are written (two statements saw different rows), and the rows are read once.
    const rows = await sql<Record<string, unknown>[]>`
      select tenant, namespace, func, version, grouping(namespace, func, version) as of_tenant,
        ${figures}
      from inferx_request_audit ${where}
      group by grouping sets ((tenant, namespace, func, version), (tenant))
      order by tenant, namespace, func, version nulls first`;
    return {
      since: q.since,
      functions: rows.filter((r) => !r.of_tenant).map((r) => usageFromDb(r, true)).sort(usageOrder),
      tenants: rows.filter((r) => r.of_tenant).map((r) => usageFromDb(r, false)).sort(usageOrder),
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
