/**
 * SQLite through `node:sqlite` (built into Deno): opening a database with the
 * settings the embedded store and audit share, and one transaction helper.
 *
 * @module
 */
import { DatabaseSync } from "node:sqlite";
import { dirname } from "node:path";
import { InferxError } from "./errors.ts";

export type { DatabaseSync, StatementSync } from "node:sqlite";

/** Options for {@linkcode openDatabase}. */
export interface OpenDatabaseOptions {
  /**
   * `FULL`: a commit survives power loss (fsync on every commit). `NORMAL`:
   * in WAL mode a commit survives a crash of the process, not of the machine.
   * @default "FULL"
   */
  synchronous?: "FULL" | "NORMAL";
  /**
   * Lets `pragma incremental_vacuum` give free pages back to the file system;
   * takes effect only when the file is created. @default false
   */
  incrementalVacuum?: boolean;
  /** What the database holds, for error messages ("the store"). @default "the database" */
  what?: string;
  /**
   * Let other processes open it too (WAL mode: readers alongside one
   * writer at a time, a writer waiting up to `busyTimeoutMs` for another);
   * otherwise a second process is refused. @default false
   */
  shared?: boolean;
  /** How long a shared database waits for another process's write (ms). @default 5000 */
  busyTimeoutMs?: number;
  /**
   * Looks at the file before anything is written to it (the settings above
   * write to it): throws to refuse it, left as it was.
   */
  check?: (db: DatabaseSync) => void;
  /**
   * Paths only this database names (its value files' directory): one that
   * holds something where the database file is missing, as its log does,
   * makes the open refused rather than start a new database beside them.
   */
  companions?: string[];
}

/**
 * Opens (or creates) the database file at `path` (`:memory:` for one in
 * memory) in WAL mode, with exclusive locking unless `shared`: a second
 * process that opens an exclusive file gets a clear error instead of a
 * share of it.
 */
export function openDatabase(path: string, options: OpenDatabaseOptions = {}): DatabaseSync {
  const what = options.what ?? "the database";
  let db: DatabaseSync | undefined;
  // What this open makes, removed when it fails: an empty file left would be refused at the
  // next start, with the space back, as a database cut short.
  const made = path === ":memory:"
    ? []
    : [path, `${path}-wal`, `${path}-shm`].filter((f) => sizeOf(f) === undefined);
  try {
    // SQLite takes an empty file for a new database and writes one over it: an empty file
    // where a database was is one a copy or a restore cut short, not a fresh start. (A shared
    // one is made whole under another name first: see the audit's createWhole.)
    // One another process has just made is written within a moment: looked at again after it.
    if (
      path !== ":memory:" && sizeOf(path) === 0 && (pause(EMPTY_RECHECK_MS), sizeOf(path) === 0)
    ) {
      throw new EmptyFile(
        "it is an empty file (a copy or a restore cut short?); it was left as it is: put the " +
          "database back, or remove the file to start with none",
      );
    }
    // Missing, with what only it names beside it (its log, its value files): a copy or a restore
    // that left it out, not a first start. A new database there would take that for leftovers
    // (a log it does not know is dropped, value files no row names are removed).
    const orphan = path === ":memory:" || sizeOf(path) !== undefined
      ? undefined
      : [`${path}-wal`, ...(options.companions ?? [])].find(holdsSomething);
    if (orphan) {
      throw new EmptyFile(
        `it is missing, but ${orphan}, which only it names, is there (a copy or a restore cut ` +
          `short?); both were left as they are: put the database back, or remove ${orphan} too ` +
          "to start with none",
      );
    }
    db = new DatabaseSync(path);
    db.exec(`pragma busy_timeout = ${options.shared ? options.busyTimeoutMs ?? 5000 : 0}`);
    options.check?.(db);
    // Before anything writes the file's first page, or it has no effect; on a file that has
    // pages it changes nothing but the file's change counter (a file refused at open after
    // this would not be left byte for byte as it was).
    if (options.incrementalVacuum) {
      const { page_count } = db.prepare("pragma page_count").get() as { page_count: number };
      if (page_count === 0) db.exec("pragma auto_vacuum = incremental");
    }
    if (path !== ":memory:") {
      if (!options.shared) db.exec("pragma locking_mode = exclusive");
      const mode = db.prepare("pragma journal_mode = wal").get() as { journal_mode: string };
      if (mode.journal_mode !== "wal") {
        throw new Error(`journal mode is ${mode.journal_mode}, not wal`);
      }
    }
    db.exec(`pragma synchronous = ${options.synchronous ?? "FULL"}`);
    // Takes the exclusive lock now, so that a second process fails here.
    if (!options.shared) db.exec("begin immediate; commit");
    return db;
  } catch (err) {
    db?.close();
    const message = (err as Error).message;
    const busy = /locked|busy/i.test(message);
    // Only a file this open made and left empty, with its log files: another process that won
    // the lock meanwhile (busy) has made them its own, and a file with pages is a store.
    if (!busy && !(err instanceof EmptyFile) && made.includes(path) && sizeOf(path) === 0) {
      for (const f of made) {
        try {
          Deno.removeSync(f);
        } catch {
          // not made after all
        }
      }
    }
    const trouble = busy || err instanceof EmptyFile ? undefined : writeTrouble(path);
    throw new InferxError(
      "unavailable",
      busy
        ? `Cannot open ${what} at ${path}: another process has it open`
        : trouble
        ? `Cannot open ${what} at ${path}: ${trouble} (${message})`
        : /malformed|not a database/i.test(message)
        ? `Cannot open ${what} at ${path}: it is damaged (SQLite: ${message})`
        : `Cannot open ${what} at ${path}: ${message}`,
      { cause: err },
    );
  }
}

