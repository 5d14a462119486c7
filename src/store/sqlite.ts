/**
 * The embedded `MetaStore` on SQLite (`node:sqlite`): the default store of
 * `RUN_SERVICE=All` and of a `StateSvc` without etcd. Table `kv` holds the
 * current value of each key, table `history` one row per revision (the
 * change made at it) for watches that start in the past, and table `meta`
 * the global revision. Every write is one transaction, committed with
 * `synchronous=FULL` in WAL mode before the call returns; the newest
 * `historyLimit` changes are kept, and no more of them than
 * `historyMaxBytes` of values (each change holds the whole value it wrote, as
 * in etcd): older ones are compacted away, and the pages they held given back
 * to the file system. A file that is not this store's (another program's
 * database, another schema) is refused before anything is written to it.
 * Keys and values cannot hold U+0000 (SQLite's text ends there): refused.
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
import { nextTurn } from "../common/clock.ts";
import { privateDir } from "../common/private_dir.ts";

const log = logger("store");

/** Options for {@linkcode openSqliteStore}. */
export interface SqliteStoreOptions {
  /** Changes kept for watches that start in the past. @default 10000 */
  historyLimit?: number;
  /**
   * The most the kept changes' values may add up to (characters, about
   * bytes): the oldest go first past it. @default 64 MiB
   */
  historyMaxBytes?: number;
  /**
   * Directory of a legacy store (`snapshot.json` + `wal.log`) to migrate on
   * first open. @default the database file's directory
   */
  legacyDir?: string;
}

/**
 * The store's schema version (`pragma user_version`). Raised whenever a
 * release writes records an older release would misread, so that the older
 * one refuses the store instead of losing data (releases since version 1
 * refuse any version but their own). 2: a queued call's large request body
 * and a finished call's large answer in records of their own, objects'
 * `created_at`, tenants' `max_api_keys`. A store of an older version this
 * release reads ({@linkcode OLDEST_VERSION}) is marked with this one at open.
 */
const SCHEMA_VERSION = 2;
/** The oldest schema version this release reads (and marks as its own). */
const OLDEST_VERSION = 1;

