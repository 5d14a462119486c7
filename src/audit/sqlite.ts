/**
 * The embedded audit backend, used when no PostgreSQL is configured: tables
 * `requests` and `pods` in one SQLite database (`{INFERX_DATA_DIR}/audit/audit.db`).
 *
 * Pod rows are few: each has an index entry per filter `/audit` takes
 * (tenant, namespace, function, each with time). Request rows come with every
 * call, so they are indexed by spans instead: a batch's rows are written
 * grouped by function, newest last, and table `request_spans` gets one entry
 * per function in the batch (its scopes, its rows' first and last id, their
 * earliest and latest time). A query walks the spans of its filter newest
 * first and reads each one's rows from the top of its id range down, a
 * window at a time, until no older span can hold a row newer than the ones
 * it has. A row then costs its own insert and no index entries (against five
 * per row: about 0.8x the audit's CPU per row, a third to a half of the
 * bytes written; `bench/audit_stream.ts`), and a query still reads about
 * only the rows it returns.
 *
 * A file from before spans keeps its request rows in `requests_v1` (renamed
 * at open, indexes and all): they are read alongside, and retention deletes
 * them by their age like any row (the table stays, empty: other processes
 * sharing the file may still read it).
 *
 * Retention: rows older than `retainDays` are deleted, and when the rows
 * take more than `retainMB` the oldest go until they take 90% of it; freed
 * pages are given back to the file system. Retention runs with the writes
 * (and on a timer while none comes), a bounded number of rows at a time, so
 * it never stalls the process: every `retentionEveryMs`, and as soon as the
 * rows pass the size limit (looked at once a second at most).
 *
 * Commits use `synchronous=NORMAL` in WAL mode: a committed batch survives a
 * crash of the process (not a power loss), as rows still in the batching
 * buffer never could.
 *
 * JSON-lines files left by the audit before it (`requests.jsonl`,
 * `pods.jsonl`, each with an optional `.1`) are imported on first open and
 * renamed with a `.migrated` suffix.
 *
 * @module
 */
