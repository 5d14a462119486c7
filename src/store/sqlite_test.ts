import assert from "node:assert/strict";
import type { InferxError } from "../common/errors.ts";
import { fillLeaving, withTempDir, withTmpfs } from "../common/testing.ts";
import { DatabaseSync } from "node:sqlite";
import { storeContract } from "./contract.ts";
import { FILE_VALUE_CHARS, openSqliteStore, VACUUM_PAGES } from "./sqlite.ts";
import { CompactedError, type MetaStore, type WatchEvent } from "./types.ts";

storeContract("sqlite in memory", async () => {
  const store = await openSqliteStore(":memory:");
  return { store, dispose: () => store.close() };
});

storeContract("sqlite on disk", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ixstore-" });
  let store = await openSqliteStore(`${dir}/meta.db`, { historyLimit: 3 });
  return {
    get store() {
      return store;
    },
    async reopen() {
      await store.close();
      store = await openSqliteStore(`${dir}/meta.db`, { historyLimit: 3 });
      return store;
    },
    async dispose() {
      await store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
});

/** The next `count` events of a watch on `prefix` after `after`, or its error. */
function watchFor(
  store: MetaStore,
  prefix: string,
  after: number,
  count: number,
): Promise<WatchEvent[]> {
  return new Promise((resolve, reject) => {
    const got: WatchEvent[] = [];
    const w = store.watch(prefix, {
      afterRevision: after,
      onEvent(ev) {
        got.push(ev);
        if (got.length === count) {
          w.cancel();
          resolve(got);
        }
      },
      onError: reject,
    });
  });
}

const describe = (e: WatchEvent) => e.type === "put" ? `${e.kv.key}=${e.kv.value}` : `-${e.key}`;

const withDir = (fn: (dir: string) => Promise<void>) => withTempDir("ixstore-", fn);

Deno.test("sqlite store reports compaction to a watch that starts too early", async () => {
  const store = await openSqliteStore(":memory:", { historyLimit: 2 });
  for (let i = 0; i < 5; i++) await store.create(`/c/${i}`, "x");
  const err = await watchFor(store, "/c/", 1, 1).catch((e) => e);
  assert.ok(err instanceof CompactedError);
  assert.equal(err.compactedRevision, 3);
  assert.deepEqual((await watchFor(store, "/c/", 3, 2)).map(describe), ["/c/3=x", "/c/4=x"]);
  await store.close();
});

Deno.test("sqlite store ends a watch whose handler throws, through onError", async () => {
  const store = await openSqliteStore();
  let calls = 0;
  const err = await new Promise<Error>((resolve) => {
    store.watch("/a/", {
      onEvent() {
        calls++;
        throw new Error("handler broke");
      },
      onError: resolve,
    });
    store.create("/a/x", "1");
    store.create("/a/y", "1");
  });
  assert.equal(err.message, "handler broke");
  await store.create("/a/z", "1");
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(calls, 1, "the watch is over");
  await store.close();
});

Deno.test("sqlite store keeps its change history across a restart for watches from before it", async () => {
  await withDir(async (dir) => {
    let store = await openSqliteStore(`${dir}/meta.db`);
    const r1 = await store.create("/h/a", "1");
    await store.update("/h/a", "2", r1);
    await store.delete("/h/a");
    await store.close();
    store = await openSqliteStore(`${dir}/meta.db`);
    assert.deepEqual((await watchFor(store, "/h/", r1 - 1, 3)).map(describe), [
      "/h/a=1",
      "/h/a=2",
      "-/h/a",
    ]);
    await store.close();
  });
});

Deno.test("sqlite store keeps only the newest historyLimit changes on disk", async () => {
  await withDir(async (dir) => {
    const store = await openSqliteStore(`${dir}/meta.db`, { historyLimit: 10 });
    for (let i = 0; i < 50; i++) await store.create(`/k/${i}`, "v");
    await store.close();
    const db = new DatabaseSync(`${dir}/meta.db`);
    const row = db.prepare("select count(*) as n, min(revision) as lo from history").get();
    db.close();
    assert.deepEqual({ ...row }, { n: 10, lo: 41 });
  });
});

Deno.test("sqlite store refuses a second process's open of the same file with a clear error", async () => {
  await withDir(async (dir) => {
    const store = await openSqliteStore(`${dir}/meta.db`);
    const child = await new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { openSqliteStore } from "${new URL("./sqlite.ts", import.meta.url)}";
         await openSqliteStore("${dir}/meta.db").then(() => console.log("opened"), (e) => console.log(e.message));`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(child.stdout);
    assert.match(out, /Cannot open the store at .*meta\.db: another process has it open/);
    await store.create("/still/mine", "1");
    await store.close();
  });
});

/** Writes a legacy data directory as the JSON snapshot + log store left it. */
async function writeLegacy(dir: string, tornTail = false): Promise<void> {
  await Deno.writeTextFile(
    `${dir}/snapshot.json`,
    JSON.stringify({
      revision: 3,
      items: [
        { key: "/registry/tenant/system/system/a", value: "A", revision: 2, createRevision: 1 },
        { key: "/registry/tenant/system/system/b", value: "B", revision: 3, createRevision: 3 },
      ],
    }),
  );
  const lines = [
    { op: "put", key: "/registry/tenant/system/system/c", value: "C", rev: 4, crev: 4 },
    { op: "del", key: "/registry/tenant/system/system/b", rev: 5 },
    { op: "put", key: "/registry/tenant/system/system/a", value: "A2", rev: 6, crev: 1 },
  ].map((l) => JSON.stringify(l) + "\n").join("");
  await Deno.writeTextFile(`${dir}/wal.log`, lines + (tornTail ? '{"op":"put","key":"/x' : ""));
}

Deno.test("sqlite store migrates a legacy snapshot and log once, keeping the old files", async () => {
  await withDir(async (dir) => {
    await writeLegacy(dir, true);
    let store = await openSqliteStore(`${dir}/meta.db`);
    const { items, revision } = await store.list("/registry/");
    assert.equal(revision, 6);
    assert.deepEqual(items, [
      { key: "/registry/tenant/system/system/a", value: "A2", revision: 6, createRevision: 1 },
      { key: "/registry/tenant/system/system/c", value: "C", revision: 4, createRevision: 4 },
    ]);
    assert.equal(await store.create("/registry/tenant/system/system/d", "D"), 7);
    // History before the migration is not known: watching from before it lists again.
    assert.ok(
      (await watchFor(store, "/registry/", 5, 1).catch((e) => e)) instanceof CompactedError,
    );
    await store.close();
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) =>
      !n.startsWith("meta")
    );
    assert.deepEqual(names.sort(), ["snapshot.json.migrated", "wal.log.migrated"]);

    // The old files put back do not get imported twice.
    await Deno.rename(`${dir}/snapshot.json.migrated`, `${dir}/snapshot.json`);
    store = await openSqliteStore(`${dir}/meta.db`);
    assert.equal((await store.get("/registry/tenant/system/system/d"))?.value, "D");
    assert.equal(await store.revision(), 7);
    await store.close();
  });
});

Deno.test("sqlite store finishes a migration that stopped before renaming the old files", async () => {
  await withDir(async (dir) => {
    await writeLegacy(dir);
    const store = await openSqliteStore(`${dir}/meta.db`);
    await store.update("/registry/tenant/system/system/c", "C2", 4);
    await store.close();
    // As if the process had died between the commit and the renames.
    for (const f of ["snapshot.json", "wal.log"]) {
      await Deno.rename(`${dir}/${f}.migrated`, `${dir}/${f}`);
    }
    const again = await openSqliteStore(`${dir}/meta.db`);
    assert.equal((await again.get("/registry/tenant/system/system/c"))?.value, "C2");
    await again.close();
    assert.ok((await Deno.stat(`${dir}/wal.log.migrated`)).isFile);
    await assert.rejects(Deno.stat(`${dir}/wal.log`), Deno.errors.NotFound);
  });
});

Deno.test("sqlite store refuses to migrate a legacy log line that is not a store entry, saying which", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/wal.log`,
      '{"op":"put","key":"/a","value":"1","rev":1,"crev":1}\n{"op":"put","key":"/b"}\n',
    );
    await assert.rejects(
      openSqliteStore(`${dir}/meta.db`),
      /Cannot migrate the old store file .*wal\.log: line 2/,
    );
    assert.ok((await Deno.stat(`${dir}/wal.log`)).isFile, "the old file stays where it was");
  });
});