/**
 * Writes everything `db`'s log holds into its file and empties the log, or
 * throws: a checkpoint that cannot write (a full disk) fails without a word
 * at close, the log then the only whole copy.
 */
export function checkpointWhole(db: DatabaseSync): void {
  const c = db.prepare("pragma wal_checkpoint(truncate)").get() as {
    busy: number;
    log: number;
    checkpointed: number;
  };
  if (c.busy !== 0 || c.log !== c.checkpointed) {
    throw new Error(
      `its log could not be written into the file (${c.checkpointed} of ${c.log} pages)`,
    );
  }
}

/** How long an empty database file is given to be written by the process that may be making it. */
const EMPTY_RECHECK_MS = 200;

/** Blocks this thread for `ms` (a start's synchronous open: nothing else runs yet). */
function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** An empty file where a database was looked for. */
class EmptyFile extends Error {}

/** Whether `path` is a file with bytes in it or a directory with entries. */
function holdsSomething(path: string): boolean {
  try {
    const st = Deno.statSync(path);
    if (!st.isDirectory) return st.size > 0;
    for (const _ of Deno.readDirSync(path)) return true;
    return false;
  } catch {
    return false;
  }
}

/** The size of the file at `path`, or undefined when there is none. */
function sizeOf(path: string): number | undefined {
  try {
    return Deno.statSync(path).size;
  } catch {
    return undefined;
  }
}

/**
 * Why the database at `path` cannot be written, when that is why it would
 * not open: permission, a read-only file system, or a full one. SQLite says
 * "disk I/O error" or "readonly database" then, which reads like failing
 * hardware.
 */
export function writeTrouble(path: string): string | undefined {
  if (path === ":memory:") return undefined;
  const readOnly = (err: unknown) =>
    err instanceof Deno.errors.PermissionDenied || /read-only|EROFS/i.test(String(err));
  const probe = `${dirname(path)}/.inferx-write-probe-${Deno.pid}`;
  try {
    // A few pages, as SQLite's first writes take: an empty file fits a full disk still.
    Deno.writeFileSync(probe, new Uint8Array(64 * 1024));
  } catch (err) {
    if (readOnly(err)) return "its directory or file is read-only";
    if (/No space left|ENOSPC|quota/i.test(String(err))) {
      return "the file system holding it is full";
    }
    return undefined;
  } finally {
    try {
      Deno.removeSync(probe);
    } catch {
      // not made
    }
  }
  try {
    Deno.openSync(path, { read: true, write: true }).close();
    return undefined;
  } catch (err) {
    return readOnly(err) ? "its directory or file is read-only" : undefined;
  }
}

/**
 * Runs `fn` in one `begin immediate` transaction: committed when it returns,
 * rolled back when it throws (and the error rethrown).
 */
export function transaction<T>(db: DatabaseSync, fn: () => T): T {
  db.exec("begin immediate");
  try {
    const out = fn();
    db.exec("commit");
    return out;
  } catch (err) {
    if (db.isTransaction) db.exec("rollback");
    throw err;
  }
}
