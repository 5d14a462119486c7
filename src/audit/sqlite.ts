/**
 * The embedded audit backend, used when no PostgreSQL is configured: tables
 * `requests` and `pods` in one SQLite database (`{INFERX_DATA_DIR}/audit/audit.db`),
 * with an index for each filter `/audit` takes (tenant, namespace, function,
 * each with time), so a query reads only the rows it returns.
 *
 * Retention: rows older than `retainDays` are deleted, and when the rows
 * take more than `retainMB` the oldest go until they take 90% of it; freed
 * pages are given back to the file system. Retention runs with the writes,
 * a bounded number of rows at a time, so it never stalls the process.
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
import { logger } from "../common/log.ts";
import {
  type DatabaseSync,
  openDatabase,
  type StatementSync,
  transaction,
} from "../common/sqlite.ts";
import type { AuditBackend, AuditBatch } from "./batching.ts";
import { encodeRequests, type PackedRequests, SLOT, SLOTS } from "./row_codec.ts";
import type { AuditKind, AuditQuery, PodRow, RequestRow } from "./types.ts";

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
  ${indexes("requests")}
  ${indexes("pods")}
  create view if not exists requests_view as
    select r.*, s.tenant, s.namespace, s.func from requests r join scopes s on s.id = r.fid;
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
    requests: new RowInserter(db, "requests", REQUEST_COLUMNS),
    pods: new RowInserter(db, "pods", POD_COLUMNS),
  };
}

const TABLES = { requests: "requests", pods: "pods" } as const satisfies Record<AuditKind, string>;

/** One kind of scope: which of tenant, namespace and function name it. */
type ScopeKind = "t" | "n" | "f" | "g";

/**
 * The ids of scopes, created on first use and cached (the cache is bounded:
 * rows of functions that never existed must not grow memory).
 */
class ScopeIds {
  #db: DatabaseSync;
  #find: StatementSync;
  #add: StatementSync;
  #cache = new Map<string, number>();
  #max: number;

  constructor(db: DatabaseSync, max = 10_000) {
    this.#db = db;
    this.#max = max;
    this.#find = db.prepare(
      "select id from scopes where kind = ? and tenant = ? and namespace = ? and func = ?",
    );
    this.#add = db.prepare(
      "insert into scopes (kind, tenant, namespace, func) values (?, ?, ?, ?)",
    );
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

  /** Deletes scopes no row refers to any more (after retention). */
  prune(): void {
    const unused = SCOPE_COLUMNS.map((col) =>
      `not exists (select 1 from requests where ${col} = scopes.id) and
       not exists (select 1 from pods where ${col} = scopes.id)`
    ).join(" and ");
    if (Number(this.#db.prepare(`delete from scopes where ${unused}`).run().changes) > 0) {
      this.#cache.clear();
    }
  }
}

/**
 * The statement and arguments that answer `q`: newest first, filtered,
 * limited; undefined when a filter names a scope no row was ever written for.
 */