Deno.test("sqlite store refuses to migrate a legacy log damaged before its last line, naming the line", async () => {
  await withDir(async (dir) => {
    await writeLegacy(dir);
    const log = await Deno.readTextFile(`${dir}/wal.log`);
    const lines = log.split("\n");
    lines[1] = lines[1].slice(0, 12); // cut short in the middle, lines after it
    await Deno.writeTextFile(`${dir}/wal.log`, lines.join("\n"));
    await assert.rejects(
      openSqliteStore(`${dir}/meta.db`),
      /Cannot migrate the old store file .*wal\.log: line 2 is not JSON, and lines follow it/,
    );
    assert.ok((await Deno.stat(`${dir}/wal.log`)).isFile, "the old file stays where it was");
  });
});

Deno.test("an empty store file where a store was is refused, not taken for a new store", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    await Deno.writeFile(path, new Uint8Array());
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.code === "unavailable" &&
        e.message.startsWith(`Cannot open the store at ${path}: it is an empty file`),
    );
    assert.equal((await Deno.stat(path)).size, 0, "left as it is");
  });
});

Deno.test("a truncated store file is refused as damaged, and left as it is", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const s = await openSqliteStore(path);
    for (let i = 0; i < 300; i++) await s.create(`/k/${i}`, "x".repeat(200));
    await s.close();
    await Deno.truncate(path, 3000);
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) => e.message.startsWith(`Cannot open the store at ${path}: it is damaged`),
    );
    assert.equal((await Deno.stat(path)).size, 3000);
  });
});

