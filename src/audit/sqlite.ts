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

const REQUEST_COLUMNS = [
  "time",
  "gateway",
  "principal",
  "tenant",
  "namespace",
  "func",
  "method",
  "path",
  "status",
  "latency_ms",
  "ttfb_ms",
  "cold_start",
  "resumed",
  "pod",
  "error",
] as const;
const POD_COLUMNS = [
  "time",
  "pod",
  "tenant",
  "namespace",
  "func",
  "node",
  "state",
  "prev_state",
  "reason",
] as const;

/** The indexes of one table: one per filter the queries take, each ending in time. */
function indexes(table: string): string {
  return [
    ["time", "time"],
    ["tenant", "tenant, time"],
    ["namespace", "tenant, namespace, time"],
    ["func", "tenant, namespace, func, time"],
    ["tenant_func", "tenant, func, time"],
  ].map(([name, cols]) => `create index if not exists ${table}_by_${name} on ${table} (${cols});`)
    .join("\n");
}

const SCHEMA = `
  create table if not exists requests (
    id integer primary key,
    time integer not null,
    gateway text not null,
    principal text not null,
    tenant text not null,
    namespace text not null,
    func text not null,
    method text not null,
    path text not null,
    status integer not null,
    latency_ms real not null,
    ttfb_ms real,
    cold_start integer not null,
    resumed integer not null,
    pod text,
    error text
  );
  create table if not exists pods (
    id integer primary key,
    time integer not null,
    pod text not null,
    tenant text not null,
    namespace text not null,
    func text not null,
    node text not null,
    state text not null,
    prev_state text,
    reason text
  );
  create table if not exists meta (name text primary key, value integer not null) without rowid;
  ${indexes("requests")}
  ${indexes("pods")}
`;

type Row = Record<string, string | number | null>;

function requestValues(r: RequestRow): (string | number | null)[] {
  return [
    r.time,
    r.gateway,
    r.principal,
    r.tenant,
    r.namespace,
    r.func,
    r.method,
    r.path,
    r.status,
    r.latencyMs,
    r.ttfbMs ?? null,
    r.coldStart ? 1 : 0,
    r.resumed ? 1 : 0,
    r.pod ?? null,
    r.error ?? null,
  ];
}

function podValues(p: PodRow): (string | number | null)[] {
  return [
    p.time,
    p.pod,
    p.tenant,
    p.namespace,
    p.func,
    p.node,
    p.state,
    p.prevState ?? null,
    p.reason ?? null,
  ];
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
    ...opt("error", r.error, String),
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
function insertStatements(db: DatabaseSync): Record<AuditKind, StatementSync> {
  const insert = (table: string, cols: readonly string[]) =>
    db.prepare(
      `insert into ${table} (${cols.join(", ")}) values (${cols.map(() => "?").join(", ")})`,
    );
  return { requests: insert("requests", REQUEST_COLUMNS), pods: insert("pods", POD_COLUMNS) };
}

const TABLES = { requests: "requests", pods: "pods" } as const satisfies Record<AuditKind, string>;

/** The statement and arguments that answer `q`: newest first, filtered, limited. */
function querySql(kind: AuditKind, q: AuditQuery): { sql: string; args: (string | number)[] } {
  const where: string[] = [];
  const args: (string | number)[] = [];
  for (const f of ["tenant", "namespace", "func"] as const) {
    const v = q[f];
    if (v === undefined) continue;
    where.push(`${f} = ?`);
    args.push(v);
  }
  if (q.since !== undefined) {
    where.push("time >= ?");
    args.push(q.since);
  }
  args.push(q.limit ?? 100);
  const filter = where.length ? ` where ${where.join(" and ")}` : "";
  return {
    sql: `select * from ${TABLES[kind]}${filter} order by time desc, id desc limit ?`,
    args,
  };
}

/** Audit rows in SQLite. */
export class SqliteAuditBackend implements AuditBackend {
  readonly name = "embedded";
  #db: DatabaseSync;
  #insert: ReturnType<typeof insertStatements>;
  #queries = new Map<string, StatementSync>();
  #retainMs: number;
  #retainBytes: number;
  #chunk: number;
  #every: number;
  #now: () => number;
  #nextRetention = 0;

  /**
   * Opens (or creates) the audit database at `path` (`:memory:` for one in
   * memory). Use {@linkcode openSqliteAudit} to also import older files.
   */
  constructor(path: string, options: SqliteAuditOptions = {}) {
    this.#db = openDatabase(path, {
      synchronous: "NORMAL",
      incrementalVacuum: true,
      what: "the audit",
    });
    this.#db.exec("pragma journal_size_limit = 16777216");
    this.#db.exec(SCHEMA);
    this.#insert = insertStatements(this.#db);
    this.#retainMs = (options.retainDays ?? 30) * DAY_MS;
    this.#retainBytes = (options.retainMB ?? 1024) * 1024 * 1024;
    this.#chunk = options.retentionChunk ?? 20_000;
    this.#every = options.retentionEveryMs ?? 60_000;
    this.#now = options.now ?? Date.now;
  }

  write(batch: AuditBatch): Promise<void> {
    try {
      transaction(this.#db, () => {
        for (const r of batch.requests) this.#insert.requests.run(...requestValues(r));
        for (const p of batch.pods) this.#insert.pods.run(...podValues(p));
      });
      if (this.#now() >= this.#nextRetention) this.retain();
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  query(kind: AuditKind, q: AuditQuery): Promise<(RequestRow | PodRow)[]> {
    try {
      const { sql, args } = querySql(kind, q);
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
    const { sql, args } = querySql(kind, q);
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
    // Each step of the pragma frees one page: step it to the end.
    if (deleted > 0) this.#db.prepare("pragma incremental_vacuum").all();
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
      importJsonLines(backend.db, dir);
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
function importJsonLines(db: DatabaseSync, dir: string): void {
  const files = jsonLinesFiles(dir);
  if (!files.length) return;
  const done = db.prepare("select value from meta where name = 'jsonl_imported_at'").get();
  if (!done) {
    const texts = files.map(([, name]) => Deno.readTextFileSync(`${dir}/${name}`));
    const insert = insertStatements(db);
    let count = 0;
    let skipped = 0;
    transaction(db, () => {
      files.forEach(([kind], i) => {
        for (const line of texts[i].split("\n")) {
          if (!line) continue;
          try {
            const row = JSON.parse(line);
            if (kind === "requests") insert.requests.run(...requestValues(row));
            else insert.pods.run(...podValues(row));
            count++;
          } catch {
            skipped++; // cut short by a crash, or not a row
          }
        }
      });
      db.prepare("insert into meta (name, value) values ('jsonl_imported_at', ?)").run(Date.now());
    });
    logger("audit").info(
      "Imported {count} audit row(s) from JSON lines in {dir} ({skipped} unreadable); the old files are kept as *.migrated",
      { count, skipped, dir },
    );
  }
  for (const [, name] of files) Deno.renameSync(`${dir}/${name}`, `${dir}/${name}.migrated`);
}
