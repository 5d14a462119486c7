/**
 * Embedded `MetaStore`: an in-memory map with a global revision, persisted
 * (when given a directory) as a snapshot plus a write-ahead log of JSON lines
 * that is synced on every write. The default store of `RUN_SERVICE=All`.
 *
 * @module
 */
import { AlreadyExistsError, ConflictError, NotFoundError } from "../common/errors.ts";
import {
  CompactedError,
  type KeyValue,
  type ListResult,
  type MetaStore,
  type Watch,
  type WatchEvent,
  type WatchOptions,
} from "./types.ts";

/** Options for {@linkcode openEmbeddedStore}. */
export interface EmbeddedStoreOptions {
  /** Directory for the snapshot and log; in memory only when absent. */
  dir?: string;
  /** Changes kept for watches that start in the past. @default 10000 */
  historyLimit?: number;
  /** Log entries after which the log is folded into a new snapshot. @default 5000 */
  compactEvery?: number;
}

type LogEntry =
  | { op: "put"; key: string; value: string; rev: number; crev: number }
  | { op: "del"; key: string; rev: number };

interface Snapshot {
  revision: number;
  items: KeyValue[];
}

interface Watcher {
  prefix: string;
  options: WatchOptions;
  queue: WatchEvent[];
  scheduled: boolean;
  cancelled: boolean;
}

/** Opens (or creates) an embedded store. */
export async function openEmbeddedStore(
  options: EmbeddedStoreOptions = {},
): Promise<MetaStore> {
  const store = new EmbeddedStore(options);
  if (options.dir) await store.load(options.dir);
  return store;
}

class EmbeddedStore implements MetaStore {
  #data = new Map<string, KeyValue>();
  #rev = 0;
  #history: WatchEvent[] = [];
  /** Changes at or below this revision are not in #history. */
  #compacted = 0;
  #watchers = new Set<Watcher>();
  #log?: Deno.FsFile;
  #dir?: string;
  #logEntries = 0;
  #historyLimit: number;
  #compactEvery: number;
  #closed = false;

  constructor(options: EmbeddedStoreOptions) {
    this.#historyLimit = options.historyLimit ?? 10_000;
    this.#compactEvery = options.compactEvery ?? 5_000;
  }