Deno.test("a missing store file beside its value files or its log is refused, and what is there left as it is", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const s = await openSqliteStore(path);
    await s.create("/k/big", "x".repeat(200_000)); // a value of its own file
    await s.create("/k/small", "1");
    // Its log as a copy taken while it ran has it, before a checkpoint wrote it into the file.
    await Deno.mkdir(`${dir}/copy`);
    await Deno.copyFile(`${path}-wal`, `${dir}/copy/meta.db-wal`);
    await s.close();
    const files = [...Deno.readDirSync(`${path}-blobs`)].map((e) => e.name);
    assert.equal(files.length, 1);
    await Deno.remove(path);
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.message.startsWith(`Cannot open the store at ${path}: it is missing, but ${path}-blobs`),
    );
    assert.deepEqual([...Deno.readDirSync(`${path}-blobs`)].map((e) => e.name), files, "kept");
    assert.equal(await Deno.stat(path).then(() => true, () => false), false, "none made");
    const copy = `${dir}/copy/meta.db`;
    const walSize = (await Deno.stat(`${copy}-wal`)).size;
    assert.ok(walSize > 0);
    await assert.rejects(
      openSqliteStore(copy),
      (e: InferxError) => e.message.includes(`it is missing, but ${copy}-wal`),
    );
    assert.equal((await Deno.stat(`${copy}-wal`)).size, walSize, "its log left as it is");
  });
});

Deno.test("a store that cannot open on a full disk says the disk is full, not 'disk I/O error'", async () => {
  await withTmpfs("1m", async (data) => {
    await Deno.writeFile(`${data}/filler`, new Uint8Array(1024 * 1024)).catch(() => {});
    await assert.rejects(
      openSqliteStore(`${data}/meta.db`),
      (e: InferxError) => /meta\.db: the file system holding it is full/.test(e.message),
    );
    // It leaves no empty file, which the next start would refuse as a store cut short.
    assert.deepEqual([...Deno.readDirSync(data)].map((e) => e.name).sort(), ["filler"]);
    await Deno.remove(`${data}/filler`);
    await (await openSqliteStore(`${data}/meta.db`)).close();
  });
});

Deno.test("a write refused on a full disk says so, and that nothing of it was stored", async () => {
  await withTmpfs("4m", async (data) => {
    const store = await openSqliteStore(`${data}/meta.db`);
    try {
      await store.create("/k/a", "1");
      const filler = await fillLeaving(data, 0);
      let refused: InferxError | undefined;
      for (let i = 0; i < 200 && !refused; i++) {
        await store.create(`/k/big${i}`, "x".repeat(8000)).catch((e) => refused = e);
      }
      assert.ok(refused, "a write refused");
      assert.equal(refused.code, "unavailable");
      assert.equal(refused.details?.not_written, true);
      assert.match(refused.message, /the file system holding it is full/);
      await Deno.remove(filler);
      await store.create("/k/b", "2");
      assert.equal((await store.get("/k/b"))?.value, "2");
    } finally {
      await store.close();
    }
  });
});

Deno.test("a write committed on a nearly full disk stands, and is watched, when giving pages back fails", async () => {
  await withTmpfs("40m", async (data) => {
    const store = await openSqliteStore(`${data}/meta.db`, { historyLimit: 5 });
    try {
      const seen: string[] = [];
      store.watch("/k/", { onEvent: (e) => seen.push(e.type === "put" ? e.kv.key : e.key) });
      const keys = Array.from({ length: 1500 }, (_, i) => `/k/big${i}`);
      for (const k of keys) await store.create(k, "x".repeat(8000));
      // Some 3,000 pages freed, then the disk filled but for room for small writes: the
      // give-back every 256 writes has work to do, and no room to write it in.
      await store.deleteKeys(keys);
      await fillLeaving(data, 2 * 1024 * 1024);
      for (let i = 0; i < 300; i++) {
        const key = `/k/s${i}`;
        await store.create(key, "v");
        await new Promise((r) => setTimeout(r, 0));
        assert.equal(seen.at(-1), key, `write ${i} was watched`);
      }
    } finally {
      await store.close();
    }
  });
});

Deno.test("a store file whose pages are damaged is refused at open with an error that names it", async () => {
  await withTempDir("inferx-store-", async (dir) => {
    const path = `${dir}/meta.db`;
    const s = await openSqliteStore(path);
    for (let i = 0; i < 300; i++) await s.create(`/k/${i}`, "x".repeat(200));
    await s.close();
    const f = await Deno.open(path, { write: true });
    await f.seek(4096, Deno.SeekMode.Start); // pages 2-5: the tables' roots
    await f.write(new Uint8Array(4 * 4096).fill(0x55));
    f.close();
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.code === "unavailable" && e.message.startsWith(`Cannot open the store at ${path}: `),
    );
  });
});