/** The most free pages one pass gives back (4 MiB of 4 KiB pages: tens of ms). */
export const VACUUM_PAGES = 1024;

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
  if (path !== ":memory:") privateDir(dirname(path));
  const db = openDatabase(path, { what: "the store", incrementalVacuum: true, check: checkOurs });
  try {
    checkWhole(db);
    // A new store's tables and version in one transaction: none is left without the other.
    const fresh = Number((db.prepare("pragma user_version").get() as Row).user_version) === 0;
    if (fresh) db.exec(`begin; ${SCHEMA}; pragma user_version = ${SCHEMA_VERSION}; commit;`);
    else db.exec(SCHEMA);
    // A store made before pages were given back: converted once (the file is rewritten).
    if ((db.prepare("pragma auto_vacuum").get() as Row).auto_vacuum !== 2) {
      const size = path === ":memory:" ? 0 : Deno.statSync(path).size;
      log.info(
        "Converting the store at {path} ({mb} MB) so that it gives pages back: once, a rewrite " +
          "of the whole file that takes as much room again while it runs",
        { path, mb: (size / 1e6).toFixed(1) },
      );
      db.exec("pragma auto_vacuum = incremental; vacuum");
    }
    const legacyDir = options.legacyDir ?? (path === ":memory:" ? undefined : dirname(path));
    if (legacyDir) await migrateLegacy(db, legacyDir);
    // An older store is marked this release's once all of the above went through: one whose
    // open failed half-way stays readable by the release it came from.
    db.exec(`pragma user_version = ${SCHEMA_VERSION}`);
    return new SqliteStore(
      db,
      options.historyLimit ?? 10_000,
      options.historyMaxBytes ?? 64 * 1024 * 1024,
    );
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

const TABLES = ["history", "kv", "meta"];

/**
 * Refuses a database that is not an empty one or this store's (its tables and
 * schema version), before anything is written to it.
 */
function checkOurs(db: DatabaseSync): void {
  const tables = (db.prepare(
    "select name from sqlite_schema where type = 'table' order by name",
  ).all() as Row[]).map((r) => String(r.name));
  if (tables.length === 0) return;
  const version = Number((db.prepare("pragma user_version").get() as Row).user_version);
  if (tables.join() === TABLES.join() && version > SCHEMA_VERSION) {
    throw new InferxError(
      "unavailable",
      `it was written by a newer release of the platform (schema version ${version}; this ` +
        `release reads ${OLDEST_VERSION} to ${SCHEMA_VERSION}); it was left as it is: run that ` +
        `release or a newer one on it`,
    );
  }
  if (version < OLDEST_VERSION || tables.join() !== TABLES.join()) {
    throw new InferxError(
      "unavailable",
      `it is not this platform's store (tables: ${tables.join(", ")}; schema version ${version}, ` +
        `not ${OLDEST_VERSION} to ${SCHEMA_VERSION}); it was left as it is: move it away, or ` +
        `name another data directory`,
    );
  }
}

/**
 * Refuses a file SQLite finds damaged (`pragma quick_check`: every page of
 * every table read, about 0.1 s for 50 MB), so that a damaged page is found
 * at open, naming the file, rather than by a query later on, with SQLite's
 * words alone, which stopped a role at start after it had begun to serve.
 * The store is bounded (its history by `historyMaxBytes`): the audit, which
 * is not, is not read whole this way.
 */
function checkWhole(db: DatabaseSync): void {
  const found = (db.prepare("pragma quick_check(3)").all() as Row[])
    .map((r) => String(r.quick_check)).filter((x) => x !== "ok");
  if (!found.length) return;
  // Not an InferxError: the open's own error wraps it with the file's path.
  throw new Error(
    `it is damaged (SQLite's check: ${found.join("\n").split(/\s*\n\s*/).join("; ")}); ` +
      `it was left as it is: put back a copy of it, or move it away to start with an empty store`,
  );
}

function metaValue(db: DatabaseSync, name: string): number | undefined {
  const row = db.prepare("select value from meta where name = ?").get(name) as Row | undefined;
  return row === undefined ? undefined : Number(row.value);
}

/** Imports a legacy store directory once, then renames its files out of the way. */
async function migrateLegacy(db: DatabaseSync, dir: string): Promise<void> {
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

/** Keys {@linkcode SqliteStore.deleteKeys} deletes in one transaction. */
const DELETE_CHUNK = 500;

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
    historySizes: db.prepare(
      "select revision, coalesce(length(value), 0) as n from history where revision > ? order by revision",
    ),
    freePages: db.prepare("pragma freelist_count"),
    vacuum: db.prepare(`pragma incremental_vacuum(${VACUUM_PAGES})`),
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
  #historyMaxBytes: number;
  /** What the kept changes' values add up to (characters). */
  #historyBytes: number;
  #writesSinceVacuum = 0;
  #watchers = new Set<Watcher>();
  #closed = false;
  #q: ReturnType<typeof statements>;

  constructor(db: DatabaseSync, historyLimit: number, historyMaxBytes: number) {
    this.#db = db;
    this.#historyLimit = historyLimit;
    this.#historyMaxBytes = historyMaxBytes;
    this.#historyBytes = Number(
      (db.prepare("select coalesce(sum(length(value)), 0) as n from history").get() as Row).n,
    );
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
    return this.#write((rev) => {
      if (this.#q.get.get(key)) {
        throw new AlreadyExistsError(`Cannot create ${key}: it already exists`);
      }
      this.#q.insert.run(key, value, rev, rev);
      return [{ type: "put", kv: { key, value, revision: rev, createRevision: rev } }];
    });
  }

  update(key: string, value: string, expectedRevision: number): Promise<number> {
    return this.#write((rev) => {
      const cur = this.#current("update", key, expectedRevision);
      this.#q.update.run(value, rev, key);
      return [{
        type: "put",
        kv: { key, value, revision: rev, createRevision: cur.createRevision },
      }];
    });
  }

  delete(key: string, expectedRevision?: number): Promise<number> {
    return this.#write((rev) => {
      this.#current("delete", key, expectedRevision);
      this.#q.delete.run(key);
      return [{ type: "delete", key, revision: rev }];
    });
  }

  async deleteKeys(keys: readonly string[]): Promise<number> {
    // A transaction (one sync to disk) per chunk, and the event loop let go between chunks:
    // a namespace's tens of thousands of calls go in a second or two, other work going on.
    for (let i = 0; i < keys.length; i += DELETE_CHUNK) {
      if (i > 0) await nextTurn();
      const chunk = keys.slice(i, i + DELETE_CHUNK);
      await this.#write((rev) => {
        const events: WatchEvent[] = [];
        for (const key of chunk) {
          if (!this.#q.get.get(key)) continue;
          this.#q.delete.run(key);
          events.push({ type: "delete", key, revision: rev + events.length });
        }
        return events;
      });
    }
    return this.#rev;
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
   * Runs changes in one transaction (the changes, a revision and a history
   * row each, the new revision, the compaction of the oldest history), then
   * tells the watchers. `change` gets the revision of its first change, and
   * numbers the others on from it.
   */
  #write(change: (rev: number) => WatchEvent[]): Promise<number> {
    let evs: WatchEvent[];
    try {
      this.#checkOpen();
      let rev = this.#rev;
      let compactTo = 0;
      let bytes = this.#historyBytes;
      evs = transaction(this.#db, () => {
        const es = change(this.#rev + 1);
        for (const e of es) {
          rev = eventRevision(e);
          checkText(eventKey(e), e.type === "put" ? e.kv.value : "");
          if (e.type === "put") {
            this.#q.record.run(rev, e.kv.key, e.kv.value, e.kv.createRevision);
            bytes += e.kv.value.length;
          } else this.#q.record.run(rev, e.key, null, null);
        }
        if (!es.length) return es;
        compactTo = rev - this.#historyLimit;
        this.#q.setRevision.run(rev);
        if (compactTo > this.#compacted) {
          for (const r of this.#q.historySizes.iterate(this.#compacted) as Iterable<Row>) {
            if (Number(r.revision) > compactTo) break;
            bytes -= Number(r.n);
          }
        }
        if (bytes > this.#historyMaxBytes) {
          // Past the byte budget: the oldest go until a quarter of it is free (not every write
          // then compacts); the change just made stays.
          for (const r of this.#q.historySizes.iterate(this.#compacted) as Iterable<Row>) {
            const at = Number(r.revision);
            if (at >= rev || bytes <= this.#historyMaxBytes * 0.75) break;
            if (at > compactTo) (bytes -= Number(r.n), compactTo = at);
          }
        }
        if (compactTo > this.#compacted) this.#q.compact.run(compactTo);
        return es;
      });
      this.#rev = rev;
      this.#historyBytes = bytes;
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
    for (const ev of evs) {
      const key = eventKey(ev);
      for (const w of this.#watchers) if (key.startsWith(w.prefix)) this.#deliver(w, ev);
    }
    this.#giveBackPages();
    return Promise.resolve(this.#rev);
  }

  /**
   * Every 256 writes, gives the file's free pages back when there are more
   * than 256 of them, at most {@linkcode VACUUM_PAGES} at a time (a store of
   * an old release, with hundreds of MB of history to give back, held the
   * process 8.5 s in one pass). After a write's commit, and apart from it:
   * the write stands whatever this does (on a full disk it fails, and is
   * tried again 256 writes later).
   */
  #giveBackPages(): void {
    if (++this.#writesSinceVacuum < 256) return;
    this.#writesSinceVacuum = 0;
    try {
      if (Number((this.#q.freePages.get() as Row).freelist_count) > 256) this.#q.vacuum.all();
    } catch (err) {
      log.warn("Cannot give the store's free pages back: {error}", { error: String(err) });
    }
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

/** Refuses U+0000 in a key or value: SQLite's text ends there, so it would come back cut. */
function checkText(key: string, value: string): void {
  if (key.includes("\0") || value.includes("\0")) {
    throw new InferxError(
      "invalid",
      `Cannot store ${
        JSON.stringify(key)
      }: the embedded store cannot hold U+0000 in a key or value`,
    );
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