  async load(dir: string): Promise<void> {
    await Deno.mkdir(dir, { recursive: true });
    this.#dir = dir;
    try {
      const snap = JSON.parse(await Deno.readTextFile(`${dir}/snapshot.json`)) as Snapshot;
      this.#rev = snap.revision;
      for (const kv of snap.items) this.#data.set(kv.key, kv);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    let log = "";
    try {
      log = await Deno.readTextFile(`${dir}/wal.log`);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    for (const line of log.split("\n")) {
      if (!line) continue;
      let e: LogEntry;
      try {
        e = JSON.parse(line) as LogEntry;
      } catch {
        break; // a torn last line from a crash mid-write: everything before it is intact
      }
      if (e.rev <= this.#rev) continue;
      this.#rev = e.rev;
      if (e.op === "put") {
        this.#data.set(e.key, {
          key: e.key,
          value: e.value,
          revision: e.rev,
          createRevision: e.crev,
        });
      } else this.#data.delete(e.key);
      this.#logEntries++;
    }
    this.#compacted = this.#rev;
    await this.#writeSnapshot();
  }

  async #writeSnapshot(): Promise<void> {
    const dir = this.#dir!;
    const snap: Snapshot = { revision: this.#rev, items: [...this.#data.values()] };
    await Deno.writeTextFile(`${dir}/snapshot.json.tmp`, JSON.stringify(snap));
    const tmp = await Deno.open(`${dir}/snapshot.json.tmp`, { read: true });
    await tmp.sync();
    tmp.close();
    await Deno.rename(`${dir}/snapshot.json.tmp`, `${dir}/snapshot.json`);
    this.#log?.close();
    this.#log = await Deno.open(`${dir}/wal.log`, {
      create: true,
      write: true,
      truncate: true,
    });
    this.#logEntries = 0;
  }

  #append(entry: LogEntry): void {
    if (!this.#log) return;
    this.#log.writeSync(new TextEncoder().encode(JSON.stringify(entry) + "\n"));
    this.#log.syncDataSync();
    if (++this.#logEntries >= this.#compactEvery) {
      // Fold the log into a snapshot; synchronous so no write can interleave.
      const dir = this.#dir!;
      const snap: Snapshot = { revision: this.#rev, items: [...this.#data.values()] };
      Deno.writeTextFileSync(`${dir}/snapshot.json.tmp`, JSON.stringify(snap));
      Deno.renameSync(`${dir}/snapshot.json.tmp`, `${dir}/snapshot.json`);
      this.#log.truncateSync(0);
      this.#log.seekSync(0, Deno.SeekMode.Start);
      this.#logEntries = 0;
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error("Cannot use the embedded store: it is closed");
  }

  revision(): Promise<number> {
    return Promise.resolve(this.#rev);
  }

  get(key: string): Promise<KeyValue | undefined> {
    this.#checkOpen();
    return Promise.resolve(this.#data.get(key));
  }

  list(prefix: string): Promise<ListResult> {
    this.#checkOpen();
    const items: KeyValue[] = [];
    for (const kv of this.#data.values()) if (kv.key.startsWith(prefix)) items.push(kv);
    items.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return Promise.resolve({ items, revision: this.#rev });
  }

  create(key: string, value: string): Promise<number> {
    this.#checkOpen();
    if (this.#data.has(key)) {
      return Promise.reject(new AlreadyExistsError(`Cannot create ${key}: it already exists`));
    }
    return Promise.resolve(this.#put(key, value));
  }

  update(key: string, value: string, expectedRevision: number): Promise<number> {
    this.#checkOpen();
    const cur = this.#data.get(key);
    if (!cur) return Promise.reject(new NotFoundError(`Cannot update ${key}: it does not exist`));
    if (cur.revision !== expectedRevision) {
      return Promise.reject(
        new ConflictError(
          `Cannot update ${key}: revision is ${cur.revision}, not ${expectedRevision}`,
          { revision: cur.revision },
        ),
      );
    }
    return Promise.resolve(this.#put(key, value, cur.createRevision));
  }

  delete(key: string, expectedRevision?: number): Promise<number> {
    this.#checkOpen();
    const cur = this.#data.get(key);
    if (!cur) return Promise.reject(new NotFoundError(`Cannot delete ${key}: it does not exist`));
    if (expectedRevision !== undefined && cur.revision !== expectedRevision) {
      return Promise.reject(
        new ConflictError(
          `Cannot delete ${key}: revision is ${cur.revision}, not ${expectedRevision}`,
          { revision: cur.revision },
        ),
      );
    }
    const rev = ++this.#rev;
    this.#data.delete(key);
    this.#append({ op: "del", key, rev });
    this.#publish({ type: "delete", key, revision: rev });
    return Promise.resolve(rev);
  }

  #put(key: string, value: string, createdAt?: number): number {
    const rev = ++this.#rev;
    const createRevision = createdAt ?? rev;
    const kv: KeyValue = { key, value, revision: rev, createRevision };
    this.#data.set(key, kv);
    this.#append({ op: "put", key, value, rev, crev: createRevision });
    this.#publish({ type: "put", kv });
    return rev;
  }

  #publish(ev: WatchEvent): void {
    this.#history.push(ev);
    if (this.#history.length > this.#historyLimit) {
      const dropped = this.#history.splice(0, this.#history.length - this.#historyLimit);
      const last = dropped[dropped.length - 1];
      this.#compacted = last.type === "put" ? last.kv.revision : last.revision;
    }
    const key = ev.type === "put" ? ev.kv.key : ev.key;
    for (const w of this.#watchers) if (key.startsWith(w.prefix)) this.#deliver(w, ev);
  }

  #deliver(w: Watcher, ev: WatchEvent): void {
    w.queue.push(ev);
    if (w.scheduled) return;
    w.scheduled = true;
    queueMicrotask(() => {
      w.scheduled = false;
      const batch = w.queue;
      w.queue = [];
      for (const e of batch) {
        if (w.cancelled) return;
        w.options.onEvent(e);
      }
    });
  }

  watch(prefix: string, options: WatchOptions): Watch {
    this.#checkOpen();
    const w: Watcher = { prefix, options, queue: [], scheduled: false, cancelled: false };
    const after = options.afterRevision ?? this.#rev;
    if (after < this.#compacted) {
      const err = new CompactedError(after, this.#compacted);
      queueMicrotask(() => options.onError?.(err));
      return { cancel() {} };
    }
    for (const ev of this.#history) {
      const rev = ev.type === "put" ? ev.kv.revision : ev.revision;
      const key = ev.type === "put" ? ev.kv.key : ev.key;
      if (rev > after && key.startsWith(prefix)) this.#deliver(w, ev);
    }
    this.#watchers.add(w);
    return {
      cancel: () => {
        w.cancelled = true;
        this.#watchers.delete(w);
      },
    };
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    for (const w of this.#watchers) w.cancelled = true;
    this.#watchers.clear();
    this.#log?.close();
    this.#log = undefined;
    return Promise.resolve();
  }
}