Deno.test("a store whose data pages are damaged, its tables' roots whole, is refused at open too", async () => {
  await withTempDir("inferx-store-", async (dir) => {
    const path = `${dir}/meta.db`;
    const s = await openSqliteStore(path);
    for (let i = 0; i < 300; i++) await s.create(`/k/${i}`, "x".repeat(200));
    await s.close();
    const pages = (await Deno.stat(path)).size / 4096;
    const f = await Deno.open(path, { write: true });
    // A page of rows half way through the file: nothing opening the store reads it.
    await f.seek(Math.floor(pages / 2) * 4096 + 200, Deno.SeekMode.Start);
    await f.write(new Uint8Array(600).fill(0xff));
    f.close();
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.code === "unavailable" &&
        e.message.startsWith(`Cannot open the store at ${path}: it is damaged`),
    );
  });
});

Deno.test("sqlite store keeps its history within historyMaxBytes, and the file gives the space back", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const store = await openSqliteStore(path, { historyMaxBytes: 4 * 1024 * 1024 });
    const big = "x".repeat(256 * 1024);
    // One large record rewritten again and again (an asynchronous call's lease renewals).
    let rev = await store.create("/calls/1", big);
    for (let i = 0; i < 100; i++) rev = await store.update("/calls/1", big + i, rev);
    await store.delete("/calls/1");
    for (let i = 0; i < 600; i++) await store.create(`/small/${i}`, "v");
    // Past the cap, the oldest changes went: a watch from the start is told so.
    await assert.rejects(watchFor(store, "/calls/", 0, 1), CompactedError);
    await store.close();
    const db = new DatabaseSync(path, { readOnly: true });
    const kept = db.prepare("select sum(coalesce(size, length(value))) as n from history")
      .get() as { n: number };
    db.close();
    assert.ok(kept.n <= 4 * 1024 * 1024, `history holds ${kept.n} characters`);
    // 25 MiB were written (to files of their own: each value is large); what stays is the
    // capped history's, the files of the rest removed.
    const size = (await Deno.stat(path)).size;
    assert.ok(size < 8 * 1024 * 1024, `the file is ${size} bytes`);
    const files = [...Deno.readDirSync(`${path}-blobs`)].length;
    assert.ok(files > 0 && files <= 16, `${files} value files kept`);
  });
});

Deno.test("the store gives free pages back a bounded number at a time", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    // The store holds its file exclusively: its free pages are counted between opens.
    const free = () => {
      const db = new DatabaseSync(path, { readOnly: true });
      try {
        return (db.prepare("pragma freelist_count").get() as { freelist_count: number })
          .freelist_count;
      } finally {
        db.close();
      }
    };
    let store = await openSqliteStore(path, { historyMaxBytes: 1024 * 1024 });
    const big = "x".repeat(FILE_VALUE_CHARS - 1); // the largest kept in the database's pages
    for (let i = 0; i < 256; i++) await store.create(`/big/${i}`, big);
    for (let i = 0; i < 256; i++) await store.delete(`/big/${i}`); // 16 MiB of pages free at once
    await store.close();
    const before = free();
    assert.ok(before > 3 * VACUUM_PAGES, `${before} free pages`);
    // 256 writes after an open: one pass, which gives back at most VACUUM_PAGES (the small
    // writes take a few free pages, and free the pages of the big values the history still had).
    store = await openSqliteStore(path, { historyMaxBytes: 1024 * 1024 });
    for (let i = 0; i < 256; i++) await store.create(`/small/${i}`, "v");
    await store.close();
    const after = free();
    assert.ok(
      before - after >= VACUUM_PAGES / 2 && before - after <= VACUUM_PAGES + 64,
      `${before} -> ${after}`,
    );
    // Pass after pass, all of them.
    store = await openSqliteStore(path, { historyMaxBytes: 1024 * 1024 });
    for (let i = 0; i < 256 * Math.ceil(after / VACUUM_PAGES); i++) {
      await store.create(`/more/${i}`, "v");
    }
    await store.close();
    assert.ok(free() <= 256, `${free()} free pages left`);
  });
});

Deno.test("sqlite store refuses U+0000 in a key or value, rather than cut it on reading", async () => {
  const store = await openSqliteStore();
  for (const [key, value] of [["/a\0b", "v"], ["/a", "x\0y"]]) {
    await assert.rejects(
      store.create(key, value),
      (e: InferxError) => e.code === "invalid" && /cannot hold U\+0000/.test(e.message),
    );
  }
  assert.deepEqual((await store.list("/")).items, []);
  assert.equal(await store.revision(), 0, "nothing was written");
  await store.close();
});

Deno.test("sqlite store refuses a value that starts with U+0001, as its rows of values in files do", async () => {
  const store = await openSqliteStore();
  await assert.rejects(
    store.create("/a", "\u0001" + "0".repeat(36)),
    (e: InferxError) => e.code === "invalid" && /starts with U\+0001/.test(e.message),
  );
  await store.create("/a", "v\u0001"); // elsewhere in a value: fine
  await store.close();
});

/**
 * A store file as a release of schema `version` left it (`/k` = `v`, at
 * revision 1), its settings made first by `settings`.
 */