import { dirname } from "node:path";
import { InferxError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import {
  checkpointWhole,
  type DatabaseSync,
  openDatabase,
  type StatementSync,
  transaction,
  writeTrouble,
} from "../common/sqlite.ts";
import type { AuditBackend, AuditBatch } from "./batching.ts";
import { encodeRequests, type PackedRequests, SLOT, SLOTS } from "./row_codec.ts";
import type { AuditKind, AuditQuery, PodRow, RequestRow } from "./types.ts";
import { privateDir } from "../common/private_dir.ts";

/** Options for {@linkcode SqliteAuditBackend}. */
export interface SqliteAuditOptions {
  /** Rows older than this many days are deleted; 0 keeps them. @default 30 */
  retainDays?: number;
  /** The rows' size at most, in MiB; 0: no limit. @default 1024 */
  retainMB?: number;
  /** Rows deleted per retention pass at most. @default 20000 */
  retentionChunk?: number;
  /** Time between retention passes while nothing is over its limit (ms). @default 60000 */
  retentionEveryMs?: number;
  /** The clock (ms since the epoch). @default Date.now */
  now?: () => number;
}

const DAY_MS = 86_400_000;
const log = logger("audit");

/**
 * The request row's function version and token figures (src/gateway/tokens.ts),
 * with their SQL types: added to a database made before them when opened.
 */
const TOKEN_COLUMNS = [
  ["version", "integer"],
  ["ttft_ms", "real"],
  ["itl_p50_ms", "real"],
  ["itl_p99_ms", "real"],
  ["tokens_per_s", "real"],
  ["prompt_tokens", "integer"],
  ["completion_tokens", "integer"],
] as const;

/**
 * Where a row belongs, as small integer ids into table `scopes`: its tenant,
 * its namespace, its function, and its function's name within the tenant
 * (for a filter on tenant and function without namespace). Each filter then
 * reads one index of two integers, and an insert updates small indexes.
 */
const SCOPE_COLUMNS = ["tid", "nsid", "fid", "gid"] as const;
const REQUEST_COLUMNS = [
  "time",
  ...SCOPE_COLUMNS,
  "gateway",
  "principal",
  "method",
  "path",
  "status",
  "latency_ms",
  "ttfb_ms",
  "cold_start",
  "resumed",
  "pod",
  "error",
  "call_id",
  "attempt",
  ...TOKEN_COLUMNS.map((c) => c[0]),
] as const;

/**
 * Columns request rows gained after the first release, with their SQL
 * types: added to an older file when it is opened.
 */
const ADDED_REQUEST_COLUMNS: readonly [string, string][] = [
  ["call_id", "text"],
  ["attempt", "integer"],
  ...TOKEN_COLUMNS.map(([c, t]): [string, string] => [c, t]),
];

const POD_COLUMNS = [
  "time",
  ...SCOPE_COLUMNS,
  "pod",
  "node",
  "state",
  "prev_state",
  "reason",
] as const;

/** The indexes of one table: one per filter the queries take, each ending in time. */
function indexes(table: string): string {
  return ["time", ...SCOPE_COLUMNS].map((col) =>
    `create index if not exists ${table}_by_${col} on ${table} (${
      col === "time" ? "time" : `${col}, time`
    });`
  ).join("\n");
}

const SCOPE_TYPES = `tid integer not null, nsid integer not null, fid integer not null,
    gid integer not null`;

const SCHEMA = `
  create table if not exists scopes (
    id integer primary key,
    kind text not null,
    tenant text not null,
    namespace text not null,
    func text not null,
    unique (kind, tenant, namespace, func)
  );
  create table if not exists requests (
    id integer primary key,
    time integer not null,
    ${SCOPE_TYPES},
    gateway text not null,
    principal text not null,
    method text not null,
    path text not null,
    status integer not null,
    latency_ms real not null,
    ttfb_ms real,
    cold_start integer not null,
    resumed integer not null,
    pod text,
    error text,
    call_id text,
    attempt integer,
    ${TOKEN_COLUMNS.map(([c, t]) => `${c} ${t}`).join(",\n    ")}
  );
  create table if not exists pods (
    id integer primary key,
    time integer not null,
    ${SCOPE_TYPES},
    pod text not null,
    node text not null,
    state text not null,
    prev_state text,
    reason text
  );
  create table if not exists meta (name text primary key, value integer not null) without rowid;
  create table if not exists batches (id text primary key, written_at integer not null) without rowid;
  create table if not exists request_spans (
    id integer primary key,
    ${SCOPE_TYPES},
    first_id integer not null,
    last_id integer not null,
    time_min integer not null,
    time_max integer not null
  );
  ${
  ["tid", "nsid", "fid", "gid"].map((col) =>
    `create index if not exists request_spans_by_${col} on request_spans (${col}, time_max);`
  ).join("\n")
}
  create index if not exists request_spans_by_time on request_spans (time_max);
  create index if not exists request_spans_by_time_min on request_spans (time_min);
  ${indexes("pods")}
  create view if not exists pods_view as
    select p.*, s.tenant, s.namespace, s.func from pods p join scopes s on s.id = p.fid;
`;

type Row = Record<string, string | number | null>;
type Scopes = [tid: number, nsid: number, fid: number, gid: number];

/** The string in packed slot `at`, or null when absent. */
function stringAt(p: PackedRequests, at: number): string | null {
  const k = p.nums[at];
  return k < 0 ? null : p.strings[k];
}

/** The number in packed slot `at`, or null when absent (NaN). */
function numberAt(p: PackedRequests, at: number): number | null {
  const v = p.nums[at];
  return v !== v ? null : v;
}

/** Adds packed row `i`'s columns (`REQUEST_COLUMNS`) to `out`; `scopes` gives its scope ids. */
function requestValues(
  p: PackedRequests,
  i: number,
  scopes: Scopes,
  out: (string | number | null)[],
): void {
  const o = i * SLOTS;
  const str = (slot: number) => stringAt(p, o + slot);
  const num = (slot: number) => numberAt(p, o + slot);
  out.push(
    num(SLOT.time),
    scopes[0],
    scopes[1],
    scopes[2],
    scopes[3],
    str(SLOT.gateway),
    str(SLOT.principal),
    str(SLOT.method),
    str(SLOT.path),
    num(SLOT.status),
    num(SLOT.latencyMs),
    num(SLOT.ttfbMs),
    num(SLOT.coldStart),
    num(SLOT.resumed),
    str(SLOT.pod),
    str(SLOT.error),
    str(SLOT.call),
    num(SLOT.attempt),
    num(SLOT.version),
    num(SLOT.ttftMs),
    num(SLOT.itlP50Ms),
    num(SLOT.itlP99Ms),
    num(SLOT.tokensPerS),
    num(SLOT.promptTokens),
    num(SLOT.completionTokens),
  );
}

function podValues(p: PodRow, s: Scopes): (string | number | null)[] {
  return [p.time, ...s, p.pod, p.node, p.state, p.prevState ?? null, p.reason ?? null];
}

/** `{ [name]: value }` when the column holds a value, `{}` for NULL: absent fields stay absent. */
const opt = <K extends string, T>(name: K, v: unknown, as: (v: unknown) => T) =>
  (v === null ? {} : { [name]: as(v) }) as { [P in K]?: T };

function requestFromRow(r: Row): RequestRow {
  return {
    time: Number(r.time),
    gateway: String(r.gateway),
    principal: String(r.principal),
    tenant: String(r.tenant),
    namespace: String(r.namespace),
    func: String(r.func),
    method: String(r.method),
    path: String(r.path),
    status: Number(r.status),
    latencyMs: Number(r.latency_ms),
    coldStart: r.cold_start === 1,
    resumed: r.resumed === 1,
    ...opt("ttfbMs", r.ttfb_ms, Number),
    ...opt("pod", r.pod, String),
    ...opt("version", r.version, Number),
    ...opt("error", r.error, String),
    ...opt("ttftMs", r.ttft_ms, Number),
    ...opt("itlP50Ms", r.itl_p50_ms, Number),
    ...opt("itlP99Ms", r.itl_p99_ms, Number),
    ...opt("tokensPerS", r.tokens_per_s, Number),
    ...opt("promptTokens", r.prompt_tokens, Number),
    ...opt("completionTokens", r.completion_tokens, Number),
    ...opt("call", r.call_id, String),
    ...opt("attempt", r.attempt, Number),
  };
}

function podFromRow(r: Row): PodRow {
  return {
    time: Number(r.time),
    pod: String(r.pod),
    tenant: String(r.tenant),
    namespace: String(r.namespace),
    func: String(r.func),
    node: String(r.node),
    state: String(r.state),
    ...opt("prevState", r.prev_state, String),
    ...opt("reason", r.reason, String),
  };
}

/** The statements that add one row to each table. */
/** Adds the `columns` `table` lacks (a file written by an older release). */
function addColumns(db: DatabaseSync, table: string, columns: readonly [string, string][]) {
  const have = new Set(
    (db.prepare(`pragma table_info(${table})`).all() as Row[]).map((c) => String(c.name)),
  );
  for (const [name, type] of columns) {
    if (have.has(name)) continue;
    try {
      db.exec(`alter table ${table} add column ${name} ${type}`);
    } catch (err) {
      // Another process sharing the file added it first.
      if (!/duplicate column/i.test((err as Error).message)) throw err;
    }
  }
}

/** Rows one insert statement takes: fewer statement runs, same rows (about 15% less CPU per row). */
const ROWS_PER_INSERT = 32;

/** Inserts rows of one table, `ROWS_PER_INSERT` to a statement, the rest one by one. */
class RowInserter {
  #one: StatementSync;
  #many: StatementSync;
  #values: (string | number | null)[] = [];

  constructor(db: DatabaseSync, table: string, cols: readonly string[]) {
    const row = `(${cols.map(() => "?").join(", ")})`;
    // `or fail`: a failing row needs no statement journal (the caller's
    // transaction is rolled back whole). With one, each batch also wrote
    // a temporary file: five times the writes of the batch itself.
    const sql = (n: number) =>
      `insert or fail into ${table} (${cols.join(", ")}) values ${Array(n).fill(row).join(", ")}`;
    this.#one = db.prepare(sql(1));
    this.#many = db.prepare(sql(ROWS_PER_INSERT));
  }

  /** Inserts `count` rows, `values` adding row `i`'s columns, in order, to `out`. */
  run(count: number, values: (i: number, out: (string | number | null)[]) => void): void {
    let i = 0;
    const v = this.#values;
    for (; i + ROWS_PER_INSERT <= count; i += ROWS_PER_INSERT) {
      v.length = 0;
      for (let j = i; j < i + ROWS_PER_INSERT; j++) values(j, v);
      this.#many.run(...v);
    }
    for (; i < count; i++) {
      v.length = 0;
      values(i, v);
      this.#one.run(...v);
    }
  }
}

function insertStatements(db: DatabaseSync): Record<AuditKind, RowInserter> {
  return {
    // Request rows get their ids from the writer: each function's rows of a batch in one range.
    requests: new RowInserter(db, "requests", ["id", ...REQUEST_COLUMNS]),
    pods: new RowInserter(db, "pods", POD_COLUMNS),
  };
}

/** A request row's columns as the view and the queries list them (a `requests_v1` may order them otherwise). */
const ROW_SELECT = `r.id, ${
  REQUEST_COLUMNS.map((c) => `r.${c}`).join(", ")
}, s.tenant, s.namespace, s.func`;

/** Whether the database has table `name`. */
function hasTable(db: DatabaseSync, name: string): boolean {
  return db.prepare("select 1 from sqlite_master where type = 'table' and name = ?").get(name) !==
    undefined;
}

/**
 * Makes or updates the schema, in one transaction (processes sharing the
 * file may open it at the same time). A file whose request rows predate
 * spans has them moved aside first, to table `requests_v1` with its indexes
 * (nothing is rewritten; an empty table is dropped). `requests_v1` is never
 * dropped later: other processes may be reading it. Returns whether it
 * holds rows.
 */
/**
 * Creates the audit's file at `path` when there is none, whole: made with its
 * schema under another name, then linked to `path` (which fails, harmlessly,
 * when another process of a group made it first). So the file is never empty
 * where it is found, and an empty one is one a copy or a restore cut short,
 * refused as the store's is, rather than an audit started over unsaid.
 */
function createWhole(path: string): void {
  try {
    Deno.statSync(path);
    return;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) return; // said by the open that follows
  }
  const made = `${path}.new-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const db = openDatabase(made, { incrementalVacuum: true, what: "the audit" });
    try {
      prepareSchema(db);
      // Whole in the file itself before it is linked into place: its log goes with the name it
      // was made under (and is removed below).
      checkpointWhole(db);
    } catch (err) {
      const trouble = writeTrouble(made);
      throw new InferxError(
        "unavailable",
        `Cannot make the audit at ${path}: ${
          trouble ? `${trouble} (${(err as Error).message})` : (err as Error).message
        }`,
        { cause: err },
      );
    } finally {
      db.close();
    }
    Deno.linkSync(made, path);
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) return; // another process made it meanwhile
    // Named as the file it was made for, not the name it was made under.
    if (err instanceof InferxError) {
      throw new InferxError(err.code, err.message.replaceAll(made, path), { cause: err });
    }
    throw new InferxError("unavailable", `Cannot make the audit at ${path}: ${err}`, {
      cause: err,
    });
  } finally {
    for (const f of [made, `${made}-wal`, `${made}-shm`]) {
      try {
        Deno.removeSync(f);
      } catch {
        // not made
      }
    }
  }
}

function prepareSchema(db: DatabaseSync): boolean {
  return transaction(db, () => {
    if (hasTable(db, "requests") && !hasTable(db, "request_spans")) {
      addColumns(db, "requests", ADDED_REQUEST_COLUMNS);
      db.exec("drop view if exists requests_view");
      if (db.prepare("select 1 from requests limit 1").get() === undefined) {
        db.exec("drop table requests");
      } else db.exec("alter table requests rename to requests_v1");
    }
    db.exec(SCHEMA);
    addColumns(db, "requests", ADDED_REQUEST_COLUMNS);
    const v1 = hasTable(db, "requests_v1");
    makeRequestsView(db, v1);
    return v1 && db.prepare("select 1 from requests_v1 limit 1").get() !== undefined;
  });
}

/** (Re)makes `requests_view`: every request row with its names, from `requests_v1` too while it is there. */
function makeRequestsView(db: DatabaseSync, v1: boolean): void {
  const from = (t: string) => `select ${ROW_SELECT} from ${t} r join scopes s on s.id = r.fid`;
  db.exec("drop view if exists requests_view");
  db.exec(
    `create view requests_view as ${from("requests")}${
      v1 ? ` union all ${from("requests_v1")}` : ""
    }`,
  );
}

/** Spans read per statement while a query walks them, at most (the first pages are smaller). */
const SPAN_PAGE = 1024;

/** The largest integer SQLite and JavaScript share, for an open end of a range. */
const MAX_ID = Number.MAX_SAFE_INTEGER;

/** Newest first: by time, then rows of `requests` before older `requests_v1` ones, then by id. */
function newestFirst(a: Row, b: Row): number {
  return Number(b.time) - Number(a.time) || Number(a.v1 ?? 0) - Number(b.v1 ?? 0) ||
    Number(b.id) - Number(a.id);
}

const TABLES = { requests: "requests", pods: "pods" } as const satisfies Record<AuditKind, string>;

/** One kind of scope: which of tenant, namespace and function name it. */
type ScopeKind = "t" | "n" | "f" | "g";

/**
 * The ids of scopes, created on first use and cached (the cache is bounded:
 * rows of functions that never existed must not grow memory). Several
 * processes may write one file (gateway members, roles sharing a data
 * directory): a prune in any of them bumps `scope_prunes` in `meta`, and a
 * cache filled before it is dropped ({@linkcode sync}) — the ids it holds
 * may be gone, or taken by other scopes.
 */
class ScopeIds {
  #db: DatabaseSync;
  #find: StatementSync;
  #add: StatementSync;
  #readPrunes: StatementSync;
  #bumpPrunes: StatementSync;
  #cache = new Map<string, number>();
  #max: number;
  /** `scope_prunes` when the cache was last known good. */
  #prunes = -1;

  constructor(db: DatabaseSync, max = 10_000) {
    this.#db = db;
    this.#max = max;
    this.#find = db.prepare(
      "select id from scopes where kind = ? and tenant = ? and namespace = ? and func = ?",
    );
    this.#add = db.prepare(
      "insert into scopes (kind, tenant, namespace, func) values (?, ?, ?, ?)",
    );
    this.#readPrunes = db.prepare("select value from meta where name = 'scope_prunes'");
    this.#bumpPrunes = db.prepare(
      "insert into meta (name, value) values ('scope_prunes', 1) on conflict (name) do update set value = value + 1",
    );
  }

  /**
   * Drops the cache when scopes were pruned since it was filled, by this
   * process or another; called at the start of each write transaction (where
   * no prune can come in between) and before each query.
   */
  sync(): void {
    const n = Number((this.#readPrunes.get() as Row | undefined)?.value ?? 0);
    if (n === this.#prunes) return;
    this.#cache.clear();
    this.#prunes = n;
  }

  /** The id of a scope, or undefined when it was never written (with `create`, made). */
  id(
    kind: ScopeKind,
    tenant: string,
    namespace = "",
    func = "",
    create = false,
  ): number | undefined {
    const key = `${kind}\0${tenant}\0${namespace}\0${func}`;
    let id = this.#cache.get(key);
    if (id !== undefined) return id;
    const row = this.#find.get(kind, tenant, namespace, func) as Row | undefined;
    if (row) id = Number(row.id);
    else if (create) id = Number(this.#add.run(kind, tenant, namespace, func).lastInsertRowid);
    else return undefined;
    if (this.#cache.size >= this.#max) this.#cache.clear();
    this.#cache.set(key, id);
    return id;
  }

  /** The four ids of a row (made when new). */
  of(r: { tenant: string; namespace: string; func: string }): Scopes {
    return [
      this.id("t", r.tenant, "", "", true)!,
      this.id("n", r.tenant, r.namespace, "", true)!,
      this.id("f", r.tenant, r.namespace, r.func, true)!,
      this.id("g", r.tenant, "", r.func, true)!,
    ];
  }

  /** Empties the cache (after a rollback, which takes new ids away). */
  forget(): void {
    this.#cache.clear();
  }

  /** Deletes scopes no row refers to any more (after retention); `v1`: `requests_v1` is there. */
  prune(v1: boolean): void {
    const tables = ["request_spans", "pods", ...(v1 ? ["requests_v1"] : [])];
    const unused = SCOPE_COLUMNS.flatMap((col) =>
      tables.map((t) => `not exists (select 1 from ${t} where ${col} = scopes.id)`)
    ).join(" and ");
    const remove = this.#db.prepare(`delete from scopes where ${unused}`);
    const pruned = transaction(this.#db, () => {
      const n = Number(remove.run().changes);
      if (n > 0) this.#bumpPrunes.run();
      return n;
    });
    if (pruned > 0) this.#cache.clear();
  }
}

/**
 * The scope column and id a query filters on: null for no filter, undefined
 * when it names a scope no row was ever written for.
 */
function scopeFilter(
  q: AuditQuery,
  scopes: ScopeIds,
): { col: typeof SCOPE_COLUMNS[number]; id: number } | null | undefined {
  if (q.tenant === undefined) return null;
  const [col, id] = q.namespace !== undefined && q.func !== undefined
    ? ["fid" as const, scopes.id("f", q.tenant, q.namespace, q.func)]
    : q.namespace !== undefined
    ? ["nsid" as const, scopes.id("n", q.tenant, q.namespace)]
    : q.func !== undefined
    ? ["gid" as const, scopes.id("g", q.tenant, "", q.func)]
    : ["tid" as const, scopes.id("t", q.tenant)];
  return id === undefined ? undefined : { col, id };
}

/**
 * The statement and arguments that answer `q` from a table of rows indexed
 * one by one (`pods`, `requests_v1`): newest first, filtered, limited;
 * undefined when a filter names a scope no row was ever written for.
 */
function querySql(
  kind: AuditKind,
  q: AuditQuery,
  scopes: ScopeIds,
  table: string = TABLES[kind],
): { sql: string; args: (string | number)[] } | undefined {
  const where: string[] = [];
  const args: (string | number)[] = [];
  const scope = scopeFilter(q, scopes);
  if (scope === undefined) return undefined;
  if (scope) {
    where.push(`r.${scope.col} = ?`);
    args.push(scope.id);
  }
  if (q.since !== undefined) {
    where.push("r.time >= ?");
    args.push(q.since);
  }
  if (q.until !== undefined) {
    where.push("r.time < ?");
    args.push(q.until);
  }
  if (q.status !== undefined && kind === "requests") {
    // Read along the time index; the range only drops rows from what it walks.
    where.push("r.status between ? and ?");
    args.push(q.status.min, q.status.max);
  }
  args.push(q.limit ?? 100);
  const filter = where.length ? ` where ${where.join(" and ")}` : "";
  const columns = kind === "requests" ? ROW_SELECT : "r.*, s.tenant, s.namespace, s.func";
  return {
    sql: `select ${columns} from ${table} r
      join scopes s on s.id = r.fid${filter} order by r.time desc, r.id desc limit ?`,
    args,
  };
}

/**
 * The statements of a request query over spans: the spans of its filter,
 * newest first from a cursor, and the rows of a window of one span's ids,
 * oldest first.
 */
function spanSql(
  q: AuditQuery,
  scope: { col: string; id: number } | null,
): { spans: string; spanArgs: number[]; rows: string; rowArgs: number[] } {
  const spanArgs: number[] = [];
  const where: string[] = [];
  if (scope) {
    where.push(`${scope.col} = ?`);
    spanArgs.push(scope.id);
  }
  if (q.since !== undefined) {
    where.push("time_max >= ?");
    spanArgs.push(q.since);
  }
  if (q.until !== undefined) {
    where.push("time_min < ?");
    spanArgs.push(q.until);
  }
  // The cursor: spans after the last one read, in (time_max, id) order descending.
  where.push("(time_max, id) < (?, ?)");
  const rowWhere = ["r.id between ? and ?"];
  const rowArgs: number[] = [];
  if (q.since !== undefined) {
    rowWhere.push("r.time >= ?");
    rowArgs.push(q.since);
  }
  if (q.until !== undefined) {
    rowWhere.push("r.time < ?");
    rowArgs.push(q.until);
  }
  if (q.status !== undefined) {
    rowWhere.push("r.status between ? and ?");
    rowArgs.push(q.status.min, q.status.max);
  }
  return {
    spans: `select id, first_id, last_id, time_max from request_spans
      where ${where.join(" and ")} order by time_max desc, id desc limit ?`,
    spanArgs,
    // Oldest first: a range read backwards costs SQLite several times more.
    rows: `select ${ROW_SELECT} from requests r join scopes s on s.id = r.fid
      where ${rowWhere.join(" and ")} order by r.id`,
    rowArgs,
  };
}

/** Audit rows in SQLite. */
export class SqliteAuditBackend implements AuditBackend {
  readonly name = "embedded";
  readonly takesPacked = true;
  #db: DatabaseSync;
  #insert: Record<AuditKind, RowInserter>;
  #scopes: ScopeIds;
  #claim: StatementSync;
  #queries = new Map<string, StatementSync>();
  #retainMs: number;
  #retainBytes: number;
  #chunk: number;
  #every: number;
  #now: () => number;
  #nextRetention = 0;
  /** When the rows' size is looked at next between retention passes. */
  #nextSizeCheck = 0;
  #nextPrune = 0;
  /** Whether request rows from before spans are still in `requests_v1`. */
  #v1: boolean;
  #maxId: StatementSync;
  #setMaxId: StatementSync;
  #timeOf: StatementSync;
  #addSpan: StatementSync;

  /**
   * Opens (or creates) the audit database at `path` (`:memory:` for one in
   * memory). Use {@linkcode openSqliteAudit} to also import older files.
   */
  constructor(path: string, options: SqliteAuditOptions = {}) {
    if (path !== ":memory:") createWhole(path);
    this.#db = openDatabase(path, {
      synchronous: "NORMAL",
      incrementalVacuum: true,
      what: "the audit",
      // Gateways of one group (GATEWAY_WORKERS), or roles sharing a data directory, write it together.
      shared: true,
    });
    try {
      this.#db.exec("pragma journal_size_limit = 16777216");
      this.#v1 = prepareSchema(this.#db);
    } catch (err) {
      this.#db.close();
      throw err;
    }
    this.#insert = insertStatements(this.#db);
    // Request ids are never given twice, even after the newest rows were deleted (hence a
    // counter, not the largest id): a span read by a query, or chosen by retention, can never
    // come to hold another function's rows.
    this.#maxId = this.#db.prepare(
      `select max(coalesce((select value from meta where name = 'request_ids'), 0),
        coalesce((select max(id) from requests), 0)) as m`,
    );
    this.#timeOf = this.#db.prepare("select time from requests where id = ?");
    this.#setMaxId = this.#db.prepare(
      "insert into meta (name, value) values ('request_ids', ?) on conflict (name) do update set value = excluded.value",
    );
    this.#addSpan = this.#db.prepare(
      `insert into request_spans (tid, nsid, fid, gid, first_id, last_id, time_min, time_max)
       values (?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#scopes = new ScopeIds(this.#db);
    this.#claim = this.#db.prepare(
      "insert or ignore into batches (id, written_at) values (?, ?)",
    );
    this.#retainMs = (options.retainDays ?? 30) * DAY_MS;
    this.#retainBytes = (options.retainMB ?? 1024) * 1024 * 1024;
    this.#chunk = options.retentionChunk ?? 20_000;
    this.#every = options.retentionEveryMs ?? 60_000;
    this.#now = options.now ?? Date.now;
    // Passes run with the writes, and on this timer while none comes (rows of an idle platform
    // pass their age too), looked at every 10 s at most: a pass a write made moves the next one.
    this.#timer = setInterval(() => {
      if (this.#db.isOpen) this.#retainIfDue();
    }, Math.min(this.#every, 10_000));
    Deno.unrefTimer(this.#timer);
  }

  #timer: ReturnType<typeof setInterval>;

  write(batch: AuditBatch): Promise<void> {
    try {
      transaction(this.#db, () => {
        // A batch retried after its commit (the answer lost with a worker) is written once.
        if (this.#claim.run(batch.id, this.#now()).changes === 0) return;
        this.#scopes.sync();
        this.insert(batch.packed ?? batch.requests, batch.pods);
      });
    } catch (err) {
      this.#scopes.forget(); // ids made in the rolled-back transaction are gone
      return Promise.reject(err);
    }
    // The batch is written: a failed pass must not make the caller write it again.
    this.#retainIfDue(this.#overSize());
    return Promise.resolve();
  }

  /** A retention pass, when one is due (or `now`); a failure is logged and tried later. */
  #retainIfDue(now = false): void {
    if (!now && this.#now() < this.#nextRetention) return;
    try {
      this.retain();
    } catch (err) {
      log.warn("Audit retention failed, trying again later: {error}", {
        error: (err as Error).message,
      });
      this.#nextRetention = this.#now() + this.#every;
    }
  }

  /**
   * Inserts rows without a transaction of its own (the caller's); a row that
   * cannot be stored throws.
   */
  insert(requests: RequestRow[] | PackedRequests, pods: PodRow[]): void {
    const packed = Array.isArray(requests) ? encodeRequests(requests) : requests;
    if (packed.nums.length > 0) this.#insertRequests(packed);
    this.#insert.pods.run(pods.length, (i, out) => {
      out.push(...podValues(pods[i], this.#scopes.of(pods[i])));
    });
  }

  /**
   * Request rows in one range of ids per function of the batch, each
   * function's rows oldest first (so a span is read from the top of its
   * range down), and a span for each range.
   */
  #insertRequests(packed: PackedRequests): void {
    const { nums, strings } = packed;
    const count = nums.length / SLOTS;
    // Scope ids by the row's tenant, namespace and function (string indexes in the batch).
    const seen = new Map<number, Scopes>();
    const scopes: Scopes[] = new Array(count);
    const order: number[] = new Array(count);
    for (let i = 0; i < count; i++) {
      const o = i * SLOTS;
      const t = nums[o + SLOT.tenant], ns = nums[o + SLOT.namespace], f = nums[o + SLOT.func];
      const key = (t * 1048576 + ns) * 1048576 + f;
      let sc = seen.get(key);
      if (!sc) {
        seen.set(
          key,
          sc = this.#scopes.of({ tenant: strings[t], namespace: strings[ns], func: strings[f] }),
        );
      }
      scopes[i] = sc;
      order[i] = i;
    }
    order.sort((a, b) => scopes[a][2] - scopes[b][2] || nums[a * SLOTS] - nums[b * SLOTS] || a - b);
    const base = Number((this.#maxId.get() as Row).m);
    this.#setMaxId.run(base + count);
    this.#insert.requests.run(count, (k, out) => {
      const i = order[k];
      out.push(base + k + 1);
      requestValues(packed, i, scopes[i], out);
    });
    for (let k = 0; k < count;) {
      const sc = scopes[order[k]];
      let min = Infinity, max = -Infinity;
      let j = k;
      for (; j < count && scopes[order[j]][2] === sc[2]; j++) {
        const t = nums[order[j] * SLOTS];
        if (t < min) min = t;
        if (t > max) max = t;
      }
      this.#addSpan.run(sc[0], sc[1], sc[2], sc[3], base + k + 1, base + j, min, max);
      k = j;
    }
  }

  #statement(sql: string): StatementSync {
    let st = this.#queries.get(sql);
    if (!st) this.#queries.set(sql, st = this.#db.prepare(sql));
    return st;
  }

  query(kind: AuditKind, q: AuditQuery): Promise<(RequestRow | PodRow)[]> {
    try {
      if (kind === "requests") return Promise.resolve(this.#requests(q).map(requestFromRow));
      this.#scopes.sync();
      const found = querySql(kind, q, this.#scopes);
      if (!found) return Promise.resolve([]);
      const rows = this.#statement(found.sql).all(...found.args) as Row[];
      return Promise.resolve(rows.map(podFromRow));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Request rows answering `q`, newest first: the spans of its filter newest
   * first (by their latest row), each span's rows newest first, until the
   * rows kept are as many as asked and newer than anything an older span
   * holds; then the rows of `requests_v1` merged in.
   */
  #requests(q: AuditQuery): Row[] {
    // One snapshot for the statements of a query: processes sharing the file write meanwhile.
    const db = this.#db;
    if (db.isTransaction) return this.#readRequests(q);
    db.exec("begin");
    try {
      return this.#readRequests(q);
    } finally {
      db.exec("commit");
    }
  }

  #readRequests(q: AuditQuery): Row[] {
    this.#scopes.sync();
    const limit = q.limit ?? 100;
    const scope = scopeFilter(q, this.#scopes);
    if (scope === undefined || limit <= 0) return [];
    const sql = spanSql(q, scope);
    const spans = this.#statement(sql.spans);
    const rowsOf = this.#statement(sql.rows);
    let kept: Row[] = [];
    /** The oldest time a row must beat to be among the first `limit`; -Infinity until there are that many. */
    let bar = -Infinity;
    const settle = () => {
      kept.sort(newestFirst);
      if (kept.length > limit) kept.length = limit;
      if (kept.length === limit) bar = Number(kept[limit - 1].time);
    };
    let cursor = [MAX_ID, MAX_ID];
    // A page as large as the spans a query usually reads (about one per row asked, for
    // functions called now and then), growing when more are needed.
    walk: for (
      let pageSize = Math.min(limit + 1, SPAN_PAGE);;
      pageSize = Math.min(2 * pageSize, SPAN_PAGE)
    ) {
      const page = spans.all(...sql.spanArgs, ...cursor, pageSize) as Row[];
      for (const span of page) {
        // Spans come newest first by their latest row: none later can hold a row above the bar.
        if (Number(span.time_max) < bar) break walk;
        // A span's rows go up in time with their ids: read it from the top down, a
        // window at a time, until it has given enough or the rest is older than the bar.
        const first = Number(span.first_id);
        let hi = Number(span.last_id);
        let taken = 0;
        for (let size = limit; hi >= first; size = Math.min(2 * size, 4096)) {
          const lo = Math.max(first, hi - size + 1);
          const rows = rowsOf.all(lo, hi, ...sql.rowArgs) as Row[];
          for (const r of rows) kept.push(r);
          taken += rows.length;
          if (taken >= limit || (rows.length && Number(rows[0].time) < bar)) break;
          // Fewer rows than ids, filtered by time alone: the rest are older than `since`
          // (or deleted by retention, which takes the oldest first) — unless the window's top
          // was newer than `until`, the rows below it still to read.
          if (rows.length < hi - lo + 1 && !q.status) {
            const top = q.until === undefined
              ? undefined
              : (this.#timeOf.get(hi) as Row | undefined)?.time;
            if (top === undefined || Number(top) < q.until!) break;
          }
          // Filtered by status too: the window's first row says whether the rest are older.
          if (q.since !== undefined && q.status) {
            const t = (this.#timeOf.get(lo) as Row | undefined)?.time;
            if (t === undefined || Number(t) < q.since) break;
          }
          hi = lo - 1;
        }
        if (kept.length >= 2 * limit || (bar === -Infinity && kept.length >= limit)) settle();
        cursor = [Number(span.time_max), Number(span.id)];
      }
      if (page.length < pageSize) break;
    }
    if (this.#v1) {
      const old = querySql("requests", q, this.#scopes, "requests_v1");
      if (old) {
        for (const r of this.#statement(old.sql).all(...old.args) as Row[]) {
          kept.push({ ...r, v1: 1 });
        }
      }
    }
    kept.sort(newestFirst);
    if (kept.length > limit) kept = kept.slice(0, limit);
    return kept;
  }

  /** How SQLite answers a query (`explain query plan`), to check that an index serves it. */
  plan(kind: AuditKind, q: AuditQuery): string[] {
    const explain = (sql: string, args: (string | number)[]) =>
      (this.#db.prepare(`explain query plan ${sql}`).all(...args) as Row[])
        .map((r) => String(r.detail));
    if (kind === "requests") {
      const scope = scopeFilter(q, this.#scopes);
      if (scope === undefined) return [];
      const sql = spanSql(q, scope);
      return [
        ...explain(sql.spans, [...sql.spanArgs, MAX_ID, MAX_ID, 1]),
        ...explain(sql.rows, [1, 2, ...sql.rowArgs]),
      ];
    }
    const found = querySql(kind, q, this.#scopes);
    return found ? explain(found.sql, found.args) : [];
  }

  /**
   * Whether the rows have grown past the size limit since the last pass
   * (looked at once a second at most): a burst of calls must not take a
   * minute of rows past it before the next pass.
   */
  #overSize(): boolean {
    if (this.#retainBytes <= 0 || this.#now() < this.#nextSizeCheck) return false;
    this.#nextSizeCheck = this.#now() + 1000;
    return this.usedBytes() > this.#retainBytes;
  }

  /** Bytes the rows and indexes take (the file less its free pages). */
  usedBytes(): number {
    const v = (p: string) => Number(Object.values(this.#db.prepare(`pragma ${p}`).get()!)[0]);
    return (v("page_count") - v("freelist_count")) * v("page_size");
  }

  /**
   * One retention pass: deletes rows past their age, then the oldest rows
   * while the rows take more than the size limit, at most the chunk size
   * in all; returns how many rows went. Runs with the writes on its own.
   */
  retain(): number {
    const now = this.#now();
    this.#db.prepare("delete from batches where written_at < ?").run(now - DAY_MS);
    let budget = this.#chunk;
    /** Tables of rows indexed one by one. */
    const rowTables = this.#v1 ? ["requests_v1", "pods"] : ["pods"];
    if (this.#retainMs > 0) {
      const cutoff = now - this.#retainMs;
      budget -= this.#expireSpans(cutoff, budget);
      for (const table of rowTables) {
        budget -= Number(
          this.#db.prepare(
            `delete from ${table} where id in (select id from ${table} where time < ? order by time limit ?)`,
          ).run(cutoff, Math.max(0, budget)).changes,
        );
      }
    }
    let used = this.#retainBytes > 0 ? this.usedBytes() : 0;
    while (this.#retainBytes > 0 && used > this.#retainBytes && budget > 0) {
      // Drop the oldest share of each table that brings the rows to 90% of the limit.
      const share = Math.min(1, (used - 0.9 * this.#retainBytes) / used);
      let deleted = 0;
      for (const table of ["requests", ...rowTables]) {
        // Spans go whole, so the budget may be spent past 0: nothing more this pass (a
        // negative LIMIT is no limit in SQLite: the whole table would go).
        if (budget <= 0) break;
        const count = Number(
          (this.#db.prepare(`select count(*) as n from ${table}`).get() as Row).n,
        );
        const n = Math.min(budget, Math.max(1, Math.ceil(count * share)));
        if (count === 0) continue;
        const d = table === "requests" ? this.#dropOldestSpans(n) : Number(
          this.#db.prepare(
            `delete from ${table} where id in (select id from ${table} order by time, id limit ?)`,
          ).run(n).changes,
        );
        deleted += d;
        budget -= d;
      }
      if (deleted === 0) break;
      used = this.usedBytes();
    }
    if (this.#v1 && this.#db.prepare("select 1 from requests_v1 limit 1").get() === undefined) {
      // The last row from before spans is gone: no need to read the table any more.
      this.#v1 = false;
    }
    const deleted = this.#chunk - budget;
    if (deleted > 0 && now >= this.#nextPrune) {
      // Reads an index per name: worth it only now and then.
      this.#scopes.prune(this.#v1);
      this.#nextPrune = now + 60 * this.#every;
    }
    if (deleted > 0) {
      // Each step of the pragma frees one page: step it to the end.
      this.#db.prepare("pragma incremental_vacuum").all();
    }
    // A pass that used its whole chunk has more to do: run again with the next write.
    this.#nextRetention = budget <= 0 ? 0 : now + this.#every;
    return deleted;
  }

  /**
   * Deletes request rows older than `cutoff`, span by span from the one
   * with the oldest row, at most about `budget`; returns how many went. A
   * span keeps its newer rows (and its earliest time moves up), or goes
   * with its last row.
   */
  #expireSpans(cutoff: number, budget: number): number {
    const db = this.#db;
    const drop = db.prepare("delete from requests where id between ? and ? and time < ?");
    const left = db.prepare("select min(time) as t from requests where id between ? and ?");
    const gone = db.prepare("delete from request_spans where id = ?");
    const moved = db.prepare("update request_spans set time_min = ? where id = ?");
    let deleted = 0;
    // Chosen inside the transaction: another process sharing the file may have changed them.
    transaction(db, () => {
      const spans = db.prepare(
        "select id, first_id, last_id from request_spans where time_min < ? order by time_min limit ?",
      ).all(cutoff, Math.max(0, budget)) as Row[];
      for (const span of spans) {
        if (deleted >= budget) break;
        deleted += Number(drop.run(span.first_id, span.last_id, cutoff).changes);
        const t = (left.get(span.first_id, span.last_id) as Row).t;
        if (t === null) gone.run(span.id);
        else moved.run(t, span.id);
      }
    });
    return deleted;
  }

  /** Deletes the oldest spans (by their latest row) with their rows, about `n` rows; returns how many. */
  #dropOldestSpans(n: number): number {
    const db = this.#db;
    const count = db.prepare("select count(*) as c from requests where id between ? and ?");
    const rows = db.prepare("delete from requests where id between ? and ?");
    const span = db.prepare("delete from request_spans where id = ?");
    let deleted = 0;
    transaction(db, () => {
      const spans = db.prepare(
        "select id, first_id, last_id from request_spans order by time_max, id limit ?",
      ).all(n) as Row[];
      for (const s of spans) {
        if (deleted >= n) break;
        deleted += Number((count.get(s.first_id, s.last_id) as Row).c);
        rows.run(s.first_id, s.last_id);
        span.run(s.id);
      }
    });
    return deleted;
  }

  close(): Promise<void> {
    clearInterval(this.#timer);
    if (this.#db.isOpen) this.#db.close();
    return Promise.resolve();
  }

  /** Forgets the scope ids it holds (after a rollback, which takes new ids away). */
  forgetScopes(): void {
    this.#scopes.forget();
  }

  /** The database, for migrations and tests. */
  get db(): DatabaseSync {
    return this.#db;
  }
}

/** Options for {@linkcode openSqliteAudit}. */
export interface OpenSqliteAuditOptions extends SqliteAuditOptions {
  /** Directory of older JSON-lines audit files to import. @default the database's directory */
  legacyDir?: string;
}

/**
 * Opens the audit at `path` (creating its directory); imports JSON-lines
 * files of the audit before it, once. Synchronous: it runs at start only.
 */
export function openSqliteAudit(
  path: string,
  options: OpenSqliteAuditOptions = {},
): SqliteAuditBackend {
  if (path !== ":memory:") privateDir(dirname(path));
  const backend = new SqliteAuditBackend(path, options);
  const dir = options.legacyDir ?? (path === ":memory:" ? undefined : dirname(path));
  if (dir) {
    try {
      importJsonLines(backend, dir);
    } catch (err) {
      backend.close();
      throw err;
    }
  }
  return backend;
}

/** The JSON-lines files of the audit before this one in `dir`, oldest first. */
function jsonLinesFiles(dir: string): [AuditKind, string][] {
  const files: [AuditKind, string][] = [];
  for (const kind of ["requests", "pods"] as const) {
    // The rotated file is the older one.
    for (const name of [`${kind}.jsonl.1`, `${kind}.jsonl`]) {
      try {
        Deno.statSync(`${dir}/${name}`);
        files.push([kind, name]);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
    }
  }
  return files;
}

/**
 * Imports the rows of older JSON-lines files in one transaction with the
 * mark that says it is done, then renames the files (also when a crash
 * came between the two). Lines that are cut short or lack fields are skipped.
 */
function importJsonLines(backend: SqliteAuditBackend, dir: string): void {
  const db = backend.db;
  const files = jsonLinesFiles(dir);
  if (!files.length) return;
  const imported = () =>
    db.prepare("select value from meta where name = 'jsonl_imported_at'").get() !== undefined;
  if (!imported()) {
    const texts = files.map(([, name]) => Deno.readTextFileSync(`${dir}/${name}`));
    let count = 0;
    let skipped = 0;
    transaction(db, () => {
      // Checked again inside the transaction: another process sharing the file may have done it.
      if (imported()) return;
      /** Inserts `rows` at once (request rows of a function in one span); row by row if one fails. */
      const insertAll = (kind: AuditKind, rows: unknown[]) => {
        if (!rows.length) return;
        const one = (r: unknown[]) =>
          kind === "requests"
            ? backend.insert(r as RequestRow[], [])
            : backend.insert([], r as PodRow[]);
        db.exec("savepoint import_rows");
        try {
          one(rows);
          db.exec("release import_rows");
          count += rows.length;
          return;
        } catch {
          db.exec("rollback to import_rows");
          db.exec("release import_rows");
          backend.forgetScopes(); // ids made since the savepoint are gone
        }
        for (const row of rows) {
          try {
            one([row]);
            count++;
          } catch {
            skipped++; // lacks a field the table needs
          }
        }
      };
      files.forEach(([kind], i) => {
        let rows: unknown[] = [];
        for (const line of texts[i].split("\n")) {
          if (!line) continue;
          try {
            rows.push(JSON.parse(line));
          } catch {
            skipped++; // cut short by a crash, or not JSON
            continue;
          }
          if (rows.length === 1000) (insertAll(kind, rows), rows = []);
        }
        insertAll(kind, rows);
      });
      db.prepare("insert into meta (name, value) values ('jsonl_imported_at', ?)").run(Date.now());
    });
    log.info(
      "Imported {count} audit row(s) from JSON lines in {dir} ({skipped} unreadable); the old files are kept as *.migrated",
      { count, skipped, dir },
    );
  }
  for (const [, name] of files) Deno.renameSync(`${dir}/${name}`, `${dir}/${name}.migrated`);
}