function querySql(
  kind: AuditKind,
  q: AuditQuery,
  scopes: ScopeIds,
): { sql: string; args: (string | number)[] } | undefined {
  const where: string[] = [];
  const args: (string | number)[] = [];
  if (q.tenant !== undefined) {
    const [col, id] = q.namespace !== undefined && q.func !== undefined
      ? ["fid", scopes.id("f", q.tenant, q.namespace, q.func)]
      : q.namespace !== undefined
      ? ["nsid", scopes.id("n", q.tenant, q.namespace)]
      : q.func !== undefined
      ? ["gid", scopes.id("g", q.tenant, "", q.func)]
      : ["tid", scopes.id("t", q.tenant)];
    if (id === undefined) return undefined;
    where.push(`r.${col} = ?`);
    args.push(id);
  }
  if (q.since !== undefined) {
    where.push("r.time >= ?");
    args.push(q.since);
  }
  if (q.status !== undefined && kind === "requests") {
    // Read along the time index; the range only drops rows from what it walks.
    where.push("r.status between ? and ?");
    args.push(q.status.min, q.status.max);
  }
  args.push(q.limit ?? 100);
  const filter = where.length ? ` where ${where.join(" and ")}` : "";
  return {
    sql: `select r.*, s.tenant, s.namespace, s.func from ${TABLES[kind]} r
      join scopes s on s.id = r.fid${filter} order by r.time desc, r.id desc limit ?`,
    args,
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
  #nextPrune = 0;

  /**
   * Opens (or creates) the audit database at `path` (`:memory:` for one in
   * memory). Use {@linkcode openSqliteAudit} to also import older files.
   */
  constructor(path: string, options: SqliteAuditOptions = {}) {
    this.#db = openDatabase(path, {
      synchronous: "NORMAL",
      incrementalVacuum: true,
      what: "the audit",
      // Gateways of one group (GATEWAY_WORKERS), or roles sharing a data directory, write it together.
      shared: true,
    });
    this.#db.exec("pragma journal_size_limit = 16777216");
    this.#db.exec(SCHEMA);
    addColumns(this.#db, "requests", ADDED_REQUEST_COLUMNS);
    this.#insert = insertStatements(this.#db);
    this.#scopes = new ScopeIds(this.#db);
    this.#claim = this.#db.prepare(
      "insert or ignore into batches (id, written_at) values (?, ?)",
    );
    this.#retainMs = (options.retainDays ?? 30) * DAY_MS;
    this.#retainBytes = (options.retainMB ?? 1024) * 1024 * 1024;
    this.#chunk = options.retentionChunk ?? 20_000;
    this.#every = options.retentionEveryMs ?? 60_000;
    this.#now = options.now ?? Date.now;
  }

  write(batch: AuditBatch): Promise<void> {
    try {
      transaction(this.#db, () => {
        // A batch retried after its commit (the answer lost with a worker) is written once.
        if (this.#claim.run(batch.id, this.#now()).changes === 0) return;
        this.insert(batch.packed ?? batch.requests, batch.pods);
      });
    } catch (err) {
      this.#scopes.forget(); // ids made in the rolled-back transaction are gone
      return Promise.reject(err);
    }
    if (this.#now() >= this.#nextRetention) {
      try {
        this.retain();
      } catch (err) {
        // The batch is written: a failed pass must not make the caller write it again.
        log.warn("Audit retention failed, trying again later: {error}", {
          error: (err as Error).message,
        });
        this.#nextRetention = this.#now() + this.#every;
      }
    }
    return Promise.resolve();
  }

  /**
   * Inserts rows without a transaction of its own (the caller's); a row that
   * cannot be stored throws.
   */
  insert(requests: RequestRow[] | PackedRequests, pods: PodRow[]): void {
    const packed = Array.isArray(requests) ? encodeRequests(requests) : requests;
    const { nums, strings } = packed;
    // Scope ids by the row's tenant, namespace and function (string indexes in the batch).
    const seen = new Map<number, Scopes>();
    const count = nums.length / SLOTS;
    this.#insert.requests.run(count, (i, out) => {
      const o = i * SLOTS;
      const t = nums[o + SLOT.tenant], ns = nums[o + SLOT.namespace], f = nums[o + SLOT.func];
      const key = (t * 1048576 + ns) * 1048576 + f;
      let scopes = seen.get(key);
      if (!scopes) {
        seen.set(
          key,
          scopes = this.#scopes.of({
            tenant: strings[t],
            namespace: strings[ns],
            func: strings[f],
          }),
        );
      }
      requestValues(packed, i, scopes, out);
    });
    this.#insert.pods.run(pods.length, (i, out) => {
      out.push(...podValues(pods[i], this.#scopes.of(pods[i])));
    });
  }

  query(kind: AuditKind, q: AuditQuery): Promise<(RequestRow | PodRow)[]> {
    try {
      const found = querySql(kind, q, this.#scopes);
      if (!found) return Promise.resolve([]);
      const { sql, args } = found;
      let st = this.#queries.get(sql);
      if (!st) this.#queries.set(sql, st = this.#db.prepare(sql));
      const rows = st.all(...args) as Row[];
      const from: (r: Row) => RequestRow | PodRow = kind === "requests"
        ? requestFromRow
        : podFromRow;
      return Promise.resolve(rows.map(from));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** How SQLite answers a query (`explain query plan`), to check that an index serves it. */
  plan(kind: AuditKind, q: AuditQuery): string[] {
    const found = querySql(kind, q, this.#scopes);
    if (!found) return [];
    const { sql, args } = found;
    return (this.#db.prepare(`explain query plan ${sql}`).all(...args) as Row[])
      .map((r) => String(r.detail));
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
    if (this.#retainMs > 0) {
      for (const table of Object.values(TABLES)) {
        budget -= Number(
          this.#db.prepare(
            `delete from ${table} where id in (select id from ${table} where time < ? order by time limit ?)`,
          ).run(now - this.#retainMs, budget).changes,
        );
      }
    }
    let used = this.#retainBytes > 0 ? this.usedBytes() : 0;
    while (this.#retainBytes > 0 && used > this.#retainBytes && budget > 0) {
      // Drop the oldest share of each table that brings the rows to 90% of the limit.
      const share = Math.min(1, (used - 0.9 * this.#retainBytes) / used);
      let deleted = 0;
      for (const table of Object.values(TABLES)) {
        const count = Number(
          (this.#db.prepare(`select count(*) as n from ${table}`).get() as Row).n,
        );
        const n = Math.min(budget, Math.max(1, Math.ceil(count * share)));
        if (count === 0) continue;
        const d = Number(
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
    const deleted = this.#chunk - budget;
    if (deleted > 0 && now >= this.#nextPrune) {
      // Reads an index per name: worth it only now and then.
      this.#scopes.prune();
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

  close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
    return Promise.resolve();
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
  if (path !== ":memory:") Deno.mkdirSync(dirname(path), { recursive: true });
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
      files.forEach(([kind], i) => {
        for (const line of texts[i].split("\n")) {
          if (!line) continue;
          try {
            const row = JSON.parse(line);
            if (kind === "requests") backend.insert([row], []);
            else backend.insert([], [row]);
            count++;
          } catch {
            skipped++; // cut short by a crash, or not a row
          }
        }
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