function olderStore(path: string, version: number, settings = ""): void {
  const old = new DatabaseSync(path);
  old.exec(`
    ${settings}
    create table meta (name text primary key, value integer not null) without rowid;
    create table kv (key text primary key, value text not null, revision integer not null,
      create_revision integer not null) without rowid;
    create table history (revision integer primary key, key text not null, value text,
      create_revision integer);
    insert into kv values ('/k', 'v', 1, 1);
    insert into history values (1, '/k', 'v', 1);
    insert into meta values ('revision', 1);
    pragma user_version = ${version};`);
  old.close();
}

/** The names of the files values are kept in, beside the store at `path`. */
const valueFiles = (path: string) =>
  [...Deno.readDirSync(`${path}-blobs`)].map((e) => e.name).sort();

Deno.test("large values are kept in files of their own, read back by get, list and watches, across a restart", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    let store = await openSqliteStore(path);
    const big = (c: string) => c.repeat(FILE_VALUE_CHARS) + "é😀"; // not only ASCII
    const live = watchFor(store, "/calls/", await store.revision(), 3);
    const r1 = await store.create("/calls/a", big("a"));
    await store.create("/calls/b", "small");
    await store.update("/calls/a", big("b"), r1);
    assert.deepEqual((await live).map((e) => e.type === "put" && e.kv.value.length), [
      FILE_VALUE_CHARS + 3,
      5,
      FILE_VALUE_CHARS + 3,
    ]);
    assert.equal((await store.get("/calls/a"))?.value, big("b"));
    assert.deepEqual((await store.list("/calls/")).items.map((kv) => kv.value), [
      big("b"),
      "small",
    ]);
    await store.close();
    // The database holds their names, not them: two files, the older one still a kept change.
    assert.equal(valueFiles(path).length, 2);
    assert.ok((await Deno.stat(path)).size < FILE_VALUE_CHARS, "not in the database's pages");
    store = await openSqliteStore(path);
    assert.equal((await store.get("/calls/a"))?.value, big("b"));
    const replayed = await watchFor(store, "/calls/", 0, 3);
    assert.deepEqual(replayed.map((e) => e.type === "put" && e.kv.value), [
      big("a"),
      "small",
      big("b"),
    ]);
    await store.close();
  });
});

Deno.test("a value's file goes once neither its key nor a kept change names it", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const store = await openSqliteStore(path, { historyLimit: 3 });
    const big = "x".repeat(FILE_VALUE_CHARS);
    let rev = await store.create("/k", big + 1);
    rev = await store.update("/k", big + 2, rev); // 1 is still a kept change
    await store.close();
    assert.equal(valueFiles(path).length, 2);
    const again = await openSqliteStore(path, { historyLimit: 3 });
    await again.create("/other/1", "v");
    await again.create("/other/2", "v"); // change 1 compacted: its file goes
    await again.create("/other/3", "v"); // change 2 compacted, but still /k's value: it stays
    await again.close();
    assert.equal(valueFiles(path).length, 1);
    const last = await openSqliteStore(path, { historyLimit: 3 });
    assert.equal((await last.get("/k"))?.value, big + 2);
    await last.delete("/k"); // its change compacted before: the file goes with the key
    await last.close();
    assert.deepEqual(valueFiles(path), []);
  });
});

Deno.test("a private key's superseded changes go at once, with their files; a watch from the past sees its newest", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const store = await openSqliteStore(path, { privatePrefixes: ["/p/"] });
    const before = await store.revision();
    const big = (c: string) => c.repeat(FILE_VALUE_CHARS);
    let a = await store.create("/p/a", big("1"));
    a = await store.update("/p/a", big("2"), a);
    let q = await store.create("/q/b", big("3")); // not private: every change kept
    q = await store.update("/q/b", "small", q);
    a = await store.update("/p/a", "private text", a);
    a = await store.update("/p/a", "secret words ".repeat(2000), a); // past a page
    assert.equal(valueFiles(path).length, 1, "the file of /q/b's kept first change alone");
    const live = await store.create("/p/c", "kept");
    await store.delete("/p/a", a);
    const replayed = await watchFor(store, "/", before, 4);
    assert.deepEqual(
      replayed.map((e) =>
        e.type === "put" ? `put ${e.kv.key} ${e.kv.value.slice(0, 5)}` : `delete ${e.key}`
      ),
      ["put /q/b 33333", "put /q/b small", "put /p/c kept", "delete /p/a"],
    );
    assert.equal((await store.get("/p/c"))?.revision, live);
    await store.close();
    // Nothing of what /p/a held is left in the database or beside it.
    const db = new DatabaseSync(path);
    const rows = db.prepare("select revision, value from history where key = '/p/a'").all();
    db.close();
    assert.deepEqual(rows.map((r) => r.value), [null], "its deletion alone");
    const raw = new TextDecoder().decode(await Deno.readFile(path));
    assert.ok(!raw.includes("private text"), "not in a page of the file, free or not");
    assert.ok(!raw.includes("secret words"));
    assert.equal(valueFiles(path).length, 1);
  });
});

