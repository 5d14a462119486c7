/**
 * The embedded `MetaStore` on SQLite (`node:sqlite`): the default store of
 * `RUN_SERVICE=All` and of a `StateSvc` without etcd. Table `kv` holds the
 * current value of each key, table `history` one row per revision (the
 * change made at it) for watches that start in the past, and table `meta`
 * the global revision. Every write is one transaction in WAL mode, and the
 * call returns (and watchers hear of it) once the log is synced, off the
 * event loop, writes made together sharing a sync (see `#synced`); the newest
 * `historyLimit` changes are kept, and no more of them than
 * `historyMaxBytes` of values (each change holds the whole value it wrote, as
 * in etcd): older ones are compacted away, and the pages they held given back
 * to the file system. A file that is not this store's (another program's
 * database, another schema) is refused before anything is written to it.
 * Keys and values cannot hold U+0000 (SQLite's text ends there): refused.
 *
 * A value of {@linkcode FILE_VALUE_CHARS} characters or more (an
 * asynchronous call's large body, say) is written to a file of its own in
 * `<path>-blobs/`, synced, off the event loop, and the tables hold its
 * name: SQLite writes such a value page by page on the event loop, twice
 * (its key and its change), about 30 ms for 1.4 MB, which held every other
 * request that long. Writes still commit in the order they were made (one
 * made while such a file is written waits for it); a file goes once neither
 * the key's current value nor a kept change names it, and files a crash
 * left unnamed go at the next open.
 *
 * A data directory written by the store that came before (`snapshot.json` +
 * `wal.log`) is migrated into the database on first open, in the same
 * transaction that marks it done; the old files are then renamed with a
 * `.migrated` suffix and kept.
 *
 * @module
 */
import { basename, dirname } from "node:path";
import { AlreadyExistsError, ConflictError, InferxError, NotFoundError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import {
  type DatabaseSync,
  openDatabase,
  type StatementSync,
  transaction,
  writeTrouble,
} from "../common/sqlite.ts";
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
  /**
   * Keys whose superseded changes are not kept: a change to one drops its
   * earlier ones from the history at once (with their files), so that what
   * a key held is gone from the store once the key is (an asynchronous
   * call's body, say, rather than kept with the history for hours). A watch
   * that starts in the past sees such a key's newest change only.
   * @default none
   */
  privatePrefixes?: readonly string[];
}

/**
 * The store's schema version (`pragma user_version`). Raised whenever a
 * release writes records an older release would misread, so that the older
 * one refuses the store instead of losing data (releases since version 1
 * refuse any version but their own). 2: a queued call's large request body
 * and a finished call's large answer in records of their own, objects'
 * `created_at`, tenants' `max_api_keys`. 3: large values in files of their
 * own (`history.size`). 4: a value file's reference says its length in
 * bytes (a file cut short is refused at open). A store of an older version this
 * release reads ({@linkcode OLDEST_VERSION}) is marked with this one at open.
 */
const SCHEMA_VERSION = 4;
/** The oldest schema version this release reads (and marks as its own). */
const OLDEST_VERSION = 1;

/** Values of this many characters or more are kept in files of their own. */
export const FILE_VALUE_CHARS = 64 * 1024;
/** What a stored value kept in a file starts with, followed by the file's name. */
const FILE_MARK = "\u0001";
const FILE_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const isFileRef = (stored: unknown): stored is string =>
  typeof stored === "string" && stored.startsWith(FILE_MARK);

/**
 * A value file's reference: `FILE_MARK` and its name, then `#` and its
 * length in bytes (schema version 4; those of version 3 name it alone).
 */
