/**
 * The embedded `MetaStore` on SQLite (`node:sqlite`): the default store of
 * `RUN_SERVICE=All` and of a `StateSvc` without etcd. Table `kv` holds the
 * current value of each key, table `history` one row per revision (the
 * change made at it) for watches that start in the past, and table `meta`
 * the global revision. Every write is one transaction, committed with
 * `synchronous=FULL` in WAL mode before the call returns; the newest
 * `historyLimit` changes are kept, older ones are compacted away.
 *
 * A data directory written by the store that came before (`snapshot.json` +
 * `wal.log`) is migrated into the database on first open, in the same
 * transaction that marks it done; the old files are then renamed with a
 * `.migrated` suffix and kept.
 *
 * @module
 */
import { dirname } from "node:path";
import { AlreadyExistsError, ConflictError, InferxError, NotFoundError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import { type DatabaseSync, openDatabase, transaction } from "../common/sqlite.ts";
import { LEGACY_FILES, readLegacyStore } from "./_legacy.ts";
import {
  CompactedError,
  type KeyValue,
  type ListResult,
  type MetaStore,
  type Watch,
  type WatchEvent,
  type WatchOptions,
} from "./types.ts";

/** Options for {@linkcode openSqliteStore}. */
export interface SqliteStoreOptions {
  /** Changes kept for watches that start in the past. @default 10000 */
  historyLimit?: number;
  /**
   * Directory of a legacy store (`snapshot.json` + `wal.log`) to migrate on
   * first open. @default the database file's directory
   */
  legacyDir?: string;
}

const SCHEMA_VERSION = 1;

const SCHEMA = `
  create table if not exists meta (
    name text primary key,
    value integer not null
  ) without rowid;
  create table if not exists kv (
    key text primary key,
    value text not null,
    revision integer not null,
    create_revision integer not null
  ) without rowid;
  create table if not exists history (
    revision integer primary key,
    key text not null,
    value text,
    create_revision integer
  );
  pragma user_version = ${SCHEMA_VERSION};
`;

interface Watcher {
  prefix: string;
  after: number;
  options: WatchOptions;
  queue: WatchEvent[];
  scheduled: boolean;
  cancelled: boolean;
}

type Row = Record<string, string | number | null>;

/** The smallest string above every string that starts with `prefix`, if there is a simple one. */
function prefixEnd(prefix: string): string | undefined {
  if (!prefix) return undefined;
  const last = prefix.charCodeAt(prefix.length - 1);
  // Surrogates and U+FFFF have no successor that keeps UTF-8 order: scan to the end instead.
  if (last >= 0xd800 && last <= 0xdfff || last === 0xffff) return undefined;
  return prefix.slice(0, -1) + String.fromCharCode(last + 1);
}

const eventRevision = (ev: WatchEvent) => ev.type === "put" ? ev.kv.revision : ev.revision;
const eventKey = (ev: WatchEvent) => ev.type === "put" ? ev.kv.key : ev.key;

/**
 * Opens (or creates) the store in the database file at `path`, or in memory
 * (`:memory:`, the default: nothing survives `close()`).
 *
 * @example
 * ```ts
 * const store = await openSqliteStore("./data/store/meta.db");
 * const rev = await store.create("/registry/tenant/system/system/t1", "{}");
 * ```
 */
export async function openSqliteStore(
  path = ":memory:",
  options: SqliteStoreOptions = {},
): Promise<MetaStore> {
  if (path !== ":memory:") await Deno.mkdir(dirname(path), { recursive: true });
  const db = openDatabase(path, { what: "the store" });
  try {
    db.exec(SCHEMA);
    const legacyDir = options.legacyDir ?? (path === ":memory:" ? undefined : dirname(path));
    if (legacyDir) await migrateLegacy(db, legacyDir);
    return new SqliteStore(db, options.historyLimit ?? 10_000);
  } catch (err) {
    db.close();
    if (err instanceof InferxError) throw err;
    // SQLite's own words ("database disk image is malformed") name no file: this one does.
    throw new InferxError(
      "unavailable",
      `Cannot open the store at ${path}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

function metaValue(db: DatabaseSync, name: string): number | undefined {
  const row = db.prepare("select value from meta where name = ?").get(name) as Row | undefined;
  return row === undefined ? undefined : Number(row.value);
}

/** Imports a legacy store directory once, then renames its files out of the way. */
async function migrateLegacy(db: DatabaseSync, dir: string): Promise<void> {
  const log = logger("store");
  if (metaValue(db, "migrated_at") === undefined) {
    const legacy = await readLegacyStore(dir);
    if (!legacy) return;
    if ((metaValue(db, "revision") ?? 0) !== 0) {
      log.warn(
        "Not migrating the old store files in {dir}: the database already has data; they stay as they are",
        { dir },
      );
      return;
    }
    transaction(db, () => {
      const put = db.prepare(
        "insert into kv (key, value, revision, create_revision) values (?, ?, ?, ?)",
      );
      for (const kv of legacy.items) put.run(kv.key, kv.value, kv.revision, kv.createRevision);
      const set = db.prepare("insert or replace into meta (name, value) values (?, ?)");
      set.run("revision", legacy.revision);
      set.run("migrated_at", Date.now());
    });
    log.info(
      "Migrated the store in {dir} to SQLite: {count} key(s) at revision {revision}; the old files are kept as *.migrated",
      { dir, count: legacy.items.length, revision: legacy.revision },
    );
  }
  // Also after a crash between the commit above and these renames.
  for (const f of LEGACY_FILES) {
    await Deno.rename(`${dir}/${f}`, `${dir}/${f}.migrated`).catch((err) => {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    });
  }
}

/** The statements the store runs, prepared once. */
function statements(db: DatabaseSync) {
  return {
    get: db.prepare("select key, value, revision, create_revision from kv where key = ?"),
    listRange: db.prepare(
      "select key, value, revision, create_revision from kv where key >= ? and key < ? order by key",
    ),
    listFrom: db.prepare(
      "select key, value, revision, create_revision from kv where key >= ? order by key",
    ),
    insert: db.prepare(
      "insert into kv (key, value, revision, create_revision) values (?, ?, ?, ?)",
    ),
    update: db.prepare("update kv set value = ?, revision = ? where key = ?"),
    delete: db.prepare("delete from kv where key = ?"),
    record: db.prepare(
      "insert into history (revision, key, value, create_revision) values (?, ?, ?, ?)",
    ),
    setRevision: db.prepare("insert or replace into meta (name, value) values ('revision', ?)"),
    compact: db.prepare("delete from history where revision <= ?"),
    replayRange: db.prepare(
      "select revision, key, value, create_revision from history where revision > ? and key >= ? and key < ? order by revision",
    ),
    replayFrom: db.prepare(
      "select revision, key, value, create_revision from history where revision > ? and key >= ? order by revision",
    ),
  };
}

class SqliteStore implements MetaStore {
  #db: DatabaseSync;
  #rev: number;
  /** Changes at or below this revision are no longer in `history`. */
  #compacted: number;
  #historyLimit: number;
  #watchers = new Set<Watcher>();
  #closed = false;
  #q: ReturnType<typeof statements>;

  constructor(db: DatabaseSync, historyLimit: number) {
    this.#db = db;
    this.#historyLimit = historyLimit;
    this.#rev = metaValue(db, "revision") ?? 0;
    const oldest = db.prepare("select min(revision) as r from history").get() as Row;
    this.#compacted = oldest.r === null ? this.#rev : Number(oldest.r) - 1;
    this.#q = statements(db);
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new InferxError("unavailable", "Cannot use the embedded store: it is closed");
    }
  }

  revision(): Promise<number> {
    return Promise.resolve(this.#rev);
  }

  get(key: string): Promise<KeyValue | undefined> {
    try {
      this.#checkOpen();
      const row = this.#q.get.get(key) as Row | undefined;
      return Promise.resolve(row && toKv(row));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  list(prefix: string): Promise<ListResult> {
    try {
      this.#checkOpen();
      const end = prefixEnd(prefix);
      const rows = (end === undefined
        ? this.#q.listFrom.all(prefix)
        : this.#q.listRange.all(prefix, end)) as Row[];
      const items: KeyValue[] = [];
      for (const row of rows) {
        const kv = toKv(row);
        if (end === undefined && !kv.key.startsWith(prefix)) {
          break;
        }
        items.push(kv);
      }
      return Promise.resolve({ items, revision: this.#rev });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  create(key: string, value: string): Promise<number> {
    return this.#write(() => {
      if (this.#q.get.get(key)) {
        throw new AlreadyExistsError(`Cannot create ${key}: it already exists`);
      }
      const rev = this.#rev + 1;
      this.#q.insert.run(key, value, rev, rev);
      return { type: "put", kv: { key, value, revision: rev, createRevision: rev } };
    });
  }

  update(key: string, value: string, expectedRevision: number): Promise<number> {
    return this.#write(() => {
      const cur = this.#current("update", key, expectedRevision);
      const rev = this.#rev + 1;
      this.#q.update.run(value, rev, key);
      return {
        type: "put",
        kv: { key, value, revision: rev, createRevision: cur.createRevision },
      };
    });
  }

  delete(key: string, expectedRevision?: number): Promise<number> {
    return this.#write(() => {
      this.#current("delete", key, expectedRevision);
      this.#q.delete.run(key);
      return { type: "delete", key, revision: this.#rev + 1 };
    });
  }

  /** The current value of `key`, checked against `expected` when given. */
  #current(verb: string, key: string, expected: number | undefined): KeyValue {
    const row = this.#q.get.get(key) as Row | undefined;
    if (!row) throw new NotFoundError(`Cannot ${verb} ${key}: it does not exist`);
    const cur = toKv(row);
    if (expected !== undefined && cur.revision !== expected) {
      throw new ConflictError(
        `Cannot ${verb} ${key}: revision is ${cur.revision}, not ${expected}`,
        { revision: cur.revision },
      );
    }
    return cur;
  }

  /**
   * Runs one change at the next revision in one transaction (the change, its
   * history row, the new revision, the compaction of the oldest history),
   * then tells the watchers.
   */
  #write(change: () => WatchEvent): Promise<number> {
    let ev: WatchEvent;
    try {
      this.#checkOpen();
      const rev = this.#rev + 1;
      const compactTo = rev - this.#historyLimit;
      ev = transaction(this.#db, () => {
        const e = change();
        if (e.type === "put") {
          this.#q.record.run(rev, e.kv.key, e.kv.value, e.kv.createRevision);
        } else this.#q.record.run(rev, e.key, null, null);
        this.#q.setRevision.run(rev);
        if (compactTo > this.#compacted) this.#q.compact.run(compactTo);
        return e;
      });
      this.#rev = rev;
      if (compactTo > this.#compacted) this.#compacted = compactTo;
    } catch (err) {
      if (err instanceof InferxError) return Promise.reject(err);
      return Promise.reject(
        new InferxError(
          "unavailable",
          `Cannot write to the embedded store: ${(err as Error).message}`,
          {
            cause: err,
            retryable: true,
          },
        ),
      );
    }
    const key = eventKey(ev);
    for (const w of this.#watchers) if (key.startsWith(w.prefix)) this.#deliver(w, ev);
    return Promise.resolve(this.#rev);
  }

  /** Queues `ev` for `w`; a microtask hands the queue over in revision order. */
  #deliver(w: Watcher, ev: WatchEvent): void {
    if (eventRevision(ev) <= w.after) return;
    w.queue.push(ev);
    if (w.scheduled) return;
    w.scheduled = true;
    queueMicrotask(() => {
      w.scheduled = false;
      const batch = w.queue;
      w.queue = [];
      for (const e of batch) {
        if (w.cancelled) return;
        try {
          w.options.onEvent(e);
        } catch (err) {
          // A watcher that cannot take an event ends; its owner lists again.
          this.#end(w);
          w.options.onError?.(err instanceof Error ? err : new Error(String(err)));
          return;
        }
      }
    });
  }

  #end(w: Watcher): void {
    w.cancelled = true;
    this.#watchers.delete(w);
  }

  watch(prefix: string, options: WatchOptions): Watch {
    this.#checkOpen();
    const after = options.afterRevision ?? this.#rev;
    const w: Watcher = { prefix, after, options, queue: [], scheduled: false, cancelled: false };
    if (after < this.#compacted) {
      const err = new CompactedError(after, this.#compacted);
      queueMicrotask(() => options.onError?.(err));
      return { cancel() {} };
    }
    if (after < this.#rev) {
      // Replayed and registered in one synchronous step: no write can fall between.
      const end = prefixEnd(prefix);
      const rows = (end === undefined
        ? this.#q.replayFrom.all(after, prefix)
        : this.#q.replayRange.all(after, prefix, end)) as Row[];
      for (const row of rows) {
        const key = String(row.key);
        if (!key.startsWith(prefix)) {
          continue;
        }
        const revision = Number(row.revision);
        this.#deliver(
          w,
          row.value === null ? { type: "delete", key, revision } : {
            type: "put",
            kv: {
              key,
              value: String(row.value),
              revision,
              createRevision: Number(row.create_revision),
            },
          },
        );
      }
    }
    this.#watchers.add(w);
    return { cancel: () => this.#end(w) };
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    for (const w of this.#watchers) w.cancelled = true;
    this.#watchers.clear();
    this.#db.close();
    return Promise.resolve();
  }
}

function toKv(row: Row): KeyValue {
  return {
    key: String(row.key),
    value: String(row.value),
    revision: Number(row.revision),
    createRevision: Number(row.create_revision),
  };
}