Deno.test("the history's bytes are counted alike in and out, in UTF-8, characters past U+FFFF included", async () => {
  // A character past U+FFFF is two of JavaScript's units, one of SQLite's characters and four
  // bytes: a change counted in one unit and taken off in another drifted (20,000 more each time,
  // counted in units and taken off in characters), and a store rewriting such a call's record ran
  // past its budget with little kept, compacting changes still to be watched.
  const store = await openSqliteStore(":memory:", {
    privatePrefixes: ["/p/"],
    historyMaxBytes: 1024 * 1024,
  });
  const first = await store.create("/q/kept", "a change a watch replays");
  const emoji = "\u{1F600}".repeat(20_000);
  let rev = await store.create("/p/call", emoji);
  for (let i = 0; i < 100; i++) rev = await store.update("/p/call", emoji + i, rev);
  const replayed = await watchFor(store, "/q/", first - 1, 1);
  assert.equal(replayed[0].type === "put" && replayed[0].kv.value, "a change a watch replays");
  // And counted in UTF-8 bytes, as the bound says: 15 such changes kept are 1.2 MB (600,000 of
  // JavaScript's units), past 1 MiB, so the oldest go.
  const start = await store.revision();
  for (let i = 0; i < 14; i++) await store.create(`/q/${i}`, emoji);
  await assert.rejects(watchFor(store, "/q/", start, 1), CompactedError);
  await store.close();
});

Deno.test("a store an earlier release wrote loses its private keys' superseded changes at open", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    // Opened as an earlier release opens it: every change kept.
    const earlier = await openSqliteStore(path);
    const big = (c: string) => c.repeat(FILE_VALUE_CHARS);
    let a = await earlier.create("/p/a", big("1"));
    a = await earlier.update("/p/a", "private text", a);
    a = await earlier.update("/p/a", "newest", a);
    await earlier.create("/p/b", big("2")); // its one change: kept
    let q = await earlier.create("/q/c", "first");
    q = await earlier.update("/q/c", "second", q);
    await earlier.close();
    assert.equal(valueFiles(path).length, 2);
    const store = await openSqliteStore(path, { privatePrefixes: ["/p/"] });
    const replayed = await watchFor(store, "/", 0, 4);
    assert.deepEqual(
      replayed.map((e) => e.type === "put" && `${e.kv.key} ${e.kv.value.slice(0, 6)}`),
      ["/p/a newest", "/p/b 222222", "/q/c first", "/q/c second"],
    );
    assert.equal((await store.get("/p/a"))?.value, "newest");
    await store.close();
    assert.equal(valueFiles(path).length, 1, "the file of /p/a's first change went");
    assert.ok(!new TextDecoder().decode(await Deno.readFile(path)).includes("private text"));
  });
});

Deno.test("where the history begins is kept across a restart, private keys' gaps or not", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const opts = { privatePrefixes: ["/p/"] };
    let store = await openSqliteStore(path, opts);
    const a = await store.create("/p/a", "1"); // revision 1: goes with the next change of /p/a
    await store.create("/x", "2");
    await store.create("/y", "3");
    await store.update("/p/a", "4", a);
    await store.close();
    store = await openSqliteStore(path, opts);
    const replayed = await watchFor(store, "/", 0, 3);
    assert.deepEqual(replayed.map((e) => e.type === "put" && e.kv.revision), [2, 3, 4]);
    await store.close();
    // A release that keeps no such row wrote since, and compacted: the history tells it then.
    const db = new DatabaseSync(path);
    db.exec("delete from history where revision <= 2");
    db.exec("insert into history (revision, key, value, create_revision) values (5, '/z', '5', 5)");
    db.exec("insert into kv (key, value, revision, create_revision) values ('/z', '5', 5, 5)");
    db.exec("update meta set value = 5 where name = 'revision'");
    db.close();
    store = await openSqliteStore(path, opts);
    const err = await watchFor(store, "/", 1, 1).catch((e) => e);
    assert.ok(err instanceof CompactedError, String(err));
    assert.deepEqual(
      (await watchFor(store, "/", 2, 3)).map((e) => e.type === "put" && e.kv.revision),
      [3, 4, 5],
    );
    await store.close();
  });
});

Deno.test("writes commit in the order they were made, a large value's file or not", async () => {
  await withDir(async (dir) => {
    const store = await openSqliteStore(`${dir}/meta.db`);
    const big = "x".repeat(4 * FILE_VALUE_CHARS);
    const seen = watchFor(store, "/", 0, 4);
    // Made together, not awaited one by one: the small ones wait for the large one's file.
    const revs = await Promise.all([
      store.create("/1", big),
      store.create("/2", "small"),
      store.create("/1", "again"), // after /1 exists: refused
      store.delete("/2"),
      store.create("/3", big),
    ].map((p) => p.catch((e: Error) => e.name)));
    assert.deepEqual(revs, [1, 2, "AlreadyExistsError", 3, 4]);
    assert.deepEqual((await seen).map(describe).map((d) => d.slice(0, 8)), [
      "/1=xxxxx",
      "/2=small",
      "-/2",
      "/3=xxxxx",
    ]);
    await store.close();
  });
});