function fileRef(ref: string): { name: string; bytes?: number } {
  const [name, bytes] = ref.slice(FILE_MARK.length).split("#");
  return { name, bytes: bytes === undefined ? undefined : Number(bytes) };
}

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
    create_revision integer,
    size integer
  );
  create index if not exists history_key on history (key, revision);
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
  // The store syncs its log itself, off the event loop, after commits (see #synced); SQLite
  // syncs it before checkpoints and the database after them, which keeps the file whole.
  const db = openDatabase(path, {
    what: "the store",
    incrementalVacuum: true,
    check: checkOurs,
    synchronous: "NORMAL",
    companions: path === ":memory:" ? [] : [`${path}-blobs`],
  });
  try {
    // What is deleted is overwritten, not left in free pages for the file to hold (a call's
    // body, its answer): a delete writes the pages it frees.
    db.exec("pragma secure_delete = on");
    checkWhole(db);
    // A new store's tables and version in one transaction: none is left without the other.
    const fresh = Number((db.prepare("pragma user_version").get() as Row).user_version) === 0;
    if (fresh) db.exec(`begin; ${SCHEMA}; pragma user_version = ${SCHEMA_VERSION}; commit;`);
    else db.exec(SCHEMA);
    // A store of schema version 2 or older: changes get their value's size (null: the value
    // itself is in the row). Older releases name their columns, so the column bothers none.
    const columns = (db.prepare("pragma table_info(history)").all() as Row[]).map((r) => r.name);
    if (!columns.includes("size")) db.exec("alter table history add column size integer");
    // Private keys' earlier changes an earlier release kept (it kept every change) go now,
    // before the files no row names any longer go with the others.
    settleHistory(db, options.privatePrefixes ?? []);
    const files = path === ":memory:" ? undefined : `${path}-blobs`;
    if (files) checkFiles(db, files);
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
      path,
      options.privatePrefixes ?? [],
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

/**
 * Where the history begins, written down (meta `compacted`, with the revision it was written at,
 * `compacted_at`, to tell it stale once an earlier release, which keeps no such row, has written
 * since): a private key's changes going (see {@linkcode SqliteStoreOptions.privatePrefixes})
 * leave gaps, and the oldest change kept no longer tells it. Then the changes of keys under
 * `prefixes` that a later change of the same key superseded go, as {@linkcode SqliteStore} drops
 * them at each write of such a key: those a store opened without them (an earlier release) kept.
 */
function settleHistory(db: DatabaseSync, prefixes: readonly string[]): void {
  const forget = db.prepare(
    "delete from history where key >= ?1 and substr(key, 1, length(?1)) = ?1 and revision < " +
      "(select max(h.revision) from history h where h.key = history.key)",
  );
  transaction(db, () => {
    const rev = metaValue(db, "revision") ?? 0;
    if (metaValue(db, "compacted_at") !== rev) {
      const oldest = (db.prepare("select min(revision) as r from history").get() as Row).r;
      db.prepare(
        "insert or replace into meta (name, value) values ('compacted', ?), ('compacted_at', ?)",
      ).run(oldest === null ? rev : Number(oldest) - 1, rev);
    }
    for (const prefix of prefixes) forget.run(prefix);
  });
}

/**
 * Makes the directory of values kept in files, refuses a store whose tables
 * name a file that is not there (damaged, as a page would be: a copy of the
 * data directory made without it?), and removes the files no value names
 * (a crash between writing one and committing its name, or between a
 * commit and the removal of the file it let go).
 */
function checkFiles(db: DatabaseSync, dir: string): void {
  privateDir(dir);
  const named = new Map<string, { key: string; bytes?: number }>();
  for (
    const r of db.prepare(
      "select key, value from kv where substr(value, 1, 1) = char(1) " +
        "union all select key, value from history where size is not null",
    ).iterate() as Iterable<Row>
  ) {
    const { name, bytes } = fileRef(String(r.value));
    named.set(name, { key: String(r.key), bytes });
  }
  const found = new Set<string>();
  const damaged = (what: string, name: string, key: string) =>
    new Error(
      `it is damaged (${what} ${basename(dir)}/, the first of ${key}: ${name}); it was left as ` +
        `it is: put back a copy of the whole store directory, or move it away to start with an ` +
        `empty store`,
    );
  for (const e of Deno.readDirSync(dir)) {
    if (!e.isFile || !FILE_NAME.test(e.name)) continue;
    const ref = named.get(e.name);
    if (!ref) {
      Deno.removeSync(`${dir}/${e.name}`);
      continue;
    }
    found.add(e.name);
    // A file cut short (or grown): its length is in its reference.
    if (ref.bytes !== undefined && Deno.statSync(`${dir}/${e.name}`).size !== ref.bytes) {
      throw damaged("a value file cut short, or grown, in", e.name, ref.key);
    }
  }
  const missing = [...named].filter(([name]) => !found.has(name));
  if (missing.length) {
    throw damaged(`${missing.length} value file(s) missing from`, missing[0][0], missing[0][1].key);
  }
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
    keysRange: db.prepare("select key from kv where key >= ? and key < ? order by key"),
    keysFrom: db.prepare("select key from kv where key >= ? order by key"),
    insert: db.prepare(
      "insert into kv (key, value, revision, create_revision) values (?, ?, ?, ?)",
    ),
    update: db.prepare("update kv set value = ?, revision = ? where key = ?"),
    delete: db.prepare("delete from kv where key = ?"),
    /**
     * A change, and what it counts toward the history's bytes: its value's UTF-8 bytes, as SQLite
     * counts them (not JavaScript's UTF-16 units: they are taken off again as SQLite counts them),
     * or its file's (`size`).
     */
    record: db.prepare(
      "insert into history (revision, key, value, create_revision, size) values (?, ?, ?, ?, ?) " +
        "returning coalesce(size, octet_length(value), 0) as n",
    ),
    /** The revision, and where the history begins (see {@linkcode settleHistory}). */
    setRevision: db.prepare(
      "insert or replace into meta (name, value) values " +
        "('revision', ?1), ('compacted', ?2), ('compacted_at', ?1)",
    ),
    compact: db.prepare("delete from history where revision <= ?"),
    historySizes: db.prepare(
      "select revision, coalesce(size, octet_length(value), 0) as n from history where revision > ? order by revision",
    ),
    superseded: db.prepare(
      "select value, coalesce(size, octet_length(value), 0) as n from history where key = ? and revision < ?",
    ),
    forget: db.prepare("delete from history where key = ? and revision < ?"),
    filesUpTo: db.prepare(
      "select key, value from history where revision > ? and revision <= ? and size is not null",
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
  /** Where values of `FILE_VALUE_CHARS` or more go (none in memory: they stay in the rows). */
  #files: string | undefined;
  /** Writes made and not yet committed because one before them waits for its file. */
  #waiting = 0;
  /** The last of those writes (settled: none waits). */
  #tail: Promise<unknown> = Promise.resolve();
  /** The database's write-ahead log, synced after commits (none in memory). */
  #wal: string | undefined;
  #walFile: Deno.FsFile | undefined;
  /** Commits waiting for the next sync of the log. */
  #unsynced: PromiseWithResolvers<void>[] = [];
  /** The loop of syncs, while one runs. */
  #syncing: Promise<void> | undefined;
  /** Why the store takes no more writes: a sync failed. */
  #broken: InferxError | undefined;
  /** Removals of files under way (a close waits for them). */
  #removals = new Set<Promise<void>>();
  /** The revision up to which the log is on disk. */
  #syncedRev: number;
  /** A close under way. */
  #closing: Promise<void> | undefined;
  /** Syncs of the log made (commits made together share one). */
  syncs = 0;
  /** The database file (`:memory:` for none). */
  #path: string;
  /** See {@linkcode SqliteStoreOptions.privatePrefixes}. */
  #private: readonly string[];

  constructor(
    db: DatabaseSync,
    historyLimit: number,
    historyMaxBytes: number,
    path: string,
    privatePrefixes: readonly string[],
  ) {
    this.#db = db;
    this.#private = privatePrefixes;
    this.#path = path;
    this.#files = path === ":memory:" ? undefined : `${path}-blobs`;
    this.#wal = path === ":memory:" ? undefined : `${path}-wal`;
    this.#historyLimit = historyLimit;
    this.#historyMaxBytes = historyMaxBytes;
    this.#historyBytes = Number(
      (db.prepare("select coalesce(sum(coalesce(size, octet_length(value))), 0) as n from history")
        .get() as Row).n,
    );
    this.#rev = metaValue(db, "revision") ?? 0;
    this.#syncedRev = this.#rev;
    // Where the history begins, as written down at open (settleHistory) and at each write; one
    // written before the last revision (a legacy store's migration) is told by the history.
    const floor = metaValue(db, "compacted");
    if (floor !== undefined && metaValue(db, "compacted_at") === this.#rev) this.#compacted = floor;
    else {
      const oldest = db.prepare("select min(revision) as r from history").get() as Row;
      this.#compacted = oldest.r === null ? this.#rev : Number(oldest.r) - 1;
    }
    this.#q = statements(db);
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new InferxError("unavailable", "Cannot use the embedded store: it is closed");
    }
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (this.#broken) throw this.#broken;
  }

  revision(): Promise<number> {
    return Promise.resolve(this.#rev);
  }

  get(key: string): Promise<KeyValue | undefined> {
    try {
      this.#checkOpen();
      const row = this.#q.get.get(key) as Row | undefined;
      return Promise.resolve(row && this.#kv(row));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  list(prefix: string): Promise<ListResult> {
    try {
      const items = this.#under(prefix, this.#q.listRange, this.#q.listFrom).map((r) =>
        this.#kv(r)
      );
      return Promise.resolve({ items, revision: this.#rev });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  keys(prefix: string): Promise<string[]> {
    try {
      const rows = this.#under(prefix, this.#q.keysRange, this.#q.keysFrom);
      return Promise.resolve(rows.map((r) => String(r.key)));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** The rows of `kv` under `prefix`, by key: `range` (from, to) or `from` (from, to the end). */
  #under(prefix: string, range: StatementSync, from: StatementSync): Row[] {
    this.#checkOpen();
    const end = prefixEnd(prefix);
    if (end !== undefined) return range.all(prefix, end) as Row[];
    const rows = from.all(prefix) as Row[];
    const past = rows.findIndex((r) => !String(r.key).startsWith(prefix));
    return past < 0 ? rows : rows.slice(0, past);
  }

  create(key: string, value: string): Promise<number> {
    return this.#inOrder(key, value, (stored) =>
      this.#write((rev) => {
        if (this.#q.get.get(key)) {
          throw new AlreadyExistsError(`Cannot create ${key}: it already exists`);
        }
        this.#q.insert.run(key, stored, rev, rev);
        return [{ type: "put", kv: { key, value, revision: rev, createRevision: rev } }];
      }, stored));
  }

  update(key: string, value: string, expectedRevision: number): Promise<number> {
    return this.#inOrder(key, value, (stored) =>
      this.#write((rev, drop) => {
        const cur = this.#current("update", key, expectedRevision, drop);
        this.#q.update.run(stored, rev, key);
        return [{
          type: "put",
          kv: { key, value, revision: rev, createRevision: cur.createRevision },
        }];
      }, stored));
  }

  delete(key: string, expectedRevision?: number): Promise<number> {
    return this.#inOrder(key, undefined, () =>
      this.#write((rev, drop) => {
        this.#current("delete", key, expectedRevision, drop);
        this.#q.delete.run(key);
        return [{ type: "delete", key, revision: rev }];
      }));
  }

  /**
   * Runs `commit` once the writes made before it have committed, with what
   * the tables are to hold for `value`: the value itself, or, for one of
   * `FILE_VALUE_CHARS` or more, the name of the file it was written to
   * (synced) meanwhile. With no such write under way and a small value, at
   * once, as every write was before.
   */
  #inOrder(
    key: string,
    value: string | undefined,
    commit: (stored: string) => Promise<number>,
  ): Promise<number> {
    const toFile = value !== undefined && this.#files !== undefined &&
      value.length >= FILE_VALUE_CHARS;
    if (!toFile && this.#waiting === 0) return commit(value ?? "");
    let file: Promise<string> | undefined;
    try {
      this.#checkWritable();
      if (toFile) {
        checkText(key, value);
        file = this.#writeFile(value);
        file.catch(() => {}); // its failure is the write's, told when its turn comes
      }
    } catch (err) {
      return Promise.reject(err);
    }
    const before = this.#tail;
    this.#waiting++;
    const run = (async () => {
      try {
        await before;
        const stored = file ? await file : value ?? "";
        try {
          return await commit(stored);
        } catch (err) {
          // Not committed, the file goes; but a failed sync's write may be in the log, naming
          // it (the store takes no more writes; a file no value names goes at the next open).
          if (file && err !== this.#broken) this.#removeFiles([stored]);
          throw err;
        }
      } finally {
        this.#waiting--;
      }
    })();
    this.#tail = run.catch(() => {});
    return run;
  }

  /**
   * A write refused whole: nothing of it is stored (its transaction rolled
   * back, its value file removed), which `details.not_written` tells a
   * caller that would otherwise not know (an asynchronous call's acceptance).
   * Why, where the file system says: full, or read-only (SQLite says "disk
   * I/O error").
   */
  #refused(err: unknown): InferxError {
    const message = (err as Error).message;
    const trouble = writeTrouble(this.#path);
    return new InferxError(
      "unavailable",
      `Cannot write to the embedded store: ${trouble ? `${trouble} (${message})` : message}`,
      { cause: err, retryable: true, details: { not_written: true } },
    );
  }

  /** Writes `value` to a new file, synced with its directory entry; its stored name. */
  async #writeFile(value: string): Promise<string> {
    const name = crypto.randomUUID();
    const path = `${this.#files}/${name}`;
    try {
      const bytes = new TextEncoder().encode(value);
      const f = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
      try {
        for (let at = 0; at < bytes.length;) at += await f.write(bytes.subarray(at));
        await f.syncData();
      } finally {
        f.close();
      }
      await syncFile(this.#files!);
      return `${FILE_MARK}${name}#${bytes.length}`;
    } catch (err) {
      await Deno.remove(path).catch(() => {});
      throw this.#refused(err);
    }
  }

  /**
   * Removes the files of stored values `refs` names, off the event loop (a
   * MB's file took half a ms to unlink on it); gone already: fine. One left
   * by a failure, or a crash, goes at the next open.
   */
  #removeFiles(refs: readonly string[]): void {
    for (const ref of new Set(refs)) {
      const removal = Deno.remove(`${this.#files}/${fileRef(ref).name}`).catch((err) => {
        if (!(err instanceof Deno.errors.NotFound)) {
          log.warn("Cannot remove a value's file from the store: {error}", { error: String(err) });
        }
      }).finally(() => this.#removals.delete(removal));
      this.#removals.add(removal);
    }
  }

  /** `row` of `kv` as a key-value, its value read from its file when it is kept in one. */
  #kv(row: Row): KeyValue {
    const kv = toKv(row);
    if (isFileRef(kv.value)) kv.value = this.#readFile(kv.key, kv.value);
    return kv;
  }

  #readFile(key: string, ref: string): string {
    const { name, bytes } = fileRef(ref);
    const path = `${this.#files}/${name}`;
    try {
      const data = Deno.readFileSync(path);
      if (bytes !== undefined && data.length !== bytes) {
        throw new Error(`it is damaged: ${data.length} bytes where ${bytes} were written`);
      }
      return new TextDecoder().decode(data);
    } catch (err) {
      throw new InferxError(
        "unavailable",
        `Cannot read ${key} from the embedded store: its value's file ${path}: ${
          (err as Error).message
        }`,
        { cause: err },
      );
    }
  }

  async deleteKeys(keys: readonly string[]): Promise<number> {
    // The revision after its own last change, or, with none, after the writes made before it.
    let after = await this.#inOrder("", undefined, () => Promise.resolve(this.#rev));
    // A transaction (one sync to disk) per chunk, and the event loop let go between chunks:
    // a namespace's tens of thousands of calls go in a second or two, other work going on.
    for (let i = 0; i < keys.length; i += DELETE_CHUNK) {
      if (i > 0) await nextTurn();
      const chunk = keys.slice(i, i + DELETE_CHUNK);
      after = await this.#inOrder("", undefined, () =>
        this.#write((rev, drop) => {
          const events: WatchEvent[] = [];
          for (const key of chunk) {
            const row = this.#q.get.get(key) as Row | undefined;
            if (!row) continue;
            this.#letGo(row, drop);
            this.#q.delete.run(key);
            events.push({ type: "delete", key, revision: rev + events.length });
          }
          return events;
        }));
    }
    return after;
  }

  /**
   * The current row of `key` (its value as stored), checked against
   * `expected` when given, about to be replaced: its file, if its change is
   * no longer kept, goes into `drop`.
   */
  #current(verb: string, key: string, expected: number | undefined, drop: string[]): KeyValue {
    const row = this.#q.get.get(key) as Row | undefined;
    if (!row) throw new NotFoundError(`Cannot ${verb} ${key}: it does not exist`);
    const cur = toKv(row);
    if (expected !== undefined && cur.revision !== expected) {
      throw new ConflictError(
        `Cannot ${verb} ${key}: revision is ${cur.revision}, not ${expected}`,
        { revision: cur.revision },
      );
    }
    this.#letGo(row, drop);
    return cur;
  }

  /** The file of a row of `kv` about to be replaced goes, unless a kept change still names it. */
  #letGo(row: Row, drop: string[]): void {
    if (isFileRef(row.value) && Number(row.revision) <= this.#compacted) drop.push(row.value);
  }

  /**
   * Runs changes in one transaction (the changes, a revision and a history
   * row each, the new revision, the compaction of the oldest history), then,
   * once the log is synced, tells the watchers. `change` gets the revision of its first change, and
   * numbers the others on from it.
   */
  #write(change: (rev: number, drop: string[]) => WatchEvent[], stored?: string): Promise<number> {
    let evs: WatchEvent[];
    const drop: string[] = [];
    try {
      this.#checkWritable();
      let rev = this.#rev;
      let compactTo = 0;
      let bytes = this.#historyBytes;
      evs = transaction(this.#db, () => {
        const es = change(this.#rev + 1, drop);
        for (const e of es) {
          rev = eventRevision(e);
          checkText(eventKey(e), e.type === "put" ? e.kv.value : "");
          if (e.type === "put") {
            // A put of create or update, the only one of its write: `stored` is what its row holds.
            const file = isFileRef(stored) ? stored : undefined;
            const row = this.#q.record.get(
              rev,
              e.kv.key,
              file ?? e.kv.value,
              e.kv.createRevision,
              file ? fileRef(file).bytes ?? e.kv.value.length : null,
            ) as Row;
            bytes += Number(row.n);
          } else this.#q.record.get(rev, e.key, null, null, null);
          const key = eventKey(e);
          if (this.#private.some((p) => key.startsWith(p))) {
            // Its earlier changes go now, with their files (the current one's included: this
            // change replaced it).
            for (const r of this.#q.superseded.iterate(key, rev) as Iterable<Row>) {
              bytes -= Number(r.n);
              if (isFileRef(r.value)) drop.push(r.value);
            }
            this.#q.forget.run(key, rev);
          }
        }
        if (!es.length) return es;
        compactTo = rev - this.#historyLimit;
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
        if (compactTo > this.#compacted) {
          // The files of the changes compacted go, but those still their key's current value.
          for (
            const r of this.#q.filesUpTo.iterate(this.#compacted, compactTo) as Iterable<Row>
          ) {
            const cur = this.#q.get.get(String(r.key)) as Row | undefined;
            if (cur?.value !== r.value) drop.push(String(r.value));
          }
          this.#q.compact.run(compactTo);
        }
        this.#q.setRevision.run(rev, Math.max(this.#compacted, compactTo));
        return es;
      });
      this.#rev = rev;
      this.#historyBytes = bytes;
      if (compactTo > this.#compacted) this.#compacted = compactTo;
    } catch (err) {
      if (err instanceof InferxError) return Promise.reject(err);
      // Its transaction rolled back.
      return Promise.reject(this.#refused(err));
    }
    const rev = this.#rev;
    if (!evs.length) return Promise.resolve(rev); // nothing was written
    // Watchers hear of the change, and the files it let go go, once it is on disk.
    return this.#synced().then(() => {
      this.#removeFiles(drop);
      for (const ev of evs) {
        const key = eventKey(ev);
        for (const w of this.#watchers) if (key.startsWith(w.prefix)) this.#deliver(w, ev);
      }
      if (!this.#closed) this.#giveBackPages();
      return rev;
    });
  }

  /**
   * Resolves once what was committed before the call is on disk: the
   * write-ahead log synced (`fdatasync`) off the event loop, the writes
   * committed while one sync runs sharing the next (SQLite's own sync of a
   * commit, `synchronous=FULL`, held the process 3-6 ms a write, every write,
   * on a busy disk). Batches resolve in the order they were made. A sync
   * that fails fails its writes, and the store takes no more (they may be in
   * the log, or not: only a restart, which reads the log, can say).
   */
  #synced(): Promise<void> {
    if (!this.#wal) return Promise.resolve();
    const done = Promise.withResolvers<void>();
    this.#unsynced.push(done);
    if (!this.#syncing) this.#syncing = this.#syncAll();
    return done.promise;
  }

  async #syncAll(): Promise<void> {
    while (this.#unsynced.length) {
      const batch = this.#unsynced;
      this.#unsynced = [];
      const upTo = this.#rev; // committed so far, all in the log now
      try {
        if (this.#broken) throw this.#broken;
        if (!this.#walFile) {
          // Opened once, with the log's own name in its directory synced: SQLite keeps the
          // file while it has the database open (a checkpoint writes it again from its start).
          this.#walFile = await Deno.open(this.#wal!, { read: true });
          await syncFile(dirname(this.#wal!));
        }
        await this.#walFile.syncData();
        this.#syncedRev = upTo;
        this.syncs++;
        for (const w of batch) w.resolve();
      } catch (err) {
        this.#broken ??= new InferxError(
          "unavailable",
          `Cannot write to the embedded store: syncing its log (${this.#wal}) to disk failed ` +
            `(${(err as Error).message}); it takes no more writes: restart the platform`,
          { cause: err, retryable: true },
        );
        for (const w of batch) w.reject(this.#broken);
      }
    }
    this.#syncing = undefined;
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
    // Each change once, in order (a watch started after a write's commit and before its
    // sync is among those told of it then: one from the past that replayed up to it too).
    if (eventRevision(ev) <= w.after) return;
    w.after = eventRevision(ev);
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
        // A change not yet on disk is told with the others of its sync, this watch among them.
        if (this.#wal && Number(row.revision) > this.#syncedRev) {
          break;
        }
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
              value: isFileRef(row.value) ? this.#readFile(key, row.value) : String(row.value),
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
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    // Writes waiting for their turn fail (closed); those committed are synced first: their
    // callers are told how that went.
    await this.#tail;
    await this.#syncing;
    await Promise.all(this.#removals);
    this.#walFile?.close();
    for (const w of this.#watchers) w.cancelled = true;
    this.#watchers.clear();
    this.#db.close();
  }
}

/** Syncs the file or directory at `path` to disk (`fdatasync`), off the event loop. */
async function syncFile(path: string): Promise<void> {
  const f = await Deno.open(path, { read: true });
  try {
    await f.syncData();
  } finally {
    f.close();
  }
}

/**
 * Refuses U+0000 in a key or value (SQLite's text ends there, so it would
 * come back cut) and a value that starts with U+0001 (as the rows of values
 * kept in files do). JSON escapes both.
 */
function checkText(key: string, value: string): void {
  if (key.includes("\0") || value.includes("\0")) {
    throw new InferxError(
      "invalid",
      `Cannot store ${
        JSON.stringify(key)
      }: the embedded store cannot hold U+0000 in a key or value`,
    );
  }
  if (value.startsWith(FILE_MARK)) {
    // What the store's own rows hold for a value kept in a file starts so.
    throw new InferxError(
      "invalid",
      `Cannot store ${
        JSON.stringify(key)
      }: the embedded store cannot hold a value that starts with U+0001`,
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