Deno.test("a second close() resolves once the store is closed, as the first does", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const store = await openSqliteStore(path);
    const written = store.create("/a", "1"); // its sync under way when the store closes
    const first = store.close();
    await store.close();
    await (await openSqliteStore(path)).close(); // no "another process has it open"
    await first;
    assert.equal(await written, 1);
  });
});

Deno.test("writes made together share syncs of the store's log", async () => {
  await withDir(async (dir) => {
    const store = await openSqliteStore(`${dir}/meta.db`);
    const syncs = () => (store as unknown as { syncs: number }).syncs;
    await store.create("/first", "v");
    assert.equal(syncs(), 1, "one write, one sync");
    await Promise.all(Array.from({ length: 200 }, (_, i) => store.create(`/k/${i}`, "v")));
    const after = syncs();
    assert.ok(after >= 2 && after <= 3, `200 writes made together: ${after - 1} syncs`);
    await store.close();
  });
});

Deno.test("a watch from the past started before a write is synced is told of it once", async () => {
  await withDir(async (dir) => {
    const store = await openSqliteStore(`${dir}/meta.db`);
    await store.create("/a", "1");
    const written = store.create("/b", "2"); // committed; its sync under way
    const got: string[] = [];
    const w = store.watch("/", { afterRevision: 0, onEvent: (e) => got.push(describe(e)) });
    await written;
    await store.create("/c", "3");
    w.cancel();
    assert.deepEqual(got, ["/a=1", "/b=2", "/c=3"]);
    await store.close();
  });
});

Deno.test("a store whose log cannot be synced fails the writes and takes no more, reads going on", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const store = await openSqliteStore(path);
    // The log taken away under the store before its first sync, which opens it: that fails.
    await Deno.rename(`${path}-wal`, `${dir}/moved`);
    const written = store.create("/b", "2");
    // A watch from the past, started before the sync, is not told of a write not on disk.
    const told: string[] = [];
    const w = store.watch("/", { afterRevision: 0, onEvent: (e) => told.push(describe(e)) });
    await assert.rejects(
      written,
      (e: InferxError) => e.code === "unavailable" && /syncing its log .* failed/.test(e.message),
    );
    await assert.rejects(store.create("/c", "3"), /it takes no more writes: restart/);
    assert.equal((await store.get("/b"))?.value, "2", "committed, if not known to be on disk");
    await new Promise((r) => setTimeout(r, 10));
    w.cancel();
    assert.deepEqual(told, []);
    await store.close();
  });
});

Deno.test("at open, files no value names go, and a named file that is missing refuses the store", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    let store = await openSqliteStore(path);
    await store.create("/big", "x".repeat(FILE_VALUE_CHARS));
    await store.close();
    const [kept] = valueFiles(path);
    // A crash between writing a file and committing its name leaves one behind.
    const stray = crypto.randomUUID();
    await Deno.writeTextFile(`${path}-blobs/${stray}`, "left behind");
    await Deno.writeTextFile(`${path}-blobs/notes.txt`, "not the store's"); // left alone
    store = await openSqliteStore(path);
    await store.close();
    assert.deepEqual(valueFiles(path), [kept, "notes.txt"].sort());
    const copy = await Deno.readFile(`${path}-blobs/${kept}`);
    await Deno.remove(`${path}-blobs/${kept}`);
    const before = await Deno.readFile(path);
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.code === "unavailable" &&
        new RegExp(
          `it is damaged \\(1 value file\\(s\\) missing from meta\\.db-blobs/, the ` +
            `first of /big: ${kept}\\)`,
        ).test(e.message),
    );
    assert.deepEqual(await Deno.readFile(path), before, "not a byte changed");
    // With the file put back, the store opens whole.
    await Deno.writeFile(`${path}-blobs/${kept}`, copy);
    store = await openSqliteStore(path);
    assert.equal((await store.get("/big"))?.value.length, FILE_VALUE_CHARS);
    await store.close();
  });
});

Deno.test("a value file cut short is refused at open, naming its key; one of version 3 is still read", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    let store = await openSqliteStore(path);
    await store.create("/big", "x".repeat(FILE_VALUE_CHARS + 10));
    await store.close();
    const [file] = valueFiles(path);
    await Deno.truncate(`${path}-blobs/${file}`, 60_000);
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.code === "unavailable" &&
        e.message.includes(
          `it is damaged (a value file cut short, or grown, in meta.db-blobs/, the first of /big: ${file})`,
        ),
    );
    // A reference of schema version 3 names the file alone: read as it is.
    const db = new DatabaseSync(path);
    db.exec(
      `update kv set value = char(1) || '${file}'; update history set value = char(1) || '${file}'`,
    );
    db.close();
    store = await openSqliteStore(path);
    assert.equal((await store.get("/big"))?.value.length, 60_000);
    await store.close();
  });
});

Deno.test("a store of schema version 2 takes values in files after its open, its changes kept", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    olderStore(path, 2, "pragma auto_vacuum = incremental;");
    const store = await openSqliteStore(path);
    await store.create("/big", "x".repeat(FILE_VALUE_CHARS));
    const events = await watchFor(store, "/", 0, 2);
    assert.deepEqual(events.map((e) => e.type === "put" && e.kv.value.length), [
      1,
      FILE_VALUE_CHARS,
    ]);
    await store.close();
    const db = new DatabaseSync(path, { readOnly: true });
    assert.equal(
      (db.prepare("pragma user_version").get() as { user_version: number }).user_version,
      4,
    );
    db.close();
  });
});

Deno.test("sqlite store refuses another program's database, and leaves it as it was", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const other = new DatabaseSync(path);
    other.exec(
      "create table requests (id integer primary key, body text); pragma user_version = 7",
    );
    other.close();
    const before = await Deno.readFile(path);
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.code === "unavailable" &&
        /at .*meta\.db: it is not this platform's store \(tables: requests; schema version 7, not 1 to 4/
          .test(
            e.message,
          ),
    );
    assert.deepEqual(await Deno.readFile(path), before, "not a byte changed");
    // This store's own file opens as before.
    await Deno.remove(path);
    const mine = await openSqliteStore(path);
    await mine.create("/k", "v");
    await mine.close();
    const again = await openSqliteStore(path);
    assert.equal((await again.get("/k"))?.value, "v");
    await again.close();
  });
});

Deno.test("sqlite store on a read-only directory says so, not 'disk I/O error'", async () => {
  if (Deno.uid() === 0) {
    // root writes anywhere: a read-only mount is the only way, which needs a tmpfs.
    const probe = await new Deno.Command("mount", { args: ["--version"] }).output().catch(() =>
      undefined
    );
    if (!probe?.success) return console.log("skipped: no mount(8) to make a read-only directory");
  }
  await withDir(async (dir) => {
    const data = `${dir}/ro`;
    await Deno.mkdir(data);
    const mount = (...args: string[]) => new Deno.Command("mount", { args }).output();
    if (Deno.uid() === 0) {
      const m = await mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", data);
      if (!m.success) return console.log("skipped: cannot mount a tmpfs here");
    }
    try {
      const s = await openSqliteStore(`${data}/meta.db`);
      await s.create("/k", "v");
      await s.close();
      if (Deno.uid() === 0) await mount("-o", "remount,ro", data);
      else await Deno.chmod(data, 0o500);
      await assert.rejects(
        openSqliteStore(`${data}/meta.db`),
        (e: InferxError) => /meta\.db: its directory or file is read-only/.test(e.message),
      );
    } finally {
      if (Deno.uid() === 0) await new Deno.Command("umount", { args: [data] }).output();
      else await Deno.chmod(data, 0o700);
    }
  });
});

Deno.test("a store made before pages were given back is converted once at open, its data kept", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    olderStore(path, 1);
    const store = await openSqliteStore(path);
    assert.equal((await store.get("/k"))?.value, "v");
    assert.equal(await store.create("/k2", "w"), 2);
    await store.close();
    const db = new DatabaseSync(path, { readOnly: true });
    assert.equal(
      (db.prepare("pragma auto_vacuum").get() as { auto_vacuum: number }).auto_vacuum,
      2,
    );
    // Marked with this release's schema version: an older release refuses it now.
    assert.equal(
      (db.prepare("pragma user_version").get() as { user_version: number }).user_version,
      4,
    );
    db.close();
  });
});

Deno.test("an older store whose open fails half-way is not marked with the new version", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const s = await openSqliteStore(path);
    await s.create("/k", "v");
    await s.close();
    const db = new DatabaseSync(path);
    db.exec("pragma user_version = 1"); // as the release before left it
    db.close();
    await Deno.writeTextFile(`${dir}/snapshot.json`, "{not json"); // a legacy store to migrate
    await assert.rejects(openSqliteStore(path));
    const after = new DatabaseSync(path, { readOnly: true });
    const v = (after.prepare("pragma user_version").get() as { user_version: number }).user_version;
    after.close();
    assert.equal(v, 1, "still the release before's");
  });
});

Deno.test("a store written by a newer release is refused, saying so, and left as it was", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/meta.db`;
    const store = await openSqliteStore(path);
    await store.create("/k", "v");
    await store.close();
    const newer = new DatabaseSync(path);
    newer.exec("pragma user_version = 5");
    newer.close();
    const before = await Deno.readFile(path);
    await assert.rejects(
      openSqliteStore(path),
      (e: InferxError) =>
        e.code === "unavailable" &&
        /meta\.db: it was written by a newer release of the platform \(schema version 5; this release reads 1 to 4\)/
          .test(e.message),
    );
    assert.deepEqual(await Deno.readFile(path), before, "not a byte changed");
  });
});
